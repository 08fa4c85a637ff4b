"""Catalog reads proportionate to DDL, and DDL that hides a dependency still seen.

The catalog (views, cascades, triggers, writing functions) is read on the first
statement that needs it, not at ``wrap()`` nor by DDL; committed DDL whose text
says what it created (``CREATE TABLE`` with foreign-key actions, indexes,
drops) updates it without a read; any other DDL makes the next statement read
it again. Every test is differential: a plain engine on the same database.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from querycache import QueryCache
from tests.dbcount import counter_for

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


def test_a_default_calling_a_function_of_the_database_is_read_from_the_catalog(
    pg_url: str,
) -> None:
    plain, engine, _counter, cache = _engines(pg_url)
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("INSERT INTO tally VALUES (1, 0)"))
            c.execute(
                text(
                    "CREATE FUNCTION bump() RETURNS integer LANGUAGE sql AS "
                    "$$ UPDATE tally SET n = n + 1 WHERE id = 1 RETURNING n $$"
                )
            )
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
        with engine.begin() as c:
            c.execute(text("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER)"))
            c.execute(text("INSERT INTO tally VALUES (1, 0)"))
            c.execute(
                text(
                    "CREATE FUNCTION bump() RETURNS integer LANGUAGE sql AS "
                    "$$ UPDATE tally SET n = n + 1 WHERE id = 1 RETURNING n $$"
                )
            )
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
