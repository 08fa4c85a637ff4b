"""``querycache demo``: the sample workload, plain and through querycache.

Both sides run the same seeded operations. On SQLite each side runs on its
own fresh copy of the sample database (so neither sees the other's writes);
elsewhere the sides alternate in rounds on one database. Executions are
counted on the database side (:class:`ExecutionCounter`), every cached read
is compared with the plain read of the same operation, and the run ends with
the hit report and a one-line summary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker

__all__ = [
    "DEMO_OPS",
    "DEMO_SCALE",
    "DEMO_THREADS",
    "ExecutionCounter",
    "cmd_demo",
    "shown",
]

DEMO_SCALE = 1.0
DEMO_OPS = 10_000
DEMO_THREADS = 1
DEMO_ROUNDS = 4
#: every table a write of the sample workload writes
WRITTEN_TABLES = ("orders", "order_items", "inventory", "reviews")
SAMPLE_SEED = 42
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "END")


def shown(url: str) -> str:
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


def _measure(
    url: str, args: argparse.Namespace, cache: Any, offset: int = 0
) -> tuple[Any, int | None, dict[int, Any]]:
    """Run ``args.ops`` operations from ``offset`` on ``url`` (through ``cache`` unless
    ``None``): the stats, the statements the database executed (counted on its side),
    and every read's data by operation index."""
    from sample_db.workload import run

    raw = _engine(url, args.threads)
    counter = ExecutionCounter(raw, url)
    engine = cache.wrap(raw) if cache is not None else raw
    maker = (cache.sessionmaker if cache is not None else sessionmaker)(
        bind=engine, expire_on_commit=False
    )
    results: dict[int, Any] = {}
    try:
        before = counter.value()
        stats = run(
            maker,
            ops=args.ops,
            threads=args.threads,
            workload=_workload(args, offset),
            results=results,
        )
        after = counter.value()
    finally:
        counter.close()
        engine.dispose()
    executions = after - before if before is not None and after is not None else None
    return stats, executions, results


def _workload(args: argparse.Namespace, offset: int) -> Any:
    """The demo's operation stream from operation ``offset`` on."""
    from sample_db.workload import Workload

    class _From(Workload):
        def operations(self, n: int, start: int = 0) -> list[Any]:
            return super().operations(n, offset + start)

    return _From(scale=args.scale, seed=args.seed, write_ratio=args.write_ratio)


def _copy_sqlite(src: Path, dst: Path) -> str:
    """A consistent copy of a SQLite file (the backup API: WAL content included)."""
    import sqlite3

    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)
    return f"sqlite:///{dst}"


def content_digest(path: Path) -> str:
    """A digest of a SQLite database's content (its SQL dump): two files with
    the same schema and rows have the same digest."""
    import hashlib
    import sqlite3

    h = hashlib.sha256()
    with closing(sqlite3.connect(path)) as conn:
        for line in conn.iterdump():
            h.update(line.encode())
    return h.hexdigest()[:16]


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


def _on_copies(src: Path, args: argparse.Namespace, cache: Any) -> tuple[Any, ...]:
    """Each side on its own fresh copy of the SQLite file, the same slices of the
    stream in alternating rounds (the order flipping every round), so that the
    machine's noise falls on both sides alike. Each side keeps its engine (and
    the cached side its cache) from round to round."""
    from sample_db.workload import run

    with tempfile.TemporaryDirectory(prefix="querycache-demo-") as tmp:
        sides = []
        digests = []
        for name, c in (("plain", None), ("querycache", cache)):
            url = _copy_sqlite(src, Path(tmp) / f"{name}.sqlite")
            digests.append(content_digest(Path(tmp) / f"{name}.sqlite"))
            _warm_up(url, args)
            raw = _engine(url, args.threads)
            counter = ExecutionCounter(raw, url)
            engine = c.wrap(raw) if c is not None else raw
            maker = (c.sessionmaker if c is not None else sessionmaker)(
                bind=engine, expire_on_commit=False
            )
            sides.append((engine, counter, maker, [], {}, [counter.value()]))
        if digests[0] != digests[1]:  # cannot happen with the backup API; never unnoticed
            raise RuntimeError(f"the two copies differ: {digests}")
        print(f"both copies start from identical data (content digest {digests[0]})")
        try:
            n = -(-args.ops // DEMO_ROUNDS)
            for r in range(DEMO_ROUNDS):
                ops = min(n, args.ops - r * n)
                if ops <= 0:
                    break
                for side in (0, 1) if r % 2 == 0 else (1, 0):
                    _, counter, maker, stats, results, _ = sides[side]
                    got: dict[int, Any] = {}
                    part = _workload(args, r * n)
                    stats.append(
                        run(maker, ops=ops, threads=args.threads, workload=part, results=got)
                    )
                    results.update({r * n + i: v for i, v in got.items()})
            for _, counter, _, _, _, marks in sides:
                marks.append(counter.value())
        finally:
            for engine, counter, *_ in sides:
                counter.close()
                engine.dispose()
    execs = [m[1] - m[0] if m[0] is not None and m[1] is not None else None for *_, m in sides]
    return _merge(sides[0][3]), _merge(sides[1][3]), execs[0], execs[1], sides[0][4], sides[1][4]


def _merge(rs: list[Any]) -> Any:
    """One summary of several rounds (p50/p99: the median of the rounds')."""
    from sample_db.workload import Stats

    secs = sum(s.seconds for s in rs)
    return Stats(
        **{k: sum(getattr(s, k) for s in rs) for k in ("ops", "reads", "writes", "errors")},
        seconds=secs,
        ops_per_sec=sum(s.ops for s in rs) / secs if secs else 0.0,
        p50_ms=statistics.median(s.p50_ms for s in rs),
        p99_ms=statistics.median(s.p99_ms for s in rs),
        error_samples=[e for s in rs for e in s.error_samples],
    )


def _interleaved(url: str, args: argparse.Namespace, cache: Any) -> tuple[Any, ...]:
    """Both sides on the same database, the same slices in alternating rounds; the
    plain side's writes do not pass through the cache, so after each plain round
    the cache drops what they may have changed (every table the workload writes)."""

    _warm_up(url, args)
    per: list[list[Any]] = [[], []]
    execs: list[int | None] = [0, 0]
    n = -(-args.ops // DEMO_ROUNDS)
    for r in range(DEMO_ROUNDS):
        part = argparse.Namespace(**{**vars(args), "ops": min(n, args.ops - r * n)})
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            stats, ex, _ = _measure(url, part, cache if side else None, offset=r * n)
            per[side].append(stats)
            before = execs[side]
            execs[side] = None if ex is None or before is None else before + ex
            if not side:
                cache.invalidate(*WRITTEN_TABLES)

    return _merge(per[0]), _merge(per[1]), execs[0], execs[1], None, None


def _stale(p_res: dict[int, Any], c_res: dict[int, Any], threads: int) -> tuple[int, list[str]]:
    """Reads checked and the cached reads whose data differ from the plain side's."""
    both = sorted(p_res.keys() & c_res.keys())
    bad = [i for i in both if p_res[i] != c_res[i]]
    word = "STALE read" if threads == 1 else "differing read"
    return len(both), [
        f"  {word} #{i}: plain {p_res[i]!r:.160} querycache {c_res[i]!r:.160}" for i in bad
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    """``querycache demo``: the side-by-side comparison."""
    from querycache import QueryCache
    from sample_db.generate import SampleMismatch, ensure
    from sample_db.urls import sqlite_path, sync_url

    t0 = time.perf_counter()
    url = sync_url(args.db)
    print(
        f"querycache demo: {shown(url)}  scale {args.scale}  ops {args.ops}  "
        f"threads {args.threads}  seed {args.seed}  write ratio {args.write_ratio}"
    )
    try:
        if ensure(url, args.scale, SAMPLE_SEED):
            print(f"built the sample database in {time.perf_counter() - t0:.1f}s")
    except SampleMismatch as exc:
        print(f"querycache demo: {exc}", file=sys.stderr)
        return 2
    src = sqlite_path(url)
    cache = QueryCache(redis_url=args.redis) if args.redis else QueryCache()
    if src is not None:
        print(
            "each side runs the same operations on its own fresh copy of the database, "
            f"in {DEMO_ROUNDS} alternating rounds (p50/p99: median of the rounds); "
            "the database itself is left unchanged"
        )
        plain, cached, plain_execs, cached_execs, p_res, c_res = _on_copies(src, args, cache)
    else:
        print(
            f"both sides share the database: the same operations in {DEMO_ROUNDS} "
            "alternating rounds (p50/p99: median of the rounds)"
        )
        plain, cached, plain_execs, cached_execs, p_res, c_res = _interleaved(url, args, cache)
    report = cache.report()
    totals = report.as_dict().get("totals", {})
    cache.close()

    print()
    print(format_comparison(plain, cached, plain_execs, cached_execs, totals))
    for name, stats in (("plain", plain), ("querycache", cached)):
        for sample in stats.error_samples[:3]:
            print(f"  {name} error: {sample}")
    print()
    print(report.to_text())
    print()
    speedup = cached.ops_per_sec / plain.ops_per_sec if plain.ops_per_sec else 0.0
    parts = [f"{speedup:.1f}x the throughput"]
    if plain_execs and cached_execs is not None:
        parts.append(f"{1 - cached_execs / plain_execs:.0%} fewer database executions")
    else:
        parts.append("database executions not counted on this database")
    stale_bad: list[str] = []
    if p_res is None or c_res is None:
        parts.append("reads not checked (shared database: the sides see different states)")
    else:
        checked, stale_bad = _stale(p_res, c_res, args.threads)
        for line in stale_bad[:10]:
            print(line)
        if args.threads == 1:
            parts.append(f"{len(stale_bad)} stale reads in {checked:,} checked against plain")
        else:
            parts.append(
                f"{len(stale_bad)} of {checked:,} reads differ from plain "
                f"({args.threads} threads: a read racing a write may; --threads 1 is exact)"
            )
    print("querycache: " + ", ".join(parts))
    html = os.path.abspath(getattr(args, "html", None) or "querycache-report.html")
    with open(html, "w", encoding="utf-8") as f:
        f.write(report.to_html(title="querycache demo report"))
    print(f"demo finished in {time.perf_counter() - t0:.1f}s")
    print(f"hit report with charts: {html}")
    failed = plain.errors or cached.errors or (stale_bad and args.threads == 1)
    return 1 if failed else 0


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
