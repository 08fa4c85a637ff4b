"""The report as a terminal table, sorted by database time saved, for 100 columns."""

from __future__ import annotations

import textwrap
import time
from typing import Any

__all__ = ["bytes_text", "flatten", "render_text"]


def bytes_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def flatten(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """``(dotted key, scalar)`` pairs of nested dicts (lists are kept whole)."""
    if isinstance(value, dict) and depth < 4:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        return out
    return [(prefix, value)]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e6 else f"{v:.0f}"
    if isinstance(v, dict | list):
        return ", ".join(f"{a}={b}" for a, b in flatten(v)) if isinstance(v, dict) else str(v)
    return str(v)


def _generic(name: str, value: Any, width: int) -> list[str]:
    """Any extra section: key/value lines, or a table for a list of objects."""
    out = ["", f"  {name}:"]
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        cols = list(dict.fromkeys(k for r in value for k in r))[:8]
        rows = [[_cell(r.get(c, ""))[:30] for c in cols] for r in value[:50]]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        out.append("    " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        out += ["    " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        if len(value) > 50:
            out.append(f"    ... {len(value) - 50} more")
        return [line[:width].rstrip() for line in out]
    if isinstance(value, dict):
        pairs = flatten(value)
        if not pairs:
            return [*out, "    (empty)"]
        for k, v in pairs[:60]:
            out += textwrap.wrap(
                f"{k}: {_cell(v)}", width - 4, initial_indent="    ", subsequent_indent="      "
            )
        return out
    return [*out, *textwrap.wrap(_cell(value), width - 4, initial_indent="    ")]


def _query_lines(q: dict[str, Any], width: int) -> list[str]:
    head = (
        f"  {q['calls']:>7} {q['hit_ratio']:>6.1%} {q['hits']:>7} {q['misses']:>6} "
        f"{q['bypass_count']:>5} {q['mean_db_ms']:>6.2f} {q['p95_db_ms']:>6.2f} "
        f"{q['time_saved_ms'] / 1000:>7.2f} {bytes_text(q['bytes_held']):>9}  "
    )
    fp = " ".join(q["fingerprint"].split())
    details = []
    tiers = []
    if q["redis_hits"] or q["coalesced"]:
        tiers = [f"memory {q['memory_hits']}", f"redis {q['redis_hits']}"]
        tiers += [f"shared {q['coalesced']}"] if q["coalesced"] else []
        details.append("hits: " + ", ".join(tiers))
    if q.get("invalidations"):
        by = ", ".join(f"{t} {n}" for t, n in sorted(q["invalidated_by"].items()))
        details.append(f"invalidated {q['invalidations']}x" + (f" ({by})" if by else ""))
    if q.get("writes_skipped"):
        details.append(f"{q['writes_skipped']} writes to its tables could not affect it")
    for reason, n in q["bypasses"].items():
        details.append(f"bypassed {n}x: {reason}")
    for reason, n in q["not_stored"].items():
        details.append(f"not stored {n}x: {reason}")
    if not q["admission"].startswith(("admitted", "always")):
        details.append(q["admission"])
    indent = " " * 10
    # the SQL goes on: wrapped under the figures, at most three lines
    out = textwrap.wrap(
        fp, width, initial_indent=head, subsequent_indent=indent, max_lines=3, placeholder=" ..."
    ) or [head]
    for d in details:
        out += textwrap.wrap(d, width, initial_indent=indent, subsequent_indent=indent + "  ")
    return out


def render_text(data: dict[str, Any], limit: int = 20, width: int = 100) -> str:
    """The report's data as text at most ``width`` columns wide."""
    from querycache.reports.model import CORE_SECTIONS

    t = data["totals"]
    w = data.get("window", {})
    procs = data.get("processes", [])
    out = [
        f"querycache report: {w.get('seconds', 0):.1f} s from {_when(w.get('start'))} "
        f"to {_when(w.get('end'))}, {len(procs)} process{'es' if len(procs) != 1 else ''}",
        f"  calls {t['calls']:,}  hit ratio {t['hit_ratio']:.1%}  hits {t['hits']:,} "
        f"(memory {t['memory_hits']:,}, redis {t['redis_hits']:,}, shared {t['coalesced']:,})  "
        f"misses {t['misses']:,}  bypasses {t['bypasses']:,}",
        f"  entries {t['entries']:,}  held {bytes_text(t['bytes_held'])} of "
        f"{bytes_text(t['memory_budget'])}  evictions {t['evictions']:,}  "
        f"writes {t['writes']:,}  invalidations {t['invalidations']:,}  errors {t['errors']:,}",
        f"  database time avoided {t['time_saved_ms'] / 1000:.2f} s (hits x mean db time "
        f"of a miss; summed over threads: not wall-clock)",
        "",
        f"  {'calls':>7} {'hit%':>6} {'hits':>7} {'misses':>6} {'byp':>5} {'db ms':>6} "
        f"{'p95':>6} {'saved s':>7} {'held':>9}  query (by db time saved)",
    ]
    queries = data["queries"]
    for q in queries[:limit]:
        out += _query_lines(q, width)
    if len(queries) > limit:
        out.append(f"  ... {len(queries) - limit} more queries")
    out += [
        "",
        f"  {'reads':>8} {'writes':>7} {'invalid.':>8} {'dropped':>8} {'share':>6} "
        f"{'entries':>7} {'pending':>7}  table",
    ]
    for tb in data["tables"][:limit]:
        out.append(
            f"  {tb['reads']:>8} {tb['writes']:>7} {tb['invalidations']:>8} "
            f"{tb['entries_dropped']:>8} {tb['mean_drop_share']:>6.1%} {tb['entries']:>7} "
            f"{tb['invalidation_pending']:>7}  {tb['table']}"
        )
    if len(data["tables"]) > limit:
        out.append(f"  ... {len(data['tables']) - limit} more tables")
    if data.get("degraded"):
        out += ["", "  degraded periods:"]
        for p in data["degraded"]:
            end = _when(p["end"]) if p.get("end") else "still"
            out.append(
                f"    {p['kind']}: {_when(p['start'])} to {end} ({p['seconds']:.1f} s)"
                + (f", {p['reason']}" if p.get("reason") else "")
            )
    for section in ("errors", "events"):
        if data.get(section):
            out += ["", f"  {section}:"]
            out += [f"    {n:>6}  {k}" for k, n in sorted(data[section].items())]
    from querycache.verify import verify_text

    own = {"verify": verify_text}  # sections that render themselves
    for name, value in data.items():
        if name in own:
            out += own[name](value)
        elif name not in CORE_SECTIONS:
            out += _generic(name, value, width)
    if data.get("recommendations"):
        out += ["", "  recommendations:"]
        for r in data["recommendations"]:
            out += textwrap.wrap(
                f"- {r['message']}", width, initial_indent="  ", subsequent_indent="    "
            )
            ev = ", ".join(f"{k} {_cell(v)}" for k, v in r.get("evidence", {}).items())
            out += textwrap.wrap(
                f"evidence: {ev}", width, initial_indent="    ", subsequent_indent="      "
            )
    return "\n".join(_fit(line.rstrip(), width) for line in out)


def _fit(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    lead = " " * (len(line) - len(line.lstrip()))
    return "\n".join(textwrap.wrap(line, width, initial_indent="", subsequent_indent=lead + "  "))
