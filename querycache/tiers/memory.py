"""L1: process memory. An LRU bounded by bytes, with a TTL per entry and an
index from ``(scope, table)`` to the entries that depend on it.

The hit path (:meth:`MemoryTier.get`) takes no lock: one dict lookup, one
clock read, one LRU touch — each a single atomic operation on CPython. Stores
and invalidations take the lock, which also guards the version check that
keeps a result read before a commit from being stored after it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from querycache.invalidation.versions import EPOCH, LocalVersions
from querycache.tiers.base import Entry

__all__ = ["MemoryTier"]

_monotonic = time.monotonic


class MemoryTier:
    """Byte-bounded LRU of :class:`Entry` objects."""

    def __init__(self, max_bytes: int, max_entry_bytes: int, versions: LocalVersions) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.versions = versions
        self.lock = threading.RLock()
        self._data: OrderedDict[Any, Entry] = OrderedDict()
        self._index: dict[tuple[str, str], set[Any]] = {}
        self._deps: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, str], ...]] = {}
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0
        self.suspended = False

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any) -> Entry | None:
        """The live entry under ``key``, or ``None`` (may raise ``TypeError``
        for an unhashable key)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires < _monotonic():
            with self.lock:
                if self._data.get(key) is entry:
                    self._remove(key)
                    self.expirations += 1
            return None
        try:
            self._data.move_to_end(key)
        except KeyError:  # removed by another thread since the lookup
            pass
        return entry

    def put(
        self,
        key: Any,
        entry: Entry,
        scope: str,
        tables: tuple[str, ...],
        snapshot: tuple[int, ...],
        ttl: float,
    ) -> bool:
        """Store ``entry`` if the tables' versions still equal ``snapshot``.

        Returns False when the entry is too large or a table it reads was
        invalidated since ``snapshot`` was captured.
        """
        size = entry.size
        if size > self.max_entry_bytes or size > self.max_bytes:
            return False
        deps = self._deps.get((scope, tables))
        if deps is None:
            if len(self._deps) >= 10_000:
                self._deps.clear()
            deps = self._deps[scope, tables] = ((scope, EPOCH), *[(scope, t) for t in tables])
        with self.lock:
            if self.suspended or self.versions.capture(scope, tables) != snapshot:
                return False
            if key in self._data:
                self._remove(key)
            while self.bytes + size > self.max_bytes and self._data:
                self._remove(next(iter(self._data)))
                self.evictions += 1
            entry.key = key
            entry.deps = deps  # type: ignore[assignment]
            entry.expires = _monotonic() + ttl
            self._data[key] = entry
            self.bytes += size
            if entry.stats is not None:
                entry.stats.bytes_held += size
            index = self._index
            for dep in deps:
                keys = index.get(dep)
                if keys is None:
                    index[dep] = {key}
                else:
                    keys.add(key)
        return True

    def _remove(self, key: Any) -> None:
        entry = self._data.pop(key)
        self.bytes -= entry.size
        if entry.stats is not None:
            entry.stats.bytes_held -= entry.size
        index = self._index
        for dep in entry.deps:
            keys = index.get(dep)  # type: ignore[call-overload]
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[dep]  # type: ignore[arg-type]

    def invalidate(self, scope: str, tables: frozenset[str] | None) -> int:
        """Bump versions and drop dependent entries; ``None`` means every
        table in ``scope``. Returns how many entries were dropped."""
        with self.lock:
            self.versions.bump(scope, tables)
            deps = [(scope, EPOCH)] if tables is None else [(scope, t) for t in tables]
            dropped = 0
            for dep in deps:
                for key in list(self._index.get(dep, ())):
                    if key in self._data:
                        self._remove(key)
                        dropped += 1
            return dropped

    def clear(self) -> None:
        """Drop everything and advance every version."""
        with self.lock:
            self.versions.bump_everything()
            for entry in self._data.values():
                if entry.stats is not None:
                    entry.stats.bytes_held -= entry.size
            self._data.clear()
            self._index.clear()
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
