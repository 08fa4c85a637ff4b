"""Catalog reads proportionate to DDL, and DDL that hides a dependency still seen.

The catalog (views, cascades, triggers, writing functions) is read on the first
statement that needs it, not at ``wrap()`` nor by DDL; committed DDL whose text
says what it created (``CREATE TABLE`` with foreign-key actions, indexes,
drops) updates it without a read; any other DDL makes the next statement read
it again. Every test is differential: a plain engine on the same database.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from querycache import QueryCache
from tests.dbcount import (
    PgStatements,
    counter_for,
    is_async,
    make_engine,
    make_url_for,
    run_sync_body,
)

# the first query of a catalog read, on each backend
CATALOG_QUERY = {
    "sqlite": "SELECT type, name, tbl_name, sql FROM",
    "postgresql": "AS relations(c0, c1)",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: Any, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def _foreign_keys_on(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _engines(url: str) -> tuple[Any, Any, Any, QueryCache]:
    plain = create_engine(url)
    engine = create_engine(url)
    if plain.dialect.name == "sqlite":  # as applications do: on every connection
        event.listen(plain, "connect", _foreign_keys_on)
        event.listen(engine, "connect", _foreign_keys_on)
    counter = counter_for(engine)
    cache = QueryCache()
    cache.wrap(engine)
    return plain, engine, counter, cache


def _rows(engine: Any, sql: str) -> list[Any]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


def _both(plain: Any, engine: Any, sql: str) -> list[Any]:
    cached = _rows(engine, sql)
    assert cached == _rows(plain, sql), sql
    return cached


def test_wrap_and_ddl_read_no_catalog_until_a_statement_needs_it(url: str) -> None:
    plain, engine, counter, cache = _engines(url)
    dialect = engine.dialect.name
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE a (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("CREATE INDEX a_n ON a (n)"))
        assert counter.count(CATALOG_QUERY[dialect]) == 0
        with engine.begin() as c:
            c.execute(text("INSERT INTO a VALUES (1, 10)"))
        assert counter.count(CATALOG_QUERY[dialect]) == 1
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


@pytest.mark.querycache_plugin_off(
    reason="counts catalog reads database-wide; the plugin's cache on the plain engine reads it too"
)
def test_create_table_with_cascade_updates_the_catalog_without_a_read(url: str) -> None:
    plain, engine, counter, cache = _engines(url)
    dialect = engine.dialect.name
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE seed (id INTEGER PRIMARY KEY)"))
            c.execute(text("INSERT INTO seed VALUES (1)"))  # the catalog is read here
        reads = counter.count(CATALOG_QUERY[dialect])
        with engine.begin() as c:
            c.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            c.execute(
                text(
                    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES parent (id) ON DELETE CASCADE, n INTEGER DEFAULT 0)"
                )
            )
        with plain.begin() as c:
            c.execute(text("INSERT INTO parent VALUES (1), (2)"))
            c.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 1), (2, 2)"))
        q = "SELECT id FROM child WHERE id = 1"
        # pg_stat_statements counts the plain engine's executions too
        plain_runs = 1 if dialect == "postgresql" else 0
        frag = "SELECT id FROM child WHERE id ="
        assert _both(plain, engine, q) == [(1,)]
        assert _both(plain, engine, q) == [(1,)]
        executions = counter.count(frag)
        assert executions == 1 + 2 * plain_runs  # the second read was served from the cache
        with engine.begin() as c:
            c.execute(text("DELETE FROM parent WHERE id = 1"))  # cascades to child 1
        assert _both(plain, engine, q) == []
        assert counter.count(frag) == executions + 1 + plain_runs
        # the catalog was not read again for the DDL
        assert counter.count(CATALOG_QUERY[dialect]) == reads
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


def _trigger_sql(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            "CREATE TRIGGER bump AFTER INSERT ON src BEGIN "
            "UPDATE tally SET n = n + 1 WHERE id = 1; END"
        ]
    return [
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN UPDATE tally SET n = n + 1 WHERE id = 1; RETURN NEW; END $$",
        "CREATE TRIGGER bump AFTER INSERT ON src FOR EACH ROW EXECUTE FUNCTION bump()",
    ]


def test_ddl_that_hides_a_write_makes_the_catalog_read_again(url: str) -> None:
    plain, engine, _counter, cache = _engines(url)
    dialect = engine.dialect.name
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE src (id INTEGER PRIMARY KEY)"))
            c.execute(text("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("INSERT INTO tally VALUES (1, 0)"))
        q = "SELECT n FROM tally WHERE id = 1"
        assert _both(plain, engine, q) == [(0,)]
        assert _both(plain, engine, q) == [(0,)]
        with engine.begin() as c:
            for sql in _trigger_sql(dialect):
                c.execute(text(sql))
        with engine.begin() as c:
            c.execute(text("INSERT INTO src VALUES (1)"))  # the trigger writes tally
        assert _both(plain, engine, q) == [(1,)]
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


def _tally_and_bump(engine: Any) -> None:
    """``tally`` (one row, n = 0) and ``bump()``, a function that increments it."""
    with engine.begin() as c:
        c.execute(text("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)"))
        c.execute(text("INSERT INTO tally VALUES (1, 0)"))
        c.execute(
            text(
                "CREATE FUNCTION bump() RETURNS integer LANGUAGE sql AS "
                "$$ UPDATE tally SET n = n + 1 WHERE id = 1 RETURNING n $$"
            )
        )


def test_a_default_calling_a_function_of_the_database_is_read_from_the_catalog(
    pg_url: str,
) -> None:
    plain, engine, _counter, cache = _engines(pg_url)
    try:
        _tally_and_bump(engine)
        q = "SELECT n FROM tally WHERE id = 1"
        assert _both(plain, engine, q) == [(0,)]
        with engine.begin() as c:
            c.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, k INTEGER DEFAULT bump())"))
        assert _both(plain, engine, q) == [(0,)]
        with engine.begin() as c:
            c.execute(text("INSERT INTO item (id) VALUES (1)"))  # the default writes tally
        assert _both(plain, engine, q) == [(1,)]
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


def test_ddl_through_one_cache_widens_what_it_forwards_to_another(pg_url: str) -> None:
    """Two caches of one process on one database: DDL through the first adds a
    DEFAULT that writes ``tally``; the second's catalog was read before it. The
    first's INSERT must reach the second as a write to ``tally`` too (the
    second's own catalog would not say so)."""
    plain, engine, _counter, cache = _engines(pg_url)
    other = QueryCache()
    second = other.wrap(create_engine(pg_url))
    try:
        _tally_and_bump(engine)
        q = "SELECT n FROM tally WHERE id = 1"
        assert _both(plain, second, q) == [(0,)]
        assert _both(plain, second, q) == [(0,)]  # stored, its catalog read
        with engine.begin() as c:
            c.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, k INTEGER DEFAULT bump())"))
        with engine.begin() as c:
            c.execute(text("INSERT INTO item (id) VALUES (1)"))  # the default writes tally
        assert _both(plain, second, q) == [(1,)]
    finally:
        cache.close()
        other.close()
        second.dispose()
        engine.dispose()
        plain.dispose()


# -- a new engine on a database the cache already knows ----------------------------

# the check a new engine runs instead of a read (PostgreSQL)
CATALOG_CHECK = "FROM pg_catalog.pg_constraint AS actions"


def _outside(url: str, statements: list[str]) -> None:
    """Run DDL on a connection querycache never sees (another program, psql)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(u.database))
        try:
            for sql in statements:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    with psycopg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
    ) as conn:
        for sql in statements:
            conn.execute(sql)


def _new_engine(cache: QueryCache, url: str) -> Any:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _foreign_keys_on)
    cache.wrap(engine)
    return engine


SCHEMA = [
    "CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE book (id INTEGER PRIMARY KEY, "
    "author_id INTEGER REFERENCES author (id) ON DELETE CASCADE, title TEXT)",
]


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_new_engine_per_test_reuses_the_catalog_of_its_database(pg_url: str, driver: str) -> None:
    """The pytest pattern: a new engine per test, create_all/drop_all around it."""
    plain = create_engine(pg_url)
    counter = PgStatements(pg_url)
    cache = QueryCache()

    def one_test(engine: Any) -> None:
        with engine.begin() as c:
            for sql in SCHEMA:  # applied from its text: no read
                c.execute(text(sql))
        with engine.begin() as c:
            c.execute(text("INSERT INTO author VALUES (1, 'ann'), (2, 'bob')"))
            c.execute(text("INSERT INTO book VALUES (1, 1, 'a'), (2, 2, 'b')"))
        q = "SELECT title FROM book WHERE author_id = 1"
        assert _both(plain, engine, q) == [("a",)]
        with engine.begin() as c:
            c.execute(text("DELETE FROM author WHERE id = 1"))  # cascades to book
        assert _both(plain, engine, q) == []
        with engine.begin() as c:
            c.execute(text("DROP TABLE book"))
            c.execute(text("DROP TABLE author"))

    try:
        for test in range(3):
            engine = make_engine(make_url_for(driver, pg_url=pg_url))
            cache.wrap(engine)
            try:
                run_sync_body(engine, one_test)
            finally:
                if not is_async(driver):
                    engine.dispose()
            # one read by the first engine; each later one checks instead
            assert counter.count(CATALOG_QUERY["postgresql"]) == 1, test
            assert counter.count(CATALOG_CHECK) == test
    finally:
        cache.close()
        counter.close()
        plain.dispose()


TALLY = [
    "CREATE TABLE src (id INTEGER PRIMARY KEY)",
    "CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)",
    "INSERT INTO tally VALUES (1, 0)",
]


def test_a_trigger_created_outside_between_two_engines_is_honoured(url: str) -> None:
    plain = create_engine(url)
    cache = QueryCache()
    dialect = plain.dialect.name
    q = "SELECT n FROM tally WHERE id = 1"
    first = _new_engine(cache, url)
    try:
        with first.begin() as c:
            for sql in TALLY:
                c.execute(text(sql))
        assert _both(plain, first, q) == [(0,)]  # read the catalog: no trigger yet
    finally:
        first.dispose()
    _outside(url, _trigger_sql(dialect))  # behind querycache's back
    second = _new_engine(cache, url)
    counter = counter_for(second)
    try:
        assert _both(plain, second, q) == [(0,)]
        assert _both(plain, second, q) == [(0,)]
        frag = "SELECT n FROM tally WHERE id ="
        served = counter.count(frag)
        assert _both(plain, second, q) == [(0,)]
        if dialect == "sqlite":  # a hit: the database did not run it
            assert counter.count(frag) == served
        with second.begin() as c:
            c.execute(text("INSERT INTO src VALUES (1)"))  # the trigger writes tally
        assert _both(plain, second, q) == [(1,)]
        if dialect == "postgresql":  # the check saw the trigger and read again
            assert counter.count(CATALOG_QUERY[dialect]) == 2
            assert counter.count(CATALOG_CHECK) == 1
    finally:
        cache.close()
        counter.close()
        second.dispose()
        plain.dispose()


def test_a_cascade_added_outside_between_two_engines_is_honoured(pg_url: str) -> None:
    plain = create_engine(pg_url)
    cache = QueryCache()
    q = "SELECT id FROM child WHERE parent_id = 1"
    first = _new_engine(cache, pg_url)
    try:
        with first.begin() as c:
            c.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            c.execute(text("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER)"))
            c.execute(text("INSERT INTO parent VALUES (1), (2)"))
            c.execute(text("INSERT INTO child VALUES (1, 1), (2, 2)"))
        assert _both(plain, first, q) == [(1,)]
    finally:
        first.dispose()
    # a key with an action on tables the catalog knows: no new name to notice
    _outside(
        pg_url,
        ["ALTER TABLE child ADD FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE"],
    )
    second = _new_engine(cache, pg_url)
    try:
        assert _both(plain, second, q) == [(1,)]
        with second.begin() as c:
            c.execute(text("DELETE FROM parent WHERE id = 1"))  # cascades to child
        assert _both(plain, second, q) == []
    finally:
        cache.close()
        second.dispose()
        plain.dispose()


def test_ddl_only_a_read_follows_is_read_by_the_next_engine(pg_url: str) -> None:
    """A rename leaves the fingerprint as it was (views refer to tables by oid);
    the engine that ran it would read the catalog again, and so does the next."""
    plain = create_engine(pg_url)
    counter = PgStatements(pg_url)
    cache = QueryCache()
    q = "SELECT n FROM v WHERE id = 1"
    first = _new_engine(cache, pg_url)
    try:
        with first.begin() as c:
            c.execute(text("CREATE TABLE u (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("INSERT INTO u VALUES (1, 0)"))  # the catalog knows u
            c.execute(text("DROP TABLE u"))  # and still does
            c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("CREATE VIEW v AS SELECT id, n FROM t"))
        with first.begin() as c:
            c.execute(text("INSERT INTO t VALUES (1, 0)"))  # read again: v reads t
        with first.begin() as c:
            c.execute(text("ALTER TABLE t RENAME TO u"))  # v now reads u
    finally:
        first.dispose()
    reads = counter.count(CATALOG_QUERY["postgresql"])
    second = _new_engine(cache, pg_url)
    try:
        assert _both(plain, second, q) == [(0,)]
        assert counter.count(CATALOG_QUERY["postgresql"]) > reads  # not reused
        with second.begin() as c:
            c.execute(text("UPDATE u SET n = 5 WHERE id = 1"))
        assert _both(plain, second, q) == [(5,)]
    finally:
        cache.close()
        counter.close()
        second.dispose()
        plain.dispose()


# what the first engine creates, what another program changes behind its back,
# and the write through the second engine that now also changes tally
_OUTSIDE_CHANGES = {
    "function replaced": (
        [
            "CREATE FUNCTION quiet() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN NEW; END $$",
            "CREATE TRIGGER quiet AFTER INSERT ON src FOR EACH ROW EXECUTE FUNCTION quiet()",
        ],
        [
            "CREATE OR REPLACE FUNCTION quiet() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE tally SET n = n + 1 WHERE id = 1; RETURN NEW; END $$"
        ],
        "INSERT INTO src (id) VALUES (1)",
    ),
    "default added": (
        [
            "CREATE FUNCTION bump() RETURNS integer LANGUAGE sql AS "
            "$$ UPDATE tally SET n = n + 1 WHERE id = 1 RETURNING n $$"
        ],
        ["ALTER TABLE src ALTER COLUMN k SET DEFAULT bump()"],
        "INSERT INTO src (id) VALUES (1)",
    ),
    "rule added": (
        [],
        ["CREATE RULE also AS ON INSERT TO src DO ALSO UPDATE tally SET n = n + 1 WHERE id = 1"],
        "INSERT INTO src (id) VALUES (1)",
    ),
    "inheritance added": (
        ["CREATE TABLE tally_part (id INTEGER PRIMARY KEY, n INTEGER)"],
        ["ALTER TABLE tally_part INHERIT tally"],
        "INSERT INTO tally_part VALUES (2, 7)",
    ),
}


@pytest.mark.parametrize("change", sorted(_OUTSIDE_CHANGES))
def test_hidden_writes_added_outside_between_two_engines_are_honoured(
    pg_url: str, change: str
) -> None:
    setup, outside, write = _OUTSIDE_CHANGES[change]
    plain = create_engine(pg_url)
    cache = QueryCache()
    q = "SELECT count(*), sum(n) FROM tally"
    first = _new_engine(cache, pg_url)
    try:
        with first.begin() as c:
            c.execute(text("CREATE TABLE src (id INTEGER PRIMARY KEY, k INTEGER)"))
            c.execute(text("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("INSERT INTO tally VALUES (1, 0)"))
            for sql in setup:
                c.execute(text(sql))
        assert _both(plain, first, q) == [(1, 0)]
    finally:
        first.dispose()
    _outside(pg_url, outside)
    second = _new_engine(cache, pg_url)
    try:
        before = _both(plain, second, q)
        with second.begin() as c:
            c.execute(text(write))
        assert _both(plain, second, q) != before
    finally:
        cache.close()
        second.dispose()
        plain.dispose()


def test_a_trigger_on_a_builtin_function_added_outside_makes_the_next_engine_read(
    pg_url: str,
) -> None:
    """No function of the database changes, nothing new depends on one: only the
    trigger row does (a read takes a C function's trigger to write anything)."""
    counter = PgStatements(pg_url)
    cache = QueryCache()
    q = "SELECT n FROM tally WHERE id = 1"
    first = _new_engine(cache, pg_url)
    try:
        with first.begin() as c:
            for sql in TALLY:
                c.execute(text(sql))
        _rows(first, q)
    finally:
        first.dispose()
    reads = counter.count(CATALOG_QUERY["postgresql"])
    _outside(
        pg_url,
        [
            "CREATE TRIGGER same BEFORE UPDATE ON src FOR EACH ROW "
            "EXECUTE FUNCTION suppress_redundant_updates_trigger()"
        ],
    )
    second = _new_engine(cache, pg_url)
    try:
        _rows(second, q)
        assert counter.count(CATALOG_QUERY["postgresql"]) == reads + 1
    finally:
        cache.close()
        counter.close()
        second.dispose()
