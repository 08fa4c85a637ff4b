"""Footprints of reads and images of writes: which rows a statement can touch.

Table-level invalidation drops every entry that read a written table. Most of
those entries could not have changed: ``WHERE customer_id = 3`` is not
affected by an order of customer 4. This module reads, once per SQL string,

* for a cacheable ``SELECT``: per table of its top-level ``FROM`` (inner
  joins only), the top-level ``AND`` conjuncts that compare one of the
  table's columns with a parameter or a literal (``=``, ``IN (...)``,
  ``IS NULL``, ``<``, ``<=``, ``>``, ``>=``, ``BETWEEN``), and the columns
  of that table the statement references anywhere (``None``: all of them);
* for an ``INSERT``/``UPDATE``/``DELETE``: what is known about the rows it
  touches — the inserted values, the ``SET`` values, the ``WHERE``
  conjuncts that pin a column to values — and which columns it changes.

These are *specs*: values are :data:`Source` references to DBAPI
parameters or literals, bound per execution by
:mod:`querycache.invalidation.images`. Everything the analysis cannot pin
down is left out, and "left out" always means "may be anything": an ``OR``,
a function of the column, the nullable side of an outer join, a subquery,
a table named twice, a set operation. Precision degrades to table-level
invalidation, never to a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from querycache.analysis.conditions import (
    SQLGLOT,
    Cond,
    Ctx,
    cond_of,
    conjuncts,
    markers,
    split_between,
    table_name,
)
from querycache.analysis.placeholders import family_of
from querycache.analysis.statement import _quiet
from querycache.analysis.writespecs import WriteSpec, write_spec

__all__ = ["Cond", "ReadFootprint", "TableFootprint", "WriteSpec", "footprint_of"]


@dataclass(frozen=True, slots=True)
class TableFootprint:
    """A read's conditions on one table's own rows, and the columns it uses."""

    conds: tuple[Cond, ...]
    columns: frozenset[str] | None  # None: every column (``*``)
    #: inner-join equalities ``(own column, other table, other column)``
    joins: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class ReadFootprint:
    """Per table name: its :class:`TableFootprint`. A table read but not
    listed depends on every row and every column."""

    tables: dict[str, TableFootprint]


def footprint_of(sql: str, dialect: str) -> ReadFootprint | WriteSpec | None:
    """The footprint (reads) or write spec (writes) of ``sql``, ``None`` when
    nothing can be pinned down. Memoized; never raises."""
    _quiet.on = True  # sqlglot's parser fallbacks are not the user's business
    try:
        return _footprint(sql, dialect)
    except Exception:
        return None
    finally:
        _quiet.on = False


@lru_cache(maxsize=8192)
def _footprint(sql: str, dialect: str) -> ReadFootprint | WriteSpec | None:
    name = SQLGLOT.get(dialect)
    text, accessors = markers(sql, family_of(name))
    if text is None:
        return None
    trees = sqlglot.parse(text, read=name)
    if len(trees) != 1 or trees[0] is None:
        return None
    tree = trees[0]
    ctx = Ctx(accessors, dialect)
    if isinstance(tree, exp.Select):
        return _read(tree, ctx)
    if isinstance(tree, exp.Insert):
        return write_spec(tree, ctx)
    if isinstance(tree, exp.Update | exp.Delete):
        return write_spec(tree, ctx)
    return None


def _read(tree: exp.Select, ctx: Ctx) -> ReadFootprint | None:
    from_ = tree.args.get("from_") or tree.args.get("from")
    if from_ is None or tree.args.get("with_") or tree.args.get("with"):
        return None
    sources: dict[str, str] = {}  # alias or name -> table
    usable: set[str] = set()  # FROM and inner joins: WHERE filters their rows
    nullable: dict[str, Any] = {}  # LEFT joined: only their ON filters them
    first = from_.this
    joins = tree.args.get("joins") or []
    items = [(first, None)] + [(j.this, j) for j in joins]
    on_conditions = []
    for node, join in items:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            continue  # a subquery, a table-valued function: every row
        table = table_name(node)
        sources[node.alias_or_name.lower()] = table
        side = (join.args.get("side") or "").upper() if join is not None else ""
        kind = (join.args.get("kind") or "").upper() if join is not None else ""
        if side in ("RIGHT", "FULL"):
            return None  # earlier tables become nullable
        if kind in ("NATURAL", "ANTI", "SEMI"):
            continue
        on = join.args.get("on") if join is not None else None
        if side == "LEFT":
            if on is not None:
                nullable[table] = on
            continue
        usable.add(table)
        if on is not None:
            on_conditions.append(on)
    # a table named twice (a self-join, or again in a subquery) is every row
    counts: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        counts[table_name(t)] = counts.get(table_name(t), 0) + 1
    usable = {t for t in usable if counts.get(t) == 1}
    nullable = {t: on for t, on in nullable.items() if counts.get(t) == 1}
    if not usable and not nullable:
        return None
    single = next(iter(sources.values())) if len(sources) == 1 else None
    known = usable | set(nullable)

    def resolver(allowed: set[str]) -> Any:
        def resolve(col: exp.Column) -> str | None:
            qualifier = col.table.lower() if col.table else ""
            table = sources.get(qualifier) if qualifier else single
            return table if table in allowed else None

        return resolve

    conds: dict[str, list[Cond]] = {t: [] for t in known}
    links: dict[str, list[tuple[str, str, str]]] = {t: [] for t in known}
    wheres = [(tree.args.get("where"), usable, None)]
    wheres += [(on, usable, None) for on in on_conditions]
    # a LEFT joined table's rows matter only through its ON: its own conditions
    # there, and its equalities with the tables it hangs on
    wheres += [(on, usable | {t}, t) for t, on in nullable.items()]
    for where, allowed, only in wheres:
        if where is None:
            continue
        resolve = resolver(allowed)
        node = where.this if isinstance(where, exp.Where) else where
        for c in conjuncts(node):
            found = cond_of(c, resolve, ctx)
            if found is not None:
                if only is None or found[0] == only:
                    conds[found[0]].extend(split_between(found[1]))
            elif type(c) is exp.EQ and isinstance(c.this, exp.Column):
                other = c.expression
                if isinstance(other, exp.Column):
                    a, b = resolve(c.this), resolve(other)
                    if a is not None and b is not None and a != b:
                        ca, cb = ctx.column(c.this), ctx.column(other)
                        if only is None or a == only:
                            links[a].append((ca, b, cb))
                        if only is None or b == only:
                            links[b].append((cb, a, ca))
    # T.a = U.b and U.b = v: T's rows matter only where T.a = v
    for t in known:
        for own, other, other_column in links[t]:
            if other not in usable:
                continue
            for cond in list(conds[other]):
                implied = Cond(own, "=", cond.values)
                if cond.op == "=" and cond.column == other_column and implied not in conds[t]:
                    conds[t].append(implied)
    usable = known
    columns: dict[str, set[str] | None] = {t: set() for t in usable}
    for star in tree.expressions:
        if isinstance(star, exp.Star):
            columns = dict.fromkeys(usable)
    for col in tree.find_all(exp.Column):
        qualifier = col.table.lower() if col.table else ""
        if isinstance(col.this, exp.Star):
            t = sources.get(qualifier)
            if t in columns:
                columns[t] = None
            continue
        targets = [sources[qualifier]] if qualifier in sources else list(usable)
        for t in targets:
            cols = columns.get(t)
            if cols is not None:
                cols.add(ctx.column(col))
    return ReadFootprint(
        {
            t: TableFootprint(
                tuple(conds[t]), None if cols is None else frozenset(cols), tuple(links[t])
            )
            for t, cols in columns.items()
        }
    )
