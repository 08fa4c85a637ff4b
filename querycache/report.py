"""The hit report: per query, per table, with recommendations.

``cache.report()`` takes a snapshot of the counters. ``as_dict()`` is plain
data with English keys; ``to_json()`` is that as JSON; ``to_text()`` a table
for humans. Queries are named by their fingerprint (literals replaced by
placeholders), so no parameter value ever appears in a report.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from querycache.verify import verify_report, verify_text

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["Report", "build_report"]


class Report:
    """A snapshot of a cache's statistics."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data: ``totals``, ``queries``, ``tables``,
        ``recommendations``."""
        return self._data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self._data, indent=indent, sort_keys=False)

    def to_text(self, limit: int = 20) -> str:
        """A fixed-width table of the busiest queries and tables."""
        d = self._data
        t = d["totals"]
        out = [
            "querycache report",
            f"  calls {t['calls']}  hits {t['hits']} (memory {t['memory_hits']}, "
            f"redis {t['redis_hits']}, shared {t['coalesced']})  misses {t['misses']}  "
            f"bypasses {t['bypasses']}  hit ratio {t['hit_ratio']:.1%}",
            f"  entries {t['entries']}  bytes held {_bytes(t['bytes_held'])}  "
            f"evictions {t['evictions']}  invalidations {t['invalidations']}  "
            f"est. time saved {t['time_saved_ms'] / 1000:.2f} s  errors {t['errors']}",
            "",
            f"  {'calls':>7} {'hits':>7} {'misses':>6} {'bypass':>6} {'hit%':>6} "
            f"{'db ms':>7} {'saved s':>8} {'held':>8}  query",
        ]
        for q in d["queries"][:limit]:
            fp = q["fingerprint"].replace("\n", " ")
            if len(fp) > 70:
                fp = fp[:67] + "..."
            out.append(
                f"  {q['calls']:>7} {q['hits']:>7} {q['misses']:>6} {q['bypass_count']:>6} "
                f"{q['hit_ratio']:>6.1%} {q['mean_db_ms']:>7.2f} "
                f"{q['time_saved_ms'] / 1000:>8.2f} {_bytes(q['bytes_held']):>8}  {fp}"
            )
            for reason, n in q["bypasses"].items():
                out.append(f"  {'':>52}  bypassed {n}x: {reason}")
            if not q["admission"].startswith(("admitted", "always")):
                out.append(f"  {'':>52}  {q['admission']}")
            if q["writes_skipped"] or q["writes_dropping"]:
                out.append(
                    f"  {'':>52}  of the writes to its tables, {q['writes_dropping']} "
                    f"dropped some of its entries, {q['writes_skipped']} could not affect it"
                )
        if len(d["queries"]) > limit:
            out.append(f"  ... {len(d['queries']) - limit} more queries")
        out += [
            "",
            f"  {'reads':>8} {'writes':>7} {'invalidations':>13} {'dropped/inv':>11} "
            f"{'share/inv':>9}  table",
        ]
        for tb in d["tables"][:limit]:
            per = tb["entries_dropped"] / tb["invalidations"] if tb["invalidations"] else 0.0
            out.append(
                f"  {tb['reads']:>8} {tb['writes']:>7} {tb['invalidations']:>13} {per:>11.1f} "
                f"{tb['mean_drop_share']:>9.1%}  {tb['table']}"
            )
        out += verify_text(d.get("verify"))
        if d["recommendations"]:
            out += ["", "  recommendations:"]
            out += [f"  - {r}" for r in d["recommendations"]]
        return "\n".join(out)

    def __repr__(self) -> str:
        t = self._data["totals"]
        return f"<Report calls={t['calls']} hits={t['hits']} misses={t['misses']}>"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def build_report(cache: QueryCache) -> Report:
    """Read every counter of ``cache`` once and lay them out."""
    stats = cache.stats
    queries = []
    reads: dict[str, int] = {}
    for qs in list(stats.queries.values()):
        hits, misses = qs.hits, qs.misses
        bypasses = dict(qs.bypasses)
        calls = hits + misses + sum(bypasses.values())
        if calls == 0:
            continue
        mean_db = qs.db_seconds / misses if misses else 0.0
        for t in qs.tables:
            reads[t] = reads.get(t, 0) + calls
        queries.append(
            {
                "fingerprint": qs.fingerprint,
                "fingerprint_id": qs.fingerprint_id,
                "tables": sorted(qs.tables),
                "calls": calls,
                "hits": hits,
                "memory_hits": qs.memory_hits,
                "redis_hits": qs.redis_hits,
                "coalesced": qs.coalesced,
                "misses": misses,
                "bypasses": bypasses,
                "bypass_count": sum(bypasses.values()),
                "not_stored": dict(qs.not_stored),
                "hit_ratio": hits / calls,
                "mean_db_ms": mean_db * 1000,
                "time_saved_ms": hits * mean_db * 1000,
                "bytes_held": max(qs.bytes_held, 0),
                "admission": qs.admission.describe() if qs.admission is not None else "always",
                "writes_dropping": qs.writes_dropping,
                "writes_skipped": qs.writes_skipped,
            }
        )
    queries.sort(key=lambda q: (-q["time_saved_ms"], -q["calls"]))
    names = set(reads) | set(stats.tables)
    tables = []
    for name in names:
        ts = stats.tables.get(name)
        tables.append(
            {
                "table": name,
                "reads": reads.get(name, 0),
                "writes": ts.writes if ts else 0,
                "invalidations": ts.invalidations if ts else 0,
                "entries_dropped": ts.entries_dropped if ts else 0,
                "mean_drop_share": (ts.drop_share / ts.invalidations)
                if ts and ts.invalidations
                else 0.0,
            }
        )
    tables.sort(key=lambda t: (-(t["reads"] + t["writes"]), t["table"]))
    totals = {
        "calls": sum(q["calls"] for q in queries),
        "hits": sum(q["hits"] for q in queries),
        "memory_hits": sum(q["memory_hits"] for q in queries),
        "redis_hits": sum(q["redis_hits"] for q in queries),
        "coalesced": sum(q["coalesced"] for q in queries),
        "misses": sum(q["misses"] for q in queries),
        "bypasses": sum(q["bypass_count"] for q in queries),
        "writes": sum(t["writes"] for t in tables),
        "invalidations": sum(t["invalidations"] for t in tables),
        "time_saved_ms": sum(q["time_saved_ms"] for q in queries),
        "entries": len(cache.memory),
        "bytes_held": cache.memory.bytes,
        "memory_budget": cache.memory.max_bytes,
        "evictions": cache.memory.evictions,
        "errors": sum(stats.errors.values()),
    }
    totals["hit_ratio"] = totals["hits"] / totals["calls"] if totals["calls"] else 0.0
    return Report(
        {
            "totals": totals,
            "queries": queries,
            "tables": tables,
            "errors": dict(stats.errors),
            "events": dict(stats.events),
            "degraded": list(stats.degraded),
            "recommendations": _recommend(totals, queries, tables),
            "verify": verify_report(cache),
        }
    )


def _recommend(
    totals: dict[str, Any], queries: list[dict[str, Any]], tables: list[dict[str, Any]]
) -> list[str]:
    out = []
    if totals["evictions"] and totals["evictions"] > totals["misses"] * 0.1:
        out.append(
            f"{totals['evictions']} entries were evicted for space: a larger memory_bytes "
            f"would raise the hit ratio"
        )
    for q in queries[:50]:
        if q["calls"] < 20:
            continue
        if q["bypass_count"] > q["calls"] / 2:
            reason = max(q["bypasses"], key=q["bypasses"].get)
            out.append(f"never cached ({reason}), {q['calls']} calls: {q['fingerprint'][:80]}")
        elif q["not_stored"].get("larger than max_entry_bytes", 0) > q["misses"] / 2:
            out.append(
                f"results too large to cache (raise max_entry_bytes): {q['fingerprint'][:80]}"
            )
    for t in tables[:50]:
        if t["reads"] >= 20 and t["invalidations"] > t["reads"] / 2:
            out.append(
                f"table {t['table']} is invalidated {t['invalidations']} times for "
                f"{t['reads']} reads: caching its readers saves little"
            )
    return out
