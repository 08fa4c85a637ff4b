"""Several OS processes sharing one database and one Redis.

Every child is ``python tests/redis_worker.py`` (see its docstring for the
protocol): it builds its own engine and :class:`QueryCache`, reports ready,
and starts its work when the parent says ``go``, so all children run at the
same time. Database executions are counted on the database side (SQLite's
trace callback in each child, ``pg_stat_statements`` for PostgreSQL).

The freshness bound
-------------------
A commit through the cache replaces the tables' version tokens in Redis and
publishes the invalidation *before* ``COMMIT`` returns; other processes drop
their memory-tier entries when the message arrives on their bus thread. The
issue's goal is p99 <= 50 ms on loopback. The tests declare **50 ms**: a
read that *starts* more than 50 ms after another process's commit returned
must see that commit. Delivery itself takes well under a millisecond; the
margin is for the scheduler (4 busy processes on 2 cores) and the GIL switch
interval (5 ms) in the reading process. ``CLOCK_MONOTONIC`` is system-wide on
Linux, so the writer's commit times and the readers' start times compare
directly.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis_worker import (
    COUNTER,
    SLOW_SQL,
    PgCalls,
    SqliteTrace,
    connected_cache,
    create_counter,
    create_slow_table,
    poll,
)

#: wall-clock bounds and throughput floors: `make test` runs these alone (see Makefile)
pytestmark = pytest.mark.serial

WORKER = Path(__file__).with_name("redis_worker.py")

#: the declared bound (see the module docstring)
BOUND = 0.050


class Child:
    """One ``redis_worker.py`` process."""

    def __init__(self, cfg: dict[str, Any], log: Path) -> None:
        self.log = log
        self._err = open(log, "w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child {self.proc.pid}: no {event!r} within {timeout}s") from None
        if not line:
            self.proc.wait(10)
            raise AssertionError(
                f"child exited with {self.proc.returncode} before {event!r}:\n"
                + self.log.read_text()[-3000:]
            )
        msg = json.loads(line)
        assert msg["event"] == event, msg
        return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._err.close()


def run_children(cfgs: list[dict[str, Any]], tmp_path: Path, timeout: float = 60) -> list[dict]:
    """Start every child, wait until all are ready, release them together, collect."""
    children = [Child(cfg, tmp_path / f"child{i}.log") for i, cfg in enumerate(cfgs)]
    try:
        for c in children:
            c.expect("ready", timeout)
        for c in children:
            c.go()
        results = [c.expect("done", timeout) for c in children]
        for c in children:
            assert c.proc.wait(timeout) == 0, c.log.read_text()[-3000:]
        return results
    finally:
        for c in children:
            c.close()


def cache_errors(result: dict[str, Any]) -> dict[str, int]:
    """Failures inside the cache other than Redis calls that failed open.

    A Redis reply slower than ``redis_timeout`` (50 ms) on a loaded 2-core
    machine is a counted, harmless miss; anything else is a bug."""
    return {
        k: v for k, v in result["totals"]["errors_by_kind"].items() if not k.startswith("redis ")
    }


@pytest.fixture
def namespace() -> str:
    return "mp" + uuid.uuid4().hex[:10]


def db_for(backend: str, tmp_path: Path, request: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return request.getfixturevalue("pg_url")


def point_value(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(COUNTER.c.v).where(COUNTER.c.id == 1)).scalar_one())


# -- 3. invalidation across processes ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_no_stale_read_after_the_bound_across_processes(
    backend, tmp_path, request, redis_server, namespace
):
    """1 writer + 3 readers (4 processes): every read that starts more than BOUND
    after a commit returned sees that commit; the propagation p99 is within it."""
    url = db_for(backend, tmp_path, request)
    create_counter(url)
    base = {"db_url": url, "redis_url": redis_server.url, "namespace": namespace}
    duration = 1.5
    cfgs = [{**base, "mode": "writer", "duration": duration, "pace": 0.01}]
    cfgs += [{**base, "mode": "reader", "duration": duration, "pace": 0.0005}] * 3
    writer, *readers = run_children(cfgs, tmp_path)

    commits = [(int(v), float(t)) for v, t in writer["commits"]]
    assert len(commits) >= 30, "the writer hardly wrote"
    assert [v for v, _ in commits] == list(range(1, len(commits) + 1))
    times = [t for _, t in commits]
    assert times == sorted(times)
    final = commits[-1][0]
    engine = sa.create_engine(url)
    assert point_value(engine) == final
    engine.dispose()

    def committed_by(t: float) -> int:
        """The last value whose COMMIT had returned at time ``t``."""
        lo, hi = 0, len(times)
        while lo < hi:
            mid = (lo + hi) // 2
            if times[mid] <= t:
                lo = mid + 1
            else:
                hi = mid
        return lo  # values are 1..n in commit order

    stale, lags, impossible = [], [], []
    for r, reader in enumerate(readers):
        reads = [(float(a), int(v), float(b)) for a, v, b in reader["reads"]]
        assert len(reads) > 100, f"reader {r} hardly read"
        assert not cache_errors(reader), reader["totals"]["errors_by_kind"]
        # a read can't see a value whose commit had not even started when it ended
        impossible += [x for x in reads if x[1] > committed_by(x[2]) + 1]
        for start, value, _ in reads:
            required = committed_by(start - BOUND)
            if value < required:
                stale.append((r, start, value, required, start - times[value]))
        # propagation lag of every commit to this reader: the last read that
        # still saw an older value, measured from the commit's return
        last_older: dict[int, float] = {}
        for start, value, _ in reads:
            for v in range(value + 1, committed_by(start) + 1):
                last_older[v] = start
        lags += [max(0.0, last_older.get(v, 0.0) - t) for v, t in commits]

    lags.sort()
    p99 = lags[int(0.99 * (len(lags) - 1))]
    assert not impossible, impossible[:5]
    assert not stale, (
        f"{len(stale)} stale reads more than {BOUND * 1000:.0f} ms after the commit; "
        f"first (reader, start, seen, required, age): {stale[:5]}; "
        f"p99 lag {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )
    assert p99 <= BOUND, f"invalidation p99 {p99 * 1000:.1f} ms"
    for reader in readers:  # the readers really used the memory tier and the database
        t = reader["totals"]
        assert t["memory_hits"] > 0 and t["misses"] > 0, t


def test_a_commit_in_another_process_invalidates_redis_at_once(tmp_path, redis_server, namespace):
    """The writer child's COMMIT returned: a brand-new cache (empty memory) reading
    right away gets the new value, not the Redis entry; an old cache's memory
    entry goes within the bound."""
    url = db_for("sqlite", tmp_path, None)
    create_counter(url)
    caches, engines = [], []

    def new(kind: str = "cache") -> tuple[Any, sa.Engine, SqliteTrace]:
        cache = connected_cache(redis_url=redis_server.url, namespace=namespace)
        engine = sa.create_engine(url)
        trace = SqliteTrace(engine)  # before wrap(), which may connect at once
        cache.wrap(engine)
        caches.append(cache)
        engines.append(engine)
        return cache, engine, trace

    try:
        a, ea, _ = new()
        assert point_value(ea) == 0
        a.redis.flush()
        b, eb, tb = new()
        assert point_value(eb) == 0
        assert tb.count("FROM counter") == 0, "the second cache should hit Redis"
        assert b.report().as_dict()["totals"]["redis_hits"] == 1

        run_children(
            [
                {
                    "db_url": url,
                    "redis_url": redis_server.url,
                    "namespace": namespace,
                    "mode": "writer",
                    "n": 1,
                    "start": 7,
                }
            ],
            tmp_path,
        )
        c, ec, tc = new()
        assert point_value(ec) == 7, "a fresh cache was served the invalidated Redis entry"
        assert tc.count("FROM counter") == 1
        assert c.report().as_dict()["totals"]["redis_hits"] == 0
        # the processes that had the value in memory drop it (the bus)
        poll(lambda: point_value(ea) == 7, timeout=2, what="cache a sees the commit")
        poll(lambda: point_value(eb) == 7, timeout=2, what="cache b sees the commit")
    finally:
        for cache in caches:
            cache.close()
        for engine in engines:
            engine.dispose()


# -- 7. stampede across processes ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_misses_in_four_processes_run_the_query_once(
    backend, tmp_path, request, redis_server, namespace
):
    url = db_for(backend, tmp_path, request)
    create_slow_table(url)
    plain = sa.create_engine(url)
    with plain.connect() as conn:
        expected = [list(r) for r in conn.execute(sa.text(SLOW_SQL)).all()]
    plain.dispose()
    pg = PgCalls(url) if backend == "postgresql" else None
    before = pg.count("a.x < b.x") if pg else 0
    cfg = {
        "db_url": url,
        "redis_url": redis_server.url,
        "namespace": namespace,
        "mode": "stampede",
        "lease_timeout": 10.0,
        # four processes starting on two cores starve their bus threads for
        # 100-400 ms: with the default 50 ms that reads as a Redis stall, and
        # a process in doubt rightly skips Redis (the lease's rule, tested in
        # test_staleness); this test is about the cross-process singleflight
        "redis_timeout": 0.5,
    }
    results = run_children([cfg] * 4, tmp_path)
    for r in results:
        assert r["rows"] == expected
        assert not cache_errors(r), r["totals"]["errors_by_kind"]
    if pg is not None:
        executions = pg.count("a.x < b.x") - before
        pg.close()
    else:
        executions = sum(r["db_executions"] for r in results)
    misses = sorted(r["totals"]["misses"] for r in results)
    redis_hits = sorted(r["totals"]["redis_hits"] for r in results)
    assert executions == 1, f"the database ran the query {executions} times"
    assert misses == [0, 0, 0, 1], misses
    assert redis_hits == [0, 1, 1, 1], redis_hits
    # the followers waited for the leader's store, not for the lease to expire
    assert max(r["elapsed"] for r in results) < 5.0
