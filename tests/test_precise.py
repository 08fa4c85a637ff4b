"""Row-precise invalidation, proven from the database side.

Every "kept" claim is a database-side execution count of zero
(:mod:`dbcount`: SQLite's trace callback, PostgreSQL's pg_stat_statements),
every "dropped" claim a count of one, and every result is compared with the
same statement on a plain, unwrapped engine. Cached reads carry a label
(``AS q_<name>``) so that their executions are told apart from the truth
reads and from the cache's own pre-image queries.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from dbcount import RWLock, counter_for, db_url
from sqlalchemy import (
    Column,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

from querycache import QueryCache

md = MetaData()
C = Table(
    "pc_customers",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40)),
    Column("region", String(10), nullable=True),
)
ORD = Table(
    "pc_orders",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("customer_id", Integer),
    Column("total", Integer),
    Column("created_at", Date),
    Column("note", String(20), nullable=True),
    Column("status", String(10)),
)
DAY0 = dt.date(2024, 1, 1)
N_ORDERS = 30


class OrmBase(DeclarativeBase):
    pass


class Order(OrmBase):
    __table__ = ORD


def order(i: int, customer: int, days: int | None = None, note: Any = "x", total: int = 1):
    return {
        "id": i,
        "customer_id": customer,
        "total": total,
        "created_at": DAY0 + dt.timedelta(days=i if days is None else days),
        "note": note,
        "status": "open" if i % 2 else "done",
    }


SEED_ORDERS = [
    order(i, i % 5 + 1, note=None if i % 3 == 0 else f"n{i}", total=i * 37 % 97)
    for i in range(1, N_ORDERS + 1)
]  # order 7 belongs to customer 3


def _fast_sqlite(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=OFF")


@dataclass
class Env:
    cache: QueryCache
    engine: Engine  # wrapped
    plain: Engine  # the truth
    counter: Any

    def read(self, stmt: Any, params: Any = None, engine: Engine | None = None) -> list[Any]:
        with (engine or self.engine).connect() as conn:
            return [tuple(r) for r in conn.execute(stmt, params)]

    def truth(self, stmt: Any, params: Any = None) -> list[Any]:
        return self.read(stmt, params, self.plain)

    def check(self, label: str, stmt: Any, params: Any = None, executions: int | None = None):
        """Read through the cache; assert equal to plain and the DB-side executions."""
        n0 = self.counter.count(f"AS {label}")
        got = self.read(stmt, params)
        n1 = self.counter.count(f"AS {label}")
        assert got == self.truth(stmt, params), label
        if executions is not None:
            assert n1 - n0 == executions, f"{label}: {n1 - n0} executions, wanted {executions}"
        return got

    def write(self, *stmts: Any) -> None:
        with self.engine.begin() as conn:
            for s in stmts:
                if isinstance(s, tuple):
                    conn.execute(*s)
                else:
                    conn.execute(s)


def make_env(driver: str, request: Any, tmp_path: Any, invalidation: str = "precise") -> Env:
    url = db_url(driver, request, tmp_path)
    setup = create_engine(url)
    md.drop_all(setup)
    md.create_all(setup)
    with setup.begin() as conn:
        if setup.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.execute(insert(C), [{"id": i, "name": f"c{i}", "region": None} for i in range(1, 7)])
        conn.execute(insert(ORD), SEED_ORDERS)
    setup.dispose()
    cache = QueryCache(invalidation=invalidation)
    engine = create_engine(url)
    _fast_sqlite(engine)
    counter = counter_for(engine)
    cache.wrap(engine)
    plain = create_engine(url)
    _fast_sqlite(plain)
    return Env(cache, engine, plain, counter)


@pytest.fixture(params=["pysqlite", "psycopg"])
def env(request, tmp_path):
    e = make_env(request.param, request, tmp_path)
    yield e
    e.engine.dispose()
    e.plain.dispose()
    e.counter.close()
    e.cache.close()


def by_customer(label: str) -> Any:
    return (
        select(ORD.c.id.label(label), ORD.c.customer_id, ORD.c.total)
        .where(ORD.c.customer_id == bindparam("c"))
        .order_by(ORD.c.id)
    )


# -- 1. rules ---------------------------------------------------------------------


def test_eq_footprint_survives_other_key(env: Env):
    q = by_customer("q_eq")
    env.check("q_eq", q, {"c": 3}, 1)
    env.check("q_eq", q, {"c": 4}, 1)
    env.check("q_eq", q, {"c": 3}, 0)
    env.write(insert(ORD).values(order(100, 4)))
    env.check("q_eq", q, {"c": 3}, 0)  # kept
    env.check("q_eq", q, {"c": 4}, 1)  # dropped, sees the new order
    env.check("q_eq", q, {"c": 4}, 0)


def test_in_footprint(env: Env):
    q = select(ORD.c.id.label("q_in"), ORD.c.total).where(ORD.c.customer_id.in_([1, 2]))
    q = q.order_by(ORD.c.id)
    env.check("q_in", q, None, 1)
    env.write(insert(ORD).values(order(100, 4)))
    env.check("q_in", q, None, 0)
    env.write(insert(ORD).values(order(101, 2)))
    env.check("q_in", q, None, 1)


def test_is_null_footprint(env: Env):
    q = select(ORD.c.id.label("q_null"), ORD.c.customer_id).where(ORD.c.note.is_(None))
    q = q.order_by(ORD.c.id)
    env.check("q_null", q, None, 1)
    env.write(insert(ORD).values(order(100, 4, note="set")))
    env.check("q_null", q, None, 0)
    env.write(insert(ORD).values(order(101, 4, note=None)))
    env.check("q_null", q, None, 1)
    env.write(update(ORD).where(ORD.c.id == 1).values(note=None))
    env.check("q_null", q, None, 1)


def test_range_footprint(env: Env):
    q = (
        select(ORD.c.id.label("q_rng"), ORD.c.created_at)
        .where(ORD.c.created_at >= bindparam("a"), ORD.c.created_at < bindparam("b"))
        .order_by(ORD.c.id)
    )
    p = {"a": DAY0 + dt.timedelta(days=5), "b": DAY0 + dt.timedelta(days=10)}
    between = select(ORD.c.id.label("q_btw")).where(ORD.c.total.between(10, 40)).order_by(ORD.c.id)
    env.check("q_rng", q, p, 1)
    env.check("q_btw", between, None, 1)
    env.write(insert(ORD).values(order(100, 4, days=10, total=41)))  # b is exclusive
    env.check("q_rng", q, p, 0)
    env.check("q_btw", between, None, 0)
    env.write(insert(ORD).values(order(101, 4, days=9, total=40)))
    env.check("q_rng", q, p, 1)
    env.check("q_btw", between, None, 1)


def test_update_of_unreferenced_column(env: Env):
    names = select(C.c.id.label("q_name"), C.c.name).where(C.c.id == bindparam("i"))
    regions = select(C.c.id.label("q_region"), C.c.region).where(C.c.id == bindparam("i"))
    env.check("q_name", names, {"i": 2}, 1)
    env.check("q_region", regions, {"i": 2}, 1)
    env.write(update(C).where(C.c.id == 2).values(region="north"))
    env.check("q_name", names, {"i": 2}, 0)  # sets only a column it does not use
    env.check("q_region", regions, {"i": 2}, 1)
    env.write(update(C).where(C.c.id == 2).values(name="renamed"))
    env.check("q_name", names, {"i": 2}, 1)
    env.check("q_region", regions, {"i": 2}, 0)


def test_row_moved_between_footprints(env: Env):
    q = by_customer("q_mv")
    for c in (1, 3, 4):
        env.check("q_mv", q, {"c": c}, 1)
    env.write(
        text("UPDATE pc_orders SET customer_id = 4 WHERE id = 7 AND customer_id = 3"),
    )
    assert 7 not in [r[0] for r in env.check("q_mv", q, {"c": 3}, 1)]
    assert 7 in [r[0] for r in env.check("q_mv", q, {"c": 4}, 1)]
    env.check("q_mv", q, {"c": 1}, 0)


def test_unknown_image_drops_everything_keyed(env: Env):
    q = by_customer("q_unk")
    ids = (
        select(ORD.c.id.label("q_ids"))
        .where(ORD.c.customer_id == bindparam("c"))
        .order_by(ORD.c.id)
    )
    for c in (1, 2):
        env.check("q_unk", q, {"c": c}, 1)
        env.check("q_ids", ids, {"c": c}, 1)
    # a function of the row: no image, no pre-image
    env.write(update(ORD).where(func.abs(ORD.c.total) > 5).values(total=ORD.c.total + 1))
    for c in (1, 2):
        env.check("q_unk", q, {"c": c}, 1)
        env.check("q_ids", ids, {"c": c}, 0)  # changes only `total`, unused here


def test_update_by_range_where(env: Env):
    """``WHERE total > :t``: only the pre-image knows the touched customers."""
    q = by_customer("q_gt")
    for c in range(1, 6):
        env.check("q_gt", q, {"c": c}, 1)
    touched = {r[0] for r in env.truth(select(ORD.c.customer_id).where(ORD.c.total > 90))}
    assert touched and len(touched) < 5
    env.write(update(ORD).where(ORD.c.total > 90).values(total=ORD.c.total + 1))
    for c in range(1, 6):
        env.check("q_gt", q, {"c": c}, 1 if c in touched else 0)


def test_no_preimage_when_the_statement_gives_every_keyed_column(env: Env):
    """A pre-image is read only for keyed columns the write itself does not
    give, of results that read a column it changes (counted on the database)."""
    by_id = select(ORD.c.id.label("q_pk"), ORD.c.total).where(ORD.c.id == bindparam("i"))
    ids_of = select(ORD.c.id.label("q_cu")).where(ORD.c.customer_id == bindparam("c"))
    ids_of = ids_of.order_by(ORD.c.id)
    env.check("q_pk", by_id, {"i": 7}, 1)
    env.check("q_pk", by_id, {"i": 8}, 1)
    env.check("q_cu", ids_of, {"c": 3}, 1)  # keyed on customer_id, reads no total
    before = env.counter.preimages()
    env.write(update(ORD).where(ORD.c.id == 7).values(total=5))
    assert env.counter.preimages() == before
    env.check("q_pk", by_id, {"i": 7}, 1)
    env.check("q_pk", by_id, {"i": 8}, 0)
    env.check("q_cu", ids_of, {"c": 3}, 0)
    # a result keyed on customer_id that reads total: only a pre-image tells
    # which customer order 7 belongs to
    q = by_customer("q_need")
    env.check("q_need", q, {"c": 3}, 1)
    env.check("q_need", q, {"c": 4}, 1)
    env.write(update(ORD).where(ORD.c.id == 7).values(total=6))
    assert env.counter.preimages() == before + 1
    env.check("q_need", q, {"c": 3}, 1)  # order 7 is customer 3's
    env.check("q_need", q, {"c": 4}, 0)
    env.check("q_pk", by_id, {"i": 8}, 0)


def test_no_preimage_for_keys_no_stored_result_uses(env: Env):
    """Once no stored result is keyed on a column (its last one dropped), a
    write reads no pre-image for it; one stored again brings it back."""
    q = by_customer("q_gone")
    env.check("q_gone", q, {"c": 3}, 1)
    before = env.counter.preimages()
    env.write(update(ORD).where(ORD.c.id == 7).values(total=6))
    assert env.counter.preimages() == before + 1  # which customer's is order 7?
    env.write(update(ORD).where(ORD.c.id == 8).values(total=7))
    assert env.counter.preimages() == before + 1  # nothing stored to save
    env.check("q_gone", q, {"c": 3}, 1)
    env.check("q_gone", q, {"c": 3}, 0)
    env.write(update(ORD).where(ORD.c.id == 8).values(total=8))
    assert env.counter.preimages() == before + 2
    env.check("q_gone", q, {"c": 3}, None)


def test_table_mode_drops_everything(request, tmp_path):
    for driver in ("pysqlite", "psycopg"):
        (tmp_path / driver).mkdir()
        e = make_env(driver, request, tmp_path / driver, invalidation="table")
        try:
            q = by_customer("q_tbl")
            e.check("q_tbl", q, {"c": 3}, 1)
            e.check("q_tbl", q, {"c": 3}, 0)
            e.write(insert(ORD).values(order(100, 4)))
            e.check("q_tbl", q, {"c": 3}, 1)
        finally:
            e.engine.dispose()
            e.plain.dispose()
            e.counter.close()
            e.cache.close()


def test_rollback_drops_nothing(env: Env):
    q = by_customer("q_tx")
    env.check("q_tx", q, {"c": 3}, 1)
    env.check("q_tx", q, {"c": 1}, 1)
    with env.engine.connect() as conn:
        tx = conn.begin()
        conn.execute(insert(ORD).values(order(100, 3)))
        n0 = env.counter.count("AS q_tx")
        inside = [tuple(r) for r in conn.execute(q, {"c": 3})]
        assert 100 in [r[0] for r in inside]  # its own write, from the database
        tx.rollback()
    assert env.counter.count("AS q_tx") - n0 == 1
    env.check("q_tx", q, {"c": 3}, 0)
    env.check("q_tx", q, {"c": 1}, 0)
    env.write(insert(ORD).values(order(100, 3)))
    env.check("q_tx", q, {"c": 3}, 1)
    env.check("q_tx", q, {"c": 1}, 0)


def test_executemany_insert(env: Env):
    q = by_customer("q_many")
    for c in (3, 4, 5):
        env.check("q_many", q, {"c": c}, 1)
    env.write((insert(ORD), [order(100, 4), order(101, 5)]))
    env.check("q_many", q, {"c": 3}, 0)
    env.check("q_many", q, {"c": 4}, 1)
    env.check("q_many", q, {"c": 5}, 1)


def test_orm_writes(env: Env):
    Session = env.cache.sessionmaker(bind=env.engine)

    def orm_read(session: Any, c: int) -> list[Any]:
        got = session.scalars(select(Order).where(Order.customer_id == c).order_by(Order.id))
        return [(o.id, o.customer_id, o.total, o.created_at, o.note, o.status) for o in got]

    frag = "pc_orders.status FROM pc_orders WHERE pc_orders.customer_id"

    def check(c: int, executions: int | None = None) -> None:
        n0 = env.counter.count(frag)
        with Session() as s:
            got = orm_read(s, c)
        n1 = env.counter.count(frag)
        with env.plain.connect() as conn:
            want = [tuple(r) for r in conn.execute(select(ORD).where(ORD.c.customer_id == c))]
        assert got == sorted(want), c
        if executions is not None:
            assert n1 - n0 == executions, (c, n1 - n0)

    for c in (1, 3, 4):
        check(c, 1)
    with Session() as s:
        s.add(Order(**order(100, 4)))
        s.commit()
    check(1, 0)
    check(3, 0)
    check(4, 1)
    with Session() as s:
        s.get(Order, 7).total = 999
        s.commit()
    check(3, 1)
    check(4, 0)
    with Session() as s:
        s.get(Order, 100).customer_id = 3  # moves it
        s.commit()
    check(3, 1)
    check(4, 1)
    with Session() as s:
        s.delete(s.get(Order, 100))
        s.delete(s.get(Order, 7))
        s.commit()
    check(3, 1)
    check(4)
    check(1)


# -- 2. stale set ------------------------------------------------------------------


@pytest.mark.parametrize("same_footprint", [True, False])
def test_stale_set_race(env: Env, same_footprint: bool):
    """A write committed between a miss's query and its store is never hidden."""
    q = by_customer("q_race")
    before = env.truth(q, {"c": 3})
    reader_in, writer_done = threading.Event(), threading.Event()
    armed = [True]

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "q_race" in statement and armed[0]:
            armed[0] = False
            reader_in.set()
            assert writer_done.wait(20)

    event.listen(env.engine, "after_cursor_execute", hold)
    out: dict[str, Any] = {}

    def reader() -> None:
        try:
            out["rows"] = env.read(q, {"c": 3})
        except BaseException as exc:  # pragma: no cover - reported below
            out["error"] = exc

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert reader_in.wait(20)
        env.write(insert(ORD).values(order(100, 3 if same_footprint else 4)))
    finally:
        writer_done.set()
        t.join(20)
    event.remove(env.engine, "after_cursor_execute", hold)
    assert "error" not in out, out.get("error")
    assert out["rows"] == before  # the reader really read before the commit
    rows = env.check("q_race", q, {"c": 3}, 1 if same_footprint else 0)
    assert (100 in [r[0] for r in rows]) is same_footprint


# -- 3. differential random workload -------------------------------------------------

CUSTOMERS = range(1, 7)
b = bindparam


def _templates(p: str, truth: bool) -> list[Any]:
    """Every read kind, labelled ``p<k>``; the truth variant differs in
    structure (pg_stat_statements ignores labels when it groups statements)."""
    j = ORD.join(C, C.c.id == ORD.c.customer_id)
    monthly = (
        select(ORD.c.customer_id, func.count(ORD.c.id).label("n"))
        .where(ORD.c.created_at >= b("a"), ORD.c.created_at < b("e"))
        .group_by(ORD.c.customer_id)
        .cte(f"m{p}")
    )
    mine = select(ORD.c.id, ORD.c.total).where(ORD.c.customer_id == b("c")).subquery(f"d{p}")
    out = [
        by_customer(f"{p}0"),
        select(ORD.c.id.label(f"{p}1"), ORD.c.total).where(
            ORD.c.customer_id.in_(b("cs", expanding=True))
        ),
        select(ORD.c.id.label(f"{p}2")).where(ORD.c.note.is_(None), ORD.c.customer_id == b("c")),
        select(ORD.c.id.label(f"{p}3"), ORD.c.created_at).where(
            ORD.c.created_at >= b("a"), ORD.c.created_at < b("e")
        ),
        select(ORD.c.id.label(f"{p}4")).where(ORD.c.total.between(b("lo"), b("hi"))),
        select(C.c.id.label(f"{p}5"), C.c.name).where(C.c.id == b("c")),
        select(ORD.c.id.label(f"{p}6"), ORD.c.customer_id).where(ORD.c.id == b("i")),
        select(ORD.c.id.label(f"{p}7"), C.c.name).select_from(j).where(C.c.region == b("r")),
        select(ORD.c.id.label(f"{p}8"), C.c.name).select_from(j).where(C.c.region.is_(None)),
        select(func.count(ORD.c.id).label(f"{p}9")).where(ORD.c.status == b("s")),
        select(ORD.c.id.label(f"{p}10"), ORD.c.total).where(
            ORD.c.customer_id == b("c"), ORD.c.created_at >= b("a")
        ),
        select(func.coalesce(func.sum(ORD.c.total), 0).label(f"{p}11")),
        select(C.c.id.label(f"{p}12"), C.c.region).where(C.c.region.is_(None)),
        # guards (status only filters), a CTE, a derived table, LIMIT pages
        select(func.coalesce(func.sum(ORD.c.total), 0).label(f"{p}13")).where(
            ORD.c.status != b("s"), ORD.c.customer_id == b("c")
        ),
        select(C.c.name.label(f"{p}14"), monthly.c.n)
        .join(monthly, monthly.c.customer_id == C.c.id)
        .order_by(C.c.id),
        select(func.count(mine.c.id).label(f"{p}15"), func.coalesce(func.sum(mine.c.total), 0)),
        select(ORD.c.id.label(f"{p}16"), ORD.c.created_at)
        .where(ORD.c.status == b("s"))
        .order_by(ORD.c.created_at.desc(), ORD.c.id.desc())
        .limit(4)
        .offset(b("o")),
        select(ORD.c.id.label(f"{p}17"), ORD.c.note)
        .where(ORD.c.customer_id == b("c"))
        .order_by(ORD.c.note, ORD.c.id)
        .limit(2),
    ]
    return [t.where(text("2 > 1")) if truth else t for t in out]


CACHED, TRUTH = _templates("rq", False), _templates("pq", True)
NAMES = [{bp.key for bp in t.compile().binds.values()} for t in CACHED]


def _read_params(rng: random.Random) -> tuple[int, dict[str, Any]]:
    day = DAY0 + dt.timedelta(days=rng.randrange(40))
    lo = rng.randrange(100)
    params = {
        "c": rng.choice(CUSTOMERS),
        "cs": rng.sample(list(CUSTOMERS), rng.randint(1, 4)),  # every list length: one analysis
        "a": day,
        "e": day + dt.timedelta(days=rng.randrange(1, 15)),
        "lo": lo,
        "hi": lo + 20,
        "i": rng.randrange(1, 60),
        "r": rng.choice(["n", "s"]),
        "s": rng.choice(["open", "done", "cancelled"]),
        "o": rng.randrange(3),
    }
    k = rng.randrange(len(CACHED))
    return k, {n: v for n, v in params.items() if n in NAMES[k]}


MOVE = text("UPDATE pc_orders SET customer_id = :new WHERE id = :i AND customer_id = :old")
WRITES = [
    insert(ORD),
    update(ORD).where(ORD.c.id == b("oid")).values(total=b("t")),
    update(ORD).where(ORD.c.customer_id == b("cid")).values(total=ORD.c.total + 1),
    delete(ORD).where(ORD.c.id == b("oid")),
    delete(ORD).where(ORD.c.created_at >= b("d0"), ORD.c.created_at < b("d1")),
    update(ORD).where(ORD.c.id == b("oid")).values(note=b("nt"), status="open"),
    update(ORD).where(ORD.c.id == b("oid")).values(created_at=b("d0")),
    update(C).where(C.c.id == b("cid")).values(region=b("rg")),
    update(C).where(C.c.id == b("cid")).values(name=b("nm")),
    update(ORD).where(ORD.c.id == b("oid")).values(status=b("st")),
    update(ORD).where(ORD.c.id == b("oid")).values(total=ORD.c.total - b("dt")),
]
RETURNING = insert(ORD).returning(ORD.c.id, sort_by_parameter_order=True)


def _write(rng: random.Random, conn: Any, next_id: list[int]) -> None:
    k = rng.randrange(13)
    c = rng.choice(CUSTOMERS)
    oid = rng.randrange(1, next_id[0])
    d0 = DAY0 + dt.timedelta(days=rng.randrange(40))
    if k <= 1:  # one row, or executemany of a few
        rows = []
        for _ in range(1 if k == 0 else rng.randrange(2, 4)):
            next_id[0] += 1
            rows.append(
                order(
                    next_id[0],
                    rng.choice(CUSTOMERS),
                    rng.randrange(40),
                    rng.choice([None, "a"]),
                    rng.randrange(100),
                )
            )
        many = RETURNING if rng.random() < 0.5 else WRITES[0]  # insertmanyvalues forms
        conn.execute(WRITES[0], rows[0]) if k == 0 else conn.execute(many, rows)
    elif k == 2:
        conn.execute(MOVE, {"new": c, "i": oid, "old": rng.choice(CUSTOMERS)})
    else:
        conn.execute(
            WRITES[k - 2],
            {
                "oid": oid,
                "t": rng.randrange(100),
                "cid": c,
                "d0": d0,
                "d1": d0 + dt.timedelta(days=2),
                "nt": rng.choice([None, "b"]),
                "rg": rng.choice(["n", "s", None]),
                "nm": f"c{c}-{rng.randrange(9)}",
                "st": rng.choice(["open", "done", "cancelled"]),
                "dt": rng.randrange(1, 4),
            },
        )


def run_random(env: Env, ops: int, seconds: float, seed: int) -> tuple[int, int, int]:
    """(operations done, cached reads, their DB executions); asserts zero mismatches."""
    lock = RWLock()
    next_id = [N_ORDERS]
    done = [0, 0]
    mismatches: list[Any] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds
    count_lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        reads = 0
        try:
            for _ in range(ops // 4):
                if time.monotonic() > deadline:
                    break
                if rng.random() < 0.12:
                    with lock.write(), env.engine.connect() as conn:
                        tx = conn.begin()
                        for _ in range(rng.choice([1, 1, 1, 2])):
                            _write(rng, conn, next_id)
                        if rng.random() < 0.1:
                            tx.rollback()
                        else:
                            tx.commit()
                else:
                    k, params = _read_params(rng)
                    with lock.read():
                        got = env.read(CACHED[k], params)
                        want = env.read(TRUTH[k], params, env.plain)
                    reads += 1
                    if sorted(got, key=repr) != sorted(want, key=repr):
                        mismatches.append((k, params, got, want))
                with count_lock:
                    done[0] += 1
        except BaseException as exc:
            errors.append(exc)
        with count_lock:
            done[1] += reads

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert not mismatches, mismatches[:3]
    return done[0], done[1], env.counter.count("AS rq")


@pytest.mark.parametrize(
    "driver, ops, seconds", [("pysqlite", 52_000, 60.0), ("psycopg", 50_000, 14.0)]
)
def test_random_differential(request, tmp_path, driver: str, ops: int, seconds: float):
    e = make_env(driver, request, tmp_path)
    try:
        done, reads, executed = run_random(e, ops, seconds, seed=len(driver))
        print(f"\n{driver}: {done} ops, {reads} cached reads, {executed} executed on the DB")
        assert executed < reads * 0.8  # the cache really served most reads
        if driver == "pysqlite":
            assert done >= 50_000
    finally:
        e.engine.dispose()
        e.plain.dispose()
        e.counter.close()
        e.cache.close()
