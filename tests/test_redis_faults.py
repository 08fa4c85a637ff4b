"""Fail-open, never stale: Redis killed, paused, restarted, slow, full, read-only, evicting.

Every test has its own ``redis-server`` (never the session one) and its own
copy of the sample shop (SQLite, built once per module, copied to tmpfs when there is one).

The differential harness
------------------------
Reader threads run the sample workload's reads through a cache and, under the
*same* read lock, through a plain uncached engine; a writer thread runs the
workload's writes through a cache under the write lock. So no write can
happen between the two executions of a read, and any difference is a stale
(or wrong) cached read. When there are several caches (standing in for several
processes), the writer keeps the write lock until every other cache has
applied the invalidation (its local table versions moved) or suspended its
memory tier: a read through another cache then starts after the freshness
bound, and must be fresh. Exceptions from cached sessions are errors to the
caller; none is allowed.

A lone cache gets a small memory tier (64 KiB), so that entries keep falling
out of memory and reads keep going to Redis; with two caches, Redis hits come
from each other's stores and their memory tiers serve most repeats. Stale
entries in either tier are visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from dbcount import RWLock
from redis_worker import connected_cache, poll
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import sessionmaker

from querycache import QueryCache
from querycache.keys import scope_of
from querycache.testing import RedisServer, free_port
from sample_db.generate import build
from sample_db.models import Base
from sample_db.workload import Operation, Workload

#: wall-clock bounds and throughput floors: `make test` runs these alone (see Makefile)
pytestmark = pytest.mark.serial

SCALE = 0.02
TABLES = tuple(sorted(Base.metadata.tables))
#: one cache alone: entries keep falling out of memory, so reads keep going to Redis
SMALL = {"memory_bytes": 64 * 1024, "max_entry_bytes": 32 * 1024}
#: two caches: Redis hits come from each other's stores; memory serves most repeats
MEDIUM = {"memory_bytes": 512 * 1024, "max_entry_bytes": 64 * 1024}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "shop.sqlite"
    build(f"sqlite:///{path}", scale=SCALE, seed=42, progress=False)
    return path


@pytest.fixture
def shop(shop_template: Path, fast_dir: Path) -> str:
    path = fast_dir / "shop.sqlite"
    shutil.copy(shop_template, path)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def own_server(**extra: str) -> Iterator[RedisServer]:
    with RedisServer(extra=dict(extra)) as server:
        yield server


@contextlib.contextmanager
def full_redis() -> Iterator[RedisServer]:
    """``noeviction`` with 1 MiB of room above what the empty server uses (an
    empty Redis 7 already uses ~0.9 MiB, so a bare ``maxmemory 1mb`` would be
    full before the first entry)."""
    with own_server(**{"maxmemory-policy": "noeviction"}) as server:
        admin = server.client()
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 2**20)
        yield server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with own_server() as s:
        yield s


class Differential:
    """Cached reads compared with the database under a readers-writer lock."""

    def __init__(
        self,
        url: str,
        caches: list[QueryCache],
        *,
        readers: int = 3,
        write_pace: float = 0.01,
        seed: int = 7,
    ) -> None:
        self.url = url
        self.caches = caches
        self.engines = [c.wrap(sa.create_engine(url)) for c in caches]
        self.sessions = [
            c.sessionmaker(bind=e, expire_on_commit=False) for c, e in zip(caches, self.engines)
        ]
        self.plain_engine = sa.create_engine(url)
        self.plain = sessionmaker(bind=self.plain_engine, expire_on_commit=False)
        self.scope = scope_of(sa.make_url(url), 0)
        wl = Workload(scale=SCALE, seed=seed, write_ratio=0.0)
        self.read_ops = wl.operations(80)  # cycled: the same keys come back (hits)
        self.write_ops = Workload(scale=SCALE, seed=seed, write_ratio=1.0).operations(5000)
        self.lock = RWLock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.stale: list[tuple[str, Any, Any]] = []
        self.reads = 0
        self.writes = 0
        self._count = threading.Lock()
        self.write_pace = write_pace
        self.threads = [
            threading.Thread(target=self._reader, args=(k, readers), daemon=True)
            for k in range(readers)
        ]
        self.threads.append(threading.Thread(target=self._writer, daemon=True))

    # -- threads ----------------------------------------------------------------------------
    def _reader(self, k: int, n: int) -> None:
        i = k
        while not self.stop.is_set():
            op = self.read_ops[i % len(self.read_ops)]
            maker = self.sessions[i % len(self.sessions)]
            i += n
            with self.lock.read():
                try:
                    with maker() as session:
                        got = op.run(session)
                except Exception as exc:
                    self.errors.append(f"read {op.name}: {type(exc).__name__}: {exc}"[:300])
                    continue
                with self.plain() as session:
                    want = op.run(session)
            if got != want:
                self.stale.append((f"{op.name} #{op.index} {op.params}", got, want))
            with self._count:
                self.reads += 1

    def _writer(self) -> None:
        for op in self.write_ops:
            if self.stop.is_set():
                return
            with self.lock.write():
                self._write(op)
            with self._count:
                self.writes += 1
            self.stop.wait(self.write_pace)  # pacing, so reads dominate

    def _write(self, op: Operation) -> None:
        writer, others = self.caches[0], self.caches[1:]
        mine = writer.cells.capture(self.scope, TABLES)
        theirs = [c.cells.capture(self.scope, TABLES) for c in others]
        try:
            with self.sessions[0]() as session:
                op.run(session)
        except Exception as exc:
            self.errors.append(f"write {op.name}: {type(exc).__name__}: {exc}"[:300])
        if writer.cells.capture(self.scope, TABLES) == mine:
            return  # nothing committed, nothing to wait for
        for cache, before in zip(others, theirs):
            try:
                poll(
                    lambda c=cache, b=before: (
                        c.memory.suspended or c.cells.capture(self.scope, TABLES) != b
                    ),
                    timeout=10,
                    interval=0.001,
                    what="another cache applied the invalidation",
                )
            except AssertionError as exc:
                self.errors.append(f"write {op.name}: {exc}")
            with cache.memory.lock:  # the invalidation that moved the versions is over
                pass

    # -- control ----------------------------------------------------------------------------
    def __enter__(self) -> Differential:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        for e in self.engines:
            e.dispose()
        self.plain_engine.dispose()

    def run_for(self, reads: int, writes: int = 0, timeout: float = 30) -> None:
        """Let the workload do ``reads`` more reads and ``writes`` more writes."""
        r0, w0 = self.reads, self.writes
        poll(
            lambda: self.reads >= r0 + reads and self.writes >= w0 + writes,
            timeout=timeout,
            interval=0.005,
            what=f"{reads} reads and {writes} writes",
        )

    def redis_hits(self) -> int:
        return sum(c.report().as_dict()["totals"]["redis_hits"] for c in self.caches)

    def check(self) -> None:
        assert not self.errors, self.errors[:5]
        assert not self.stale, (
            f"{len(self.stale)} stale reads of {self.reads}; first: {self.stale[0]}"
        )


def caches_on(server_url: str, n: int, **kw: Any) -> list[QueryCache]:
    """``n`` caches (standing in for ``n`` processes) on one namespace."""
    ns = "f" + uuid.uuid4().hex[:10]
    sizes = SMALL if n == 1 else MEDIUM
    return [connected_cache(redis_url=server_url, namespace=ns, **sizes, **kw) for _ in range(n)]


def recovered(caches: list[QueryCache]) -> bool:
    return all(c.bus.connected.is_set() and c.redis.healthy and not c.redis.pending for c in caches)


def close_all(caches: list[QueryCache]) -> None:
    for c in caches:
        c.close()


# -- 4. killed, paused, restarted in the middle of a workload ----------------------------------


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_redis_fault_mid_workload_is_invisible_and_never_stale(shop, server, fault):
    caches = caches_on(server.url, 2)
    try:
        with Differential(shop, caches) as d:
            d.run_for(reads=150, writes=5)
            poll(lambda: d.redis_hits() > 0, timeout=10, what="Redis hits before the fault")
            down_wall = time.time()
            if fault == "kill":
                server.kill()
            else:
                server.pause()
            # the caches notice (their memory tiers stop serving), queries go on
            poll(
                lambda: all(c.memory.suspended for c in caches),
                timeout=5,
                what="memory tiers suspended",
            )
            d.run_for(reads=150, writes=5)
            up_wall = time.time()
            if fault == "kill":
                server.start()  # same port, empty
            else:
                server.resume()
            poll(lambda: recovered(caches), timeout=10, what="reconnection")
            hits = d.redis_hits()
            poll(lambda: d.redis_hits() > hits, timeout=10, what="Redis hits after recovery")
            d.run_for(reads=100, writes=5)
        d.check()
        for c in caches:
            assert not c.memory.suspended
        degraded = [p for c in caches for p in c.report().as_dict()["degraded"]]
        assert degraded, "no degraded period in the reports"
        writer_periods = caches[0].report().as_dict()["degraded"]
        assert writer_periods, "the writing cache reported no degraded period"
        for p in writer_periods:
            assert {"start", "end", "seconds", "reason"} <= set(p)
        # A loaded machine can doubt the channel before the fault too (a reply
        # later than redis_timeout is a sign of a stall): find the fault's period.
        during = [p for p in writer_periods if p["end"] >= up_wall - 0.05]
        assert during, f"no degraded period reaches the recovery: {writer_periods}"
        p = during[0]
        assert down_wall - 0.5 <= p["start"] <= up_wall, writer_periods
        assert p["seconds"] > 0
    finally:
        close_all(caches)


def test_redis_restarted_twice_quickly(shop, server):
    """Two restarts back to back while the workload runs: still nothing stale."""
    caches = caches_on(server.url, 2)
    try:
        with Differential(shop, caches) as d:
            d.run_for(reads=100, writes=3)
            for _ in range(2):
                server.restart()
                d.run_for(reads=60, writes=3)
            poll(lambda: recovered(caches), timeout=10, what="reconnection")
            hits = d.redis_hits()
            poll(lambda: d.redis_hits() > hits, timeout=10, what="Redis hits after recovery")
        d.check()
    finally:
        close_all(caches)


def test_a_cache_started_while_redis_is_down_works_and_connects_later(shop):
    """Redis not there at start: queries run from the database at once (no error,
    no long wait); when Redis appears the cache connects on its own."""
    server = RedisServer()  # not started: nothing listens on its port
    cache = QueryCache(redis_url=server.url, namespace="late", **SMALL)
    other: QueryCache | None = None
    engine = cache.wrap(sa.create_engine(shop))
    plain = sa.create_engine(shop)
    try:
        for i in range(1, 6):
            elapsed, rows = timed_read(engine, i)
            assert rows == timed_read(plain, i)[1]
            assert elapsed < 0.5, elapsed
        assert not cache.bus.connected.is_set() and cache.memory.suspended
        server.start()
        poll(lambda: recovered([cache]), timeout=10, what="the cache connected")
        assert not cache.memory.suspended
        timed_read(engine, 7)
        other = connected_cache(redis_url=server.url, namespace="late")
        other_engine = other.wrap(sa.create_engine(shop))
        poll(
            lambda: timed_read(other_engine, 7) and other.report().as_dict()["totals"]["redis_hits"]
        )
        other_engine.dispose()
    finally:
        cache.close()
        if other is not None:
            other.close()
        engine.dispose()
        plain.dispose()
        server.stop()


# -- Redis slow: a paused server costs at most redis_timeout -----------------------------------


def timed_read(engine: sa.Engine, i: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, email FROM customers WHERE id = :i"), {"i": i}
        ).all()
    return time.perf_counter() - t0, rows


def test_a_paused_redis_costs_a_query_at_most_the_redis_timeout(shop, server):
    timeout = 0.05
    plain = sa.create_engine(shop)
    db_times = [timed_read(plain, i)[0] for i in range(1, 6)]
    db_time = max(db_times)
    (cache,) = caches_on(server.url, 1, redis_timeout=timeout)
    engine = cache.wrap(sa.create_engine(shop))
    try:
        for i in range(1, 4):  # warm: pool, Redis connections, version tokens
            timed_read(engine, i)
        server.pause()
        elapsed, rows = timed_read(engine, 11)
        assert rows == timed_read(plain, 11)[1]
        assert elapsed < timeout + db_time + 0.1, f"query took {elapsed:.3f}s with Redis paused"
        # the tier is marked down: the next misses do not wait at all
        assert not cache.redis.healthy
        elapsed2, _ = timed_read(engine, 12)
        assert elapsed2 < db_time + 0.05, elapsed2
        # a commit pays at most one timeout for its invalidation
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE customers SET name = 'x' WHERE id = 11"))
        assert time.perf_counter() - t0 < timeout + 0.2
        assert timed_read(engine, 11)[1] == timed_read(plain, 11)[1]
    finally:
        server.resume()
        cache.close()
        engine.dispose()
        plain.dispose()


def test_a_paused_redis_behind_a_given_client_costs_at_most_the_redis_timeout(shop, server):
    cache = connected_cache(redis=server.client(), namespace="given", redis_timeout=0.05)
    engine = cache.wrap(sa.create_engine(shop))
    result: list[Any] = []
    try:
        timed_read(engine, 1)
        server.pause()
        worker = threading.Thread(target=lambda: result.append(timed_read(engine, 21)))
        worker.start()
        worker.join(1.0)
        finished = not worker.is_alive()
    finally:
        server.resume()
    worker.join(10)
    cache.close()
    engine.dispose()
    assert finished, "the query was still blocked on Redis after 1 s"
    assert result[0][0] < 0.5


# -- async: no blocking call on the event loop -------------------------------------------------


@pytest.mark.parametrize("backend", ["aiosqlite", "asyncpg"])
async def test_a_paused_redis_never_blocks_the_event_loop(shop, server, backend, request):
    if backend == "aiosqlite":
        url: Any = shop.replace("sqlite:", "sqlite+aiosqlite:", 1)
    else:
        pg_url = request.getfixturevalue("pg_url")
        eng = sa.create_engine(pg_url)
        with eng.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE customers (id int primary key, email text)")
            conn.exec_driver_sql(
                "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g"
            )
        eng.dispose()
        url = sa.make_url(pg_url).set(drivername="postgresql+asyncpg")
    timeout = 0.3  # long enough that a blocking call would be obvious
    cache = connected_cache(redis_url=server.url, namespace="aio", redis_timeout=timeout)
    raw = create_async_engine(url)
    async with raw.connect():  # pool warm before the clock matters
        pass
    engine = cache.wrap(raw)
    stmt = sa.text("SELECT id, email FROM customers WHERE id = :i")
    sync_driver = {"aiosqlite": "sqlite+pysqlite", "asyncpg": "postgresql+psycopg"}
    gaps: list[float] = []
    ticking = asyncio.Event()
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        ticking.set()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    sync_plain = sa.create_engine(sa.make_url(url).set(drivername=sync_driver[backend]))
    with sync_plain.connect() as conn:
        want = conn.execute(stmt, {"i": 2}).all()
    sync_plain.dispose()
    try:
        async with engine.connect() as conn:
            (await conn.execute(stmt, {"i": 1})).all()
        task = asyncio.create_task(ticker())
        await ticking.wait()
        server.pause()
        t0 = time.perf_counter()
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt, {"i": 2})).all()
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE customers SET email = 'z' WHERE id = 1"))
        async with engine.connect() as conn:
            after = (await conn.execute(stmt, {"i": 1})).all()
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
    finally:
        server.resume()
        await engine.dispose()
        cache.close()
    assert rows == want
    assert after == [(1, "z")]
    assert elapsed < 3 * timeout + 0.5, elapsed
    ticks_during = len(gaps)
    assert ticks_during >= 10, ticks_during
    assert max(gaps) < 0.1, f"the event loop was blocked for {max(gaps) * 1000:.0f} ms"


# -- out of memory, read-only ------------------------------------------------------------------


def fill_until_oom(client: redis.Redis) -> list[str]:
    """Write junk until the server refuses even a tiny write; returns the junk keys.

    Large values are refused first (their own query buffer counts), so the
    filling goes on with smaller and smaller ones. The server's own usage
    moves a little (client buffers of the caches at work), so the filling
    repeats until a one-byte write is refused.
    """
    keys: list[str] = []
    for _round in range(50):
        for size in (20_000, 1_000, 50, 1):
            for _ in range(100_000):
                key = f"junk:{len(keys)}"
                try:
                    client.set(key, b"x" * size)
                except redis.exceptions.OutOfMemoryError:
                    break
                keys.append(key)
        try:
            client.set("probe", b"1")
        except redis.exceptions.OutOfMemoryError:
            return keys
        client.delete("probe")
    raise AssertionError("Redis never refused a one-byte write")


def two_caches_one_entry(server: RedisServer, shop: str):
    """Cache b holds a customer's row in Redis; returns (a, ea, b, eb, plain)."""
    a, b = caches_on(server.url, 2)
    ea = a.wrap(sa.create_engine(shop))
    eb = b.wrap(sa.create_engine(shop))
    plain = sa.create_engine(shop)
    return a, ea, b, eb, plain


def read_name(engine: sa.Engine, i: int = 5) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT name FROM customers WHERE id = :i"), {"i": i}
        ).scalar_one()


def entry_count(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match="qc:*:r:*", count=1000))


def write_then_read_through_the_other_cache(a, ea, b, eb, plain) -> tuple[str, str]:
    """a renames the customer; once b applied the invalidation (or suspended), b
    reads. Returns (b's read, the database's)."""
    before = b.cells.capture(scope_of(ea.url, 0), ("customers",))
    with ea.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET name = name || '+' WHERE id = 5"))
    poll(
        lambda: (
            b.memory.suspended or b.cells.capture(scope_of(ea.url, 0), ("customers",)) != before
        ),
        timeout=5,
        what="b applied the invalidation",
    )
    with b.memory.lock:
        pass
    return read_name(eb), read_name(plain)


def test_out_of_memory_redis_never_serves_a_stale_entry(shop):
    with full_redis() as server:
        a, ea, b, eb, plain = two_caches_one_entry(server, shop)
        try:
            name = read_name(eb)
            poll(lambda: entry_count(server.client()) == 1, what="the entry in Redis")
            fill_until_oom(server.client())
            got, want = write_then_read_through_the_other_cache(a, ea, b, eb, plain)
            assert want == name + "+"
            assert got == want, f"stale read from an out-of-memory Redis: {got!r} != {want!r}"
        finally:
            close_all([a, b])


def test_read_only_redis_never_serves_a_stale_entry(shop, server):
    a, ea, b, eb, plain = two_caches_one_entry(server, shop)
    try:
        name = read_name(eb)
        poll(lambda: entry_count(server.client()) == 1, what="the entry in Redis")
        # demoted: a replica of a master that is gone keeps its data, read-only
        server.client().replicaof("127.0.0.1", free_port())
        with pytest.raises(redis.exceptions.ReadOnlyError):
            server.client().set("probe", b"1")
        got, want = write_then_read_through_the_other_cache(a, ea, b, eb, plain)
        assert want == name + "+"
        assert got == want, f"stale read from a read-only Redis: {got!r} != {want!r}"
    finally:
        close_all([a, b])


def test_out_of_memory_mid_workload_single_cache(shop):
    """One cache (one process): queries keep working and stay fresh while Redis
    refuses every write, and it serves Redis hits again once memory is freed."""
    with full_redis() as server:
        caches = caches_on(server.url, 1)
        try:
            with Differential(shop, caches) as d:
                d.run_for(reads=100, writes=3)
                poll(lambda: d.redis_hits() > 0, timeout=10, what="Redis hits")
                admin = server.client()
                junk = fill_until_oom(admin)
                d.run_for(reads=150, writes=10)
                admin.delete(*junk)
                poll(lambda: recovered(caches), timeout=10, what="recovery")
                hits = d.redis_hits()
                poll(lambda: d.redis_hits() > hits, timeout=10, what="Redis hits again")
            d.check()
        finally:
            close_all(caches)


def test_read_only_mid_workload_single_cache(shop, server):
    caches = caches_on(server.url, 1)
    try:
        with Differential(shop, caches) as d:
            d.run_for(reads=100, writes=3)
            poll(lambda: d.redis_hits() > 0, timeout=10, what="Redis hits")
            admin = server.client()
            admin.replicaof("127.0.0.1", free_port())
            d.run_for(reads=150, writes=10)
            admin.replicaof("NO", "ONE")
            poll(lambda: recovered(caches), timeout=10, what="recovery")
            hits = d.redis_hits()
            poll(lambda: d.redis_hits() > hits, timeout=10, what="Redis hits again")
        d.check()
    finally:
        close_all(caches)


# -- eviction ----------------------------------------------------------------------------------


def test_eviction_under_write_heavy_load_never_serves_stale(shop):
    """maxmemory 2mb + allkeys-lru, junk pressure evicting entries *and* version
    tokens (seen in the server's ``evicted`` keyspace events) while two caches
    read and write: only misses, never a stale hit."""
    extra = {
        "maxmemory": "2mb",
        "maxmemory-policy": "allkeys-lru",
        "notify-keyspace-events": "Ee",
    }
    with own_server(**extra) as server:
        caches = caches_on(server.url, 2)
        admin = server.client()
        events = admin.pubsub()
        events.subscribe("__keyevent@0__:evicted")
        evicted: list[bytes] = []
        stop = threading.Event()

        def pressure() -> None:
            blob = b"p" * 20_000
            i = 0
            while not stop.is_set():
                admin.set(f"pressure:{i % 5000}", blob)
                i += 1
                while (m := events.get_message(timeout=0)) is not None:
                    if m["type"] == "message":
                        evicted.append(m["data"])
                stop.wait(0.002)

        pusher = threading.Thread(target=pressure, daemon=True)
        try:
            with Differential(shop, caches, write_pace=0.002) as d:
                pusher.start()
                d.run_for(reads=400, writes=60, timeout=60)
                kinds = lambda: {k.split(b":")[2] for k in evicted if k.startswith(b"qc:")}  # noqa: E731
                poll(lambda: {b"r", b"v"} <= kinds(), timeout=20, what="entries and tokens evicted")
                d.run_for(reads=100, writes=10, timeout=60)
                stop.set()
                pusher.join(10)
            d.check()
            assert d.redis_hits() > 0
        finally:
            stop.set()
            events.close()
            close_all(caches)
