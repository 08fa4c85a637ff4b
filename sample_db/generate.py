"""Deterministic generator of the sample shop.

::

    build("sqlite:///sample_db/data/shop.sqlite", scale=0.2, seed=42)
    ensure(url, scale=0.2, seed=42)      # builds only if the database is absent or empty

``build`` migrates the database to Alembic's head (``migrations/``), empties the
sample tables and fills them. The rows are a pure function of ``(scale, seed)``:
every table has its own ``random.Random`` stream, timestamps are fixed UTC
instants and ids are assigned here, so SQLite and PostgreSQL receive the same
rows. Loading is bulk: raw ``executemany`` on SQLite (values converted by
SQLAlchemy's own bind processors), ``COPY`` on PostgreSQL with psycopg, Core
``insert()`` executemany elsewhere. ``python -m sample_db.generate --help``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Table, create_engine, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url

from sample_db import rows
from sample_db.models import Base
from sample_db.spec import Sizes
from sample_db.urls import DEFAULT_URL, sqlite_path, sync_url

__all__ = ["MIGRATIONS_DIR", "SampleMismatch", "build", "ensure", "is_built", "migrate"]

#: the Alembic environment (``script_location``) of the repository
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

_CHUNK = 10_000


class SampleMismatch(ValueError):
    """The database holds a sample of another scale than the one asked for."""


def migrate(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations in ``migrations/`` up to ``revision`` on ``url``."""
    from alembic import command
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").exists():
        raise FileNotFoundError(
            f"Alembic environment not found at {MIGRATIONS_DIR} (run from a clone of the repo)"
        )
    url = sync_url(url)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    command.upgrade(cfg, revision)


def build(url: str, *, scale: float = 1.0, seed: int = 42, progress: bool = True) -> None:
    """Migrate ``url`` to head, empty the sample tables and fill them.

    :param scale: 1.0 is about 10k customers, 2k products, 100k orders and
        300k order items (see :class:`sample_db.spec.Sizes`).
    :param seed: same ``seed`` and ``scale`` give the same rows on any database.
    :param progress: draw a progress bar on stderr.
    """
    url = sync_url(url)
    sizes = Sizes.for_scale(scale)
    migrate(url)
    engine = create_engine(url)
    bar = _Progress(rows.expected_rows(sizes), enabled=progress)
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        loader = _loader_for(engine)
        for name, chunks in rows.generate(sizes, seed):
            loader.load(Base.metadata.tables[name], chunks, bar)
        loader.finish()
    finally:
        bar.close()
        engine.dispose()


def is_built(url: str) -> bool:
    """Whether ``url`` exists and its ``customers`` table has rows."""
    url = sync_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return False
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("customers"):
                return False
            return bool(conn.execute(select(func.count()).select_from(_t("customers"))).scalar())
    finally:
        engine.dispose()


def ensure(url: str, scale: float = 1.0, seed: int = 42, *, progress: bool = True) -> bool:
    """Build the sample at ``url`` unless it is there already; True if it built.

    An existing sample is migrated to head (later revisions add objects) and
    checked: if its customers or products do not number what ``scale`` gives,
    :class:`SampleMismatch` is raised rather than mixing two scales.
    """
    if not is_built(url):
        build(url, scale=scale, seed=seed, progress=progress)
        return True
    migrate(url)
    sizes = Sizes.for_scale(scale)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            found = {
                name: conn.execute(select(func.count()).select_from(_t(name))).scalar()
                for name in ("customers", "products")
            }
    finally:
        engine.dispose()
    wanted = {"customers": sizes.customers, "products": sizes.products}
    if found != wanted:
        raise SampleMismatch(
            f"the database holds another sample ({found}) than scale {scale} gives ({wanted}); "
            "rebuild it or pick another database"
        )
    return False


def _t(name: str) -> Table:
    return Base.metadata.tables[name]


# -- loaders -------------------------------------------------------------------


class _Loader:
    """Core ``insert()`` executemany: works on any database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, table: Table, chunks: Iterable[list[tuple[Any, ...]]], bar: _Progress) -> None:
        keys = [c.key for c in table.columns]
        with self.engine.begin() as conn:
            for chunk in chunks:
                conn.execute(table.insert(), [dict(zip(keys, r)) for r in chunk])
                bar.advance(table.name, len(chunk))

    def finish(self) -> None:
        with self.engine.begin() as conn:
            self.after(conn)

    def after(self, conn: Connection) -> None:
        conn.execute(text("ANALYZE"))


class _SqliteLoader(_Loader):
    """Raw ``executemany`` with SQLAlchemy's bind processors (same storage format)."""

    def load(self, table: Table, chunks: Iterable[list[tuple[Any, ...]]], bar: _Progress) -> None:
        dialect = self.engine.dialect
        procs = [c.type._cached_bind_processor(dialect) for c in table.columns]
        active = [(i, p) for i, p in enumerate(procs) if p is not None]
        cols = ", ".join(c.name for c in table.columns)
        sql = f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join('?' * len(procs))})"
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=OFF")
            for chunk in chunks:
                if active:
                    chunk = [_apply(r, active) for r in chunk]
                cur.executemany(sql, chunk)
                bar.advance(table.name, len(chunk))
            raw.commit()
        finally:
            raw.close()


def _apply(row: tuple[Any, ...], active: list[tuple[int, Any]]) -> list[Any]:
    out = list(row)
    for i, proc in active:
        out[i] = proc(out[i])
    return out


class _CopyLoader(_Loader):
    """psycopg 3: ``COPY ... FROM STDIN``, then sequences are moved past the ids."""

    def load(self, table: Table, chunks: Iterable[list[tuple[Any, ...]]], bar: _Progress) -> None:
        from psycopg.types.json import Json

        json_cols = [i for i, c in enumerate(table.columns) if isinstance(c.type, JSON)]
        cols = ", ".join(c.name for c in table.columns)
        raw = self.engine.raw_connection()
        try:
            cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
            with cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
                for chunk in chunks:
                    for r in chunk:
                        if json_cols:
                            r = list(r)
                            for i in json_cols:
                                r[i] = Json(r[i])
                        copy.write_row(r)
                    bar.advance(table.name, len(chunk))
            cur.close()
            raw.commit()
        finally:
            raw.close()

    def after(self, conn: Connection) -> None:
        for table in Base.metadata.sorted_tables:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT max(id) FROM {table.name}))"
                )
            )
        conn.execute(text("ANALYZE"))


def _loader_for(engine: Engine) -> _Loader:
    if engine.dialect.name == "sqlite":
        return _SqliteLoader(engine)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return _CopyLoader(engine)
    if engine.dialect.name == "postgresql":
        return _PgCoreLoader(engine)
    return _Loader(engine)


class _PgCoreLoader(_Loader):
    """PostgreSQL without psycopg 3: Core inserts, then the sequences."""

    after = _CopyLoader.after


# -- progress ------------------------------------------------------------------


class _Progress:
    """A one-line text progress bar on stderr."""

    def __init__(self, total: int, *, enabled: bool, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        #: redraw in place on a terminal; elsewhere (logs) only the final line
        self.live = enabled and sys.stderr.isatty()
        self.width = width
        self.start = time.perf_counter()
        self._last = 0.0

    def advance(self, label: str, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.live and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw(label)

    def _draw(self, label: str, final: bool = False) -> None:
        frac = 1.0 if final else min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        lead = "\r" if self.live else ""
        sys.stderr.write(
            f"{lead}building sample [{bar}] {frac:4.0%} {label:<12} "
            f"{self.done:>9,} rows {time.perf_counter() - self.start:6.1f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw("done", final=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """``python -m sample_db.generate [--url URL] [--scale F] [--seed N] [--if-absent]``."""
    p = argparse.ArgumentParser(
        prog="python -m sample_db.generate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--url", default=DEFAULT_URL, help="database URL (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="size factor (default: 1.0)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--if-absent", action="store_true", help="only build an absent/empty database")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.if_absent:
        built = ensure(args.url, args.scale, args.seed, progress=not args.quiet)
    else:
        build(args.url, scale=args.scale, seed=args.seed, progress=not args.quiet)
        built = True
    state = "built" if built else "already there"
    shown = make_url(args.url).render_as_string(hide_password=True)
    print(f"{state}: {shown} (scale {args.scale}) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
