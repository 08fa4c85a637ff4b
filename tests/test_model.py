"""Model-based test of the whole cache: a hypothesis state machine drives a
wrapped engine and a plain one side by side, on two identical SQLite files.

Every step is applied to both sides: reads (Core and ORM, several query
shapes), writes, transactions with savepoints, in several interleaved
sessions; TTL expiry on a clock the test controls; memory pressure (a tiny
memory budget and large rows); ``invalidate()`` and ``clear()``. Each read must
return exactly what the plain engine returns (or fail the same way), and
after every step a fresh connection on each side must agree too.

The CI profile runs 200 examples of up to 25 steps (well under a minute); a
longer run::

    QC_MODEL_PROFILE=long python -m pytest -q tests/test_model.py   # 5000 x 60 steps
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Integer, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from querycache import QueryCache
from querycache.tiers import memory as memory_tier
from tests.dbcount import SqliteTrace

PROFILES = {
    "ci": settings(
        max_examples=200,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
    "long": settings(
        max_examples=5000,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
}
PROFILE = PROFILES[os.environ.get("QC_MODEL_PROFILE", "ci")]

SESSIONS = 3
TTL = 10.0


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grp: Mapped[int] = mapped_column(Integer)
    val: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String)


READS = [
    ("SELECT id, grp, val FROM items WHERE id = :a", 1),
    ("SELECT id, val FROM items WHERE grp = :a ORDER BY id", 1),
    ("SELECT count(*), sum(val) FROM items WHERE val > :a", 1),
    ("SELECT id, name FROM items WHERE val BETWEEN :a AND :b ORDER BY id", 2),
    ("SELECT grp, count(*), max(val) FROM items GROUP BY grp ORDER BY grp", 0),
    ("SELECT id, name, val, grp FROM items ORDER BY id", 0),  # large: memory pressure
    ("SELECT i.id, j.id FROM items i JOIN items j ON i.grp = j.grp WHERE i.id = :a", 1),
]
SMALL = st.integers(0, 6)
NAMES = st.sampled_from(["", "x", "y" * 40, "z" * 600])

#: totals over all examples: reads made on the wrapped side, and how many the
#: database executed (counted by SQLite's trace callback)
TOTALS = {"reads": 0, "executed": 0}


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:  # both sides must fail the same way
        return ("error", type(exc).__name__)


class CacheModel(RuleBasedStateMachine):
    """Two worlds, one cached; they must never disagree."""

    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="qc-model-")
        self.now = 1000.0
        self._clock = memory_tier._monotonic
        memory_tier._monotonic = lambda: self.now  # the memory tier's only clock
        self.cache = QueryCache(
            ttl=TTL, memory_bytes=24_000, max_entry_bytes=6_000, admission="always"
        )
        self.engines = []
        for name in ("cached", "plain"):
            engine = create_engine(f"sqlite:///{self.dir}/{name}.db")
            if name == "cached":
                self.trace = SqliteTrace(engine)
                engine = self.cache.wrap(engine)
            Base.metadata.create_all(engine)
            with engine.begin() as c:
                for i in range(1, 9):
                    c.execute(
                        text("INSERT INTO items VALUES (:i, :g, :v, :n)"),
                        {"i": i, "g": i % 3, "v": i * 2, "n": "n" * i},
                    )
            self.engines.append(engine)
        self.sessions = [[e.connect() for e in self.engines] for _ in range(SESSIONS)]
        self.savepoints: list[list[Any]] = [[] for _ in range(SESSIONS)]
        self.writer: int | None = None
        self.orm = self.cache.sessionmaker(bind=self.engines[0], expire_on_commit=False)

    def teardown(self) -> None:
        if not hasattr(self, "dir"):
            return
        for pair in self.sessions:
            for c in pair:
                c.close()
        for e in self.engines:
            e.dispose()
        self.cache.close()
        memory_tier._monotonic = self._clock
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------
    def both(self, session: int, sql: str, params: dict[str, Any]) -> None:
        pair = self.sessions[session]
        results = [
            _outcome(lambda c=c: [tuple(r) for r in c.execute(text(sql), params)]) for c in pair
        ]
        assert results[0] == results[1], (sql, params, results)

    def may_write(self, session: int) -> bool:
        return self.writer is None or self.writer == session

    # -- reads -------------------------------------------------------------------
    READ = st.tuples(
        st.integers(0, SESSIONS - 1), st.integers(0, len(READS) - 1), SMALL, st.integers(0, 3)
    )

    @rule(reads=st.lists(READ, min_size=1, max_size=4))
    def read(self, reads: list[tuple[int, int, int, int]]) -> None:
        for session, q, a, b in reads:
            sql, n = READS[q]
            params = {"a": a, "b": a + b}
            before = self.trace.count("FROM items")
            self.both(session, sql, dict(list(params.items())[:n]))
            TOTALS["reads"] += 1
            TOTALS["executed"] += self.trace.count("FROM items") > before

    # reads are most of a workload: a second rule doubles their share of steps
    read_more = read

    @rule(g=st.integers(0, 3))
    def orm_read(self, g: int) -> None:
        stmt = select(Item).where(Item.grp == g).order_by(Item.id)
        with self.orm() as s:
            cached = [(i.id, i.grp, i.val, i.name) for i in s.scalars(stmt)]
        with Session(self.engines[1]) as s:
            plain = [(i.id, i.grp, i.val, i.name) for i in s.scalars(stmt)]
        assert cached == plain

    # -- writes --------------------------------------------------------------------
    @rule(session=st.integers(0, SESSIONS - 1), i=st.integers(1, 14), g=SMALL, v=SMALL, n=NAMES)
    def insert(self, session: int, i: int, g: int, v: int, n: str) -> None:
        if not self.may_write(session):
            return
        self.writer = session
        self.both(
            session,
            "INSERT INTO items (id, grp, val, name) VALUES (:i, :g, :v, :n) RETURNING id",
            {"i": i, "g": g % 4, "v": v, "n": n},
        )

    @rule(session=st.integers(0, SESSIONS - 1), i=st.integers(1, 14), v=SMALL, n=NAMES)
    def update_one(self, session: int, i: int, v: int, n: str) -> None:
        if not self.may_write(session):
            return
        self.writer = session
        self.both(
            session, "UPDATE items SET val = :v, name = :n WHERE id = :i", {"i": i, "v": v, "n": n}
        )

    @rule(session=st.integers(0, SESSIONS - 1), g=st.integers(0, 3), d=st.integers(1, 3))
    def update_group(self, session: int, g: int, d: int) -> None:
        if not self.may_write(session):
            return
        self.writer = session
        self.both(session, "UPDATE items SET grp = (grp + :d) % 4 WHERE grp = :g", {"g": g, "d": d})

    @rule(session=st.integers(0, SESSIONS - 1), i=st.integers(1, 14))
    def delete(self, session: int, i: int) -> None:
        if not self.may_write(session):
            return
        self.writer = session
        self.both(session, "DELETE FROM items WHERE id = :i", {"i": i})

    # -- transactions ------------------------------------------------------------------
    @rule(session=st.integers(0, SESSIONS - 1))
    def savepoint(self, session: int) -> None:
        if not self.may_write(session) or len(self.savepoints[session]) >= 3:
            return
        self.writer = session
        self.savepoints[session].append([c.begin_nested() for c in self.sessions[session]])

    @rule(release=st.booleans())
    def end_savepoint(self, release: bool) -> None:
        if self.writer is None or not self.savepoints[self.writer]:
            return
        for sp in self.savepoints[self.writer].pop():
            sp.commit() if release else sp.rollback()

    @rule(commit=st.booleans())
    def end_transaction(self, commit: bool) -> None:
        if self.writer is None:
            return
        for c in self.sessions[self.writer]:
            c.commit() if commit else c.rollback()
        self.savepoints[self.writer].clear()
        self.writer = None

    # -- the cache's own levers -----------------------------------------------------------
    @rule(dt=st.sampled_from([0.5, 3.0, TTL + 1]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @rule(everything=st.booleans())
    def invalidate(self, everything: bool) -> None:
        if everything:
            self.cache.clear()
        else:
            self.cache.invalidate("items")

    # -- after every step -------------------------------------------------------------------
    @invariant()
    def fresh_connections_agree(self) -> None:
        if not hasattr(self, "dir"):
            return
        out = []
        for e in self.engines:
            with e.connect() as c:
                out.append([tuple(r) for r in c.execute(text(READS[4][0]))])
        assert out[0] == out[1]


def test_cache_matches_plain_engine_under_random_operations() -> None:
    TOTALS.update(reads=0, executed=0)
    run_state_machine_as_test(CacheModel, settings=PROFILE)
    # the model exercised the cache: many reads never reached the database
    assert TOTALS["reads"] > 100
    assert TOTALS["executed"] < TOTALS["reads"] * 0.9, TOTALS
