"""The stale-set race and the stampede, forced deterministically.

* **Race**: a reader misses, runs its query, and is held (an
  ``after_cursor_execute`` listener: after the database answered, before the
  cache stores) while a writer thread updates the row and commits through a
  sync engine wrapped by the same cache. Then the reader stores. The next
  read must return the new value, and the database must see it.
* **Stampede**: 16 concurrent misses of one key (threads on sync engines,
  asyncio tasks on async ones). The leader is held in a listener until every
  reader has arrived, so the others really are waiting; the database must
  see exactly one execution and everyone must get the right rows.
* A leader that fails does not hang its followers; ``lock_timeout`` bounds
  how long a follower waits for a leader.

No fixed sleeps: ``threading.Event``/``asyncio.Event`` and polls with
deadlines.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from dbcount import (
    ASYNC_DRIVERS,
    DRIVERS,
    SYNC_DRIVERS,
    User,
    counter_for,
    db_url,
    is_async,
    is_pg,
    make_engine,
    run_sync_body,
    seed,
    sync_twin,
)
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_
except ImportError:  # pragma: no cover
    from sqlalchemy.util.concurrency import await_only as await_

from querycache import QueryCache

#: wall-clock bounds and throughput floors: `make test` runs these alone (see Makefile)
pytestmark = pytest.mark.serial

U = User.__table__
N = 16
WAIT = 20.0  # generous deadline for events; never reached when things work


def _wal(url: str) -> None:
    """SQLite: WAL, so a writer can commit while a reader's statement is open."""
    if url.startswith("sqlite"):
        engine = create_engine(sync_twin(url))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        engine.dispose()


def _prepare(driver: str, request: Any, tmp_path: Any, **cache_kw: Any) -> tuple[Any, ...]:
    url = db_url(driver, request, tmp_path)
    seed(url)
    _wal(url)
    cache = QueryCache(**cache_kw)
    engine = make_engine(url, pool_size=N + 4, max_overflow=0)
    counter = counter_for(engine)
    if is_pg(driver) and is_async(driver):
        # see test_api.py::test_wrap_before_first_connection
        async def touch() -> None:
            async with engine.connect():
                pass
            await engine.dispose()

        asyncio.run(touch())
    cache.wrap(engine)
    return url, cache, engine, counter


# -- the stale-set race --------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("how", ["core", "text", "orm"])
def test_reader_store_after_writer_commit_serves_nothing_stale(driver, how, request, tmp_path):
    url, cache, engine, counter = _prepare(driver, request, tmp_path)
    # the writer: a sync engine on the same database, wrapped by the same cache
    writer = cache.wrap(create_engine(sync_twin(url)))
    if how == "core":
        stmt: Any = select(U.c.name).where(U.c.id == 1)
    elif how == "text":
        stmt = text("SELECT name FROM qc_users WHERE id = 1")
    else:
        stmt = select(User).where(User.id == 1)

    def write(name: str) -> None:
        with writer.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name=name))

    def body(sync_engine: Engine) -> None:
        maker = cache.sessionmaker(bind=sync_engine)

        def read() -> str:
            if how == "orm":
                with maker() as s:
                    return s.execute(stmt).scalar_one().name
            with sync_engine.connect() as conn:
                return conn.execute(stmt).scalar_one()

        hold = {"armed": True}
        wrote = threading.Event()

        def writer_thread() -> None:
            write("new")
            wrote.set()

        @event.listens_for(sync_engine, "after_cursor_execute")
        def hold_reader(conn, cursor, statement, params, context, many) -> None:
            if hold["armed"] and "qc_users" in statement:
                hold["armed"] = False
                # the reader has its (old) rows and has not stored them yet
                t = threading.Thread(target=writer_thread)
                t.start()
                t.join(WAIT)
                assert wrote.is_set(), "writer did not commit"

        first = read()
        assert first == "user1"  # read before the commit: the old value is fine here
        assert wrote.is_set()
        event.remove(sync_engine, "after_cursor_execute", hold_reader)
        n = counter.count("from qc_users")
        assert read() == "new"  # nothing stale was stored
        assert counter.count("from qc_users") == n + 1  # it went to the database
        assert read() == "new"
        assert counter.count("from qc_users") == n + 1  # and is cached now
        # and once more: a second race on a warm key
        write("newer")
        assert read() == "newer"

    try:
        run_sync_body(engine, body)
    finally:
        writer.dispose()
        counter.close()
        cache.close()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("how", ["invalidate", "clear"])
def test_race_against_invalidate_call(driver, how, request, tmp_path):
    """``cache.invalidate()``/``clear()`` between a reader's query and its store also win."""
    url, cache, engine, counter = _prepare(driver, request, tmp_path)
    plain = create_engine(sync_twin(url))
    stmt = select(U.c.name).where(U.c.id == 2)

    def body(sync_engine: Engine) -> None:
        hold = {"armed": True}

        @event.listens_for(sync_engine, "after_cursor_execute")
        def change_behind_the_back(conn, cursor, statement, params, context, many) -> None:
            if hold["armed"] and "qc_users" in statement:
                hold["armed"] = False
                # an out-of-band write the cache cannot see, then an explicit invalidate
                with plain.begin() as c:
                    c.execute(update(U).where(U.c.id == 2).values(name="oob"))
                if how == "clear":
                    cache.clear()
                else:
                    cache.invalidate("qc_users")

        with sync_engine.connect() as conn:
            assert conn.execute(stmt).scalar_one() == "user2"
        with sync_engine.connect() as conn:
            assert conn.execute(stmt).scalar_one() == "oob"

    try:
        run_sync_body(engine, body)
    finally:
        plain.dispose()
        counter.close()
        cache.close()


# -- the stampede ----------------------------------------------------------------------------------

STAMPEDE_SQL = "SELECT id, name FROM qc_users WHERE id >= :lo ORDER BY id"
EXPECTED = [(i, f"user{i}") for i in range(2, 6)]


def _arrivals(sync_engine: Engine, n: int, on_all: Callable[[], None]) -> dict[str, Any]:
    """Count executions of the stampede statement as they start (before any cache lookup)."""
    state = {"arrived": 0, "lock": threading.Lock()}

    @event.listens_for(sync_engine, "before_execute")
    def arrive(conn, clauseelement, multiparams, params, execution_options) -> None:
        if "qc_users WHERE id >=" in str(clauseelement):
            with state["lock"]:
                state["arrived"] += 1
                if state["arrived"] == n:
                    on_all()

    return state


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_stampede_threads_one_execution(driver, request, tmp_path):
    _url, cache, engine, counter = _prepare(driver, request, tmp_path)
    all_here = threading.Event()
    leader_held = threading.Event()
    _arrivals(engine, N, all_here.set)
    seen = {"first": True}

    @event.listens_for(engine, "before_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            leader_held.set()
            assert all_here.wait(WAIT), "not every reader arrived"

    start = threading.Barrier(N)

    def reader() -> list[Any]:
        start.wait(WAIT)
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(STAMPEDE_SQL), {"lo": 2})]

    n0 = counter.count("FROM qc_users WHERE id >=")
    try:
        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(lambda _: reader(), range(N)))
        assert leader_held.is_set()
        assert results == [EXPECTED] * N
        assert counter.count("FROM qc_users WHERE id >=") == n0 + 1
    finally:
        engine.dispose()
        counter.close()
        cache.close()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
@pytest.mark.parametrize("api", ["connection", "session"])
async def test_stampede_asyncio_tasks_one_execution(driver, api, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    seed(url)
    cache = QueryCache()
    engine = make_engine(url, pool_size=N + 4, max_overflow=0)
    counter = counter_for(engine)
    if driver == "asyncpg":  # see test_api.py::test_wrap_before_first_connection
        async with engine.connect():
            pass
    cache.wrap(engine)
    all_here = asyncio.Event()
    seen = {"first": True, "held": False}
    _arrivals(engine.sync_engine, N, all_here.set)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            seen["held"] = True
            # inside the engine's greenlet: wait on the event loop, not the thread
            await_(asyncio.wait_for(all_here.wait(), WAIT))

    async def reader() -> list[Any]:
        if api == "session":
            async with AsyncSession(bind=engine) as s:
                return [tuple(r) for r in await s.execute(text(STAMPEDE_SQL), {"lo": 2})]
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(STAMPEDE_SQL), {"lo": 2})]

    n0 = counter.count("FROM qc_users WHERE id >=")
    try:
        results = await asyncio.wait_for(asyncio.gather(*(reader() for _ in range(N))), WAIT)
        assert seen["held"]
        assert results == [EXPECTED] * N
    finally:
        await engine.dispose()
    assert counter.count("FROM qc_users WHERE id >=") == n0 + 1
    counter.close()
    await cache.aclose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_stampede_orm_sessions_one_execution(driver, request, tmp_path):
    _url, cache, engine, counter = _prepare(driver, request, tmp_path)
    maker = cache.sessionmaker(bind=engine)
    all_here = threading.Event()
    _arrivals(engine, N, all_here.set)
    seen = {"first": True}
    stmt = select(User).where(User.id >= 2).order_by(User.id)

    @event.listens_for(engine, "before_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users.id >=" in statement and seen["first"]:
            seen["first"] = False
            all_here.wait(WAIT)

    start = threading.Barrier(N)
    arrived = {"n": 0}
    lock = threading.Lock()

    def reader() -> list[Any]:
        start.wait(WAIT)
        with maker() as s:
            with lock:
                arrived["n"] += 1
                if arrived["n"] == N:
                    all_here.set()
            return [(u.id, u.name) for u in s.scalars(stmt)]

    n0 = counter.count("FROM qc_users WHERE qc_users.id >=")
    try:
        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(lambda _: reader(), range(N)))
        assert results == [EXPECTED] * N
        assert counter.count("FROM qc_users WHERE qc_users.id >=") == n0 + 1
    finally:
        engine.dispose()
        counter.close()
        cache.close()


# -- failing leaders and the wait bound ------------------------------------------------


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_followers_of_a_failing_leader_do_not_hang(driver, request, tmp_path):
    _url, cache, engine, counter = _prepare(driver, request, tmp_path)
    all_here = threading.Event()
    _arrivals(engine, N, all_here.set)
    seen = {"first": True}

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def break_leader(conn, cursor, statement, params, context, many) -> Any:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            all_here.wait(WAIT)
            # the leader's query fails in the database itself
            return statement.replace("qc_users", "qc_no_such_table"), params
        return statement, params

    start = threading.Barrier(N)

    def reader() -> Any:
        start.wait(WAIT)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(STAMPEDE_SQL), {"lo": 2})]
        except Exception as exc:
            return exc

    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(lambda _: reader(), range(N)))
        elapsed = time.monotonic() - t0
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1, errors  # only the leader failed
        assert "qc_no_such_table" in str(errors[0])
        assert [r for r in results if not isinstance(r, Exception)] == [EXPECTED] * (N - 1)
        assert elapsed < cache.lock_timeout  # nobody waited out the bound
        # nothing of the failure is cached: the next read is right
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(text(STAMPEDE_SQL), {"lo": 2})] == EXPECTED
    finally:
        engine.dispose()
        counter.close()
        cache.close()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_lock_timeout_bounds_a_followers_wait(driver, request, tmp_path):
    _url, cache, engine, counter = _prepare(driver, request, tmp_path, lock_timeout=0.3)
    leader_in = threading.Event()
    release = threading.Event()
    seen = {"first": True}

    @event.listens_for(engine, "before_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            leader_in.set()
            release.wait(WAIT)

    def read() -> list[Any]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(STAMPEDE_SQL), {"lo": 2})]

    try:
        with ThreadPoolExecutor(2) as pool:
            leader = pool.submit(read)
            assert leader_in.wait(WAIT)
            t0 = time.monotonic()
            follower = pool.submit(read)
            assert follower.result(WAIT) == EXPECTED
            waited = time.monotonic() - t0
            assert not release.is_set() and not leader.done()  # the leader is still held
            assert 0.3 <= waited < 5.0
            release.set()
            assert leader.result(WAIT) == EXPECTED
        assert counter.count("FROM qc_users WHERE id >=") == 2
    finally:
        release.set()
        engine.dispose()
        counter.close()
        cache.close()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_lock_timeout_async_follower(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    seed(url)
    cache = QueryCache(lock_timeout=0.3)
    engine = make_engine(url)
    counter = counter_for(engine)
    if driver == "asyncpg":
        async with engine.connect():
            pass
    cache.wrap(engine)
    leader_in = asyncio.Event()
    release = asyncio.Event()
    seen = {"first": True}

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            leader_in.set()
            await_(asyncio.wait_for(release.wait(), WAIT))

    async def read() -> list[Any]:
        async with AsyncSession(bind=engine) as s:
            return [tuple(r) for r in await s.execute(text(STAMPEDE_SQL), {"lo": 2})]

    try:
        leader = asyncio.ensure_future(read())
        await asyncio.wait_for(leader_in.wait(), WAIT)
        t0 = time.monotonic()
        assert await asyncio.wait_for(read(), WAIT) == EXPECTED
        waited = time.monotonic() - t0
        assert not leader.done()
        assert 0.3 <= waited < 5.0
        release.set()
        assert await asyncio.wait_for(leader, WAIT) == EXPECTED
    finally:
        release.set()
        await engine.dispose()
    assert counter.count("FROM qc_users WHERE id >=") == 2
    counter.close()
    await cache.aclose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_stampede_followers_see_a_commit_made_while_they_waited(driver, request, tmp_path):
    """Followers that started waiting after a commit must not take a leader's older rows."""
    url, cache, engine, counter = _prepare(driver, request, tmp_path)
    writer = cache.wrap(create_engine(sync_twin(url)))
    leader_ran = threading.Event()
    release = threading.Event()
    follower_here = threading.Event()
    seen = {"first": True}
    _arrivals(engine, 2, follower_here.set)

    @event.listens_for(engine, "after_cursor_execute")
    def hold_leader(conn, cursor, statement, params, context, many) -> None:
        if "qc_users WHERE id >=" in statement and seen["first"]:
            seen["first"] = False
            leader_ran.set()  # the leader has the old rows
            release.wait(WAIT)

    def read() -> list[Any]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(STAMPEDE_SQL), {"lo": 2})]

    try:
        with ThreadPoolExecutor(2) as pool:
            leader = pool.submit(read)
            assert leader_ran.wait(WAIT)
            with writer.begin() as conn:
                conn.execute(update(U).where(U.c.id == 2).values(name="committed"))
            follower = pool.submit(read)  # starts after the commit returned
            assert follower_here.wait(WAIT)  # (it may or may not have joined the flight yet)
            release.set()
            assert leader.result(WAIT) == EXPECTED  # began before the commit
            assert follower.result(WAIT)[0] == (2, "committed")
        assert read()[0] == (2, "committed")
    finally:
        release.set()
        engine.dispose()
        writer.dispose()
        counter.close()
        cache.close()
