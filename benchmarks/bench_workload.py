"""The sample workload, uncached vs cached, on PostgreSQL and SQLite (issue 4 target).

Run: ``.venv/bin/python -m benchmarks.bench_workload [--quick] [--seconds 20]
[--sqlite-seconds 10] [--threads 8]``

``sample_db.workload.run``: the seeded operation stream of the sample shop
(Zipf keys, 5% writes, 15 read kinds from point lookups to a full aggregate,
5 write kinds), a new session per operation, ``--threads`` threads. The
uncached side is a plain engine, the cached side another engine on the same
database wrapped by a memory-only ``QueryCache`` (default settings). Both
sides run the same slices of the stream in alternating rounds (after a warm-up
slice each), sized from the warm-up rates so that each side runs about
``--seconds`` in total. Both engines get ``pool_size=threads+2``.

The uncached side's writes do not pass through the cache, so after every
uncached round the cached side is told about them with
``cache.invalidate(<tables the workload writes>)`` -- the invalidation those
writes would have caused had they gone through a wrapped engine. At the end,
two operations of every read kind are compared between the sides.

Then a diagnosis, single-threaded on a later slice, one operation at a time on
each side: per operation kind its count, mean time uncached and cached, hits
and misses (from ``cache.report()`` before/after each operation), and its share
of the cached side's time. Plus, from the measured run: invalidations per table
(``report()["tables"]``) and hit ratio per operation kind (fingerprints of
``report()["queries"]`` mapped to the kinds that issue them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.common import (
    WORKLOAD_SEED,
    Env,
    machine,
    say,
    table,
    totals,
    verdict,
)
from querycache import QueryCache
from sample_db.workload import (
    READ_OPERATIONS,
    WRITE_OPERATIONS,
    Stats,
    Workload,
    all_reads,
    run,
)

TARGET = 5.0
WRITE_RATIO = 0.05
#: every table a write operation of the workload writes
WRITTEN_TABLES = ("orders", "order_items", "inventory", "reviews")


class _Slice(Workload):
    """The stream from operation ``offset`` on (``run`` always starts at 0)."""

    def __init__(self, offset: int, write_ratio: float = WRITE_RATIO) -> None:
        super().__init__(scale=1.0, seed=WORKLOAD_SEED, write_ratio=write_ratio)
        self.offset = offset

    def operations(self, n: int, start: int = 0) -> list[Any]:
        return super().operations(n, self.offset + start)


class Side:
    def __init__(self, name: str, maker: Any, cache: QueryCache | None) -> None:
        self.name = name
        self.maker = maker
        self.cache = cache
        self.rounds: list[Stats] = []

    @property
    def ops(self) -> int:
        return sum(s.ops for s in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.rounds)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.rounds)


def _fingerprints(cache: QueryCache) -> dict[str, dict[str, Any]]:
    return {q["fingerprint_id"]: q for q in cache.report().as_dict()["queries"]}


def diagnose(
    uncached: Side, cached: Side, offset: int, n: int
) -> tuple[list[list[Any]], dict[str, set[str]], dict[str, Any]]:
    """One thread, one op at a time on each side: time and hits per kind."""
    cache = cached.cache
    assert cache is not None
    ops = _Slice(offset).operations(n)
    per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    fp_kinds: dict[str, set[str]] = defaultdict(set)
    for op in ops:
        t = time.perf_counter()
        with uncached.maker() as s:
            op.run(s)
        un = time.perf_counter() - t
        before = _fingerprints(cache)
        t = time.perf_counter()
        with cached.maker() as s:
            op.run(s)
        ca = time.perf_counter() - t
        after = _fingerprints(cache)
        d = per[op.name]
        d["n"] += 1
        d["un"] += un
        d["ca"] += ca
        for fid, q in after.items():
            b = before.get(fid)
            dh = q["hits"] - (b["hits"] if b else 0)
            dm = q["misses"] - (b["misses"] if b else 0)
            db = q["bypass_count"] - (b["bypass_count"] if b else 0)
            if dh or dm or db:
                fp_kinds[fid].add(op.name)
                d["hits"] += dh
                d["misses"] += dm
                d["bypasses"] += db
        if op.is_write:
            # the uncached side's write: the cached side learns of it as it would
            cache.invalidate(*WRITTEN_TABLES)
    total_ca = sum(d["ca"] for d in per.values())
    total_un = sum(d["un"] for d in per.values())
    rows = []
    for name in (*READ_OPERATIONS, *WRITE_OPERATIONS):
        d = per.get(name)
        if not d:
            continue
        lookups = d["hits"] + d["misses"] + d["bypasses"]
        rows.append(
            [
                name,
                int(d["n"]),
                f"{d['un'] / d['n'] * 1e3:.2f}",
                f"{d['ca'] / d['n'] * 1e3:.2f}",
                f"{d['un'] / d['ca']:.1f}x",
                f"{d['hits'] / lookups:.0%}" if lookups else "-",
                f"{d['un'] / total_un:.1%}",
                f"{d['ca'] / total_ca:.1%}",
            ]
        )
    summary = {"total_un": total_un, "total_ca": total_ca, "n": n, "per": per}
    return rows, fp_kinds, summary


def bench_backend(
    backend: str, url: str, seconds: float, rounds: int, threads: int, diag_ops: int
) -> dict[str, Any]:
    say(f"[{backend}] workload, {threads} threads, ~{seconds:g}s per side in {rounds} rounds")
    pool = {"pool_size": threads + 2} if backend == "postgresql" else {}
    plain = create_engine(url, **pool)
    cache = QueryCache(namespace=f"bench-workload-{backend}")
    cached_engine = cache.wrap(create_engine(url, **pool))
    un = Side("uncached", sessionmaker(bind=plain), None)
    ca = Side("cached", cache.sessionmaker(bind=cached_engine), cache)
    try:
        # warm-up (not measured): same slice on both sides; gives the rates
        warm = 1000 if seconds < 10 else 3000
        rate = {}
        for side in (un, ca):
            st = run(side.maker, ops=warm, threads=threads, workload=_Slice(0))
            rate[side.name] = st.ops_per_sec
            if side is un:
                cache.invalidate(*WRITTEN_TABLES)
        offset = warm
        cache.reset_stats()
        before = totals(cache)
        for r in range(rounds):
            order = (un, ca) if r % 2 == 0 else (ca, un)
            n = {s.name: max(200, int(rate[s.name] * seconds / rounds)) for s in order}
            for side in order:
                st = run(side.maker, ops=n[side.name], threads=threads, workload=_Slice(offset))
                side.rounds.append(st)
                if side is un:
                    cache.invalidate(*WRITTEN_TABLES)
                say(f"  round {r + 1} {side.name:8} {st}")
                rate[side.name] = st.ops_per_sec
            offset += max(n.values())
        after = totals(cache)
        report = cache.report().as_dict()
        # results equal on both sides, two operations of every read kind
        compared = 0
        for op in all_reads(Workload(scale=1.0, seed=WORKLOAD_SEED), per_kind=2):
            with un.maker() as s:
                a = op.run(s)
            with ca.maker() as s:
                b = op.run(s)
            with ca.maker() as s:
                c = op.run(s)
            if not (a == b == c):
                raise AssertionError(f"{backend}: {op.name} {op.params}: cached result differs")
            compared += 1
        say(f"[{backend}] diagnosis, {diag_ops} ops one at a time")
        diag_rows, fp_kinds, diag = diagnose(un, ca, offset + 1_000_000, diag_ops)
        # counterfactual, not the benchmark: the same stream without its writes
        ro_un = Side("uncached", un.maker, None)
        ro_ca = Side("cached", ca.maker, cache)
        ro_offset = offset + 2_000_000
        run(ca.maker, ops=warm, threads=threads, workload=_Slice(ro_offset, 0.0))
        ro_offset += warm
        for r in range(2):
            order = (ro_un, ro_ca) if r % 2 == 0 else (ro_ca, ro_un)
            n = {s.name: max(200, int(rate[s.name] * seconds / 8)) for s in order}
            for side in order:
                st = run(
                    side.maker, ops=n[side.name], threads=threads, workload=_Slice(ro_offset, 0.0)
                )
                side.rounds.append(st)
                say(f"  read-only {side.name:8} {st}")
            ro_offset += max(n.values())
    finally:
        cache.close()
        plain.dispose()
        cached_engine.dispose()

    measured = {k: after[k] - before[k] for k in ("calls", "hits", "misses", "bypasses")}
    if measured["hits"] < 1:
        raise AssertionError(f"{backend}: the cached side had no hits")
    # per kind hit ratio of the measured run, from report()["queries"]
    kind_stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for q in report["queries"]:
        kinds = fp_kinds.get(q["fingerprint_id"])
        label = " / ".join(sorted(kinds)) if kinds else "(not seen in diagnosis)"
        ks = kind_stats[label]
        ks[0] += q["calls"]
        ks[1] += q["hits"]
        ks[2] += q["misses"]
    kind_rows = [
        [label, calls, hits, misses, f"{hits / calls:.0%}" if calls else "-"]
        for label, (calls, hits, misses) in sorted(kind_stats.items(), key=lambda x: -x[1][0])
    ]
    # which read kinds read a table the workload writes (from their fingerprints)
    kind_tables: dict[str, set[str]] = defaultdict(set)
    for q in report["queries"]:
        for kind in fp_kinds.get(q["fingerprint_id"], ()):
            kind_tables[kind].update(q["tables"])
    per = diag["per"]
    hit_by_writes = sorted(
        k for k in READ_OPERATIONS if kind_tables.get(k, set()) & set(WRITTEN_TABLES)
    )
    exposed = sum(per[k]["un"] for k in hit_by_writes if k in per) + sum(
        per[k]["un"] for k in WRITE_OPERATIONS if k in per
    )
    secs = ca.seconds
    table_rows = [
        [
            t["table"],
            t["reads"],
            t["writes"],
            t["invalidations"],
            f"{t['invalidations'] / secs:.1f}",
        ]
        for t in report["tables"]
    ]
    return {
        "backend": backend,
        "un": un,
        "ca": ca,
        "measured": measured,
        "compared": compared,
        "diag_rows": diag_rows,
        "diag": diag,
        "kind_rows": kind_rows,
        "table_rows": table_rows,
        "events": report["events"],
        "evictions": report["totals"]["evictions"],
        "entries": report["totals"]["entries"],
        "hit_by_writes": hit_by_writes,
        "exposed_share": exposed / diag["total_un"],
        "read_only": (ro_un.rate, ro_ca.rate),
    }


def _print(res: dict[str, Any], threads: int) -> None:
    un, ca = res["un"], res["ca"]
    ratio = ca.rate / un.rate
    m = res["measured"]
    b = res["backend"]
    target = TARGET if b == "postgresql" else None
    rows = []
    for side in (un, ca):
        rows.append(
            [
                side.name,
                side.ops,
                f"{side.seconds:.1f}",
                f"{side.rate:,.0f}",
                f"{statistics.median(s.p50_ms for s in side.rounds):.2f}",
                f"{statistics.median(s.p99_ms for s in side.rounds):.2f}",
                side.errors,
            ]
        )
    print(
        f"--- {b}: {threads} threads, write ratio {WRITE_RATIO:.0%}, "
        f"{len(un.rounds)} interleaved rounds per side"
    )
    print(table(["side", "ops", "seconds", "ops/s", "p50 ms", "p99 ms", "errors"], rows))
    hit_ratio = m["hits"] / m["calls"] if m["calls"] else 0.0
    tgt = f"target >= {target:g}x: {verdict(ratio >= target)}" if target else "no target"
    print(
        f"throughput cached/uncached: {ratio:.2f}x ({tgt}); cached side: "
        f"{m['calls']} lookups, {m['hits']} hits, {m['misses']} misses, "
        f"{m['bypasses']} bypasses, hit ratio {hit_ratio:.1%}; "
        f"{res['compared']} read operations compared equal"
    )
    print("(p50/p99: median over rounds of each round's percentile)")
    print()
    d = res["diag"]
    print(
        f"diagnosis: {d['n']} ops, one thread, one at a time; single-thread speed-up "
        f"{d['total_un'] / d['total_ca']:.2f}x"
    )
    print(
        table(
            [
                "kind",
                "ops",
                "uncached ms",
                "cached ms",
                "speed-up",
                "hit ratio",
                "share uncached",
                "share cached",
            ],
            res["diag_rows"],
        )
    )
    print()
    print("hit ratio per operation kind in the measured run (report()['queries'] by fingerprint)")
    print(
        table(
            ["kind(s) issuing the fingerprints", "calls", "hits", "misses", "hit ratio"],
            res["kind_rows"],
        )
    )
    print()
    print("tables in the measured run (report()['tables']; invalidations/s of cached time)")
    print(table(["table", "reads", "writes", "invalidations", "inval/s"], res["table_rows"]))
    if res["events"]:
        print(f"events: {res['events']}")
    print(f"memory tier at the end: {res['entries']} entries, {res['evictions']} evictions")
    print()
    share = res["exposed_share"]
    print(
        f"read kinds that read a table the workload writes ({', '.join(WRITTEN_TABLES)}): "
        f"{len(res['hit_by_writes'])} of {len(READ_OPERATIONS)}: "
        f"{', '.join(res['hit_by_writes'])}"
    )
    print(
        f"they and the writes take {share:.1%} of the uncached single-thread time; if "
        f"they always missed (table-level invalidation) and everything else cost nothing, "
        f"the speed-up would be {1 / share:.2f}x"
    )
    ro_un, ro_ca = res["read_only"]
    print(
        f"counterfactual (diagnosis only, not the benchmark): the same stream without "
        f"writes (write_ratio=0): uncached {ro_un:,.0f} ops/s, cached {ro_ca:,.0f} ops/s, "
        f"{ro_ca / ro_un:.2f}x"
    )
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 4 s per side)")
    parser.add_argument("--seconds", type=float, default=20.0, help="PostgreSQL, per side")
    parser.add_argument("--sqlite-seconds", type=float, default=10.0, help="SQLite, per side")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.sqlite_seconds, args.rounds = 4.0, 3.0, 2
    diag_ops = 400 if args.quick else 2000
    results = []
    with Env() as env:
        info = machine(env)
        results.append(
            bench_backend(
                "postgresql", env.pg_url, args.seconds, args.rounds, args.threads, diag_ops
            )
        )
        results.append(
            bench_backend(
                "sqlite", env.sqlite_url, args.sqlite_seconds, args.rounds, args.threads, diag_ops
            )
        )
    print(
        f"bench_workload{' --quick' if args.quick else ''}: sample workload, "
        f"uncached vs cached (memory tier), interleaved rounds"
    )
    print(f"machine: {info}")
    print()
    for res in results:
        _print(res, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
