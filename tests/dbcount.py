"""Database-side execution counters and small engine helpers for the cache tests.

A hit is only ever claimed from what the *database* saw, never from
querycache's own counters:

* **SQLite** (pysqlite and aiosqlite): ``sqlite3.Connection.set_trace_callback``
  is installed on every new DBAPI connection of the engine from its pool
  ``connect`` event. SQLite calls the callback each time a statement starts
  running (``SQLITE_TRACE_STMT``), with the SQL text and bound values
  expanded. For aiosqlite the raw ``sqlite3`` connection lives in aiosqlite's
  worker thread, so the callback is installed through aiosqlite's own
  ``Connection.set_trace_callback`` coroutine (it runs the call in that
  thread), awaited from the ``connect`` event via SQLAlchemy's ``await_``
  (the event runs inside the engine's greenlet). The callback itself then
  runs in the worker thread; it only appends to a list under a lock.
* **PostgreSQL** (psycopg and asyncpg): ``pg_stat_statements`` (preloaded by
  :class:`querycache.testing.PostgresServer`, installed in every database by
  ``create_database``). ``calls`` of every normalized statement whose text
  matches are summed for the test's database, read on a separate plain
  psycopg connection in autocommit (never through the cache). Counts are taken
  as deltas, so no reset (which is cluster-wide) is needed. PostgreSQL
  records a statement when its executor ends, which for an extended-protocol
  portal is when the portal is dropped (the next statement on that
  connection, or the end of its transaction): counts are therefore read after
  the reading connection went back to the pool (which rolls back).

Both counters expose ``count(fragment)``: the number of executions so far of
statements whose SQL contains ``fragment`` (case-insensitive).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Uuid,
    create_engine,
    event,
    insert,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.util.concurrency import greenlet_spawn

#: the comment that leads querycache's own pre-image reads (not the test's statements)
PREIMAGE = "querycache pre-image"

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await

__all__ = [
    "ASYNC_DRIVERS",
    "DRIVERS",
    "SYNC_DRIVERS",
    "Base",
    "PgStatements",
    "Post",
    "SqliteTrace",
    "Tag",
    "User",
    "counter_for",
    "db_url",
    "is_async",
    "is_pg",
    "make_engine",
    "make_url_for",
    "poll",
    "run_sync_body",
    "seed",
    "sync_twin",
]

SYNC_DRIVERS = ("pysqlite", "psycopg")
ASYNC_DRIVERS = ("aiosqlite", "asyncpg")
DRIVERS = SYNC_DRIVERS + ASYNC_DRIVERS

_DRIVERNAME = {
    "pysqlite": "sqlite+pysqlite",
    "aiosqlite": "sqlite+aiosqlite",
    "psycopg": "postgresql+psycopg",
    "asyncpg": "postgresql+asyncpg",
}


def is_async(driver: str) -> bool:
    return driver in ASYNC_DRIVERS


def is_pg(driver: str) -> bool:
    return driver in ("psycopg", "asyncpg")


class SqliteTrace:
    """Every statement SQLite started on the connections of one engine."""

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        self.statements: list[str] = []
        self._lock = threading.Lock()
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        event.listen(sync, "connect", self._on_connect)

    def _trace(self, sql: str) -> None:
        with self._lock:
            self.statements.append(sql)

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        import sqlite3

        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(self._trace)
            return
        # aiosqlite: set the callback in aiosqlite's worker thread
        _await(dbapi_connection.driver_connection.set_trace_callback(self._trace))

    def count(self, fragment: str) -> int:
        f = " ".join(fragment.lower().split())
        with self._lock:
            return sum(
                1 for s in self.statements if f in " ".join(s.lower().split()) and PREIMAGE not in s
            )

    def preimages(self) -> int:
        """The cache's own pre-image reads so far."""
        with self._lock:
            return sum(1 for s in self.statements if PREIMAGE in s)

    def close(self) -> None:
        pass


class PgStatements:
    """``pg_stat_statements`` calls in one database, read out of band."""

    def __init__(self, url: Any) -> None:
        u = make_url(url)
        self.dbname = u.database
        self._conn = psycopg.connect(
            host=u.host,
            port=u.port,
            user=u.username,
            password=u.password,
            dbname=u.database,
            autocommit=True,
        )

    def count(self, fragment: str) -> int:
        row = self._conn.execute(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s AND regexp_replace(s.query, '\\s+', ' ', 'g') ILIKE %s "
            "AND s.query NOT LIKE %s",
            (self.dbname, "%" + " ".join(fragment.split()) + "%", "%" + PREIMAGE + "%"),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def preimages(self) -> int:
        """The cache's own pre-image reads so far."""
        row = self._conn.execute(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.query LIKE %s",
            (self.dbname, "%" + PREIMAGE + "%"),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._conn.close()


def counter_for(engine: Engine | AsyncEngine) -> SqliteTrace | PgStatements:
    """The database-side counter for ``engine`` (attach before its first connection)."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync.dialect.name == "sqlite":
        return SqliteTrace(engine)
    return PgStatements(sync.url)


def make_url_for(driver: str, tmp_path: Path | None = None, pg_url: str | None = None) -> str:
    """The URL of the test database for ``driver`` (a SQLite file or the fresh PG db)."""
    if is_pg(driver):
        assert pg_url is not None
        return (
            make_url(pg_url)
            .set(drivername=_DRIVERNAME[driver])
            .render_as_string(hide_password=False)
        )
    assert tmp_path is not None
    return f"{_DRIVERNAME[driver]}:///{os.fspath(tmp_path / 'db.sqlite')}"


def make_engine(url: str, **kw: Any) -> Any:
    """A sync or async engine for ``url``."""
    if make_url(url).get_driver_name() in ASYNC_DRIVERS:
        return create_async_engine(url, **kw)
    return create_engine(url, **kw)


def poll(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.005,
    what: str = "condition",
) -> Any:
    """Return ``predicate()`` once truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def sync_twin(url: str) -> str:
    """The same database through the synchronous driver of its backend."""
    u = make_url(url)
    twin = {"aiosqlite": "sqlite+pysqlite", "asyncpg": "postgresql+psycopg"}.get(
        u.get_driver_name()
    )
    if twin is None:
        return url
    return u.set(drivername=twin).render_as_string(hide_password=False)


def db_url(driver: str, request: Any, tmp_path: Path) -> str:
    """A fresh database for ``driver``: a SQLite file, or the ``pg_url`` database."""
    pg = request.getfixturevalue("pg_url") if is_pg(driver) else None
    return make_url_for(driver, tmp_path, pg)


def run_sync_body(engine: Engine | AsyncEngine, body: Callable[..., Any], *args: Any) -> Any:
    """Run a synchronous test body against ``engine``.

    A sync engine is passed as is. For an async engine the body gets its
    ``sync_engine`` and runs inside SQLAlchemy's greenlet bridge on a fresh
    event loop, so every statement goes through the asyncio driver (and the
    cache's async code paths); the engine is disposed in the same loop.
    """
    if not isinstance(engine, AsyncEngine):
        return body(engine, *args)

    async def main() -> Any:
        try:
            return await greenlet_spawn(body, engine.sync_engine, *args)
        finally:
            await engine.dispose()

    return asyncio.run(main())


# -- a small schema of our own ------------------------------------------------------


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "qc_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    score: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    born: Mapped[datetime] = mapped_column(DateTime)  # naive
    seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uid: Mapped[uuid.UUID] = mapped_column(Uuid)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean)

    posts: Mapped[list[Post]] = relationship(back_populates="user", order_by="Post.id")


class Post(Base):
    __tablename__ = "qc_posts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("qc_users.id"))
    title: Mapped[str] = mapped_column(String(80))

    user: Mapped[User] = relationship(back_populates="posts")


class Tag(Base):
    __tablename__ = "qc_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(40))


N_USERS = 5


def user_row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"user{i}",
        "score": Decimal(f"{i}.5{i}"),
        "born": datetime(1990, 1, i, 12, 30, 15),
        "seen": datetime(2024, 5, i, 8, 0, tzinfo=UTC),
        "uid": uuid.UUID(int=i * 7919),
        "data": {"n": i, "tags": ["a", "b"][: i % 3], "nested": {"x": i / 2}},
        "active": i % 2 == 1,
    }


def seed(url: str) -> None:
    """Create the schema and its rows through a plain (never wrapped) sync engine."""
    engine = create_engine(sync_twin(url))
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(User), [user_row(i) for i in range(1, N_USERS + 1)])
            conn.execute(
                insert(Post),
                [
                    {"id": 10 * u + k, "user_id": u, "title": f"post {u}.{k}"}
                    for u in range(1, N_USERS + 1)
                    for k in range(2)
                ],
            )
            conn.execute(insert(Tag), [{"id": i, "label": f"tag{i}"} for i in range(1, 4)])
    finally:
        engine.dispose()


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
