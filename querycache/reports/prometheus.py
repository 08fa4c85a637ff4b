"""A Prometheus collector (``pip install querycache[prometheus]``).

::

    from prometheus_client import REGISTRY, start_http_server
    from querycache.reports.prometheus import QueryCacheCollector

    REGISTRY.register(QueryCacheCollector(cache))

Each scrape reads the cache's report (nothing is added to any query path).
Labels stay bounded: ``fingerprint`` is the fingerprint id of the
``max_fingerprints`` busiest queries, every other query is summed under
``fingerprint="other"``; ``table`` likewise with ``max_tables``; bypass
``reason`` is cut to the ``max_reasons`` most frequent (``"other"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from querycache.stats import LatencySketch

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["BUCKETS", "QueryCacheCollector"]

#: histogram bounds (seconds): powers of two of microseconds, which are
#: bucket edges of the latency sketch, so the cumulative counts are exact
BUCKETS = tuple(2.0**j * 1e-6 for j in range(6, 26, 2))


def _sketch_index(bound: float) -> int:
    return LatencySketch.index(bound)


class QueryCacheCollector:
    """Exposes hits (by tier), misses, bypasses, invalidations, bytes, entries
    and the database time of misses (a histogram) of one cache."""

    def __init__(
        self,
        cache: QueryCache,
        max_fingerprints: int = 50,
        max_tables: int = 50,
        max_reasons: int = 20,
        namespace: str = "querycache",
    ) -> None:
        for name, v in (
            ("max_fingerprints", max_fingerprints),
            ("max_tables", max_tables),
            ("max_reasons", max_reasons),
        ):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        self.cache = cache
        self.max_fingerprints = max_fingerprints
        self.max_tables = max_tables
        self.max_reasons = max_reasons
        self.prefix = namespace

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (the registry must not call collect())

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        data = self.cache.report().as_dict()
        p = self.prefix
        top = sorted(data["queries"], key=lambda q: -q["calls"])
        named = {q["fingerprint_id"] for q in top[: self.max_fingerprints]}

        def fid(q: dict[str, Any]) -> str:
            return q["fingerprint_id"] if q["fingerprint_id"] in named else "other"

        hits = CounterMetricFamily(f"{p}_hits", "Cache hits", labels=["tier", "fingerprint"])
        misses = CounterMetricFamily(f"{p}_misses", "Cache misses", labels=["fingerprint"])
        bypasses = CounterMetricFamily(
            f"{p}_bypasses", "Calls that bypassed the cache", labels=["fingerprint"]
        )
        held = GaugeMetricFamily(f"{p}_query_bytes", "Bytes held", labels=["fingerprint"])
        by_tier: dict[tuple[str, str], int] = {}
        miss: dict[str, int] = {}
        byp: dict[str, int] = {}
        size: dict[str, int] = {}
        sketches: dict[str, tuple[LatencySketch, float]] = {}
        reasons: dict[str, int] = {}
        for q in data["queries"]:
            f = fid(q)
            for tier, key in (
                ("memory", "memory_hits"),
                ("redis", "redis_hits"),
                ("shared", "coalesced"),
            ):
                by_tier[tier, f] = by_tier.get((tier, f), 0) + q[key]
            miss[f] = miss.get(f, 0) + q["misses"]
            byp[f] = byp.get(f, 0) + q["bypass_count"]
            size[f] = size.get(f, 0) + q["bytes_held"]
            sk, total = sketches.get(f, (LatencySketch(), 0.0))
            sk.merge(q["db_histogram"])
            sketches[f] = (sk, total + q["db_ms"] / 1000)
            for r, n in q["bypasses"].items():
                reasons[r] = reasons.get(r, 0) + n
        for (tier, f), n in sorted(by_tier.items()):
            hits.add_metric([tier, f], n)
        for f, n in sorted(miss.items()):
            misses.add_metric([f], n)
        for f, n in sorted(byp.items()):
            bypasses.add_metric([f], n)
        for f, n in sorted(size.items()):
            held.add_metric([f], n)
        yield from (hits, misses, bypasses, held)

        why = CounterMetricFamily(f"{p}_bypass_reasons", "Bypasses by reason", labels=["reason"])
        kept = sorted(reasons, key=lambda r: -reasons[r])[: self.max_reasons]
        other = sum(n for r, n in reasons.items() if r not in kept)
        for r in kept:
            why.add_metric([r], reasons[r])
        if other:
            why.add_metric(["other"], other)
        yield why

        latency = HistogramMetricFamily(
            f"{p}_db_seconds", "Database time of misses", labels=["fingerprint"]
        )
        for f, (sk, total) in sorted(sketches.items()):
            if not sk.count:
                continue
            buckets = []
            for bound in BUCKETS:
                edge = _sketch_index(bound)  # first sketch bucket at or above bound
                buckets.append((repr(bound), sum(n for i, n in sk.buckets.items() if i < edge)))
            buckets.append(("+Inf", sk.count))
            latency.add_metric([f], buckets, total)
        yield latency

        inv = CounterMetricFamily(f"{p}_invalidations", "Invalidations", labels=["table"])
        tables = sorted(data["tables"], key=lambda t: -t["invalidations"])
        rest = sum(t["invalidations"] for t in tables[self.max_tables :])
        for t in tables[: self.max_tables]:
            inv.add_metric([t["table"]], t["invalidations"])
        if rest:
            inv.add_metric(["other"], rest)
        yield inv

        t = data["totals"]
        yield GaugeMetricFamily(f"{p}_bytes", "Bytes held by the memory tier", t["bytes_held"])
        yield GaugeMetricFamily(f"{p}_entries", "Entries in the memory tier", t["entries"])
        yield CounterMetricFamily(f"{p}_evictions", "Entries evicted for space", t["evictions"])
        yield CounterMetricFamily(f"{p}_errors", "Failures inside the cache", t["errors"])
