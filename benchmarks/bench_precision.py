"""Per read kind of the sample workload: querycache's hit ratio beside the oracle's.

Run: ``.venv/bin/python -m benchmarks.bench_precision [--ops 1500] [--writes 5]
[--backends postgresql,sqlite] [--modes table,precise]``

The diagnosis of :mod:`benchmarks.bench_workload` alone (no timed rounds):
for each backend and invalidation mode, ``--ops`` operations of the seeded
stream (``--writes`` percent writes) run one at a time, one thread, on two
fresh copies of the sample database, plain and cached (memory tier only,
cold cache), and per read kind it prints the oracle's hit ratio (the same
operation ran before and returned the same data) and querycache's (the
database executed nothing for the operation: SQLite trace callback,
pg_stat_statements), and the gap. ``admission="always"``, so that what is
measured is invalidation's precision, not the admission policy's timing-
dependent choices: hit counts are then deterministic, fit to run on a loaded
machine (the times printed are not). Every read is compared between the two
sides; a difference is reported as STALE and fails the run.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.common import WORKLOAD_SEED, Env, machine, say, table
from benchmarks.oracle import Diagnosis, diagnose
from querycache import QueryCache
from querycache.cli import ExecutionCounter
from sample_db.workload import READ_OPERATIONS, Workload

#: the goal of issue 10: within this many points of the oracle on every kind
GAP = 10.0


def run_mode(env: Env, backend: str, mode: str, ops: int, write_ratio: float) -> Diagnosis:
    """The diagnosis of one backend and invalidation mode."""
    fresh = env.fresh_pg if backend == "postgresql" else env.fresh_sqlite
    tag = f"{mode}_{int(write_ratio * 100)}"
    plain = create_engine(fresh(f"pun_{tag}"))
    ca_url = fresh(f"pca_{tag}")
    raw = create_engine(ca_url)
    counter = ExecutionCounter(raw, ca_url)
    cache = QueryCache(
        namespace=f"bench-precision-{backend}-{tag}", invalidation=mode, admission="always"
    )
    cached = cache.wrap(raw)
    try:
        stream = Workload(scale=1.0, seed=WORKLOAD_SEED, write_ratio=write_ratio)
        return diagnose(
            sessionmaker(bind=plain),
            cache.sessionmaker(bind=cached),
            cache,
            counter,
            stream.operations(ops, 1_000_000),
        )
    finally:
        cache.close()
        counter.close()
        plain.dispose()
        cached.dispose()


def ratios(d: Diagnosis) -> dict[str, tuple[int, float, float]]:
    """Per read kind: (calls, oracle hit %, querycache hit %)."""
    per: dict[str, list[Any]] = defaultdict(list)
    for r in d.records:
        if not r.op.is_write:
            per[r.op.name].append(r)
    return {
        k: (
            len(rs),
            100 * sum(r.oracle_hit for r in rs) / len(rs),
            100 * sum(r.qc_hit for r in rs) / len(rs),
        )
        for k, rs in per.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1500)
    parser.add_argument("--writes", type=float, default=5.0, help="percent of operations")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--modes", default="table,precise")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    failed = False
    with Env(postgres="postgresql" in backends, sqlite="sqlite" in backends) as env:
        info = machine(env)
        print(f"bench_precision: {args.ops} ops, {args.writes:g}% writes, one at a time")
        print(f"machine: {info}")
        for backend in backends:
            got = {}
            for mode in modes:
                say(f"[{backend}] {mode}")
                d = run_mode(env, backend, mode, args.ops, args.writes / 100)
                for op, _, _ in d.stale:
                    print(f"STALE {backend} {mode} {op.index} {op.name} {op.params}")
                failed = failed or bool(d.stale)
                got[mode] = (ratios(d), d)
            rows = []
            for kind in READ_OPERATIONS:
                first = next(iter(got.values()))[0].get(kind)
                if first is None:
                    continue
                calls, oracle, _ = first
                row = [kind, calls, f"{oracle:.0f}%"]
                for mode in modes:
                    qc = got[mode][0][kind][2]
                    row.append(f"{qc:.0f}%")
                gap = oracle - got[modes[-1]][0][kind][2]
                row.append(f"{gap:+.0f}" + (" > goal" if gap > GAP else ""))
                rows.append(row)
            print(f"\n--- {backend}")
            headers = ["kind", "calls", "oracle", *(f"qc {m}" for m in modes), "gap"]
            print(table(headers, rows))
            bounds = ", ".join(
                f"{m} {d.bound('qc_hit'):.2f}x (oracle {d.bound('oracle_hit'):.2f}x)"
                for m, (_, d) in got.items()
            )
            print(f"speed-up bounds, from each run's own (noisy) uncached times: {bounds}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
