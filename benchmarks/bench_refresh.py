"""Write-through refresh: the sample workload's read hit ratio with
``refresh_on_write`` off and on.

Run: ``.venv/bin/python -m benchmarks.bench_refresh [--ops 3000] [--writes 5]
[--refresh 0,8,32] [--budget 0.005] [--backends sqlite,postgresql] [--tiny]``

For each ``refresh_on_write`` value, a fresh copy of the sample database and a
cold memory-only ``QueryCache(refresh_on_write=N, refresh_budget=...)`` run the
same seeded operation stream (``sample_db.workload``, ``--writes`` percent
writes), one operation at a time on one thread. A read is a *hit* when the
database executed nothing while it ran (SQLite trace callback; on PostgreSQL
``pg_stat_statements``): the database-side read hit ratio. Refreshes run in the
background, so one still running when a read starts could be counted against
that read (making it look like a miss): the figure is a lower bound. Also shown:
querycache's own read hit ratio, database executions per operation (refreshes
included: what the warm cache costs the database), and the report's refresh
figures. At the end every read kind is compared with a plain engine.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.common import WORKLOAD_SEED, Env, machine, say, table
from querycache import QueryCache
from querycache.demo import ExecutionCounter
from sample_db.workload import Workload, all_reads


def _side(env: Env, backend: str, n: int, args: Any, ops: list[Any]) -> dict[str, Any]:
    name = f"refresh_{n}"
    url = env.fresh_pg(name) if backend == "postgresql" else env.fresh_sqlite(name)
    cache = QueryCache(
        namespace=f"bench-refresh-{n}", refresh_on_write=n, refresh_budget=args.budget
    )
    raw = create_engine(url)
    counter = ExecutionCounter(raw, url)
    engine = cache.wrap(raw)
    maker = cache.sessionmaker(bind=engine)
    reads = hits = executions = 0
    try:
        for op in ops:
            before = counter.value()
            with maker() as s:
                op.run(s)
            after = counter.value()
            if before is None or after is None:
                raise SystemExit("no database-side counter for this backend")
            executions += after - before
            if not op.is_write:
                reads += 1
                hits += after == before
        report = cache.report().as_dict()
        plain = sessionmaker(bind=create_engine(url))
        for op in all_reads(Workload(scale=1.0, seed=WORKLOAD_SEED), per_kind=1):
            with plain() as a, maker() as b:
                if op.run(a) != op.run(b):
                    raise AssertionError(f"{backend}: {op.name}: cached result differs")
    finally:
        cache.close()
        counter.close()
        engine.dispose()
    own = [q for q in report["queries"] if q["calls"]]
    calls = sum(q["hits"] + q["misses"] for q in own)
    return {
        "n": n,
        "reads": reads,
        "db_hit": hits / reads if reads else 0.0,
        "own_hit": sum(q["hits"] for q in own) / calls if calls else 0.0,
        "exec_per_op": executions / len(ops),
        "refresh": report["refresh"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--writes", type=float, default=5.0, help="percent of writes")
    p.add_argument("--refresh", default="0,8,32", help="refresh_on_write values")
    p.add_argument("--budget", type=float, default=0.005)
    p.add_argument("--backends", default="sqlite")
    p.add_argument("--tiny", action="store_true", help="a smoke run (200 operations)")
    args = p.parse_args(argv)
    if args.tiny:
        args.ops = 200
    backends = args.backends.split(",")
    values = [int(v) for v in args.refresh.split(",")]
    wl = Workload(scale=1.0, seed=WORKLOAD_SEED, write_ratio=args.writes / 100)
    ops = wl.operations(args.ops)
    print(machine())
    with Env(postgres="postgresql" in backends, sqlite="sqlite" in backends) as env:
        for backend in backends:
            say(f"[{backend}] {args.ops} ops, {args.writes:g}% writes, one at a time")
            rows = []
            for n in values:
                r = _side(env, backend, n, args, ops)
                f = r["refresh"]
                rows.append(
                    [
                        str(n),
                        f"{r['db_hit']:.1%}",
                        f"{r['own_hit']:.1%}",
                        f"{r['exec_per_op']:.2f}",
                        str(f["done"]),
                        str(f["over_budget"]),
                        str(f["stored_nothing"]),
                    ]
                )
                say(f"  refresh_on_write={n}: read hit ratio {r['db_hit']:.1%} (database side)")
            print(f"\n{backend}, {args.ops} operations, {args.writes:g}% writes")
            print(
                table(
                    [
                        "refresh_on_write",
                        "read hits (db)",
                        "read hits (own)",
                        "db exec/op",
                        "refreshed",
                        "over budget",
                        "lost race",
                    ],
                    rows,
                )
            )


if __name__ == "__main__":
    main()
