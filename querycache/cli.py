"""The ``querycache`` command line.

::

    querycache demo [--db URL] [--scale F] [--ops N] [--threads N] [--redis URL]
                    [--seed N] [--write-ratio F]
    querycache sample [--db URL] [--scale F] [--seed N] [--if-absent]

Each verb is a function that adds its subparser (``_add_<verb>``) and sets
``func`` to the function that runs it; add a verb by adding one to
:data:`VERBS`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker

from querycache import __version__

__all__ = ["VERBS", "ExecutionCounter", "build_parser", "main"]

DEMO_SCALE = 0.2
DEMO_OPS = 10_000
DEMO_THREADS = 4
SAMPLE_SEED = 42
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "END")


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# -- counting executions on the database side --------------------------------------


class ExecutionCounter:
    """Counts statements the database executed (not BEGIN/COMMIT/ROLLBACK).

    SQLite: ``sqlite3.Connection.set_trace_callback`` on every new connection
    of ``engine`` (install before its first connection). PostgreSQL: the sum
    of ``pg_stat_statements.calls`` in this database, when the extension is
    there. :meth:`value` is ``None`` where neither works.
    """

    _PG_CALLS = (
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = current_database() "
        "AND s.query NOT ILIKE '%pg_stat_statements%' "
        r"AND s.query !~* '^\s*(BEGIN|COMMIT|ROLLBACK|END)\y'"
    )
    #: PostgreSQL 14+: leave out statements run inside others (foreign-key checks)
    _TOPLEVEL = " AND s.toplevel"

    def __init__(self, engine: Engine, url: str) -> None:
        self.kind = engine.dialect.name
        self._n = 0
        self._lock = threading.Lock()
        self._probe: Engine | None = None
        if self.kind == "sqlite":
            event.listen(engine, "connect", self._on_connect)
        elif self.kind == "postgresql":
            from sqlalchemy.pool import NullPool

            self._probe = create_engine(url, poolclass=NullPool)
            if self._pg_calls() is None:
                self._probe.dispose()
                self._probe = None

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        if statement.lstrip()[:8].upper().startswith(_CONTROL):
            return
        with self._lock:
            self._n += 1

    def _pg_calls(self) -> int | None:
        assert self._probe is not None
        for sql in (self._PG_CALLS + self._TOPLEVEL, self._PG_CALLS):
            try:
                with self._probe.connect() as conn:
                    return int(conn.execute(text(sql)).scalar() or 0)
            except Exception:
                continue
        return None

    def value(self) -> int | None:
        """The count so far (``None``: not available for this database)."""
        if self.kind == "sqlite":
            with self._lock:
                return self._n
        if self._probe is not None:
            return self._pg_calls()
        return None

    def close(self) -> None:
        """Release the probe connection pool (PostgreSQL)."""
        if self._probe is not None:
            self._probe.dispose()


# -- demo ----------------------------------------------------------------------------


def _add_demo(sub: Any) -> None:
    from sample_db.urls import DEFAULT_URL

    p = sub.add_parser(
        "demo",
        help="run the sample workload plain and through querycache, side by side",
        description="Build the sample shop if absent, run the same seeded workload on a "
        "plain engine and through querycache, and compare.",
    )
    p.add_argument(
        "--db",
        default=DEFAULT_URL,
        metavar="URL",
        help="database URL (default: the SQLite file sample_db/data/shop.sqlite)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=DEMO_SCALE,
        help="sample size, 1.0 = 100k orders (default: %(default)s)",
    )
    p.add_argument(
        "--ops", type=int, default=DEMO_OPS, help="operations per run (default: %(default)s)"
    )
    p.add_argument(
        "--threads", type=int, default=DEMO_THREADS, help="worker threads (default: %(default)s)"
    )
    p.add_argument("--redis", metavar="URL", help="also use a Redis tier at URL")
    p.add_argument("--seed", type=int, default=7, help="workload seed (default: %(default)s)")
    p.add_argument(
        "--write-ratio",
        type=float,
        default=0.05,
        help="share of operations that write (default: %(default)s)",
    )
    p.set_defaults(func=cmd_demo)


def _measure(
    counter: ExecutionCounter, session_factory: Any, args: argparse.Namespace
) -> tuple[Any, int | None]:
    from sample_db.workload import run

    before = counter.value()
    stats = run(
        session_factory,
        ops=args.ops,
        threads=args.threads,
        seed=args.seed,
        write_ratio=args.write_ratio,
        scale=args.scale,
    )
    after = counter.value()
    executions = after - before if before is not None and after is not None else None
    return stats, executions


def _warm_up(url: str, args: argparse.Namespace) -> None:
    """One of each read, so that neither run pays for a cold page cache."""
    from sample_db.workload import Workload, all_reads

    engine = create_engine(url)
    try:
        session_factory = sessionmaker(bind=engine, expire_on_commit=False)
        for op in all_reads(Workload(scale=args.scale, seed=args.seed)):
            with session_factory() as session:
                op.run(session)
    finally:
        engine.dispose()


def _engine(url: str, threads: int) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url)
    return create_engine(url, pool_size=max(5, threads))


def cmd_demo(args: argparse.Namespace) -> int:
    """``querycache demo``: the side-by-side comparison."""
    from querycache import QueryCache
    from sample_db.generate import SampleMismatch, ensure
    from sample_db.urls import sync_url

    t0 = time.perf_counter()
    url = sync_url(args.db)
    print(
        f"querycache demo: {_shown(url)}  scale {args.scale}  ops {args.ops}  "
        f"threads {args.threads}  seed {args.seed}  write ratio {args.write_ratio}"
    )
    try:
        if ensure(url, args.scale, SAMPLE_SEED):
            print(f"built the sample database in {time.perf_counter() - t0:.1f}s")
    except SampleMismatch as exc:
        print(f"querycache demo: {exc}", file=sys.stderr)
        return 2
    _warm_up(url, args)

    engine = _engine(url, args.threads)
    counter = ExecutionCounter(engine, url)
    plain, plain_execs = _measure(counter, sessionmaker(bind=engine, expire_on_commit=False), args)
    counter.close()
    engine.dispose()

    cache = QueryCache(redis_url=args.redis) if args.redis else QueryCache()
    raw = _engine(url, args.threads)
    counter = ExecutionCounter(raw, url)
    engine = cache.wrap(raw)
    cached_factory = cache.sessionmaker(bind=engine, expire_on_commit=False)
    cached, cached_execs = _measure(counter, cached_factory, args)
    counter.close()
    report = cache.report()
    totals = report.as_dict().get("totals", {})

    print()
    print(format_comparison(plain, cached, plain_execs, cached_execs, totals))
    for name, stats in (("plain", plain), ("querycache", cached)):
        for sample in stats.error_samples[:3]:
            print(f"  {name} error: {sample}")
    print()
    print(report.to_text())
    cache.close()
    engine.dispose()
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
    return 1 if plain.errors or cached.errors else 0


def format_comparison(
    plain: Any,
    cached: Any,
    plain_execs: int | None,
    cached_execs: int | None,
    totals: dict[str, Any],
) -> str:
    """The side-by-side table of two runs (``Stats``) and the cache's totals."""
    calls, hits = int(totals.get("calls", 0) or 0), int(totals.get("hits", 0) or 0)
    misses, bypasses = int(totals.get("misses", 0) or 0), int(totals.get("bypasses", 0) or 0)
    speedup = cached.ops_per_sec / plain.ops_per_sec if plain.ops_per_sec else 0.0

    def execs(n: int | None) -> str:
        return "n/a" if n is None else f"{n:,}"

    if plain_execs is None or cached_execs is None:
        saved = "n/a"
    else:
        share = (plain_execs - cached_execs) / plain_execs if plain_execs else 0.0
        saved = f"{plain_execs - cached_execs:,} ({share:.1%})"
    table: list[tuple[str, str, str]] = [
        ("", "plain", "querycache"),
        ("operations", f"{plain.ops:,}", f"{cached.ops:,}"),
        (
            "  reads / writes",
            f"{plain.reads:,} / {plain.writes:,}",
            f"{cached.reads:,} / {cached.writes:,}",
        ),
        ("seconds", f"{plain.seconds:.2f}", f"{cached.seconds:.2f}"),
        ("ops/s", f"{plain.ops_per_sec:,.0f}", f"{cached.ops_per_sec:,.0f} ({speedup:.2f}x)"),
        ("p50 latency ms", f"{plain.p50_ms:.2f}", f"{cached.p50_ms:.2f}"),
        ("p99 latency ms", f"{plain.p99_ms:.2f}", f"{cached.p99_ms:.2f}"),
        ("errors", f"{plain.errors}", f"{cached.errors}"),
        ("cache hit ratio", "-", f"{hits / calls:.1%}" if calls else "n/a"),
        ("  hits / misses / bypasses", "-", f"{hits:,} / {misses:,} / {bypasses:,}"),
        ("db executions", execs(plain_execs), execs(cached_execs)),
        ("db executions saved", "-", saved),
    ]
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    w2 = max(len(r[2]) for r in table)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}".rstrip() for a, b, c in table)


# -- sample --------------------------------------------------------------------------


def _add_sample(sub: Any) -> None:
    from sample_db.urls import DEFAULT_URL

    p = sub.add_parser(
        "sample",
        help="build the sample shop database",
        description="Migrate the database to head and fill it with the "
        "deterministic sample shop (replacing its rows).",
    )
    p.add_argument("--db", default=DEFAULT_URL, metavar="URL", help="database URL")
    p.add_argument(
        "--scale",
        type=float,
        default=DEMO_SCALE,
        help="size, 1.0 = 100k orders (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=SAMPLE_SEED, help="default: %(default)s")
    p.add_argument(
        "--if-absent", action="store_true", help="only build when the database is absent or empty"
    )
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """``querycache sample``: build (or ensure) the sample database."""
    from sample_db.generate import SampleMismatch, build, ensure

    t0 = time.perf_counter()
    try:
        if args.if_absent:
            built = ensure(args.db, args.scale, args.seed)
        else:
            build(args.db, scale=args.scale, seed=args.seed)
            built = True
    except SampleMismatch as exc:
        print(f"querycache sample: {exc}", file=sys.stderr)
        return 2
    state = "built" if built else "already there"
    print(f"{state}: {_shown(args.db)} (scale {args.scale}) in {time.perf_counter() - t0:.1f}s")
    return 0


#: the verbs: each adds its subparser to the ``add_subparsers`` object it is given
VERBS: list[Callable[[Any], None]] = [_add_demo, _add_sample]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb of :data:`VERBS`."""
    parser = argparse.ArgumentParser(
        prog="querycache",
        description="querycache: a read-through query cache for SQLAlchemy.",
    )
    parser.add_argument("--version", action="version", version=f"querycache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``querycache`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
