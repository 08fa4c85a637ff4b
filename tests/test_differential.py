"""Differential test: the sample workload through the cache vs the database.

The sample shop (``sample_db``) is built at a small scale; the seeded
workload (Zipf keys, 5 % writes) runs on 4 threads through a wrapped engine,
a session per operation. A readers-writer lock makes "what the database
holds at that moment" well defined:

* a write holds the lock exclusively around its run and commit (through the
  wrapped engine, so the commit invalidates);
* a read holds it shared around the cached read *and* the same read on a
  plain, unwrapped engine; the two must be equal.

Any difference is a stale (or wrong) read after commit. The test asserts
zero differences and prints how long it took and the cache's hit ratio.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from dbcount import RWLock, counter_for
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from querycache import QueryCache
from sample_db.generate import build
from sample_db.workload import READ_OPERATIONS, Operation, Workload, all_reads

SCALE = 0.02
OPS = 20_000
THREADS = 4


def differential(url: str, ops: int, threads: int, seed: int) -> dict[str, Any]:
    cache = QueryCache(ttl=600)
    engine = create_engine(url, pool_size=threads + 2)
    counter = counter_for(engine)
    cache.wrap(engine)
    plain = create_engine(url, pool_size=threads + 2)
    cached_sessions = cache.sessionmaker(bind=engine)
    plain_sessions = sessionmaker(bind=plain)
    workload = Workload(scale=SCALE, seed=seed, write_ratio=0.05)
    stream = workload.operations(ops)
    lock = RWLock()
    mismatches: list[tuple[int, str, Any, Any]] = []
    errors: list[str] = []
    done = {"reads": 0, "writes": 0}
    tally = threading.Lock()

    def one(op: Operation) -> None:
        if op.is_write:
            with lock.write():
                try:
                    with cached_sessions() as s:
                        op.run(s)
                except Exception as exc:  # a write may legitimately fail (e.g. no stock)
                    errors.append(f"{op.name}: {type(exc).__name__}: {exc}"[:300])
            with tally:
                done["writes"] += 1
            return
        with lock.read():
            with cached_sessions() as s:
                got = op.run(s)
            with plain_sessions() as s:
                truth = op.run(s)
        if got != truth:
            mismatches.append((op.index, op.name, got, truth))
        with tally:
            done["reads"] += 1

    def worker(part: list[Operation]) -> None:
        for op in part:
            one(op)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, [stream[t::threads] for t in range(threads)]))
    elapsed = time.perf_counter() - t0
    report = cache.report().as_dict()["totals"]
    # every read kind once more, after everything: cached == database
    for op in all_reads(workload, per_kind=3):
        with cached_sessions() as s:
            got = op.run(s)
        with plain_sessions() as s:
            truth = op.run(s)
        if got != truth:
            mismatches.append((op.index, op.name, got, truth))
    engine.dispose()
    plain.dispose()
    counter.close()
    cache.close()
    return {
        "seconds": elapsed,
        "mismatches": mismatches,
        "errors": errors,
        "reads": done["reads"],
        "writes": done["writes"],
        "hit_ratio": report["hit_ratio"],
        "invalidations": report["invalidations"],
        "cache_errors": report["errors"],
    }


def _check(result: dict[str, Any], label: str) -> None:
    print(
        f"\n[differential {label}] {result['reads'] + result['writes']} ops "
        f"({result['reads']} reads, {result['writes']} writes) on {THREADS} threads in "
        f"{result['seconds']:.1f}s; cache hit ratio {result['hit_ratio']:.1%}, "
        f"{result['invalidations']} table invalidations, "
        f"{len(result['errors'])} failed writes, {len(result['mismatches'])} mismatches"
    )
    assert result["reads"] + result["writes"] >= OPS
    assert result["writes"] > 0.02 * OPS
    assert result["cache_errors"] == 0
    assert not result["mismatches"], result["mismatches"][:3]
    assert len(result["errors"]) < 0.01 * OPS, result["errors"][:5]
    assert result["hit_ratio"] > 0.3  # the cache really was in the loop
    assert set(READ_OPERATIONS)  # every read kind ran at the end


@pytest.mark.slow
def test_differential_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'shop.sqlite'}"
    build(url, scale=SCALE, seed=42, progress=False)
    _check(differential(url, OPS, THREADS, seed=11), "sqlite")


@pytest.mark.slow
def test_differential_postgres(postgres):
    url = postgres.create_database("differential_shop")
    build(url, scale=SCALE, seed=42, progress=False)
    _check(differential(url, OPS, THREADS, seed=12), "postgresql")
