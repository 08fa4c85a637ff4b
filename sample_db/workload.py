"""A seeded mix of ORM and Core reads and writes over the sample shop.

::

    wl = Workload(scale=1.0, seed=7, write_ratio=0.05)
    for op in wl.operations(1000):          # the same 1000 operations every time
        data = op.run(session)              # reads: plain comparable data
    stats = run(Session, ops=10_000, threads=4, scale=1.0, seed=7)
    stats = await run_async(AsyncSession, ops=10_000, concurrency=8, scale=1.0, seed=7)

Operation ``i`` depends only on ``(seed, write_ratio, scale, i)``: it draws
from its own ``random.Random``, keys follow a Zipf law (:mod:`sample_db.keys`).
Reads are in :mod:`sample_db.queries`, writes in :mod:`sample_db.writes`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sample_db.keys import Keys
from sample_db.queries import READS, Kind
from sample_db.requests import Body, drive, drive_async
from sample_db.spec import Sizes
from sample_db.writes import WRITES

__all__ = [
    "KINDS",
    "READ_OPERATIONS",
    "WRITE_OPERATIONS",
    "Operation",
    "Stats",
    "Workload",
    "all_reads",
    "run",
    "run_async",
]

#: names of every read kind, in a fixed order
READ_OPERATIONS: tuple[str, ...] = tuple(READS)
#: names of every write kind, in a fixed order
WRITE_OPERATIONS: tuple[str, ...] = tuple(WRITES)
#: every kind of operation by name
KINDS: dict[str, Kind] = {**READS, **WRITES}

_MAX_ERROR_SAMPLES = 10


@dataclass(frozen=True)
class Operation:
    """One operation: a kind (``name``) and the parameters drawn for it."""

    index: int
    name: str
    is_write: bool
    params: dict[str, Any] = field(hash=False)

    def body(self) -> Body:
        """A fresh generator of this operation's requests."""
        return KINDS[self.name].body(**self.params)

    def run(self, session: Any) -> Any:
        """Run on a :class:`sqlalchemy.orm.Session`; writes commit. Returns plain data."""
        return drive(self.body(), session)

    async def run_async(self, session: Any) -> Any:
        """Run on an :class:`~sqlalchemy.ext.asyncio.AsyncSession` (same data)."""
        return await drive_async(self.body(), session)


class _Picker:
    """Weighted choice among kinds by bisecting cumulative weights."""

    def __init__(self, kinds: Iterable[Kind]) -> None:
        self.kinds = list(kinds)
        self.cum = list(itertools.accumulate(k.weight for k in self.kinds))

    def pick(self, rng: random.Random) -> Kind:
        return self.kinds[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


class Workload:
    """The deterministic operation stream of a sample database of ``scale``.

    :param scale: the scale the database was built with (gives the key ranges).
    :param seed: seeds the operation stream and which keys are hot.
    :param write_ratio: the share of operations that write (0..1).
    :param zipf_s: the Zipf exponent of key popularity.
    """

    #: the name of the one genuinely heavy read (a full aggregate over order_items)
    HEAVIEST = "revenue_by_category"

    def __init__(
        self, scale: float = 1.0, seed: int = 7, write_ratio: float = 0.05, *, zipf_s: float = 1.1
    ) -> None:
        if not 0.0 <= write_ratio <= 1.0:
            raise ValueError(f"write_ratio must be within 0..1, got {write_ratio!r}")
        self.scale = scale
        self.seed = seed
        self.write_ratio = write_ratio
        self.sizes = Sizes.for_scale(scale)
        self.keys = Keys(self.sizes, seed, zipf_s)
        self._reads = _Picker(READS.values())
        self._writes = _Picker(WRITES.values())

    def operation(self, index: int) -> Operation:
        """Operation number ``index`` of the stream."""
        rng = random.Random(f"{self.seed}:{index}")
        picker = self._writes if rng.random() < self.write_ratio else self._reads
        kind = picker.pick(rng)
        return Operation(index, kind.name, kind.is_write, kind.draw(self.keys, rng))

    def operations(self, n: int, start: int = 0) -> list[Operation]:
        """Operations ``start .. start+n-1`` (the same list every time)."""
        return [self.operation(i) for i in range(start, start + n)]

    def make(self, name: str, variant: int = 0) -> Operation:
        """An operation of kind ``name`` (``variant`` picks other parameters)."""
        kind = KINDS[name]
        rng = random.Random(f"{self.seed}:{name}:{variant}")
        return Operation(-1 - variant, name, kind.is_write, kind.draw(self.keys, rng))

    def __repr__(self) -> str:
        return f"Workload(scale={self.scale}, seed={self.seed}, write_ratio={self.write_ratio})"


def all_reads(wl: Workload, per_kind: int = 1) -> list[Operation]:
    """``per_kind`` operations of every read kind (in :data:`READ_OPERATIONS` order)."""
    return [wl.make(name, v) for name in READ_OPERATIONS for v in range(per_kind)]


@dataclass
class Stats:
    """What a run did and how fast."""

    ops: int
    seconds: float
    ops_per_sec: float
    p50_ms: float
    p99_ms: float
    reads: int
    writes: int
    errors: int
    #: the first few errors, as ``"op_name: ExcType: message"``
    error_samples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.ops} ops in {self.seconds:.2f}s ({self.ops_per_sec:,.0f} ops/s), "
            f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, reads {self.reads}, "
            f"writes {self.writes}, errors {self.errors}"
        )


class _Tally:
    """Per-run accumulator shared by the workers."""

    def __init__(self, results: dict[int, Any] | None) -> None:
        self.latencies: list[float] = []
        self.reads = self.writes = self.errors = 0
        self.samples: list[str] = []
        self.results = results
        self.lock = threading.Lock()

    def record(
        self, op: Operation, seconds: float, value: Any, error: BaseException | None
    ) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if op.is_write:
                self.writes += 1
            else:
                self.reads += 1
            if error is not None:
                self.errors += 1
                if len(self.samples) < _MAX_ERROR_SAMPLES:
                    self.samples.append(f"{op.name}: {type(error).__name__}: {error}"[:500])
            elif self.results is not None and not op.is_write:
                self.results[op.index] = value

    def stats(self, seconds: float) -> Stats:
        lat = sorted(self.latencies)
        n = len(lat)
        return Stats(
            ops=n,
            seconds=seconds,
            ops_per_sec=n / seconds if seconds > 0 else 0.0,
            p50_ms=_percentile(lat, 0.50) * 1000,
            p99_ms=_percentile(lat, 0.99) * 1000,
            reads=self.reads,
            writes=self.writes,
            errors=self.errors,
            error_samples=list(self.samples),
        )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def _stream(
    workload: Workload | None, scale: float, seed: int, write_ratio: float, ops: int
) -> list[Operation]:
    wl = workload or Workload(scale=scale, seed=seed, write_ratio=write_ratio)
    return wl.operations(ops)


def run(
    session_factory: Callable[[], Any],
    ops: int = 10_000,
    threads: int = 4,
    seed: int = 7,
    write_ratio: float = 0.05,
    scale: float = 1.0,
    *,
    workload: Workload | None = None,
    results: dict[int, Any] | None = None,
) -> Stats:
    """Run ``ops`` operations on ``threads`` threads, a session per operation.

    Thread ``t`` runs operations ``t, t+threads, t+2*threads, ...`` in order.
    A failed operation is counted in ``errors`` (its session rolled back).
    ``workload`` overrides ``seed``/``write_ratio``/``scale``; ``results``, if
    given, receives every successful read's data by operation index.
    """
    stream = _stream(workload, scale, seed, write_ratio, ops)
    threads = max(1, threads)
    tally = _Tally(results)

    def worker(part: list[Operation]) -> None:
        for op in part:
            value: Any = None
            error: BaseException | None = None
            t0 = time.perf_counter()
            try:
                with session_factory() as session:
                    value = op.run(session)
            except Exception as exc:
                error = exc
            tally.record(op, time.perf_counter() - t0, value, error)

    parts = [stream[t::threads] for t in range(threads)]
    start = time.perf_counter()
    if threads == 1:
        worker(parts[0])
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="workload") as pool:
            list(pool.map(worker, parts))
    return tally.stats(time.perf_counter() - start)


async def run_async(
    async_session_factory: Callable[[], Any],
    ops: int = 10_000,
    concurrency: int = 8,
    seed: int = 7,
    write_ratio: float = 0.05,
    scale: float = 1.0,
    *,
    workload: Workload | None = None,
    results: dict[int, Any] | None = None,
) -> Stats:
    """:func:`run` for asyncio: ``concurrency`` tasks, an ``AsyncSession`` per operation."""
    stream = _stream(workload, scale, seed, write_ratio, ops)
    concurrency = max(1, concurrency)
    tally = _Tally(results)

    async def worker(part: list[Operation]) -> None:
        for op in part:
            value: Any = None
            error: BaseException | None = None
            t0 = time.perf_counter()
            try:
                async with async_session_factory() as session:
                    value = await op.run_async(session)
            except Exception as exc:
                error = exc
            tally.record(op, time.perf_counter() - t0, value, error)

    start = time.perf_counter()
    await asyncio.gather(*(worker(stream[t::concurrency]) for t in range(concurrency)))
    return tally.stats(time.perf_counter() - start)
