"""Write-behind vs one committed transaction per write, on PostgreSQL (issue 13).

Run: ``.venv/bin/python -m benchmarks.bench_write_behind [--quick] [--durable]``

Starts its own PostgreSQL (and Redis for the Redis journal). ``N`` single-row
updates ``UPDATE counters SET n = n + 1 WHERE id = :id`` on random ids of a
1000-row table, applied three ways on fresh copies of the table:

* ``per-write commit``: a plain engine, one ``engine.begin()`` per update;
* ``write-behind apply``: the updates are journaled first (the worker idle),
  then ``flush()`` is timed: batches of ``batch_size`` entries, one
  ``executemany`` and one transaction each (with its applied ids);
* ``write-behind end to end``: submits and the worker run together, from the
  first ``submit`` to ``flush()`` returning.

``submit`` latency (p50/p99) is measured for the SQLite journal (a file in
the benchmark's temporary directory, WAL, ``synchronous=FULL``: one fsync per
submit) and the Redis journal (``XADD``; the benchmark's Redis runs without
AOF, so this is the network cost, not an fsync).

The test PostgreSQL runs with ``fsync=off`` and ``synchronous_commit=off``,
which flatters the per-write baseline (no WAL flush per commit); ``--durable``
starts it with both on, as production runs. Every side's final table is
compared with the expected counts.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select, update

from benchmarks.common import Lat, machine, say
from querycache import QueryCache
from querycache.queues.statements import journal_form
from querycache.queues.writebehind import open_journal
from querycache.testing import PostgresServer, RedisServer

md = MetaData()
counters = Table(
    "counters", md, Column("id", Integer, primary_key=True), Column("n", Integer, nullable=False)
)
ROWS = 1000


def fresh(pg: PostgresServer, name: str) -> str:
    url = pg.create_database(name)
    engine = create_engine(url)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(insert(counters), [{"id": i, "n": 0} for i in range(ROWS)])
    engine.dispose()
    return url


def check(url: str, expected: Counter[int]) -> None:
    engine = create_engine(url)
    with engine.connect() as c:
        got = dict(c.execute(select(counters.c.id, counters.c.n)).all())
    engine.dispose()
    want = {i: expected.get(i, 0) for i in range(ROWS)}
    if got != want:
        raise SystemExit(f"{url}: wrong counts after the run")


def stmt(i: int) -> Any:
    return update(counters).where(counters.c.id == i).values(n=counters.c.n + 1)


def per_write(url: str, ids: list[int]) -> float:
    engine = create_engine(url)
    t = time.perf_counter()
    for i in ids:
        with engine.begin() as c:
            c.execute(stmt(i))
    elapsed = time.perf_counter() - t
    engine.dispose()
    return elapsed


def write_behind(url: str, ids: list[int], journal: str, idle: bool, batch: int) -> tuple:
    """Seconds to apply ``ids`` and the submit latencies (``idle``: the entries
    are journaled before the queue opens, as a restart finds them, and only its
    ``flush()`` is timed)."""
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    queue = f"bench{time.time_ns()}"
    with engine.begin() as c:  # warm up outside the timing: the first connection
        c.execute(stmt(0))
    lat = Lat()
    if idle:
        j = open_journal(journal, cache, queue)
        for i in ids:
            j.append(journal_form(stmt(i), engine.dialect).encode())
        j.close()
    wb = cache.write_behind(
        engine,
        journal=journal,
        batch_size=batch,
        flush_interval=0.05,
        max_pending=len(ids) + 10,
        queue=queue,
    )
    t0 = time.perf_counter()
    if not idle:
        for i in ids:
            t = time.perf_counter()
            wb.submit(stmt(i))
            lat.add(time.perf_counter() - t)
    result = wb.flush()
    elapsed = time.perf_counter() - t0
    wb.close()
    engine.dispose()
    cache.close()
    assert result.applied == len(ids) and not result.dead_lettered, result
    return elapsed, (None if idle else lat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--n", type=int, default=20_000, help="updates per side")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--durable", action="store_true", help="PostgreSQL with fsync on")
    args = ap.parse_args()
    n = 2000 if args.quick else args.n
    rng = random.Random(13)
    ids = [rng.randrange(ROWS) for _ in range(n)]
    expected = Counter(ids)
    warm = Counter({0: 1})
    settings = {"fsync": "on", "synchronous_commit": "on"} if args.durable else None
    with PostgresServer(settings) as pg, RedisServer() as rs:
        say(machine())
        tmp = tempfile.mkdtemp(prefix="qc-bench-wb-")
        rows = []
        url = fresh(pg, "per_write")
        base = per_write(url, ids)
        check(url, expected)
        rows.append(("per-write commit", base, None))
        for name, journal in (("sqlite journal", f"sqlite:///{tmp}/j.db"), ("redis", rs.url)):
            url = fresh(pg, f"apply_{name[:5]}")
            t, lat = write_behind(url, ids, journal, True, args.batch_size)
            check(url, expected + warm)
            rows.append((f"write-behind apply ({name})", t, lat))
            url = fresh(pg, f"e2e_{name[:5]}")
            journal2 = journal.replace("j.db", "j2.db")
            t, lat2 = write_behind(url, ids, journal2, False, args.batch_size)
            check(url, expected + warm)
            rows.append((f"write-behind end to end ({name})", t, lat2))
    print(f"\n{n} single-row updates, PostgreSQL {'durable' if args.durable else 'fsync=off'}")
    print(f"{'side':40} {'writes/s':>10} {'vs per-write':>13} {'submit p50':>11} {'p99':>9}")
    for label, t, lat in rows:
        rate = n / t
        sub = f"{lat.q(0.5) * 1e6:9.0f}us {lat.q(0.99) * 1e6:7.0f}us" if lat else ""
        print(f"{label:40} {rate:10.0f} {base / t:12.1f}x {sub}")


if __name__ == "__main__":
    main()
