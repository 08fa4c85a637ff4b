"""Helpers of the Redis-tier tests, and the child process of the multi-process tests.

Imported by ``tests/test_redis_*.py`` (pytest puts ``tests/`` on ``sys.path``)
for the small things every Redis test needs: polling with a deadline, server
side command counters, database-side execution counters, and a cache whose
invalidation bus is connected.

Run as a script (``python tests/redis_worker.py '<json config>'``) it is one
OS process of a multi-process test. Protocol, one JSON object per line:

* the child prints ``{"event": "ready"}`` once its engine, cache and Redis
  connections are up, then waits for a line ``go`` on stdin (so that every
  child starts its work at the same moment);
* it prints ``{"event": "done", ...}`` with its results and exits 0.

Modes (``config["mode"]``):

``writer``
    ``UPDATE counter SET v = :v WHERE id = 1`` for ``v = start, start+1, ...``
    (``n`` writes or for ``duration`` seconds, ``pace`` seconds apart), each
    in its own transaction through the cache; records the monotonic time
    at which each ``COMMIT`` returned (``CLOCK_MONOTONIC`` is system-wide on
    Linux, so parent and children share one clock).
``reader``
    Reads the counter through the cache (a Core point query and an aggregate,
    alternately) for ``duration`` seconds; records
    ``(start, value, end)`` of every read.
``stampede``
    Runs one slow query once through the cache; reports how many times the
    database started it *in this process* (SQLite trace callback) and the
    cache's report totals.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from dbcount import PgStatements, SqliteTrace, poll

from querycache import QueryCache

__all__ = [
    "COUNTER",
    "SLOW_SQL",
    "PgCalls",
    "SqliteTrace",
    "command_counts",
    "connected_cache",
    "create_counter",
    "create_slow_table",
    "poll",
    "server_stats",
]

HERE = Path(__file__).resolve().parent

META = sa.MetaData()
COUNTER = sa.Table(
    "counter",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("v", sa.Integer, nullable=False),
)
BIG = sa.Table(
    "big",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("x", sa.Integer, nullable=False),
)
#: a query slow enough (a few hundred ms) that concurrent misses really overlap
SLOW_SQL = "SELECT count(*) AS n FROM big a JOIN big b ON a.x < b.x WHERE a.x % 7 <> b.x % 5"
SLOW_ROWS = 2500


# -- polling -------------------------------------------------------------------------


# -- Redis ------------------------------------------------------------------------------


def connected_cache(timeout: float = 10.0, **kw: Any) -> QueryCache:
    """A :class:`QueryCache` whose invalidation bus is subscribed (its memory
    tier is suspended until then)."""
    kw.setdefault("publish_stats", None)  # tests count Redis commands
    cache = QueryCache(**kw)
    if cache.bus is not None and not cache.bus.connected.wait(timeout):
        cache.close()
        raise AssertionError("the invalidation bus did not connect")
    return cache


def command_counts(client: Any) -> Counter[str]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (server side)."""
    out: Counter[str] = Counter()
    for name, value in client.info("commandstats").items():
        cmd = name.removeprefix("cmdstat_")
        out[cmd] = int(value["calls"])
    return out


def server_stats(client: Any) -> dict[str, Any]:
    """``INFO stats`` of the server (``total_reads_processed`` etc.)."""
    return dict(client.info("stats"))


def scan_keys(client: Any, match: str = "*") -> list[bytes]:
    """Every key matching ``match`` (on every node for a cluster client)."""
    if hasattr(client, "get_nodes"):  # redis.cluster.RedisCluster
        keys: list[bytes] = []
        for node in client.get_primaries():
            keys += list(node.redis_connection.scan_iter(match=match, count=1000))
        return keys
    return list(client.scan_iter(match=match, count=1000))


# -- database-side execution counters: the ones every core test uses ----------------------

PgCalls = PgStatements


def create_counter(url: str) -> None:
    """Table ``counter``: row 1 is the counter (v = 0), row 2 a constant 0.

    SQLite files are switched to WAL so readers never wait for the writer.
    """
    engine = sa.create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        META.drop_all(engine, tables=[COUNTER])
        META.create_all(engine, tables=[COUNTER])
        with engine.begin() as conn:
            conn.execute(sa.insert(COUNTER), [{"id": 1, "v": 0}, {"id": 2, "v": 0}])
    finally:
        engine.dispose()


def create_slow_table(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        META.drop_all(engine, tables=[BIG])
        META.create_all(engine, tables=[BIG])
        with engine.begin() as conn:
            conn.execute(
                sa.insert(BIG), [{"id": i, "x": (i * 7919) % 10007} for i in range(SLOW_ROWS)]
            )
    finally:
        engine.dispose()


# -- the child process ---------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _await_go() -> None:
    _emit({"event": "ready", "pid": os.getpid()})
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def _totals(cache: QueryCache) -> dict[str, Any]:
    d = cache.report().as_dict()
    return {**d["totals"], "errors_by_kind": d["errors"], "events": d["events"]}


POINT = sa.select(COUNTER.c.v).where(COUNTER.c.id == 1)
TOTAL = sa.select(sa.func.sum(COUNTER.c.v).label("s"))


def _writer(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    # warm the pool and the Redis connection before the clock starts
    with engine.connect() as conn:
        conn.execute(POINT).scalar_one()
    _await_go()
    commits = []
    pace = float(cfg.get("pace", 0.0))
    until = time.monotonic() + float(cfg.get("duration", 3600.0))
    start = int(cfg.get("start", 1))
    for v in range(start, start + int(cfg.get("n", 10**9))):
        if time.monotonic() > until:
            break
        with engine.begin() as conn:
            conn.execute(sa.update(COUNTER).where(COUNTER.c.id == 1).values(v=v))
        commits.append((v, time.monotonic()))
        if pace:
            time.sleep(pace)  # pacing between writes, not synchronisation
    cache.redis.flush()
    return {"commits": commits}


def _reader(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    with engine.connect() as conn:
        conn.execute(POINT).scalar_one()
    _await_go()
    until = time.monotonic() + float(cfg["duration"])
    pace = float(cfg.get("pace", 0.0))
    reads = []
    i = 0
    while True:
        t0 = time.monotonic()
        if t0 > until:
            break
        with engine.connect() as conn:
            value = conn.execute(POINT if i % 2 == 0 else TOTAL).scalar_one()
        reads.append((t0, int(value), time.monotonic()))
        i += 1
        if pace:
            time.sleep(pace)
    return {"reads": reads}


def _stampede(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    trace = TRACE
    with engine.connect() as conn:  # warm: pool connection, Redis connection, tokens
        conn.execute(sa.select(BIG.c.x).where(BIG.c.id == 1)).all()
    cache.redis.flush()
    cache.plan(SLOW_SQL, engine.dialect.name)  # parsed now, not by 4 processes at once
    cache.reset_stats()  # the report then covers the slow query only
    _await_go()
    # a process starved of CPU while the others start is rightly in doubt about
    # its channel (the lease skips Redis then: test_staleness); the stampede is
    # about the processes that use Redis, so each starts once it may
    poll(lambda: cache.redis.usable, timeout=10.0)
    t0 = time.monotonic()
    with engine.connect() as conn:
        rows = [list(r) for r in conn.execute(sa.text(SLOW_SQL)).all()]
    elapsed = time.monotonic() - t0
    cache.redis.flush()
    return {
        "rows": rows,
        "elapsed": elapsed,
        "db_executions": trace.count("a.x < b.x") if trace is not None else None,
    }


TRACE: SqliteTrace | None = None

MODES = {"writer": _writer, "reader": _reader, "stampede": _stampede}


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    global TRACE
    engine = sa.create_engine(cfg["db_url"])
    if engine.dialect.name == "sqlite":  # before wrap(), which may connect at once
        TRACE = SqliteTrace(engine)
    cache = connected_cache(
        redis_url=cfg["redis_url"],
        namespace=cfg.get("namespace", "default"),
        lease_timeout=float(cfg.get("lease_timeout", 2.0)),
        redis_timeout=float(cfg.get("redis_timeout", 0.05)),
    )
    cache.wrap(engine)
    try:
        result = MODES[cfg["mode"]](cfg, engine, cache)
        result["totals"] = _totals(cache)
        _emit({"event": "done", **result})
    finally:
        cache.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
