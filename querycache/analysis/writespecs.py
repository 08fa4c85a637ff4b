"""Write specs: what an ``INSERT``/``UPDATE``/``DELETE`` says about the rows
it touches (see :mod:`querycache.analysis.footprints` for reads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlglot import exp

from querycache.analysis.conditions import (
    _PREDICATES,
    Cond,
    Ctx,
    Source,
    cond_of,
    conjuncts,
    table_name,
)

__all__ = ["WriteSpec", "write_spec"]


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
    #: ``UPDATE`` ``SET c = c + v`` / ``c - v``: ``c -> (op, source of v)``
    #: (the new value follows from a pre-image's old one)
    deltas: dict[str, tuple[str, Source]] | None = None


def write_spec(tree: Any, ctx: Ctx) -> WriteSpec | None:
    """The spec of a parsed write, or None when nothing can be pinned down."""
    if isinstance(tree, exp.Insert):
        return _insert(tree, ctx)
    return _update_delete(tree, ctx)


def _insert(tree: exp.Insert, ctx: Ctx) -> WriteSpec | None:
    if tree.args.get("conflict") or tree.args.get("alternative") or tree.args.get("overwrite"):
        return None
    schema = tree.this
    values = tree.expression
    if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
        return None
    names = [ctx.column(c) for c in schema.expressions]
    if isinstance(values, exp.Select):
        rows = _projected_values(values, names, ctx)
        if rows is None:
            return None
        return WriteSpec(table_name(schema.this), "insert", rows=rows)
    if not isinstance(values, exp.Values):
        return None
    out = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        if len(items) != len(names):
            return None
        out.append({n: ctx.value(v) for n, v in zip(names, items, strict=True)})
    return WriteSpec(table_name(schema.this), "insert", rows=tuple(out))


def _projected_values(
    select: exp.Select, names: list[str], ctx: Ctx
) -> tuple[dict[str, Source | None], ...] | None:
    """The rows of ``INSERT INTO t (a, b) SELECT p0, p1 FROM (VALUES (...), ...)
    AS v(p0, p1, ...) [ORDER BY ...]`` (SQLAlchemy's "insertmanyvalues" form
    with a sentinel): each projection a column of the ``VALUES``, at most a
    plain cast. Anything else (a filter, a join, an expression) is unknown."""
    for extra in ("where", "group", "having", "limit", "offset", "distinct", "joins", "with_"):
        if select.args.get(extra):
            return None
    from_ = select.args.get("from_") or select.args.get("from")
    values = from_.this if from_ is not None else None
    alias = values.args.get("alias") if isinstance(values, exp.Values) else None
    if alias is None or not alias.columns or len(select.expressions) != len(names):
        return None
    assert isinstance(values, exp.Values)
    position = {ctx.column(c): i for i, c in enumerate(alias.columns)}
    picks: list[tuple[int, bool, Any]] = []  # per inserted column: VALUES index, known, cast
    for item in select.expressions:
        plain, cast = True, None
        if isinstance(item, exp.Cast):
            to = item.args.get("to")
            # a cast with a precision (NUMERIC(3, 0)) may round: the value is unknown
            cast = ctx.cast_of(to)
            plain = not to.expressions and cast is not None
            item = item.this
        if not isinstance(item, exp.Column) or (item.table and item.table != alias.name):
            return None
        index = position.get(ctx.column(item))
        if index is None:
            return None
        picks.append((index, plain, cast))
    rows = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        if any(i >= len(items) for i, _, _ in picks):
            return None
        rows.append(
            {
                n: _recast(ctx.value(items[i]), cast) if plain else None
                for n, (i, plain, cast) in zip(names, picks, strict=True)
            }
        )
    return tuple(rows)


def _recast(source: Source | None, cast: Any) -> Source | None:
    """``source`` read through the projection's ``cast`` too (the database
    converts the ``VALUES`` column, then casts it)."""
    if source is None or cast is None:
        return source
    return source.recast(cast)  # type: ignore[attr-defined, no-any-return]


def _update_delete(tree: exp.Update | exp.Delete, ctx: Ctx) -> WriteSpec | None:
    target = tree.this
    if not isinstance(target, exp.Table):
        return None
    for extra in ("from_", "from", "using", "joins", "with_", "with", "limit", "order"):
        if tree.args.get(extra):
            return None
    table = table_name(target)
    names = {target.alias_or_name.lower(), table}

    def resolve(col: exp.Column) -> str | None:
        return table if not col.table or col.table.lower() in names else None

    pins: list[Cond] = []
    where = tree.args.get("where")
    if where is not None:
        for c in conjuncts(where.this):
            if any(isinstance(n, exp.Select) for n in c.walk()):
                continue
            found = cond_of(c, resolve, ctx)
            if found is not None and found[1].op == "=":
                pins.append(found[1])
    fetch = _fetch(tree, ctx)
    accessors = tuple(ctx.accessors)
    if isinstance(tree, exp.Delete):
        return WriteSpec(table, "delete", pins=tuple(pins), fetch=fetch, accessors=accessors)
    sets: dict[str, Source | None] = {}
    deltas: dict[str, tuple[str, Source]] = {}
    for assignment in tree.expressions:
        if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
            return None
        column = ctx.column(assignment.this)
        sets[column] = ctx.value(assignment.expression)
        delta = _delta(column, assignment.expression, resolve, ctx)
        if delta is not None:
            deltas[column] = delta
    return WriteSpec(
        table,
        "update",
        pins=tuple(pins),
        sets=sets,
        changed=frozenset(sets),
        fetch=fetch,
        accessors=accessors,
        deltas=deltas or None,
    )


def _delta(column: str, node: Any, resolve: Any, ctx: Ctx) -> tuple[str, Source] | None:
    """``(op, source)`` when ``node`` is ``column + v``, ``v + column`` or ``column - v``."""
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.Add | exp.Sub):
        return None
    left, right = node.this, node.expression
    if isinstance(node, exp.Add) and not isinstance(left, exp.Column):
        left, right = right, left
    if not isinstance(left, exp.Column) or ctx.column(left) != column or resolve(left) is None:
        return None
    source = ctx.value(right)
    if source is None:
        return None
    return ("+" if isinstance(node, exp.Add) else "-", source)


def _fetch(tree: exp.Update | exp.Delete, ctx: Ctx) -> str | None:
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
