"""Row precision in the shared tier: what survives another cache's writes, and what it costs.

Run: ``.venv/bin/python -m benchmarks.bench_precise_redis [--quick]``

Starts its own Redis; a SQLite file holds ``orders(id, customer_id, total,
status)`` with 5 orders for each of 500 customers. For each mode
(``invalidation="precise"`` and ``"table"``), in alternating rounds:

* **survival**: a reader cache stores ``SELECT ... WHERE customer_id = ?`` of
  every customer in Redis; a writer cache (another ``QueryCache``, same
  namespace) commits 20 single-row updates of random customers; a third cache
  with an empty memory tier reads every customer again. The share of them the
  database did *not* run (SQLite trace callback) is the share of Redis entries
  that survived.
* **L2 hit**: one read served from Redis (the memory tier emptied before each),
  median µs: the precise mode's ``MGET`` carries the column wildcard and the
  value's cell token besides the table token.
* **commit**: ``UPDATE orders SET total = ? WHERE id = ?`` through the cached
  engine, median µs: a Lua script reading the member set against a
  ``MULTI`` of ``SET``s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.common import say, table
from querycache import QueryCache
from querycache.testing import RedisServer

CUSTOMERS = 500
PER_CUSTOMER = 5
READ = sa.text("SELECT id, total, status FROM orders WHERE customer_id = :c ORDER BY id")
WRITE = sa.text("UPDATE orders SET total = :t WHERE id = :i")


def _db(path: Path) -> str:
    url = f"sqlite:///{path}"
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, "
            "total INTEGER NOT NULL, status TEXT NOT NULL)"
        )
        conn.execute(
            sa.text("INSERT INTO orders VALUES (:i, :c, 1, 'new')"),
            [{"i": i, "c": i % CUSTOMERS} for i in range(CUSTOMERS * PER_CUSTOMER)],
        )
    eng.dispose()
    return url


class Side:
    """One cache and engine, with a count of the reads SQLite ran."""

    def __init__(self, url: str, redis_url: str, ns: str, mode: str) -> None:
        self.engine = sa.create_engine(url)
        self.ran = 0
        sa.event.listen(self.engine, "connect", self._trace)
        self.cache = QueryCache(
            redis_url=redis_url,
            namespace=ns,
            invalidation=mode,
            publish_stats=None,
            redis_timeout=0.5,  # a late PONG on a busy machine would skip Redis lookups
        )
        if not self.cache.bus.connected.wait(10):  # type: ignore[union-attr]
            raise RuntimeError("invalidation channel did not come up")
        self.cache.wrap(self.engine)

    def _trace(self, dbapi: Any, _record: Any) -> None:
        def count(sql: str) -> None:
            if "WHERE customer_id" in sql:
                self.ran += 1

        dbapi.set_trace_callback(count)

    def read(self, c: int) -> None:
        with self.engine.connect() as conn:
            conn.execute(READ, {"c": c}).all()

    def close(self) -> None:
        self.cache.close()
        self.engine.dispose()


def _round(url: str, redis_url: str, mode: str, rng: random.Random, hits: int) -> dict[str, float]:
    ns = "bpr" + uuid.uuid4().hex[:8]
    reader, writer = Side(url, redis_url, ns, mode), Side(url, redis_url, ns, mode)
    try:
        for c in range(CUSTOMERS):
            reader.read(c)
        reader.cache.redis.flush()  # type: ignore[union-attr]
        commits = []
        for _ in range(20):
            t0 = time.perf_counter()
            with writer.engine.begin() as conn:
                conn.execute(WRITE, {"t": rng.randrange(100), "i": rng.randrange(2500)})
            commits.append(time.perf_counter() - t0)
        fresh = Side(url, redis_url, ns, mode)
        try:
            for c in range(CUSTOMERS):
                fresh.read(c)
            survived = 1 - fresh.ran / CUSTOMERS
            fresh.cache.redis.flush()  # type: ignore[union-attr]
            lat = []
            for _ in range(hits):
                c = rng.randrange(CUSTOMERS)
                fresh.cache.memory.clear()
                t0 = time.perf_counter()
                fresh.read(c)
                lat.append(time.perf_counter() - t0)
        finally:
            fresh.close()
        return {
            "survived": survived,
            "hit_us": statistics.median(lat) * 1e6,
            "commit_us": statistics.median(commits) * 1e6,
        }
    finally:
        reader.close()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, hits = (1, 200) if args.quick else (5, 2000)
    rng = random.Random(11)
    out: dict[str, list[dict[str, float]]] = {"precise": [], "table": []}
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        url = _db(Path(tmp) / "orders.sqlite")
        for r in range(rounds):
            for mode in ("precise", "table") if r % 2 == 0 else ("table", "precise"):
                say(f"round {r + 1}/{rounds}: {mode}")
                out[mode].append(_round(url, redis.url, mode, rng, hits))
    rows = []
    for mode, results in out.items():
        rows.append(
            [
                mode,
                f"{100 * statistics.median(x['survived'] for x in results):.1f}%",
                f"{statistics.median(x['hit_us'] for x in results):.0f}",
                f"{statistics.median(x['commit_us'] for x in results):.0f}",
            ]
        )
    print(
        table(
            ["invalidation", "Redis entries kept after 20 writes", "L2 hit µs", "commit µs"], rows
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
