"""The worker: applies journaled entries to the database, in order, in batches.

One loop for both kinds of engine. A sync engine's worker is a thread running
:meth:`Worker.run`; an async engine's is an asyncio task running the same
method inside SQLAlchemy's greenlet (``greenlet_spawn``), where database calls
await through the driver and waits go through :mod:`querycache.integration.io`.

A batch is a run of consecutive entries with the same SQL: one
``executemany`` in one transaction that also records the entries' ids in the
applied-ids table (:mod:`.applied`), and skips ids already there (a crash
between the database commit and the journal ack). Only after the commit are
the entries acked in the journal. Transient errors (connection lost,
serialization failure, deadlock, a locked SQLite database) retry the batch
with backoff; a permanent error splits the batch into single entries, and an
entry that still fails alone goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc

from querycache.integration import io
from querycache.queues.journal import DeadLetter, Journaled
from querycache.queues.statements import Record, decode_record

if TYPE_CHECKING:
    from querycache.queues.writebehind import WriteBehind

__all__ = ["Worker", "is_transient"]

_PRUNE_EVERY = 5.0  # seconds between prunes of the applied-ids table
_MAX_BACKOFF = 2.0
# PostgreSQL SQLSTATE classes worth retrying: connection, transaction
# rollback (serialization failure, deadlock), resources, operator intervention
_PG_TRANSIENT = ("08", "40", "53", "57", "55P03")
_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")


def is_transient(error: BaseException) -> bool:
    """Whether retrying ``error`` later may succeed."""
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
        return True
    if not isinstance(error, sa_exc.OperationalError | sa_exc.InternalError):
        return False  # IntegrityError, ProgrammingError, DataError...
    orig = error.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str):
        return state.startswith(_PG_TRANSIENT)
    text = str(orig).lower()
    return any(word in text for word in _SQLITE_TRANSIENT)


@dataclass(slots=True)
class Item:
    """A claimed entry, decoded (``record`` None: undecodable)."""

    seq: int
    entry: Journaled
    record: Record | None
    error: str = ""
    #: retried on its own, after its batch failed permanently
    alone: bool = False


@dataclass(slots=True)
class Figures:
    """What the worker did, for ``flush()`` and the report."""

    applied: int = 0
    skipped: int = 0  # found already applied (a replay after a crash)
    batches: int = 0
    largest_batch: int = 0
    retries: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class Wakeup:
    """A flag the submitters set and the worker waits on (thread or loop)."""

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aevent: asyncio.Event | None = None

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._aevent = asyncio.Event()

    def set(self) -> None:
        if self._aevent is None:
            self._event.set()
            return
        assert self._loop is not None
        try:
            if self._loop is asyncio.get_running_loop():
                self._aevent.set()
                return
        except RuntimeError:
            pass
        try:
            self._loop.call_soon_threadsafe(self._aevent.set)
        except RuntimeError:  # loop closed
            pass

    def wait(self, timeout: float) -> None:
        if self._aevent is None:
            self._event.wait(timeout)
            self._event.clear()
            return
        try:
            io.run(asyncio.wait_for(self._aevent.wait(), timeout))
        except TimeoutError:
            pass
        self._aevent.clear()


class Worker:
    """Applies one :class:`~querycache.queues.writebehind.WriteBehind`'s journal."""

    def __init__(self, wb: WriteBehind) -> None:
        self.wb = wb
        self.journal = wb.journal
        self.figures = Figures()
        self.wakeup = Wakeup(wb.is_async)
        self.stopping = False
        #: the highest seq settled (applied, skipped or buried) by this worker
        self.done_through = 0
        self.progress = threading.Condition()
        self._queue: deque[Item] = deque()
        self._unacked: list[int] = []
        self._attempt = 0
        self._pruned = 0.0

    # -- the loop ------------------------------------------------------------
    def run(self) -> None:
        """Until stopped: wait for entries (``flush_interval`` at most), then
        apply everything claimable."""
        wb = self.wb
        while not self.stopping:
            self.wakeup.wait(wb.flush_interval)
            while not self.stopping and self.cycle():
                pass
        while self.cycle():  # close(): what is left, unless the database is down
            if self._attempt and wb.closing_deadline < time.monotonic():
                break

    def _io(self, fn: Any, *args: Any) -> Any:
        """A journal call: in a thread when the event loop must not block."""
        if self.wb.is_async:
            return io.run(asyncio.to_thread(fn, *args))
        return fn(*args)

    def cycle(self) -> bool:
        """One step: claim, or apply one batch. False when there was nothing to do."""
        try:
            if self._unacked:
                self._io(self.journal.ack, self._unacked)
                self._unacked = []
            if not self._queue:
                if not self._io(self.journal.acquire):
                    return False
                claimed = self._io(self.journal.claim, self.wb.batch_size)
                if not claimed:
                    return False
                self._queue.extend(_decode(e) for e in claimed)
        except Exception as exc:  # the journal is unreachable: try again later
            self.wb.cache.failed("write-behind journal", exc)
            self._backoff()
            return bool(self._queue) and not self.stopping
        batch = self._take()
        if batch[0].record is None:
            self._bury(batch[0], batch[0].error)
            return True
        try:
            skipped = self.wb.apply(batch)
        except Exception as exc:
            if is_transient(exc):
                self.figures.retries += 1
                self._queue.extendleft(reversed(batch))
                self._backoff()
                return not self.stopping
            if len(batch) > 1:  # find the culprit: each entry alone
                for item in reversed(batch):
                    item.alone = True
                    self._queue.appendleft(item)
                return True
            self._bury(batch[0], _describe(exc))
            return True
        self._attempt = 0
        seqs = [item.seq for item in batch]
        n = len(batch) - len(skipped)
        self._settle(seqs, applied=n, skipped=len(skipped), batch=n)
        return True

    def _take(self) -> list[Item]:
        first = self._queue.popleft()
        batch = [first]
        if first.alone or first.record is None:
            return batch
        sql = first.record.sql
        while (
            self._queue
            and len(batch) < self.wb.batch_size
            and self._queue[0].record is not None
            and not self._queue[0].alone
            and self._queue[0].record.sql == sql  # type: ignore[union-attr]
        ):
            batch.append(self._queue.popleft())
        return batch

    def _backoff(self) -> None:
        self._attempt += 1
        io.sleep(min(_MAX_BACKOFF, 0.02 * 2 ** min(self._attempt, 10)), self.wb.is_async)

    def _bury(self, item: Item, error: str) -> None:
        sql = item.record.sql if item.record is not None else "?"
        try:
            self._io(self.journal.bury, item.entry, sql, error)
        except Exception as exc:
            self.wb.cache.failed("write-behind journal", exc)
            self._queue.appendleft(item)
            self._backoff()
            return
        self.figures.dead.append(DeadLetter(str(item.seq), sql, error, time.time()))
        self._settle([], dead=item.seq)

    def _settle(
        self,
        seqs: list[int],
        applied: int = 0,
        skipped: int = 0,
        batch: int = 0,
        dead: int | None = None,
    ) -> None:
        if seqs:
            try:
                self._io(self.journal.ack, seqs)
            except Exception as exc:  # applied all the same: ack on a later cycle
                self.wb.cache.failed("write-behind journal", exc)
                self._unacked.extend(seqs)
        f = self.figures
        f.applied += applied
        f.skipped += skipped
        if batch:
            f.batches += 1
            f.largest_batch = max(f.largest_batch, batch)
        top = max(seqs) if seqs else (dead or 0)
        self.wb.settled(seqs if dead is None else [dead])
        with self.progress:
            self.done_through = max(self.done_through, top)
            self.progress.notify_all()

    def due_prune(self) -> bool:
        now = time.monotonic()
        if now - self._pruned < _PRUNE_EVERY:
            return False
        self._pruned = now
        return True


def _decode(entry: Journaled) -> Item:
    try:
        return Item(entry.seq, entry, decode_record(entry.data))
    except ValueError as exc:
        return Item(entry.seq, entry, None, f"undecodable journal entry: {exc}")


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"[:500]
