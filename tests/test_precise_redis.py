"""Row precision survives the shared tier: across processes, through Redis.

Another OS process's write to customer 4 must not drop customer 3's entries —
neither the Redis entry (per-cell tokens, :mod:`querycache.tiers.redis_cells`)
nor this process's memory entry (the bus message carries the images,
:mod:`querycache.invalidation.wire`). "Kept" is a database-side execution
count of zero (SQLite's trace callback, ``pg_stat_statements``), "from the
memory tier" additionally a Redis server-side ``MGET`` count of zero; every
result is compared with a plain engine. Children are ``tests/precise_worker.py``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbcount import PgStatements, SqliteTrace
from precise_worker import COLUMNS, QUERIES, TABLE, create, expected
from redis_worker import command_counts, connected_cache

from querycache.invalidation.images import Image
from querycache.invalidation.wire import MAX_MESSAGE, decode_images, encode_images
from querycache.tiers.codec import Codec

WORKER = Path(__file__).with_name("precise_worker.py")
#: the memory tier's staleness bound (QueryCache's default): the lease's promise
BOUND = 0.1
EQ = QUERIES["eq"]


class Child:
    """One ``precise_worker.py`` process."""

    def __init__(self, cfg: dict[str, Any], log: Path) -> None:
        self.log = log
        self._err = open(log, "w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {event!r} within {timeout}s") from None
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"child exited before {event!r}:\n{self.log.read_text()[-3000:]}")
        msg = json.loads(line)
        assert msg["event"] == event, msg
        return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._err.close()


def run_write(cfg: dict[str, Any], tmp_path: Path) -> None:
    child = Child({**cfg, "mode": "write"}, tmp_path / f"w{uuid.uuid4().hex[:6]}.log")
    try:
        child.expect("ready")
        child.go()
        done = child.expect("done")
        assert child.proc.wait(30) == 0
        assert not done["errors"], done["errors"]
    finally:
        child.close()


def db_for(backend: str, tmp_path: Path, request: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'xp.sqlite'}"
    return request.getfixturevalue("pg_url")


class Reader:
    """A cache in this process with its engine and a database-side counter."""

    def __init__(self, url: str, redis_url: str, namespace: str, invalidation: str = "precise"):
        self.engine = sa.create_engine(url)
        self.count = SqliteTrace(self.engine) if url.startswith("sqlite") else PgStatements(url)
        # a long redis_timeout and staleness bound: on a loaded machine a late
        # PONG would put the lease in doubt, or drop the channel (after three
        # ping intervals, min(bound / 4, timeout / 5) each), and Redis lookups
        # are skipped meanwhile; these tests are about precision
        self.cache = connected_cache(
            redis_url=redis_url,
            namespace=namespace,
            invalidation=invalidation,
            redis_timeout=5.0,
            staleness_bound=5.0,
        )
        self.cache.wrap(self.engine)
        self.heard: list[tuple[Any, ...]] = []
        self.applied = threading.Event()
        apply = self.cache.bus.on_message  # type: ignore[union-attr]

        def on_message(*args: Any) -> None:  # records what the bus delivered
            apply(*args)
            self.heard.append(args)
            self.applied.set()

        self.cache.bus.on_message = on_message  # type: ignore[union-attr]

    def read(self, customer: int, sql: str = EQ) -> tuple[list[list[Any]], int]:
        """Rows for ``customer`` and how many times the database ran the query."""
        label = sql.split(" AS ")[1].split(",")[0]  # q_<name>
        before = self.count.count(f"AS {label}")
        with self.engine.connect() as conn:
            rows = [list(r) for r in conn.execute(sa.text(sql), {"c": customer}).all()]
        self.cache.redis.flush()  # type: ignore[union-attr]
        return rows, self.count.count(f"AS {label}") - before

    def close(self) -> None:
        self.cache.close()
        self.engine.dispose()


def truth(plain: sa.Engine, customer: int, sql: str = EQ) -> list[list[Any]]:
    sql = sql.replace(" AS q_", " AS t_")  # not counted as the cached reads
    with plain.connect() as conn:
        return [list(r) for r in conn.execute(sa.text(sql), {"c": customer}).all()]


@pytest.fixture
def namespace() -> str:
    return "xp" + uuid.uuid4().hex[:10]


# (writes: [sql, params]); each touches customer 4's rows only (ids 4, 12, 20, ... have
# customer 4 + 1 = 5: create() gives order i customer i % 8 + 1, so customer 4 has 3, 11, ...)
WRITES = {
    "insert": [[f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, 4, 5, 'new')", {"i": 1000}]],
    "update_by_customer": [[f"UPDATE {TABLE} SET total = :t WHERE customer_id = 4", {"t": 77}]],
    "update_by_id": [[f"UPDATE {TABLE} SET total = :t WHERE id = :i", {"t": 66, "i": 3}]],
    "delete_by_id": [[f"DELETE FROM {TABLE} WHERE id = :i", {"i": 11}]],
    "move_5_to_4": [[f"UPDATE {TABLE} SET customer_id = 4 WHERE id = :i", {"i": 4}]],
}


@pytest.mark.querycache_plugin_off(
    reason="another process writes: the plugin's caches (no Redis) cannot hear it, and "
    "their invalidation after the mismatch would reach this test's caches"
)
@pytest.mark.parametrize(
    "backend,write",
    [("sqlite", w) for w in WRITES] + [("postgresql", "update_by_id"), ("postgresql", "insert")],
)
def test_another_process_write_to_customer_4_keeps_customer_3(
    backend, write, tmp_path, request, redis_server, namespace
):
    """A child process writes customer 4's rows: in this process, customer 3's
    memory entry is still served (no database execution, no Redis call), a
    fresh cache gets customer 3 from Redis (no database execution), and
    customer 4 (and 5 for the move) is read again from the database, fresh."""
    url = db_for(backend, tmp_path, request)
    create(url)
    plain = sa.create_engine(url)
    a = Reader(url, redis_server.url, namespace)
    b = None
    client = a.cache.redis.clients.sync  # type: ignore[union-attr]
    try:
        for c in (3, 4, 5):
            assert a.read(c) == (truth(plain, c), 1)
            assert a.read(c) == (truth(plain, c), 0)  # memory
        run_write({"db_url": url, "redis_url": redis_server.url, "namespace": namespace,
                   "statements": WRITES[write]}, tmp_path)  # fmt: skip
        assert a.applied.wait(10), "the child's invalidation never arrived"
        ((_sid, tables, images),) = a.heard  # the message carried the images
        assert tables == {TABLE} and images[TABLE] is not None

        # Redis: a cache with an empty memory tier
        b = Reader(url, redis_server.url, namespace)
        tier = b.cache.redis
        assert b.read(3) == (truth(plain, 3), 0), (tier.healthy, tier.in_doubt, tier.pending)
        assert b.read(4) == (truth(plain, 4), 1)
        moved = write == "move_5_to_4"
        assert b.read(5) == (truth(plain, 5), 1 if moved else 0)

        # this process's memory tier: customer 3 without a Redis lookup
        mgets = command_counts(client)["mget"]
        assert a.read(3) == (truth(plain, 3), 0)
        assert command_counts(client)["mget"] == mgets, "customer 3 was not in memory any more"
        assert a.read(4) == (truth(plain, 4), 0)  # b stored it again in Redis
        assert a.read(5) == (truth(plain, 5), 0)
    finally:
        a.close()
        if b is not None:
            b.close()
        plain.dispose()


def test_table_mode_drops_customer_3(tmp_path, redis_server, namespace):
    """The same write with ``invalidation="table"`` readers drops customer 3 in
    both tiers: the counts above could fail."""
    url = db_for("sqlite", tmp_path, None)
    create(url)
    plain = sa.create_engine(url)
    a = Reader(url, redis_server.url, namespace, invalidation="table")
    b = None
    try:
        assert a.read(3) == (truth(plain, 3), 1)
        run_write({"db_url": url, "redis_url": redis_server.url, "namespace": namespace,
                   "statements": WRITES["insert"]}, tmp_path)  # fmt: skip
        assert a.applied.wait(10)
        assert a.read(3) == (truth(plain, 3), 1)  # dropped from memory and from Redis
        b = Reader(url, redis_server.url, namespace, invalidation="table")
        assert b.read(3) == (truth(plain, 3), 0)  # a stored it again
    finally:
        a.close()
        if b is not None:
            b.close()
        plain.dispose()


# -- the shared tier in one process: member sets, fallbacks, the one round trip ----------


class Pair:
    """A writer cache and fresh reader caches on one SQLite file and namespace."""

    def __init__(self, tmp_path: Path, redis_url: str, namespace: str) -> None:
        self.url = db_for("sqlite", tmp_path, None)
        create(self.url)
        self.redis_url, self.namespace = redis_url, namespace
        self.plain = sa.create_engine(self.url)
        self.writer = Reader(self.url, redis_url, namespace)
        self.readers: list[Reader] = []

    def fresh(self) -> Reader:
        r = Reader(self.url, self.redis_url, self.namespace)
        self.readers.append(r)
        return r

    def write(self, sql: str, params: Any) -> None:
        with self.writer.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def close(self) -> None:
        for r in [self.writer, *self.readers]:
            r.close()
        self.plain.dispose()


@pytest.fixture
def pair(tmp_path, redis_server, namespace):
    p = Pair(tmp_path, redis_server.url, namespace)
    yield p
    p.close()


INSERT_4 = f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, 4, 1, 'new')"


def test_a_redis_hit_is_one_mget(pair):
    """The extra cell tokens ride in the one MGET of a hit: nothing else is sent."""
    assert pair.fresh().read(3)[1] == 1
    client = pair.writer.cache.redis.clients.sync  # type: ignore[union-attr]
    reader = pair.fresh()
    before = command_counts(client)
    assert reader.read(3) == (truth(pair.plain, 3), 0)
    after = command_counts(client)
    sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    sent.pop("ping", None)  # the buses' lease pings
    sent.pop("info", None)  # command_counts itself
    sent.pop("hello", None)  # the reader's first connection from its pool
    assert sent == {"mget": 1}, sent


def test_an_evicted_member_set_drops_conservatively(pair):
    """Without the member set a writer cannot tell whom its cells concern: it
    replaces the table token. The next store registers again, and precision
    comes back."""
    assert pair.fresh().read(3)[1] == 1
    client = pair.writer.cache.redis.clients.sync  # type: ignore[union-attr]
    sets = [k for k in client.scan_iter(match=f"qc:{{{pair.namespace}}}:v:*|k")]
    assert len(sets) == 1
    client.delete(*sets)  # as an eviction would
    pair.write(INSERT_4, {"i": 1001})
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 1)  # dropped: unknown members
    pair.write(INSERT_4, {"i": 1002})
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 0)  # registered again: kept
    assert pair.fresh().read(4) == (truth(pair.plain, 4), 1)


def test_a_recreated_member_set_drops_entries_of_lost_members(pair):
    """The set is evicted and another reader recreates it with its own member:
    an entry whose member was lost must not survive a write it cannot see."""
    assert pair.fresh().read(3)[1] == 1
    client = pair.writer.cache.redis.clients.sync  # type: ignore[union-attr]
    (key,) = client.scan_iter(match=f"qc:{{{pair.namespace}}}:v:*|k")
    client.delete(key)
    narrow = QUERIES["narrow"]
    assert pair.fresh().read(5, narrow)[1] == 1  # recreates the set: the table token moves
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 1)


def test_an_image_too_large_for_cells_replaces_the_table_token(pair):
    assert pair.fresh().read(3)[1] == 1
    rows = [{"i": 2000 + c, "c": c} for c in range(100, 700)]  # 600 customers' values
    pair.write(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (:i, :c, 1, 'new')", rows)
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 1)


def test_update_of_columns_a_group_does_not_use(pair):
    """``SET status`` leaves entries reading only ``id, total`` by customer."""
    narrow = QUERIES["narrow"]
    assert pair.fresh().read(3, narrow)[1] == 1
    assert pair.fresh().read(3)[1] == 1
    pair.write(f"UPDATE {TABLE} SET status = 'sent' WHERE customer_id = 3", {})
    assert pair.fresh().read(3, narrow) == (truth(pair.plain, 3, narrow), 0)
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 1)


def test_unknown_write_replaces_the_table_token(pair):
    assert pair.fresh().read(3)[1] == 1
    pair.write(f"UPDATE {TABLE} SET total = total WHERE id IN (SELECT id FROM {TABLE})", {})
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 1)
    assert pair.fresh().read(3) == (truth(pair.plain, 3), 0)


# -- the images on the bus ---------------------------------------------------------------------


def test_images_round_trip_and_fall_back_to_unknown():
    codec = Codec(signing_key="k")
    images = {
        "a": Image({"id": [1, 2], "name": ["x", None]}, frozenset({"name"})),
        "b": None,
        "c": Image({"x": [object()]}, None),  # the codec cannot encode it
    }
    payload = encode_images(codec, images)
    assert payload is not None
    got = decode_images(codec, payload, frozenset(images))
    assert got["a"].values == {"id": [1, 2], "name": ["x", None]}  # type: ignore[union-attr]
    assert got["a"].changed == {"name"}  # type: ignore[union-attr]
    assert got["b"] is None and got["c"] is None
    # tampered or signed with another key: every table unknown
    assert decode_images(Codec(signing_key="other"), payload, frozenset("ab")) == {
        "a": None,
        "b": None,
    }
    bad = payload[:-3] + b"xyz"
    assert set(decode_images(codec, bad, frozenset("a")).values()) == {None}
    # too large for one message: unknown, and no payload at all if nothing is left
    big = {"a": Image({"id": list(range(MAX_MESSAGE))}, None)}
    assert encode_images(codec, big) is None


# -- the multi-process differential --------------------------------------------------------------


def run_children(cfgs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    children = [Child(cfg, tmp_path / f"child{i}.log") for i, cfg in enumerate(cfgs)]
    try:
        for c in children:
            c.expect("ready")
        for c in children:
            c.go()
        results = [c.expect("done", 120) for c in children]
        for c in children:
            assert c.proc.wait(30) == 0, c.log.read_text()[-3000:]
        return results
    finally:
        for c in children:
            c.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_multiprocess_differential(backend, tmp_path, request, redis_server, namespace):
    """A writer and two readers in three OS processes: random writes of every
    kind (inserts, executemany, updates by key and by customer, rows moving
    between customers, ``SET`` to an expression, deletes, writes the analysis
    cannot pin, two writes in one transaction, rollbacks) against random reads
    by ``=``, ``IN``, range, a second keyed column, a narrower column set and
    an aggregate. Every read must equal the query evaluated on a state of the
    table that existed while it ran, or at most ``BOUND`` before it started
    (the memory tier's staleness bound): zero wrong reads."""
    url = db_for(backend, tmp_path, request)
    create(url)
    pg = PgStatements(url) if backend == "postgresql" else None
    db_before = sum(pg.count(f"AS q_{q}") for q in QUERIES) if pg is not None else 0
    base = {"db_url": url, "redis_url": redis_server.url, "namespace": namespace}
    duration = 4.0
    cfgs = [{**base, "mode": "writer", "seed": 1, "duration": duration, "pace": 0.002}]
    cfgs += [{**base, "mode": "reader", "seed": s, "duration": duration} for s in (2, 3)]
    writer, *readers = run_children(cfgs, tmp_path)

    states = [writer["first"]] + [c[2] for c in writer["commits"]]
    begun = [c[0] for c in writer["commits"]]
    returned = [c[1] for c in writer["commits"]]
    assert len(returned) >= 50 and writer["rollbacks"] > 0, "the writer hardly wrote"
    assert not writer["errors"], writer["errors"]
    wrong, reads = [], 0
    for reader in readers:
        assert not reader["errors"], reader["errors"]
        for start, end, query, params, rows in reader["reads"]:
            reads += 1
            oldest = bisect_right(returned, start - BOUND)  # commits it must see
            newest = bisect_left(begun, end)  # commits it may see
            if not any(
                expected(query, params, states[v]) == rows for v in range(oldest, newest + 1)
            ):
                wrong.append((query, params, rows, oldest, newest))
    assert reads >= 1000, reads
    assert not wrong, f"{len(wrong)} wrong reads of {reads}; first: {wrong[:3]}"
    # the cache really served: the database ran a fraction of the reads
    if pg is not None:
        db_reads = sum(pg.count(f"AS q_{q}") for q in QUERIES) - db_before
    else:
        db_reads = sum(r["db_reads"] for r in readers)
    assert db_reads < 0.8 * reads, (db_reads, reads)


@pytest.mark.parametrize("backend", ["aiosqlite", "asyncpg"])
def test_async_engines_keep_customer_3_across_caches(
    backend, tmp_path, request, redis_server, namespace
):
    """The same through async engines: the writer's bump and the reader's
    registration run on redis.asyncio inside SQLAlchemy's greenlet."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    if backend == "aiosqlite":
        sync_url = db_for("sqlite", tmp_path, request)
        url = sync_url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    else:
        sync_url = request.getfixturevalue("pg_url")
        url = sa.make_url(sync_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    create(sync_url)
    plain = sa.create_engine(sync_url)
    pg = PgStatements(sync_url) if backend == "asyncpg" else None

    async def body() -> None:
        caches, engines = [], []

        def new() -> tuple[Any, Any]:
            cache = connected_cache(
                redis_url=redis_server.url, namespace=namespace, redis_timeout=0.5
            )
            engine = create_async_engine(url)
            trace = SqliteTrace(engine) if pg is None else pg
            cache.wrap(engine)
            caches.append(cache)
            engines.append(engine)
            return engine, trace

        async def read(engine: Any, trace: Any, c: int) -> tuple[list[list[Any]], int]:
            before = trace.count("AS q_eq")
            async with engine.connect() as conn:
                rows = [list(r) for r in (await conn.execute(sa.text(EQ), {"c": c})).all()]
            for cache in caches:  # the background store tasks (async engines)
                await asyncio.gather(*list(cache.redis._tasks))
            return rows, trace.count("AS q_eq") - before

        try:
            ea, ta = new()
            for c in (3, 4):
                assert await read(ea, ta, c) == (truth(plain, c), 1)
            ew, _ = new()
            async with ew.begin() as conn:
                await conn.execute(sa.text(WRITES["update_by_customer"][0][0]), {"t": 55})
            eb, tb = new()
            assert await read(eb, tb, 3) == (truth(plain, 3), 0)
            assert await read(eb, tb, 4) == (truth(plain, 4), 1)
        finally:
            for e in engines:
                await e.dispose()
            for cache in caches:
                cache.close()

    try:
        asyncio.run(body())
    finally:
        plain.dispose()
