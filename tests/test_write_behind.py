"""Write-behind queues: order, batching, read-your-writes, dead letters, backpressure.

Every check of what reached the database reads the database (or counts its
statements there); the queue's own figures are only compared with those.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from fractions import Fraction

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import create_async_engine

from querycache import QueryCache, QueueFull
from querycache.cli import main as cli_main
from tests.dbcount import PgStatements, SqliteTrace, poll

md = MetaData()
items = Table(
    "items",
    md,
    Column("id", Integer, primary_key=True),
    Column("v", Integer, nullable=False),
    Column("name", String(40)),
)
other = Table("other", md, Column("id", Integer, primary_key=True), Column("n", Integer))

IDLE = 3600.0  # a flush_interval that never elapses during a test: only flush() applies


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


def setup_db(url: str, rows: int = 5) -> None:
    plain = create_engine(url)
    md.create_all(plain)
    with plain.begin() as c:
        c.execute(insert(items), [{"id": i, "v": 1, "name": f"n{i}"} for i in range(rows)])
        c.execute(insert(other), [{"id": 1, "n": 0}])
    plain.dispose()


def values(url: str) -> dict[int, int]:
    plain = create_engine(url)
    with plain.connect() as c:
        out = dict(c.execute(select(items.c.id, items.c.v)).all())
    plain.dispose()
    return out


def sequence() -> list:
    """Writes whose outcome depends on their order (x2 and +1 do not commute)."""
    out = []
    for i in range(30):
        out.append(update(items).where(items.c.id == i % 3).values(v=items.c.v * 2))
        out.append(update(items).where(items.c.id == i % 3).values(v=items.c.v + i))
        if i % 7 == 0:
            out.append(insert(items).values(id=100 + i, v=i))
            out.append(delete(items).where(items.c.id == 100 + i - 7))
    return out


def test_order_preserved_same_result_as_plain(url, tmp_path):
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}", batch_size=7)
    for stmt in sequence():
        wb.submit(stmt)
    result = wb.flush()
    wb.close()
    got = values(url)

    # the same statements, one transaction each, on a plain engine
    ref = url.replace("db.sqlite", "ref.sqlite") if url.startswith("sqlite") else None
    if ref is None:  # PostgreSQL: undo by recreating the table
        plain = create_engine(url)
        md.drop_all(plain)
        plain.dispose()
        ref = url
    setup_db(ref)
    plain = create_engine(ref)
    for stmt in sequence():
        with plain.begin() as c:
            c.execute(stmt)
    plain.dispose()
    assert got == values(ref)
    assert result.applied == len(sequence()) and result.dead_lettered == ()
    engine.dispose()


def test_batches_grouped_consecutive_same_sql(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    raw = create_engine(url)
    trace = SqliteTrace(raw)
    engine = cache.wrap(raw)
    wb = cache.write_behind(
        engine, journal=f"sqlite:///{tmp_path / 'j.db'}", flush_interval=IDLE, batch_size=1000
    )
    for i in range(200):  # one batch
        wb.submit(update(items).where(items.c.id == i % 5).values(v=items.c.v + 1))
    for _ in range(3):  # a second statement: a second batch
        wb.submit(update(other).where(other.c.id == 1).values(n=other.c.n + 1))
    for _ in range(50):  # the first statement again: a third
        wb.submit(update(items).where(items.c.id == 0).values(v=items.c.v + 1))
    commits_before = trace.count("COMMIT")
    assert trace.count("UPDATE items") == 0  # nothing applied before flush
    assert wb.flush().applied == 253
    # one transaction per batch, counted by SQLite
    assert trace.count("COMMIT") - commits_before == 3
    assert wb.worker.figures.batches == 3 and wb.worker.figures.largest_batch == 200
    assert values(url)[0] == 1 + 40 + 50 and values(url)[4] == 1 + 40
    wb.close()
    engine.dispose()


def test_read_your_writes_flushes_only_pending_tables(url, tmp_path):
    setup_db(url)
    cache = QueryCache()
    raw = create_engine(url)
    counter = SqliteTrace(raw) if url.startswith("sqlite") else PgStatements(url)
    engine = cache.wrap(raw)
    read_items = select(items.c.v).where(items.c.id == 2)
    read_other = select(other.c.n).where(other.c.id == 1)

    def read(stmt):  # one transaction each: pg_stat_statements counts at its end
        with engine.connect() as c:
            return c.execute(stmt).scalar()

    assert read(read_items) == 1
    assert read(read_items) == 1  # a hit
    assert read(read_other) == 0
    # pg_stat_statements may publish a statement's count a moment after it ran
    poll(lambda: counter.count("FROM items") == 1, timeout=5.0, what="one read of items")
    assert counter.count("FROM items") == 1
    wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}", flush_interval=IDLE)
    wb.submit(update(items).where(items.c.id == 2).values(v=items.c.v + 41))
    assert read(read_other) == 0  # another table: no flush, a hit
    assert counter.count("UPDATE items") == 0 and counter.count("FROM other") == 1
    assert read(read_items) == 42  # flushed first, then re-read
    poll(lambda: counter.count("FROM items") == 2, timeout=5.0, what="the re-read")
    assert counter.count("UPDATE items") == 1
    assert counter.count("FROM items") == 2
    assert read(read_items) == 42  # cached again: a hit
    assert counter.count("FROM items") == 2
    assert not cache.write_pending  # the fast paths are free again
    wb.close()
    counter.close()
    engine.dispose()


def test_read_your_writes_off_serves_the_cached_value(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    raw = create_engine(url)
    trace = SqliteTrace(raw)
    engine = cache.wrap(raw)
    read = select(items.c.v).where(items.c.id == 2)
    with engine.connect() as c:
        assert c.execute(read).scalar() == 1
    wb = cache.write_behind(
        engine,
        journal=f"sqlite:///{tmp_path / 'j.db'}",
        flush_interval=IDLE,
        read_your_writes=False,
    )
    wb.submit(update(items).where(items.c.id == 2).values(v=5))
    with engine.connect() as c:
        assert c.execute(read).scalar() == 1  # not flushed: the cached value
    assert trace.count("UPDATE items") == 0
    wb.flush()
    with engine.connect() as c:  # the batch's commit invalidated the entry
        assert c.execute(read).scalar() == 5
    assert trace.count("FROM items") == 2
    wb.close()
    engine.dispose()


def test_dead_letters_do_not_block_and_can_be_retried(url, tmp_path, capsys):
    setup_db(url, rows=3)
    journal = f"sqlite:///{tmp_path / 'j.db'}"
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(engine, journal=journal, flush_interval=IDLE)
    for i in (10, 11, 1, 12, 13):  # id 1 exists: a unique violation inside one batch
        wb.submit(insert(items).values(id=i, v=i))
    wb.submit(text("UPDATE no_such_table SET x = 1"))  # bad SQL
    wb.submit(update(items).where(items.c.id == 10).values(v=99))
    result = wb.flush()
    assert result.applied == 5
    errors = sorted(d.error.split(":")[0] for d in result.dead_lettered)
    assert len(errors) == 2
    assert any("Integrity" in e or "UniqueViolation" in e for e in errors)
    got = values(url)
    assert {10, 11, 12, 13} <= set(got) and got[10] == 99 and got[1] == 1

    assert cli_main(["queue", "status", "--journal", journal, "--db", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"] == 0 and len(status["dead_letters"]) == 2
    assert status["applied"] >= 5
    bad = [d for d in status["dead_letters"] if "no_such_table" in d["sql"]]
    dup = [d for d in status["dead_letters"] if "no_such_table" not in d["sql"]]

    # fix the cause, re-queue the duplicate, drop the bad SQL
    with engine.begin() as c:
        c.execute(delete(items).where(items.c.id == 1))
    assert cli_main(["queue", "retry", "--journal", journal, dup[0]["id"]]) == 0
    assert cli_main(["queue", "drop", "--journal", journal, bad[0]["id"]]) == 0
    capsys.readouterr()
    result = wb.flush()  # applies the re-queued entry
    assert result.applied == 1 and result.dead_lettered == ()
    wb.close()
    assert values(url)[1] == 1
    assert cli_main(["queue", "status", "--journal", journal, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"] == 0 and status["dead_letters"] == []
    engine.dispose()


def test_transient_errors_retry_until_applied(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url, connect_args={"timeout": 0.05}))
    wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}", flush_interval=0.01)
    blocker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # "database is locked" for everyone else
    for _ in range(5):
        wb.submit(update(items).where(items.c.id == 0).values(v=items.c.v + 1))
    poll(lambda: wb.worker.figures.retries >= 2, what="the worker retried")
    assert wb.journal.pending() == 5  # nothing applied while the database is locked
    blocker.execute("ROLLBACK")
    blocker.close()
    result = wb.flush(timeout=30)
    assert result.applied == 5 and result.dead_lettered == ()
    assert values(url)[0] == 6
    wb.close()
    engine.dispose()


def test_backpressure_raise(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(
        engine,
        journal=f"sqlite:///{tmp_path / 'j.db'}",
        flush_interval=IDLE,
        max_pending=3,
        on_full="raise",
    )
    for i in range(3):
        wb.submit(update(items).where(items.c.id == i).values(v=7))
    with pytest.raises(QueueFull):
        wb.submit(update(items).where(items.c.id == 4).values(v=7))
    assert wb.journal.pending() == 3  # the refused entry was never journaled
    assert wb.flush().applied == 3
    wb.submit(update(items).where(items.c.id == 4).values(v=7))  # room again
    wb.close()
    assert values(url) == {0: 7, 1: 7, 2: 7, 3: 1, 4: 7}
    engine.dispose()


def test_backpressure_block_waits_for_room_or_times_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(
        engine,
        journal=f"sqlite:///{tmp_path / 'j.db'}",
        flush_interval=IDLE,
        max_pending=2,
        on_full="block",
        block_timeout=0.05,
    )
    wb.submit(update(items).where(items.c.id == 0).values(v=8))
    wb.submit(update(items).where(items.c.id == 1).values(v=8))
    with pytest.raises(QueueFull):  # nobody makes room within block_timeout
        wb.submit(update(items).where(items.c.id == 2).values(v=8))
    wb.block_timeout = 30.0
    returned = threading.Event()

    def blocked() -> None:
        wb.submit(update(items).where(items.c.id == 2).values(v=8))
        returned.set()

    t = threading.Thread(target=blocked)
    t.start()
    assert not returned.wait(0.2)  # still blocked: the queue is full
    wb.flush()  # makes room
    t.join(10)
    assert returned.is_set()
    wb.close()
    assert values(url) == {0: 8, 1: 8, 2: 8, 3: 1, 4: 1}
    engine.dispose()


def test_unjournalable_statements_raise_type_error_naming_the_parameter(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}")
    with pytest.raises(TypeError, match="'v'"):
        wb.submit(update(items).values(v=Fraction(1, 3)))
    with pytest.raises(TypeError):
        wb.submit(select(items))
    with pytest.raises(TypeError):
        wb.submit("UPDATE items SET v = 1")
    with pytest.raises(TypeError, match="RETURNING"):
        wb.submit(insert(items).values(id=50, v=1).returning(items.c.id))
    with pytest.raises(ValueError, match="on_full"):
        cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j2.db'}", on_full="drop")
    assert wb.journal.pending() == 0
    wb.close()
    engine.dispose()


def test_report_has_the_queue_figures(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}", flush_interval=IDLE)
    for _ in range(4):
        wb.submit(update(items).where(items.c.id == 0).values(v=items.c.v + 1))
    figures = cache.report().as_dict()["write_behind"]["queues"][0]
    assert figures["pending"] == 4 and figures["oldest_age_s"] >= 0
    wb.flush()
    figures = cache.report().as_dict()["write_behind"]["queues"][0]
    assert figures["pending"] == 0 and figures["applied"] == 4
    assert figures["batches"] == 1 and figures["dead_letters"] == 0
    wb.close()
    assert values(url)[0] == 5
    engine.dispose()


def test_async_engine_worker_is_a_task(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)

    async def main() -> tuple:
        cache = QueryCache()
        engine = cache.wrap(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"))
        wb = cache.write_behind(engine, journal=f"sqlite:///{tmp_path / 'j.db'}")
        for stmt in sequence():
            await wb.asubmit(stmt)
        read = select(func.sum(items.c.v))
        async with engine.connect() as c:  # read-your-writes on the async path too
            total = (await c.execute(read)).scalar()
        result = await wb.aflush()
        kind = type(wb._task).__name__
        await wb.aclose()
        await engine.dispose()
        return total, result.applied, kind, wb._thread

    total, applied, kind, thread = asyncio.run(main())
    assert kind == "Task" and thread is None
    got = values(url)
    ref = f"sqlite:///{tmp_path / 'ref.sqlite'}"
    setup_db(ref)
    plain = create_engine(ref)
    for stmt in sequence():
        with plain.begin() as c:
            c.execute(stmt)
    plain.dispose()
    assert got == values(ref) and total == sum(got.values())
    assert applied <= len(sequence())  # some may have been applied by the read's flush


def test_redis_journal_shared_by_two_queues(tmp_path, redis_server):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    setup_db(url)
    caches = [QueryCache(redis_url=redis_server.url, namespace="wbshare") for _ in range(2)]
    engines = [c.wrap(create_engine(url)) for c in caches]
    queues = [
        c.write_behind(e, journal="redis", queue="t_shared", flush_interval=0.01)
        for c, e in zip(caches, engines, strict=True)
    ]
    for i in range(40):
        queues[i % 2].submit(update(items).where(items.c.id == 0).values(v=items.c.v + 1))
    for q in queues:
        q.flush(timeout=30)
    assert values(url)[0] == 41
    assert sum(q.worker.figures.applied for q in queues) == 40
    for q, c, e in zip(queues, caches, engines, strict=True):
        q.close()
        c.close()
        e.dispose()


def test_journal_form_compiles_a_shape_once_and_binds_each_statements_values():
    """The compiled form is reused per statement shape (SQLAlchemy's cache key):
    every record still carries its own statement's values, and shapes whose
    SQL depends on the values (an expanding IN) are compiled every time."""
    from sqlalchemy.dialects import postgresql, sqlite

    from querycache.queues import statements

    for dialect in (postgresql.psycopg.dialect(), sqlite.dialect()):
        fresh = []
        for i in (1, 2, 3):
            stmts = [
                update(items).where(items.c.id == i).values(v=items.c.v + i),
                insert(items).values(id=i, v=i * 10, name=f"x{i}"),
                text("UPDATE items SET v = :v WHERE id = :i").bindparams(v=i, i=i + 1),
                delete(items).where(items.c.id.in_(list(range(i)))),
            ]
            for s in stmts:
                got = statements.journal_form(s, dialect)
                statements._COMPILED.clear()  # the same statement compiled from scratch
                want = statements.journal_form(s, dialect)
                assert (got.sql, got.params) == (want.sql, want.params)
                fresh.append(got.params)
                statements.journal_form(s, dialect)  # leave the shape cached again
        assert len({repr(p) for p in fresh}) == len(fresh)  # each its own values
