"""Hardening: where the plain engine and the wrapped engine disagreed.

Each test runs the same steps on a plain engine and on a wrapped engine over
the same database and compares results *and* exceptions (class of the
SQLAlchemy error and of the driver's error); "served from cache" is counted
on the database side (:mod:`dbcount`). Bodies are synchronous and run on the
asyncio drivers through :func:`dbcount.run_sync_body`.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from dbcount import (
    DRIVERS,
    User,
    counter_for,
    db_url,
    is_async,
    is_pg,
    make_engine,
    run_sync_body,
    seed,
)
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from querycache import QueryCache

U = User.__table__
USERS = "from qc_users"
NAME1 = select(U.c.name).where(U.c.id == 1)
TEXT1 = text("SELECT name FROM qc_users WHERE id = 1")
PG = [d for d in DRIVERS if is_pg(d)]


class Env:
    """A plain and a wrapped engine (same URL), the cache and a DB-side counter."""

    def __init__(self, plain: Engine, engine: Engine, cache: QueryCache, counter: Any) -> None:
        self.plain, self.engine, self.cache, self.counter = plain, engine, cache, counter

    def calls(self, fragment: str = USERS) -> int:
        return self.counter.count(fragment)

    def read(self, engine: Engine, stmt: Any = NAME1) -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(stmt)]


@pytest.fixture
def run(request, tmp_path) -> Callable[..., Any]:
    """``run(driver, body, **cache_kw)``: seeded database, plain + wrapped engine."""
    caches: list[QueryCache] = []

    def go(driver: str, body: Callable[[Env], Any], **cache_kw: Any) -> Any:
        url = db_url(driver, request, tmp_path)
        seed(url)
        cache = QueryCache(**cache_kw)
        caches.append(cache)
        engine = make_engine(url)
        counter = counter_for(engine)
        if is_pg(driver) and is_async(driver):
            _first_connect(engine)
        cache.wrap(engine)
        plain = make_engine(url)

        def both(sync_engine: Engine) -> Any:
            def inner(sync_plain: Engine) -> Any:
                try:
                    return body(Env(sync_plain, sync_engine, cache, counter))
                finally:
                    counter.close()

            sync_plain = plain.sync_engine if is_async(driver) else plain
            try:
                return inner(sync_plain)
            finally:
                sync_plain.dispose()  # in the engine's event loop

        return run_sync_body(engine, both)

    yield go
    for c in caches:
        c.close()


def _first_connect(engine: Any) -> None:
    import asyncio

    async def touch() -> None:
        async with engine.connect():
            pass
        await engine.dispose()

    asyncio.run(touch())


def outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value, or the classes of the error it raised (SQLAlchemy's, driver's)."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("error", type(exc).__name__, type(getattr(exc, "orig", None)).__name__)


# -- 2. a miss streams past max_entry_bytes; errors surface where they happen ----------

# row 3 fails while the database computes it (SQLite: lazily, at fetch; PostgreSQL with a
# server-side cursor: at the FETCH that reaches it)
FAILING = {
    "sqlite": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 6) "
    "SELECT i, CASE WHEN i = 3 THEN abs(-9223372036854775807 - 1) ELSE i END FROM r",
    "postgresql": "SELECT i, 10 / (3 - i) FROM generate_series(1, 6) AS i",
}


def _steps(conn_of: Callable[[], Any], sql: str) -> dict[str, Any]:
    """Every way of reading the failing result, each on a fresh connection."""

    def first() -> Any:
        with conn_of() as conn:
            return tuple(conn.execute(text(sql)).first())

    def iterate() -> Any:
        rows: list[Any] = []
        with conn_of() as conn:
            try:
                for r in conn.execute(text(sql)):
                    rows.append(tuple(r))
            except Exception as exc:
                return rows, type(exc).__name__, type(exc.orig).__name__  # type: ignore[attr-defined]
        return rows, None, None

    def fetchmany() -> Any:
        with conn_of() as conn:
            result = conn.execute(text(sql))
            return [tuple(r) for r in result.fetchmany(1)], outcome(lambda: result.fetchmany(3))

    def all_() -> Any:
        with conn_of() as conn:
            return conn.execute(text(sql)).all()

    return {
        "first": outcome(first),
        "iterate": outcome(iterate),
        "fetchmany": outcome(fetchmany),
        "all": outcome(all_),
    }


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream_results"])
def test_fetch_errors_surface_where_the_plain_engine_raises_them(run, driver, stream):
    def body(env: Env) -> None:
        sql = FAILING[env.engine.dialect.name]
        opts = {"stream_results": True} if stream else {}

        def conn_of(engine: Engine) -> Callable[[], Any]:
            return lambda: engine.connect().execution_options(**opts)

        truth = _steps(conn_of(env.plain), sql)
        assert truth["all"][0] == "error"
        for _ in range(3):  # never stored: every run behaves the same
            assert _steps(conn_of(env.engine), sql) == truth
        # and the connections are healthy afterwards, on both
        assert env.read(env.engine) == env.read(env.plain) == [("user1",)]

    run(driver, body)


BIG = {
    "sqlite": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 400000) "
    "SELECT i, 'row number ' || i FROM r",
    "postgresql": "SELECT i, 'row number ' || i FROM generate_series(1, 400000) AS i",
}


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
@pytest.mark.parametrize("how", ["yield_per", "stream_results", "first", "fetchmany"])
def test_a_large_miss_streams_and_a_small_one_is_stored(run, driver, how):
    limit = 64 * 1024

    def take(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            if how == "yield_per":
                result = conn.execution_options(yield_per=5).execute(text(sql))
            elif how == "stream_results":
                result = conn.execution_options(stream_results=True).execute(text(sql))
            else:
                result = conn.execute(text(sql))
            if how == "first":
                return [tuple(result.first())]
            return [tuple(r) for r in result.fetchmany(10)]

    def peak(fn: Callable[[], Any]) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            value = fn()
            return value, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def body(env: Env) -> None:
        sql = BIG[env.engine.dialect.name]
        truth, plain_peak = peak(lambda: take(env.plain, sql))
        for _ in range(2):
            got, cached_peak = peak(lambda: take(env.engine, sql))
            assert got == truth
            # fetched ahead only up to max_entry_bytes (a full fetch is ~90 MiB)
            assert cached_peak < plain_peak + 8 * limit + 2 * 2**20, (cached_peak, plain_peak)
        # a small result read to its end is stored, also from a server-side cursor
        small = "SELECT id, name FROM qc_users ORDER BY id"
        before = env.calls()
        first = take(env.engine, small) if how != "first" else None
        with env.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True).execute(text(small)).all()
        n = env.calls()
        with env.engine.connect() as conn:
            again = conn.execution_options(stream_results=True).execute(text(small)).all()
        assert again == rows and len(rows) == 5
        assert env.calls() == n and n > before
        del first

    run(driver, body, max_entry_bytes=limit)


# -- 7. an aborted PostgreSQL transaction is never hidden ----------------------------------


def _fail(conn: Any, how: str) -> None:
    dialect = conn.dialect.name
    try:
        if how == "execute":
            conn.execute(
                text("SELECT 1 / 0" if dialect == "postgresql" else FAILING[dialect])
            ).all()
        else:  # the error is raised while the caller fetches (server-side cursor)
            stmt = text(FAILING["postgresql"]).execution_options(stream_results=True)
            for _ in conn.execute(stmt):
                pass
    except Exception:
        return
    raise AssertionError("the statement did not fail")


@pytest.mark.parametrize("driver", [*PG, "pysqlite"])
@pytest.mark.parametrize("how", ["execute", "fetch"])
def test_reads_after_a_failed_statement_raise_as_plain(run, driver, how):
    if how == "fetch" and not is_pg(driver):
        pytest.skip("the fetch-time failure is PostgreSQL's server-side cursor")

    def core_reads(engine: Engine) -> Any:
        with engine.connect() as conn:
            _fail(conn, how)
            out = [
                outcome(lambda: conn.execute(NAME1).all()),
                outcome(lambda: conn.execute(TEXT1).all()),
            ]
            conn.rollback()
            out.append(outcome(lambda: conn.execute(NAME1).all()))
            # a savepoint rolled back makes the transaction usable again
            sp = conn.begin_nested()
            _fail(conn, how)
            out.append(outcome(lambda: conn.execute(NAME1).all()))
            sp.rollback()
            out.append(outcome(lambda: conn.execute(NAME1).all()))
            return out

    def orm_reads(s: Session) -> Any:
        _fail(s.connection(), how)
        out = [outcome(lambda: s.execute(select(User).where(User.id == 1)).scalar_one().name)]
        out.append(outcome(lambda: s.execute(select(User.name).where(User.id == 2)).all()))
        s.rollback()
        out.append(outcome(lambda: s.execute(select(User).where(User.id == 3)).scalar_one().name))
        return out

    def body(env: Env) -> None:
        # prime the cache with every read the bodies make
        for _ in range(2):
            env.read(env.engine)
            env.read(env.engine, TEXT1)
            with env.cache.sessionmaker(bind=env.engine)() as s:
                for i in (1, 3):
                    s.execute(select(User).where(User.id == i)).scalar_one()
                s.execute(select(User.name).where(User.id == 2)).all()
        truth = core_reads(env.plain)
        assert core_reads(env.engine) == truth
        with Session(bind=env.plain) as s:
            orm_truth = orm_reads(s)
        with env.cache.sessionmaker(bind=env.engine)() as s:
            assert orm_reads(s) == orm_truth
        if is_pg(driver):
            assert truth[0][0] == truth[3][0] == orm_truth[0][0] == "error"
        # once the transaction is over, reads are served from the cache again
        n = env.calls()
        assert env.read(env.engine) == [("user1",)]
        assert env.calls() == n

    run(driver, body)


# -- 8. two-phase commit ----------------------------------------------------------------------


@pytest.mark.parametrize("driver", PG)
@pytest.mark.parametrize("prepare", [True, False], ids=["prepared", "one_phase"])
def test_two_phase_commit_invalidates_and_rollback_does_not(run, driver, prepare):
    def body(env: Env) -> None:
        assert env.read(env.engine) == [("user1",)]
        n = env.calls()
        with env.engine.connect() as conn:  # rolled back: the entry survives
            tx = conn.begin_twophase()
            conn.execute(update(U).where(U.c.id == 1).values(name="never"))
            if prepare:
                tx.prepare()
            tx.rollback()
        assert env.read(env.engine) == [("user1",)]
        assert env.calls() == n  # served from the cache
        assert env.read(env.plain) == [("user1",)]
        n = env.calls()
        with env.engine.connect() as conn:  # committed: the entry goes
            tx = conn.begin_twophase()
            conn.execute(update(U).where(U.c.id == 1).values(name="two-phase"))
            if prepare:
                tx.prepare()
            tx.commit()
        assert env.read(env.engine) == [("two-phase",)]
        assert env.calls() == n + 1  # went to the database
        assert env.read(env.plain) == [("two-phase",)]

    run(driver, body)


# -- 14. raw DBAPI use ------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("first", ["raw_first", "sqlalchemy_first"])
def test_raw_uncommitted_write_is_never_stored(run, driver, first):
    """A raw-driver write read back inside its transaction, then rolled back."""

    def raw_update(conn: Any) -> None:
        cur = conn.connection.dbapi_connection.cursor()
        cur.execute("UPDATE qc_users SET name = 'raw' WHERE id = 1")
        cur.close()

    def steps(engine: Engine) -> Any:
        with engine.connect() as conn:
            if first == "sqlalchemy_first":
                conn.execute(select(U.c.id).where(U.c.id == 2)).all()
            raw_update(conn)
            inside = conn.execute(NAME1).all()
            conn.rollback()
            after = conn.execute(NAME1).all()
        return [tuple(r) for r in inside], [tuple(r) for r in after]

    def body(env: Env) -> None:
        truth = steps(env.plain)
        assert truth == ([("raw",)], [("user1",)])
        for _ in range(2):
            assert steps(env.engine) == truth
            assert env.read(env.engine) == [("user1",)]

    run(driver, body)


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
def test_raw_connection_writes_need_invalidate(run, driver):
    """Documented: writes through ``engine.raw_connection()`` are invisible to the
    cache until ``cache.invalidate()``; reads on a raw-used connection are not stored."""

    def body(env: Env) -> None:
        assert env.read(env.engine) == [("user1",)]
        raw = env.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("UPDATE qc_users SET name = 'raw' WHERE id = 1")
            raw.commit()
        finally:
            raw.close()
        env.cache.invalidate("qc_users")
        assert env.read(env.engine) == env.read(env.plain) == [("raw",)]
        # a Connection whose DBAPI connection was handed out: its reads go to the database
        with env.engine.connect() as conn:
            conn.connection.dbapi_connection  # noqa: B018
            n = env.calls()
            assert conn.execute(NAME1).all() == [("raw",)]
            assert env.calls() == n + 1 or is_pg(driver)  # PG counts at portal close
        n = env.calls()
        assert env.read(env.engine) == [("raw",)]  # back in the pool: hits again
        assert env.calls() == n

    run(driver, body)


def test_sqlite_release_of_an_outermost_savepoint_commits(tmp_path):
    """pysqlite sends no BEGIN: a SAVEPOINT opens the transaction and its RELEASE
    commits it; readers on other connections must see the write at once."""
    from sqlalchemy import create_engine, text

    from querycache import QueryCache

    url = f"sqlite:///{tmp_path / 'sp.db'}"
    plain, cached = create_engine(url), create_engine(url)
    cache = QueryCache()
    cache.wrap(cached)
    with plain.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER)"))
        c.execute(text("INSERT INTO t VALUES (1, 0), (2, 1)"))
    q = "SELECT g, count(*) FROM t GROUP BY g ORDER BY g"

    def read(engine):
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(text(q))]

    assert read(cached) == read(plain) == [(0, 1), (1, 1)]
    assert read(cached) == [(0, 1), (1, 1)]  # now cached
    conn = cached.connect()
    sp = conn.begin_nested()
    conn.execute(text("UPDATE t SET g = 1 WHERE g = 0"))
    sp.commit()  # RELEASE: SQLite committed
    try:
        assert read(plain) == [(1, 2)]
        assert read(cached) == read(plain)
    finally:
        conn.close()
        cache.close()
