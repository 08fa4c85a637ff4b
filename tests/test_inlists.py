"""One analysis for every length of an IN list (querycache.analysis.inlists).

Differential: for statements SQLAlchemy expands (Core ``in_``, ORM
``selectinload``-style lists, text with written-out lists) in the paramstyles
of psycopg, asyncpg and pysqlite, the analysis derived from the template must
equal, field by field and cast by cast, the full analysis of the string.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    not_,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite

from querycache.analysis import analyzer as analyzer_module
from querycache.analysis.analyzer import Analyzer

m = MetaData()
t = Table(
    "t", m, Column("id", Integer, primary_key=True), Column("s", String(20)), Column("d", Date)
)
u = Table("u", m, Column("id", Integer, primary_key=True), Column("t_id", Integer))
DAY = datetime.date(2026, 1, 1)

DIALECTS = {
    "psycopg": (postgresql.psycopg.dialect(), "postgresql"),
    "asyncpg": (postgresql.asyncpg.dialect(), "postgresql"),
    "pysqlite": (sqlite.dialect(), "sqlite"),
}


def statements(n: int) -> dict[str, Any]:
    ids = list(range(1, n + 1))
    names = [f"n{i}" for i in ids]
    cte = select(t).where(t.c.id.in_(ids)).cte("c")
    sub = select(t).where(t.c.s.in_(names)).subquery("d")
    return {
        "one list": select(t).where(t.c.id.in_(ids)),
        "list then a range and a page": select(t)
        .where(t.c.s.in_(names), t.c.d > bindparam("x", value=DAY, type_=Date))
        .order_by(t.c.id)
        .limit(5),
        "two lists": select(t).where(t.c.id.in_(ids), t.c.s.in_(names)),
        "a range before the list": select(t).where(
            t.c.d >= bindparam("x", value=DAY, type_=Date), t.c.id.in_(ids)
        ),
        "not in": select(t).where(t.c.id.notin_(ids)),
        "in under or": select(t).where(or_(t.c.id.in_(ids), t.c.s == "z")),
        "in under not": select(t).where(not_(and_(t.c.id.in_(ids), t.c.s == "z"))),
        "in in a subquery": select(t).where(
            t.c.id.in_(select(u.c.t_id).where(u.c.id.in_(ids)).scalar_subquery())
        ),
        "join": select(t, u).join(u, u.c.t_id == t.c.id).where(u.c.id.in_(ids)),
        "tuple in": select(t).where(tuple_(t.c.id, t.c.s).in_(list(zip(ids, names, strict=True)))),
        "in a cte": select(cte.c.id).where(cte.c.s == "z"),
        "in a derived table": select(sub.c.id).where(sub.c.d > DAY),
        "literal list": select(t).where(t.c.id.in_([*ids[:1], bindparam("y", value=9)])),
    }


def reference(sql: str, dialect: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as mp:
        mp.setattr(analyzer_module, "collapse", lambda sql, family: None)
        return Analyzer().analyze(sql, dialect)


def same(a: Any, b: Any) -> None:
    for field in ("kind", "fingerprint", "fingerprint_id", "tables_read", "tables_written"):
        assert getattr(a, field) == getattr(b, field), field
    assert (a.cacheable, a.reason) == (b.cacheable, b.reason)
    fa, fb = a.footprint, b.footprint
    assert (fa is None) == (fb is None)
    if fa is None:
        return
    if not hasattr(fa, "tables"):  # a write: never derived, analysed in full
        assert repr(fa) == repr(fb)
        return
    assert fa.tables == fb.tables
    assert fa.page == fb.page
    for name, table in fa.tables.items():
        for ca, cb in zip(table.conds, fb.tables[name].conds, strict=True):
            assert [getattr(v, "how", None) for v in ca.values] == [
                getattr(v, "how", None) for v in cb.values
            ], (name, ca)


@pytest.mark.parametrize("driver", DIALECTS)
def test_every_length_gets_the_full_analysis(driver, monkeypatch):
    dialect, name = DIALECTS[driver]
    shared = Analyzer()
    derived = 0
    for n in (1, 2, 3, 7, 40):
        for label, stmt in statements(n).items():
            sql = stmt.compile(dialect=dialect).construct_expanded_state().statement
            got = shared.analyze(sql, name)
            same(got, reference(sql, name, monkeypatch))
            if n > 1 and shared._from_template(sql, name, shared._settings) is not None:
                derived += 1
            assert label
    # the common shapes really are derived, not analysed again
    assert derived >= 5 * 4 * 2


@pytest.mark.parametrize(
    "sql, dialect",
    [
        ("SELECT a FROM t WHERE t.b IN (?, ?, ?) AND t.c = ? LIMIT ?", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (:b1, :b2) AND t.c > :c", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (?, ?) AND t.c = 'IN (?, ?)' AND t.d = ?", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (?, /* two */ ?) AND t.d = ?", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (?, ?) OR t.d IN (?, ?, ?)", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (%(p)s, %(p)s) AND t.d = %(q)s", "postgresql"),
        ("SELECT a FROM t WHERE t.b IN (%(b1)s::INTEGER, %(b2)s::BIGINT)", "postgresql"),
        ("SELECT a FROM t WHERE t.b IN (%(b1)s, %(b2)s) AND t.c < %(b1)s", "postgresql"),
        ("SELECT a FROM t WHERE t.b IN ($1::VARCHAR(20), $2::VARCHAR(20)) LIMIT $3", "postgresql"),
        ("SELECT a FROM t WHERE t.b IN (%s, %s) AND t.c = %s", "postgresql"),
        ("SELECT a FROM t WHERE t.b IN (lower(%s), %s)", "postgresql"),
        ("UPDATE t SET a = 1 WHERE t.b IN (%s, %s)", "postgresql"),
        ("DELETE FROM t WHERE t.b IN (?, ?); SELECT 1", "sqlite"),
        ("SELECT a FROM t WHERE t.b IN (?, ?", "sqlite"),
    ],
)
def test_written_out_lists(sql, dialect, monkeypatch):
    same(Analyzer().analyze(sql, dialect), reference(sql, dialect, monkeypatch))


def test_text_lists_as_sqlalchemy_expands_them(monkeypatch):
    stmt = text("SELECT id FROM t WHERE id IN :ids AND s = :s").bindparams(
        bindparam("ids", expanding=True)
    )
    for dialect, name in DIALECTS.values():
        for n in (1, 2, 5):
            compiled = stmt.compile(dialect=dialect)
            sql = compiled.construct_expanded_state({"ids": list(range(n)), "s": "x"}).statement
            same(Analyzer().analyze(sql, name), reference(sql, name, monkeypatch))


def test_max_sql_length_still_refuses_a_long_list():
    sql = "SELECT a FROM t WHERE t.b IN (" + ", ".join(["?"] * 500) + ")"
    an = Analyzer(max_sql_length=1000)
    assert an.analyze("SELECT a FROM t WHERE t.b IN (?, ?)", "sqlite").cacheable
    refused = an.analyze(sql, "sqlite")
    assert not refused.cacheable and refused.fingerprint == "statement too long"
