"""Child process of ``tests/test_precise_redis.py``: one OS process sharing a
database and a Redis namespace with others.

Protocol as in ``tests/redis_worker.py``: the child prints ``{"event":
"ready"}`` once its engine and cache are up, waits for ``go`` on stdin, and
prints ``{"event": "done", ...}``.

Modes (``config["mode"]``):

``write``
    Runs ``config["statements"]`` (``[sql, params]`` pairs) in one
    transaction through the cache, then waits for its Redis stores.
``writer``
    Random writes of every kind for ``duration`` seconds, each in its own
    transaction (some roll back); after every commit a plain engine reads the
    whole table. Returns per commit ``(t_begin, t_committed, snapshot)``.
``reader``
    Random reads (``=``, ``IN``, ranges, a status key, a narrower column set,
    an aggregate) through the cache for ``duration`` seconds; returns
    ``(start, end, query, params, rows)`` of each and how many reads the
    database saw (SQLite trace callback, this process's connections only).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from dbcount import SqliteTrace

from querycache import QueryCache

TABLE = "xp_orders"
COLUMNS = "id, customer_id, total, status"
CUSTOMERS = 8
STATUSES = ("new", "paid", "sent")
QUERIES = {
    "eq": f"SELECT id AS q_eq, customer_id, total, status FROM {TABLE} "
    "WHERE customer_id = :c ORDER BY id",
    "in": f"SELECT id AS q_in, customer_id, total, status FROM {TABLE} "
    "WHERE customer_id IN (:a, :b) ORDER BY id",
    "range": f"SELECT id AS q_range, customer_id, total, status FROM {TABLE} "
    "WHERE total >= :lo AND total < :hi ORDER BY id",
    "status": f"SELECT id AS q_status, customer_id, total, status FROM {TABLE} "
    "WHERE status = :s ORDER BY id",
    "narrow": f"SELECT id AS q_narrow, total FROM {TABLE} WHERE customer_id = :c ORDER BY id",
    "all": f"SELECT count(*) AS q_all, coalesce(sum(total), 0) FROM {TABLE}",
}


def create(url: str, rows: int = 40) -> None:
    """The table, ``rows`` orders spread over the customers."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            conn.exec_driver_sql(
                f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, "
                "total INTEGER NOT NULL, status VARCHAR(10) NOT NULL)"
            )
            conn.execute(
                sa.text(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, :c, :t, :s)"),
                [
                    {"i": i, "c": i % CUSTOMERS + 1, "t": (i * 37) % 100, "s": STATUSES[i % 3]}
                    for i in range(1, rows + 1)
                ],
            )
    finally:
        engine.dispose()


def snapshot(conn: Any) -> list[list[Any]]:
    rows = conn.exec_driver_sql(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY id").all()
    return [list(r) for r in rows]


def expected(query: str, params: dict[str, Any], rows: list[list[Any]]) -> list[list[Any]]:
    """What ``QUERIES[query]`` returns on a table holding ``rows`` (by id)."""
    if query == "all":
        return [[len(rows), sum(r[2] for r in rows)]]
    if query == "eq":
        return [r for r in rows if r[1] == params["c"]]
    if query == "in":
        return [r for r in rows if r[1] in (params["a"], params["b"])]
    if query == "range":
        return [r for r in rows if params["lo"] <= r[2] < params["hi"]]
    if query == "status":
        return [r for r in rows if r[3] == params["s"]]
    return [[r[0], r[2]] for r in rows if r[1] == params["c"]]


def random_read(rng: random.Random) -> tuple[str, dict[str, Any]]:
    query = rng.choice(("eq", "eq", "in", "range", "status", "narrow", "all"))
    c = rng.randint(1, CUSTOMERS)
    if query in ("eq", "narrow"):
        return query, {"c": c}
    if query == "in":
        return query, {"a": c, "b": rng.randint(1, CUSTOMERS)}
    if query == "range":
        lo = rng.randrange(0, 100, 10)
        return query, {"lo": lo, "hi": lo + rng.choice((10, 30))}
    if query == "status":
        return query, {"s": rng.choice(STATUSES)}
    return query, {}


def random_write(rng: random.Random, conn: Any, next_id: list[int]) -> None:
    """One write of a random kind (several for a few)."""
    t = sa.text
    ids = [r[0] for r in conn.exec_driver_sql(f"SELECT id FROM {TABLE}").all()] or [1]
    kind = rng.randrange(10)
    one = rng.choice(ids)
    c, total, status = rng.randint(1, CUSTOMERS), rng.randrange(100), rng.choice(STATUSES)
    if kind == 0:
        next_id[0] += 1
        conn.execute(
            t(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, :c, :t, :s)"),
            {"i": next_id[0], "c": c, "t": total, "s": status},
        )
    elif kind == 1:  # executemany
        rows = []
        for _ in range(2):
            next_id[0] += 1
            rows.append({"i": next_id[0], "c": rng.randint(1, CUSTOMERS), "t": total, "s": status})
        conn.execute(t(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, :c, :t, :s)"), rows)
    elif kind == 2:
        conn.execute(t(f"UPDATE {TABLE} SET total = :t WHERE id = :i"), {"t": total, "i": one})
    elif kind == 3:
        conn.execute(t(f"UPDATE {TABLE} SET status = :s WHERE id = :i"), {"s": status, "i": one})
    elif kind == 4:  # a row moves to another customer
        conn.execute(t(f"UPDATE {TABLE} SET customer_id = :c WHERE id = :i"), {"c": c, "i": one})
    elif kind == 5:  # SET to an expression
        conn.execute(t(f"UPDATE {TABLE} SET total = total + 1 WHERE customer_id = :c"), {"c": c})
    elif kind == 6:
        conn.execute(t(f"DELETE FROM {TABLE} WHERE id = :i"), {"i": rng.choice(ids)})
    elif kind == 7:  # the analysis cannot pin these rows: unknown
        conn.execute(
            t(
                f"UPDATE {TABLE} SET total = 99 - total "
                f"WHERE id IN (SELECT id FROM {TABLE} WHERE total > :x)"
            ),
            {"x": rng.randrange(90, 100)},
        )
    elif kind == 8:  # by customer and status, both keys change
        conn.execute(
            t(f"UPDATE {TABLE} SET status = :s, customer_id = :c2 WHERE customer_id = :c"),
            {"s": status, "c2": rng.randint(1, CUSTOMERS), "c": c},
        )
    else:  # two writes in one transaction
        next_id[0] += 1
        conn.execute(
            t(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, :c, :t, :s)"),
            {"i": next_id[0], "c": c, "t": total, "s": status},
        )
        conn.execute(t(f"UPDATE {TABLE} SET status = :s WHERE id = :i"), {"s": status, "i": one})


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _await_go() -> None:
    _emit({"event": "ready"})
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def _write(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    _await_go()
    with engine.begin() as conn:
        for sql, params in cfg["statements"]:
            conn.execute(sa.text(sql), params)
    cache.redis.flush()
    return {}


def _writer(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    plain = sa.create_engine(cfg["db_url"])
    with plain.connect() as conn:
        next_id = [max(r[0] for r in snapshot(conn)) + 1000]
        first = snapshot(conn)
    _await_go()
    commits: list[tuple[float, float, list[list[Any]]]] = []
    rollbacks = 0
    until = time.monotonic() + float(cfg["duration"])
    while time.monotonic() < until:
        t0 = time.monotonic()
        if rng.random() < 0.1:  # a transaction that rolls back changes nothing
            with engine.connect() as conn:
                random_write(rng, conn, next_id)
                conn.rollback()
            rollbacks += 1
            continue
        with engine.begin() as conn:
            random_write(rng, conn, next_id)
        t1 = time.monotonic()
        with plain.connect() as conn:
            commits.append((t0, t1, snapshot(conn)))
        time.sleep(float(cfg.get("pace", 0.0)))  # pacing, not synchronisation
    plain.dispose()
    cache.redis.flush()
    return {"first": first, "commits": commits, "rollbacks": rollbacks}


def _reader(cfg: dict[str, Any], engine: sa.Engine, cache: QueryCache) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    with engine.connect() as conn:  # warm the pool and Redis
        conn.execute(sa.text(QUERIES["all"])).all()
    _await_go()
    reads = []
    until = time.monotonic() + float(cfg["duration"])
    while True:
        query, params = random_read(rng)
        t0 = time.monotonic()
        if t0 > until:
            break
        with engine.connect() as conn:
            rows = [list(r) for r in conn.execute(sa.text(QUERIES[query]), params).all()]
        reads.append((t0, time.monotonic(), query, params, rows))
    cache.redis.flush()
    db = sum(TRACE.count(f"q_{q}") for q in QUERIES) if TRACE is not None else None
    return {"reads": reads, "db_reads": db}


TRACE: SqliteTrace | None = None
MODES = {"write": _write, "writer": _writer, "reader": _reader}


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    global TRACE
    engine = sa.create_engine(cfg["db_url"])
    if engine.dialect.name == "sqlite":  # before wrap(), which may connect at once
        TRACE = SqliteTrace(engine)
    cache = QueryCache(
        redis_url=cfg["redis_url"],
        namespace=cfg["namespace"],
        invalidation=cfg.get("invalidation", "precise"),
        publish_stats=None,
        redis_timeout=0.5,  # as the test's caches (the lease assumes no shorter)
    )
    if not cache.bus.connected.wait(10):  # type: ignore[union-attr]
        raise SystemExit("the invalidation bus did not connect")
    cache.wrap(engine)
    try:
        result = MODES[cfg["mode"]](cfg, engine, cache)
        d = cache.report().as_dict()
        result["errors"] = d["errors"]
        _emit({"event": "done", **result})
    finally:
        cache.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
