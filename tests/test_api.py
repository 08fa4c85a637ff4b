"""The public API: configuration errors, options, TTLs, invalidate/clear,
error transparency, fail-open on internal failures, the report, the memory
tier's budget and honest sizes, close/aclose.

Hits and misses are counted on the database side (:mod:`dbcount`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from dbcount import (
    SYNC_DRIVERS,
    User,
    counter_for,
    db_url,
    is_async,
    make_engine,
    poll,
    seed,
)
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from querycache import QueryCache, Report

U = User.__table__
USERS = "from qc_users"
NAME1 = select(U.c.name).where(U.c.id == 1)


@dataclass
class Env:
    driver: str
    url: str
    cache: QueryCache
    engine: Engine
    plain: Engine
    counter: Any

    def calls(self, fragment: str = USERS) -> int:
        return self.counter.count(fragment)

    def read(self, stmt: Any = NAME1, params: Any = None, engine: Any = None) -> list[Any]:
        with (engine or self.engine).connect() as conn:
            return [tuple(r) for r in conn.execute(stmt, params)]


def _env(driver: str, request: Any, tmp_path: Any, **cache_kw: Any) -> Env:
    url = db_url(driver, request, tmp_path)
    seed(url)
    cache = QueryCache(**cache_kw)
    engine = create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    return Env(driver, url, cache, engine, create_engine(url), counter)


@pytest.fixture(params=SYNC_DRIVERS)
def env(request, tmp_path) -> Iterator[Env]:
    e = _env(request.param, request, tmp_path)
    yield e
    e.engine.dispose()
    e.plain.dispose()
    e.counter.close()
    e.cache.close()


@pytest.fixture
def sqlite_env(request, tmp_path) -> Iterator[Env]:
    e = _env("pysqlite", request, tmp_path)
    yield e
    e.engine.dispose()
    e.plain.dispose()
    e.cache.close()


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "exc", "name"),
    [
        ({"ttl": -1}, ValueError, "ttl"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": "300"}, TypeError, "ttl"),
        ({"ttl": float("nan")}, ValueError, "ttl"),
        ({"memory_bytes": -1}, ValueError, "memory_bytes"),
        ({"memory_bytes": 0}, ValueError, "memory_bytes"),
        ({"memory_bytes": 1.5}, TypeError, "memory_bytes"),
        ({"max_entry_bytes": -3}, ValueError, "max_entry_bytes"),
        ({"memory_bytes": 1000, "max_entry_bytes": 2000}, ValueError, "max_entry_bytes"),
        ({"lock_timeout": -0.5}, ValueError, "lock_timeout"),
        ({"lock_timeout": "1"}, TypeError, "lock_timeout"),
        ({"namespace": ""}, ValueError, "namespace"),
        ({"namespace": 5}, TypeError, "namespace"),
    ],
)
def test_bad_configuration_names_the_setting(kw, exc, name):
    with pytest.raises(exc, match=name):
        QueryCache(**kw)


def test_unknown_constructor_argument_is_a_type_error():
    with pytest.raises(TypeError, match="tll"):
        QueryCache(tll=5)  # type: ignore[call-arg]


@pytest.mark.parametrize("thing", [None, "sqlite://", object(), 42, create_engine])
def test_wrap_rejects_non_engines(thing):
    with pytest.raises(TypeError, match=r"(?i)engine"):
        QueryCache().wrap(thing)


def test_wrap_rejects_a_connection_or_session(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        with engine.connect() as conn, pytest.raises(TypeError, match=r"(?i)engine"):
            QueryCache().wrap(conn)
        with pytest.raises(TypeError, match=r"(?i)engine"):
            QueryCache().wrap(Session(bind=engine))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("opts", "name"),
    [
        ({"querycache_foo": 1}, "querycache_foo"),
        ({"querycache_ttl": -1}, "querycache_ttl"),
        ({"querycache_ttl": "30"}, "querycache_ttl"),
        ({"querycache": "no"}, "querycache"),
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_bad_execution_option_raises_naming_it(sqlite_env: Env, opts, name, warm):
    env = sqlite_env
    stmt = select(U.c.name).where(U.c.id == 3)
    if warm:  # the statement is cached already: the option is still checked
        env.read(stmt)
        env.read(stmt)
    with pytest.raises((ValueError, TypeError), match=name):
        env.read(stmt.execution_options(**opts))
    with pytest.raises((ValueError, TypeError), match=name), env.engine.connect() as conn:
        conn.execution_options(**opts).execute(stmt).all()
    maker = env.cache.sessionmaker(bind=env.engine)
    with pytest.raises((ValueError, TypeError), match=name), maker() as s:
        s.scalars(select(User).where(User.id == 3).execution_options(**opts)).all()


def test_wrap_twice_is_harmless(env: Env):
    assert env.cache.wrap(env.engine) is env.engine
    assert env.cache.wrap(env.engine) is env.engine
    env.cache.sessionmaker(bind=env.engine)  # wraps again
    n = env.calls()
    for _ in range(3):
        assert env.read() == [("user1",)]
    assert env.calls() == n + 1
    with env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="once"))
    assert env.read() == [("once",)]
    assert env.calls() == n + 2
    with env.cache.sessionmaker(bind=env.engine)() as s:
        assert s.get(User, 1).name == "once"
    totals = env.cache.report().as_dict()["totals"]
    assert totals["writes"] == 1
    assert totals["errors"] == 0


def test_wrap_by_a_second_cache_is_refused(env: Env):
    with pytest.raises(ValueError):
        QueryCache().wrap(env.engine)
    assert env.read() == [("user1",)]


@pytest.mark.parametrize(
    ("driver", "discover_views"),
    [
        ("pysqlite", True),
        ("pysqlite", False),
        ("aiosqlite", True),
        ("psycopg", True),
        pytest.param("psycopg", False),
        pytest.param("asyncpg", True),
        pytest.param("asyncpg", False),
    ],
)
def test_wrap_before_first_connection(driver, discover_views, request, tmp_path):
    """The one-line usage: ``cache.wrap(create_engine(url))``, nothing connected yet."""
    url = db_url(driver, request, tmp_path)
    seed(url)
    cache = QueryCache(discover_views=discover_views)
    engine = cache.wrap(make_engine(url))

    if is_async(driver):

        async def go() -> list[Any]:
            try:
                async with engine.connect() as conn:
                    return [tuple(r) for r in await conn.execute(NAME1)]
            finally:
                await engine.dispose()

        rows = asyncio.run(go())
    else:
        try:
            with engine.connect() as conn:
                rows = [tuple(r) for r in conn.execute(NAME1)]
        finally:
            engine.dispose()
    assert rows == [("user1",)]


# -- per-statement options -----------------------------------------------------------------


def test_querycache_false_bypasses(env: Env):
    stmt = NAME1.execution_options(querycache=False)
    n = env.calls()
    for _ in range(3):
        assert env.read(stmt) == [("user1",)]
    assert env.calls() == n + 3
    with env.engine.connect() as conn:
        off = conn.execution_options(querycache=False)
        off.execute(NAME1).all()
        off.execute(NAME1).all()
    assert env.calls() == n + 5
    off_engine = env.engine.execution_options(querycache=False)
    env.read(NAME1, engine=off_engine)
    env.read(NAME1, engine=off_engine)
    assert env.calls() == n + 7
    with env.cache.sessionmaker(bind=env.engine)() as s:
        for _ in range(2):
            s.scalars(select(User).where(User.id == 1).execution_options(querycache=False)).one()
            s.execute(select(User).where(User.id == 2), execution_options={"querycache": False})
            s.expunge_all()
    assert env.calls() == n + 11
    reasons = [q["bypasses"] for q in env.cache.report().as_dict()["queries"]]
    assert any(r for r in reasons), reasons
    # the same statement without the option is cached as usual
    env.read(NAME1)
    m = env.calls()
    env.read(NAME1)
    assert env.calls() == m


@pytest.mark.parametrize("where", ["statement", "cache", "orm"])
def test_ttl_expires_an_entry(sqlite_env_factory, where):
    env = sqlite_env_factory(ttl=0.4 if where == "cache" else 300)
    stmt = NAME1.execution_options(querycache_ttl=0.4) if where == "statement" else NAME1

    def read() -> Any:
        if where == "orm":
            with env.cache.sessionmaker(bind=env.engine)() as s:
                q = select(User).where(User.id == 1).execution_options(querycache_ttl=0.4)
                return [(s.scalars(q).one().name,)]
        return env.read(stmt)

    assert read() == [("user1",)]
    n = env.calls()
    # expiry: polled with a deadline, no fixed sleep
    poll(lambda: read() == [("user1",)] and env.calls() > n, timeout=10)
    # and an expired entry is re-stored
    m = env.calls()
    assert read() == [("user1",)]
    assert env.calls() in (m, m + 1)


@pytest.fixture
def sqlite_env_factory(request, tmp_path) -> Iterator[Any]:
    made: list[Env] = []

    def make(**cache_kw: Any) -> Env:
        e = _env("pysqlite", request, tmp_path, **cache_kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.engine.dispose()
        e.plain.dispose()
        e.cache.close()


def test_statement_ttl_longer_than_default_keeps_entry(sqlite_env_factory):
    env = sqlite_env_factory(ttl=0.3)
    long = NAME1.execution_options(querycache_ttl=300)
    short = select(U.c.name).where(U.c.id == 2)
    env.read(long)
    env.read(short)
    n_short = env.calls()
    poll(lambda: env.read(short) and env.calls() > n_short, timeout=10)
    n = env.calls()
    env.read(long)
    assert env.calls() == n  # still cached


# -- invalidate / clear --------------------------------------------------------------------


@pytest.mark.querycache_plugin_off(
    reason="writes behind the cache's back through a plain engine, which the plugin would wrap"
)
def test_invalidate_and_clear(env: Env):
    tags = text("SELECT label FROM qc_tags ORDER BY id")
    maker = env.cache.sessionmaker(bind=env.engine)

    def orm_read() -> str:
        with maker() as s:
            return s.scalars(select(User).where(User.id == 1)).one().name

    env.read()
    env.read(tags)
    orm_read()
    n_users, n_tags = env.calls(), env.calls("from qc_tags")
    # an out-of-band write the cache cannot see...
    with env.plain.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="oob"))
        conn.execute(text("UPDATE qc_tags SET label = 'oob' WHERE id = 1"))
    assert env.read() == [("user1",)]  # ...is invisible until invalidated
    env.cache.invalidate("qc_users")
    assert env.read() == [("oob",)]
    assert orm_read() == "oob"
    assert env.calls() > n_users
    assert env.read(tags)[0] == ("tag1",)  # tags untouched
    assert env.calls("from qc_tags") == n_tags
    env.cache.clear()
    assert env.read(tags)[0] == ("oob",)
    assert env.calls("from qc_tags") == n_tags + 1


@pytest.mark.parametrize("name", ["QC_USERS", '"qc_users"', "main.qc_users", "public.qc_users"])
def test_invalidate_accepts_qualified_and_quoted_names(sqlite_env: Env, name):
    env = sqlite_env
    env.read()
    with env.plain.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="oob"))
    env.cache.invalidate(name)
    assert env.read() == [("oob",)]


def test_invalidate_rejects_non_names(sqlite_env: Env):
    with pytest.raises(TypeError):
        sqlite_env.cache.invalidate(U)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sqlite_env.cache.invalidate("")
    sqlite_env.cache.invalidate()  # nothing: harmless


# -- errors --------------------------------------------------------------------------------


def _raises_like(plain: Engine, wrapped: Engine, stmt: Any) -> tuple[BaseException, BaseException]:
    with pytest.raises(sa_exc.DBAPIError) as a, plain.connect() as conn:
        conn.execute(stmt).all()
    with pytest.raises(sa_exc.DBAPIError) as b, wrapped.connect() as conn:
        conn.execute(stmt).all()
    assert type(b.value) is type(a.value)
    assert type(b.value.orig) is type(a.value.orig)
    return a.value, b.value


def test_database_errors_reach_the_caller_unchanged_and_are_not_cached(env: Env):
    missing = text("SELECT x FROM qc_later")
    for _ in range(2):
        _raises_like(env.plain, env.engine, missing)
    with env.cache.sessionmaker(bind=env.engine)() as s, pytest.raises(sa_exc.DBAPIError):
        s.execute(missing)
    with env.plain.begin() as conn:
        conn.execute(text("CREATE TABLE qc_later (x INTEGER)"))
        conn.execute(text("INSERT INTO qc_later VALUES (7)"))
    assert env.read(missing) == [(7,)]
    # a runtime error inside a query
    if env.driver == "psycopg":
        bad = text("SELECT CAST(name AS integer) FROM qc_users")
        for _ in range(2):
            _raises_like(env.plain, env.engine, bad)
    # a constraint violation on write, then the same connection works and nothing is stale
    dup = insert(U).values(**{**_user(1)})
    with pytest.raises(sa_exc.IntegrityError), env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 2).values(name="lost"))
        conn.execute(dup)
    assert env.read(select(U.c.name).where(U.c.id == 2)) == [("user2",)]
    assert env.cache.report().as_dict()["totals"]["errors"] == 0


def _user(i: int) -> dict[str, Any]:
    from dbcount import user_row

    return user_row(i)


@pytest.mark.parametrize(
    "target",
    [
        "memory.put",
        pytest.param(
            "memory.get",
        ),
        "analyzer.analyze",
        "cells.capture",
    ],
)
def test_a_failure_inside_the_cache_never_fails_the_query(env: Env, monkeypatch, target):
    obj_name, meth = target.split(".")
    obj = getattr(env.cache, obj_name)
    # warm a statement first, so both the hit and the miss paths meet the failure
    warm = select(U.c.name).where(U.c.id == 4)
    env.read(warm)
    env.read(warm)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError(f"injected failure in {target}")

    # (patched on the class: these objects have __slots__)
    monkeypatch.setattr(type(obj), meth, boom)
    assert env.read(warm) == [("user4",)]
    assert env.read(NAME1) == [("user1",)]
    assert env.read(text("SELECT name FROM qc_users WHERE id = 5")) == [("user5",)]
    with env.cache.sessionmaker(bind=env.engine)() as s:
        assert s.get(User, 2).name == "user2"
        assert [u.id for u in s.scalars(select(User).order_by(User.id))] == [1, 2, 3, 4, 5]
    with env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 3).values(name="written"))
    monkeypatch.undo()
    # nothing stale afterwards
    assert env.read(select(U.c.name).where(U.c.id == 3)) == [("written",)]
    report = env.cache.report().as_dict()
    assert report["totals"]["errors"] >= 1, report["errors"]


@pytest.mark.parametrize(
    ("driver", "sql", "fragment"),
    [
        ("pysqlite", "SELECT random()", "random()"),
        ("pysqlite", "SELECT datetime('now')", "datetime("),
        ("pysqlite", "SELECT name, random() FROM qc_users WHERE id = 1", "random() from"),
        ("pysqlite", "SELECT changes()", "changes()"),
        ("pysqlite", "SELECT last_insert_rowid()", "last_insert_rowid()"),
        ("psycopg", "SELECT random()", "random()"),
        ("psycopg", "SELECT now()", "now()"),
        ("psycopg", "SELECT clock_timestamp()", "clock_timestamp()"),
        ("psycopg", "SELECT nextval('qc_seq')", "nextval("),
        ("psycopg", "SELECT name FROM qc_users WHERE id = 1 FOR UPDATE", "for update"),
        ("psycopg", "SELECT gen_random_uuid()", "gen_random_uuid()"),
        ("psycopg", "SELECT txid_current()", "txid_current()"),
        ("psycopg", "SELECT pg_backend_pid()", "pg_backend_pid()"),
    ],
)
def test_uncacheable_reads_run_every_time_and_are_counted_as_bypasses(
    driver, sql, fragment, request, tmp_path
):
    env = _env(driver, request, tmp_path)
    try:
        if driver == "psycopg":
            with env.plain.begin() as conn:
                conn.execute(text("CREATE SEQUENCE qc_seq"))
        n = env.calls(fragment)
        values = [env.read(text(sql)) for _ in range(3)]
        assert env.calls(fragment) == n + 3
        if "nextval" in sql:
            assert values == [[(1,)], [(2,)], [(3,)]]
        queries = env.cache.report().as_dict()["queries"]
        mine = [q for q in queries if q["bypasses"]]
        assert mine, queries
        assert all(isinstance(reason, str) and reason for q in mine for reason in q["bypasses"])
        assert sum(sum(q["bypasses"].values()) for q in mine) >= 3
    finally:
        env.engine.dispose()
        env.plain.dispose()
        env.counter.close()
        env.cache.close()


def test_select_func_random_core_and_orm(sqlite_env: Env):
    env = sqlite_env
    stmt = select(U.c.id, func.random().label("r")).where(U.c.id == 1)
    first = env.read(stmt)
    seen = {first[0][1]}
    for _ in range(5):
        seen.add(env.read(stmt)[0][1])
    assert len(seen) > 1  # never served from cache


# -- the report ----------------------------------------------------------------------------


def test_report_shape_and_counts(env: Env):
    secret = "hunter2-secret"
    stmt = text(f"SELECT id FROM qc_users WHERE name = '{secret}' OR id = :i")
    for _ in range(4):
        env.read(stmt, {"i": 1})  # 1 miss, 3 hits
    env.read(text("SELECT random()"))  # 1 bypass
    with env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="x"))  # 1 write, invalidation
    report = env.cache.report()
    assert isinstance(report, Report)
    d = report.as_dict()
    assert {"totals", "queries", "tables"} <= set(d)
    for key in ("calls", "hits", "misses", "bypasses", "invalidations", "writes"):
        assert isinstance(d["totals"][key], int), key
    assert d["totals"]["bytes_held"] >= 0
    for q in d["queries"]:
        for key in (
            "fingerprint",
            "calls",
            "hits",
            "misses",
            "bypasses",
            "mean_db_ms",
            "time_saved_ms",
            "bytes_held",
        ):
            assert key in q, key
    for t in d["tables"]:
        for key in ("reads", "writes", "invalidations"):
            assert key in t, key
    (q,) = [q for q in d["queries"] if "qc_users" in q["fingerprint"] and q["calls"] == 4]
    assert (q["calls"], q["hits"], q["misses"]) == (4, 3, 1)
    assert q["mean_db_ms"] > 0
    assert q["time_saved_ms"] > 0
    assert q["bytes_held"] == 0  # invalidated by the write
    users = next(t for t in d["tables"] if t.get("table", t.get("name")) == "qc_users")
    assert users["reads"] >= 4
    assert users["writes"] == 1
    assert users["invalidations"] == 1
    assert d["totals"]["writes"] == 1
    assert (
        d["totals"]["calls"]
        == d["totals"]["hits"] + d["totals"]["misses"] + (d["totals"]["bypasses"])
    )
    bypassed = [q for q in d["queries"] if q["bypasses"]]
    assert bypassed and all(isinstance(v, int) for q in bypassed for v in q["bypasses"].values())
    # text and JSON forms
    txt = report.to_text()
    assert isinstance(txt, str) and "qc_users" in txt
    js = report.to_json()
    assert json.loads(js) == json.loads(json.dumps(d))
    # no literal or parameter value leaks into the report
    assert secret not in js and secret not in txt


def test_report_counts_orm_hits(env: Env):
    maker = env.cache.sessionmaker(bind=env.engine)
    for _ in range(3):
        with maker() as s:
            s.scalars(select(User).order_by(User.id)).all()
    d = env.cache.report().as_dict()
    assert d["totals"]["hits"] >= 2
    assert d["totals"]["misses"] >= 1


# -- the memory tier -----------------------------------------------------------------------


def _blob_table(engine: Engine, rows: int, width: int) -> Table:
    blobs = Table(
        "qc_blobs", MetaData(), Column("id", Integer, primary_key=True), Column("v", String)
    )
    blobs.create(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(blobs), [{"id": i, "v": f"{i:06d}" * (width // 6)} for i in range(rows)]
        )
    return blobs


def test_byte_budget_is_respected_and_eviction_is_lru(request, tmp_path):
    url = db_url("pysqlite", request, tmp_path)
    seed(url)
    plain = create_engine(url)
    blobs = _blob_table(plain, 200, 600)
    budget = 24_000
    cache = QueryCache(memory_bytes=budget, max_entry_bytes=budget // 2)
    engine = create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)

    def read(i: int) -> None:
        with engine.connect() as conn:
            rows = conn.execute(select(blobs.c.v).where(blobs.c.id.in_([i, i + 1]))).all()
            assert len(rows) == 2

    def calls() -> int:
        return counter.count("from qc_blobs")

    try:
        held = []
        for i in range(0, 120, 2):
            read(i)
            if i == 10:
                read(0)  # touch: 0 becomes the most recently used
            held.append(cache.report().as_dict()["totals"]["bytes_held"])
            assert held[-1] <= budget
        assert max(held) > budget // 2  # the budget was actually used
        n = calls()
        read(118)  # the newest: still there
        read(116)
        assert calls() == n
        read(2)  # among the oldest, never touched: evicted
        assert calls() == n + 1
        totals = cache.report().as_dict()["totals"]
        assert totals["evictions"] > 0
        assert totals["bytes_held"] <= budget
    finally:
        engine.dispose()
        plain.dispose()
        cache.close()


def test_lru_touch_keeps_an_entry(request, tmp_path):
    url = db_url("pysqlite", request, tmp_path)
    seed(url)
    plain = create_engine(url)
    blobs = _blob_table(plain, 100, 600)
    cache = QueryCache(memory_bytes=30_000, max_entry_bytes=10_000)
    engine = create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    stmt = select(blobs.c.v).where(blobs.c.id == 0)

    def read(i: int) -> None:
        with engine.connect() as conn:
            conn.execute(select(blobs.c.v).where(blobs.c.id == i)).all()

    try:
        read(0)
        for i in range(1, 100):
            read(i)
            with engine.connect() as conn:  # keep 0 the most recently used
                conn.execute(stmt).all()
        n = counter.count("from qc_blobs")
        with engine.connect() as conn:
            conn.execute(stmt).all()
        assert counter.count("from qc_blobs") == n  # 0 survived 99 newer entries
        assert cache.report().as_dict()["totals"]["evictions"] > 0
    finally:
        engine.dispose()
        plain.dispose()
        cache.close()


def test_results_above_max_entry_bytes_are_not_cached(request, tmp_path):
    url = db_url("pysqlite", request, tmp_path)
    seed(url)
    plain = create_engine(url)
    blobs = _blob_table(plain, 50, 2000)
    cache = QueryCache(memory_bytes=1_000_000, max_entry_bytes=20_000)
    engine = create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    big = select(blobs.c.v).order_by(blobs.c.id)  # ~100 KB
    small = select(blobs.c.v).where(blobs.c.id == 3)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                assert len(conn.execute(big).all()) == 50
                assert len(conn.execute(small).all()) == 1
        assert counter.count("from qc_blobs order by") == 3
        assert counter.count("from qc_blobs where") == 1
        d = cache.report().as_dict()
        assert d["totals"]["bytes_held"] < 20_000
        (q,) = [q for q in d["queries"] if "ORDER BY" in q["fingerprint"].upper()]
        assert q["misses"] == 3 and q["hits"] == 0
        assert "larger than max_entry_bytes" in json.dumps(d) or q.get("not_stored")
    finally:
        engine.dispose()
        plain.dispose()
        cache.close()


@pytest.mark.parametrize(
    ("driver", "kind"),
    [
        ("pysqlite", "core"),
        ("psycopg", "core"),
        ("pysqlite", "orm"),
        pytest.param(
            "psycopg",
            "orm",
        ),
    ],
)
def test_sizes_are_within_20_percent_of_tracemalloc(driver, kind, request, tmp_path):
    """Memory held by cached entries (freed by ``clear()``) vs ``bytes_held``."""
    url = db_url(driver, request, tmp_path)
    seed(url)
    plain = create_engine(url)
    with plain.begin() as conn:
        from dbcount import user_row

        rows = []
        for i in range(6, 1500):
            r = user_row(1 + i % 5)
            r.update(id=i, name=f"customer number {i}", data={"n": i, "tags": ["x", f"t{i}"]})
            rows.append(r)
        conn.execute(insert(U), rows)
    cache = QueryCache(memory_bytes=256 * 2**20, max_entry_bytes=64 * 2**20)
    engine = cache.wrap(create_engine(url))
    maker = cache.sessionmaker(bind=engine)
    stmts = [select(U).where(U.c.id >= lo).order_by(U.c.id) for lo in (1, 200, 400, 600)]
    try:
        # warm everything that is not an entry (compiled caches, plans, pools)
        for s in stmts:
            _run(engine, maker, s, kind)
        cache.clear()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for s in stmts:
                _run(engine, maker, s, kind)
            gc.collect()
            held = cache.report().as_dict()["totals"]["bytes_held"]
            filled = tracemalloc.take_snapshot()
            cache.clear()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in filled.compare_to(before, "filename"))
        freed = sum(s.size_diff for s in filled.compare_to(after, "filename"))
        assert held > 100_000
        print(f"\n[{driver}/{kind}] bytes_held={held} tracemalloc freed={freed} grown={grown}")
        assert abs(freed - held) <= 0.2 * freed, (held, freed)
    finally:
        engine.dispose()
        plain.dispose()
        cache.close()


def _run(engine: Engine, maker: Any, stmt: Any, kind: str) -> None:
    if kind == "core":
        with engine.connect() as conn:
            conn.execute(stmt).all()
    else:
        with maker() as s:
            s.scalars(select(User).where(stmt.whereclause).order_by(User.id)).all()


# -- close ---------------------------------------------------------------------------------


def test_close_drops_entries_and_queries_still_work(env: Env):
    assert env.read() == [("user1",)]
    env.cache.close()
    assert env.cache.report().as_dict()["totals"]["bytes_held"] == 0
    # the engine keeps answering, correctly
    assert env.read() == [("user1",)]
    with env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="after close"))
    assert env.read() == [("after close",)]
    env.cache.close()  # twice: harmless


def test_aclose_with_an_async_engine(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    seed(url)

    async def go() -> None:
        cache = QueryCache()
        engine = cache.wrap(create_async_engine(url))
        async with engine.connect() as conn:
            assert (await conn.execute(NAME1)).all() == [("user1",)]
        await cache.aclose()
        async with engine.connect() as conn:
            assert (await conn.execute(NAME1)).all() == [("user1",)]
        await engine.dispose()
        await cache.aclose()

    asyncio.run(go())
