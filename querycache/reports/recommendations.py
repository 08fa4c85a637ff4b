"""What to change, each with the figures that justify it.

A function of the report's data only (so the fleet view, which merges the
data of many processes, recommends from the merged figures). Each item is
``{"kind", "message", "evidence": {...}}`` plus ``fingerprint_id`` or
``table`` when it concerns one; kinds are listed in :data:`KINDS`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "MIN_CALLS", "recommend"]

#: a query or table needs this many calls/reads before it is judged
MIN_CALLS = 20

KINDS = (
    "memory too small",
    "invalidated as often as read",
    "never hit",
    "ttl too short",
    "table written too often",
    "hot uncacheable query",
    "parameters defeat keys",
    "results too large",
)

_CLOCK = (
    "now", "current_", "clock", "timestamp", "sysdate", "getdate", "localtime", "today",
    "julianday", "date", "time", "unixepoch",
)  # fmt: skip


def _advice(reason: str) -> str:
    r = reason.lower()
    if r.startswith(("volatile function", "clock value")) and any(w in r for w in _CLOCK):
        return (
            "compute the time in Python and pass it as a parameter (rounded, if a "
            "slightly old answer is acceptable)"
        )
    if "random" in r:
        return "a random result cannot be cached; pick the random rows in Python instead"
    if r.startswith("unknown function"):
        return "declare the function with QueryCache(immutable_functions=...) if it is pure"
    if r.startswith("not admitted"):
        return "its entries were dropped before they were reused: see its writes"
    if "transaction" in r:
        return "reads after a write in one transaction go to the database; read first"
    if r == "snapshot isolation":
        return "REPEATABLE READ / SERIALIZABLE transactions bypass the cache"
    return "see the reason"


def _short(fp: str, n: int = 80) -> str:
    fp = " ".join(fp.split())
    return fp if len(fp) <= n else fp[: n - 3] + "..."


def recommend(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The recommendations for a report's data (``totals``, ``queries``, ``tables``)."""
    out: list[dict[str, Any]] = []
    totals = data.get("totals", {})
    tables = {t["table"]: t for t in data.get("tables", [])}
    evictions = totals.get("evictions", 0)
    if evictions >= 10 and evictions > totals.get("misses", 0) * 0.1:
        out.append(
            {
                "kind": "memory too small",
                "message": f"{evictions} entries were evicted for space: a larger "
                "memory_bytes would raise the hit ratio",
                "evidence": {
                    "evictions": evictions,
                    "misses": totals.get("misses", 0),
                    "bytes_held": totals.get("bytes_held", 0),
                    "memory_budget": totals.get("memory_budget", 0),
                },
            }
        )
    for q in data.get("queries", [])[:200]:
        rec = _for_query(q, tables)
        if rec is not None:
            rec["fingerprint_id"] = q["fingerprint_id"]
            out.append(rec)
    for t in tables.values():
        if t["reads"] >= MIN_CALLS and t["invalidations"] > t["reads"] / 2:
            out.append(
                {
                    "kind": "table written too often",
                    "message": f"table {t['table']} is invalidated {t['invalidations']} times "
                    f"for {t['reads']} reads: caching its readers saves little",
                    "evidence": {
                        k: t[k] for k in ("reads", "writes", "invalidations", "entries_dropped")
                    },
                    "table": t["table"],
                }
            )
    return out


def _for_query(q: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any] | None:
    calls, hits, misses = q["calls"], q["hits"], q["misses"]
    if calls < MIN_CALLS:
        return None
    fp = _short(q["fingerprint"])
    evidence = {"calls": calls, "hits": hits, "misses": misses}
    if q["bypass_count"] > calls / 2:
        reason = max(q["bypasses"], key=q["bypasses"].get)
        kind = "hot uncacheable query"
        if reason.startswith(("parameter reads the clock", "parameter of a type")):
            kind = "parameters defeat keys"
        return {
            "kind": kind,
            "message": f"never cached ({reason}), {calls} calls: {_advice(reason)}: {fp}",
            "evidence": {**evidence, "bypasses": q["bypasses"]},
        }
    too_large = q["not_stored"].get("larger than max_entry_bytes", 0)
    if misses and too_large > misses / 2:
        return {
            "kind": "results too large",
            "message": f"results too large to cache (raise max_entry_bytes): {fp}",
            "evidence": {**evidence, "not_stored": q["not_stored"]},
        }
    invalidations = q.get("invalidations", 0)
    if invalidations and invalidations >= 0.5 * (hits + misses) and hits < misses:
        return {
            "kind": "invalidated as often as read",
            "message": f"invalidated {invalidations} times for {calls} calls "
            f"({hits} hits): storing it costs more than it saves: {fp}",
            "evidence": {
                **evidence,
                "invalidations": invalidations,
                "invalidated_by": q.get("invalidated_by", {}),
            },
        }
    expired = q.get("expired", 0)
    if (
        hits * 10 < calls
        and misses * 10 >= calls * 9
        and invalidations * 10 < misses
        and expired * 10 < misses
    ):
        return {
            "kind": "parameters defeat keys",
            "message": f"{misses} of {calls} calls missed with few invalidations: nearly "
            f"every call has new parameter values (a timestamp, a token?): round or drop "
            f"them: {fp}",
            "evidence": {**evidence, "invalidations": invalidations, "expired": expired},
        }
    writes = sum(tables.get(t, {}).get("writes", 0) for t in q["tables"])
    if expired >= 5 and expired >= 0.3 * misses and writes * 4 <= expired:
        return {
            "kind": "ttl too short",
            "message": f"{expired} of its {misses} misses followed an expiry while its tables "
            f"were written {writes} times: a longer TTL "
            f"(execution_options(querycache_ttl=...)) would keep them: {fp}",
            "evidence": {**evidence, "expired": expired, "writes_to_its_tables": writes},
        }
    unused = q.get("dropped_unused", 0)
    if hits == 0 and unused >= 10 and unused * 2 >= q.get("stores", 0):
        return {
            "kind": "never hit",
            "message": f"{unused} of its {q.get('stores', 0)} stored results were dropped "
            f"without ever being served: {fp}",
            "evidence": {**evidence, "stores": q.get("stores", 0), "dropped_unused": unused},
        }
    return None
