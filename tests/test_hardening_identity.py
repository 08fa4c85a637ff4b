"""Connections that differ in ways the URL does not show, and caches that share a database.

Each test runs the same statements through wrapped engines and plain twins (same
connect events, same database) and fails if the cache hands back what the plain
engine would not; "served from cache" is counted on the database side.

* connect events that set ``search_path``, a role, ``TimeZone``, ATTACH another
  SQLite file under one alias, ``case_sensitive_like`` (item 3);
* ``sqlite://``: one in-memory database per DBAPI connection (item 13);
* two caches of one process on one database, without Redis (item 15).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.util.concurrency import greenlet_spawn

from querycache import QueryCache
from tests.dbcount import DRIVERS, counter_for, db_url, is_pg, make_engine, sync_twin
from tests.redis_worker import connected_cache, scan_keys

# -- helpers ---------------------------------------------------------------------------------


def _sync(engine: Any) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def _in_loop(engines: list[Any], body: Callable[[], Any]) -> Any:
    """Run ``body`` (sync code) where every engine in ``engines`` works: for async
    engines inside SQLAlchemy's greenlet on one event loop, disposed in it."""
    if not any(isinstance(e, AsyncEngine) for e in engines):
        return body()

    async def main() -> Any:
        try:
            return await greenlet_spawn(body)
        finally:
            for e in engines:
                if isinstance(e, AsyncEngine):
                    await e.dispose()

    return asyncio.run(main())


def _rows(engine: Any, sql: str) -> list[tuple[Any, ...]]:
    with _sync(engine).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def _session_set(statements: list[str], pg: bool, autocommit: bool = True) -> Callable:
    """A ``connect`` listener running ``statements`` on the raw DBAPI connection
    (SQLAlchemy's documented recipe: in autocommit, so no rollback undoes them)."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        switch = pg and autocommit
        if switch:
            before = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        for sql in statements:
            cursor.execute(sql)
        cursor.close()
        if switch:
            dbapi_connection.autocommit = before

    return on_connect


# -- 3. connections that differ in ways the URL does not show ---------------------------------


def _prepare(driver: str, url: str, tmp_path: Any) -> tuple[dict[str, list[str]], list[str], str]:
    """Objects for each kind of connect event; returns (variant → statements the
    connect event runs, the statements to compare, a fragment to count)."""
    plain = create_engine(sync_twin(url))
    if is_pg(driver):
        role = f"qc_r_{uuid.uuid4().hex[:8]}"
        with plain.begin() as conn:
            conn.execute(text(f"CREATE ROLE {role}"))
            for schema, v in (("public", "public"), ("tenant_a", "a"), ("tenant_b", "b")):
                if schema != "public":
                    conn.execute(text(f"CREATE SCHEMA {schema}"))
                conn.execute(text(f"CREATE TABLE {schema}.notes (v text, ts timestamptz)"))
                conn.execute(text(f"INSERT INTO {schema}.notes VALUES ('{v}', '2024-01-01Z')"))
            conn.execute(text(f"CREATE SCHEMA {role} AUTHORIZATION {role}"))
            conn.execute(text(f"CREATE TABLE {role}.notes (v text, ts timestamptz)"))
            conn.execute(text(f"INSERT INTO {role}.notes VALUES ('role', '2024-01-01Z')"))
            conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA {role} TO {role}"))
        plain.dispose()
        variants = {
            "a": ["SET search_path TO tenant_a"],
            "b": ["SET search_path TO tenant_b"],
            "a_tokyo": ["SET search_path TO tenant_a", "SET TimeZone TO 'Asia/Tokyo'"],
            "role": [f"SET ROLE {role}"],
            "none": [],
        }
        return variants, ["SELECT v, ts::text FROM notes ORDER BY v"], "FROM notes"
    files = {}
    for name, values in (("a", ["Apple", "apple"]), ("b", ["Banana"])):
        path = tmp_path / f"{name}.sqlite"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (v text)")
        con.executemany("INSERT INTO notes VALUES (?)", [(v,) for v in values])
        con.commit()
        con.close()
        files[name] = path
    with plain.begin() as conn:
        conn.execute(text("CREATE TABLE main_t (x int)"))
    plain.dispose()
    variants = {
        "a": [f"ATTACH DATABASE '{files['a']}' AS aux"],
        "b": [f"ATTACH DATABASE '{files['b']}' AS aux"],
        "a_like": [f"ATTACH DATABASE '{files['a']}' AS aux", "PRAGMA case_sensitive_like = ON"],
    }
    statements = [
        "SELECT v FROM aux.notes ORDER BY v",
        "SELECT count(*) FROM aux.notes WHERE v LIKE 'a%'",
    ]
    return variants, statements, "FROM aux.notes"


@pytest.mark.parametrize("driver", DRIVERS)
def test_connect_events_the_url_does_not_show_keep_results_apart(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    variants, statements, fragment = _prepare(driver, url, tmp_path)
    pg = is_pg(driver)
    cache = QueryCache()
    wrapped, plain, counters = {}, {}, {}
    for name, sets in variants.items():
        p = make_engine(url)
        event.listen(_sync(p), "connect", _session_set(sets, pg))
        plain[name] = p
        w = cache.wrap(make_engine(url))
        # a connect listener added after wrap() is seen
        event.listen(_sync(w), "connect", _session_set(sets, pg))
        counters[name] = counter_for(w)
        _sync(w).dispose()  # a sync engine connected once at wrap(), before the listener
        wrapped[name] = w
    twin = cache.wrap(make_engine(url))  # the same connect event as "a": shares its results
    event.listen(_sync(twin), "connect", _session_set(variants["a"], pg))
    twin_counter = counter_for(twin)
    _sync(twin).dispose()
    engines = [*wrapped.values(), *plain.values(), twin]

    def body() -> None:
        seen = set()
        for _ in range(3):
            for name in variants:
                for sql in statements:
                    got = _rows(wrapped[name], sql)
                    assert got == _rows(plain[name], sql), (name, sql)
                    seen.add((name, sql, repr(got)))
        # the variants really differ: each statement has as many answers as variants
        assert len({r for r in seen if r[1] == statements[0]}) == len(variants)
        before = {name: c.count(fragment) for name, c in counters.items()}
        for name in variants:
            for sql in statements:
                assert _rows(wrapped[name], sql) == _rows(plain[name], sql)
        if pg:  # one counter per database: the plain twins just ran once each
            assert counters["a"].count(fragment) - before["a"] == len(variants) * len(statements)
        else:
            assert {n: c.count(fragment) for n, c in counters.items()} == before
        start = twin_counter.count(fragment)
        for sql in statements:
            assert _rows(twin, sql) == _rows(plain["a"], sql)
        expected = len(statements) if pg else 0  # PG: the plain twin's executions
        assert twin_counter.count(fragment) - start == expected

    try:
        _in_loop(engines, body)
    finally:
        cache.close()
        for e in engines:
            if isinstance(e, Engine):
                e.dispose()
        for c in [*counters.values(), twin_counter]:
            c.close()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_setting_a_rollback_undoes_is_followed_like_the_plain_engine(driver, request, tmp_path):
    """A connect event that runs ``SET`` inside a transaction: the first
    transaction sees it, the rollback at check-in undoes it (PostgreSQL)."""
    url = db_url(driver, request, tmp_path)
    _prepare(driver, url, tmp_path)
    sets = ["SET search_path TO tenant_b"]
    p = make_engine(url)
    event.listen(_sync(p), "connect", _session_set(sets, pg=True, autocommit=False))
    cache = QueryCache()
    w = cache.wrap(make_engine(url))
    event.listen(_sync(w), "connect", _session_set(sets, pg=True, autocommit=False))
    _sync(w).dispose()
    sql = "SELECT v FROM notes ORDER BY v"

    def body() -> None:
        answers = [(_rows(w, sql), _rows(p, sql)) for _ in range(4)]
        assert [a for a, _ in answers] == [b for _, b in answers]
        assert answers[0][0] == [("b",)] and answers[-1][0] == [("public",)]

    try:
        _in_loop([w, p], body)
    finally:
        cache.close()
        for e in (w, p):
            if isinstance(e, Engine):
                e.dispose()


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
def test_equal_observed_settings_share_redis_entries_across_caches(
    driver, request, tmp_path, redis_server
):
    url = db_url(driver, request, tmp_path)
    variants, statements, fragment = _prepare(driver, url, tmp_path)
    pg = is_pg(driver)
    ns = f"ident-{uuid.uuid4().hex[:8]}"
    caches = [connected_cache(redis_url=redis_server.url, namespace=ns, redis_timeout=0.5)]
    caches.append(connected_cache(redis_url=redis_server.url, namespace=ns, redis_timeout=0.5))
    engines = {}
    for i, cache in enumerate(caches):  # two "processes"
        for name in ("a", "b"):
            e = cache.wrap(create_engine(url))
            event.listen(e, "connect", _session_set(variants[name], pg))
            e.dispose()
            engines[i, name] = e
    counter = counter_for(engines[1, "a"])
    sql = statements[0]
    try:
        first = _rows(engines[0, "a"], sql)
        assert poll_keys(redis_server, ns, 1)
        start = counter.count(fragment)
        assert _rows(engines[1, "a"], sql) == first  # a Redis hit in the other "process"
        assert counter.count(fragment) == start
        other = _rows(engines[1, "b"], sql)
        assert other != first
        check = create_engine(url)
        event.listen(check, "connect", _session_set(variants["b"], pg))
        assert other == _rows(check, sql)
        check.dispose()
    finally:
        for cache in caches:
            cache.close()
        for e in engines.values():
            e.dispose()
        counter.close()


def poll_keys(redis_server: Any, ns: str, n: int) -> bool:
    from tests.dbcount import poll

    client = redis_server.client()
    return bool(poll(lambda: len(scan_keys(client, f"qc:{{{ns}}}:r:*")) >= n, timeout=5))


# -- 13. sqlite:// is one database per DBAPI connection ----------------------------------------


def _memory_pair(pool: str) -> tuple[Engine, Engine]:
    kw: dict[str, Any] = {}
    if pool == "static":
        kw = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    return create_engine("sqlite://", **kw), create_engine("sqlite://", **kw)


def test_private_memory_databases_per_thread_keep_their_rows_and_invalidations():
    cache = QueryCache()
    plain, wrapped = _memory_pair("singleton")
    wrapped = cache.wrap(wrapped)
    trace = counter_for(wrapped)
    wrapped.dispose()
    threads = {name: ThreadPoolExecutor(max_workers=1) for name in ("A", "B")}

    def in_thread(name: str, fn: Callable[[], Any]) -> Any:
        return threads[name].submit(fn).result()

    def setup(label: str) -> None:
        for e in (plain, wrapped):
            with e.begin() as conn:
                conn.execute(text("CREATE TABLE t (v text)"))
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": label})

    def read() -> tuple[list[Any], list[Any]]:
        return _rows(wrapped, "SELECT v FROM t"), _rows(plain, "SELECT v FROM t")

    def write(label: str) -> None:
        for e in (plain, wrapped):
            with e.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": label})

    try:
        for name in threads:
            in_thread(name, lambda name=name: setup(name))
        for _ in range(2):
            for name in threads:
                got, want = in_thread(name, read)
                assert got == want == [(name,)]
        runs = trace.count("SELECT v FROM t")
        assert runs == 2  # once per thread's database, then from cache
        in_thread("B", lambda: write("B2"))
        got, want = in_thread("B", read)
        assert got == want == [("B",), ("B2",)]
        assert trace.count("SELECT v FROM t") == runs + 1
        got, want = in_thread("A", read)  # B's write did not touch A's database nor its entry
        assert got == want == [("A",)]
        assert trace.count("SELECT v FROM t") == runs + 1
    finally:
        for pool in threads.values():
            pool.shutdown()
        cache.close()


@pytest.mark.parametrize("driver", ["pysqlite", "aiosqlite"])
def test_one_shared_memory_database_still_caches_and_invalidates(driver):
    cache = QueryCache()
    if driver == "pysqlite":
        plain, wrapped = _memory_pair("static")
        wrapped = cache.wrap(wrapped)
    else:  # aiosqlite's memory databases use StaticPool by default
        plain = make_engine("sqlite+aiosqlite://")
        wrapped = cache.wrap(make_engine("sqlite+aiosqlite://"))
    trace = counter_for(wrapped)
    _sync(wrapped).dispose()
    pool = ThreadPoolExecutor(max_workers=1)

    def body() -> None:
        for e in (plain, wrapped):
            with _sync(e).begin() as conn:
                conn.execute(text("CREATE TABLE t (v text)"))
                conn.execute(text("INSERT INTO t VALUES ('x')"))
        for _ in range(3):
            assert _rows(wrapped, "SELECT v FROM t") == _rows(plain, "SELECT v FROM t")
        assert trace.count("SELECT v FROM t") == 1
        for e in (plain, wrapped):
            with _sync(e).begin() as conn:
                conn.execute(text("INSERT INTO t VALUES ('y')"))
        if driver == "pysqlite":  # another thread, the same database
            got = pool.submit(_rows, wrapped, "SELECT v FROM t").result()
        else:
            got = _rows(wrapped, "SELECT v FROM t")
        assert got == _rows(plain, "SELECT v FROM t") == [("x",), ("y",)]
        assert trace.count("SELECT v FROM t") == 2

    try:
        _in_loop([plain, wrapped], body)
    finally:
        pool.shutdown()
        cache.close()


# -- 15. two caches of one process on one database ----------------------------------------------


class _Base(DeclarativeBase):
    pass


class _Note(_Base):
    __tablename__ = "qc_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[str]


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
def test_two_caches_on_one_database_invalidate_each_other(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    plain = create_engine(url)
    _Base.metadata.create_all(plain)
    with plain.begin() as conn:
        conn.execute(text("INSERT INTO qc_notes VALUES (1, 'one')"))
    one, two = QueryCache(), QueryCache()
    e1, e2 = one.wrap(create_engine(url)), two.wrap(create_engine(url))
    counter = counter_for(e2)
    e2.dispose()
    sql = "SELECT v FROM qc_notes ORDER BY id"
    per_read = 1 if is_pg(driver) else 0  # PG: the database-wide counter sees plain's read

    def check(expected: list[Any], executed: bool) -> None:
        start = counter.count("FROM qc_notes")
        assert _rows(e2, sql) == _rows(plain, sql) == expected
        assert counter.count("FROM qc_notes") - start == per_read + int(executed)

    try:
        check([("one",)], executed=True)
        check([("one",)], executed=False)
        with e1.begin() as conn:  # a write through the first cache
            conn.execute(text("UPDATE qc_notes SET v = 'uno' WHERE id = 1"))
        check([("uno",)], executed=True)
        check([("uno",)], executed=False)
        with plain.begin() as conn:  # outside both caches: the first is told
            conn.execute(text("UPDATE qc_notes SET v = 'eins' WHERE id = 1"))
        one.invalidate("qc_notes")
        check([("eins",)], executed=True)
        with plain.begin() as conn:
            conn.execute(text("UPDATE qc_notes SET v = 'un' WHERE id = 1"))
        one.clear()
        check([("un",)], executed=True)
        check([("un",)], executed=False)
        one.close()  # a closed cache forwards nothing and receives nothing; no error
        with e2.begin() as conn:
            conn.execute(text("UPDATE qc_notes SET v = 'one' WHERE id = 1"))
        check([("one",)], executed=True)
    finally:
        one.close()
        two.close()
        for e in (plain, e1, e2):
            e.dispose()
        counter.close()


class _AuxBase(DeclarativeBase):
    pass


class _Aux(_AuxBase):
    __tablename__ = "notes"
    __table_args__ = {"schema": "aux"}
    v: Mapped[str] = mapped_column(primary_key=True)


class _PgNote(DeclarativeBase):
    pass


class _Tenant(_PgNote):
    __tablename__ = "notes"
    v: Mapped[str] = mapped_column(primary_key=True)


def _alternating(variants: dict[str, list[str]], pg: bool) -> Callable:
    """A connect listener giving connections "a" and "b" settings in turn."""
    turn = iter(range(10**6))
    listeners = [_session_set(variants["a"], pg), _session_set(variants["b"], pg)]

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        listeners[next(turn) % 2](dbapi_connection, record)

    return on_connect


@pytest.mark.parametrize("driver", ["pysqlite", "psycopg"])
def test_orm_steps_aside_when_an_engines_connections_differ(driver, request, tmp_path):
    url = db_url(driver, request, tmp_path)
    variants, _, _ = _prepare(driver, url, tmp_path)
    pg = is_pg(driver)
    entity = _Tenant if pg else _Aux
    cache = QueryCache()
    w = cache.wrap(create_engine(url))
    p = create_engine(url)
    for e in (w, p):
        event.listen(e, "connect", _alternating(variants, pg))
    w.dispose()
    stmt = select(entity.v).order_by(entity.v)
    try:
        answers = []
        for maker in (cache.sessionmaker(bind=w), sessionmaker(bind=p)):
            with maker() as s1, maker() as s2:
                s1.connection(), s2.connection()  # two connections: "a", then "b"
                answers.append([list(s.scalars(stmt)) for s in (s1, s2, s1, s2)])
        assert answers[0] == answers[1]
        assert answers[0][0] != answers[0][1]
    finally:
        cache.close()
        for e in (w, p):
            e.dispose()
