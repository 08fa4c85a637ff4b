"""Counters behind the hit report.

One :class:`QueryStats` per fingerprint; the hit path increments a single
attribute of the object its entry points to. Per-table reads are derived from
the fingerprints at report time, so a hit never loops over tables.
Increments are plain attribute updates: under heavy thread contention a rare
increment can be lost, never invented.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["QueryStats", "Stats", "TableStats"]


class QueryStats:
    """What happened to one fingerprint."""

    __slots__ = (
        "admission",
        "bypasses",
        "bytes_held",
        "coalesced",
        "db_seconds",
        "dropped_unused",
        "fingerprint",
        "fingerprint_id",
        "memory_hits",
        "misses",
        "not_stored",
        "redis_hits",
        "stores",
        "tables",
        "writes_dropping",
        "writes_skipped",
    )

    def __init__(self, fingerprint: str, fingerprint_id: str, tables: frozenset[str]) -> None:
        self.fingerprint = fingerprint
        self.fingerprint_id = fingerprint_id
        self.tables = tables
        self.memory_hits = 0
        self.redis_hits = 0
        self.coalesced = 0
        self.misses = 0
        self.stores = 0
        self.db_seconds = 0.0
        self.bytes_held = 0
        self.bypasses: Counter[str] = Counter()
        self.not_stored: Counter[str] = Counter()
        #: committed writes to its tables that dropped some of its entries /
        #: that were judged not to affect any of them (row-precise invalidation)
        self.writes_dropping = 0
        self.writes_skipped = 0
        #: entries removed (invalidated, evicted, expired) without one hit
        self.dropped_unused = 0
        #: the :class:`~querycache.admission.Admission` of this fingerprint
        self.admission: Any = None

    @property
    def hits(self) -> int:
        return self.memory_hits + self.redis_hits + self.coalesced

    @property
    def calls(self) -> int:
        return self.hits + self.misses + sum(self.bypasses.values())


class TableStats:
    """Writes seen and invalidations applied for one table.

    ``entries_dropped``: memory-tier entries the invalidations made unreachable;
    ``drop_share``: the sum over invalidations of the share of the table's
    entries each one dropped (divide by ``invalidations`` for the mean).
    """

    __slots__ = ("drop_share", "entries_dropped", "invalidations", "writes")

    def __init__(self) -> None:
        self.writes = 0
        self.invalidations = 0
        self.entries_dropped = 0
        self.drop_share = 0.0


class Stats:
    """All counters of one :class:`~querycache.QueryCache`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries: dict[str, QueryStats] = {}
        self.tables: dict[str, TableStats] = {}
        self.errors: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.degraded: list[dict[str, Any]] = []
        self._reset_lease()

    def _reset_lease(self) -> None:
        #: the channel lease (:mod:`querycache.invalidation.lease`): how often
        #: and how long it lapsed, and the memory-tier hits refused meanwhile
        self.lease_lapses = 0
        self.lease_seconds = 0.0
        self.lease_hits_lost = 0

    def query(self, fingerprint: str, fingerprint_id: str, tables: frozenset[str]) -> QueryStats:
        """The counters of a fingerprint, created on first sight."""
        qs = self.queries.get(fingerprint_id)
        if qs is None:
            with self._lock:
                qs = self.queries.get(fingerprint_id)
                if qs is None:
                    qs = self.queries[fingerprint_id] = QueryStats(
                        fingerprint, fingerprint_id, tables
                    )
        return qs

    def table(self, name: str) -> TableStats:
        ts = self.tables.get(name)
        if ts is None:
            with self._lock:
                ts = self.tables.setdefault(name, TableStats())
        return ts

    def reset(self) -> None:
        with self._lock:
            for qs in self.queries.values():
                held, admission = qs.bytes_held, qs.admission
                qs.__init__(qs.fingerprint, qs.fingerprint_id, qs.tables)  # type: ignore[misc]
                qs.bytes_held, qs.admission = held, admission
            self.tables.clear()
            self.errors.clear()
            self.events.clear()
            self.degraded.clear()
            self._reset_lease()
