"""Counters behind the hit report.

One :class:`QueryStats` per fingerprint; the hit path does one thing, on the
object its entry points to: ``next(entry.stats.memory_hit)``. That counter is
an :func:`itertools.count`, whose ``next()`` is a single C call that holds the
GIL, so concurrent hits never lose an increment (a plain ``x += 1`` is a
read-modify-write), at the price of an ordinary attribute increment and no
lock, clock, allocation or logging. Everything off the hit path (misses with
their database time, bypasses, Redis hits, stores) is updated by methods that
take the fingerprint's own lock — a miss paid a database round trip, the lock
is noise beside it — and that explain the decision at debug level on the
``querycache`` logger (one cached ``isEnabledFor`` check when it is off).

Per-table reads are derived from the fingerprints at report time, so a hit
never loops over tables. :mod:`querycache.reports` reads all of this.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from typing import Any

from querycache.latency import LatencySketch

__all__ = ["LatencySketch", "QueryStats", "Stats", "TableStats", "count_value"]

log = logging.getLogger("querycache")

#: at most this many timeline samples; then neighbours are merged
_TIMELINE_MAX = 240
#: seconds between timeline samples taken on the miss path
SAMPLE_INTERVAL = 5.0


def count_value(counter: itertools.count[int]) -> int:
    """The next value of an :func:`itertools.count` without consuming it
    (its ``repr`` is ``count(N)``: documented and stable)."""
    return int(repr(counter)[6:-1])


def explaining() -> bool:
    """Whether decisions are explained (``querycache`` logger at DEBUG).

    Off the hit path only; :meth:`logging.Logger.isEnabledFor` caches its
    answer until a level changes, so this costs a dict lookup when off.
    """
    return log.isEnabledFor(logging.DEBUG)


class QueryStats:
    """What happened to one fingerprint."""

    __slots__ = (
        "_lock",
        "_owner",
        "admission",
        "bypasses",
        "bytes_held",
        "coalesced",
        "db_seconds",
        "dropped_unused",
        "entries",
        "expired",
        "fingerprint",
        "fingerprint_id",
        "invalidated_by",
        "last_seen",
        "latency",
        "memory_hit",
        "misses",
        "not_stored",
        "redis_hits",
        "stale_age",
        "stale_age_max",
        "stale_hits",
        "stores",
        "tables",
        "writes_dropping",
        "writes_skipped",
    )

    def __init__(
        self, fingerprint: str, fingerprint_id: str, tables: frozenset[str], owner: Any = None
    ) -> None:
        self._lock = threading.Lock()
        self._owner: Stats | None = owner
        self.fingerprint = fingerprint
        self.fingerprint_id = fingerprint_id
        self.tables = tables
        #: L1 hits: ``next(qs.memory_hit)`` on the hit path, read as :attr:`memory_hits`
        self.memory_hit = itertools.count()
        self.redis_hits = 0
        self.coalesced = 0
        self.misses = 0
        self.stores = 0
        #: database time of the timed misses, and its distribution
        self.db_seconds = 0.0
        self.latency = LatencySketch()
        self.bytes_held = 0
        #: memory-tier entries held (maintained under the tier's lock)
        self.entries = 0
        #: entries that expired (TTL) before anything dropped them
        self.expired = 0
        self.bypasses: Counter[str] = Counter()
        self.not_stored: Counter[str] = Counter()
        #: committed writes to its tables that dropped some of its entries /
        #: that were judged not to affect any of them (row-precise invalidation)
        self.writes_dropping = 0
        self.writes_skipped = 0
        #: per written table, the writes that dropped some of its entries
        self.invalidated_by: Counter[str] = Counter()
        #: entries removed (invalidated, evicted, expired) without one hit
        self.dropped_unused = 0
        #: the :class:`~querycache.admission.Admission` of this fingerprint
        self.admission: Any = None
        #: hits served from an invalidated entry within its max_stale bound,
        #: the sum and the largest of their ages (seconds since the commit)
        self.stale_hits = 0
        self.stale_age = 0.0
        self.stale_age_max = 0.0
        #: wall-clock time of the last call seen off the hit path (hits are
        #: dated by the report's snapshots)
        self.last_seen = 0.0

    @property
    def memory_hits(self) -> int:
        return count_value(self.memory_hit)

    @memory_hits.setter
    def memory_hits(self, value: int) -> None:
        # ``qs.memory_hits += 1`` still works (lossy like any +=); prefer next()
        for _ in range(value - count_value(self.memory_hit)):
            next(self.memory_hit)

    @property
    def hits(self) -> int:
        return self.memory_hits + self.redis_hits + self.coalesced

    @property
    def calls(self) -> int:
        return self.hits + self.misses + sum(self.bypasses.values())

    # -- off the hit path: under the lock, explained at debug level ------------
    def bypass(self, reason: str) -> None:
        """A call that went to the database without the cache, and why."""
        with self._lock:
            self.bypasses[reason] += 1
            self.last_seen = time.time()
        if explaining():
            log.debug("querycache: bypass [%s] %s: %s", self.fingerprint_id, reason, self._sql())

    def miss(self, seconds: float | None, not_stored: str | None = None) -> None:
        """A miss that ran the query (``seconds`` of database time, None if
        not measured); ``not_stored``: why its result is not kept."""
        with self._lock:
            self.misses += 1
            if seconds is not None:
                self.db_seconds += seconds
                self.latency.add(seconds)
            if not_stored is not None:
                self.not_stored[not_stored] += 1
            self.last_seen = now = time.time()
        owner = self._owner
        if owner is not None and now >= owner.next_sample:
            owner.sample()
        if explaining():
            ms = f"{seconds * 1000:.2f} ms" if seconds is not None else "not timed"
            kept = f", not stored: {not_stored}" if not_stored else ""
            log.debug("querycache: miss [%s] %s%s: %s", self.fingerprint_id, ms, kept, self._sql())

    def unstored(self, reason: str) -> None:
        """A miss already counted whose result was not stored after all."""
        with self._lock:
            self.not_stored[reason] += 1
        if explaining():
            log.debug("querycache: not stored [%s]: %s", self.fingerprint_id, reason)

    def stored(self) -> None:
        with self._lock:
            self.stores += 1

    def redis_hit(self) -> None:
        with self._lock:
            self.redis_hits += 1
            self.last_seen = time.time()
        if explaining():
            log.debug("querycache: hit [%s] redis: %s", self.fingerprint_id, self._sql())

    def coalesce(self) -> None:
        """Served the result another thread was fetching (singleflight)."""
        with self._lock:
            self.coalesced += 1
            self.last_seen = time.time()
        if explaining():
            log.debug("querycache: hit [%s] shared by a concurrent miss", self.fingerprint_id)

    def memory_hit_slow(self) -> None:
        """An L1 hit found off the fast paths (so it can be explained)."""
        next(self.memory_hit)
        self.last_seen = time.time()
        if explaining():
            log.debug("querycache: hit [%s] memory: %s", self.fingerprint_id, self._sql())

    def snapshot(self) -> dict[str, Any]:
        """The lock-protected figures, read together (for the report)."""
        with self._lock:
            return {
                "misses": self.misses,
                "redis_hits": self.redis_hits,
                "coalesced": self.coalesced,
                "stores": self.stores,
                "db_seconds": self.db_seconds,
                "timed": self.latency.count,
                "p95": self.latency.quantile(0.95),
                "histogram": self.latency.sparse(),
                "bypasses": dict(self.bypasses),
                "not_stored": dict(self.not_stored),
            }

    def _sql(self) -> str:
        fp = " ".join(self.fingerprint.split())
        return fp if len(fp) <= 120 else fp[:117] + "..."


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
    """All counters of one :class:`~querycache.QueryCache`.

    Also the wall-clock window they cover (``started``), a timeline of
    cumulative totals (``timeline``: ``[wall time, hits, misses, bypasses]``,
    sampled on a miss every :data:`SAMPLE_INTERVAL` seconds, by every report
    and by the fleet publisher) and the degraded periods (``degraded``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries: dict[str, QueryStats] = {}
        self.tables: dict[str, TableStats] = {}
        self.errors: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.degraded: list[dict[str, Any]] = []
        #: background re-executions (:mod:`querycache.refresh`), by outcome
        self.refresh: Counter[str] = Counter()
        #: kind -> (start, reason) of the degraded periods still open
        self.degraded_open: dict[str, tuple[float, str]] = {}
        self.started = time.time()
        self.timeline: list[list[float]] = [[self.started, 0, 0, 0]]
        self.next_sample = 0.0
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
                        fingerprint, fingerprint_id, tables, self
                    )
        return qs

    def table(self, name: str) -> TableStats:
        ts = self.tables.get(name)
        if ts is None:
            with self._lock:
                ts = self.tables.setdefault(name, TableStats())
        return ts

    def count(self, name: str, n: int = 1, errors: bool = False) -> None:
        """Add ``n`` to an event (or, with ``errors``, an error) counter, under the lock."""
        with self._lock:
            (self.errors if errors else self.events)[name] += n

    def wrote(self, tables: frozenset[str]) -> None:
        with self._lock:
            for t in tables:
                self.tables.setdefault(t, TableStats()).writes += 1

    def invalidated(
        self,
        scope: str,
        tables: frozenset[str] | None,
        dropped: dict[str, int],
        shares: dict[str, float],
    ) -> None:
        """A committed write applied: per table, entries dropped and the share
        of the table's entries that was (``tables=None``: everything)."""
        with self._lock:
            if tables is None:
                self.events["invalidate everything"] += 1
            else:
                for t in tables:
                    self.tables.setdefault(t, TableStats()).invalidations += 1
            for t, n in dropped.items():
                ts = self.tables.setdefault(t, TableStats())
                ts.entries_dropped += n
                ts.drop_share += shares.get(t, 0.0)
        if explaining():
            what = "everything" if tables is None else ", ".join(sorted(tables))
            log.debug(
                "querycache: invalidation in %s of %s dropped %s",
                scope,
                what,
                ", ".join(f"{t}: {n} entries" for t, n in sorted(dropped.items())) or "nothing",
            )

    # -- degraded periods ------------------------------------------------------------
    def degraded_begin(self, kind: str, reason: str = "") -> None:
        """A degraded period starts (idempotent while it lasts)."""
        with self._lock:
            self.degraded_open.setdefault(kind, (time.time(), reason))

    def degraded_end(self, kind: str) -> None:
        with self._lock:
            opened = self.degraded_open.pop(kind, None)
            if opened is not None:
                start, reason = opened
                end = time.time()
                self.degraded.append(
                    {
                        "kind": kind,
                        "start": start,
                        "end": end,
                        "seconds": round(end - start, 3),
                        "reason": reason,
                    }
                )

    # -- timeline --------------------------------------------------------------------
    def sample(self) -> None:
        """Append the cumulative totals now (merging old samples past the cap)."""
        now = time.time()
        hits = misses = bypasses = 0
        for qs in list(self.queries.values()):
            hits += qs.hits
            misses += qs.misses
            bypasses += sum(qs.bypasses.values())
        with self._lock:
            self.next_sample = now + SAMPLE_INTERVAL
            tl = self.timeline
            # two samplers may race: the cumulative series stays monotone
            tl.append([max(a, b) for a, b in zip(tl[-1], (now, hits, misses, bypasses))])
            if len(tl) > _TIMELINE_MAX:
                # keep the first and the last; drop every other one between
                self.timeline = [tl[0], *tl[1:-1:2], tl[-1]] if len(tl) > 2 else tl

    def reset(self) -> None:
        with self._lock:
            for qs in self.queries.values():
                held, entries, admission = qs.bytes_held, qs.entries, qs.admission
                qs.__init__(qs.fingerprint, qs.fingerprint_id, qs.tables, self)  # type: ignore[misc]
                qs.bytes_held, qs.entries, qs.admission = held, entries, admission
            self.tables.clear()
            self.errors.clear()
            self.events.clear()
            self.degraded.clear()
            self.refresh.clear()
            now = time.time()
            self.degraded_open = {k: (now, r) for k, (_, r) in self.degraded_open.items()}
            self.started = now
            self.timeline = [[now, 0, 0, 0]]
            self.next_sample = 0.0
            self._reset_lease()
