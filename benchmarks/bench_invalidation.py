"""What row-precise invalidation costs: per commit, per miss, per hit.

``python -m benchmarks.bench_invalidation [--entries N] [--quick]``

* **commit**: the memory tier holds ``N`` entries of ``SELECT ... WHERE id = ?``
  (one per id). A commit whose image pins one id, and one whose image is
  unknown (it drops all ``N``), are timed as ``QueryCache.invalidate_scope``
  (what ``do_commit`` runs after the database committed), precise and
  table-level. The goal: at most 1 ms added at 200,000 dependent entries,
  whatever the number dropped.
* **guard bindings**: ``B`` executions of ``... WHERE status != ? AND
  customer_id = ?``, each with its own ``status`` (a group of cells per
  binding), all stored and then dropped by a write; then the mean cost of
  the commits that follow (each writes a row of another customer). Idle
  groups are forgotten, so it does not grow with ``B``.
* **miss**: capturing the cells of one execution (the footprint work a miss
  adds once the SQL string was seen). Goal: < 2 µs.
* **hit**: ``MemoryTier.get`` of an entry holding its cells, against the same
  lookup with the cell check removed (the cost the hit path gained).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from querycache import QueryCache
from querycache.invalidation.images import Image
from querycache.tiers.base import Entry

SQL = "SELECT t.id, t.name FROM t WHERE t.id = ?"
SCOPE = "sqlite:/bench"
_perf = time.perf_counter


def _fill(cache: QueryCache, n: int) -> None:
    plan = cache.plan(SQL, "sqlite")
    footprint = plan.footprint
    for i in range(n):
        cells = cache.cells.capture(SCOPE, plan.tables, footprint, (i,), plan.stats)
        entry = Entry((("id",), ("name",)), [(i, "x")], 1, 100)
        cache.memory.put((1, SQL, (i,)), entry, SCOPE, plan.tables, cells, 300.0)


def commit_ms(invalidation: str, n: int, image: Image | None) -> float:
    cache = QueryCache(invalidation=invalidation, memory_bytes=2**31, discover_views=False)
    _fill(cache, n)
    images = {"t": image} if image is not None else None
    gc.collect()
    gc.disable()  # a collection of the 200k entries' objects is not the commit's cost
    try:
        t0 = _perf()
        cache.invalidate_scope(SCOPE, frozenset({"t"}), False, images)
        ms = (_perf() - t0) * 1000
    finally:
        gc.enable()
    cache.close()
    return ms


GUARDED = "SELECT o.id, o.total FROM o WHERE o.status != ? AND o.customer_id = ?"


def guarded_commit_us(bindings: int, writes: int = 2000) -> float:
    cache = QueryCache(memory_bytes=2**31, discover_views=False)
    plan = cache.plan(GUARDED, "sqlite")
    for i in range(bindings):
        params = (f"s{i}", 1)
        cells = cache.cells.capture(SCOPE, plan.tables, plan.footprint, params, plan.stats)
        entry = Entry((("id",), ("total",)), [(i, 1)], 1, 100)
        cache.memory.put((1, GUARDED, params), entry, SCOPE, plan.tables, cells, 300.0)
    tables = frozenset({"o"})
    cache.invalidate_scope(SCOPE, tables, False, None)  # drops every entry
    image = Image({"customer_id": [2], "status": ["new"]}, None)
    t0 = _perf()
    for _ in range(writes):
        cache.invalidate_scope(SCOPE, tables, False, {"o": image})
    us = (_perf() - t0) / writes * 1e6
    cache.close()
    return us


def capture_us(rounds: int) -> float:
    cache = QueryCache(discover_views=False)
    plan = cache.plan(SQL, "sqlite")
    best = []
    for _ in range(5):
        t0 = _perf()
        for i in range(rounds):
            cache.cells.capture(SCOPE, plan.tables, plan.footprint, (i % 1000,), plan.stats)
        best.append((_perf() - t0) / rounds * 1e6)
    return min(best)


def hit_ns(rounds: int) -> tuple[float, float]:
    cache = QueryCache(discover_views=False)
    _fill(cache, 1000)
    memory = cache.memory
    keys = [(1, SQL, (i,)) for i in range(1000)]
    get = memory.get

    def timed() -> float:
        t0 = _perf()
        for _ in range(rounds // 1000):
            for k in keys:
                get(k)
        return (_perf() - t0) / rounds * 1e9

    with_cells = statistics.median(timed() for _ in range(5))
    saved = {k: memory._data[k].cells for k in keys}
    for k in keys:
        memory._data[k].cells = ()
    without = statistics.median(timed() for _ in range(5))
    for k in keys:
        memory._data[k].cells = saved[k]
    return with_cells, without


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.entries
    one = Image({"id": [7], "name": ["y"]}, frozenset({"name"}))
    print(f"commit cost with {n:,} dependent entries (invalidate_scope, ms)")
    print(f"  {'invalidation':<12} {'drops one':>10} {'drops all':>10}")
    for mode in ("precise", "table"):
        a = commit_ms(mode, n, one)
        b = commit_ms(mode, n, None)
        print(f"  {mode:<12} {a:>10.3f} {b:>10.3f}")
    print("commit cost after B guard bindings were read and dropped (µs per commit)")
    for b in (1, 64, 1000):
        print(f"  B={b:<5} {guarded_commit_us(b):8.1f}")
    rounds = 20_000 if args.quick else 200_000
    print(f"miss: cell capture of one execution: {capture_us(rounds):.2f} µs")
    w, wo = hit_ns(rounds)
    print(f"hit: MemoryTier.get {w:.0f} ns with the cell check, {wo:.0f} ns without")


if __name__ == "__main__":
    main()
