"""Re-executing cached reads in the background: write-through refresh and
stale-while-revalidate share this one mechanism.

**What is kept.** Only for entries that can need it — ``QueryCache(
refresh_on_write=N)`` with N > 0, or a statement that opted into bounded
staleness (:mod:`querycache.staleness`) — the miss path attaches a
:class:`Record` to the entry (the SQL text, the DBAPI parameters, the
binding, its TTL and stale allowance) and turns the entry into a
:class:`HotEntry`, whose ``used`` counts hits instead of flagging them. The
default entry and its hit path are untouched.

**When.** A commit's invalidation is applied (``do_commit``, after the
database committed) as before; the cells it kills report the keys of the
entries they held (bounded). Of those with a record, the N hottest (most hits
since they were stored) are re-executed, and every entry that opted into
staleness is kept aside and re-executed once. ``commit()`` waits for the
write-through refreshes at most ``refresh_budget`` seconds; the rest finish
in the background (worker threads for sync engines, tasks on the engine's
event loop for async ones). A rollback applies nothing, so refreshes nothing.

**How.** A refresh is an ordinary read on a connection of its own from the
engine's pool, never inside the user's transaction: ``exec_driver_sql`` of
the same SQL text and parameters, so it has the same memory key and takes
the ordinary miss path — cells captured before the query, the store refused
if a newer commit killed one of them (it then stores nothing), the
singleflight (readers missing meanwhile wait for it; a refresh arriving while
a reader fetches follows it). It is not counted as a miss of its statement;
the report's ``refresh`` section counts it.
"""

from __future__ import annotations

import asyncio
import heapq
import queue
import threading
import time
import weakref
from collections import Counter
from operator import attrgetter
from typing import Any

from sqlalchemy.pool import AssertionPool, StaticPool

from querycache.integration import io
from querycache.staleness import MAX_STALE_OPTION, StaleStore, stale_figures
from querycache.tiers.base import Entry

__all__ = ["REFRESH_OPTION", "HotEntry", "Record", "Refresher", "refresh_figures"]

#: the execution option a refresh runs with (its value: the entry's Record)
REFRESH_OPTION = "_querycache_refresh"

_QUEUE = 1024  # background refreshes waiting at most; more are dropped (counted)
_WORKERS = 2
_ATTEMPTS = 3  # a stale entry's refresh that lost a race is retried while in bound

_USED = Entry.__dict__["used"]  # the slot descriptor under HotEntry's property


class HotEntry(Entry):
    """An entry with a :class:`Record`: each hit adds one to ``used``."""

    __slots__ = ()

    @property  # type: ignore[override]
    def used(self) -> int:
        return _USED.__get__(self)  # type: ignore[no-any-return]

    @used.setter
    def used(self, value: bool) -> None:
        _USED.__set__(self, _USED.__get__(self) + 1 if value else 0)


class Record:
    """What re-executing one entry takes."""

    __slots__ = ("binding", "max_stale", "params", "plan", "statement", "ttl")

    def __init__(
        self,
        binding: Any,
        statement: str,
        params: Any,
        plan: Any,
        ttl: float,
        max_stale: float | None,
    ) -> None:
        self.binding = binding
        self.statement = statement
        self.params = params
        self.plan = plan
        self.ttl = ttl
        self.max_stale = max_stale


class Job:
    """One refresh of one key."""

    __slots__ = ("attempts", "done", "key", "record", "stale", "started", "task")

    def __init__(self, record: Record, key: Any, stale: bool, attempts: int = 1) -> None:
        self.record = record
        self.key = key
        self.stale = stale
        self.attempts = attempts
        self.started = False
        self.done = threading.Event()
        self.task: Any = None


class Refresher:
    """Records, the refresh queue and its workers, and the stale store."""

    def __init__(
        self, core: Any, on_write: int, budget: float, max_stale: dict[str, float]
    ) -> None:
        self.core = core
        self.on_write = on_write
        self.budget = budget
        self.stale = StaleStore(max_stale)
        #: entries may get records at all (the miss path checks this first)
        self.active = bool(on_write or max_stale)
        #: some entry has a record: invalidations report the keys they kill
        self.armed = self.active
        self.counts: Counter[str] = core.stats.refresh
        self._engines: dict[int, Any] = {}  # id(binding) -> weakref to engine, or None
        self._jobs: dict[Any, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue(_QUEUE)
        self._threads: list[threading.Thread] = []
        self._tasks: set[Any] = set()
        self._closed = False

    # -- the miss path --------------------------------------------------------------
    def prepare(self, ctx: Any, miss: Any, entry: Entry) -> None:
        """Before a miss stores ``entry``: attach a :class:`Record` if it may be
        refreshed (``refresh_on_write``, or it opted into staleness)."""
        opts = ctx.execution_options
        previous = opts.get(REFRESH_OPTION)
        if previous is not None:
            max_stale = previous.max_stale
        else:
            max_stale = self.stale.allowance_at_store(opts, miss.plan)
        if not self.on_write and max_stale is None:
            return
        params = ctx.parameters[0]
        if type(params) not in (dict, tuple) or self._engine_of(ctx) is None:
            return
        entry.refresh = Record(ctx._qc, ctx.statement, params, miss.plan, miss.ttl, max_stale)
        entry.__class__ = HotEntry
        self.armed = True

    def _engine_of(self, ctx: Any) -> Any:
        binding = ctx._qc
        ref = self._engines.get(id(binding), False)
        if ref is False:
            engine = ctx.root_connection.engine
            # each connection its own database, or one connection for all
            # threads: a refresh would read another database or share a cursor
            ok = not binding.private and not isinstance(engine.pool, StaticPool | AssertionPool)
            ref = self._engines[id(binding)] = weakref.ref(engine) if ok else None
        return ref() if ref is not None else None

    def serve_stale(self, ctx: Any, key: Any, plan: Any, capture: Any) -> bool:
        """A miss of ``key``: serve its stale entry if allowed (never to a refresh)."""
        if REFRESH_OPTION in ctx.execution_options:
            return False
        return self.stale.serve(ctx, key, plan, capture)

    # -- commits --------------------------------------------------------------------
    def invalidated(self, tables: frozenset[str] | None, entries: list[Entry]) -> list[Job]:
        """A commit of ``tables`` killed ``entries`` (those with a record):
        keep the stale-able aside and schedule their refresh, schedule the N
        hottest; returns the write-through jobs ``commit()`` may wait for."""
        if tables is None or self._closed:
            return []  # DDL or unknown writes: nothing stale, nothing re-run
        waiting: list[Job] = []
        stale = self.stale
        for entry in entries:
            if entry.refresh.max_stale is not None and stale.retain(entry, tables):
                self._schedule(entry.refresh, entry.key, True)
        if self.on_write:
            used = [e for e in entries if e.used]
            hot = heapq.nlargest(self.on_write, used, key=attrgetter("used"))
            for entry in hot:
                job = self._schedule(entry.refresh, entry.key, False)
                if job is not None and not job.stale:
                    waiting.append(job)
        return waiting

    def wait(self, jobs: list[Job], is_async: bool | None) -> None:
        """Let ``commit()`` wait for ``jobs`` at most ``refresh_budget``."""
        budget = self.budget
        if budget > 0:
            deadline = time.monotonic() + budget
            tasks = [j.task for j in jobs if j.task is not None]
            if tasks and is_async:
                try:
                    io.run(asyncio.wait(tasks, timeout=budget))
                except Exception:  # not inside the engine's greenlet: do not wait
                    pass
            for job in jobs:
                if job.task is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    job.done.wait(remaining)
        for job in jobs:
            self.counts["within budget" if job.done.is_set() else "over budget"] += 1

    # -- running --------------------------------------------------------------------
    def _schedule(self, record: Record, key: Any, stale: bool, attempts: int = 1) -> Job | None:
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and not current.started:
                current.stale = current.stale or stale
                return current  # it will read after this commit: one is enough
            job = self._jobs[key] = Job(record, key, stale, attempts)
        self.counts["scheduled"] += 1
        if record.binding.is_async:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._forget(job, "dropped (no event loop)")
                return None
            job.task = loop.create_task(self._run_async(job))
            self._tasks.add(job.task)
            job.task.add_done_callback(self._tasks.discard)
            return job
        self._start_workers()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._forget(job, "dropped (queue full)")
            return None
        return job

    def _forget(self, job: Job, outcome: str) -> None:
        with self._lock:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
        self.counts[outcome] += 1
        job.done.set()

    def _start_workers(self) -> None:
        if len(self._threads) >= _WORKERS:
            return
        with self._lock:
            while len(self._threads) < _WORKERS and not self._closed:
                t = threading.Thread(target=self._work, name="querycache-refresh", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._closed:
                return
            job.started = True
            engine = self._engines.get(id(job.record.binding))
            engine = engine() if engine is not None else None
            outcome = "failed"
            try:
                if engine is None or self._fresh(job.key):
                    outcome = "not needed"
                else:
                    with engine.connect() as conn:
                        conn.exec_driver_sql(*self._call(job)).close()
                    outcome = self._outcome(job)
            except Exception as exc:
                self.core.failed("refresh", exc)
            self._finish(job, outcome)

    async def _run_async(self, job: Job) -> None:
        from sqlalchemy.ext.asyncio import AsyncEngine

        job.started = True
        engine = self._engines.get(id(job.record.binding))
        engine = engine() if engine is not None else None
        outcome = "failed"
        try:
            if engine is None or self._fresh(job.key):
                outcome = "not needed"
            else:
                async_engine = AsyncEngine._retrieve_proxy_for_target(engine)
                async with async_engine.connect() as conn:
                    (await conn.exec_driver_sql(*self._call(job))).close()
                outcome = self._outcome(job)
        except Exception as exc:
            self.core.failed("refresh", exc)
        self._finish(job, outcome)

    @staticmethod
    def _call(job: Job) -> tuple[str, list[Any], dict[str, Any]]:
        record = job.record
        opts: dict[str, Any] = {
            REFRESH_OPTION: record,
            "querycache_admission": "always",  # chosen for its hits: store it
            "querycache_ttl": record.ttl,
        }
        if record.max_stale is not None and record.max_stale > 0:
            opts[MAX_STALE_OPTION] = record.max_stale
        return record.statement, [record.params], opts

    def _fresh(self, key: Any) -> bool:
        return self.core.memory.peek(key) is not None

    def _outcome(self, job: Job) -> str:
        return "done" if self._fresh(job.key) else "stored nothing (a newer write)"

    def _finish(self, job: Job, outcome: str) -> None:
        with self._lock:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
        self.counts[outcome] += 1
        job.done.set()
        if job.stale:
            if outcome in ("done", "not needed"):
                self.stale.drop(job.key)
            elif job.attempts < _ATTEMPTS and self.stale.pending(job.key) and not self._closed:
                # lost to a newer commit, which found no entry to refresh: again
                self._schedule(job.record, job.key, True, job.attempts + 1)

    def close(self) -> None:
        """Stop the workers; queued refreshes are dropped."""
        self._closed = True
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        self.stale.clear()


def refresh_figures(cache: Any) -> dict[str, Any]:
    """The report's ``refresh`` (write-through) and ``stale`` sections."""
    counts = cache.stats.refresh
    refresher = cache.refresher
    return {
        "refresh": {
            "refresh_on_write": refresher.on_write,
            "budget_ms": refresher.budget * 1000,
            "scheduled": counts["scheduled"],
            "done": counts["done"],
            "within_budget": counts["within budget"],
            "over_budget": counts["over budget"],
            "stored_nothing": counts["stored nothing (a newer write)"],
            "not_needed": counts["not needed"],
            "failed": counts["failed"],
            "dropped": counts["dropped (queue full)"] + counts["dropped (no event loop)"],
        },
        "stale": {
            "held": len(refresher.stale.held),
            **stale_figures(list(cache.stats.queries.values())),
        },
    }
