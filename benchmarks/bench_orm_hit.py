"""ORM hit cost, for an A/B between two checkouts of querycache.

``python benchmarks/bench_orm_hit.py`` — a ``select(Model)`` hit with a new
session per operation on a SQLite file, best of 5 runs of 3,000. To compare
with another commit: ``git worktree add /tmp/base <commit>`` and run
``(cd /tmp/base && PYTHONPATH=/tmp/base python /path/to/this/file)``.
``--profile`` adds a cProfile of one run.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time

from sqlalchemy import Column, Integer, String, create_engine, select, text
from sqlalchemy.orm import declarative_base

from querycache import QueryCache

Base = declarative_base()


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String)


def main() -> None:
    d = tempfile.mkdtemp()
    engine = create_engine(f"sqlite:///{d}/hit.db")
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(text("INSERT INTO item VALUES (1, 'a')"))
    cache = QueryCache()
    cache.wrap(engine)
    maker = cache.sessionmaker(bind=engine)
    stmt = select(Item).where(Item.id == 1)

    def once() -> None:
        with maker() as s:
            s.execute(stmt).scalars().all()

    for _ in range(50):
        once()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(3000):
            once()
        best = min(best, (time.perf_counter() - t0) / 3000 * 1e6)
    print(f"ORM select() hit, new session per operation: {best:.1f} µs (best of 5 x 3000)")
    if "--profile" in sys.argv:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(3000):
            once()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
