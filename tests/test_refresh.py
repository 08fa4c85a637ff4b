"""Write-through refresh: ``QueryCache(refresh_on_write=N, refresh_budget=...)``.

After a commit, the N hottest entries it invalidated are re-executed on a
connection of their own, so the next reader hits. Everything is counted on the
database side (SQLite's trace callback, ``pg_stat_statements``) and compared
with a plain engine on the same database.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from dbcount import (
    DRIVERS,
    counter_for,
    db_url,
    is_async,
    make_engine,
    poll,
    run_sync_body,
    sync_twin,
)
from sqlalchemy import create_engine, event, text

from querycache import QueryCache
from querycache.refresh import REFRESH_OPTION

READ = "SELECT v AS refresh_probe FROM rt WHERE id = :id"
WAIT = 10.0


def _seed(url: str) -> None:
    plain = create_engine(sync_twin(url))
    with plain.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS rt"))
        c.execute(text("CREATE TABLE rt (id INTEGER PRIMARY KEY, v INTEGER)"))
        c.execute(text("INSERT INTO rt VALUES (1, 10), (2, 20), (3, 30)"))
    plain.dispose()


def _read(engine: Any, i: int) -> Any:
    with engine.connect() as c:
        return c.execute(text(READ), {"id": i}).scalar()


def _plain(url: str, i: int) -> Any:
    """The same read on a plain engine (another statement, not counted as ours:
    pg_stat_statements ignores column aliases)."""
    plain = create_engine(sync_twin(url))
    try:
        with plain.connect() as c:
            return c.execute(text("SELECT v FROM rt WHERE id = :id LIMIT 1"), {"id": i}).scalar()
    finally:
        plain.dispose()


def _body(engine: Any, url: str, counter: Any, cache: QueryCache) -> None:
    for _ in range(4):
        assert _read(engine, 1) == 10  # 3 hits
    for _ in range(2):
        assert _read(engine, 2) == 20  # 1 hit
    assert _read(engine, 3) == 30  # no hit: not hot
    n = counter.count("refresh_probe")
    assert n == 3
    with engine.begin() as c:
        c.execute(text("UPDATE rt SET v = v + 1 WHERE id IN (1, 2, 3)"))
    # the budget is large here: commit() returned after the refresh stored
    assert counter.count("refresh_probe") == n + 1  # one refresh: the hottest only
    assert _read(engine, 1) == _plain(url, 1) == 11
    assert counter.count("refresh_probe") == n + 1  # served from the refreshed entry
    assert _read(engine, 2) == _plain(url, 2) == 21
    assert counter.count("refresh_probe") == n + 2  # not refreshed (N=1): a miss
    figures = cache.report().as_dict()["refresh"]
    assert figures["done"] == 1 and figures["within_budget"] == 1
    assert figures["over_budget"] == 0 and figures["failed"] == 0
    q = next(q for q in cache.report().as_dict()["queries"] if "refresh_probe" in q["fingerprint"])
    assert q["misses"] == 4  # the refresh is not counted as a miss of the statement


@pytest.mark.parametrize("driver", DRIVERS)
def test_refresh_on_write_turns_the_next_read_into_a_hit(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    _seed(url)
    cache = QueryCache(refresh_on_write=1, refresh_budget=WAIT)
    engine = make_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    try:
        run_sync_body(engine, _body, url, counter, cache)
    finally:
        cache.close()
        counter.close()
        if not is_async(driver):
            engine.dispose()


class Gate:
    """A SQLite function ``qc_gate(x)`` that, armed, blocks inside the
    database's execution of a refresh (its snapshot already taken) until
    released."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def engine(self, url: str) -> Any:
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi: Any, record: Any) -> None:
            dbapi.create_function("qc_gate", 1, self)
            dbapi.execute("PRAGMA journal_mode=WAL")  # a reader does not block a writer

        return engine

    def __call__(self, x: Any) -> Any:
        if self.armed and threading.current_thread().name == "querycache-refresh":
            self.entered.set()
            self.release.wait(WAIT)
        return x


GATED = "SELECT qc_gate(v) AS gated_probe FROM rt WHERE id = :id"


@pytest.fixture
def gated(tmp_path: Any) -> Any:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _seed(url)
    gate = Gate()
    engine, plain = gate.engine(url), gate.engine(url)
    counter = counter_for(engine)
    cache = QueryCache(refresh_on_write=4, immutable_functions=["qc_gate"])
    cache.wrap(engine)
    yield cache, engine, plain, counter, gate
    gate.release.set()
    cache.close()
    engine.dispose()
    plain.dispose()


def _gated_read(engine: Any) -> Any:
    with engine.connect() as c:
        return c.execute(text(GATED), {"id": 1}).scalar()


def _update(engine: Any) -> float:
    t = time.perf_counter()
    with engine.begin() as c:
        c.execute(text("UPDATE rt SET v = v + 1 WHERE id = 1"))
    return time.perf_counter() - t


def test_commit_returns_within_budget_while_the_refresh_blocks(gated):
    cache, engine, plain, counter, gate = gated
    assert _gated_read(engine) == _gated_read(engine) == 10
    gate.armed = True
    took = _update(engine)
    assert gate.entered.wait(WAIT)  # the refresh is inside the database, blocked
    # default budget 5 ms: commit() did not wait for it (margin for a loaded machine)
    assert took < 1.0
    figures = cache.report().as_dict()["refresh"]
    assert figures["over_budget"] == 1 and figures["within_budget"] == 0
    assert figures["done"] == 0
    gate.release.set()
    poll(lambda: cache.stats.refresh["done"] == 1, WAIT, what="refresh done")
    n = counter.count("gated_probe")
    assert _gated_read(engine) == _gated_read(plain) == 11
    assert counter.count("gated_probe") == n  # a hit (the trace sees this engine only)


def test_a_refresh_that_loses_to_a_newer_commit_stores_nothing(gated):
    cache, engine, plain, counter, gate = gated
    assert _gated_read(engine) == _gated_read(engine) == 10
    gate.armed = True
    _update(engine)  # v = 11; its refresh reads 11 and blocks
    assert gate.entered.wait(WAIT)
    _update(engine)  # v = 12 commits while the refresh holds its old snapshot
    gate.armed = False
    gate.release.set()
    poll(
        lambda: cache.stats.refresh["stored nothing (a newer write)"] == 1,
        WAIT,
        what="the refresh finished without storing",
    )
    n = counter.count("gated_probe")
    assert _gated_read(engine) == _gated_read(plain) == 12  # never the refresh's 11
    assert counter.count("gated_probe") == n + 1  # a miss
    assert cache.stats.refresh["done"] == 0


def test_rollback_refreshes_nothing(gated):
    cache, engine, plain, counter, _gate = gated
    assert _gated_read(engine) == _gated_read(engine) == 10
    n = counter.count("gated_probe")
    with engine.connect() as c:
        c.execute(text("UPDATE rt SET v = 99 WHERE id = 1"))
        c.rollback()
    assert counter.count("gated_probe") == n
    assert cache.stats.refresh["scheduled"] == 0
    assert _gated_read(engine) == _gated_read(plain) == 10
    assert counter.count("gated_probe") == n  # still a hit


def test_refresh_runs_outside_the_users_transaction(gated):
    _cache, engine, plain, _counter, _gate = gated
    seen: list[Any] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _where(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: Any) -> None:
        if "gated_probe" in statement and REFRESH_OPTION in ctx.execution_options:
            seen.append(conn)

    assert _gated_read(engine) == _gated_read(engine) == 10
    with engine.connect() as user:
        user.execute(text("UPDATE rt SET v = v + 1 WHERE id = 1"))
        user.commit()
        poll(lambda: seen, WAIT, what="a refresh")
        assert all(conn is not user for conn in seen)
    assert _gated_read(engine) == _gated_read(plain) == 11


def test_refresh_settings_are_validated():
    for bad, exc in ((-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="refresh_on_write"):
            QueryCache(refresh_on_write=bad)
    for bad, exc in ((-0.1, ValueError), ("5ms", TypeError), (float("nan"), ValueError)):
        with pytest.raises(exc, match="refresh_budget"):
            QueryCache(refresh_budget=bad)
    QueryCache(refresh_on_write=0, refresh_budget=0).close()
