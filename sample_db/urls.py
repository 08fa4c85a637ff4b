"""Database URLs of the sample database: the default one, sync/async drivers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

__all__ = ["DATA_DIR", "DEFAULT_URL", "async_url", "sqlite_path", "sync_url"]

#: generated SQLite files live here (git-ignored), next to the package
DATA_DIR = Path(__file__).resolve().parent / "data"
#: the demo's database: an absolute path, so it works from any directory
DEFAULT_URL = f"sqlite:///{DATA_DIR / 'shop.sqlite'}"

_SYNC = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
_ASYNC = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_ASYNC_DRIVERS = {"aiosqlite", "asyncpg", "psycopg_async", "aiomysql", "asyncmy"}


def _with_driver(url: str | URL, table: dict[str, str], keep: bool) -> str:
    u = make_url(url)
    if keep or u.get_backend_name() not in table:
        return u.render_as_string(hide_password=False)
    return u.set(drivername=table[u.get_backend_name()]).render_as_string(hide_password=False)


def sync_url(url: str | URL) -> str:
    """``url`` with a synchronous driver (``asyncpg`` → ``psycopg``, ``aiosqlite`` →
    ``pysqlite``); synchronous URLs are returned unchanged."""
    driver = make_url(url).get_driver_name()
    return _with_driver(url, _SYNC, keep=driver not in _ASYNC_DRIVERS)


def async_url(url: str | URL) -> str:
    """``url`` with an asyncio driver (``asyncpg`` or ``aiosqlite``)."""
    driver = make_url(url).get_driver_name()
    return _with_driver(url, _ASYNC, keep=driver in _ASYNC_DRIVERS)


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a file-based SQLite URL, else ``None``."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    db = u.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or u.query.get("mode") == "memory":
        return None
    return Path(db)
