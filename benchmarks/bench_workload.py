"""The sample workload, uncached vs cached, on PostgreSQL and SQLite, beside its oracle.

Run: ``.venv/bin/python -m benchmarks.bench_workload [--quick | --tiny] [--seconds 20]
[--sqlite-seconds 10] [--threads 8] [--writes 1,5,20] [--invalidation precise|table]
[--backends postgresql,sqlite]``

``sample_db.workload.run``: the seeded operation stream of the sample shop
(Zipf keys, ``--writes`` percent writes, 15 read kinds from point lookups to a
full aggregate, 5 write kinds), a new session per operation, ``--threads``
threads. Each side has its own identical copy of the sample database (SQLite:
a file copy; PostgreSQL: ``CREATE DATABASE ... TEMPLATE``): the uncached side
a plain engine, the cached side an engine wrapped by a memory-only
``QueryCache(invalidation=...)``. Both sides run the same slices of the
stream in alternating rounds (after a warm-up slice each), sized from the
warm-up rate of the slower side so that it runs about ``--seconds`` in total.
Both engines get ``pool_size=threads+2`` (PostgreSQL). At the end, two
operations of every read kind are compared between the cached engine and a
plain engine on the cached side's database.

The oracle (:mod:`benchmarks.oracle`): a read is an oracle hit when the same
operation ran before and returned the same data; computed from the uncached
rounds' data in operation order. Then a diagnosis on two more fresh copies
and a cold cache, one thread, one operation at a time on each side: per read
kind its calls, oracle hit ratio, querycache's hit ratio (an operation is a
hit when the database executed nothing for it: SQLite trace callback; on
PostgreSQL ``cache.report()`` deltas), mean times and shares of the time; the
speed-up bounds of the oracle's and of querycache's hit patterns; every read
compared between the sides (they must agree). Plus, from the measured run:
invalidations per table and hit ratio per fingerprint's kinds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks.common import WORKLOAD_SEED, Env, machine, say, table, totals, verdict
from benchmarks.oracle import Diagnosis, Oracle, diagnose
from querycache import QueryCache
from querycache.cli import ExecutionCounter
from sample_db.workload import Stats, Workload, all_reads, run

TARGET = 5.0


class _Slice(Workload):
    """The stream from operation ``offset`` on (``run`` always starts at 0)."""

    def __init__(self, offset: int, write_ratio: float) -> None:
        super().__init__(scale=1.0, seed=WORKLOAD_SEED, write_ratio=write_ratio)
        self.offset = offset

    def operations(self, n: int, start: int = 0) -> list[Any]:
        return super().operations(n, self.offset + start)


class Side:
    """One side of the measured run: a session factory and its rounds."""

    def __init__(self, name: str, maker: Any) -> None:
        self.name = name
        self.maker = maker
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


class Sizes:
    """Operation counts of a run (``--tiny`` shrinks everything, for a smoke test)."""

    def __init__(self, seconds: float, rounds: int, quick: bool, tiny: bool) -> None:
        self.seconds, self.rounds = seconds, rounds
        self.warm = 60 if tiny else 1000 if quick or seconds < 10 else 3000
        self.min_round = 20 if tiny else 200
        self.diag = 60 if tiny else 400 if quick else 2000


def _copy(env: Env, backend: str, name: str) -> str:
    return env.fresh_pg(name) if backend == "postgresql" else env.fresh_sqlite(name)


def bench_backend(
    env: Env, backend: str, sz: Sizes, threads: int, write_ratio: float, invalidation: str
) -> dict[str, Any]:
    pct = f"{write_ratio * 100:g}".replace(".", "_")
    say(
        f"[{backend}] workload, {threads} threads, {write_ratio:.0%} writes, "
        f"invalidation={invalidation}, ~{sz.seconds:g}s in {sz.rounds} rounds"
    )
    pool = {"pool_size": threads + 2} if backend == "postgresql" else {}
    un_url, ca_url = _copy(env, backend, f"un_{pct}"), _copy(env, backend, f"ca_{pct}")
    dun_url, dca_url = _copy(env, backend, f"dun_{pct}"), _copy(env, backend, f"dca_{pct}")
    plain = create_engine(un_url, **pool)
    check = create_engine(ca_url)
    cache = QueryCache(namespace=f"bench-workload-{backend}", invalidation=invalidation)
    cached_engine = cache.wrap(create_engine(ca_url, **pool))
    un = Side("uncached", sessionmaker(bind=plain))
    ca = Side("cached", cache.sessionmaker(bind=cached_engine))
    oracle = Oracle()
    dcache = QueryCache(namespace=f"bench-workload-diag-{backend}", invalidation=invalidation)
    dplain = create_engine(dun_url)
    draw = create_engine(dca_url)
    counter = ExecutionCounter(draw, dca_url)
    dcached = dcache.wrap(draw)
    try:
        # warm-up (not measured): the same slice on both sides; gives the rates
        rate = {}
        for side in (un, ca):
            wl = _Slice(0, write_ratio)
            st = run(side.maker, ops=sz.warm, threads=threads, workload=wl)
            rate[side.name] = st.ops_per_sec
        offset = sz.warm
        cache.reset_stats()
        before = totals(cache)
        for r in range(sz.rounds):
            order = (un, ca) if r % 2 == 0 else (ca, un)
            n = max(sz.min_round, int(min(rate.values()) * sz.seconds / sz.rounds))
            wl = _Slice(offset, write_ratio)
            for side in order:
                results: dict[int, Any] | None = {} if side is un else None
                st = run(side.maker, ops=n, threads=threads, workload=wl, results=results)
                side.rounds.append(st)
                if results is not None:
                    oracle.feed_run(wl.operations(n), results)
                say(f"  round {r + 1} {side.name:8} {st}")
                rate[side.name] = st.ops_per_sec
            offset += n
        after = totals(cache)
        report = cache.report().as_dict()
        # the cached engine agrees with a plain engine on its database
        compared = 0
        check_maker = sessionmaker(bind=check)
        for op in all_reads(Workload(scale=1.0, seed=WORKLOAD_SEED), per_kind=2):
            with check_maker() as s:
                a = op.run(s)
            with ca.maker() as s:
                b = op.run(s)
            with ca.maker() as s:
                c = op.run(s)
            if not (a == b == c):
                raise AssertionError(f"{backend}: {op.name} {op.params}: cached result differs")
            compared += 1
        say(f"[{backend}] diagnosis, {sz.diag} ops one at a time on fresh copies, cold cache")
        ops = _Slice(offset + 1_000_000, write_ratio).operations(sz.diag)
        diag = diagnose(
            sessionmaker(bind=dplain), dcache.sessionmaker(bind=dcached), dcache, counter, ops
        )
        # counterfactual, not the benchmark: the same stream without its writes
        ro = (Side("uncached", un.maker), Side("cached", ca.maker))
        ro_offset = offset + 2_000_000
        run(ca.maker, ops=sz.warm, threads=threads, workload=_Slice(ro_offset, 0.0))
        ro_offset += sz.warm
        for r in range(2):
            n = max(sz.min_round, int(min(rate.values()) * sz.seconds / 8))
            for side in ro if r % 2 == 0 else ro[::-1]:
                st = run(side.maker, ops=n, threads=threads, workload=_Slice(ro_offset, 0.0))
                side.rounds.append(st)
                say(f"  read-only {side.name:8} {st}")
            ro_offset += n
    finally:
        for c in (cache, dcache):
            c.close()
        counter.close()
        for e in (plain, check, cached_engine, dplain, dcached):
            e.dispose()

    measured = {k: after[k] - before[k] for k in ("calls", "hits", "misses", "bypasses")}
    if measured["hits"] < 1:
        raise AssertionError(f"{backend}: the cached side had no hits")
    return {
        "backend": backend,
        "write_ratio": write_ratio,
        "invalidation": invalidation,
        "un": un,
        "ca": ca,
        "measured": measured,
        "oracle": oracle,
        "compared": compared,
        "diag": diag,
        "kind_rows": _kind_rows(report, diag),
        "table_rows": _table_rows(report, ca.seconds),
        "events": report["events"],
        "evictions": report["totals"]["evictions"],
        "entries": report["totals"]["entries"],
        "read_only": (ro[0].rate, ro[1].rate),
    }


def _kind_rows(report: dict[str, Any], diag: Diagnosis) -> list[list[Any]]:
    """Hit ratio of the measured run by the kinds issuing each fingerprint."""
    kind_stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for q in report["queries"]:
        kinds = diag.fp_kinds.get(q["fingerprint_id"])
        ks = kind_stats[" / ".join(sorted(kinds)) if kinds else "(not seen in diagnosis)"]
        ks[0] += q["calls"]
        ks[1] += q["hits"]
        ks[2] += q["misses"]
    return [
        [label, calls, hits, misses, f"{hits / calls:.0%}" if calls else "-"]
        for label, (calls, hits, misses) in sorted(kind_stats.items(), key=lambda x: -x[1][0])
    ]


def _table_rows(report: dict[str, Any], secs: float) -> list[list[Any]]:
    return [
        [
            t["table"],
            t["reads"],
            t["writes"],
            t["invalidations"],
            f"{t['invalidations'] / secs:.1f}",
        ]
        for t in report["tables"]
    ]


def _print(res: dict[str, Any], threads: int) -> None:
    un, ca, m, oracle = res["un"], res["ca"], res["measured"], res["oracle"]
    ratio = ca.rate / un.rate
    b = res["backend"]
    target = TARGET if b == "postgresql" else None
    rows = [
        [
            side.name,
            side.ops,
            f"{side.seconds:.1f}",
            f"{side.rate:,.0f}",
            f"{statistics.median(s.p50_ms for s in side.rounds):.2f}",
            f"{statistics.median(s.p99_ms for s in side.rounds):.2f}",
            side.errors,
        ]
        for side in (un, ca)
    ]
    print(
        f"--- {b}: {threads} threads, write ratio {res['write_ratio']:.0%}, "
        f"invalidation={res['invalidation']}, {len(un.rounds)} interleaved rounds per side, "
        f"each side on its own copy of the database"
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
    o_ratio = oracle.hits / oracle.reads if oracle.reads else 0.0
    print(
        f"oracle over the uncached rounds: {oracle.reads} reads, {oracle.hits} oracle hits "
        f"({o_ratio:.1%} of reads; the qc ratio above is of statement lookups)"
    )
    print("(p50/p99: median over rounds of each round's percentile)")
    print()
    d: Diagnosis = res["diag"]
    print(
        f"diagnosis: {len(d.records)} ops, one thread, one at a time, fresh copies, cold cache; "
        f"single-thread speed-up {d.total_un / d.total_ca:.2f}x"
    )
    print(table(list(Diagnosis.HEADERS), d.rows()))
    how = f"database executions ({d.db_counted})" if d.db_counted else "cache.report() deltas"
    print(
        f"qc hit: the cached side executed nothing for the operation, by {how}"
        + (f"; disagreements with report(): {d.disagreements}" if d.db_counted else "")
    )
    print(
        f"speed-up bounds (uncached time / uncached time of the non-hits): "
        f"oracle {d.bound('oracle_hit'):.2f}x, querycache's hit pattern "
        f"({res['invalidation']}) {d.bound('qc_hit'):.2f}x; measured "
        f"{d.total_un / d.total_ca:.2f}x"
    )
    print(
        "(the oracle matches whole operations: qc hit% may exceed it where another kind "
        "ran the same statement first)"
    )
    print(f"reads compared between the sides: {d.compared}, differing (stale): {len(d.stale)}")
    for op, a, c in d.stale[:5]:
        print(f"  STALE {op.index} {op.name} {op.params}: plain {a!r:.200} cached {c!r:.200}")
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
    ro_un, ro_ca = res["read_only"]
    print(
        f"counterfactual (diagnosis only, not the benchmark): the same stream without "
        f"writes (write_ratio=0): uncached {ro_un:,.0f} ops/s, cached {ro_ca:,.0f} ops/s, "
        f"{ro_ca / ro_un:.2f}x"
    )
    print()


def _percents(text: str) -> list[float]:
    return [float(p) / 100 for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 4 s per side)")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: a few dozen ops, numbers meaningless"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="PostgreSQL, per side")
    parser.add_argument("--sqlite-seconds", type=float, default=10.0, help="SQLite, per side")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--writes", default="5", help="write percentages, comma-separated (e.g. 1,5,20)"
    )
    parser.add_argument("--invalidation", choices=("precise", "table"), default="precise")
    parser.add_argument("--backends", default="postgresql,sqlite", help="comma-separated")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.sqlite_seconds, args.rounds = 4.0, 3.0, 2
    if args.tiny:
        args.seconds, args.sqlite_seconds, args.rounds = 0.2, 0.2, 2
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"postgresql", "sqlite"}
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    results = []
    with Env(postgres="postgresql" in backends, sqlite="sqlite" in backends) as env:
        info = machine(env)
        for write_ratio in _percents(args.writes):
            for backend in backends:
                secs = args.seconds if backend == "postgresql" else args.sqlite_seconds
                sz = Sizes(secs, args.rounds, args.quick, args.tiny)
                results.append(
                    bench_backend(env, backend, sz, args.threads, write_ratio, args.invalidation)
                )
    mode = " --quick" if args.quick else " --tiny" if args.tiny else ""
    print(
        f"bench_workload{mode}: sample workload, uncached vs cached (memory tier, "
        f"invalidation={args.invalidation}), interleaved rounds, oracle"
    )
    print(f"machine: {info}")
    print()
    for res in results:
        _print(res, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
