"""Read-your-writes: the tables with write-behind entries pending in this process.

Each cache has one :class:`PendingWrites`. While it is non-empty, every
engine of the cache has its fast paths off (``EngineBinding.fast_ok``), so
every read reaches ``EngineBinding.before``, which calls
:meth:`PendingWrites.before_read`: a read of a pending table first flushes the
queues holding entries for it. While it is empty, nothing on any read path
looks at it (the hit path pays nothing); the first slow-path read after it
empties turns the fast paths back on.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any

from querycache.analysis import ALL

if TYPE_CHECKING:
    from querycache.queues.writebehind import WriteBehind

__all__ = ["IN_WORKER", "PendingWrites"]

#: True inside a write-behind worker (its own reads never wait for itself)
IN_WORKER: contextvars.ContextVar[bool] = contextvars.ContextVar("qc_in_worker", default=False)
_EVERYTHING = "*"


class PendingWrites:
    """Counts of pending entries per written table, per queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_queue: dict[WriteBehind, dict[str, int]] = {}
        self.flushes = 0

    def __bool__(self) -> bool:
        return bool(self._by_queue)

    def add(self, wb: WriteBehind, tables: Any, bindings: Any) -> None:
        names = (_EVERYTHING,) if tables is ALL else tables
        with self._lock:
            counts = self._by_queue.setdefault(wb, {})
            for t in names:
                counts[t] = counts.get(t, 0) + 1
        # after the count: a reader that turned fast_ok on before it saw the
        # count is turned off here (see EngineBinding.before)
        for binding in bindings:
            binding.fast_ok = False

    def remove(self, wb: WriteBehind, tables: Any) -> None:
        names = (_EVERYTHING,) if tables is ALL else tables
        with self._lock:
            counts = self._by_queue.get(wb)
            if counts is None:
                return
            for t in names:
                n = counts.get(t, 0) - 1
                if n > 0:
                    counts[t] = n
                else:
                    counts.pop(t, None)
            if not counts:
                del self._by_queue[wb]

    def forget(self, wb: WriteBehind) -> None:
        with self._lock:
            self._by_queue.pop(wb, None)

    def before_read(self, tables_read: Any, in_write_txn: bool, is_async: bool) -> None:
        """Flush every queue with entries pending for ``tables_read`` (``ALL``: any)."""
        if IN_WORKER.get() or in_write_txn:
            # a worker never waits for itself; a transaction that already wrote
            # holds locks the worker may need (its reads see its own writes)
            return
        with self._lock:
            due = [
                wb
                for wb, counts in self._by_queue.items()
                if tables_read is ALL
                or _EVERYTHING in counts
                or not counts.keys().isdisjoint(tables_read)
            ]
        for wb in due:
            self.flushes += 1
            wb.flush_for_read(is_async)
