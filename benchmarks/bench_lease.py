"""The channel lease: its cost on the hit path, and how often it lapses under load.

Run: ``.venv/bin/python -m benchmarks.bench_lease [--quick] [--seconds 20]``

1. **Hit-path cost.** ``MemoryTier.get`` with the lease comparison (as
   shipped) against the same function without it (a copy in this script, the
   A/B baseline), 200k calls per round in alternating rounds, best round of
   each; the difference is set against a whole L1 hit through a wrapped
   engine (``conn.execute(select(...))`` on SQLite, memory-tier hit; the bus
   is stopped and the lease pinned for this part, so no lapse intervenes). Goal:
   the lease check costs <= 2% of an L1 hit.
2. **Lapses under load.** 4 OS processes, each its own ``QueryCache`` on one
   Redis and one SQLite database (WAL), with the default ``staleness_bound``:
   a writer updating a random product every 10 ms (a bus message to every
   process each time) and 3 readers reading 200 customers by id in a tight
   loop (2 cores saturated). The writes do not touch what the readers read,
   so every memory-tier miss after warm-up is the lease's doing. Per process:
   reads, memory-tier hit ratio, lease lapses and why, time without a lease,
   hits the lapses cost (the report's ``lease`` section).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import time
import types
from typing import Any

from benchmarks.common import Env, machine, say, table, verdict

GOAL_SHARE = 0.02
NAMESPACE = "bench-lease"
KEYS = 200

_monotonic = time.monotonic


def get_without_lease(tier: Any, key: Any) -> Any:
    """``MemoryTier.get`` without the lease comparison (the baseline; bound to
    the tier as a method, so both sides pay the same call)."""
    entry = tier._data.get(key)
    if entry is None:
        return None
    now = _monotonic()
    if entry.expires < now:
        return None
    for cell in entry.cells:
        if cell.dead:
            return None
    try:
        tier._data.move_to_end(key)
    except KeyError:
        pass
    entry.used = True
    return entry


def _best(fn: Any, key: Any, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn(key)
    return (time.perf_counter() - t) / n


def hit_cost(env: Env, rounds: int) -> dict[str, float]:
    import sqlalchemy as sa

    from querycache import QueryCache

    cache = QueryCache(namespace=NAMESPACE + "-hit", redis_url=env.redis_url)
    if not cache.bus.connected.wait(10):
        raise RuntimeError("invalidation channel did not come up")
    engine = cache.wrap(sa.create_engine(env.sqlite_url))
    stmt = sa.text("SELECT name FROM customers WHERE id = :i")
    n = 200_000
    try:
        # a lapse mid-measurement would turn hits into misses: the bus stops
        # (which suspends the memory tier: resumed) and the lease is pinned to
        # a finite deadline far ahead (the comparison costs the same)
        cache.bus.stop()
        tier = cache.memory
        tier.resume()
        tier.lease_until = time.monotonic() + 3600
        with engine.connect() as conn:
            for _ in range(3):
                conn.execute(stmt, {"i": 1}).all()
            (key,) = list(tier._data)[-1:]
            assert tier.get(key) is not None
            baseline = types.MethodType(get_without_lease, tier)
            with_lease, without = [], []
            for r in range(rounds):
                sides = [(with_lease, tier.get), (without, baseline)]
                if r % 2:
                    sides.reverse()
                for out, fn in sides:
                    out.append(_best(fn, key, n))
            hits = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(20_000):
                    conn.execute(stmt, {"i": 1}).all()
                hits.append((time.perf_counter() - t) / 20_000)
        return {
            "get": min(with_lease),
            "get_without": min(without),
            "hit": min(hits),
        }
    finally:
        cache.close()
        engine.dispose()


# -- lapses under load --------------------------------------------------------------------------


def _cache(redis_url: str) -> Any:
    from querycache import QueryCache

    cache = QueryCache(namespace=NAMESPACE, redis_url=redis_url)
    if not cache.bus.connected.wait(10):
        raise RuntimeError("invalidation channel did not come up")
    return cache


def reader(idx: int, db_url: str, redis_url: str, start: Any, results: Any, seconds: float) -> None:
    import sqlalchemy as sa

    cache = _cache(redis_url)
    engine = cache.wrap(sa.create_engine(db_url))
    stmt = sa.text("SELECT name FROM customers WHERE id = :i")
    reads = 0
    try:
        with engine.connect() as conn:
            for i in range(1, KEYS + 1):
                conn.execute(stmt, {"i": i}).all()
            cache.reset_stats()
            start.wait(60)
            until = time.monotonic() + seconds
            i = 0
            while time.monotonic() < until:
                conn.execute(stmt, {"i": 1 + i % KEYS}).all()
                i += 1
                reads += 1
        data = cache.report().as_dict()
        results.put(("reader", idx, reads, data["totals"], data["lease"]))
    finally:
        cache.close()
        engine.dispose()


def writer(db_url: str, redis_url: str, start: Any, results: Any, seconds: float) -> None:
    import sqlalchemy as sa

    cache = _cache(redis_url)
    engine = cache.wrap(sa.create_engine(db_url))
    rng = random.Random(3)
    writes = 0
    try:
        cache.reset_stats()
        start.wait(60)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE products SET name = :n WHERE id = :i"),
                    {"n": f"w{writes}", "i": rng.randint(1, KEYS)},
                )
            writes += 1
            time.sleep(0.01)  # pacing: a commit every ~10 ms
        data = cache.report().as_dict()
        results.put(("writer", 0, writes, data["totals"], data["lease"]))
    finally:
        cache.close()
        engine.dispose()


def under_load(env: Env, seconds: float) -> list[tuple[Any, ...]]:
    import sqlalchemy as sa

    eng = sa.create_engine(env.sqlite_url)
    with eng.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    eng.dispose()
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=writer, args=(env.sqlite_url, env.redis_url, start, results, seconds))
    ]
    procs += [
        ctx.Process(target=reader, args=(i, env.sqlite_url, env.redis_url, start, results, seconds))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    got = []
    deadline = time.monotonic() + 120 + seconds
    while len(got) < 4 and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=1))
        except Exception:
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
    if len(got) != 4:
        raise RuntimeError(f"a process failed (exit codes {[p.exitcode for p in procs]})")
    return sorted(got, key=lambda g: (g[0] != "writer", g[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 5 s under load")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds under load")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 9
    seconds = 5.0 if args.quick else args.seconds
    with Env(postgres=False, sqlite=True, redis=True) as env:
        info = machine(env)
        say("[lease] hit-path cost")
        cost = hit_cost(env, rounds)
        say(f"[lease] 4 processes under load for {seconds:g} s")
        procs = under_load(env, seconds)
    delta = max(0.0, cost["get"] - cost["get_without"])
    share = delta / cost["hit"]
    print(f"bench_lease{' --quick' if args.quick else ''}: the channel lease")
    print(f"machine: {info}")
    print()
    print(
        table(
            ["hit path", "ns / call", "share of an L1 hit", f"<= {GOAL_SHARE:.0%}"],
            [
                [
                    "MemoryTier.get without the lease",
                    f"{cost['get_without'] * 1e9:.0f}",
                    "",
                    "",
                ],
                ["MemoryTier.get with it (shipped)", f"{cost['get'] * 1e9:.0f}", "", ""],
                ["difference", f"{delta * 1e9:.1f}", f"{share:.2%}", verdict(share <= GOAL_SHARE)],
                ["whole L1 hit (Core, SQLite)", f"{cost['hit'] * 1e9:.0f}", "100%", ""],
            ],
        )
    )
    print()
    rows = []
    for kind, idx, ops, totals, lease in procs:
        calls = totals["calls"] or 1
        rows.append(
            [
                f"{kind} {idx}" if kind == "reader" else kind,
                ops,
                f"{totals['memory_hits'] / calls:.1%}",
                f"{totals['hit_ratio']:.1%}",
                lease["lapses"],
                f"{lease['seconds_without_lease'] * 1e3:.0f}",
                f"{lease['seconds_without_lease'] / seconds:.2%}",
                lease["hits_lost"],
            ]
        )
    print(
        table(
            [
                "process",
                "reads / writes",
                "memory hits",
                "all hits",
                "lapses",
                "ms without lease",
                "share of run",
                "hits lost",
            ],
            rows,
        )
    )
    print(
        f"staleness_bound 0.1 s (default): a ping every 10 ms, a proof lasts 90 ms, "
        f"grace 50 ms; {seconds:g} s, 1 writer (a commit every ~10 ms) + 3 tight-loop readers"
    )
    for kind, idx, _, _, lease in procs:
        name = f"reader {idx}" if kind == "reader" else kind
        print(f"  {name}: lease put in doubt {lease['doubts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
