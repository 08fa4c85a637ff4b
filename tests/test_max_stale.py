"""Opt-in bounded staleness: ``execution_options(querycache_max_stale=N)`` and
``QueryCache(max_stale={...})``. An invalidated entry that opted in is served
for at most N seconds after the commit while exactly one refresh runs; without
the option nothing is ever stale. Executions are counted on the database side
and results compared with a plain engine on the same database."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from dbcount import ASYNC_DRIVERS, counter_for, db_url, make_engine, poll, sync_twin
from sqlalchemy import create_engine, event, text

from querycache import QueryCache
from querycache.errors import OptionError
from querycache.refresh import REFRESH_OPTION

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as await_

READ = "SELECT sum(v) AS stale_probe FROM st"
JOIN = "SELECT sum(st.v + st2.w) AS joined_probe FROM st JOIN st2 ON st2.id = st.id"
WAIT = 10.0
N = 16


def _seed(url: str) -> None:
    plain = create_engine(sync_twin(url))
    with plain.begin() as c:
        for t in ("st", "st2"):
            c.execute(text(f"DROP TABLE IF EXISTS {t}"))
        c.execute(text("CREATE TABLE st (id INTEGER PRIMARY KEY, v INTEGER)"))
        c.execute(text("CREATE TABLE st2 (id INTEGER PRIMARY KEY, w INTEGER)"))
        c.execute(text("INSERT INTO st VALUES (1, 10), (2, 20)"))
        c.execute(text("INSERT INTO st2 VALUES (1, 1), (2, 2)"))
    plain.dispose()


def _read(engine: Any, sql: str = READ, **opts: Any) -> Any:
    with engine.connect() as c:
        return c.execute(text(sql).execution_options(**opts)).scalar()


def _write(engine: Any, table: str = "st") -> None:
    col = "v" if table == "st" else "w"
    with engine.begin() as c:
        c.execute(text(f"UPDATE {table} SET {col} = {col} + 1 WHERE id = 1"))


class RefreshGate:
    """Holds every refresh before it reaches the database, until released."""

    def __init__(self, engine: Any) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: Any) -> None:
        if REFRESH_OPTION in ctx.execution_options:
            self.held.set()
            assert self.release.wait(WAIT)


@pytest.fixture
def sqlite(tmp_path: Any) -> Any:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _seed(url)
    engine = create_engine(url)
    counter = counter_for(engine)
    gate = RefreshGate(engine)
    plain = create_engine(url)
    yield url, engine, counter, gate, plain
    gate.release.set()
    engine.dispose()
    plain.dispose()


def test_served_stale_at_most_n_seconds_after_the_commit(sqlite):
    _url, engine, counter, gate, plain = sqlite
    cache = QueryCache(lock_timeout=0.2)
    now = [1000.0]
    cache.refresher.stale.clock = lambda: now[0]
    cache.wrap(engine)
    try:
        assert _read(engine, querycache_max_stale=5) == 30
        n = counter.count("stale_probe")
        _write(engine)  # invalidated at t = 1000
        assert gate.held.wait(WAIT)  # its one refresh is held
        now[0] = 1004.9
        assert _read(engine, querycache_max_stale=5) == 30  # stale, within the bound
        assert counter.count("stale_probe") == n
        now[0] = 1005.0
        # past the bound: a miss (it waits lock_timeout for the held refresh, then reads)
        assert _read(engine, querycache_max_stale=5) == _read(plain) == 31
        assert counter.count("stale_probe") == n + 1
        stale = cache.report().as_dict()["stale"]
        assert stale["hits"] == 1
        assert 4899 <= stale["max_age_ms"] <= 5000
        assert stale["queries"][0]["stale_hits"] == 1
    finally:
        gate.release.set()
        cache.close()


def test_a_reader_is_stale_only_as_far_as_it_allows(sqlite):
    _url, engine, counter, gate, plain = sqlite
    cache = QueryCache(lock_timeout=0.2)
    now = [1000.0]
    cache.refresher.stale.clock = lambda: now[0]
    cache.wrap(engine)
    try:
        assert _read(engine, querycache_max_stale=30) == 30
        _write(engine)
        assert gate.held.wait(WAIT)
        now[0] = 1003.0
        n = counter.count("stale_probe")
        assert _read(engine, querycache_max_stale=2) == _read(plain) == 31  # allows 2 s only
        assert counter.count("stale_probe") == n + 1
    finally:
        gate.release.set()
        cache.close()


def test_never_served_stale_without_the_option(sqlite):
    url, engine, counter, gate, plain = sqlite
    gate.release.set()
    cache = QueryCache()
    cache.wrap(engine)
    try:
        # stored by a reader that opted in; read back by readers that did not
        assert _read(engine, querycache_max_stale=30) == 30
        for _ in range(3):
            n = counter.count("stale_probe")
            _write(engine)
            assert _read(engine) == _read(plain)  # fresh
            assert counter.count("stale_probe") >= n + 1  # its own read, or the refresh's
        # a cache without any setting: invalidation as always
        assert cache.report().as_dict()["stale"]["hits"] == 0
    finally:
        cache.close()
    other = QueryCache()
    engine2 = create_engine(url)
    counter2 = counter_for(engine2)
    other.wrap(engine2)
    try:
        assert _read(engine2) == _read(engine2)
        n = counter2.count("stale_probe")
        _write(engine2)
        assert _read(engine2) == _read(plain)
        assert counter2.count("stale_probe") == n + 1
        assert other.stats.refresh["scheduled"] == 0  # nothing kept, nothing re-run
    finally:
        other.close()
        engine2.dispose()


def test_per_table_setting_covers_writes_to_listed_tables_only(sqlite):
    _url, engine, counter, gate, plain = sqlite
    cache = QueryCache(max_stale={"st": 30})
    cache.wrap(engine)
    try:
        assert _read(engine) == 30
        assert _read(engine, JOIN) == 33
        _write(engine, "st")
        assert gate.held.wait(WAIT)
        n, j = counter.count("stale_probe"), counter.count("joined_probe")
        assert _read(engine) == 30  # no option needed: the setting allows it
        assert _read(engine, JOIN) == 33
        assert counter.count("stale_probe") == n and counter.count("joined_probe") == j
        gate.release.set()
        poll(lambda: cache.stats.refresh["done"] == 2, WAIT, what="two refreshes")
        assert _read(engine) == _read(plain) == 31
        assert _read(engine, JOIN) == _read(plain, JOIN) == 34
        j = counter.count("joined_probe")
        gate.release.clear()
        _write(engine, "st2")  # st2 is not listed: its readers are never late
        assert _read(engine, JOIN) == _read(plain, JOIN) == 35
        assert counter.count("joined_probe") == j + 1
    finally:
        gate.release.set()
        cache.close()


def test_read_your_writes_inside_the_writing_transaction(sqlite):
    _url, engine, _counter, gate, plain = sqlite
    cache = QueryCache()
    cache.wrap(engine)
    try:
        assert _read(engine, querycache_max_stale=30) == 30
        _write(engine)
        assert gate.held.wait(WAIT)
        with engine.connect() as c:
            c.execute(text("UPDATE st SET v = v + 100 WHERE id = 2"))
            q = text(READ).execution_options(querycache_max_stale=30)
            assert c.execute(q).scalar() == 131  # its own write, never the stale 30
            c.commit()
        assert _read(plain) == 131
    finally:
        gate.release.set()
        cache.close()


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
def test_one_refresh_under_16_concurrent_readers(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    _seed(url)
    cache = QueryCache()
    engine = make_engine(url, **({"pool_size": N + 2} if driver == "psycopg" else {}))
    counter = counter_for(engine)
    gate = RefreshGate(engine)
    cache.wrap(engine)
    plain = create_engine(sync_twin(url))
    try:
        assert _read(engine, querycache_max_stale=30) == 30
        n = counter.count("stale_probe")
        _write(engine)
        assert gate.held.wait(WAIT)
        barrier = threading.Barrier(N)
        results: list[Any] = [None] * N

        def reader(i: int) -> None:
            barrier.wait(WAIT)
            results[i] = _read(engine, querycache_max_stale=30)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert results == [30] * N  # the refresh is held: all served stale
        assert counter.count("stale_probe") == n  # none of them reached the database
        gate.release.set()
        poll(lambda: cache.stats.refresh["done"] == 1, WAIT, what="the refresh")
        assert _read(engine, querycache_max_stale=30) == 31  # the refreshed entry
        assert counter.count("stale_probe") == n + 1  # exactly one refresh
        assert cache.report().as_dict()["stale"]["hits"] == N
        with plain.connect() as c:
            assert c.execute(text("SELECT sum(v) FROM st WHERE 1 = 1")).scalar() == 31
    finally:
        gate.release.set()
        cache.close()
        engine.dispose()
        plain.dispose()
        counter.close()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_one_refresh_under_16_concurrent_async_readers(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    _seed(url)
    cache = QueryCache()
    engine = make_engine(url, pool_size=N + 2, max_overflow=0)
    counter = counter_for(engine)
    if driver == "asyncpg":  # see test_api.py::test_wrap_before_first_connection
        async with engine.connect():
            pass
    held, release = asyncio.Event(), asyncio.Event()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _hold(conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: Any) -> None:
        if REFRESH_OPTION in ctx.execution_options:
            held.set()
            await_(asyncio.wait_for(release.wait(), WAIT))  # on the loop, in the greenlet

    cache.wrap(engine)

    async def read() -> Any:
        async with engine.connect() as c:
            q = text(READ).execution_options(querycache_max_stale=30)
            return (await c.execute(q)).scalar()

    try:
        assert await read() == 30
        n = counter.count("stale_probe")
        async with engine.begin() as c:
            await c.execute(text("UPDATE st SET v = v + 1 WHERE id = 1"))
        await asyncio.wait_for(held.wait(), WAIT)
        results = await asyncio.wait_for(asyncio.gather(*(read() for _ in range(N))), WAIT)
        assert results == [30] * N
        assert counter.count("stale_probe") == n
        release.set()
        await asyncio.wait_for(_until(lambda: cache.stats.refresh["done"] == 1), WAIT)
        assert await read() == 31
        assert counter.count("stale_probe") == n + 1
        assert cache.report().as_dict()["stale"]["hits"] == N
    finally:
        release.set()
        await engine.dispose()
        counter.close()
        await cache.aclose()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_max_stale_settings_are_validated(sqlite):
    _url, engine, _counter, _gate, _plain = sqlite
    for bad, exc in (
        ([("st", 5)], TypeError),
        ({"st": "5"}, TypeError),
        ({"st": True}, TypeError),
        ({5: 5}, TypeError),
        ({"st": 0}, ValueError),
        ({"st": -1}, ValueError),
        ({"st": float("inf")}, ValueError),
    ):
        with pytest.raises(exc, match="max_stale"):
            QueryCache(max_stale=bad)
    cache = QueryCache()
    cache.wrap(engine)
    try:
        for bad in ("5", -1, True, float("nan")):
            with pytest.raises(OptionError, match="querycache_max_stale"):
                _read(engine, querycache_max_stale=bad)
        assert _read(engine, querycache_max_stale=0) == 30  # 0: never stale
    finally:
        cache.close()
