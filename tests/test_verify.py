"""Verify (shadow) mode: a planted inconsistency is caught and reported; a
concurrent writer causes no false mismatch.

A row is changed *behind the cache's back* (raw sqlite3, or a plain engine on
PostgreSQL): the cache cannot see it, so it keeps serving the old row until
verify compares it with the database. Whether a read reached the database is
counted on the database side (SQLite's trace callback, pg_stat_statements).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from querycache import QueryCache
from tests.dbcount import PgStatements, SqliteTrace, poll

Q = text("SELECT id, v FROM t WHERE id = :i")


def _setup(engine):
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        c.execute(text("INSERT INTO t VALUES (1, 'a'), (2, 'b')"))


def _read(engine, i=1):
    with engine.connect() as c:
        return c.execute(Q, {"i": i}).all()


def _traced(qc, path):
    engine = create_engine(f"sqlite:///{path}")
    trace = SqliteTrace(engine)  # before the first connection (wrap() reads the catalog)
    return qc.wrap(engine), trace


@pytest.fixture
def sqlite_path(tmp_path):
    return str(tmp_path / "v.db")


def test_verify_setting_is_validated():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="verify"):
            QueryCache(verify=bad)
    for bad in ("0.1", True, None):
        with pytest.raises(TypeError, match="verify"):
            QueryCache(verify=bad)
    assert QueryCache(verify=0).verifier.rate == 0.0
    assert QueryCache(verify=1).verifier.rate == 1.0


def test_off_by_default_hits_never_reach_the_database(sqlite_path):
    qc = QueryCache()
    e, trace = _traced(qc, sqlite_path)
    _setup(e)
    for _ in range(50):
        assert _read(e) == [(1, "a")]
    assert trace.count("FROM t WHERE") == 1
    assert qc.report().as_dict()["verify"]["sampled"] == 0


def test_full_verify_catches_a_row_changed_behind_the_cache(sqlite_path, caplog):
    qc = QueryCache(verify=1.0)
    e, trace = _traced(qc, sqlite_path)
    _setup(e)
    assert _read(e) == [(1, "a")]
    assert _read(e) == [(1, "a")]  # a hit, checked: the database ran it too
    assert trace.count("FROM t WHERE") == 2

    raw = sqlite3.connect(sqlite_path)
    raw.execute("UPDATE t SET v = 'z' WHERE id = 1")
    raw.commit()
    raw.close()

    with caplog.at_level(logging.WARNING, logger="querycache"):
        # verify=1.0: the caller gets the database's row, not the stale entry
        assert _read(e) == [(1, "z")]
        for _ in range(3):
            assert _read(e) == [(1, "z")]
    v = qc.report().as_dict()["verify"]
    assert v["mismatches"] == 1  # the entry was invalidated: later hits match
    assert v["matched"] >= 3
    (detail,) = v["details"]
    assert detail["fingerprint"] == "SELECT id, v FROM t WHERE id = ?"
    assert detail["tier"] == "memory"
    assert "row 0 differs in v" in detail["diff"]
    assert "'z'" not in detail["diff"] and "'a'" not in detail["diff"]  # no values
    warnings = [r for r in caplog.records if "verify" in r.getMessage()]
    assert len(warnings) == 1
    txt = qc.report().to_text()
    assert "mismatches 1" in txt and "row 0 differs in v" in txt
    assert _read(e, 2) == [(2, "b")]


def test_sampled_verify_runs_in_the_background_and_reports(sqlite_path):
    qc = QueryCache(verify=0.5)
    e, trace = _traced(qc, sqlite_path)
    _setup(e)
    assert _read(e) == [(1, "a")]
    raw = sqlite3.connect(sqlite_path)
    raw.execute("UPDATE t SET v = 'z' WHERE id = 1")
    raw.commit()
    raw.close()
    # sampled hits are served from the cache; their checks run elsewhere
    served = {tuple(_read(e)[0]) for _ in range(40)}
    assert (1, "a") in served
    poll(lambda: qc.verifier.mismatches >= 1, timeout=10, what="a mismatch")
    assert qc.verifier.drain()
    v = qc.report().as_dict()["verify"]
    assert v["details"][0]["fingerprint"] == "SELECT id, v FROM t WHERE id = ?"
    # the mismatch invalidated the entry: the next read goes to the database
    before = trace.count("FROM t WHERE")
    assert _read(e) == [(1, "z")]
    assert trace.count("FROM t WHERE") == before + 1


def test_private_memory_database_checks_on_the_callers_connection():
    from sqlalchemy.pool import StaticPool

    qc = QueryCache(verify=0.5)
    e = qc.wrap(create_engine("sqlite://", poolclass=StaticPool))
    _setup(e)
    assert _read(e) == [(1, "a")]
    raw = e.raw_connection()  # a raw DBAPI write: the cache cannot see it
    raw.driver_connection.execute("UPDATE t SET v = 'z' WHERE id = 1")
    raw.driver_connection.commit()
    raw.close()
    poll(lambda: _read(e) == [(1, "z")], timeout=5, what="the database's row")
    assert qc.verifier.mismatches == 1


@pytest.mark.querycache_plugin_off(
    reason="writes behind the cache's back through a plain engine, which the plugin would wrap"
)
def test_postgres_planted_row_detected(pg_url):
    qc = QueryCache(verify=0.25)
    e = qc.wrap(create_engine(pg_url))
    plain = create_engine(pg_url)
    _setup(e)
    assert _read(e) == [(1, "a")]
    stmts = PgStatements(pg_url)
    with plain.begin() as c:  # behind the cache's back: plain engine
        c.execute(text("UPDATE t SET v = 'z' WHERE id = 1"))
    deadline = time.monotonic() + 10
    while qc.verifier.mismatches == 0 and time.monotonic() < deadline:
        _read(e)
    assert qc.verifier.mismatches >= 1
    assert stmts.count("FROM t WHERE") >= 1
    qc.verifier.drain()
    assert _read(e) == [(1, "z")]
    stmts.close()


@pytest.mark.querycache_plugin_off(
    reason="writes behind the cache's back through a plain engine, which the plugin would wrap"
)
def test_redis_entry_planted_row_detected(pg_url, redis_server):
    ns = "verify_redis"
    a = QueryCache(redis_url=redis_server.url, namespace=ns)
    ea = a.wrap(create_engine(pg_url))
    _setup(ea)
    assert _read(ea) == [(1, "a")]
    admin = redis_server.client()
    poll(lambda: admin.keys(f"qc:{{{ns}}}:r:*"), timeout=5, what="the Redis store")
    plain = create_engine(pg_url)
    with plain.begin() as c:
        c.execute(text("UPDATE t SET v = 'z' WHERE id = 1"))
    b = QueryCache(redis_url=redis_server.url, namespace=ns, verify=1.0)
    eb = b.wrap(create_engine(pg_url))
    assert _read(eb) == [(1, "z")]  # a Redis hit, checked: the database's row
    v = b.report().as_dict()
    assert v["totals"]["redis_hits"] == 1
    assert v["verify"]["mismatches"] == 1
    assert v["verify"]["details"][0]["tier"] == "redis"
    a.close()
    b.close()


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_no_false_mismatch_under_a_concurrent_writer(pg_url, rate):
    qc = QueryCache(verify=rate)
    e = qc.wrap(create_engine(pg_url, pool_size=8))
    _setup(e)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            with e.begin() as c:
                c.execute(text("UPDATE t SET v = :v WHERE id = 1"), {"v": f"w{n}"})

    def reader():
        try:
            while not stop.is_set():
                _read(e, 1)
                _read(e, 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    poll(lambda: qc.verifier.checked >= 150, timeout=30, what="150 checks")
    stop.set()
    for t in threads:
        t.join()
    qc.verifier.drain()
    assert not errors
    v = qc.report().as_dict()["verify"]
    assert v["mismatches"] == 0, v
    assert v["checked"] >= 150


async def test_async_engine_checks_on_the_callers_connection(sqlite_path):
    from sqlalchemy.ext.asyncio import create_async_engine

    qc = QueryCache(verify=0.5)  # async: sampled hits are checked inline
    e = qc.wrap(create_async_engine(f"sqlite+aiosqlite:///{sqlite_path}"))
    async with e.begin() as c:
        await c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        await c.execute(text("INSERT INTO t VALUES (1, 'a')"))

    async def read():
        async with e.connect() as c:
            return (await c.execute(Q, {"i": 1})).all()

    assert await read() == [(1, "a")]
    raw = sqlite3.connect(sqlite_path)
    raw.execute("UPDATE t SET v = 'z' WHERE id = 1")
    raw.commit()
    raw.close()
    for _ in range(200):
        if await read() == [(1, "z")]:
            break
    assert qc.verifier.mismatches == 1
    assert await read() == [(1, "z")]
    await e.dispose()
    await qc.aclose()
