"""The read-through core on PostgreSQL through psycopg.

``TestPostgres`` runs every body of :class:`test_core_sqlite.SyncCoreSuite`
on a fresh PostgreSQL database (hits proven by ``pg_stat_statements``), plus
what only PostgreSQL has: schemas, ``search_path``, roles with row-level
security, views over base tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dbcount import PgStatements, User, seed
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from test_core_sqlite import SchemaEdgeSuite, SyncCoreSuite

from querycache import QueryCache

U = User.__table__


class TestPostgres(SyncCoreSuite):
    driver = "psycopg"


@pytest.fixture
def pg(pg_url) -> Iterator[dict[str, Any]]:
    """A seeded database, a wrapped engine, a plain engine and a statement counter."""
    seed(pg_url)
    with create_engine(pg_url).begin() as conn:
        conn.execute(text("CREATE SCHEMA sa"))
        conn.execute(text("CREATE SCHEMA sb"))
        for s in ("public", "sa", "sb"):
            conn.execute(text(f"CREATE TABLE {s}.qc_notes (id INTEGER PRIMARY KEY, v TEXT)"))
            conn.execute(text(f"INSERT INTO {s}.qc_notes VALUES (1, 'from {s}')"))
        conn.execute(text("CREATE VIEW qc_user_names AS SELECT id, name FROM qc_users"))
        conn.execute(
            text(
                "CREATE VIEW qc_user_post_counts AS SELECT u.id, count(p.id) AS n "
                "FROM qc_user_names u LEFT JOIN qc_posts p ON p.user_id = u.id GROUP BY u.id"
            )
        )
    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    plain = create_engine(pg_url)
    counter = PgStatements(pg_url)
    yield {"cache": cache, "engine": engine, "plain": plain, "counter": counter, "url": pg_url}
    engine.dispose()
    plain.dispose()
    counter.close()
    cache.close()


def _read(engine: Any, stmt: Any, params: Any = None) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt, params)]


class NoteBase(DeclarativeBase):
    pass


class Note(NoteBase):
    __tablename__ = "qc_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[str] = mapped_column(String)


notes = Table("qc_notes", MetaData(), Column("id", Integer, primary_key=True), Column("v", String))


@pytest.mark.parametrize(
    "via",
    [
        "connection",
        "session",
        pytest.param(
            "cache_session",
        ),
    ],
)
def test_schema_translate_map_changes_the_key(pg, via):
    cache, engine = pg["cache"], pg["engine"]

    def read(schema: str | None) -> list[Any]:
        eng = engine.execution_options(schema_translate_map={None: schema})
        if via == "connection":
            return _read(eng, select(notes.c.v))
        maker = cache.sessionmaker(bind=eng) if via == "cache_session" else None
        with maker() if maker else Session(bind=eng) as s:
            return [(n.v,) for n in s.scalars(select(Note))]

    for _ in range(3):
        for schema in ("sa", "sb", "public", None):
            assert read(schema) == [(f"from {schema or 'public'}",)], schema


def test_schema_translate_map_per_statement(pg):
    engine = pg["engine"]
    for _ in range(2):
        for schema in ("sa", "sb"):
            stmt = select(notes.c.v).execution_options(schema_translate_map={None: schema})
            assert _read(engine, stmt) == [(f"from {schema}",)]
            with Session(bind=engine) as s:
                got = s.scalars(
                    select(Note).execution_options(schema_translate_map={None: schema})
                ).one()
                assert got.v == f"from {schema}"


@pytest.mark.parametrize(
    ("how", "expected"),
    [("SET search_path TO sb", "from sb"), ("SET search_path = sa, public", "from sa")],
)
def test_search_path_connection_is_never_served_another_paths_result(pg, how, expected):
    engine = pg["engine"]
    stmt = text("SELECT v FROM qc_notes")
    assert _read(engine, stmt) == [("from public",)]
    assert _read(engine, stmt) == [("from public",)]  # cached for the default path
    with engine.connect() as conn:
        conn.exec_driver_sql(how)
        for _ in range(3):
            assert conn.execute(stmt).all() == [(expected,)]
            assert conn.execute(select(notes.c.v)).all() == [(expected,)]
        conn.commit()
        assert conn.execute(stmt).all() == [(expected,)]
        with Session(bind=conn) as s:
            assert [n.v for n in s.scalars(select(Note))] == [expected]
    # the pool hands out the same connection again (search_path still set): still right
    for _ in range(3):
        with engine.connect() as conn:
            raw = conn.connection.driver_connection  # psycopg itself: not through the cache
            path = raw.execute("SHOW search_path").fetchone()[0]
            want = "from public" if path.startswith('"$user"') else expected
            assert conn.execute(stmt).all() == [(want,)]
    # and a fresh connection with the default path is served the default result
    fresh = create_engine(pg["url"])
    pg["cache"].wrap(fresh)
    try:
        assert _read(fresh, stmt) == [("from public",)]
    finally:
        fresh.dispose()


def test_set_role_with_row_level_security_never_serves_another_roles_rows(pg):
    engine, plain = pg["engine"], pg["plain"]
    with plain.begin() as conn:
        conn.execute(text("CREATE TABLE qc_secrets (owner TEXT, v TEXT)"))
        conn.execute(
            text("INSERT INTO qc_secrets VALUES ('alice', 'alice secret'), ('bob', 'bob secret')")
        )
        conn.execute(text("ALTER TABLE qc_secrets ENABLE ROW LEVEL SECURITY"))
        conn.execute(text("CREATE POLICY own ON qc_secrets USING (owner = current_user)"))
        for role in ("alice", "bob"):
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            conn.execute(text(f"CREATE ROLE {role}"))
            conn.execute(text(f"GRANT SELECT ON qc_secrets TO {role}"))
    stmt = select(text("v")).select_from(text("qc_secrets")).order_by(text("v"))
    raw = text("SELECT v FROM qc_secrets ORDER BY v")
    try:
        # the owner (a superuser) sees both rows, and that gets cached
        assert _read(engine, raw) == [("alice secret",), ("bob secret",)]
        assert _read(engine, raw) == [("alice secret",), ("bob secret",)]
        for role in ("alice", "bob", "alice"):
            with engine.connect() as conn:
                conn.exec_driver_sql(f"SET ROLE {role}")
                for _ in range(2):
                    assert conn.execute(raw).all() == [(f"{role} secret",)]
                    assert conn.execute(stmt).all() == [(f"{role} secret",)]
                conn.exec_driver_sql("RESET ROLE")
                conn.rollback()
        with engine.connect() as conn:
            conn.execute(text("SELECT set_config('role', 'bob', false)"))
            assert conn.execute(raw).all() == [("bob secret",)]
            conn.exec_driver_sql("RESET ROLE")
        assert _read(engine, raw) == [("alice secret",), ("bob secret",)]
    finally:
        engine.dispose()
        with plain.begin() as conn:
            conn.execute(text("DROP TABLE qc_secrets"))
            conn.execute(text("DROP ROLE alice"))
            conn.execute(text("DROP ROLE bob"))


@pytest.mark.parametrize(
    "view", ["qc_user_names", "qc_user_post_counts"], ids=["view", "view_of_view"]
)
def test_view_readers_are_invalidated_by_base_table_writes(pg, view):
    engine, counter = pg["engine"], pg["counter"]
    stmt = text(f"SELECT * FROM {view} ORDER BY id")
    first = _read(engine, stmt)
    n = counter.count(f"from {view}")
    assert _read(engine, stmt) == first
    assert counter.count(f"from {view}") == n  # served from cache
    with engine.begin() as conn:
        if view == "qc_user_names":
            conn.execute(update(U).where(U.c.id == 1).values(name="renamed"))
        else:  # a base table of the inner view
            conn.execute(
                text(
                    "INSERT INTO qc_users SELECT 6, 'six', score, born, seen, uid, "
                    "data, active FROM qc_users WHERE id = 1"
                )
            )
    after = _read(engine, stmt)
    assert after == _read(pg["plain"], stmt)
    assert after != first
    assert counter.count(f"from {view}") > n


def test_view_created_after_wrap_is_followed(pg):
    engine = pg["engine"]
    with engine.begin() as conn:  # DDL through the wrapped engine
        conn.execute(text("CREATE VIEW qc_tag_labels AS SELECT label FROM qc_tags"))
    stmt = text("SELECT label FROM qc_tag_labels ORDER BY label")
    assert _read(engine, stmt) == [("tag1",), ("tag2",), ("tag3",)]
    assert _read(engine, stmt) == [("tag1",), ("tag2",), ("tag3",)]
    with engine.begin() as conn:
        conn.execute(text("UPDATE qc_tags SET label = 'zz' WHERE id = 1"))
    assert _read(engine, stmt) == [("tag2",), ("tag3",), ("zz",)]


def test_view_created_outside_then_written_through_cache_with_explicit_dependency(pg_url):
    """``view_dependencies`` declares what discovery cannot know yet."""
    seed(pg_url)
    cache = QueryCache(view_dependencies={"qc_late_view": ["qc_tags"]}, discover_views=False)
    engine = create_engine(pg_url)
    # first connect before wrapping: see test_api.py::test_wrap_before_first_connection
    engine.connect().close()
    cache.wrap(engine)
    plain = create_engine(pg_url)
    try:
        with plain.begin() as conn:
            conn.execute(text("CREATE VIEW qc_late_view AS SELECT label FROM qc_tags"))
        stmt = text("SELECT label FROM qc_late_view ORDER BY label")
        assert _read(engine, stmt)[0] == ("tag1",)
        with engine.begin() as conn:
            conn.execute(text("UPDATE qc_tags SET label = 'zz' WHERE id = 1"))
        assert _read(engine, stmt) == _read(plain, stmt)
    finally:
        engine.dispose()
        plain.dispose()


def test_postgres_native_types_match_uncached(pg):
    engine, plain = pg["engine"], pg["plain"]
    stmt = text(
        "SELECT 1::int2 AS a, 2::int8 AS b, 1.5::float4 AS c, 2.25::numeric(10,3) AS d, "
        "'2024-01-02 03:04:05+02'::timestamptz AS e, '2024-01-02 03:04:05'::timestamp AS f, "
        "'2024-01-02'::date AS g, '03:04'::time AS h, '1 day 2 hours'::interval AS i, "
        "'{\"a\": [1, 2.5, null]}'::jsonb AS j, '{\"b\": 1}'::json AS k, "
        "ARRAY[1,2,3] AS l, '\\x0102'::bytea AS m, "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS o, NULL::text AS p, "
        "'127.0.0.1'::inet AS q, true AS r"
    )

    def typed(engine: Any) -> tuple[list[str], list[Any]]:
        with engine.connect() as conn:
            r = conn.execute(stmt)
            keys = list(r.keys())
            return keys, [tuple((type(v).__name__, repr(v)) for v in row) for row in r]

    truth = typed(plain)
    assert typed(engine) == truth
    assert typed(engine) == truth


class TestPostgresSchemaEdges(SchemaEdgeSuite):
    driver = "psycopg"


def test_function_that_writes_invalidates(pg):
    engine, plain = pg["engine"], pg["plain"]
    with plain.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION qc_rename(i int, n text) RETURNS int LANGUAGE sql AS "
                "$$ UPDATE qc_users SET name = n WHERE id = i RETURNING id $$"
            )
        )
    stmt = select(U.c.name).where(U.c.id == 1)
    assert _read(engine, stmt) == [("user1",)]
    with engine.begin() as conn:
        conn.execute(text("SELECT qc_rename(1, 'by function')")).all()
    assert _read(plain, stmt) == [("by function",)]
    assert _read(engine, stmt) == [("by function",)]


def test_writable_cte_invalidates(pg):
    engine = pg["engine"]
    stmt = select(U.c.name).where(U.c.id == 1)
    assert _read(engine, stmt) == [("user1",)]
    with engine.begin() as conn:
        got = conn.execute(
            text(
                "WITH u AS (UPDATE qc_users SET name = 'cte' WHERE id = 1 RETURNING id) "
                "SELECT id FROM u"
            )
        ).all()
        assert got == [(1,)]
    assert _read(engine, stmt) == [("cte",)]


def test_truncate_cascade_invalidates_referencing_tables(pg):
    engine = pg["engine"]
    posts = text("SELECT count(*) FROM qc_posts")
    assert _read(engine, posts) == [(10,)]
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE qc_users CASCADE"))
    assert _read(engine, posts) == [(0,)]


def test_select_for_update_is_not_served_from_cache(pg):
    engine, counter = pg["engine"], pg["counter"]
    stmt = select(U.c.name).where(U.c.id == 1).with_for_update()
    n = counter.count("for update")
    for _ in range(3):
        assert _read(engine, stmt) == [("user1",)]
    assert counter.count("for update") == n + 3
    maker = pg["cache"].sessionmaker(bind=engine)
    for _ in range(3):
        with maker() as s:
            assert s.scalars(select(User).where(User.id == 1).with_for_update()).one().id == 1
    assert counter.count("for update") == n + 6


def test_two_engines_same_database_different_host_spelling(pg):
    """``localhost`` and ``127.0.0.1`` name one database: writes must reach both."""
    from sqlalchemy.engine import make_url

    cache, engine = pg["cache"], pg["engine"]
    other_url = make_url(pg["url"]).set(host="localhost")
    other = cache.wrap(create_engine(other_url))
    try:
        stmt = select(U.c.name).where(U.c.id == 1)
        assert _read(other, stmt) == [("user1",)]
        assert _read(engine, stmt) == [("user1",)]
        with engine.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="via 127.0.0.1"))
        assert _read(other, stmt) == [("via 127.0.0.1",)]
    finally:
        other.dispose()


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN ANALYZE UPDATE qc_users SET name = 'hidden' WHERE id = 1",
        "CALL qc_proc('hidden')",
        "DO $$ BEGIN UPDATE qc_users SET name = 'hidden' WHERE id = 1; END $$",
        "UPDATE qc_users SET name = 'hidden' WHERE id = 1; SELECT 1",
        "SELECT 1; UPDATE qc_users SET name = 'hidden' WHERE id = 1",
        "WITH x AS (SELECT 1) UPDATE qc_users SET name = 'hidden' WHERE id = 1",
        "SELECT * INTO qc_copy FROM qc_users; UPDATE qc_users SET name = 'hidden' WHERE id = 1",
    ],
    ids=[
        "explain_analyze",
        "call",
        "do_block",
        "multi_write_first",
        "multi_write_last",
        "cte",
        "select_into",
    ],
)
def test_less_obvious_writes_invalidate(pg, sql):
    engine, plain = pg["engine"], pg["plain"]
    with plain.begin() as conn:
        conn.execute(
            text(
                "CREATE PROCEDURE qc_proc(n text) LANGUAGE sql AS "
                "$$ UPDATE qc_users SET name = n WHERE id = 1 $$"
            )
        )
    stmt = select(U.c.name).where(U.c.id == 1)
    assert _read(engine, stmt) == [("user1",)]
    assert _read(engine, stmt) == [("user1",)]
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
        conn.commit()
    assert _read(plain, stmt) == [("hidden",)]
    assert _read(engine, stmt) == [("hidden",)]


def test_cache_session_on_a_connection_with_search_path(pg):
    cache, engine = pg["cache"], pg["engine"]
    maker = cache.sessionmaker()
    with maker(bind=engine) as s:
        assert [n.v for n in s.scalars(select(Note))] == ["from public"]
    with maker(bind=engine) as s:
        assert [n.v for n in s.scalars(select(Note))] == ["from public"]
    with engine.connect() as conn:
        conn.exec_driver_sql("SET search_path TO sb")
        with maker(bind=conn) as s:
            assert [n.v for n in s.scalars(select(Note))] == ["from sb"]
        conn.rollback()


def test_entries_of_one_statement_share_one_plain_description(pg):
    """psycopg describes columns with ``Column`` objects: they are converted to
    plain tuples once per statement and shared by its entries; another
    statement gets its own."""
    cache, engine = pg["cache"], pg["engine"]
    stmt = text("SELECT id, name FROM qc_users WHERE id = :id")
    with engine.connect() as conn:
        rows = [conn.execute(stmt, {"id": i}).one() for i in (1, 2, 1)]
    assert rows[0] == rows[2]
    entries = [e for k, e in cache.memory._data.items() if "qc_users WHERE id" in str(k)]
    assert len(entries) == 2
    first, second = entries
    assert first.description is second.description
    assert all(type(d) is tuple and len(d) == 7 for d in first.description)
    assert [d[0] for d in first.description] == ["id", "name"]
    with engine.connect() as conn:
        described = conn.execute(text("SELECT name, id FROM qc_users WHERE id = 3")).cursor
        assert [d[0] for d in described.description] == ["name", "id"]
