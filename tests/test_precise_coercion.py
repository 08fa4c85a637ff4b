"""Row-precise invalidation where the database does not keep a statement's value as is.

PostgreSQL stores ``1.6`` in an ``integer`` column as 2, reads the untyped
string ``'2024-1-2'`` as a date, casts ``?::NUMERIC(5, 1)`` by rounding; SQLite
stores ``0.30000000000000004`` in a ``TEXT`` column as ``'0.3'`` and compares an
aware timestamp as its ISO text. Each test caches a read, shows it served from
the cache (a database-side execution count of zero, :mod:`dbcount`), makes a
write whose values the database coerces into a row the read must now see,
and reads again: the result must equal the plain engine's (before the fix
the cache judged the write unrelated and served the old result). Where the
same read survives an unrelated write, that is shown too (precision kept for
values Python compares exactly).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from dbcount import counter_for
from sqlalchemy import create_engine, text

from querycache import QueryCache, analyze
from querycache.integration.columns import read_kinds
from querycache.invalidation.cells import CellRegistry
from querycache.invalidation.exact import OPAQUE, TEXT
from querycache.invalidation.images import bind_write


class Env:
    """A fresh database: a plain engine, a wrapped one, and its execution counter."""

    def __init__(self, url: str) -> None:
        self.plain = create_engine(url)
        self.engine = create_engine(url)
        self.counter = counter_for(self.engine)
        self.cache = QueryCache()
        self.cache.wrap(self.engine)
        self.pg = self.plain.dialect.name == "postgresql"

    def ddl(self, *statements: str) -> None:
        with self.plain.begin() as conn:
            for s in statements:
                conn.exec_driver_sql(s)

    def read(self, sql: str, params: Any, label: str, executions: int) -> list[tuple[Any, ...]]:
        """Through the cache: equal to the plain engine's, executed ``executions`` times."""
        n0 = self.counter.count(f"AS {label}")
        with self.engine.connect() as conn:
            got = [tuple(r) for r in conn.execute(text(sql), params)]
        n1 = self.counter.count(f"AS {label}")
        with self.plain.connect() as conn:
            truth = [tuple(r) for r in conn.execute(text(sql), params)]
        assert got == truth, f"{label}: served {got}, the database says {truth}"
        assert n1 - n0 == executions, f"{label}: {n1 - n0} executions, wanted {executions}"
        return got

    def write(self, sql: str, params: Any = None, autocommit: bool = False) -> None:
        engine = self.engine.execution_options(isolation_level="AUTOCOMMIT") if autocommit else None
        with (engine or self.engine).connect() as conn:
            conn.execute(text(sql), params or {})
            if not autocommit:
                conn.commit()

    def close(self) -> None:
        self.cache.close()
        self.counter.close()
        self.engine.dispose()
        self.plain.dispose()


def _env(url: str) -> Iterator[Env]:
    env = Env(url)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Env]:
    yield from _env(pg_url)


@pytest.fixture
def lite(tmp_path: Any) -> Iterator[Env]:
    yield from _env(f"sqlite:///{tmp_path / 'db.sqlite'}")


def cached(env: Env, sql: str, params: Any, label: str) -> None:
    """Read twice: executed once, then served from the cache."""
    env.read(sql, params, label, 1)
    env.read(sql, params, label, 0)


@dataclass(frozen=True)
class Case:
    """A cached read, a write the database coerces into a row it must now see,
    and (``keep``) a write whose values compare exactly and leave it cached."""

    table: str  # CREATE TABLE body
    read: str  # WHERE ... (reading ``id``)
    params: dict[str, Any]
    values: str  # (columns) VALUES (...) of the write, ``id`` first
    row: dict[str, Any]
    keep: dict[str, Any] | None = None  # the same write, other values

    def sql(self, name: str) -> tuple[str, str]:
        read = f"SELECT id AS q_{name} FROM {name} WHERE {self.read} ORDER BY id"
        return read, f"INSERT INTO {name} {self.values}"


PG_CASES = {
    # numbers the database rounds
    "int_fraction": Case(
        "id int, n integer", "n = :n", {"n": 2}, "(id, n) VALUES (:id, :n)", {"n": 1.6}, {"n": 1}
    ),
    "int_fraction_range": Case(
        "id int, n integer", "n >= :n", {"n": 2}, "(id, n) VALUES (:id, :n)", {"n": 1.6}, {"n": 1}
    ),
    "int_decimal": Case(
        "id int, n integer",
        "n = :n",
        {"n": 3},
        "(id, n) VALUES (:id, :n)",
        {"n": Decimal("2.5")},  # numeric rounds half away from zero
        {"n": Decimal(2)},
    ),
    "real_int": Case(
        "id int, r real",
        "r = :r",
        {"r": 16777216},
        "(id, r) VALUES (:id, :r)",
        {"r": 16777217},  # float4
        {"r": 16777218},
    ),
    "float8_int": Case(
        "id int, f float8",
        "f = :f",
        {"f": 2**53},
        "(id, f) VALUES (:id, :f)",
        {"f": 2**53 + 1},
        {"f": 2**52},
    ),
    "numeric_scale": Case(
        "id int, x numeric(5, 1)",
        "x = :x",
        {"x": Decimal("1.3")},
        "(id, x) VALUES (:id, :x)",
        {"x": Decimal("1.25")},
    ),
    "nan_float": Case(
        "id int, x float8",
        "x >= :x",
        {"x": 0.0},
        "(id, x) VALUES (:id, :x)",
        {"x": float("nan")},  # sorts above every number
        {"x": -1.0},
    ),
    "nan_decimal": Case(
        "id int, d numeric",
        "d > :d",
        {"d": Decimal(0)},
        "(id, d) VALUES (:id, :d)",
        {"d": Decimal("NaN")},
        {"d": Decimal(-1)},
    ),
    # what a boolean or bytes becomes in a text column
    "bool_text": Case(
        "id int, s text",
        "s = CAST(:s AS VARCHAR)",
        {"s": "true"},
        "(id, s) VALUES (:id, :s)",
        {"s": True},
        {"s": False},
    ),
    "bytes_text": Case(
        "id int, s text",
        "s = CAST(:s AS VARCHAR)",
        {"s": "\\x616263"},
        "(id, s) VALUES (:id, :s)",
        {"s": b"abc"},
        {"s": b"abd"},
    ),
    # untyped strings take the column's type
    "untyped_date": Case(
        "id int, d date",
        "d = :d",
        {"d": dt.date(2024, 1, 2)},
        "(id, d) VALUES (:id, :d)",
        {"d": "2024-1-2"},
        {"d": dt.date(2024, 1, 3)},
    ),
    "untyped_jsonb": Case(
        "id int, j jsonb", "j = :j", {"j": '{"a":1}'}, "(id, j) VALUES (:id, :j)", {"j": '{"a": 1}'}
    ),
    "untyped_bool": Case(
        "id int, b boolean", "b = true", {}, "(id, b) VALUES (:id, :b)", {"b": "yes"}, {"b": False}
    ),
    "untyped_interval": Case(
        "id int, i interval",
        "i = :i",
        {"i": "1 day"},
        "(id, i) VALUES (:id, :i)",
        {"i": "24 hours"},
    ),
    # casts that round or truncate
    "cast_int": Case(
        "id int, n int", "n = CAST(:p AS INTEGER)", {"p": 1.6}, "(id, n) VALUES (:id, :n)", {"n": 2}
    ),
    "cast_numeric": Case(
        "id int, x numeric(5, 1)",
        "x = CAST(:p AS NUMERIC(5, 1))",
        {"p": Decimal("1.25")},
        "(id, x) VALUES (:id, :x)",
        {"x": Decimal("1.3")},
    ),
    "cast_varchar": Case(
        "id int, s text",
        "s = CAST(:p AS VARCHAR(2))",
        {"p": "abc"},
        "(id, s) VALUES (:id, CAST(:s AS VARCHAR))",
        {"s": "ab"},
    ),
    # timestamps the database truncates or rounds
    "timestamp_date": Case(
        "id int, d date",
        "d <= :b",
        {"b": dt.datetime(2024, 1, 2, 5, 0)},
        "(id, d) VALUES (:id, :d)",
        {"d": dt.datetime(2024, 1, 2, 10, 0)},  # 2024-01-02
        {"d": dt.datetime(2024, 1, 4, 10, 0)},
    ),
    "timestamp_precision": Case(
        "id int, t timestamp(0)",
        "t >= :b",
        {"b": dt.datetime(2024, 1, 2, 10, 0, 1)},
        "(id, t) VALUES (:id, :t)",
        {"t": dt.datetime(2024, 1, 2, 10, 0, 0, 600_000)},  # 10:00:01
        {"t": dt.datetime(2024, 1, 1, 10, 0)},
    ),
}

SQLITE_CASES = {
    "text_float": Case(
        "id INTEGER, s TEXT",
        "s = :s",
        {"s": "0.3"},
        "(id, s) VALUES (:id, :s)",
        {"s": 0.30000000000000004},  # 15 digits: '0.3'
    ),
    "real_text": Case(
        "id INTEGER, r REAL",
        "r = :r",
        {"r": 0.3},
        "(id, r) VALUES (:id, :r)",
        {"r": "0.30000000000000000001"},
    ),
    "real_int": Case(
        "id INTEGER, f REAL",
        "f = :f",
        {"f": 2**53},
        "(id, f) VALUES (:id, :f)",
        {"f": 2**53 + 1},
        {"f": 2**52},
    ),
    "cast_int": Case(
        "id INTEGER, n INTEGER",
        "n = CAST(:p AS INTEGER)",
        {"p": 1.6},  # truncated: 1
        "(id, n) VALUES (:id, :n)",
        {"n": 1},
    ),
    "cast_text": Case(
        "id INTEGER, s TEXT",
        "s = CAST(:p AS TEXT)",
        {"p": b"abc"},
        "(id, s) VALUES (:id, :s)",
        {"s": "abc"},
    ),
    "aware_timestamp": Case(
        "id INTEGER, t TIMESTAMP",
        "t >= :b",
        {"b": dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.UTC)},
        "(id, t) VALUES (:id, :t)",
        # 08:00 UTC, but SQLite compares the texts: '...10:00:00+02:00' >= '...09:00:00+00:00'
        {"t": dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
        {"t": dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.UTC)},
    ),
}


def run_case(env: Env, name: str, case: Case) -> None:
    env.ddl(f"CREATE TABLE {name} ({case.table})")
    read, write = case.sql(name)
    label = f"q_{name}"
    cached(env, read, case.params, label)
    if case.keep is not None:
        env.write(write, {"id": 1, **case.keep})  # compares exactly: still served
        env.read(read, case.params, label, 0)
    env.write(write, {"id": 2, **case.row})
    rows = env.read(read, case.params, label, 1)  # before the fix: the old result
    assert (2,) in rows


@pytest.mark.parametrize("name", sorted(PG_CASES))
def test_postgres_coercion(pg: Env, name: str) -> None:
    run_case(pg, name, PG_CASES[name])


@pytest.mark.parametrize("name", sorted(SQLITE_CASES))
def test_sqlite_coercion(lite: Env, name: str) -> None:
    run_case(lite, name, SQLITE_CASES[name])


def test_update_set_from_the_preimage_rounds(pg: Env) -> None:
    pg.ddl(
        "CREATE TABLE cu (id int PRIMARY KEY, n integer)",
        "INSERT INTO cu VALUES (1, 7), (2, 2)",
    )
    eq = "SELECT id AS q_pre FROM cu WHERE n = :n ORDER BY id"
    cached(pg, eq, {"n": 2}, "q_pre")
    pg.write("UPDATE cu SET n = :v WHERE id = :i", {"v": 5, "i": 1})  # 7 -> 5: kept
    pg.read(eq, {"n": 2}, "q_pre", 0)
    pg.write("UPDATE cu SET n = :v WHERE id = :i", {"v": 1.6, "i": 1})  # 5 -> 2
    assert pg.read(eq, {"n": 2}, "q_pre", 1) == [(1,), (2,)]


def test_untyped_string_in_a_where_pins_nothing(pg: Env) -> None:
    pg.ddl(
        "CREATE TABLE cw (id int PRIMARY KEY, b boolean, x int)",
        "INSERT INTO cw VALUES (1, true, 10), (2, false, 20)",
    )
    flag = "SELECT x AS q_pin FROM cw WHERE b = :b ORDER BY id"
    cached(pg, flag, {"b": True}, "q_pin")
    # under autocommit there is no pre-image: only the WHERE tells the rows' b
    pg.write("UPDATE cw SET x = 21 WHERE b = :b", {"b": False}, autocommit=True)
    pg.read(flag, {"b": True}, "q_pin", 0)
    pg.write("UPDATE cw SET x = 11 WHERE b = :b", {"b": "yes"}, autocommit=True)
    assert pg.read(flag, {"b": True}, "q_pin", 1) == [(11,)]


# -- what only the catalog tells ------------------------------------------------------------


def killed(scope: str, read: str, params: Any, write: str, row: Any, kinds: Any) -> bool:
    """Whether a committed ``write`` with ``row`` kills the cells of ``read``
    with ``params`` (the write's image bound with the catalog's ``kinds``)."""
    dialect = "sqlite" if scope.startswith("sqlite") else "postgresql"
    footprint, spec = analyze(read, dialect).footprint, analyze(write, dialect).footprint
    registry = CellRegistry()
    cells = registry.capture(scope, (spec.table,), footprint, params)
    registry.kill(scope, {spec.table: bind_write(spec, [row], kinds)})
    return any(c.dead for c in cells[1:])  # (not the epoch)


def test_catalog_kinds_on_postgres(pg: Env) -> None:
    pg.ddl(
        "CREATE COLLATION qc_ci"
        " (provider = icu, locale = 'und-u-ks-level1', deterministic = false)",
        "CREATE DOMAIN qc_hundreds AS numeric(3, -2)",
        'CREATE TABLE ck (id int, a text COLLATE qc_ci, b numeric(3, -2), c "char", d name,'
        " e qc_hundreds, f numeric(5, 2), g text)",
    )
    raw = pg.plain.raw_connection()
    try:
        kinds = read_kinds(raw.driver_connection, "postgresql")
        cursor = raw.driver_connection.cursor()
        cursor.execute(
            "INSERT INTO ck (id, a, b) VALUES (1, %(a)s::VARCHAR, %(b)s)", {"a": "é", "b": 60}
        )
        cursor.execute("SELECT id FROM ck WHERE b = 100 AND a = %(a)s::VARCHAR", {"a": "E"})
        assert cursor.fetchall() == [(1,)]  # 60 is stored as 100; 'é' equals 'E'
        raw.driver_connection.rollback()
    finally:
        raw.close()
    assert kinds == {"ck": dict.fromkeys("abcde", OPAQUE)}
    write = "INSERT INTO ck (id, a, b) VALUES (%(id)s, %(a)s::VARCHAR, %(b)s)"
    row = {"id": 1, "a": "é", "b": 60}
    for read, params in (
        ("SELECT id FROM ck WHERE b = %(b)s", {"b": 100}),
        ("SELECT id FROM ck WHERE a = %(a)s::VARCHAR", {"a": "E"}),
    ):
        assert not killed("pg", read, params, write, row, None)  # by value alone: stale
        assert killed("pg", read, params, write, row, kinds["ck"])
    # the other columns keep their precision
    keep = ("SELECT id FROM ck WHERE id = %(i)s", {"i": 2})
    assert not killed("pg", *keep, write, row, kinds["ck"])


def test_catalog_kinds_on_sqlite(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "kinds.sqlite")
    conn.create_collation("qc_len", lambda a, b: (len(a) > len(b)) - (len(a) < len(b)))
    conn.execute(
        "CREATE TABLE sk (id INTEGER, s TEXT, v VARCHAR(9) COLLATE NOCASE,"
        " r TEXT COLLATE qc_len, n NUMERIC)"
    )
    kinds = read_kinds(conn, "sqlite")
    assert kinds == {"sk": {"s": TEXT, "v": TEXT, "r": OPAQUE}}
    conn.execute("INSERT INTO sk (id, s, r) VALUES (1, 9, 'b')")
    assert conn.execute("SELECT id FROM sk WHERE s >= 10").fetchall() == [(1,)]  # '9' >= '10'
    assert conn.execute("SELECT id FROM sk WHERE r = 'x'").fetchall() == [(1,)]  # same length
    conn.close()
    write = "INSERT INTO sk (id, s, r) VALUES (?, ?, ?)"
    row = (1, 9, "b")
    for read, params in (
        ("SELECT id FROM sk WHERE s >= ?", (10,)),
        ("SELECT id FROM sk WHERE r = ?", ("x",)),
    ):
        assert not killed("sqlite-k", read, params, write, row, None)  # by value alone: stale
        assert killed("sqlite-k", read, params, write, row, kinds["sk"])
    keep = ("SELECT id FROM sk WHERE s = ?", ("10",))  # '9' is not '10', as text too
    assert not killed("sqlite-k", *keep, write, row, kinds["sk"])


@pytest.mark.parametrize("created_after_the_read", [False, True])
def test_sqlite_text_column_kinds_reach_the_write_path(lite: Env, created_after_the_read) -> None:
    """End to end: a number written to a ``TEXT`` column is stored as text and
    compared as text (``'9' >= 10``); the wrapped engine images it as the
    catalog says, also for a table created after the catalog was read."""
    if created_after_the_read:
        lite.read("SELECT 1 AS q_warm", {}, "q_warm", 1)  # the catalog is read now
        with lite.engine.begin() as conn:  # DDL through the cache: applied from its text
            conn.exec_driver_sql("CREATE TABLE tk (id INTEGER PRIMARY KEY, s TEXT)")
    else:
        lite.ddl("CREATE TABLE tk (id INTEGER PRIMARY KEY, s TEXT)")
    read = "SELECT id AS q_tk FROM tk WHERE s >= :v ORDER BY id"
    cached(lite, read, {"v": 10}, "q_tk")
    lite.write("INSERT INTO tk (id, s) VALUES (:i, :s)", {"i": 1, "s": 9})  # stored as '9'
    lite.read(read, {"v": 10}, "q_tk", 1)  # '9' >= '10' as text: the row is in the result
