"""Memory-tier hits and misses against the same database uncached (issue 4 targets).

Run: ``.venv/bin/python -m benchmarks.bench_core [--quick]``

Starts its own PostgreSQL, loads the sample shop (scale 1) into it and into a
SQLite file, and times, per backend, an *uncached* engine (plain
``create_engine``) next to a *cached* one (another engine on the same
database, wrapped by a memory-only ``QueryCache``). Sides alternate in rounds
(the order rotating), every operation is timed alone, the table shows medians.
Before measuring, the cached side is warmed so that every measured operation
is a hit; afterwards ``cache.report()`` must show exactly that (the run fails
otherwise), and each case's result is compared with the uncached one once.

* Core point query: a prebuilt ``select(customers).where(id == :cid)`` run with
  ``conn.execute(stmt, {"cid": k}).all()`` on one open connection per side.
* ORM point query: ``session.execute(select(Customer).where(Customer.id == k))
  .scalar_one()`` and ``session.get(Customer, k)``, a new session per operation
  (``cache.sessionmaker`` / ``sqlalchemy.orm.sessionmaker``).
* ORM ``selectinload``: a customer with its orders and their items (3 SELECTs),
  for every 100th customer (typical ones, about 10 orders; not the Zipf head).
* The workload's heaviest aggregate (``Workload.HEAVIEST``), run as the
  workload runs it, a new session per operation.
* Miss overhead (PostgreSQL): after the SQL string was executed once, the
  cached side runs the Core point query on ids it has never seen (every
  execution a real miss that stores its result), the uncached side the same
  ids; per-operation alternation in ABBA order; the table heap and index were
  read beforehand so neither side pays for cold pages.
* asyncpg and aiosqlite rows (Core point and ORM point hits), for information.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload, sessionmaker

from benchmarks.common import (
    WORKLOAD_SEED,
    Env,
    Lat,
    ainterleave,
    check_delta,
    interleave,
    machine,
    run_async,
    say,
    table,
    totals,
    us,
    verdict,
)
from querycache import QueryCache
from sample_db.models import Customer, Order
from sample_db.normalize import obj_row
from sample_db.workload import Workload

CUSTOMERS = Customer.__table__
POINT = select(CUSTOMERS).where(CUSTOMERS.c.id == bindparam("cid"))

#: (case, backend) -> required speed-up of a hit (uncached median / cached median)
TARGETS = {
    ("Core point query", "postgresql"): 8.0,
    ("Core point query", "sqlite"): 1.5,
    ("ORM select(Customer)", "postgresql"): 4.0,
    ("ORM select(Customer)", "sqlite"): 2.0,
    ("ORM session.get", "postgresql"): 4.0,
    ("ORM session.get", "sqlite"): 2.0,
    ("heaviest aggregate", "postgresql"): 1000.0,
    ("heaviest aggregate", "sqlite"): 1000.0,
}
MISS_OVERHEAD_TARGET = 0.10


class Sizes:
    def __init__(self, quick: bool) -> None:
        f = 5 if quick else 1
        self.point = (20 // f or 1, 200)  # rounds, ops per round per side
        self.orm = (20 // f or 1, 100)
        self.selectin = (10 // f or 1, 60)
        # 20 hits in a row per round, as for the other cases (a hit right after
        # a 50 ms uncached aggregate runs on cold CPU caches: ~70 µs, not ~40)
        self.heavy = (2, 5) if quick else (6, 20)
        self.miss = 1000 if quick else 6000
        self.async_ = (10 // f or 1, 100)


def _ratio(un: Lat, ca: Lat) -> float:
    return un.median / ca.median


def row_for(
    backend: str, case: str, res: dict[str, Lat], hits_per_op: float, note: str = ""
) -> list[Any]:
    un, ca = res["uncached"], res["cached"]
    ratio = _ratio(un, ca)
    target = TARGETS.get((case, backend))
    return [
        backend,
        case,
        us(un.median),
        us(ca.median),
        f"{ratio:,.1f}x",
        f">= {target:g}x" if target else "-",
        verdict(ratio >= target) if target else "info",
        f"{hits_per_op:g}",
        note,
    ]


HEADERS = [
    "backend",
    "case",
    "uncached p50",
    "cached p50",
    "speed-up",
    "target",
    "result",
    "hits/op",
    "",
]


def _hits_case(
    label: str,
    cache: QueryCache,
    sides: dict[str, Callable[[Any], Any]],
    keys: list[Any],
    rounds: int,
    per_round: int,
    hits_per_op: int | None,
) -> tuple[dict[str, Lat], float]:
    """Warm, check equality, time, and prove every measured cached op was a hit."""
    for k in keys:  # warm: every key stored (twice, so the connection aliases exist)
        sides["cached"](k)
        sides["cached"](k)
    for k in keys[:3]:
        a, b = sides["uncached"](k), sides["cached"](k)
        if a != b:
            raise AssertionError(f"{label}: cached result differs for {k!r}:\n{a!r}\n{b!r}")
    before = totals(cache)
    res = interleave(
        {"uncached": sides["uncached"], "cached": sides["cached"]}, keys, rounds, per_round
    )
    ops = rounds * per_round
    want: dict[str, int] = {"misses": 0, "bypasses": 0}
    if hits_per_op is not None:
        want["hits"] = ops * hits_per_op
    delta = check_delta(label, before, totals(cache), **want)
    if delta["hits"] < ops:
        raise AssertionError(f"{label}: only {delta['hits']} hits for {ops} operations")
    return res, delta["hits"] / ops


def sync_backend(backend: str, url: str, sz: Sizes, out: list[list[Any]]) -> None:
    say(f"[{backend}] sync cases")
    plain = create_engine(url)
    cache = QueryCache(namespace=f"bench-core-{backend}")
    cached = cache.wrap(create_engine(url))
    plain_s = sessionmaker(bind=plain)
    cached_s = cache.sessionmaker(bind=cached)
    uconn, cconn = plain.connect(), cached.connect()
    try:
        ids = list(range(1, 201))

        # Core point query on one open connection
        def core(conn: Any) -> Callable[[int], Any]:
            return lambda k: conn.execute(POINT, {"cid": k}).all()

        res, hpo = _hits_case(
            f"{backend} core point",
            cache,
            {"uncached": core(uconn), "cached": core(cconn)},
            ids,
            *sz.point,
            hits_per_op=1,
        )
        out.append(row_for(backend, "Core point query", res, hpo, "one open connection"))

        # ORM select(Customer), new session per op
        def orm_select(maker: Any) -> Callable[[int], Any]:
            def op(k: int) -> Any:
                with maker() as s:
                    c = s.execute(select(Customer).where(Customer.id == k)).scalar_one()
                    return obj_row(c)

            return op

        res, hpo = _hits_case(
            f"{backend} orm select",
            cache,
            {"uncached": orm_select(plain_s), "cached": orm_select(cached_s)},
            ids,
            *sz.orm,
            hits_per_op=1,
        )
        out.append(row_for(backend, "ORM select(Customer)", res, hpo, "new session per op"))

        def orm_get(maker: Any) -> Callable[[int], Any]:
            def op(k: int) -> Any:
                with maker() as s:
                    return obj_row(s.get(Customer, k))

            return op

        res, hpo = _hits_case(
            f"{backend} orm get",
            cache,
            {"uncached": orm_get(plain_s), "cached": orm_get(cached_s)},
            ids,
            *sz.orm,
            hits_per_op=1,
        )
        out.append(row_for(backend, "ORM session.get", res, hpo, "new session per op"))

        # selectinload: customer -> orders -> items
        def orm_selectin(maker: Any) -> Callable[[int], Any]:
            def op(k: int) -> Any:
                stmt = (
                    select(Customer)
                    .where(Customer.id == k)
                    .options(selectinload(Customer.orders).selectinload(Order.items))
                )
                with maker() as s:
                    c = s.execute(stmt).scalar_one()
                    return obj_row(
                        c,
                        tuple(obj_row(o, tuple(obj_row(i) for i in o.items)) for o in c.orders),
                    )

            return op

        with plain.connect() as conn:
            buyers = (
                # every 100th buyer: typical customers (about 10 orders of 3 items);
                # the Zipf head (customer 1 has 441 orders) is all object building
                conn.execute(
                    text(
                        "SELECT customer_id FROM (SELECT DISTINCT customer_id FROM orders) AS b"
                        " WHERE customer_id % 100 = 7 ORDER BY customer_id"
                    )
                )
                .scalars()
                .all()
            )
        res, hpo = _hits_case(
            f"{backend} selectinload",
            cache,
            {"uncached": orm_selectin(plain_s), "cached": orm_selectin(cached_s)},
            list(buyers),
            *sz.selectin,
            hits_per_op=3,
        )
        out.append(
            row_for(backend, "ORM selectinload", res, hpo, "customer+orders+items, 3 SELECTs")
        )

        # the workload's heaviest aggregate: the query (its statement built once, a
        # new session per op), then the whole workload operation for information
        wl = Workload(scale=1.0, seed=WORKLOAD_SEED)
        ops = [wl.make(Workload.HEAVIEST, v) for v in range(4)]
        stmts = [o.body().send(None).statement for o in ops]

        def heavy_query(maker: Any) -> Callable[[Any], Any]:
            def op(stmt: Any) -> Any:
                with maker() as s:
                    return s.execute(stmt).all()

            return op

        res, hpo = _hits_case(
            f"{backend} heaviest",
            cache,
            {"uncached": heavy_query(plain_s), "cached": heavy_query(cached_s)},
            stmts,
            *sz.heavy,
            hits_per_op=1,
        )
        out.append(row_for(backend, "heaviest aggregate", res, hpo, "session.execute(stmt).all()"))

        def heavy_op(maker: Any) -> Callable[[Any], Any]:
            def op(o: Any) -> Any:
                with maker() as s:
                    return o.run(s)

            return op

        res, hpo = _hits_case(
            f"{backend} heaviest op",
            cache,
            {"uncached": heavy_op(plain_s), "cached": heavy_op(cached_s)},
            ops,
            *sz.heavy,
            hits_per_op=1,
        )
        out.append(
            row_for(backend, "heaviest, workload op", res, hpo, "op.run(): builds stmt, normalizes")
        )
    finally:
        uconn.close()
        cconn.close()
        cache.close()
        plain.dispose()
        cached.dispose()


def miss_overhead(url: str, n: int) -> tuple[list[Any], dict[str, Any]]:
    """Every cached execution a real miss on a known SQL string; ABBA alternation."""
    say(f"[postgresql] miss overhead, {n} distinct ids")
    plain = create_engine(url)
    cache = QueryCache(namespace="bench-core-miss")
    cached = cache.wrap(create_engine(url))
    uconn, cconn = plain.connect(), cached.connect()
    try:
        count = uconn.execute(text("SELECT count(*) FROM customers")).scalar_one()
        ids = list(range(2, min(count, n + 1) + 1))
        for k in ids:  # every page these reads touch is in shared_buffers now
            uconn.execute(POINT, {"cid": k}).all()
        uconn.execute(POINT, {"cid": 1}).all()  # the SQL string has been seen on both sides
        cconn.execute(POINT, {"cid": 1}).all()
        assert uconn.execute(POINT, {"cid": 1}).all() == cconn.execute(POINT, {"cid": 1}).all()
        before = totals(cache)
        un, ca = Lat(), Lat()
        from time import perf_counter

        for i, k in enumerate(ids):
            pair = ((uconn, un), (cconn, ca)) if i % 2 == 0 else ((cconn, ca), (uconn, un))
            for conn, lat in pair:
                t = perf_counter()
                conn.execute(POINT, {"cid": k}).all()
                lat.add(perf_counter() - t)
        delta = check_delta("miss overhead", before, totals(cache), misses=len(ids), hits=0)
        stored = len(cache.memory)
        over = ca.median - un.median
        rel = over / un.median
        row = [
            "postgresql",
            "miss, SQL seen before",
            us(un.median),
            us(ca.median),
            f"+{over * 1e6:.1f} µs",
            f"{rel:+.1%}",
            f"<= {MISS_OVERHEAD_TARGET:.0%}",
            verdict(rel <= MISS_OVERHEAD_TARGET),
            f"{len(ids)} misses, {stored} entries",
        ]
        info = {
            "mean_un": un.mean,
            "mean_ca": ca.mean,
            "p90_un": un.q(0.9),
            "p90_ca": ca.q(0.9),
            "delta": delta,
        }
        return row, info
    finally:
        uconn.close()
        cconn.close()
        cache.close()
        plain.dispose()
        cached.dispose()


async def async_backend(backend: str, url: str, sz: Sizes, out: list[list[Any]]) -> None:
    say(f"[{backend}] async cases")
    plain = create_async_engine(url)
    cache = QueryCache(namespace=f"bench-core-{backend}")
    cached = cache.wrap(create_async_engine(url))
    note = "async, for information"
    try:
        async with cached.connect():
            pass
    except TypeError as exc:
        # Library bug seen at 09df4d7 (docs/benchmarks.md): an asyncpg engine wrapped
        # before its first connection cannot connect (the caching execution context
        # reads ``.info`` of SQLAlchemy's first-connect probe, which raises
        # NotImplementedError, swallowed by Dialect.initialize). Work around it by
        # connecting before wrapping, and say so in the table.
        say(f"[{backend}] wrapped engine failed to connect ({exc}); connecting before wrap")
        await cached.dispose()
        cached = create_async_engine(url)
        async with cached.connect():
            pass
        cache.wrap(cached)
        note = "connected before wrap (bug)"
    plain_s = async_sessionmaker(bind=plain)
    cached_s = cache.async_sessionmaker(bind=cached)
    ids = list(range(1, 201))
    try:
        async with plain.connect() as uconn, cached.connect() as cconn:

            def core(conn: Any) -> Callable[[int], Any]:
                async def op(k: int) -> Any:
                    return (await conn.execute(POINT, {"cid": k})).all()

                return op

            def orm(maker: Any) -> Callable[[int], Any]:
                async def op(k: int) -> Any:
                    async with maker() as s:
                        c = (await s.execute(select(Customer).where(Customer.id == k))).scalar_one()
                        return obj_row(c)

                return op

            for case, sides in (
                ("Core point query", {"uncached": core(uconn), "cached": core(cconn)}),
                ("ORM select(Customer)", {"uncached": orm(plain_s), "cached": orm(cached_s)}),
            ):
                for k in ids:
                    await sides["cached"](k)
                    await sides["cached"](k)
                for k in ids[:3]:
                    a, b = await sides["uncached"](k), await sides["cached"](k)
                    if a != b:
                        raise AssertionError(f"{backend} {case}: results differ for {k}")
                before = totals(cache)
                res = await ainterleave(sides, ids, *sz.async_)
                ops = sz.async_[0] * sz.async_[1]
                check_delta(f"{backend} {case}", before, totals(cache), hits=ops, misses=0)
                out.append(row_for(backend, case, res, 1, note))
    finally:
        await cache.aclose()
        await plain.dispose()
        await cached.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    sz = Sizes(args.quick)
    rows_out: list[list[Any]] = []
    with Env() as env:
        info = machine(env)
        sync_backend("postgresql", env.pg_url, sz, rows_out)
        sync_backend("sqlite", env.sqlite_url, sz, rows_out)
        miss_row, miss_info = miss_overhead(env.pg_url, sz.miss)
        run_async(async_backend("asyncpg", env.pg_async_url, sz, rows_out))
        run_async(async_backend("aiosqlite", env.aiosqlite_url, sz, rows_out))

    print(
        f"bench_core{' --quick' if args.quick else ''}: memory-tier hits vs uncached, "
        f"medians of interleaved per-op latencies"
    )
    print(f"machine: {info}")
    print()
    print(table(HEADERS, rows_out, left=2))
    print()
    print(
        table(
            [
                "backend",
                "case",
                "uncached p50",
                "cached p50",
                "overhead",
                "overhead %",
                "target",
                "result",
                "",
            ],
            [miss_row],
            left=2,
        )
    )
    print(
        f"  (means {us(miss_info['mean_un'])} vs {us(miss_info['mean_ca'])}; "
        f"p90 {us(miss_info['p90_un'])} vs {us(miss_info['p90_ca'])})"
    )
    failed = [r for r in rows_out if r[6] == "FAIL"] + ([miss_row] if miss_row[7] == "FAIL" else [])
    print()
    print(
        f"targets: {sum(1 for r in rows_out if r[6] == 'PASS') + (miss_row[7] == 'PASS')} "
        f"passed, {len(failed)} failed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
