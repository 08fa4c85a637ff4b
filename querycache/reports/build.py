"""Reading a cache's counters once into the report's data (schema version 1).

The layout is documented in ``docs/report-schema.md`` and checked by
``querycache/reports/schema.json``. Queries are named by their fingerprint
(literals replaced by placeholders), so no parameter value ever appears.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from querycache.latency import LatencySketch
from querycache.reports.recommendations import recommend

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["PROCESS_ID", "SCHEMA_VERSION", "build_data", "finish", "timeline_deltas"]

SCHEMA_VERSION = 1
#: this process, as the fleet view names it
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _query(qs: Any, calls: int, hits: int, seen: float) -> dict[str, Any]:
    s = qs.snapshot()
    misses, db_seconds, timed = s["misses"], s["db_seconds"], s["timed"]
    bypasses, not_stored = s["bypasses"], s["not_stored"]
    redis_hits, coalesced, stores = s["redis_hits"], s["coalesced"], s["stores"]
    p95, sparse = s["p95"], s["histogram"]
    mean = db_seconds / timed if timed else 0.0
    memory_hits = hits - redis_hits - coalesced
    return {
        "fingerprint": qs.fingerprint,
        "fingerprint_id": qs.fingerprint_id,
        "tables": sorted(qs.tables),
        "calls": calls,
        "hits": hits,
        "memory_hits": memory_hits,
        "redis_hits": redis_hits,
        "coalesced": coalesced,
        "misses": misses,
        "bypasses": bypasses,
        "bypass_count": sum(bypasses.values()),
        "not_stored": not_stored,
        "stores": stores,
        "hit_ratio": hits / calls if calls else 0.0,
        "db_ms": db_seconds * 1000,
        "mean_db_ms": mean * 1000,
        "p95_db_ms": p95 * 1000,
        "db_histogram": sparse,
        "time_saved_ms": hits * mean * 1000,
        "bytes_held": max(qs.bytes_held, 0),
        "entries": max(qs.entries, 0),
        "invalidations": qs.writes_dropping,
        "invalidated_by": dict(qs.invalidated_by),
        "writes_dropping": qs.writes_dropping,
        "writes_skipped": qs.writes_skipped,
        "dropped_unused": qs.dropped_unused,
        "expired": qs.expired,
        "admission": qs.admission.describe() if qs.admission is not None else "always",
        "last_seen": seen or None,
    }


def build_data(cache: QueryCache) -> dict[str, Any]:
    """Every counter of ``cache`` read once, laid out (without recommendations)."""
    stats = cache.stats
    stats.sample()
    now = time.time()
    seen_before = getattr(stats, "_report_seen", {})
    seen_now: dict[str, tuple[int, float]] = {}
    last_sample = stats.timeline[-2][0] if len(stats.timeline) > 1 else stats.started
    queries = []
    for qs in list(stats.queries.values()):
        hits = qs.hits
        calls = hits + qs.misses + sum(qs.bypasses.values())
        if calls == 0:
            continue
        # a hit reads no clock: a call count that moved since the last
        # report dates the query to (at least) that report
        prev_calls, prev_seen = seen_before.get(qs.fingerprint_id, (0, 0.0))
        seen = max(qs.last_seen, prev_seen, last_sample if calls != prev_calls else 0.0)
        seen_now[qs.fingerprint_id] = (calls, seen)
        queries.append(_query(qs, calls, hits, seen))
    stats._report_seen = seen_now  # type: ignore[attr-defined]
    queries.sort(key=lambda q: (-q["time_saved_ms"], -q["calls"], q["fingerprint_id"]))
    reads: dict[str, int] = {}
    readers: dict[str, int] = {}
    for q in queries:
        for t in q["tables"]:
            reads[t] = reads.get(t, 0) + q["calls"]
            readers[t] = readers.get(t, 0) + 1
    with cache.memory.lock:
        held: dict[str, int] = {}
        for (_, t), n in cache.memory._counts.items():
            held[t] = held.get(t, 0) + n
    pending = _pending(cache)
    tables = []
    for name in set(reads) | set(stats.tables):
        ts = stats.tables.get(name)
        inv = ts.invalidations if ts else 0
        tables.append(
            {
                "table": name,
                "reads": reads.get(name, 0),
                "queries": readers.get(name, 0),
                "writes": ts.writes if ts else 0,
                "invalidations": inv,
                "entries_dropped": ts.entries_dropped if ts else 0,
                "mean_drop_share": ts.drop_share / inv if ts and inv else 0.0,
                "entries": held.get(name, 0),
                "invalidation_pending": pending.get(name, 0) + pending.get("*", 0),
            }
        )
    tables.sort(key=lambda t: (-(t["reads"] + t["writes"]), t["table"]))
    degraded = [dict(p, kind=p.get("kind", "redis unavailable")) for p in stats.degraded]
    for kind, (start, reason) in stats.degraded_open.items():
        degraded.append(_open_period(kind, start, reason, now))
    redis = cache.redis
    if redis is not None and not redis.healthy and redis._down_since is not None:
        degraded.append(
            _open_period("redis unavailable", redis._down_since, redis._down_reason, now)
        )
    memory = {
        "entries": len(cache.memory),
        "bytes_held": cache.memory.bytes,
        "memory_budget": cache.memory.max_bytes,
        "evictions": cache.memory.evictions,
    }
    return {
        "schema": "querycache.report",
        "version": SCHEMA_VERSION,
        "generated_at": now,
        "window": {"start": stats.started, "end": now, "seconds": now - stats.started},
        "processes": [
            {
                "id": PROCESS_ID,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "namespace": cache.namespace,
                "published_at": now,
            }
        ],
        "totals": totals_of(queries, tables, memory, sum(stats.errors.values())),
        "queries": queries,
        "tables": tables,
        "timeline": timeline_deltas(stats.timeline),
        "errors": dict(stats.errors),
        "events": dict(stats.events),
        "degraded": degraded,
    }


def _open_period(kind: str, start: float, reason: str, now: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "start": start,
        "end": None,
        "seconds": round(now - start, 3),
        "reason": reason,
    }


def _pending(cache: QueryCache) -> dict[str, int]:
    """Per table, the scopes whose Redis invalidation is still to be written
    (write-behind after a Redis failure); ``"*"``: whole scopes."""
    out: dict[str, int] = {}
    redis = cache.redis
    if redis is None:
        return out
    for tables in list(redis.pending.values()):
        for t in ("*",) if tables is None else tables:
            out[t] = out.get(t, 0) + 1
    return out


def totals_of(
    queries: list[dict[str, Any]],
    tables: list[dict[str, Any]],
    memory: dict[str, int],
    errors: int,
) -> dict[str, Any]:
    """The ``totals`` section from the per-query and per-table rows."""

    def total(key: str) -> Any:
        return sum(q[key] for q in queries)

    calls, hits = total("calls"), total("hits")
    return {
        "calls": calls,
        "hits": hits,
        "memory_hits": total("memory_hits"),
        "redis_hits": total("redis_hits"),
        "coalesced": total("coalesced"),
        "misses": total("misses"),
        "bypasses": total("bypass_count"),
        "stores": total("stores"),
        "writes": sum(t["writes"] for t in tables),
        "invalidations": sum(t["invalidations"] for t in tables),
        "db_ms": total("db_ms"),
        "time_saved_ms": total("time_saved_ms"),
        "hit_ratio": hits / calls if calls else 0.0,
        **memory,
        "errors": errors,
    }


def timeline_deltas(samples: list[list[float]]) -> list[dict[str, Any]]:
    """Cumulative samples to per-interval counts."""
    out = []
    for prev, cur in itertools.pairwise(samples):
        out.append(
            {
                "t": cur[0],
                "seconds": cur[0] - prev[0],
                "hits": int(cur[1] - prev[1]),
                "misses": int(cur[2] - prev[2]),
                "bypasses": int(cur[3] - prev[3]),
            }
        )
    return out


def finish(data: dict[str, Any]) -> dict[str, Any]:
    """Add what is derived from the data alone: the recommendations."""
    data["recommendations"] = recommend(data)
    return data


def p95_of(histograms: list[list[list[int]]]) -> float:
    """The p95 in ms of merged sparse latency histograms."""
    sketch = LatencySketch()
    for h in histograms:
        sketch.merge(h)
    return sketch.quantile(0.95) * 1000
