"""Never slower: the sample workload over a grid of write ratios and thread counts.

Run: ``.venv/bin/python -m benchmarks.bench_grid [--writes 0,1,5,20,50] [--threads 1,8]
[--backends sqlite,postgresql] [--seconds 6] [--rounds 4]``

For every cell (backend, threads, write ratio) each side gets its own
identical copy of the sample database (SQLite file copy; PostgreSQL
``CREATE DATABASE ... TEMPLATE``): a plain engine, and an engine wrapped by a
memory-only :class:`~querycache.QueryCache` with its defaults. After a warm-up
slice each, the two sides run the same slices of the seeded operation stream
in alternating rounds (order flipping every round) for about ``--seconds``
per side; the figure is the cached side's throughput over the uncached
side's. Goal (issue 11): >= 0.97 in every cell. The table ends with the
cached side's hit ratio and how many fingerprints admission turned away.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.bench_workload import _Slice
from benchmarks.common import Env, machine, say, table, totals
from querycache import QueryCache
from sample_db.workload import run


def cell(env: Env, backend: str, threads: int, writes: float, seconds: float, rounds: int) -> Any:
    tag = f"{backend[:2]}{threads}_{int(writes * 1000)}"
    make = env.fresh_pg if backend == "postgresql" else env.fresh_sqlite
    pool = {"pool_size": threads + 2} if backend == "postgresql" else {}
    plain = create_engine(make(f"gu{tag}"), **pool)
    cache = QueryCache(namespace=f"grid{tag}")
    cached = cache.wrap(create_engine(make(f"gc{tag}"), **pool))
    makers = {"uncached": sessionmaker(bind=plain), "cached": cache.sessionmaker(bind=cached)}
    try:
        rate = {}
        warm = max(200, threads * 50)
        for name, maker in makers.items():
            rate[name] = run(
                maker, ops=warm, threads=threads, workload=_Slice(0, writes)
            ).ops_per_sec
        offset = warm
        cache.reset_stats()
        before = totals(cache)
        spent = {"uncached": 0.0, "cached": 0.0}
        done = {"uncached": 0, "cached": 0}
        for r in range(rounds):
            n = max(100, int(min(rate.values()) * seconds / rounds))
            names = ("uncached", "cached") if r % 2 == 0 else ("cached", "uncached")
            for name in names:
                st = run(makers[name], ops=n, threads=threads, workload=_Slice(offset, writes))
                if st.errors:
                    raise AssertionError(f"{name}: {st.errors} errors")
                spent[name] += st.seconds
                done[name] += st.ops
                rate[name] = st.ops_per_sec
            offset += n
        after = totals(cache)
        calls = after["calls"] - before["calls"]
        hits = after["hits"] - before["hits"]
        report = cache.report().as_dict()
        refused = sum(
            1 for q in report["queries"] if str(q.get("admission", "")).startswith("rejected")
        )
    finally:
        cache.close()
        plain.dispose()
        cached.dispose()
    ratio = (done["cached"] / spent["cached"]) / (done["uncached"] / spent["uncached"])
    return ratio, hits / calls if calls else 0.0, refused, done["uncached"] / spent["uncached"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", default="0,1,5,20,50", help="percent, comma-separated")
    ap.add_argument("--threads", default="1,8")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--seconds", type=float, default=6.0, help="per side and cell")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    writes = [float(w) / 100 for w in args.writes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    backends = args.backends.split(",")
    rows = []
    worst = float("inf")
    with Env(postgres="postgresql" in backends, sqlite="sqlite" in backends) as env:
        info = machine(env)
        for backend in backends:
            for t in threads:
                for w in writes:
                    ratio, hit, refused, base = cell(env, backend, t, w, args.seconds, args.rounds)
                    worst = min(worst, ratio)
                    rows.append(
                        [
                            backend,
                            t,
                            f"{w:.0%}",
                            f"{base:.0f}",
                            f"{ratio:.2f}x",
                            f"{hit:.0%}",
                            refused,
                        ]
                    )
                    say(rows[-1])
    print(f"bench_grid: sample workload, cached/uncached throughput, {args.seconds:g}s per side")
    print(f"machine: {info}")
    print(
        table(
            [
                "backend",
                "threads",
                "writes",
                "uncached ops/s",
                "cached/uncached",
                "hits",
                "not admitted",
            ],
            rows,
        )
    )
    print(f"worst cell: {worst:.2f}x (goal >= 0.97x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
