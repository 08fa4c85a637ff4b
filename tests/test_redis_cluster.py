"""A real 3-master Redis Cluster (``querycache.testing.RedisCluster``).

The cluster is started once for the module from ``redis-server`` binaries and
``redis-cli --cluster create``. Caches get ``redis=`` a
``redis.cluster.RedisCluster`` (or ``redis.asyncio.cluster.RedisCluster``)
client. Database executions are counted by SQLite's trace callback.

Fixture note: ``RedisCluster`` as shipped picks node ports with
``free_port()``, but a cluster node also listens on ``port + 10000`` (its
cluster bus), which is past 65535 for any port above 55535 — in Linux's
ephemeral range — so the node exits at once (``ServerUnavailable: server on
port N exited with 1``) in about half of the runs. The fixture below gives
every node an explicit free ``cluster-port`` (Redis >= 7); the same two lines
belong in ``RedisCluster.__init__``. ``RedisCluster.start()`` also leaves the
nodes it already started running when a later step fails (``__exit__`` never
runs after a failing ``__enter__``); the fixture stops them itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis_worker import SqliteTrace, connected_cache, poll, scan_keys
from sqlalchemy.ext.asyncio import create_async_engine

from querycache import QueryCache
from querycache.testing import RedisCluster, free_port

META = sa.MetaData()
ITEMS = sa.Table(
    "items",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("qty", sa.Integer, nullable=False),
)
OTHER = sa.Table("other", META, sa.Column("id", sa.Integer, primary_key=True))
BY_ID = sa.select(ITEMS.c.id, ITEMS.c.qty).where(ITEMS.c.id == sa.bindparam("i"))
JOINED = (
    sa.select(ITEMS.c.id, sa.func.count(OTHER.c.id))
    .select_from(ITEMS.outerjoin(OTHER, OTHER.c.id == ITEMS.c.id))
    .group_by(ITEMS.c.id)
    .order_by(ITEMS.c.id)
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    rc = RedisCluster(masters=3)
    for node in rc.nodes:  # see the module docstring
        node.extra.setdefault("cluster-port", str(free_port()))
    try:  # RedisCluster.start() leaves the nodes it started running when it fails
        rc.start()
        yield rc
    finally:
        rc.stop()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cluster.sqlite'}"
    engine = sa.create_engine(url)
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(ITEMS), [{"id": i, "qty": i} for i in range(10)])
        conn.execute(sa.insert(OTHER), [{"id": i} for i in range(0, 10, 2)])
    engine.dispose()
    return url


class Caches:
    def __init__(self, cluster: RedisCluster, ns: str) -> None:
        self.cluster = cluster
        self.ns = ns
        self.made: list[tuple[QueryCache, Any]] = []

    def new(self, url: str) -> tuple[QueryCache, sa.Engine, SqliteTrace]:
        # not about timeouts: a loaded machine's 50 ms stall must not skip Redis
        cache = connected_cache(redis=self.cluster.client(), namespace=self.ns, redis_timeout=0.5)
        engine = sa.create_engine(url)
        trace = SqliteTrace(engine)  # before wrap(), which may connect at once
        cache.wrap(engine)
        self.made.append((cache, engine))
        return cache, engine, trace

    def close(self) -> None:
        for cache, engine in self.made:
            cache.close()
            engine.dispose()


@pytest.fixture
def caches(cluster) -> Iterator[Caches]:
    made = Caches(cluster, "c" + uuid.uuid4().hex[:10])
    yield made
    made.close()


def _attempt(fn: Any) -> Any:
    try:
        return fn()
    except AssertionError:
        return None


def by_id(engine: sa.Engine, i: int) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(BY_ID, {"i": i})]


def joined(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(JOINED)]


def totals(cache: QueryCache) -> dict[str, Any]:
    return cache.report().as_dict()["totals"]


def errors(cache: QueryCache) -> dict[str, int]:
    return cache.report().as_dict()["errors"]


def entries(cluster: RedisCluster, ns: str) -> list[bytes]:
    return scan_keys(cluster.client(), f"qc:{{{ns}}}:r:*")


def test_the_cluster_is_real(cluster):
    client = cluster.client()
    info = client.cluster_info()
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_known_nodes"]) == 3 and int(info["cluster_size"]) == 3
    assert len(client.get_primaries()) == 3


def test_hits_across_caches_with_no_crossslot(caches, db):
    a, ea, ta = caches.new(db)
    assert by_id(ea, 3) == [(3, 3)]
    assert joined(ea)[:2] == [(0, 1), (1, 0)]  # two tables: more keys in one MGET
    poll(lambda: len(entries(caches.cluster, caches.ns)) == 2, timeout=5, what="2 entries")
    b, eb, tb = caches.new(db)
    assert by_id(eb, 3) == [(3, 3)]
    assert joined(eb)[:2] == [(0, 1), (1, 0)]
    assert tb.count("FROM items") == 0, "not served from the cluster"
    assert totals(b)["redis_hits"] == 2
    assert errors(a) == {} and errors(b) == {}  # no CROSSSLOT on MGET, SET NX GET, pipelines
    assert ta.count("FROM items") == 2


def test_every_key_of_a_namespace_lives_in_one_slot(caches, db):
    _, ea, _ = caches.new(db)
    for i in range(5):
        by_id(ea, i)
    joined(ea)
    poll(lambda: len(entries(caches.cluster, caches.ns)) == 6, timeout=5, what="6 entries")
    client = caches.cluster.client()
    keys = scan_keys(client, f"qc:{{{caches.ns}}}:*")
    assert len(keys) >= 6 + 4  # entries, two table tokens, the epoch, the generation
    slots = {client.keyslot(k) for k in keys}
    assert len(slots) == 1, slots
    holders = [
        node
        for node in client.get_primaries()
        if node.redis_connection.dbsize() > 0
        and any(True for _ in node.redis_connection.scan_iter(match=f"qc:{{{caches.ns}}}:*"))
    ]
    assert len(holders) == 1


def test_a_commit_reaches_the_cluster_without_errors(caches, db):
    a, ea, _ = caches.new(db)
    assert by_id(ea, 4) == [(4, 4)]
    with ea.begin() as conn:
        conn.execute(sa.update(ITEMS).where(ITEMS.c.id == 4).values(qty=40))
    assert by_id(ea, 4) == [(4, 40)]  # this process's memory tier is always right
    assert errors(a) == {}, errors(a)
    assert a.redis.pending == {}, "the invalidation never reached the cluster"


def test_a_commit_invalidates_other_caches_on_a_cluster(caches, db):
    a, ea, _ = caches.new(db)
    _, eb, _ = caches.new(db)

    def stored() -> Any:
        # a process that doubts its channel (starved on a loaded machine) rightly
        # skips Redis: read again, from the database, until a's miss stores there
        a.memory.clear()
        assert by_id(ea, 5) == [(5, 5)]
        return poll(lambda: entries(caches.cluster, caches.ns), timeout=1, what="the entry")

    poll(lambda: _attempt(stored), timeout=15, interval=0.05, what="the entry in Redis")
    assert by_id(eb, 5) == [(5, 5)]  # b: a Redis hit, now in b's memory
    with ea.begin() as conn:
        conn.execute(sa.update(ITEMS).where(ITEMS.c.id == 5).values(qty=50))
    # a brand-new cache must not get the old entry from the cluster
    _, ec, _ = caches.new(db)
    fresh = by_id(ec, 5)
    deadline = time.monotonic() + 2
    while by_id(eb, 5) != [(5, 50)] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fresh == [(5, 50)], "stale Redis entry served after a commit"
    assert by_id(eb, 5) == [(5, 50)], "the other cache kept its stale memory entry"
    assert errors(a) == {}, errors(a)


async def test_async_cluster_client_hits(cluster, db):
    ns = "ac" + uuid.uuid4().hex[:8]
    url = db.replace("sqlite:", "sqlite+aiosqlite:", 1)
    made: list[tuple[QueryCache, Any, Any]] = []
    traces: list[SqliteTrace] = []

    async def new() -> tuple[QueryCache, Any]:
        client = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.startup_nodes]
        )
        # works around test_a_fresh_async_cluster_client_is_accepted
        await client.initialize()
        cache = connected_cache(redis=client, namespace=ns)
        engine = create_async_engine(url)
        traces.append(SqliteTrace(engine))
        cache.wrap(engine)
        made.append((cache, engine, client))
        return cache, engine

    async def read(engine: Any) -> list[tuple[Any, ...]]:
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(BY_ID, {"i": 6})]

    try:
        a, ea = await new()
        assert await read(ea) == [(6, 6)]
        deadline = time.monotonic() + 5
        while not entries(cluster, ns):
            assert time.monotonic() < deadline, "the async store never reached the cluster"
            await asyncio.sleep(0.005)
        b, eb = await new()
        assert await read(eb) == [(6, 6)]
        assert traces[1].count("FROM items") == 0
        assert totals(b)["redis_hits"] == 1
        assert errors(a) == {} and errors(b) == {}
    finally:
        for cache, engine, client in made:
            await engine.dispose()
            cache.close()
            await client.aclose()


async def test_a_fresh_async_cluster_client_is_accepted(cluster):
    client = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.startup_nodes]
    )
    try:
        cache = QueryCache(redis=client, namespace="fresh")
        cache.close()
    finally:
        await client.aclose()
