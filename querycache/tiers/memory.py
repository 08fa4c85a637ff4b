"""L1: process memory. An LRU bounded by bytes, with a TTL per entry; each
entry holds the validity cells it depends on
(:mod:`querycache.invalidation.cells`).

The hit path (:meth:`MemoryTier.get`) takes no lock: one dict lookup, one
clock read, the entry's expiry and the channel lease compared with it
(:mod:`querycache.invalidation.lease`), a look at the entry's few cells, one
LRU touch — each a single atomic operation on CPython. Stores check the
captured cells under the lock.
An invalidation only kills cells (its cost does not grow with the entries it
drops); the entries of dead cells are reclaimed a bounded batch at a time on
later stores and invalidations, or as soon as a lookup finds them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from querycache.invalidation.cells import CellRegistry
from querycache.tiers.base import Entry

__all__ = ["MemoryTier"]

_monotonic = time.monotonic


class MemoryTier:
    """Byte-bounded LRU of :class:`Entry` objects."""

    def __init__(self, max_bytes: int, max_entry_bytes: int, cells: CellRegistry) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.cells = cells
        self.lock = threading.RLock()
        self._data: OrderedDict[Any, Entry] = OrderedDict()
        self._deps: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, str], ...]] = {}
        self._counts: dict[tuple[str, str], int] = {}  # entries per (scope, table)
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0
        self.suspended = False
        #: monotonic time until which entries may be served: the channel
        #: lease's deadline with Redis, +inf for a memory-only cache
        self.lease_until = float("inf")
        #: where lookups refused by a lapsed lease are counted (Stats)
        self.stats: Any = None

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any) -> Entry | None:
        """The live entry under ``key``, or ``None`` (may raise ``TypeError``
        for an unhashable key)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        now = _monotonic()
        if self.lease_until < now:  # before the cells: see the lease module
            self._lapsed(entry, now)
            return None
        if entry.expires < now:
            with self.lock:
                if self._data.get(key) is entry:
                    self._remove(key)
                    self.expirations += 1
                    if entry.stats is not None:
                        entry.stats.expired += 1
            return None
        for cell in entry.cells:
            if cell.dead:
                with self.lock:
                    if self._data.get(key) is entry:
                        self._remove(key)
                return None
        try:
            self._data.move_to_end(key)
        except KeyError:  # removed by another thread since the lookup
            pass
        entry.used = True
        return entry

    def peek(self, key: Any) -> Entry | None:
        """The live entry under ``key`` without touching it (not for the hit path)."""
        entry = self._data.get(key)
        if entry is None or entry.expires < _monotonic() or any(c.dead for c in entry.cells):
            return None
        return entry

    def _lapsed(self, entry: Entry, now: float) -> None:
        """A lookup the lapsed lease refused: counted if it would have hit."""
        stats = self.stats
        if stats is not None and entry.expires >= now and not any(c.dead for c in entry.cells):
            stats.lease_hits_lost += 1

    def put(
        self,
        key: Any,
        entry: Entry,
        scope: str,
        tables: tuple[str, ...],
        snapshot: tuple[Any, ...],
        ttl: float,
    ) -> bool:
        """Store ``entry`` if every cell in ``snapshot`` (captured before the
        query ran, see :meth:`CellRegistry.capture`) is still alive.

        Returns False when the entry is too large or a write that may have
        changed it committed since ``snapshot`` was captured.
        """
        size = entry.size
        if size > self.max_entry_bytes or size > self.max_bytes:
            return False
        deps = self._deps.get((scope, tables))
        if deps is None:
            if len(self._deps) >= 10_000:
                self._deps.clear()
            deps = self._deps[scope, tables] = tuple((scope, t) for t in tables)
        with self.lock:
            if self.suspended:
                return False
            for cell in snapshot:
                if cell.dead:
                    return False
            if key in self._data:
                self._remove(key, False)
            if self.bytes + size > self.max_bytes:
                self._reclaim(1024)
            while self.bytes + size > self.max_bytes and self._data:
                self._remove(next(iter(self._data)), False)
                self.evictions += 1
            entry.key = key
            entry.cells = snapshot
            entry.deps = deps
            counts = self._counts
            for dep in deps:
                counts[dep] = counts.get(dep, 0) + 1
            entry.expires = _monotonic() + ttl
            self._data[key] = entry
            self.bytes += size
            if entry.stats is not None:
                entry.stats.bytes_held += size
                entry.stats.entries += 1
            for cell in snapshot:
                cell.keys.add(key)
            if self.cells.dead or self.cells.graveyard:
                self._reclaim(16)
        return True

    def _remove(self, key: Any, dropped: bool = True) -> None:
        """Remove ``key``; ``dropped``: by invalidation or expiry (admission
        counts those entries that were never served; evictions it does not)."""
        entry = self._data.pop(key)
        self.bytes -= entry.size
        if entry.stats is not None:
            entry.stats.bytes_held -= entry.size
            entry.stats.entries -= 1
            if dropped and not entry.used:
                entry.stats.dropped_unused += 1
        for cell in entry.cells:
            cell.keys.discard(key)
        counts = self._counts
        for dep in entry.deps:
            counts[dep] -= 1

    def entries_of(self, scope: str, table: str) -> int:
        """How many entries (live or not yet reclaimed) read ``table``."""
        return self._counts.get((scope, table), 0)

    def _reclaim(self, budget: int) -> int:
        """Remove up to ``budget`` entries of dead cells (under the lock)."""
        removed = 0
        dead = self.cells.dead
        while removed < budget and dead:
            cell = dead.pop()
            keys = cell.keys
            while keys and removed < budget:
                key = keys.pop()
                entry = self._data.get(key)
                if entry is not None and cell in entry.cells:
                    self._remove(key)
                    removed += 1
            if keys:
                dead.append(cell)
        if self.cells.graveyard:
            self.cells.bury(budget * 4)
        return removed

    def invalidate(
        self,
        scope: str,
        writes: dict[str, Any] | frozenset[str] | None,
        refreshable: list[Any] | None = None,
    ) -> dict[str, int]:
        """Kill the cells ``writes`` may touch: per table its
        :class:`~querycache.invalidation.images.Image` or ``None`` (unknown
        rows); a set of table names (all unknown); ``None``: all of ``scope``.
        Returns, per table, how many entries became unreachable (at once).
        ``refreshable`` receives the killed entries that have a refresh record."""
        if writes is not None and not isinstance(writes, dict):
            writes = dict.fromkeys(writes)
        keys: list[tuple[Any, ...]] | None = [] if refreshable is not None else None
        killed = self.cells.kill(scope, writes, keys)
        if keys:
            data, seen = self._data, set()
            for some in keys:
                for key in some:
                    entry = data.get(key)
                    if entry is not None and entry.refresh is not None and key not in seen:
                        seen.add(key)
                        refreshable.append(entry)  # type: ignore[union-attr]
        if self.cells.dead or self.cells.graveyard:
            with self.lock:
                self._reclaim(64)
        return killed

    def clear(self) -> None:
        """Drop everything and advance every version."""
        with self.lock:
            self.cells.kill_all()
            self.cells.dead.clear()
            for entry in self._data.values():
                if entry.stats is not None:
                    entry.stats.bytes_held -= entry.size
                    entry.stats.entries -= 1
            for entry in self._data.values():
                for cell in entry.cells:
                    cell.keys.clear()
            self._data.clear()
            self._counts.clear()
            self.bytes = 0

    def suspend(self) -> None:
        """Empty the tier and refuse stores (invalidations may be missed)."""
        with self.lock:
            self.suspended = True
            self.clear()

    def resume(self) -> None:
        """Accept stores again, starting empty."""
        with self.lock:
            self.clear()
            self.suspended = False
