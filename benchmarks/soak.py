"""Soak: the sample workload on PostgreSQL + Redis, several processes, faults.

Run: ``make soak`` (``SOAK_SECONDS=600``, ``SOAK_PROCESSES=3``), or
``python -m benchmarks.soak --seconds 600 --processes 3 --threads 2``.

Every process wraps its own engine with ``QueryCache(redis_url=...,
verify=1.0)``: every hit is re-executed on the database, the caller gets the
database's rows, and the verifier compares them with what the cache would have
served. Meanwhile the parent injects, in turn, every ``--fault-every``
seconds: a Redis restart (empty, same port), a Redis pause (SIGSTOP for
``--pause`` seconds), and ``pg_terminate_backend`` of every connection to the
database. The summary: operations, hit ratio, mismatches (must be 0), errors to
the caller (must be 0: database disconnects caused by the injected kills are
counted apart, the operation is retried as an application would), and each
process's resident memory after warm-up and at the end (must be flat).
Exit status 0 only when all three hold.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from typing import Any

from sqlalchemy import exc as sa_exc

WRITE_RATIO = 0.05
MEMORY_BYTES = 8 * 2**20
#: growth tolerated between the end of warm-up and the end of the run
FLAT_BYTES = 24 * 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _injected(exc: BaseException) -> bool:
    """A database error caused by the injected faults (a killed backend)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "terminating connection",
            "server closed the connection",
            "connection is closed",
            "consuming input failed",
            "connection already closed",
            "the connection is lost",
        )
    )


def worker(n: int, pg_url: str, redis_url: str, seconds: float, threads: int, out: Any) -> None:
    """One process: ``threads`` threads run the workload until the deadline."""
    from sqlalchemy import create_engine

    from querycache import QueryCache
    from sample_db.workload import Workload

    cache = QueryCache(
        redis_url=redis_url,
        namespace="soak",
        verify=1.0,
        memory_bytes=MEMORY_BYTES,
        ttl=120,
    )
    cache.verifier.settle = 1.0  # > the bus's failure detection (350 ms) with margin
    engine = cache.wrap(create_engine(pg_url, pool_size=threads + 1, pool_pre_ping=True))
    maker = cache.sessionmaker(bind=engine)
    wl = Workload(scale=1.0, seed=11, write_ratio=WRITE_RATIO)
    deadline = time.monotonic() + seconds
    warm = time.monotonic() + min(30.0, seconds * 0.2)
    lock = threading.Lock()
    counts = {"operations": 0, "disconnects": 0, "errors": 0}
    samples: list[tuple[float, int]] = []
    error_kinds: dict[str, int] = {}

    def run(t: int) -> None:
        i = n * 1_000_000_000 + t * 100_000_000
        while time.monotonic() < deadline:
            op = wl.operation(i)
            i += 1
            for _attempt in range(5):
                try:
                    with maker() as session:
                        op.run(session)
                    break
                except Exception as exc:
                    kind = "disconnects" if _injected(exc) else "errors"
                    with lock:
                        counts[kind] += 1
                        if kind == "errors":
                            name = f"{type(exc).__name__}: {str(exc)[:120]}"
                            error_kinds[name] = error_kinds.get(name, 0) + 1
                    if kind == "errors":
                        break
            with lock:
                counts["operations"] += 1

    pool = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    while any(th.is_alive() for th in pool):
        time.sleep(1.0)
        if time.monotonic() >= warm:
            samples.append((time.monotonic(), _rss()))
    for th in pool:
        th.join()
    cache.verifier.drain()
    report = cache.report().as_dict()
    cache.close()
    engine.dispose()
    out.put(
        {
            "process": n,
            **counts,
            "error_kinds": error_kinds,
            "calls": report["totals"]["calls"],
            "hits": report["totals"]["hits"],
            "cache_errors": report["totals"]["errors"],
            "verify": {k: v for k, v in report["verify"].items() if k != "details"},
            "details": report["verify"]["details"],
            "rss_start": statistics.median(s for _, s in samples[:3]) if samples else 0,
            "rss_end": statistics.median(s for _, s in samples[-3:]) if samples else 0,
            "degraded": len(report["degraded"]),
        }
    )


def terminate_backends(pg: Any, dbname: str) -> int:
    import psycopg

    dsn = f"host=127.0.0.1 port={pg.port} user={pg.user} password={pg.password} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


def inject(env: Any, stop: threading.Event, every: float, pause: float, faults: dict) -> None:
    """Cycle through the faults until ``stop``."""
    kinds = ["redis restart", "pg_terminate_backend", "redis pause"]
    k = 0
    while not stop.wait(every):
        kind = kinds[k % len(kinds)]
        k += 1
        if kind == "redis restart":
            env.redis.restart()
        elif kind == "redis pause":
            env.redis.pause()
            stop.wait(pause)
            env.redis.resume()
        else:
            faults["backends killed"] = faults.get("backends killed", 0) + terminate_backends(
                env.pg, "shop"
            )
        faults[kind] = faults.get(kind, 0) + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--processes", type=int, default=int(os.environ.get("SOAK_PROCESSES", 3)))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fault-every", type=float, default=None, help="seconds (default: run/12)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds Redis stays paused")
    args = p.parse_args(argv)
    from benchmarks.common import Env, say

    every = args.fault_every or max(3.0, args.seconds / 12)
    with Env(postgres=True, sqlite=False, redis=True) as env:
        say(
            f"soak: {args.processes} processes x {args.threads} threads, {args.seconds:g} s, "
            f"{WRITE_RATIO:.0%} writes, verify=1.0, a fault every {every:g} s"
        )
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=worker,
                args=(n, env.pg_url, env.redis_url, args.seconds, args.threads, out),
            )
            for n in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        stop = threading.Event()
        faults: dict[str, int] = {}
        injector = threading.Thread(
            target=inject, args=(env, stop, every, args.pause, faults), daemon=True
        )
        injector.start()
        results = [out.get(timeout=args.seconds + 300) for _ in procs]
        stop.set()
        injector.join()
        for proc in procs:
            proc.join(30)
    return summarize(results, faults, args)


def summarize(results: list[dict[str, Any]], faults: dict[str, int], args: Any) -> int:
    from benchmarks.common import say

    ops = sum(r["operations"] for r in results)
    calls = sum(r["calls"] for r in results)
    hits = sum(r["hits"] for r in results)
    mismatches = sum(r["verify"]["mismatches"] for r in results)
    checked = sum(r["verify"]["checked"] for r in results)
    raced = sum(r["verify"]["concurrent_writes"] for r in results)
    errors = sum(r["errors"] for r in results)
    growth = [r["rss_end"] - r["rss_start"] for r in results]
    flat = all(g <= FLAT_BYTES for g in growth)
    say("")
    say(f"soak summary ({args.seconds:g} s, {len(results)} processes x {args.threads} threads)")
    say(f"  operations          {ops}  ({ops / args.seconds:.0f}/s)")
    say(f"  reads               {calls}, hit ratio {hits / calls if calls else 0:.1%}")
    say(f"  hits verified       {checked} ({raced} changed by a concurrent commit, not counted)")
    say(f"  mismatches          {mismatches}  (must be 0)")
    say(f"  errors to the caller {errors}  (must be 0)")
    say(
        f"  injected faults     {', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}; "
        f"database disconnects seen (retried) {sum(r['disconnects'] for r in results)}"
    )
    say(f"  cache-internal failures (logged, fail open) {sum(r['cache_errors'] for r in results)}")
    for r in results:
        say(
            f"  process {r['process']}: rss after warm-up {r['rss_start'] / 2**20:.1f} MiB, "
            f"at the end {r['rss_end'] / 2**20:.1f} MiB"
        )
        for kind, n in r["error_kinds"].items():
            say(f"    error x{n}: {kind}")
        for d in r["details"]:
            say(f"    mismatch x{d['count']}: {d['fingerprint'][:90]}: {d['diff']}")
    most = max(growth, default=0) / 2**20
    say(f"  memory growth       {'flat' if flat else 'NOT FLAT'} (max {most:.1f} MiB)")
    ok = mismatches == 0 and errors == 0 and flat and ops > 0
    say(f"  verdict             {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
