"""The write-behind front: ``cache.write_behind(engine, ...)``.

``submit`` returns once the statement is durably journaled; a
:class:`~querycache.queues.worker.Worker` applies entries in submission order,
batched, through the wrapped engine (so each batch invalidates, row-precisely,
when it commits). See ``docs/architecture.md``, "Write-behind".
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from querycache.integration import io
from querycache.queues.applied import DEFAULT_TABLE, AppliedIds
from querycache.queues.journal import DeadLetter, Journal, SqliteJournal
from querycache.queues.pending import IN_WORKER
from querycache.queues.statements import journal_form
from querycache.queues.worker import Item, Worker
from querycache.settings import number

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["FlushResult", "QueueFull", "WriteBehind", "open_journal"]

_SETTLED_CHECK = 0.05  # seconds between journal checks while waiting (shared queues)


class QueueFull(Exception):
    """``submit`` met ``max_pending`` entries (``on_full="raise"``, or the
    ``block_timeout`` of ``on_full="block"`` passed)."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What this process's worker settled since the previous ``flush()``."""

    applied: int
    dead_lettered: tuple[DeadLetter, ...]


def open_journal(spec: Any, cache: QueryCache | None = None, queue: str = "default") -> Journal:
    """A journal from ``"sqlite:///path"``, ``"redis"`` (the cache's Redis),
    ``"redis://..."`` or a :class:`~querycache.queues.journal.Journal`."""
    if isinstance(spec, Journal):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"journal must be 'sqlite:///path', 'redis' or a URL, got {spec!r}")
    if spec.startswith("sqlite:///") and len(spec) > len("sqlite:///"):
        return SqliteJournal(spec[len("sqlite:///") :])
    if spec == "redis" or spec.startswith(("redis://", "rediss://", "unix://")):
        import redis

        from querycache.queues.redis_journal import RedisJournal

        namespace = cache.namespace if cache is not None else "default"
        if spec != "redis":
            client = redis.Redis.from_url(spec, socket_timeout=10)
        elif cache is None or cache.redis is None:
            raise ValueError(
                "journal='redis' needs a cache with redis_url (or give a redis:// URL)"
            )
        else:
            clients = cache.redis.clients if hasattr(cache.redis, "clients") else None
            client = _journal_client(clients)
        return RedisJournal(client, namespace, queue)
    raise ValueError(f"journal must be 'sqlite:///path', 'redis' or a redis:// URL, got {spec!r}")


def _journal_client(clients: Any) -> Any:
    """A client of the cache's Redis with a timeout fit for durable writes."""
    import redis

    if clients is None or clients.cluster:
        raise ValueError("journal='redis' needs a single Redis server (not a cluster)")
    if clients._url is not None:
        return redis.Redis.from_url(clients._url, socket_timeout=10)
    return redis.Redis(**clients._recipe, socket_timeout=10)


class WriteBehind:
    """A durable queue of writes applied in the background (see the module doc)."""

    def __init__(
        self,
        cache: QueryCache,
        engine: Engine | AsyncEngine,
        journal: Any = "sqlite:///querycache-journal.db",
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
        on_full: str = "block",
        block_timeout: float = 30.0,
        read_your_writes: bool = True,
        applied_table: str = DEFAULT_TABLE,
        queue: str = "default",
    ) -> None:
        if not isinstance(engine, Engine | AsyncEngine):
            raise TypeError(f"write_behind() needs an Engine or AsyncEngine, got {engine!r}")
        self.batch_size = number("batch_size", batch_size, minimum=1, allow_zero=True, integer=True)
        self.flush_interval = float(number("flush_interval", flush_interval))
        self.max_pending = number(
            "max_pending", max_pending, minimum=1, allow_zero=True, integer=True
        )
        self.block_timeout = float(number("block_timeout", block_timeout, allow_zero=True))
        if on_full not in ("block", "raise"):
            raise ValueError(f"on_full must be 'block' or 'raise', got {on_full!r}")
        if not isinstance(read_your_writes, bool):
            raise TypeError(f"read_your_writes must be True or False, got {read_your_writes!r}")
        self.on_full = on_full
        self.read_your_writes = read_your_writes
        self.cache = cache
        self.engine = cache.wrap(engine)
        self.is_async = isinstance(engine, AsyncEngine)
        self._sync_engine: Engine = engine.sync_engine if self.is_async else engine  # type: ignore[union-attr]
        self.dialect = self._sync_engine.dialect
        self.journal = open_journal(journal, cache, queue)
        self.applied = AppliedIds(applied_table, self.journal.name)
        self.closing_deadline = float("inf")
        self._lock = threading.Condition()
        self._pending = self.journal.pending()
        self._mine: dict[int, Any] = {}
        self._reported = (0, 0)
        self._checked_lease: object = None
        self._replays_below = 0
        self._closed = False
        self.worker = Worker(self)
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        cache.write_behinds.append(self)
        if not self.is_async:
            self._thread = threading.Thread(
                target=self._run_thread, name="querycache-write-behind", daemon=True
            )
            self._thread.start()

    # -- submitting -----------------------------------------------------------
    def submit(self, stmt: Any) -> int:
        """Journal ``stmt`` durably and return its entry id.

        Raises ``TypeError`` if it cannot be journaled, :class:`QueueFull` at
        ``max_pending`` (``on_full``), and journal errors as they are.
        """
        if self._closed:
            raise RuntimeError("this write-behind queue is closed")
        record = journal_form(stmt, self.dialect)
        analysis = self.cache.plan(record.sql, self.dialect.name).analysis
        if analysis.kind != "write":
            raise TypeError(f"submit() takes INSERT, UPDATE or DELETE, not a {analysis.kind}")
        data = record.encode()
        with self._lock:
            if self._pending >= self.max_pending:
                if self.on_full == "raise":
                    raise QueueFull(f"{self._pending} entries pending (max_pending)")
                if not self._lock.wait_for(
                    lambda: self._pending < self.max_pending, self.block_timeout
                ):
                    raise QueueFull(f"still {self._pending} entries pending after block_timeout")
            seq = self.journal.append(data)
            self._pending += 1
            if self.read_your_writes:
                self._mine[seq] = analysis.tables_written
                self.cache.write_pending.add(
                    self, analysis.tables_written, self.cache._bindings.values()
                )
            full = self._pending >= self.batch_size
        if full:
            self.worker.wakeup.set()
        return seq

    async def asubmit(self, stmt: Any) -> int:
        """:meth:`submit` without blocking the event loop (the journal's fsync
        runs in a thread)."""
        self._start_task()
        return await asyncio.to_thread(self.submit, stmt)

    def settled(self, seqs: list[int]) -> None:
        """Called by the worker: these entries left the journal."""
        with self._lock:
            self._pending = max(0, self._pending - len(seqs))
            for seq in seqs:
                tables = self._mine.pop(seq, None)
                if tables is not None:
                    self.cache.write_pending.remove(self, tables)
            self._lock.notify_all()

    # -- applying (called by the worker) -----------------------------------------
    def apply(self, batch: list[Item]) -> set[int]:
        """One batch in one transaction; the seqs found already applied."""
        seqs = [item.seq for item in batch]
        first = batch[0].record
        assert first is not None
        if first.dialect != self.dialect.name:
            raise TypeError(f"entry was journaled for {first.dialect}, not {self.dialect.name}")
        self.applied.ensure(self._sync_engine)
        with self._sync_engine.begin() as conn:
            lease = self.journal.lease_id
            if self._checked_lease != lease:
                # ids above what the table held when this lease began were
                # claimed under it: only those below can be a replay
                self._replays_below = self.applied.highest(conn)
                self._checked_lease = lease
            if batch[0].alone or seqs[0] <= self._replays_below:
                done = self.applied.already(conn, seqs)
            else:
                done = set()
            todo = [item for item in batch if item.seq not in done]
            if todo:
                params = [item.record.params for item in todo]  # type: ignore[union-attr]
                conn.exec_driver_sql(first.sql, params if len(params) > 1 else params[0])
                self.applied.record(conn, [item.seq for item in todo])
            if self.worker.due_prune():
                self.applied.prune(conn, self.journal.low_water())
        return done

    # -- flushing ---------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until every entry journaled so far (submitted by this object,
        left by a process that died, re-queued dead letters) is applied or
        dead-lettered; what this process applied and dead-lettered since the
        last flush.

        Raises ``TimeoutError`` after ``timeout`` seconds."""
        self._wait(timeout, is_async=False)
        return self._result()

    async def aflush(self, timeout: float | None = None) -> FlushResult:
        """:meth:`flush` for async engines."""
        self._start_task()
        await greenlet_spawn(self._wait, timeout, True)
        return self._result()

    def flush_for_read(self, is_async: bool) -> None:
        """Read-your-writes: flush before a read of a pending table."""
        self._wait(None, is_async)

    def _wait(self, timeout: float | None, is_async: bool) -> None:
        if self.is_async and self._task is None:
            raise RuntimeError("this queue's worker runs in its event loop: use await wb.aflush()")
        worker = self.worker
        # everything journaled now: this object's entries, replays, re-queued ones
        target = worker._io(self.journal.high_water) if is_async else self.journal.high_water()
        deadline = None if timeout is None else time.monotonic() + timeout
        worker.wakeup.set()
        checked = 0.0
        while worker.done_through < target:
            now = time.monotonic()
            if now - checked >= _SETTLED_CHECK:  # another process may have applied them
                checked = now
                if (
                    worker._io(self.journal.settled, target)
                    if is_async
                    else (self.journal.settled(target))
                ):
                    self._forget_through(target)
                    return
            if deadline is not None and now > deadline:
                raise TimeoutError(f"write-behind flush: entries up to {target} still pending")
            if is_async:
                io.sleep(0.002, True)
            else:
                with worker.progress:
                    if worker.done_through < target:
                        worker.progress.wait(_SETTLED_CHECK)

    def _forget_through(self, target: int) -> None:
        with self._lock:
            done = [s for s in self._mine if s <= target]
        self.settled(done) if done else None

    def _result(self) -> FlushResult:
        f = self.worker.figures
        applied, dead = self._reported
        self._reported = (f.applied, len(f.dead))
        return FlushResult(f.applied - applied, tuple(f.dead[dead:]))

    # -- the worker ----------------------------------------------------------------------
    def _run_thread(self) -> None:
        IN_WORKER.set(True)
        self.worker.run()

    def _start_task(self) -> None:
        if self._task is None and self.is_async and not self._closed:
            self.worker.wakeup.bind_loop()
            self._task = asyncio.get_running_loop().create_task(self._run_task())

    async def _run_task(self) -> None:
        IN_WORKER.set(True)
        await greenlet_spawn(self.worker.run)

    # -- closing -------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> FlushResult:
        """Flush, stop the worker, close the journal (entries left journaled,
        e.g. with the database down past ``timeout``, are applied by the next
        worker of this journal)."""
        if self._closed:
            return FlushResult(0, ())
        try:
            result = self.flush(timeout)
        finally:
            self._stop(timeout)
        if self._thread is not None:
            self._thread.join()
        self._finish()
        return result

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """:meth:`close` for async engines."""
        if self._closed:
            return FlushResult(0, ())
        try:
            result = await self.aflush(timeout)
        finally:
            self._stop(timeout)
        if self._task is not None:
            await self._task
        self._finish()
        return result

    def _stop(self, timeout: float | None) -> None:
        self._closed = True
        self.closing_deadline = time.monotonic() + (timeout if timeout is not None else 0)
        self.worker.stopping = True
        self.worker.wakeup.set()

    def _finish(self) -> None:
        self.cache.write_pending.forget(self)
        if self in self.cache.write_behinds:
            self.cache.write_behinds.remove(self)
        self.journal.close()

    # -- figures ---------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """The report's view of this queue."""
        f = self.worker.figures
        elapsed = max(time.monotonic() - f.started, 1e-9)
        out: dict[str, Any] = {
            "journal": self.journal.name,
            "applied": f.applied,
            "applied_per_second": f.applied / elapsed,
            "skipped_as_applied": f.skipped,
            "batches": f.batches,
            "mean_batch_size": f.applied / f.batches if f.batches else 0.0,
            "largest_batch": f.largest_batch,
            "transient_retries": f.retries,
            "dead_lettered": len(f.dead),
        }
        try:
            oldest = self.journal.oldest()
            out["pending"] = self.journal.pending()
            out["dead_letters"] = len(self.journal.dead_letters())
            out["oldest_age_s"] = time.time() - oldest if oldest is not None else 0.0
        except Exception as exc:  # the report never fails for a journal
            self.cache.failed("write-behind report", exc)
        return out


def write_behind_figures(cache: QueryCache) -> dict[str, Any]:
    """``report["write_behind"]``: one entry per open queue of ``cache``."""
    return {"queues": [wb.figures() for wb in list(getattr(cache, "write_behinds", ()))]}
