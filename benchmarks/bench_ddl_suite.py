"""A DDL-heavy, pytest-style run with and without querycache.

``python -m benchmarks.bench_ddl_suite [--tests 200] [--rounds 6] [--backends sqlite,postgresql]``

Real test suites create many engines and run ``create_all`` / ``drop_all``
around each test, with a few reads and writes in between; that is where a
cache attached to every engine (a pytest plugin, a fixture) pays for work
proportional to engines and DDL, not to queries. Each simulated test, either
on a new engine (a fresh SQLite file, or the PostgreSQL server) or on one
engine shared by the whole run (a session-scoped fixture): ``create_all`` of a
small schema with foreign keys, some inserts, reads through an ORM session and
Core (a few repeated), an update, ``drop_all``. The cached side
wraps every engine with one process-wide :class:`~querycache.QueryCache`, as a
plugin would. Sides alternate in rounds; the figure is the ratio of total
times (goal: cached <= 1.1x uncached).
``QC_NODISC=1`` turns catalog discovery off, to see what it costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, String, create_engine, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks.common import machine, say, table
from querycache import QueryCache
from querycache.testing import PostgresServer


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(80))
    pages: Mapped[int] = mapped_column(default=100)


class Review(Base):
    __tablename__ = "review"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("book.id", ondelete="CASCADE"))
    stars: Mapped[int]


def one_test(engine: Any) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        a = Author(name="ann")
        s.add(a)
        s.flush()
        s.add_all([Book(author_id=a.id, title=f"t{i}") for i in range(5)])
        s.commit()
    for _ in range(3):
        with Session(engine) as s:
            s.scalars(select(Book).where(Book.author_id == 1)).all()
            s.get(Author, 1)
            s.scalar(select(func.count()).select_from(Book))
    with engine.begin() as c:
        c.execute(update(Book).where(Book.id == 2).values(pages=200))
    with engine.connect() as c:
        c.execute(select(Book.pages).where(Book.id == 2)).all()
    Base.metadata.drop_all(engine)


def run_side(urls: list[str], cached: bool, shared: bool) -> float:
    """Run one test per URL: a new engine each (``shared``: one engine for all)."""
    cache = QueryCache(discover_views=os.environ.get("QC_NODISC") is None) if cached else None
    t0 = time.perf_counter()
    engine = None
    for url in urls:
        if engine is None:
            engine = create_engine(url)
            if cache is not None:
                cache.wrap(engine)
        one_test(engine)
        if not shared:
            engine.dispose()
            engine = None
    if engine is not None:
        engine.dispose()
    elapsed = time.perf_counter() - t0
    if cache is not None:
        cache.close()
    return elapsed


def sqlite_urls(root: Path, n: int, tag: str) -> list[str]:
    return [f"sqlite:///{root}/{tag}-{i}.db" for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=100, help="simulated tests per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args(argv)
    backends = args.backends.split(",")
    rows = []
    pg = PostgresServer().start() if "postgresql" in backends else None
    try:
        for backend, shared in [(b, sh) for b in backends for sh in (False, True)]:
            totals = {False: 0.0, True: 0.0}
            for r in range(args.rounds):
                for cached in (False, True) if r % 2 == 0 else (True, False):
                    with tempfile.TemporaryDirectory() as d:
                        if backend == "sqlite":
                            urls = sqlite_urls(Path(d), args.tests, "c" if cached else "p")
                        else:
                            assert pg is not None
                            urls = [pg.create_database(f"ddl{r}{int(cached)}")] * args.tests
                        totals[cached] += run_side(urls, cached, shared)
                say(backend, shared, "round", r + 1, {k: round(v, 2) for k, v in totals.items()})
            n = args.tests * args.rounds
            rows.append(
                [
                    backend,
                    "one engine" if shared else "engine per test",
                    n,
                    f"{totals[False] / n * 1e3:.2f} ms",
                    f"{totals[True] / n * 1e3:.2f} ms",
                    f"{totals[True] / totals[False]:.3f}x",
                ]
            )
    finally:
        if pg is not None:
            pg.stop()
    print(machine())
    headers = ["backend", "engines", "tests", "uncached/test", "cached/test", "cached/uncached"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
