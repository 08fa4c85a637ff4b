"""Hardening of the ORM fast path (sessions from ``cache.sessionmaker`` and
``cache.async_sessionmaker``), differentially against plain sessions on the
same databases, SQLite and PostgreSQL:

* routing sessions (``get_bind()`` overridden, ``binds``, ``bind_arguments``,
  engines the cache does not wrap, hooks registered after the cache's);
* ``schema_translate_map`` on the statement, ``execute()``, session,
  connection and engine;
* session and transaction states: the fast path raises what the normal
  path raises (and runs its hooks);
* hits hand out values of their own: sets from TypeDecorators, PickleType,
  Mutable*, JSON, PostgreSQL arrays and driver objects, ORM and Core alike.

Every "served from cache" claim counts executions on the database side.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbcount import counter_for
from sqlalchemy import (
    JSON,
    Integer,
    PickleType,
    String,
    TypeDecorator,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    sessionmaker,
    with_loader_criteria,
)

from querycache import QueryCache

BACKENDS = ["sqlite", "postgresql"]
_names = itertools.count()


class HBase(DeclarativeBase):
    pass


class Item(HBase):
    __tablename__ = "h_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class CSVSet(TypeDecorator[set[str]]):
    """A set stored as comma-separated text: a fresh set per load."""

    impl = String(200)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return ",".join(sorted(value)) if value is not None else None

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return set(value.split(",")) if value else set()


class Doc(HBase):
    """Values that are mutable after loading; supported by the ORM fast path."""

    __tablename__ = "h_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    tags: Mapped[Any] = mapped_column(CSVSet())
    blob: Mapped[Any] = mapped_column(PickleType)
    data: Mapped[Any] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    nums: Mapped[Any] = mapped_column(JSON().with_variant(ARRAY(Integer), "postgresql"))


class MDoc(HBase):
    """Mutable-extension columns (load events: not an ORM fast path entity)."""

    __tablename__ = "h_mdocs"
    id: Mapped[int] = mapped_column(primary_key=True)
    mdict: Mapped[Any] = mapped_column(MutableDict.as_mutable(JSON()))
    mlist: Mapped[Any] = mapped_column(MutableList.as_mutable(JSON()))


ITEMS = Item.__table__
DOCS = Doc.__table__


# -- databases ----------------------------------------------------------------------


@dataclass
class Dbs:
    """Fresh databases of one backend."""

    backend: str
    tmp_path: Path
    postgres: Any

    def new(self, label: str) -> str:
        """The sync URL of a fresh, empty database."""
        if self.backend == "sqlite":
            return f"sqlite+pysqlite:///{self.tmp_path / label}.sqlite"
        return self.postgres.create_database(f"h{next(_names)}_{label}")  # type: ignore[no-any-return]

    def seeded(self, label: str, names: dict[int, str]) -> str:
        url = self.new(label)
        engine = create_engine(url)
        HBase.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(ITEMS), [{"id": k, "name": v} for k, v in names.items()])
        engine.dispose()
        return url


@pytest.fixture(params=BACKENDS)
def dbs(request: Any, tmp_path: Path) -> Dbs:
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return Dbs(request.param, tmp_path, pg)


def async_url(url: str) -> str:
    u = make_url(url)
    driver = "sqlite+aiosqlite" if u.get_backend_name() == "sqlite" else "postgresql+asyncpg"
    return u.set(drivername=driver).render_as_string(hide_password=False)


def outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value, or its exception's class (what both paths must agree on)."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raised", type(exc).__name__)


def names_of(session: Session, **kw: Any) -> list[tuple[int, str]]:
    stmt = select(Item).order_by(Item.id)
    return [(i.id, i.name) for i in session.scalars(stmt, **kw)]


def name_one(session: Session, **kw: Any) -> Any:
    stmt = select(Item.name).where(Item.id == 1)
    return session.execute(stmt, **kw).scalar_one()


# -- 4. routing sessions ------------------------------------------------------------------


def test_routing_sessions_key_by_the_bind_the_statement_really_uses(dbs: Dbs) -> None:
    urls = {
        "a": dbs.seeded("tenant_a", {1: "a1", 2: "a2"}),
        "b": dbs.seeded("tenant_b", {1: "b1", 2: "b2"}),
        "c": dbs.seeded("unwrapped", {1: "c1", 2: "c2"}),
    }
    cache = QueryCache()

    def stack(cached: bool) -> tuple[dict[str, Any], Callable[..., Session]]:
        engines = {t: create_engine(u) for t, u in urls.items()}
        if cached:
            cache.wrap(engines["a"])
            cache.wrap(engines["b"])  # "c" stays a plain engine

        class RoutingSession(Session):
            def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
                tenant = self.info.get("tenant")
                if tenant is None:
                    return super().get_bind(mapper, clause=clause, **kw)
                return engines[tenant]

        maker = cache.sessionmaker if cached else sessionmaker
        routed = maker(bind=engines["a"], class_=RoutingSession)
        filtered = maker(bind=engines["a"])

        @event.listens_for(filtered, "do_orm_execute")
        def _only_second(state: Any) -> None:  # registered after the cache's hook
            if state.is_select:
                state.statement = state.statement.options(with_loader_criteria(Item, Item.id > 1))

        def session(how: str) -> Session:
            if how in ("a", "b", "c"):
                return routed(info={"tenant": how})
            if how == "binds_b":
                return maker(bind=engines["a"], binds={Item: engines["b"]})()
            if how == "binds_c":
                return maker(bind=engines["a"], binds={HBase: engines["c"]})()
            if how == "filtered":
                return filtered()
            return routed()  # no tenant: the session's own bind (a)

        return engines, session

    plain_engines, plain = stack(False)
    engines, cached = stack(True)
    counters = {t: counter_for(e) for t, e in engines.items()}

    def reads(session_for: Callable[[str], Session], eng: dict[str, Any]) -> list[Any]:
        out = []
        for how in ["a", "b", "a", "default", "b", "binds_b", "c", "binds_c", "filtered"] * 2:
            with session_for(how) as s:
                out.append((how, outcome(lambda: names_of(s)), outcome(lambda: name_one(s))))
        with session_for("default") as s:  # bind_arguments route one execution
            out.append(outcome(lambda: names_of(s, bind_arguments={"bind": eng["b"]})))
            out.append(outcome(lambda: name_one(s, bind_arguments={"bind": eng["c"]})))
        return out

    truth = reads(plain, plain_engines)
    assert truth[0][1] == ("ok", [(1, "a1"), (2, "a2")])
    assert truth[1][1] == ("ok", [(1, "b1"), (2, "b2")])
    assert reads(cached, engines) == truth
    # the cache served the wrapped tenants: a second round cost them nothing
    before = {t: counters[t].count("from h_items") for t in counters}
    assert reads(cached, engines) == truth
    assert counters["a"].count("from h_items") == before["a"]
    assert counters["b"].count("from h_items") == before["b"]
    # the engine the cache does not wrap always reaches its database
    assert counters["c"].count("from h_items") == before["c"] + 9
    with engines["c"].begin() as conn:  # a change the cache never sees
        conn.execute(update(ITEMS).where(ITEMS.c.id == 1).values(name="c1-new"))
    with plain_engines["c"].connect() as conn:
        assert conn.execute(select(ITEMS.c.name).where(ITEMS.c.id == 1)).scalar() == "c1-new"
    after = reads(cached, engines)
    assert after == reads(plain, plain_engines)
    assert ("c", ("ok", [(1, "c1-new"), (2, "c2")]), ("ok", "c1-new")) in after
    for e in [*engines.values(), *plain_engines.values()]:
        e.dispose()
    cache.close()


def test_async_routing_session_keys_by_its_bind(dbs: Dbs) -> None:
    urls = {
        "a": async_url(dbs.seeded("async_a", {1: "a1"})),
        "b": async_url(dbs.seeded("async_b", {1: "b1"})),
    }

    async def run(cached: bool) -> list[Any]:
        cache = QueryCache()
        engines = {t: create_async_engine(u) for t, u in urls.items()}

        class RoutingSession(Session):
            def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
                return engines[self.info["tenant"]].sync_engine

        if cached:
            cache.wrap(engines["b"])
            maker = cache.async_sessionmaker(bind=engines["a"], sync_session_class=RoutingSession)
        else:
            maker = async_sessionmaker(bind=engines["a"], sync_session_class=RoutingSession)
        out = []
        for tenant in "abab":
            async with maker(info={"tenant": tenant}) as s:
                out.append((await s.execute(select(Item.name))).scalars().all())
        for e in engines.values():
            await e.dispose()
        cache.close()
        return out

    truth = asyncio.run(run(False))
    assert truth == [["a1"], ["b1"], ["a1"], ["b1"]]
    assert asyncio.run(run(True)) == truth


# -- 5. schema_translate_map ----------------------------------------------------------------


def test_schema_translate_map_at_every_level_is_honoured(dbs: Dbs) -> None:
    main = dbs.seeded("schemas", {1: "main1", 2: "main2"})
    if dbs.backend == "sqlite":
        files = {s: dbs.seeded(s, {1: f"{s}-1", 2: f"{s}-2"}) for s in ("s1", "s2")}

        def attach(engine: Any) -> None:
            @event.listens_for(engine, "connect")
            def _attach(dbapi_conn: Any, record: Any) -> None:
                for schema, url in files.items():
                    dbapi_conn.execute(f"ATTACH DATABASE '{make_url(url).database}' AS {schema}")
    else:
        setup = create_engine(main)
        with setup.begin() as conn:
            for s in ("s1", "s2"):
                conn.exec_driver_sql(f"CREATE SCHEMA {s}")
                conn.exec_driver_sql(f"CREATE TABLE {s}.h_items (id int primary key, name text)")
                conn.exec_driver_sql(f"INSERT INTO {s}.h_items VALUES (1, '{s}-1'), (2, '{s}-2')")
        setup.dispose()

        def attach(engine: Any) -> None:
            pass

    cache = QueryCache()
    plain_engine, engine = create_engine(main), create_engine(main)
    attach(plain_engine)
    attach(engine)
    counter = counter_for(engine)
    cache.wrap(engine)

    def m(schema: str) -> dict[str, Any]:
        return {"schema_translate_map": {None: schema}}

    def reads(maker: Callable[..., Session], eng: Any) -> list[Any]:
        out = []
        for schema in ("s1", "s2", None, "s2", "s1"):
            opts = m(schema) if schema else {}
            stmt = select(Item).order_by(Item.id).execution_options(**opts)
            with maker() as s:
                out.append([(i.id, i.name) for i in s.scalars(stmt)])  # the statement's
                out.append(names_of(s, execution_options=opts))  # execute()'s
            if schema is None:
                continue
            with maker(execution_options=opts) as s:  # the session's
                out.append(names_of(s))
            with eng.connect() as conn, maker(bind=conn.execution_options(**opts)) as s:
                out.append(names_of(s))  # the connection's
            with maker(bind=eng.execution_options(**opts)) as s:  # an option engine's
                out.append(names_of(s))
        return out

    plain_maker = sessionmaker(bind=plain_engine)
    cached_maker = cache.sessionmaker(bind=engine)
    truth = reads(plain_maker, plain_engine)
    assert truth[0] == [(1, "s1-1"), (2, "s1-2")] and truth[5] == [(1, "s2-1"), (2, "s2-2")]
    assert reads(cached_maker, engine) == truth
    n1 = counter.count("s1.h_items")
    assert reads(cached_maker, engine) == truth
    assert counter.count("s1.h_items") < n1 + 8  # statement/execute()/session levels hit
    # a write to one schema through the cache is seen by the next read of it
    with cached_maker() as s:
        s.execute(update(Item).where(Item.id == 1).values(name="s1-new"), execution_options=m("s1"))
        s.commit()
    assert reads(cached_maker, engine) == reads(plain_maker, plain_engine)
    with cached_maker() as s:
        assert names_of(s, execution_options=m("s1"))[0] == (1, "s1-new")
    engine.dispose()
    plain_engine.dispose()
    counter.close()
    cache.close()


# -- 6. session and transaction states --------------------------------------------------------


def _failed_flush(maker: Callable[..., Session]) -> list[Any]:
    s = maker(autoflush=False)
    out = [outcome(lambda: names_of(s))]
    s.add(Item(id=1, name="duplicate"))
    out.append(outcome(s.flush))
    out.append(outcome(lambda: names_of(s)))
    out.append(outcome(lambda: name_one(s)))
    s.rollback()
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return out


def _failed_flush_in_savepoint(maker: Callable[..., Session]) -> list[Any]:
    s = maker(autoflush=False)
    s.begin_nested()
    s.add(Item(id=2, name="duplicate"))
    out = [outcome(s.flush), outcome(lambda: names_of(s)), s.in_transaction()]
    out.append(outcome(s.rollback))
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return out


def _no_autobegin(maker: Callable[..., Session]) -> list[Any]:
    s = maker(autobegin=False)
    out = [outcome(lambda: names_of(s)), outcome(lambda: name_one(s))]
    s.begin()
    out.append(outcome(lambda: names_of(s)))
    s.commit()
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return out


def _closed_for_good(maker: Callable[..., Session]) -> list[Any]:
    s = maker(close_resets_only=False)
    out = [outcome(lambda: names_of(s))]
    s.close()
    out.append(outcome(lambda: names_of(s)))
    return out


def _inside_finished_context(maker: Callable[..., Session]) -> list[Any]:
    s = maker()
    out = []
    try:
        with s.begin():
            s.rollback()
            out.append(outcome(lambda: names_of(s)))
    except Exception as exc:
        out.append(type(exc).__name__)
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return out


def _in_after_commit(maker: Callable[..., Session]) -> list[Any]:
    s = maker()
    out: list[Any] = []
    names_of(s)
    event.listen(s, "after_commit", lambda sess: out.append(outcome(lambda: names_of(sess))))
    s.commit()
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return out


def _hooks_and_transaction(maker: Callable[..., Session]) -> list[Any]:
    calls: list[str] = []
    s = maker()
    event.listen(s, "after_transaction_create", lambda *a: calls.append("create"))
    event.listen(s, "after_begin", lambda *a: calls.append("begin"))
    out = [s.in_transaction(), outcome(lambda: names_of(s)), s.in_transaction()]
    out.append(outcome(lambda: name_one(s)))
    s.rollback()
    out.append(outcome(lambda: names_of(s)))
    s.close()
    return [*out, calls]


def _closed_connection_bind(maker: Callable[..., Session], engine: Any) -> list[Any]:
    conn = engine.connect()
    conn.close()
    s = maker(bind=conn)
    out = [outcome(lambda: names_of(s))]
    s.close()
    return out


STATES: dict[str, Callable[..., list[Any]]] = {
    "failed_flush": _failed_flush,
    "failed_flush_in_savepoint": _failed_flush_in_savepoint,
    "no_autobegin": _no_autobegin,
    "closed_for_good": _closed_for_good,
    "inside_finished_context": _inside_finished_context,
    "in_after_commit": _in_after_commit,
    "hooks_and_transaction": _hooks_and_transaction,
    "closed_connection_bind": _closed_connection_bind,
}


def test_session_states_raise_on_hits_what_the_normal_path_raises(dbs: Dbs) -> None:
    url = dbs.seeded("states", {1: "one", 2: "two"})
    cache = QueryCache()
    plain_engine, engine = create_engine(url), create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    plain, cached = sessionmaker(bind=plain_engine), cache.sessionmaker(bind=engine)
    for _ in range(2):  # warm: both statements are entries of the ORM fast path
        with cached() as s:
            names_of(s)
            name_one(s)
    for name, scenario in STATES.items():
        args = (plain_engine,) if name == "closed_connection_bind" else ()
        truth = scenario(plain, *args)
        n0 = counter.count("from h_items")  # PostgreSQL counts per database: after plain's
        got = scenario(cached, *((engine,) if args else ()))
        assert got == truth, name
        assert counter.count("from h_items") == n0, name  # every read was a hit
    assert _failed_flush(plain)[2] == ("raised", "PendingRollbackError")
    assert _no_autobegin(plain)[0] == ("raised", "InvalidRequestError")
    engine.dispose()
    plain_engine.dispose()
    counter.close()
    cache.close()


def test_async_session_states_raise_on_hits_what_the_normal_path_raises(dbs: Dbs) -> None:
    url = async_url(dbs.seeded("async_states", {1: "one", 2: "two"}))

    async def run(cached: bool) -> list[Any]:
        cache = QueryCache()
        engine = create_async_engine(url)
        factory = cache.async_sessionmaker if cached else async_sessionmaker
        maker = factory(bind=engine, autoflush=False)
        stmt = select(Item.name).order_by(Item.id)

        async def read(s: Any) -> Any:
            try:
                return (await s.execute(stmt)).scalars().all()
            except Exception as exc:
                return type(exc).__name__

        out = []
        for _ in range(2):
            async with maker() as s:
                out.append(await read(s))
        async with maker() as s:
            s.add(Item(id=1, name="duplicate"))
            try:
                await s.flush()
            except Exception as exc:
                out.append(type(exc).__name__)
            out.append(await read(s))
        async with factory(bind=engine, autobegin=False)() as s:
            out.append(await read(s))
        await engine.dispose()
        cache.close()
        return out

    truth = asyncio.run(run(False))
    assert truth[3] == "PendingRollbackError" and truth[4] == "InvalidRequestError"
    assert asyncio.run(run(True)) == truth


# -- 12. every value a hit hands out is the caller's own ---------------------------------------


def deep_mutate(v: Any) -> None:
    """Change ``v`` in place, and every container inside it."""
    if isinstance(v, dict):
        for x in list(v.values()):
            deep_mutate(x)
        v["mutated"] = True
    elif isinstance(v, list):
        for x in v:
            deep_mutate(x)
        v.append(999)
    elif isinstance(v, set):
        v.add("mutated")
    elif type(v).__name__ == "Multirange":
        v.append(v[0])


DOC_ROWS = [
    {
        "id": 1,
        "tags": {"x", "y"},
        "blob": {"s": {1, 2}, "l": [1, [2]]},
        "data": {"a": [1, 2], "b": {"c": [3]}},
        "nums": [1, 2, 3],
    },
    {"id": 2, "tags": {"z"}, "blob": {"s": set()}, "data": [{"k": "v"}], "nums": [4]},
]


def _doc_reads(engine: Any) -> dict[str, Callable[[Any], list[Any]]]:
    def entities(s: Session) -> list[Any]:
        return [[d.tags, d.blob, d.data, d.nums] for d in s.scalars(select(Doc).order_by(Doc.id))]

    def columns(s: Session) -> list[Any]:
        stmt = select(Doc.tags, Doc.blob, Doc.data, Doc.nums).order_by(Doc.id)
        return [list(r) for r in s.execute(stmt)]

    def mutables(s: Session) -> list[Any]:
        rows = [[m.mdict, m.mlist] for m in s.scalars(select(MDoc).order_by(MDoc.id))]
        cols = [list(r) for r in s.execute(select(MDoc.mdict, MDoc.mlist).order_by(MDoc.id))]
        return rows + cols

    def core(s: Session) -> list[Any]:
        with engine.connect() as conn:
            rows = [list(r) for r in conn.execute(select(DOCS).order_by(DOCS.c.id))]
            if engine.dialect.name == "postgresql":  # a driver object, no SQLAlchemy type
                sql = "SELECT '{[1,3), [5,7)}'::int4multirange AS m, ARRAY[ARRAY[1], ARRAY[2]] AS a"
                rows += [list(r) for r in conn.execute(text(sql))]
            return rows

    return {"entities": entities, "columns": columns, "mutables": mutables, "core": core}


def test_hits_hand_out_values_of_their_own(dbs: Dbs) -> None:
    url = dbs.new("values")
    setup = create_engine(url)
    HBase.metadata.create_all(setup)
    with Session(setup) as s:
        s.add_all(Doc(**copy.deepcopy(r)) for r in DOC_ROWS)
        s.add(MDoc(id=1, mdict={"a": [1]}, mlist=[{"b": 1}]))
        s.commit()
    setup.dispose()
    cache = QueryCache()
    plain_engine, engine = create_engine(url), create_engine(url)
    counter = counter_for(engine)
    cache.wrap(engine)
    plain, cached = sessionmaker(bind=plain_engine), cache.sessionmaker(bind=engine)

    def rounds(maker: Callable[..., Session], read: Callable[[Any], list[Any]]) -> list[Any]:
        seen = []
        for _ in range(3):
            with maker() as s:
                values = read(s)
                seen.append(repr(values))  # what this session was handed
                for row in values:
                    for v in row:
                        deep_mutate(v)  # then changed in place and rolled back
                s.rollback()
        return seen

    for name in _doc_reads(engine):
        truth = rounds(plain, _doc_reads(plain_engine)[name])
        assert len(set(truth)) == 1, name  # the normal path: the database's values each time
        assert rounds(cached, _doc_reads(engine)[name]) == truth, name
        n0 = counter.count("from h_")
        assert rounds(cached, _doc_reads(engine)[name]) == truth, name
        assert counter.count("from h_") == n0, name  # all served from cache
    engine.dispose()
    plain_engine.dispose()
    counter.close()
    cache.close()


def test_async_hits_hand_out_values_of_their_own(dbs: Dbs) -> None:
    url = dbs.new("async_values")
    setup = create_engine(url)
    HBase.metadata.create_all(setup)
    with Session(setup) as s:
        s.add_all(Doc(**copy.deepcopy(r)) for r in DOC_ROWS)
        s.commit()
    setup.dispose()

    async def run(cached: bool) -> list[str]:
        cache = QueryCache()
        engine = create_async_engine(async_url(url))
        maker = (cache.async_sessionmaker if cached else async_sessionmaker)(bind=engine)
        seen = []
        for _ in range(3):
            async with maker() as s:
                docs = (await s.execute(select(Doc).order_by(Doc.id))).scalars().all()
                cols = (await s.execute(select(Doc.tags, Doc.data, Doc.nums))).all()
                values = [[d.tags, d.blob, d.data, d.nums] for d in docs] + [list(r) for r in cols]
                seen.append(repr(values))
                for row in values:
                    for v in row:
                        deep_mutate(v)
                await s.rollback()
        await engine.dispose()
        cache.close()
        return seen

    truth = asyncio.run(run(False))
    assert len(set(truth)) == 1
    assert asyncio.run(run(True)) == truth


def test_options_named_by_tuples_pass_through(tmp_path: Path) -> None:
    """The ORM's ``subqueryload`` names an execution option with a tuple: the
    hit path and the option checks must let it through (they once called
    ``str.startswith`` on it), and the result equal the plain engine's."""
    from sqlalchemy import ForeignKey, create_engine, select
    from sqlalchemy.orm import (
        DeclarativeBase,
        Session,
        mapped_column,
        relationship,
        subqueryload,
    )

    from querycache import QueryCache

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "tuple_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        addresses: Mapped[list[Address]] = relationship()

    class Address(Base):
        __tablename__ = "tuple_addresses"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey("tuple_users.id"))

    url = f"sqlite:///{tmp_path / 'tuple.db'}"
    plain = create_engine(url)
    Base.metadata.create_all(plain)
    with Session(plain) as s:
        s.add_all([User(id=1, addresses=[Address(id=1), Address(id=2)]), User(id=2)])
        s.commit()
    cache = QueryCache()
    engine = cache.wrap(create_engine(url))
    counter = counter_for(engine)
    stmt = select(User).options(subqueryload(User.addresses)).order_by(User.id)

    def read(e: Any) -> list[Any]:
        with Session(e) as s:
            return [(u.id, sorted(a.id for a in u.addresses)) for u in s.scalars(stmt).all()]

    try:
        want = read(plain)
        assert read(engine) == want
        n = counter.count("tuple_addresses")
        assert read(engine) == want
        assert counter.count("tuple_addresses") == n  # the second time, served from memory
        assert cache.report().as_dict()["totals"]["errors"] == 0
    finally:
        counter.close()
        cache.close()
        plain.dispose()
