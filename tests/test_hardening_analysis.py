"""Correctness hardening: what the analysis and the catalog missed.

Each test runs a wrapped engine next to a plain one on the same database and
counts executions on the database side (SQLite's trace callback,
``pg_stat_statements``):

* results that depend on the clock ('now', 'today 10:00'... as parameters or
  literals) are never served from the cache;
* writes the PostgreSQL catalog did not follow (quoted function names,
  functions calling writing functions, trigger functions, column defaults);
* relations the analysis missed: SQLite attached databases and TEMP triggers,
  pragma table-valued functions, PostgreSQL reg* casts;
* one PostgreSQL database spelled in several URLs is one invalidation scope.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import make_url

import querycache
from querycache import QueryCache
from querycache.keys import scope_of
from tests.dbcount import PgStatements, SqliteTrace


def _run(engine: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params or {})]


def _outcome(engine: Any, sql: str, params: Any = None) -> Any:
    """Rows, or the class of the exception the database raised."""
    try:
        return _run(engine, sql, params)
    except exc.DBAPIError as e:
        return type(e.orig)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """(name, url) of a fresh database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        yield request.param, url
    else:
        yield request.param, request.getfixturevalue("pg_url")


def _counter(name: str, url: str, engine: Any) -> Any:
    return SqliteTrace(engine) if name == "sqlite" else PgStatements(url)


# -- 1. the clock ------------------------------------------------------------------------

# statements whose result depends on a parameter's value: (sql, clock values, fixed
# value). "{t}" is a one-row table of the case's own: the database counts executions
# per table (pg_stat_statements ignores aliases and constants)
_CLOCK_PARAMS = {
    "sqlite": [
        ("SELECT datetime(:d) AS v FROM {t}", ["now", "NOW", "nOw"], "2024-01-01 10:00:00"),
        ("SELECT unixepoch(:d) AS v FROM {t}", ["now"], "2024-01-01"),
        ("SELECT julianday(:d) AS v FROM {t}", ["Now"], "2024-01-01"),
        ("SELECT strftime('%s', :d) AS v FROM {t}", ["now"], "2024-01-01"),
        ("SELECT date(:d, 'localtime') AS v FROM {t}", ["now"], "2024-01-01"),
        ("SELECT count(*) FROM {t} WHERE datetime(:d) > ts", ["now"], "2030-01-01"),
    ],
    "postgresql": [
        (
            "SELECT CAST(:d AS timestamptz) AS v FROM {t}",
            [
                "now",
                " NOW ",
                "\tnow\n",
                "today",
                "tomorrow",
                "yesterday",
                "today 10:00",
                "10:00 tomorrow",
                "TODAY 10:00 PM",
                "y now",
                "now()",
                "today Europe/Paris",
            ],
            "2024-01-01 10:00+00",
        ),
        ("SELECT CAST(:d AS date) AS v FROM {t}", ["today", "Yesterday"], "2024-01-01"),
        ("SELECT CAST(:d AS time) AS v FROM {t}", ["now", "now EST"], "10:00"),
        ("SELECT CAST(:d AS timestamptz[]) AS v FROM {t}", ["{now,today}"], "{2024-01-01}"),
        ("SELECT CAST(:d AS tstzrange) AS v FROM {t}", ["[today,tomorrow)"], "[2024-01-01,)"),
        ("SELECT count(*) FROM {t} WHERE ts < :d", ["now", "tomorrow"], "2000-01-01"),
    ],
}
# statements whose SQL text reads the clock
_CLOCK_LITERALS = {
    "sqlite": [
        "SELECT datetime('now') AS v FROM {t}",
        "SELECT unixepoch() AS v FROM {t}",
        "SELECT unixepoch('now') AS v FROM {t}",
        "SELECT julianday('now') AS v FROM {t}",
        "SELECT strftime('%s', 'now') AS v FROM {t}",
        "SELECT strftime('%s') AS v FROM {t}",
        "SELECT date('now', 'localtime') AS v FROM {t}",
        "SELECT datetime(X'6e6f77') AS v FROM {t}",
        "SELECT current_timestamp AS v FROM {t}",
        "WITH c(x) AS (SELECT 'NOW') SELECT datetime(x) AS v FROM c, {t}",
    ],
    "postgresql": [
        "SELECT CAST('now' AS timestamptz) AS v FROM {t}",
        "SELECT 'today 10:00'::timestamp AS v FROM {t}",
        "SELECT DATE 'tomorrow' AS v FROM {t}",
        "SELECT '[today,tomorrow)'::tstzrange AS v FROM {t}",
        "SELECT count(*) FROM {t} WHERE ts < 'now'",
        "SELECT count(*) FROM {t} WHERE ts > 'yesterday allballs'",
        "SELECT localtimestamp AS v FROM {t}",
        "SELECT E'now'::timestamptz AS v FROM {t}",
    ],
}


def test_results_that_read_the_clock_are_never_cached(backend):
    name, url = backend
    plain = create_engine(url)
    with plain.begin() as conn:
        for i in range(len(_CLOCK_LITERALS[name]) + len(_CLOCK_PARAMS[name])):
            conn.execute(text(f"CREATE TABLE qct{i}z (ts timestamp)"))
            conn.execute(text(f"INSERT INTO qct{i}z VALUES ('2020-01-01 00:00:00')"))
    cache = QueryCache()
    engine = create_engine(url)
    counter = _counter(name, url, engine)
    engine = cache.wrap(engine)
    try:
        for i, template in enumerate(_CLOCK_LITERALS[name]):
            alias = f"qct{i}z"
            sql = template.format(t=alias)
            assert not querycache.analyze(sql, name).cacheable, sql
            for _ in range(3):
                wrapped = _outcome(engine, sql)
                if "count(*)" in sql:
                    assert wrapped == _outcome(plain, sql)
            assert counter.count(alias) >= 3, f"served from cache: {sql}"
        for i, (template, clock_values, fixed) in enumerate(_CLOCK_PARAMS[name]):
            alias = f"qct{len(_CLOCK_LITERALS[name]) + i}z"
            sql = template.format(t=alias)
            for value in clock_values:
                before = counter.count(alias)
                for _ in range(3):
                    wrapped = _outcome(engine, sql, {"d": value})
                    if "count(*)" in sql:
                        assert wrapped == _outcome(plain, sql, {"d": value})
                ran = counter.count(alias) - before
                assert ran >= 3, f"served from cache: {sql} {value!r}"
            # the check is per execution: a fixed value is cached as usual
            first = _outcome(engine, sql, {"d": fixed})
            before = counter.count(alias)
            assert (
                _outcome(engine, sql, {"d": fixed}) == first == _outcome(plain, sql, {"d": fixed})
            )
            # the wrapped engine did not run it again (pg_stat_statements also
            # counts the plain engine's execution; SQLite's trace does not)
            plain_runs = 1 if name == "postgresql" else 0
            assert counter.count(alias) - before == plain_runs, f"not cached: {sql} {fixed!r}"
        if name == "postgresql":
            # the wrapped engine's 'now' is the database's now() of that transaction
            for _ in range(2):
                with engine.connect() as conn:
                    now = conn.execute(text("SELECT now()")).scalar()
                    value = conn.execute(text("SELECT CAST(:d AS timestamptz)"), {"d": "now"})
                    assert value.scalar() == now
        reasons = [r for q in cache.report().as_dict()["queries"] for r in q["bypasses"]]
        assert any("parameter reads the clock" in r for r in reasons)
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()
        counter.close()


def test_analysis_names_clock_literals():
    a = querycache.analyze("SELECT * FROM t WHERE ts < 'today 10:00'", "postgresql")
    assert not a.cacheable and a.reason == "clock value: 'today 10:00'"
    # text that no date parser reads as the clock stays cacheable
    for sql in ("SELECT * FROM t WHERE name = 'nowhere'", "SELECT * FROM t WHERE d = 'epoch'"):
        assert querycache.analyze(sql, "postgresql").cacheable, sql
    assert querycache.analyze("SELECT * FROM t WHERE name = 'today'", "sqlite").cacheable
    assert querycache.analyze("SELECT * FROM t WHERE name = 'now'", "mysql").cacheable


# -- 9. writes the PostgreSQL catalog did not follow ---------------------------------------

_PG_WRITERS = [
    "CREATE TABLE cnt (n int)",
    "INSERT INTO cnt VALUES (0)",
    'CREATE FUNCTION "Bump"() RETURNS int VOLATILE LANGUAGE sql AS '
    "$$ UPDATE cnt SET n = n + 1 RETURNING n $$",
    'CREATE FUNCTION outer_bump() RETURNS int VOLATILE LANGUAGE sql AS $$ SELECT "Bump"() $$',
    "CREATE FUNCTION deep_bump() RETURNS int LANGUAGE plpgsql AS "
    "$$ BEGIN RETURN outer_bump() + 0; END $$",
    "CREATE TABLE src (id int, n int)",
    "CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.n := deep_bump(); RETURN NEW; END $$",
    "CREATE TRIGGER src_bi BEFORE INSERT ON src FOR EACH ROW EXECUTE FUNCTION trg()",
    "CREATE TABLE dflt (id int, n int DEFAULT outer_bump())",
    "CREATE DOMAIN bumped AS int DEFAULT deep_bump()",
    "CREATE TABLE dom (id int, n bumped)",
    'CREATE VIEW bumping AS SELECT "Bump"() AS n',
    "CREATE VIEW bumping_too AS SELECT n FROM bumping",
]
_PG_WRITES = [
    'SELECT "Bump"()',
    'SELECT public."Bump"() AS n',
    "SELECT outer_bump()",
    "SELECT deep_bump()",
    'SELECT "Bump"(), random()',  # the first reason is "volatile function: random"
    "INSERT INTO src (id) VALUES (1)",
    "INSERT INTO dflt (id) VALUES (1)",
    "INSERT INTO dom (id) VALUES (1)",
    "SELECT n FROM bumping",  # reading a view runs its functions
    "SELECT n FROM bumping_too",
]


@pytest.mark.parametrize("write", _PG_WRITES)
def test_postgres_writes_through_functions_triggers_and_defaults(pg_url, write):
    plain = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with plain.connect() as conn:
        for sql in _PG_WRITERS:
            conn.execute(text(sql))
    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    counter = PgStatements(pg_url)
    read = "SELECT n FROM cnt"
    try:
        assert _run(engine, read) == _run(plain, read) == [(0,)]
        before = counter.count(read)
        assert _run(engine, read) == [(0,)]
        assert counter.count(read) == before  # served from cache
        with engine.begin() as conn:
            conn.execute(text(write))
        assert _run(engine, read) == _run(plain, read) == [(1,)], write
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()
        counter.close()


# -- 10. relations the analysis missed ---------------------------------------------------


def _attach(aux_path: str) -> Any:
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute(f"ATTACH DATABASE '{aux_path}' AS aux")
        dbapi_connection.execute(
            "CREATE TEMP TRIGGER src_log AFTER INSERT ON main.src "
            "BEGIN INSERT INTO log2 VALUES (new.id); END"
        )

    return on_connect


_SQLITE_AUX = [
    # (read, write through the wrapped engine)
    ("SELECT count(*) FROM aux.t", "INSERT INTO aux.t VALUES (1)"),
    ("SELECT count(*) FROM t", "INSERT INTO main.t VALUES (2)"),
    ("SELECT count(*) FROM main.t", "INSERT INTO t VALUES (3)"),
    ("SELECT count(*) FROM aux.v", "INSERT INTO aux.t VALUES (4)"),
    ("SELECT count(*) FROM aux.log", "INSERT INTO aux.t2 VALUES (1)"),
    ("SELECT count(*) FROM log2", "INSERT INTO src VALUES (1)"),
    ("SELECT count(*) FROM only_aux", "INSERT INTO only_aux VALUES (1)"),
    ("SELECT count(*) FROM aux.only_aux", "INSERT INTO only_aux VALUES (2)"),
    ("SELECT count(*) FROM only_aux", "INSERT INTO aux.only_aux VALUES (3)"),
]


def test_sqlite_attached_databases_and_temp_triggers(tmp_path):
    main, aux = str(tmp_path / "main.sqlite"), str(tmp_path / "aux.sqlite")
    url = f"sqlite:///{main}"
    raw = sqlite3.connect(main)
    raw.execute(f"ATTACH DATABASE '{aux}' AS aux")
    with raw:
        for sql in (
            "CREATE TABLE main.t (x int)",
            "CREATE TABLE main.src (id int)",
            "CREATE TABLE main.log2 (id int)",
            "CREATE TABLE aux.t (x int)",
            "CREATE TABLE aux.t2 (x int)",
            "CREATE TABLE aux.log (x int)",
            "CREATE TABLE aux.only_aux (x int)",
            "CREATE VIEW aux.v AS SELECT x FROM t",  # aux's own t
            "CREATE TRIGGER aux.t2_log AFTER INSERT ON t2 BEGIN INSERT INTO log VALUES (1); END",
        ):
            raw.execute(sql)
    raw.close()
    plain = create_engine(url)
    event.listen(plain, "connect", _attach(aux))
    cache = QueryCache()
    engine = create_engine(url)
    event.listen(engine, "connect", _attach(aux))
    counter = SqliteTrace(engine)
    engine = cache.wrap(engine)
    try:
        for read, write in _SQLITE_AUX:
            assert _run(engine, read) == _run(plain, read), read
            before = counter.count(read)
            assert _run(engine, read) == _run(plain, read), read
            assert counter.count(read) == before, f"not cached: {read}"
            with engine.begin() as conn:
                conn.execute(text(write))
            assert _run(engine, read) == _run(plain, read), f"{read} after {write}"
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


def test_relations_that_are_no_tables_are_never_cached(tmp_path, pg_url):
    # SQLite's table-valued pragmas, also without parentheses
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    plain = create_engine(url)
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    pg_plain = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    pg_engine = cache.wrap(create_engine(pg_url))
    try:
        for read, change in [
            ("SELECT * FROM pragma_user_version", "PRAGMA user_version = 7"),
            ("SELECT name FROM pragma_table_list ORDER BY name", "CREATE TABLE extra (x int)"),
            ("SELECT count(*) FROM main.pragma_table_list", "CREATE TABLE extra2 (x int)"),
        ]:
            assert _run(engine, read) == _run(plain, read)
            with plain.begin() as conn:  # behind the cache's back
                conn.exec_driver_sql(change)
            assert _run(engine, read) == _run(plain, read), f"{read} after {change}"
        # PostgreSQL reg* casts read the catalog, not a table
        with pg_plain.connect() as conn:
            conn.execute(text("CREATE TABLE regt (x int)"))
        reads = [
            "SELECT 'regt'::regclass::oid AS o",
            "SELECT CAST('regt' AS regclass)::text AS o",
            "SELECT to_regclass('regt')::oid AS o",
        ]
        for read in reads:
            assert not querycache.analyze(read, "postgresql").cacheable, read
            assert _outcome(pg_engine, read) == _outcome(pg_plain, read)
        with pg_plain.connect() as conn:  # outside the cache
            conn.execute(text("DROP TABLE regt"))
        for read in reads:
            assert _outcome(pg_engine, read) == _outcome(pg_plain, read), read
        with pg_plain.connect() as conn:
            conn.execute(text("CREATE TABLE regt (x int)"))
        for read in reads:
            assert _outcome(pg_engine, read) == _outcome(pg_plain, read), read
    finally:
        cache.close()
        for e in (engine, plain, pg_engine, pg_plain):
            e.dispose()


# -- 11. one database, several URLs --------------------------------------------------------


def _spellings(pg_url: str, socket_dir: str) -> list[str]:
    u = make_url(pg_url)
    base = f"postgresql+psycopg://{u.username}:{u.password}@"
    return [
        f"{base}/{u.database}?host={socket_dir}&port={u.port}",
        f"{base}/{u.database}?host=localhost&port={u.port}",
        f"{base}/{u.database}?host=127.0.0.1:{u.port}",
        f"{base}/{u.database}?hostaddr=127.0.0.1&port={u.port}",
        f"{base}/?dbname={u.database}&host=127.0.0.1&port={u.port}",
        f"{base}localhost:{u.port}/{u.database}",
        f"postgresql+asyncpg://{u.username}:{u.password}@127.0.0.1:{u.port}/{u.database}",
    ]


def test_one_postgres_database_spelled_in_several_urls_is_one_scope(pg_url, postgres):
    spellings = _spellings(pg_url, str(postgres.dir))
    netloc = scope_of(make_url(pg_url), 0)
    for other in spellings:
        assert scope_of(make_url(other), 0) == netloc, other
    plain = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with plain.connect() as conn:
        conn.execute(text("CREATE TABLE spelled (n int)"))
        conn.execute(text("INSERT INTO spelled VALUES (0)"))
    counter = PgStatements(pg_url)
    read = "SELECT n FROM spelled"
    for other in spellings[:-1]:  # the sync ones
        cache = QueryCache()
        a = cache.wrap(create_engine(pg_url))
        b = cache.wrap(create_engine(other))
        try:
            for reader, writer in ((a, b), (b, a)):
                expected = _run(plain, read)
                assert _run(reader, read) == expected
                before = counter.count(read)
                assert _run(reader, read) == expected
                assert counter.count(read) == before, f"not cached: {other}"
                with writer.begin() as conn:
                    conn.execute(text("UPDATE spelled SET n = n + 1"))
                assert _run(reader, read) == _run(plain, read), other
                assert counter.count(read) == before + 2  # reader ran again, and plain
        finally:
            cache.close()
            a.dispose()
            b.dispose()
    plain.dispose()
    counter.close()


def test_scope_of_multiple_hosts_and_defaults():
    one = scope_of(make_url("postgresql://u@/db?host=h1,h2&port=5,6"), 0)
    assert one == scope_of(make_url("postgresql://u@/db?host=h2:6&host=h1:5"), 0)
    assert one != scope_of(make_url("postgresql://u@/db?host=h1:5"), 0)
    assert scope_of(make_url("postgresql://u@/db"), 0) == scope_of(
        make_url("postgresql://u@localhost:5432/db"), 0
    )
    assert scope_of(make_url("postgresql://u@h/db?host=localhost"), 0) == scope_of(
        make_url("postgresql://u@127.0.0.1/db"), 0
    )
    # no database: libpq uses the user's name
    assert scope_of(make_url("postgresql://alice@localhost"), 0) == scope_of(
        make_url("postgresql://alice@localhost/alice"), 0
    )
