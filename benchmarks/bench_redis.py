"""Redis-tier hits vs uncached PostgreSQL, with memory-tier hits for reference (issue 5).

Run: ``.venv/bin/python -m benchmarks.bench_redis [--quick]``

Starts its own PostgreSQL (sample shop, scale 1) and Redis. Four engines on the
same database:

* ``uncached``: a plain ``create_engine``;
* a *warmer* cache ``QueryCache(redis_url=...)`` that runs every query once,
  so the entries are in Redis (its background stores are flushed);
* ``redis hit``: a second ``QueryCache`` on the same Redis and namespace whose
  memory tier is emptied (``cache.memory.clear()``, outside the timing) before
  every measured operation, so each one is a memory miss answered by Redis:
  one ``MGET`` of the entry and its table version tokens, decode, fill the
  memory tier, serve;
* ``memory hit``: a third such cache, warmed, never cleared.

A tiny ``memory_bytes`` would not do for the Redis side: results larger than the
memory tier's ``max_entry_bytes`` are not stored in Redis either.

Sides alternate in rounds, medians of per-operation latencies. Proof of the
claimed path: the report of the redis-hit cache must grow by one ``redis_hits``
per operation (none from memory, no misses), the memory-hit cache by one
``memory_hits`` per operation, and the Redis server's own ``INFO commandstats``
must count exactly one ``MGET`` per Redis hit and no other command except the
invalidation channels' ``PING``. Results are compared with the uncached ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, create_engine, select
from sqlalchemy.orm import sessionmaker

from benchmarks.common import (
    WORKLOAD_SEED,
    Env,
    check_delta,
    interleave,
    machine,
    say,
    table,
    totals,
    us,
)
from querycache import QueryCache
from sample_db.models import Customer
from sample_db.normalize import obj_row
from sample_db.workload import Workload

CUSTOMERS = Customer.__table__
POINT = select(CUSTOMERS).where(CUSTOMERS.c.id == bindparam("cid"))
NAMESPACE = "bench-redis"


def _commandstats(client: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def _new_cache(url: str) -> QueryCache:
    cache = QueryCache(namespace=NAMESPACE, redis_url=url, publish_stats=None)  # counts commands
    assert cache.bus is not None
    if not cache.bus.connected.wait(10):
        raise RuntimeError("the invalidation channel did not come up")
    deadline = time.monotonic() + 5
    while cache.memory.suspended and time.monotonic() < deadline:
        time.sleep(0.01)
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    f = 5 if args.quick else 1
    rows_out: list[list[Any]] = []
    with Env(sqlite=False, redis=True) as env:
        info = machine(env)
        url = env.pg_url
        plain = create_engine(url)
        warmer, rcache, mcache = (_new_cache(env.redis_url) for _ in range(3))
        w_eng, r_eng, m_eng = (c.wrap(create_engine(url)) for c in (warmer, rcache, mcache))
        server = env.redis.client() if env.redis else None
        assert server is not None
        plain_s = sessionmaker(bind=plain)
        w_s, r_s, m_s = (
            c.sessionmaker(bind=e) for c, e in ((warmer, w_eng), (rcache, r_eng), (mcache, m_eng))
        )
        conns = {
            n: e.connect()
            for n, e in (("uncached", plain), ("warm", w_eng), ("redis", r_eng), ("memory", m_eng))
        }
        try:
            ids = list(range(1, 201))
            wl = Workload(scale=1.0, seed=WORKLOAD_SEED)
            heavy = [wl.make(Workload.HEAVIEST, v).body().send(None).statement for v in range(4)]

            def core(conn: Any) -> Callable[[int], Any]:
                return lambda k: conn.execute(POINT, {"cid": k}).all()

            def orm(maker: Any) -> Callable[[int], Any]:
                def op(k: int) -> Any:
                    with maker() as s:
                        return obj_row(
                            s.execute(select(Customer).where(Customer.id == k)).scalar_one()
                        )

                return op

            def agg(maker: Any) -> Callable[[Any], Any]:
                def op(stmt: Any) -> Any:
                    with maker() as s:
                        return s.execute(stmt).all()

                return op

            cases = [
                ("Core point query", core, "conn", ids, (20 // f, 100)),
                ("ORM select(Customer)", orm, "session", ids, (20 // f, 50)),
                ("heaviest aggregate", agg, "session", heavy, (10 // f, 3)),
            ]
            makers = {"uncached": plain_s, "warm": w_s, "redis": r_s, "memory": m_s}
            for case, make, via, keys, (rounds, per_round) in cases:
                say(f"[redis] {case}")
                fn = {
                    n: make(conns[n] if via == "conn" else makers[n])
                    for n in ("uncached", "warm", "redis", "memory")
                }
                for k in keys:
                    fn["warm"](k)
                assert warmer.redis is not None
                warmer.redis.flush()
                time.sleep(0.05)
                for k in keys:
                    fn["memory"](k)
                    fn["memory"](k)
                for k in keys[:3]:
                    rcache.memory.clear()
                    a, b, c = fn["uncached"](k), fn["redis"](k), fn["memory"](k)
                    if not a == b == c:
                        raise AssertionError(f"{case}: results differ for {k!r}")
                r0, m0 = totals(rcache), totals(mcache)
                s0 = _commandstats(server)
                res = interleave(
                    {
                        "uncached": fn["uncached"],
                        "redis hit": fn["redis"],
                        "memory hit": fn["memory"],
                    },
                    keys,
                    rounds,
                    per_round,
                    before_each={"redis hit": rcache.memory.clear},
                )
                s1 = _commandstats(server)
                ops = rounds * per_round
                check_delta(
                    f"{case} redis",
                    r0,
                    totals(rcache),
                    redis_hits=ops,
                    memory_hits=0,
                    misses=0,
                    bypasses=0,
                )
                check_delta(
                    f"{case} memory",
                    m0,
                    totals(mcache),
                    memory_hits=ops,
                    redis_hits=0,
                    misses=0,
                    bypasses=0,
                )
                cmds = {k: s1.get(k, 0) - s0.get(k, 0) for k in s1}
                mget = cmds.pop("mget", 0)
                cmds.pop("ping", None)
                cmds.pop("info", None)
                other = {k: v for k, v in cmds.items() if v}
                if mget != ops or other:
                    raise AssertionError(
                        f"{case}: server saw {mget} MGET for {ops} Redis hits, and {other}"
                    )
                un, rh, mh = res["uncached"], res["redis hit"], res["memory hit"]
                rows_out.append(
                    [
                        case,
                        us(un.median),
                        us(rh.median),
                        us(mh.median),
                        f"{un.median / rh.median:,.1f}x",
                        f"{un.median / mh.median:,.1f}x",
                        f"{(rh.median - mh.median) * 1e6:.0f} µs",
                        f"{mget / ops:g}",
                    ]
                )
        finally:
            for c in conns.values():
                c.close()
            for cache in (warmer, rcache, mcache):
                cache.close()
            for e in (plain, w_eng, r_eng, m_eng):
                e.dispose()
            server.close()

    print(
        f"bench_redis{' --quick' if args.quick else ''}: Redis-tier hits vs uncached "
        f"PostgreSQL (psycopg), medians of interleaved per-op latencies"
    )
    print(f"machine: {info}")
    print()
    print(
        table(
            [
                "case",
                "uncached p50",
                "redis hit p50",
                "memory hit p50",
                "redis speed-up",
                "memory speed-up",
                "redis - memory",
                "MGET/op",
            ],
            rows_out,
        )
    )
    print(
        "redis hit = memory tier emptied before each op; MGET/op counted by the server "
        "(INFO commandstats)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
