"""Transactions: invalidation at the outermost commit, dropped on rollback.

Every body is synchronous SQLAlchemy code and runs on all four drivers: on
pysqlite and psycopg directly, on aiosqlite and asyncpg through the async
engine's ``sync_engine`` inside SQLAlchemy's greenlet bridge
(:func:`dbcount.run_sync_body`), so the asyncio drivers and the cache's async
paths do the work. Hits and misses are counted on the database side.
"""

from __future__ import annotations

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
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from querycache import QueryCache

U = User.__table__
USERS = "from qc_users"
NAME1 = select(U.c.name).where(U.c.id == 1)


class Ctx:
    """What a body gets: the wrapped engine, the cache, a counter, the URL."""

    def __init__(self, engine: Engine, cache: QueryCache, counter: Any, url: str, driver: str):
        self.engine = engine
        self.cache = cache
        self.counter = counter
        self.url = url
        self.driver = driver

    def calls(self) -> int:
        return self.counter.count(USERS)

    def read(self, stmt: Any = NAME1, engine: Engine | None = None) -> list[Any]:
        with (engine or self.engine).connect() as conn:
            return [tuple(r) for r in conn.execute(stmt)]

    def session(self, **kw: Any) -> Session:
        return self.cache.sessionmaker(bind=self.engine, **kw)()


PG_DRIVERS = [d for d in DRIVERS if is_pg(d)]


@pytest.fixture(params=DRIVERS)
def driver(request) -> str:
    return request.param


@pytest.fixture
def run(driver, request, tmp_path) -> Callable[..., Any]:
    """``run(body, **engine_kw)``: a fresh seeded database, a wrapped engine, the body."""
    url = db_url(driver, request, tmp_path)
    seed(url)
    caches: list[QueryCache] = []

    def go(body: Callable[[Ctx], Any], **engine_kw: Any) -> Any:
        cache = QueryCache()
        caches.append(cache)
        engine = make_engine(url, **engine_kw)
        counter = counter_for(engine)
        if is_pg(driver) and is_async(driver):
            _first_connect(engine)
        cache.wrap(engine)

        def body_on(sync_engine: Engine) -> Any:
            try:
                return body(Ctx(sync_engine, cache, counter, url, driver))
            finally:
                counter.close()

        return run_sync_body(engine, body_on)

    yield go
    for c in caches:
        c.close()


def _first_connect(engine: Any) -> None:
    # asyncpg: connect once before wrap (see test_api.py::test_wrap_before_first_connection)
    import asyncio

    async def touch() -> None:
        async with engine.connect():
            pass
        await engine.dispose()

    asyncio.run(touch())


# -- read your writes -----------------------------------------------------------------------


def test_read_your_writes_inside_a_transaction(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        assert c.read() == [("user1",)]  # cached
        with c.engine.connect() as conn:
            assert conn.execute(NAME1).all() == [("user1",)]
            conn.execute(update(U).where(U.c.id == 1).values(name="mine"))
            for _ in range(2):
                assert conn.execute(NAME1).all() == [("mine",)]
                assert conn.execute(text("SELECT name FROM qc_users WHERE id = 1")).all() == [
                    ("mine",)
                ]
            # another connection still sees the committed state
            assert c.read() == [("user1",)]
            conn.commit()
        n = c.calls()
        assert c.read() == [("mine",)]
        assert c.calls() == n + 1
        assert c.read() == [("mine",)]
        assert c.calls() == n + 1

    run(body)


def test_orm_read_your_writes(run):
    def body(c: Ctx) -> None:
        with c.session() as s:
            assert s.get(User, 1).name == "user1"
        with c.session() as s:
            u = s.get(User, 1)
            u.name = "mine"
            s.flush()
            assert s.execute(select(User.name).where(User.id == 1)).scalar_one() == "mine"
            s.expire_all()
            assert s.execute(select(User).where(User.id == 1)).scalar_one().name == "mine"
            s.commit()
        with c.session() as s:
            assert s.execute(select(User).where(User.id == 1)).scalar_one().name == "mine"
        assert c.read() == [("mine",)]

    run(body)


# -- rollback ---------------------------------------------------------------------------------


def test_rollback_drops_the_pending_invalidation(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        n = c.calls()
        with c.engine.connect() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="rolled back"))
            conn.rollback()
        assert c.read() == [("user1",)]
        assert c.read() == [("user1",)]
        assert c.calls() == n  # the entry survived the rolled-back write

    run(body)


@pytest.mark.parametrize("how", ["core", "orm"])
def test_nothing_read_in_a_writing_transaction_is_served_after_rollback(run, how):
    def body(c: Ctx) -> None:
        everyone = select(U.c.id, U.c.name).order_by(U.c.id)
        if how == "core":
            with c.engine.connect() as conn:
                conn.execute(update(U).where(U.c.id == 1).values(name="dirty"))
                assert conn.execute(NAME1).all() == [("dirty",)]
                assert conn.execute(everyone).all()[0] == (1, "dirty")
                conn.rollback()
        else:
            with c.session() as s:
                s.get(User, 1).name = "dirty"
                # autoflush sends the change; these reads see it
                assert s.scalars(select(User.name).where(User.id == 1)).one() == "dirty"
                assert s.scalars(select(User).order_by(User.id)).first().name == "dirty"
                assert s.execute(everyone).all()[0] == (1, "dirty")
                s.rollback()
        assert c.read() == [("user1",)]
        assert c.read(everyone)[0] == (1, "user1")
        with c.session() as s:
            assert s.scalars(select(User).order_by(User.id)).first().name == "user1"
            assert s.scalars(select(User.name).where(User.id == 1)).one() == "user1"

    run(body)


def test_savepoint_rollback_still_invalidates_on_outer_commit(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        n = c.calls()
        with c.engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
            nested = conn.begin_nested()
            conn.execute(update(U).where(U.c.id == 1).values(name="savepoint"))
            nested.rollback()
            assert conn.execute(NAME1).all() == [("user1",)]
            conn.commit()
        assert c.read() == [("user1",)]
        assert c.calls() > n  # conservative: re-read from the database

    run(body)


def test_savepoint_released_write_invalidates_on_outer_commit(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        with c.engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
            with conn.begin_nested():
                conn.execute(update(U).where(U.c.id == 1).values(name="released"))
            # PostgreSQL: not committed yet. SQLite (pysqlite, aiosqlite send no
            # BEGIN): the SAVEPOINT opened the transaction and RELEASE committed it
            sqlite = c.driver in ("pysqlite", "aiosqlite")
            assert c.read() == ([("released",)] if sqlite else [("user1",)])
            conn.commit()
        assert c.read() == [("released",)]

    run(body)


def test_orm_savepoint_rollback(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        with c.session() as s:
            s.execute(select(User)).all()
            with s.begin_nested() as sp:
                s.get(User, 1).name = "inner"
                s.flush()
                sp.rollback()
            s.get(User, 2).name = "outer"
            s.commit()
        assert c.read() == [("user1",)]
        assert c.read(select(U.c.name).where(U.c.id == 2)) == [("outer",)]

    run(body)


# -- autocommit ---------------------------------------------------------------------------------


def test_autocommit_isolation_level_invalidates_immediately(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        auto = c.engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="auto"))
            # still inside the `with`: the write is committed and invalidated already
            assert c.read() == [("auto",)]
            conn.execute(text("UPDATE qc_users SET name = 'auto text' WHERE id = 1"))
            assert c.read() == [("auto text",)]
            conn.exec_driver_sql("UPDATE qc_users SET name = 'auto driver' WHERE id = 1")
            assert c.read() == [("auto driver",)]
            # its own reads are cached and invalidated like anyone's
            assert conn.execute(NAME1).all() == [("auto driver",)]
        with c.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="auto conn"))
            assert c.read() == [("auto conn",)]

    run(body)


DRIVER_AUTOCOMMIT = {
    "pysqlite": {"connect_args": {"isolation_level": None}},
    "aiosqlite": {"connect_args": {"isolation_level": None}},
    "psycopg": {"connect_args": {"autocommit": True}},
}


def test_driver_autocommit_invalidates_immediately(run, driver):
    if driver not in DRIVER_AUTOCOMMIT:
        pytest.skip("asyncpg has no driver-level autocommit switch (AUTOCOMMIT is tested)")

    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        with c.engine.connect() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="driver auto"))
            assert c.read() == [("driver auto",)]
            conn.exec_driver_sql("UPDATE qc_users SET name = 'driver auto 2' WHERE id = 1")
            assert c.read() == [("driver auto 2",)]
            conn.commit()

    run(body, **DRIVER_AUTOCOMMIT[driver])


# -- transactions as text -----------------------------------------------------------------------


def test_text_begin_commit_is_followed(run):
    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        n = c.calls()
        auto = c.engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("UPDATE qc_users SET name = 'text tx' WHERE id = 1")
            # uncommitted: others are still (rightly) served the committed value
            assert c.read() == [("user1",)]
            assert conn.execute(NAME1).all() == [("text tx",)]  # read your writes
            assert c.calls() >= n
            conn.exec_driver_sql("COMMIT")
            assert c.read() == [("text tx",)]
            # BEGIN ... ROLLBACK leaves the entry in place
            m = c.calls()
            conn.execute(text("BEGIN"))
            conn.execute(text("UPDATE qc_users SET name = 'undone' WHERE id = 1"))
            conn.execute(text("ROLLBACK"))
            assert c.read() == [("text tx",)]
            assert c.calls() == m
            # lower case and START TRANSACTION / END on PostgreSQL
            if c.driver in ("psycopg", "asyncpg"):
                conn.exec_driver_sql("start transaction")
                conn.exec_driver_sql("update qc_users set name = 'pg end' where id = 1")
                conn.exec_driver_sql("end")
                assert c.read() == [("pg end",)]
            else:
                conn.exec_driver_sql("begin immediate")
                conn.exec_driver_sql("update qc_users set name = 'sqlite end' where id = 1")
                conn.exec_driver_sql("end")
                assert c.read() == [("sqlite end",)]

    run(body)


def test_text_begin_read_is_not_stored_for_others(run):
    def body(c: Ctx) -> None:
        auto = c.engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("UPDATE qc_users SET name = 'never' WHERE id = 1")
            assert conn.execute(NAME1).all() == [("never",)]
            conn.exec_driver_sql("ROLLBACK")
        assert c.read() == [("user1",)]

    run(body)


# -- PostgreSQL snapshots ----------------------------------------------------------------------


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_repeatable_read_transactions_bypass(run, driver):

    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        assert c.read() == [("user1",)]  # cached for READ COMMITTED readers
        rr = c.engine.execution_options(isolation_level="REPEATABLE READ")
        with rr.connect() as t1:
            assert t1.execute(NAME1).all() == [("user1",)]  # T1's snapshot starts
            with c.engine.begin() as w:
                w.execute(update(U).where(U.c.id == 1).values(name="after t1"))
            assert c.read() == [("after t1",)]  # re-cached with the new value
            assert c.read() == [("after t1",)]
            # T1 must keep reading its snapshot, not the newer cached entry
            for _ in range(2):
                assert t1.execute(NAME1).all() == [("user1",)]
        n = c.calls()
        with rr.connect() as t2:
            for _ in range(3):
                assert t2.execute(NAME1).all() == [("after t1",)]
        assert c.calls() == n + 3  # every RR read went to the database

    run(body)


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_text_begin_repeatable_read_bypasses(run, driver):

    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        auto = c.engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as t1:
            t1.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert t1.execute(NAME1).all() == [("user1",)]
            with c.engine.begin() as w:
                w.execute(update(U).where(U.c.id == 1).values(name="newer"))
            assert c.read() == [("newer",)]
            assert t1.execute(NAME1).all() == [("user1",)]
            t1.exec_driver_sql("COMMIT")
            assert t1.execute(NAME1).all() == [("newer",)]

    run(body)


def test_sessions_on_two_engines_of_one_cache(run, driver):
    """A write committed through engine A is seen through engine B at once."""

    def body(c: Ctx) -> None:
        other = create_engine(
            c.url.replace("+aiosqlite", "+pysqlite").replace("+asyncpg", "+psycopg")
        )
        c.cache.wrap(other)
        try:
            with Session(bind=other) as s:
                assert s.get(User, 1).name == "user1"
            with c.session() as s:
                s.get(User, 1).name = "from A"
                s.commit()
            with Session(bind=other) as s:
                assert s.get(User, 1).name == "from A"
            with Session(bind=other) as s:
                s.get(User, 1).name = "from B"
                s.commit()
            with c.session() as s:
                assert s.get(User, 1).name == "from B"
        finally:
            other.dispose()

    run(body)


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_set_transaction_isolation_as_text_bypasses(run, driver):

    def body(c: Ctx) -> None:
        assert c.read() == [("user1",)]
        with c.engine.connect() as t1:
            t1.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            assert t1.execute(NAME1).all() == [("user1",)]
            with c.engine.begin() as w:
                w.execute(update(U).where(U.c.id == 1).values(name="newer"))
            assert c.read() == [("newer",)]  # re-cached
            assert t1.execute(NAME1).all() == [("user1",)]  # T1's snapshot

    run(body)


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_database_default_repeatable_read_bypasses(driver, request, tmp_path):
    """RR set as the database's default (not through SQLAlchemy) is still RR."""
    url = db_url(driver, request, tmp_path)
    seed(url)
    admin = create_engine(url.replace("+asyncpg", "+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dbname = conn.exec_driver_sql("SELECT current_database()").scalar()
        conn.exec_driver_sql(
            f"ALTER DATABASE \"{dbname}\" SET default_transaction_isolation = 'repeatable read'"
        )
    admin.dispose()
    cache = QueryCache()
    engine = make_engine(url)
    counter = counter_for(engine)
    if is_async(driver):
        _first_connect(engine)
    cache.wrap(engine)

    def body(sync_engine: Engine) -> None:
        c = Ctx(sync_engine, cache, counter, url, driver)
        assert c.read() == [("user1",)]
        with c.engine.connect() as t1:
            assert t1.execute(NAME1).all() == [("user1",)]
            with c.engine.begin() as w:
                w.execute(update(U).where(U.c.id == 1).values(name="newer"))
            assert c.read() == [("newer",)]
            t1_again = t1.execute(NAME1).all()
            # asked last, so that asking cannot change how the reads were served
            level = t1.exec_driver_sql("SHOW transaction_isolation").scalar()
            assert level == "repeatable read"
            assert t1_again == [("user1",)]

    try:
        run_sync_body(engine, body)
    finally:
        counter.close()
        cache.close()


def test_session_joined_to_a_connection_reads_its_writes(run):
    def body(c: Ctx) -> None:
        q = select(User).where(User.id == 1)
        with c.session() as s:
            assert s.scalars(q).one().name == "user1"
        with c.session() as s:
            assert s.scalars(q).one().name == "user1"  # cached
        maker = c.cache.sessionmaker()
        with c.engine.connect() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="mine"))
            with Session(bind=conn) as s:  # the plain ORM path is right
                assert s.scalars(q).one().name == "mine"
            with maker(bind=conn) as s:
                assert s.scalars(q).one().name == "mine"
            conn.rollback()
        with c.session() as s:
            assert s.scalars(q).one().name == "user1"

    run(body)


def test_cache_sessionmaker_accepts_a_connection_bind(run):
    def body(c: Ctx) -> None:
        with c.engine.connect() as conn:
            maker = c.cache.sessionmaker(bind=conn)
            with maker() as s:
                assert s.get(User, 1).name == "user1"

    run(body)
