"""The workload's oracle and the one-operation-at-a-time diagnosis of bench_workload.

*Oracle*: a read is an oracle hit when the same operation (its kind and its
drawn parameters, hence the same statements with the same parameters) ran
before in the stream and its last run returned the same data. An ideal cache,
one that drops an entry exactly when the rows it read change, would serve
exactly these reads; its hit ratio is the ceiling of any invalidation scheme.
It is computed from the uncached side's returned data in operation order
(writes are in the stream, so their effects show up as changed data).

*Speed-up bound* of a hit pattern: the uncached total time divided by the
uncached time of the operations that are not hits (writes never are): what
the cached side would reach if every hit cost nothing and every miss cost
what it costs uncached.

:func:`diagnose` runs a slice one operation at a time on two identical copies
of the database, plain and cached, single-threaded: per operation its time on
each side, whether the cached side served it without executing anything on
the database (SQLite: trace callback; elsewhere: ``cache.report()`` deltas),
whether the oracle would have, and whether both sides returned the same data
(identical copies, same sequence, one thread: they must).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sample_db.workload import READ_OPERATIONS, WRITE_OPERATIONS, Operation

_perf = time.perf_counter


class Oracle:
    """Feed it reads in operation order; it tells which an ideal cache would serve."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], Any] = {}
        #: kind -> [reads, oracle hits]
        self.per: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def feed(self, op: Operation, data: Any) -> bool:
        """Record read ``op`` returning ``data``; ``True`` when it is an oracle hit."""
        key = (op.name, repr(sorted(op.params.items())))
        hit = key in self.last and self.last[key] == data
        self.last[key] = data
        c = self.per[op.name]
        c[0] += 1
        c[1] += hit
        return hit

    def feed_run(self, ops: Sequence[Operation], results: dict[int, Any]) -> None:
        """Every successful read of ``ops`` (``run(..., results=)``), in index order."""
        for op in ops:
            if not op.is_write and op.index in results:
                self.feed(op, results[op.index])

    @property
    def reads(self) -> int:
        return sum(c[0] for c in self.per.values())

    @property
    def hits(self) -> int:
        return sum(c[1] for c in self.per.values())


@dataclass
class Record:
    """One operation of the diagnosis."""

    op: Operation
    un_s: float
    ca_s: float
    oracle_hit: bool = False
    qc_hit: bool = False
    hits: int = 0
    misses: int = 0
    bypasses: int = 0


@dataclass
class Diagnosis:
    """What :func:`diagnose` saw."""

    records: list[Record] = field(default_factory=list)
    #: fingerprint id -> operation kinds that issued it
    fp_kinds: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: reads whose data differed between the sides: (op, plain data, cached data)
    stale: list[tuple[Operation, Any, Any]] = field(default_factory=list)
    compared: int = 0
    #: operations where the database-side count and the report disagree on "hit"
    disagreements: int = 0
    #: how the database's executions were counted ("" when they were not)
    db_counted: str = ""

    @property
    def total_un(self) -> float:
        return sum(r.un_s for r in self.records)

    @property
    def total_ca(self) -> float:
        return sum(r.ca_s for r in self.records)

    def bound(self, attr: str) -> float:
        """Speed-up bound of the hit pattern ``attr`` (``"oracle_hit"`` / ``"qc_hit"``)."""
        rest = sum(r.un_s for r in self.records if not getattr(r, attr))
        return self.total_un / rest if rest else float("inf")

    def rows(self) -> list[list[Any]]:
        """kind | calls | oracle hit% | qc hit% | ms uncached/cached | shares."""
        per: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            per[r.op.name].append(r)
        tu, tc = self.total_un, self.total_ca
        out = []
        for name in (*READ_OPERATIONS, *WRITE_OPERATIONS):
            rs = per.get(name)
            if not rs:
                continue
            n = len(rs)
            un, ca = sum(r.un_s for r in rs), sum(r.ca_s for r in rs)
            write = rs[0].op.is_write
            out.append(
                [
                    name,
                    n,
                    "-" if write else f"{sum(r.oracle_hit for r in rs) / n:.0%}",
                    "-" if write else f"{sum(r.qc_hit for r in rs) / n:.0%}",
                    f"{un / n * 1e3:.2f}",
                    f"{ca / n * 1e3:.2f}",
                    f"{un / tu:.1%}",
                    f"{ca / tc:.1%}",
                ]
            )
        return out

    HEADERS = (
        "kind",
        "calls",
        "oracle hit%",
        "qc hit%",
        "uncached ms",
        "cached ms",
        "uncached share",
        "cached share",
    )


def _run(maker: Any, op: Operation) -> tuple[Any, type[BaseException] | None]:
    try:
        with maker() as s:
            return op.run(s), None
    except Exception as exc:
        return None, type(exc)


def diagnose(
    un_maker: Any, ca_maker: Any, cache: Any, counter: Any, ops: Sequence[Operation]
) -> Diagnosis:
    """Run ``ops`` one at a time on each side (see the module docstring).

    ``counter`` counts the cached database's executions (``.value()``, may be
    ``None``); ``cache`` is the cached side's ``QueryCache``.
    """
    d = Diagnosis()
    oracle = Oracle()
    prev = {q["fingerprint_id"]: q for q in cache.report().as_dict()["queries"]}
    if counter is not None and counter.value() is not None:
        d.db_counted = "SQLite trace" if counter.kind == "sqlite" else "pg_stat_statements"
    for op in ops:
        t = _perf()
        a, ea = _run(un_maker, op)
        un = _perf() - t
        ex0 = counter.value() if d.db_counted else None
        t = _perf()
        b, eb = _run(ca_maker, op)
        ca = _perf() - t
        ex1 = counter.value() if d.db_counted else None
        now = {q["fingerprint_id"]: q for q in cache.report().as_dict()["queries"]}
        rec = Record(op, un, ca)
        for fid, q in now.items():
            p = prev.get(fid)
            delta = [q[k] - (p[k] if p else 0) for k in ("hits", "misses", "bypass_count")]
            if any(delta):
                d.fp_kinds[fid].add(op.name)
                rec.hits += delta[0]
                rec.misses += delta[1]
                rec.bypasses += delta[2]
        prev = now
        if not op.is_write:
            by_report = rec.hits > 0 and rec.misses == 0 and rec.bypasses == 0
            if ex0 is not None and ex1 is not None:
                rec.qc_hit = ex1 == ex0
                d.disagreements += rec.qc_hit != by_report
            else:
                rec.qc_hit = by_report
            d.compared += 1
            if a != b or ea is not eb:
                d.stale.append((op, a if ea is None else ea, b if eb is None else eb))
            if ea is None:
                rec.oracle_hit = oracle.feed(op, a)
        d.records.append(rec)
    return d
