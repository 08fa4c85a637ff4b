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
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

import sqlglot
from sqlglot import exp

from querycache.analysis.placeholders import _compiled, family_of
from querycache.analysis.statement import _quiet

__all__ = ["Cond", "ReadFootprint", "TableFootprint", "WriteSpec", "footprint_of"]

#: ``("p", accessor)`` for a DBAPI parameter (index or name), ``("l", value)``
#: for a literal.
Source = tuple[str, Any]
Op = Literal["=", "<", "<=", ">", ">="]

_SQLGLOT = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "mysql": "mysql"}
_PREDICATES = (exp.Cast, exp.Connector, exp.Binary, exp.Not, exp.Paren, exp.Is, exp.In)
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "="}
_CMP = {exp.EQ: "=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
# casts that hand a parameter's value to the comparison unchanged
_PLAIN_CASTS = frozenset(
    {
        "INT",
        "BIGINT",
        "SMALLINT",
        "TINYINT",
        "VARCHAR",
        "CHAR",
        "NCHAR",
        "NVARCHAR",
        "TEXT",
        "DECIMAL",
        "DOUBLE",
        "FLOAT",
        "BOOLEAN",
        "UUID",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "DATE",
    }
)


@dataclass(frozen=True, slots=True)
class Cond:
    """One conjunct on a column: ``column op value`` (``values`` has one
    source), ``column IN (values)`` (op ``"="``, several), or ``IS NULL``
    (op ``"="``, the literal ``None``)."""

    column: str
    op: Op
    values: tuple[Source, ...]


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


@dataclass(frozen=True, slots=True, eq=False)
class WriteSpec:
    """What one write statement tells about the rows of ``table``.

    ``rows``: for an ``INSERT ... VALUES``, each row's ``column -> source``.
    ``pins``: ``UPDATE``/``DELETE`` ``WHERE`` conjuncts (``=``/``IN``/``IS
    NULL``) fixing a column's value before the write. ``sets``: ``UPDATE``
    ``column -> source`` (``None``: an expression, unknown). ``changed``: the
    columns whose values may change (``None``: all — inserts and deletes).
    ``where``: the ``WHERE`` text with placeholders, for a pre-image fetch.
    """

    table: str
    kind: Literal["insert", "update", "delete"]
    rows: tuple[dict[str, Source | None], ...] = ()
    pins: tuple[Cond, ...] = ()
    sets: dict[str, Source | None] | None = None
    changed: frozenset[str] | None = None
    #: ``SELECT * FROM table WHERE <the same WHERE>`` (placeholders written
    #: ``:qcp<i>``/``%(qcp<i>)s``, see :func:`markers_of`), to read the rows an
    #: ``UPDATE``/``DELETE`` is about to touch; None when that is not safe
    fetch: str | None = None
    #: the DBAPI accessor of each ``qcp<i>``
    accessors: tuple[Any, ...] = ()


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
    name = _SQLGLOT.get(dialect)
    text, accessors = _markers(sql, family_of(name))
    if text is None:
        return None
    trees = sqlglot.parse(text, read=name)
    if len(trees) != 1 or trees[0] is None:
        return None
    tree = trees[0]
    ctx = _Ctx(accessors, dialect)
    if isinstance(tree, exp.Select):
        return _read(tree, ctx)
    if isinstance(tree, exp.Insert):
        return _insert(tree, ctx)
    if isinstance(tree, exp.Update | exp.Delete):
        return _update_delete(tree, ctx)
    return None


def _markers(sql: str, family: str) -> tuple[str | None, list[Any]]:
    """``sql`` with its i-th placeholder written ``:qcp<i>``, and for each the
    DBAPI accessor (positional index or parameter name)."""
    out: list[str] = []
    accessors: list[Any] = []
    pos = 0
    positional = 0
    for m in _compiled(family).finditer(sql):
        out.append(sql[pos : m.start()])
        pos = m.end()
        group, token = m.lastgroup, m.group()
        if group in ("str", "ident", "btick", "estr", "dollar"):
            out.append(token)
            continue
        if group in ("lc", "bc", "hc"):
            out.append(" ")
            continue
        if group == "semi":
            if sql[pos:].strip():
                return None, []  # several statements
            continue
        if group == "pct":
            out.append("%")
            continue
        if group == "pyformat":
            accessors.append(token[2:-2])
        elif group == "named" or group == "sqlitenamed":
            accessors.append(token[1:])
        elif group == "numeric" or (group == "qmark" and len(token) > 1):
            accessors.append(int(token[1:]) - 1)
        else:  # format %s, qmark ?
            accessors.append(positional)
            positional += 1
        out.append(f" :qcp{len(accessors) - 1} ")
    out.append(sql[pos:])
    return "".join(out), accessors


class _Ctx:
    __slots__ = ("accessors", "dialect", "fold")

    def __init__(self, accessors: list[Any], dialect: str) -> None:
        self.accessors = accessors
        self.dialect = _SQLGLOT.get(dialect)
        # PostgreSQL keeps the case of quoted names; SQLite ignores case
        self.fold = dialect != "postgresql"

    def column(self, ident: Any) -> str:
        name = ident.name if isinstance(ident, exp.Identifier | exp.Column) else str(ident)
        quoted = isinstance(ident, exp.Identifier) and ident.quoted
        if isinstance(ident, exp.Column):
            node = ident.this
            quoted = isinstance(node, exp.Identifier) and node.quoted
        return name if quoted and not self.fold else name.lower()

    def value(self, node: Any) -> Source | None:
        """The source of a value expression, or None when it is not a plain value."""
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Cast):
            to = node.args.get("to")
            kind = getattr(getattr(to, "this", None), "name", None)
            if kind not in _PLAIN_CASTS:
                return None
            node = node.this
        if isinstance(node, exp.Placeholder):
            name = node.name
            if name.startswith("qcp") and name[3:].isdigit():
                index = int(name[3:])
                if index < len(self.accessors):
                    return ("p", self.accessors[index])
            return None
        if isinstance(node, exp.Literal):
            if node.is_string:
                return ("l", node.this)
            return ("l", _number(node.this))
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
            if node.this.is_string:
                return None
            n = _number(node.this.this)
            return None if n is None else ("l", -n)
        if isinstance(node, exp.Boolean):
            return ("l", bool(node.this))
        if isinstance(node, exp.Null):
            return ("l", None)
        return None


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return Decimal(text)
        except InvalidOperation:
            return None


def _table_name(node: exp.Table) -> str:
    return node.name.lower()


def _conjuncts(node: Any) -> list[Any]:
    out: list[Any] = []
    todo = [node]
    while todo:
        n = todo.pop()
        while isinstance(n, exp.Paren):
            n = n.this
        if isinstance(n, exp.And):
            todo.append(n.this)
            todo.append(n.expression)
        elif n is not None:
            out.append(n)
    return out


def _cond(node: Any, resolve: Any, ctx: _Ctx) -> tuple[str, Cond] | None:
    """``(table, Cond)`` for a usable conjunct, else None."""
    cls = type(node)
    if cls in _CMP:
        op = _CMP[cls]
        left, right = node.this, node.expression
        if not isinstance(left, exp.Column):
            left, right = right, left
            op = _FLIP[op]
        if not isinstance(left, exp.Column):
            return None
        source = ctx.value(right)
        if source is None or (source[0] == "l" and source[1] is None):
            return None
        table = resolve(left)
        return None if table is None else (table, Cond(ctx.column(left), op, (source,)))
    if cls is exp.In and isinstance(node.this, exp.Column) and not node.args.get("query"):
        values = [ctx.value(v) for v in node.expressions]
        if not values or any(v is None or (v[0] == "l" and v[1] is None) for v in values):
            return None
        table = resolve(node.this)
        if table is None:
            return None
        return table, Cond(ctx.column(node.this), "=", tuple(values))  # type: ignore[arg-type]
    if (
        cls is exp.Is
        and isinstance(node.this, exp.Column)
        and isinstance(node.expression, exp.Null)
    ):
        table = resolve(node.this)
        return None if table is None else (table, Cond(ctx.column(node.this), "=", (("l", None),)))
    if cls is exp.Between and isinstance(node.this, exp.Column):
        low, high = ctx.value(node.args.get("low")), ctx.value(node.args.get("high"))
        table = resolve(node.this)
        if table is None or low is None or high is None:
            return None
        column = ctx.column(node.this)
        # two conditions on one column; the caller keeps them together
        return table, Cond(column, ">=", (low, high))
    return None


def _split_between(cond: Cond) -> list[Cond]:
    if cond.op == ">=" and len(cond.values) == 2:
        return [Cond(cond.column, ">=", cond.values[:1]), Cond(cond.column, "<=", cond.values[1:])]
    return [cond]


def _read(tree: exp.Select, ctx: _Ctx) -> ReadFootprint | None:
    from_ = tree.args.get("from_") or tree.args.get("from")
    if from_ is None or tree.args.get("with_") or tree.args.get("with"):
        return None
    sources: dict[str, str] = {}  # alias or name -> table
    usable: set[str] = set()
    first = from_.this
    joins = tree.args.get("joins") or []
    items = [(first, None)] + [(j.this, j) for j in joins]
    on_conditions = []
    for node, join in items:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            continue  # a subquery, a table-valued function: every row
        table = _table_name(node)
        sources[node.alias_or_name.lower()] = table
        side = (join.args.get("side") or "").upper() if join is not None else ""
        kind = (join.args.get("kind") or "").upper() if join is not None else ""
        if side in ("RIGHT", "FULL"):
            return None  # earlier tables become nullable
        if side == "LEFT" or kind in ("NATURAL", "ANTI", "SEMI"):
            continue  # the nullable side: every row
        usable.add(table)
        if join is not None and join.args.get("on") is not None:
            on_conditions.append(join.args["on"])
    # a table named twice (a self-join, or again in a subquery) is every row
    counts: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        counts[_table_name(t)] = counts.get(_table_name(t), 0) + 1
    usable = {t for t in usable if counts.get(t) == 1}
    if not usable:
        return None
    single = next(iter(sources.values())) if len(sources) == 1 else None

    def resolve(col: exp.Column) -> str | None:
        qualifier = col.table.lower() if col.table else ""
        table = sources.get(qualifier) if qualifier else single
        return table if table in usable else None

    conds: dict[str, list[Cond]] = {t: [] for t in usable}
    joins: dict[str, list[tuple[str, str, str]]] = {t: [] for t in usable}
    for where in [tree.args.get("where"), *on_conditions]:
        if where is None:
            continue
        node = where.this if isinstance(where, exp.Where) else where
        for c in _conjuncts(node):
            found = _cond(c, resolve, ctx)
            if found is not None:
                conds[found[0]].extend(_split_between(found[1]))
            elif type(c) is exp.EQ and isinstance(c.this, exp.Column):
                other = c.expression
                if isinstance(other, exp.Column):
                    a, b = resolve(c.this), resolve(other)
                    if a is not None and b is not None and a != b:
                        ca, cb = ctx.column(c.this), ctx.column(other)
                        joins[a].append((ca, b, cb))
                        joins[b].append((cb, a, ca))
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
                tuple(conds[t]), None if cols is None else frozenset(cols), tuple(joins[t])
            )
            for t, cols in columns.items()
        }
    )


def _insert(tree: exp.Insert, ctx: _Ctx) -> WriteSpec | None:
    if tree.args.get("conflict") or tree.args.get("alternative") or tree.args.get("overwrite"):
        return None
    schema = tree.this
    values = tree.expression
    if not isinstance(schema, exp.Schema) or not isinstance(values, exp.Values):
        return None
    if not isinstance(schema.this, exp.Table):
        return None
    names = [ctx.column(c) for c in schema.expressions]
    rows = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        if len(items) != len(names):
            return None
        rows.append({n: ctx.value(v) for n, v in zip(names, items, strict=True)})
    return WriteSpec(_table_name(schema.this), "insert", rows=tuple(rows))


def _update_delete(tree: exp.Update | exp.Delete, ctx: _Ctx) -> WriteSpec | None:
    target = tree.this
    if not isinstance(target, exp.Table):
        return None
    for extra in ("from_", "from", "using", "joins", "with_", "with", "limit", "order"):
        if tree.args.get(extra):
            return None
    table = _table_name(target)
    names = {target.alias_or_name.lower(), table}

    def resolve(col: exp.Column) -> str | None:
        return table if not col.table or col.table.lower() in names else None

    pins: list[Cond] = []
    where = tree.args.get("where")
    if where is not None:
        for c in _conjuncts(where.this):
            if any(isinstance(n, exp.Select) for n in c.walk()):
                continue
            found = _cond(c, resolve, ctx)
            if found is not None and found[1].op == "=":
                pins.append(found[1])
    fetch = _fetch(tree, ctx)
    accessors = tuple(ctx.accessors)
    if isinstance(tree, exp.Delete):
        return WriteSpec(table, "delete", pins=tuple(pins), fetch=fetch, accessors=accessors)
    sets: dict[str, Source | None] = {}
    for assignment in tree.expressions:
        if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
            return None
        sets[ctx.column(assignment.this)] = ctx.value(assignment.expression)
    return WriteSpec(
        table,
        "update",
        pins=tuple(pins),
        sets=sets,
        changed=frozenset(sets),
        fetch=fetch,
        accessors=accessors,
    )


def _fetch(tree: exp.Update | exp.Delete, ctx: _Ctx) -> str | None:
    """The pre-image query of a single-table ``UPDATE``/``DELETE`` whose
    ``WHERE`` calls no function and holds no subquery (so that it selects
    the same rows the write will touch)."""
    where = tree.args.get("where")
    if where is None:
        return None
    for node in where.walk():
        if isinstance(node, exp.Select | exp.Subquery):
            return None
        if isinstance(node, exp.Func) and not isinstance(node, _PREDICATES):
            return None  # a function of the row (or the clock) may not select alike
    query = exp.select("*").from_(tree.this.copy()).where(where.this.copy())
    return query.sql(dialect=ctx.dialect)
