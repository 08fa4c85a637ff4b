"""What a miss costs over no cache: point queries and 500-row ORM results.

``python -m benchmarks.bench_miss [--ops 2000] [--backends sqlite,postgresql] [--profile]``

Each side has its own engine on the same database (its own PostgreSQL
server, or a SQLite file); the cached engine is wrapped by a memory-only
:class:`~querycache.QueryCache` with ``admission="always"`` (every miss
stores). Every operation asks for keys nobody asked before, so every cached
execution is a real miss that stores its result; the uncached side runs the
same statements on the same keys. Sides alternate per operation in ABBA order
and each operation is timed alone; the table shows medians and the overhead.

* point: Core ``select(item).where(item.c.id == :id)``, one row;
* orm 500: ``session.scalars(select(Item).where(Item.id > :lo).order_by(Item.id)
  .limit(500)).all()``, a new session per operation (the ORM builds 500
  objects; the cache also copies, sizes and stores them).

Goal (issue 11): both at most +10%.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, String, bindparam, create_engine, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks.common import machine, say, table
from querycache import QueryCache
from querycache.testing import PostgresServer

ROWS = 200_000


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    price: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer)


def load(url: str) -> None:
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        for lo in range(0, ROWS, 10_000):
            c.execute(
                insert(Item),
                [
                    {"id": i, "name": f"item {i}", "price": i % 997, "stock": i % 13}
                    for i in range(lo + 1, lo + 10_001)
                ],
            )
    engine.dispose()


def cases(engine: Any) -> dict[str, Callable[[int], Any]]:
    point = select(Item.__table__).where(Item.__table__.c.id == bindparam("id"))
    page = select(Item).where(Item.id > bindparam("lo")).order_by(Item.id).limit(500)
    conn = engine.connect()

    def point_query(k: int) -> Any:
        return conn.execute(point, {"id": k}).all()

    def orm_500(k: int) -> Any:
        with Session(engine) as s:
            return s.scalars(page, {"lo": k}).all()

    return {"point": point_query, "orm 500": orm_500}


def measure(url: str, ops: int, profile: bool) -> list[list[str]]:
    plain = create_engine(url)
    cached = create_engine(url)
    cache = QueryCache(admission="always", memory_bytes=2**31)
    cache.wrap(cached)
    sides = {"uncached": cases(plain), "cached": cases(cached)}
    rows = []
    for name in ("point", "orm 500"):
        # every key once: pages of 500 start one id apart (distinct keys, full pages)
        keys = iter(range(1001, ROWS - 600))
        # warm both: the statement compiled, pages read
        for side in sides.values():
            for k in range(1, 200):
                side[name](k)
        lat: dict[str, list[float]] = {"uncached": [], "cached": []}
        order = ("uncached", "cached", "cached", "uncached")
        prof = cProfile.Profile() if profile else None
        for _ in range(ops // 2):
            k = next(keys)
            for who in order[:2] if _ % 2 == 0 else order[2:]:
                fn = sides[who][name]
                if prof is not None and who == "cached":
                    prof.enable()
                t0 = time.perf_counter()
                fn(k)
                lat[who].append(time.perf_counter() - t0)
                if prof is not None and who == "cached":
                    prof.disable()
        u, c = statistics.median(lat["uncached"]), statistics.median(lat["cached"])
        rows.append([name, f"{u * 1e6:.0f} µs", f"{c * 1e6:.0f} µs", f"{(c / u - 1) * 100:+.1f}%"])
        say(name, rows[-1])
        if prof is not None:
            pstats.Stats(prof).sort_stats("cumtime").print_stats("querycache", 30)
    report = cache.report().as_dict()
    say("stores", sum(q.get("stores", 0) for q in report.get("queries", [])))
    cache.close()
    plain.dispose()
    cached.dispose()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--profile", action="store_true", help="cProfile the cached side")
    args = ap.parse_args(argv)
    out = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as d:
                url = f"sqlite:///{d}/miss.db"
                load(url)
                out += [[backend, *r] for r in measure(url, args.ops, args.profile)]
        else:
            with PostgresServer() as pg:
                url = pg.create_database("miss")
                load(url)
                out += [[backend, *r] for r in measure(url, args.ops, args.profile)]
    print(machine())
    print(table(["backend", "case", "uncached", "cached (miss)", "overhead"], out))


if __name__ == "__main__":
    main()
