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
from querycache.analysis.pages import Page, page_of
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
    #: columns used only in ``conds`` (nowhere else in the statement): a row
    #: whose truth of their conditions does not change cannot change the result
    filters: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, eq=False)
class ReadFootprint:
    """Per table name: its :class:`TableFootprint`. A table read but not
    listed depends on every row and every column."""

    tables: dict[str, TableFootprint]
    #: ``ORDER BY k LIMIT n`` of one table (:mod:`querycache.analysis.pages`)
    page: Page | None = None


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
    """The footprint of a ``SELECT``: its own ``FROM`` level, each derived table
    in a ``FROM`` and each (non-recursive) CTE body, each read as a ``SELECT``
    of its own: a row that fails the ``WHERE`` of the level it is read in
    cannot reach the result, whatever the levels above do with the rows."""
    counts: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        counts[table_name(t)] = counts.get(table_name(t), 0) + 1
    ctes: set[str] = set()
    bodies: list[exp.Select] = []
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is not None:
        if with_.args.get("recursive"):
            return None
        for cte in with_.expressions:
            ctes.add(cte.alias_or_name.lower())
            if isinstance(cte.this, exp.Select):
                bodies.append(cte.this)  # a set operation's tables: every row
        # a CTE named like a table it (or another) reads: which is which is unclear
        if any(counts.get(name, 0) > 1 for name in ctes) or any(
            table_name(t) in ctes for b in bodies for t in b.find_all(exp.Table)
        ):
            return None
    tables: dict[str, TableFootprint] = {}
    for level in [tree, *bodies]:
        found = _level(level, ctx, counts, ctes, level is tree)
        if found is None:
            return None  # a RIGHT/FULL join: its tables' rows may all matter
        tables.update(found)
    return ReadFootprint(tables, page_of(tree, ctx)) if tables else None


def _level(
    tree: exp.Select, ctx: Ctx, counts: dict[str, int], ctes: set[str], top: bool = False
) -> dict[str, TableFootprint] | None:
    """The footprints of one ``SELECT`` level's own tables (and, recursively,
    of its derived tables'); ``None`` when every table of it may matter."""
    if not top and (tree.args.get("with_") or tree.args.get("with")):
        return {}  # a WITH inside a subquery: its tables are every row
    from_ = tree.args.get("from_") or tree.args.get("from")
    if from_ is None:
        return {}
    derived: dict[str, TableFootprint] = {}
    sources: dict[str, str] = {}  # alias or name -> table
    usable: set[str] = set()  # FROM and inner joins: WHERE filters their rows
    nullable: dict[str, Any] = {}  # LEFT joined: only their ON filters them
    first = from_.this
    joins = tree.args.get("joins") or []
    items = [(first, None)] + [(j.this, j) for j in joins]
    on_conditions = []
    opaque = False  # a FROM item whose columns are not a table's
    every_column = False
    for node, join in items:
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
            inner = _level(node.this, ctx, counts, ctes)
            derived.update(inner or {})
        if (
            not isinstance(node, exp.Table)
            or not isinstance(node.this, exp.Identifier)
            or (not node.args.get("db") and table_name(node) in ctes)
        ):
            opaque = True
            continue  # a subquery, a CTE, a table-valued function: every row
        table = table_name(node)
        sources[node.alias_or_name.lower()] = table
        side = (join.args.get("side") or "").upper() if join is not None else ""
        kind = (join.args.get("kind") or "").upper() if join is not None else ""
        if side in ("RIGHT", "FULL"):
            return None  # earlier tables become nullable
        if join is not None and (kind == "NATURAL" or join.args.get("using")):
            every_column = True  # columns joined on without being named
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
    usable = {t for t in usable if counts.get(t) == 1}
    nullable = {t: on for t, on in nullable.items() if counts.get(t) == 1}
    if not usable and not nullable:
        return derived
    # an unqualified column may be a derived table's: only one table resolves it
    single = next(iter(sources.values())) if len(sources) == 1 and not opaque else None
    known = usable | set(nullable)

    def resolver(allowed: set[str]) -> Any:
        def resolve(col: exp.Column) -> str | None:
            qualifier = col.table.lower() if col.table else ""
            table = sources.get(qualifier) if qualifier else single
            return table if table in allowed else None

        return resolve

    conds: dict[str, list[Cond]] = {t: [] for t in known}
    links: dict[str, list[tuple[str, str, str]]] = {t: [] for t in known}
    consumed: set[int] = set()  # Column nodes that are a recognised condition's
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
                    consumed.update(id(n) for n in c.find_all(exp.Column))
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
    resolve_any = resolver(known)
    columns: dict[str, set[str] | None] = {t: set() for t in usable}
    elsewhere: dict[str, set[str]] = {t: set() for t in usable}  # used beyond conds
    for star in tree.expressions:
        if isinstance(star, exp.Star) or every_column:
            columns = dict.fromkeys(usable)
    for col in tree.find_all(exp.Column):
        qualifier = col.table.lower() if col.table else ""
        if isinstance(col.this, exp.Star):
            t = sources.get(qualifier)
            if t in columns:
                columns[t] = None
            continue
        targets = [sources[qualifier]] if qualifier in sources else list(usable)
        name = ctx.column(col)
        for t in targets:
            cols = columns.get(t)
            if cols is not None:
                cols.add(name)
            if id(col) not in consumed or resolve_any(col) != t:
                elsewhere[t].add(name)
    own = {
        t: TableFootprint(
            tuple(conds[t]),
            None if cols is None else frozenset(cols),
            tuple(links[t]),
            frozenset() if cols is None else frozenset(cols - elsewhere[t]),
        )
        for t, cols in columns.items()
    }
    return {**derived, **own}
