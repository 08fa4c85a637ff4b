"""Many processes' report data as one: counters add up, latency histograms
merge (so the p95 is the fleet's), recommendations are made again from the
merged figures, extra sections merge by shape."""

from __future__ import annotations

import time
from typing import Any

from querycache.reports.build import finish, p95_of, timeline_deltas, totals_of
from querycache.reports.model import CORE_SECTIONS

__all__ = ["merge"]


def _add(into: dict[str, Any], d: dict[str, Any]) -> None:
    for k, v in d.items():
        into[k] = into.get(k, 0) + v


_SUMMED = (
    "calls", "hits", "memory_hits", "redis_hits", "coalesced", "misses", "bypass_count",
    "stores", "db_ms", "time_saved_ms", "bytes_held", "entries", "invalidations",
    "writes_dropping", "writes_skipped", "dropped_unused", "expired",
)  # fmt: skip


def _merge_extra(values: list[Any]) -> Any:
    """Extra sections: numbers add up, dicts merge key by key, lists concatenate."""
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return values[0] if len(set(values)) == 1 else values
    if all(isinstance(v, int | float) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: _merge_extra([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, list) for v in values):
        return [x for v in values for x in v]
    return values[0] if all(v == values[0] for v in values) else values


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report's data for many processes' data (with recommendations)."""
    queries: dict[str, dict[str, Any]] = {}
    hists: dict[str, list[Any]] = {}
    tables: dict[str, dict[str, Any]] = {}
    processes, degraded, samples = [], [], []
    errors: dict[str, int] = {}
    events: dict[str, int] = {}
    memory = dict.fromkeys(("entries", "bytes_held", "memory_budget", "evictions"), 0)
    for d in reports:
        proc = d["processes"][0]
        t = d["totals"]
        processes.append(
            {
                **proc,
                **{
                    k: t[k]
                    for k in (
                        "calls",
                        "hits",
                        "misses",
                        "bypasses",
                        "hit_ratio",
                        "time_saved_ms",
                        "entries",
                        "bytes_held",
                        "errors",
                    )
                },
            }
        )
        for k in memory:
            memory[k] += t.get(k, 0)
        for q in d["queries"]:
            m = queries.get(q["fingerprint_id"])
            hists.setdefault(q["fingerprint_id"], []).append(q.get("db_histogram", []))
            if m is None:
                queries[q["fingerprint_id"]] = m = {
                    **q,
                    **dict.fromkeys(_SUMMED, 0),
                    "bypasses": {},
                    "not_stored": {},
                    "invalidated_by": {},
                    "admissions": {},
                    "last_seen": None,
                }
            for k in _SUMMED:
                m[k] += q.get(k, 0)
            for k in ("bypasses", "not_stored", "invalidated_by"):
                _add(m[k], q.get(k, {}))
            m["admissions"][q["admission"]] = m["admissions"].get(q["admission"], 0) + 1
            if q.get("last_seen"):
                m["last_seen"] = max(m["last_seen"] or 0, q["last_seen"])
        for tb in d["tables"]:
            m = tables.setdefault(tb["table"], {"table": tb["table"], "_share": 0.0})
            for k in (
                "reads",
                "writes",
                "invalidations",
                "entries_dropped",
                "entries",
                "invalidation_pending",
            ):
                m[k] = m.get(k, 0) + tb[k]
            m["queries"] = max(m.get("queries", 0), tb["queries"])
            m["_share"] += tb["mean_drop_share"] * tb["invalidations"]
        degraded += [dict(p, process=proc["id"]) for p in d.get("degraded", [])]
        _add(errors, d.get("errors", {}))
        _add(events, d.get("events", {}))
        for p in d.get("timeline", []):
            samples.append(p)
    qrows = []
    for fid, m in queries.items():
        admissions = m.pop("admissions")
        m["admission"] = (
            max(admissions, key=admissions.get)
            if len(admissions) == 1
            else ("; ".join(f"{n} process(es): {a}" for a, n in admissions.items()))
        )
        timed = sum(n for h in hists[fid] for _, n in h)
        m["mean_db_ms"] = m["db_ms"] / timed if timed else 0.0
        m["p95_db_ms"] = p95_of(hists[fid])
        merged: dict[int, int] = {}
        for h in hists[fid]:
            for i, n in h:
                merged[i] = merged.get(i, 0) + n
        m["db_histogram"] = [[i, n] for i, n in sorted(merged.items())]
        m["hit_ratio"] = m["hits"] / m["calls"] if m["calls"] else 0.0
        qrows.append(m)
    qrows.sort(key=lambda q: (-q["time_saved_ms"], -q["calls"], q["fingerprint_id"]))
    trows = []
    for m in tables.values():
        share = m.pop("_share")
        m["mean_drop_share"] = share / m["invalidations"] if m["invalidations"] else 0.0
        trows.append(m)
    trows.sort(key=lambda t: (-(t["reads"] + t["writes"]), t["table"]))
    totals = totals_of(qrows, trows, memory, sum(errors.values()))
    now = time.time()
    start = min((d["window"]["start"] for d in reports), default=now)
    end = max((d["window"]["end"] for d in reports), default=now)
    data: dict[str, Any] = {
        "schema": "querycache.report",
        "version": reports[0]["version"] if reports else 1,
        "generated_at": now,
        "window": {"start": start, "end": end, "seconds": end - start},
        "processes": processes,
        "totals": totals,
        "queries": qrows,
        "tables": trows,
        "timeline": _merge_timeline(samples),
        "errors": errors,
        "events": events,
        "degraded": degraded,
    }
    extras = list(dict.fromkeys(k for d in reports for k in d if k not in CORE_SECTIONS))
    for k in extras:
        data[k] = _merge_extra([d[k] for d in reports if k in d])
    return finish(data)


def _merge_timeline(points: list[dict[str, Any]], buckets: int = 120) -> list[dict[str, Any]]:
    """Per-process intervals re-cut into at most ``buckets`` common ones."""
    if not points:
        return []
    t0 = min(p["t"] - p["seconds"] for p in points)
    t1 = max(p["t"] for p in points)
    step = max((t1 - t0) / buckets, 1.0)
    cum: list[list[float]] = []
    n = int((t1 - t0) / step) + 1
    sums = [[0, 0, 0] for _ in range(n)]
    for p in points:
        i = min(n - 1, int((p["t"] - t0) / step))
        sums[i][0] += p["hits"]
        sums[i][1] += p["misses"]
        sums[i][2] += p["bypasses"]
    total = [0, 0, 0]
    cum.append([t0, 0, 0, 0])
    for i, s in enumerate(sums):
        total = [a + b for a, b in zip(total, s)]
        cum.append([t0 + (i + 1) * step, *total])
    return timeline_deltas(cum)
