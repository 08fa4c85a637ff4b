"""Executions that look alike but are not, and dependencies the SQL text hides.

Each test pairs a wrapped engine with a plain one on the same database and
fails if the cache hands back what the plain engine would not:

* parameter values equal in Python but not to the database (one instant in
  two time zones, ``Decimal("1.0")`` and ``Decimal("1.00")``, ``-0.0``);
* two engines, or one session routed to two binds, through one cache;
* two engines on one URL whose connections differ (``connect_args``);
* PostgreSQL objects that read or write behind a statement: table
  inheritance, partitions, rules, views over functions, sequences.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import DateTime, Integer, String, create_engine, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from querycache import QueryCache
from querycache.keys import connection_settings, exact

UTC_MIDNIGHT = dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC)
ONE_AM_PLUS_ONE = dt.datetime(2024, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "qc_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime)


class Item(Base):
    __tablename__ = "qc_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(20))


def _rows(engine: Any, stmt: Any, params: Any = None) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt, params or {})]


# -- equal in Python, different to the database -------------------------------------------


def test_exact_tells_apart_what_equality_does_not():
    assert UTC_MIDNIGHT == ONE_AM_PLUS_ONE and exact(UTC_MIDNIGHT) != exact(ONE_AM_PLUS_ONE)
    assert exact(Decimal("1.0")) != exact(Decimal("1.00"))
    assert exact(0.0) != exact(-0.0)
    assert exact([1, 2]) != exact([1.0, 2.0]) != exact([True, 2])
    assert exact({"a": 1}) == exact({"a": 1}) and exact({"a": 1}) != exact({"a": 1.0})
    hash(exact({"b": [1, {"c": 2.5}], "a": (Decimal("1"),)}))


@pytest.fixture
def events(tmp_path):
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    plain = create_engine(url)
    Base.metadata.create_all(plain)
    with Session(plain) as s:
        # SQLite keeps the wall-clock text: 00:30 and 01:30, no zone
        s.add_all(
            [
                Event(id=1, ts=dt.datetime(2024, 1, 1, 0, 30)),
                Event(id=2, ts=dt.datetime(2024, 1, 1, 1, 30)),
            ]
        )
        s.commit()
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    yield cache, engine, plain
    cache.close()
    engine.dispose()
    plain.dispose()


@pytest.mark.parametrize("form", ["literal", "bound"])
def test_core_one_instant_in_two_zones_is_two_queries(events, form):
    _cache, engine, plain = events
    for _ in range(2):  # the second round would be served by aliases
        for moment in (UTC_MIDNIGHT, ONE_AM_PLUS_ONE):
            if form == "literal":
                stmt, params = select(Event.id).where(Event.ts >= moment).order_by(Event.id), None
            else:
                stmt = text("SELECT id FROM qc_events WHERE ts >= :t ORDER BY id")
                params = {"t": moment.replace(tzinfo=None).isoformat(sep=" ")}
            assert _rows(engine, stmt, params) == _rows(plain, stmt, params)


def test_orm_one_instant_in_two_zones_is_two_queries(events):
    cache, engine, plain = events
    maker = cache.sessionmaker(bind=engine)
    for _ in range(2):
        for moment in (UTC_MIDNIGHT, ONE_AM_PLUS_ONE):
            stmt = select(Event).where(Event.ts >= moment).order_by(Event.id)
            with maker() as s:
                got = [e.id for e in s.scalars(stmt)]
            with Session(plain) as s:
                assert got == [e.id for e in s.scalars(stmt)]
    assert _rows(plain, select(Event.id).where(Event.ts >= ONE_AM_PLUS_ONE)) == [(2,)]


def test_postgres_decimal_scale_and_negative_zero_are_part_of_the_key(pg_url):
    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    plain = create_engine(pg_url)
    stmt = text("SELECT CAST(:x AS text)")
    try:
        for _ in range(2):
            for x in (Decimal("1.0"), Decimal("1.00"), 0.0, -0.0, [1, 2], [1.5, 2.0]):
                assert _rows(engine, stmt, {"x": x}) == _rows(plain, stmt, {"x": x}), x
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


# -- one cache, several engines ------------------------------------------------------------


@pytest.fixture
def two_files(tmp_path):
    urls = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.sqlite"
        plain = create_engine(url)
        Base.metadata.create_all(plain)
        with Session(plain) as s:
            s.add(Item(id=1, label=name.upper()))
            s.commit()
        plain.dispose()
        urls.append(url)
    cache = QueryCache()
    a, b = (cache.wrap(create_engine(u)) for u in urls)
    yield cache, a, b
    cache.close()
    a.dispose()
    b.dispose()


def test_orm_reads_of_two_engines_are_invalidated_each_by_its_own_writes(two_files):
    cache, a, b = two_files
    labels = select(Item.label).order_by(Item.id)
    items = select(Item).order_by(Item.id)
    for engine, want in ((a, "A"), (b, "B"), (a, "A"), (b, "B")):
        with cache.sessionmaker(bind=engine)() as s:
            assert [i.label for i in s.scalars(items)] == [want]
            assert list(s.scalars(labels)) == [want]
    with cache.sessionmaker(bind=b)() as s:
        s.execute(update(Item).values(label="B2"))
        s.commit()
    for engine, want in ((b, "B2"), (a, "A")):
        with cache.sessionmaker(bind=engine)() as s:
            assert [i.label for i in s.scalars(items)] == [want]
            assert list(s.scalars(labels)) == [want]


def test_orm_bind_arguments_route_the_cache_too(two_files):
    cache, a, b = two_files
    items = select(Item).order_by(Item.id)
    for _ in range(3):
        with cache.sessionmaker(bind=a)() as s:
            assert [i.label for i in s.scalars(items)] == ["A"]
            routed = s.scalars(items, bind_arguments={"bind": b})
            assert [i.label for i in routed] == ["B"]


def test_same_url_with_other_connect_args_does_not_share_results(pg_url):
    plain = create_engine(pg_url)
    with plain.begin() as conn:
        conn.execute(text("CREATE SCHEMA tenant2"))
        conn.execute(text("CREATE TABLE public.qc_notes (v text)"))
        conn.execute(text("CREATE TABLE tenant2.qc_notes (v text)"))
        conn.execute(text("INSERT INTO public.qc_notes VALUES ('public row')"))
        conn.execute(text("INSERT INTO tenant2.qc_notes VALUES ('tenant2 row')"))
    cache = QueryCache()
    default = cache.wrap(create_engine(pg_url))
    tenant = cache.wrap(create_engine(pg_url, connect_args={"options": "-c search_path=tenant2"}))
    stmt = text("SELECT v FROM qc_notes")
    try:
        assert connection_settings(default) == ""
        assert connection_settings(tenant) not in ("", connection_settings(default))
        assert "tenant2" not in connection_settings(tenant)  # a digest, never the values
        for _ in range(2):
            assert _rows(default, stmt) == [("public row",)]
            assert _rows(tenant, stmt) == [("tenant2 row",)]
    finally:
        cache.close()
        for e in (default, tenant, plain):
            e.dispose()


# -- PostgreSQL objects behind the statement ------------------------------------------------

_PG_OBJECTS = [
    "CREATE TABLE parent (id int, v text)",
    "CREATE TABLE child () INHERITS (parent)",
    "INSERT INTO parent VALUES (1, 'p')",
    "CREATE TABLE meas (id int, k int, v text) PARTITION BY RANGE (k)",
    "CREATE TABLE meas_1 PARTITION OF meas FOR VALUES FROM (0) TO (100)",
    "INSERT INTO meas VALUES (1, 5, 'a')",
    "CREATE TABLE t (id serial PRIMARY KEY, v text)",
    "INSERT INTO t (v) VALUES ('a')",
    "CREATE TABLE log (n int)",
    "CREATE RULE t_log AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (new.id)",
    "CREATE FUNCTION cnt() RETURNS bigint STABLE LANGUAGE sql AS $$ SELECT count(*) FROM t $$",
    "CREATE VIEW vcnt AS SELECT cnt() AS c",
    "CREATE VIEW vnow AS SELECT now() AS at",
]

_PG_CASES = [
    # (what is read, the write through the wrapped engine)
    ("SELECT count(*) FROM parent", "INSERT INTO child VALUES (2, 'c')"),
    ("SELECT count(*) FROM child", "UPDATE parent SET v = 'x'"),
    ("SELECT v FROM meas_1", "UPDATE meas SET v = 'b'"),
    ("SELECT v FROM meas", "UPDATE meas_1 SET v = 'c'"),
    ("SELECT count(*) FROM log", "INSERT INTO t (v) VALUES ('b')"),
    ("SELECT c FROM vcnt", "INSERT INTO t (v) VALUES ('c')"),
    ("SELECT last_value FROM t_id_seq", "INSERT INTO t (v) VALUES ('d')"),
]


def test_postgres_hidden_dependencies(pg_url):
    plain = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with plain.connect() as conn:
        for sql in _PG_OBJECTS:
            conn.execute(text(sql))
    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    try:
        for read, write in _PG_CASES:
            stmt = text(read)
            assert _rows(engine, stmt) == _rows(plain, stmt), read
            assert _rows(engine, stmt) == _rows(plain, stmt), read
            with engine.begin() as conn:
                conn.execute(text(write))
            assert _rows(engine, stmt) == _rows(plain, stmt), f"{read} after {write}"
        first = _rows(engine, text("SELECT at FROM vnow"))
        with plain.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.01)"))
        assert _rows(engine, text("SELECT at FROM vnow")) != first  # never cached
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


# -- parameter types without a complete repr or an exact == ---------------------------------


def test_exact_knows_driver_wrappers_and_refuses_the_unknown():
    from psycopg.types.json import Jsonb
    from sqlalchemy.dialects.postgresql import Range

    from querycache.keys import Opaque

    long_a = {"user": "alice", "roles": ["admin", "x"], "n": 1}
    long_b = {"user": "alice", "roles": ["admin", "y"], "n": 2}
    assert repr(Jsonb(long_a)) == repr(Jsonb(long_b))  # psycopg shortens it
    assert exact(Jsonb(long_a)) != exact(Jsonb(long_b))
    assert Range(Decimal("1.0"), Decimal("2")) == Range(Decimal("1.00"), Decimal("2"))
    assert exact(Range(Decimal("1.0"), Decimal("2"))) != exact(Range(Decimal("1.00"), Decimal("2")))
    assert exact(memoryview(b"ab")) == exact(memoryview(b"ab")) != exact(memoryview(b"ac"))
    with pytest.raises(Opaque):
        exact(object())
    with pytest.raises(Opaque):
        exact({1, 2})


def test_jsonb_parameters_get_their_own_redis_entries(pg_url, redis_server):
    from psycopg.types.json import Jsonb

    stmt = text("SELECT CAST(:p AS jsonb) ->> 'n'")
    a, b = QueryCache(redis_url=redis_server.url), QueryCache(redis_url=redis_server.url)
    ea, eb = a.wrap(create_engine(pg_url)), b.wrap(create_engine(pg_url))
    try:
        p1 = Jsonb({"user": "alice", "roles": ["admin", "x"], "n": 1})
        p2 = Jsonb({"user": "alice", "roles": ["admin", "y"], "n": 2})
        assert _rows(ea, stmt, {"p": p1}) == [("1",)]
        a.redis.flush()
        assert _rows(eb, stmt, {"p": p2}) == [("2",)]  # not a's entry
        assert _rows(eb, stmt, {"p": p1}) == [("1",)]
    finally:
        for c in (a, b):
            c.close()
        ea.dispose()
        eb.dispose()


def test_postgres_ranges_of_decimals_are_keyed_exactly(pg_url):
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import NUMRANGE, Range

    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    plain = create_engine(pg_url)
    stmt = text("SELECT CAST(:r AS numrange)::text").bindparams(bindparam("r", type_=NUMRANGE))
    try:
        for _ in range(2):
            for scale in ("1.0", "1.00", "1.000"):
                r = Range(Decimal(scale), Decimal(scale) + 1)
                assert _rows(engine, stmt, {"r": r}) == _rows(plain, stmt, {"r": r})
        with engine.connect() as conn:  # a type with no exact key: runs, uncached
            assert conn.exec_driver_sql("SELECT %s::text", (text_subclass(),)).all() == [
                ("10.0.0.1",)
            ]
        bypasses = cache.report().as_dict()["totals"]["bypasses"]
        assert bypasses >= 1
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()


class _Adaptable(str):
    """A str subclass: psycopg sends it as text, querycache cannot key it exactly."""


def text_subclass() -> _Adaptable:
    return _Adaptable("10.0.0.1")


def test_a_row_the_caller_never_fetches_cannot_fail_the_query(pg_url):
    """psycopg converts rows as they are fetched: ``.first()`` of a result whose
    second row cannot be converted works uncached, so it works cached."""
    plain = create_engine(pg_url)
    with plain.begin() as conn:
        conn.execute(text("CREATE TABLE ev (id int, d date)"))
        conn.execute(text("INSERT INTO ev VALUES (1, '2020-01-01'), (2, '0001-01-01 BC')"))
    cache = QueryCache()
    engine = cache.wrap(create_engine(pg_url))
    stmt = text("SELECT id, d FROM ev ORDER BY id")
    try:
        for _ in range(2):
            with engine.connect() as conn:
                assert conn.execute(stmt).first() == (1, dt.date(2020, 1, 1))
        with engine.connect() as conn, pytest.raises(Exception) as caught:
            conn.execute(stmt).all()
        with plain.connect() as conn, pytest.raises(type(caught.value)):
            conn.execute(stmt).all()
    finally:
        cache.close()
        engine.dispose()
        plain.dispose()
