"""The stats overhead on the L1 hit path.

``python -m benchmarks.bench_stats [--quick]``

The hit path's only stats work is ``next(entry.stats.memory_hit)`` (an
``itertools.count``: lossless under threads). This measures, best of 5:

* the cost of an L1 hit end to end (a Core ``select()`` and a ``text()``
  statement on one connection, and an ORM ``select(Model)`` on a new session,
  SQLite file, entry in memory);
* the cost of the counter statement itself, on a real entry, against the same
  attribute loads without it (and against the ``+= 1`` on a plain int it
  replaced);

and prints the counter's share of each hit (the budget is 3%).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit

from sqlalchemy import Column, Integer, String, create_engine, select, text
from sqlalchemy.orm import declarative_base

from querycache import QueryCache

Base = declarative_base()


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String)


def best_us(fn, n: int, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def best_ns(stmt: str, env: dict[str, object], n: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=n, repeat=5)) / n * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    args = ap.parse_args(argv)
    n = 300 if args.quick else 5000
    micro = 200_000 if args.quick else 5_000_000

    d = tempfile.mkdtemp()
    engine = create_engine(f"sqlite:///{d}/stats.db")
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(text("INSERT INTO item VALUES (1, 'a')"))
    cache = QueryCache()
    cache.wrap(engine)
    maker = cache.sessionmaker(bind=engine)
    core = select(Item.id, Item.name).where(Item.id == 1)
    raw = text("SELECT id, name FROM item WHERE id = :i")
    orm = select(Item).where(Item.id == 1)

    conn = engine.connect()

    def core_hit() -> None:
        conn.execute(core).all()

    def text_hit() -> None:
        conn.execute(raw, {"i": 1}).all()

    def orm_hit() -> None:
        with maker() as s:
            s.execute(orm).scalars().all()

    hits = {}
    for name, fn in (("Core select()", core_hit), ("text()", text_hit), ("ORM select()", orm_hit)):
        for _ in range(50):
            fn()  # the miss, then warm hits
        hits[name] = best_us(fn, n)
    conn.close()

    entry = next(iter(cache.memory._data.values()))
    env = {"entry": entry, "old": type("Old", (), {"__slots__": ("memory_hits",)})()}
    env["old"].memory_hits = 0  # type: ignore[attr-defined]
    with_counter = best_ns("next(entry.stats.memory_hit)", env, micro)
    loads_only = best_ns("entry.stats.memory_hit", env, micro)
    old_plus = best_ns("old.memory_hits += 1", env, micro)
    cost = max(0.0, with_counter - loads_only)

    print(f"counter statement: {with_counter:.1f} ns; the attribute loads alone: "
          f"{loads_only:.1f} ns; the counter's own cost: {cost:.1f} ns "
          f"(a plain int += 1 it replaced: {old_plus:.1f} ns)")  # fmt: skip
    print(f"{'L1 hit':<16} {'µs/hit':>8} {'counter share':>14}")
    worst = 0.0
    for name, us in hits.items():
        share = with_counter / (us * 1000)
        worst = max(worst, share)
        print(f"{name:<16} {us:>8.2f} {share:>13.2%}")
    print(f"worst share {worst:.2%} of a hit (budget 3%; the whole statement is counted)")
    cache.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
