"""Pages: ``ORDER BY k LIMIT n [OFFSET o]`` over one table's rows.

A full page (``n`` rows) whose last row has ``k = L`` holds only rows that sort
at or before ``L``; every row that sorts strictly after ``L`` comes after the
whole page, in the set the page was cut from and in that set changed by any
write that only touches such rows. So the page depends only on the rows
with ``k >= L`` (``DESC``; ``k <= L`` ascending), and on NULLs in ``k`` if
the database sorts them first in this direction. The bound is read from the
result when it is stored (:mod:`querycache.invalidation.pages`).

Only for a single-table ``SELECT`` without grouping, ``DISTINCT``,
aggregates, windows or a ``WITH``, whose first ``ORDER BY`` key is a column
of that table that the select list also returns as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from querycache.analysis.conditions import Ctx, Source, table_name

__all__ = ["Page", "page_of"]


@dataclass(frozen=True, slots=True)
class Page:
    """The ordering of a ``LIMIT`` read (see the module)."""

    table: str
    column: str
    desc: bool
    nulls_first: bool
    #: position of ``column`` in the result's rows
    index: int
    limit: Source


def page_of(tree: exp.Select, ctx: Ctx) -> Page | None:
    """The :class:`Page` of ``tree``, or None when it is not a plain page."""
    for extra in ("with_", "with", "joins", "group", "having", "distinct", "qualify", "windows"):
        if tree.args.get(extra):
            return None
    limit, order = tree.args.get("limit"), tree.args.get("order")
    from_ = tree.args.get("from_") or tree.args.get("from")
    if type(limit) is not exp.Limit or order is None or from_ is None:
        return None
    table = from_.this
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        return None
    size = ctx.value(limit.expression)
    if size is None:
        return None
    for item in tree.expressions:  # a * moves the column's position
        if isinstance(item, exp.Star) or isinstance(getattr(item, "this", None), exp.Star):
            return None
    for node in tree.walk():
        nested = isinstance(node, exp.Subquery | exp.Select) and node is not tree
        if nested or isinstance(node, exp.AggFunc | exp.Window):
            return None
    first = order.expressions[0] if order.expressions else None
    key = first.this if isinstance(first, exp.Ordered) else None
    names = {table.alias_or_name.lower(), table_name(table)}
    if not _own(key, names):
        return None
    column = ctx.column(key)
    for i, item in enumerate(tree.expressions):
        plain = item.this if isinstance(item, exp.Alias) else item
        if _own(plain, names) and ctx.column(plain) == column:
            desc = bool(first.args.get("desc"))
            nulls_first = bool(first.args.get("nulls_first"))
            return Page(table_name(table), column, desc, nulls_first, i, size)
    return None


def _own(node: Any, names: set[str]) -> bool:
    return (
        isinstance(node, exp.Column)
        and isinstance(node.this, exp.Identifier)
        and (not node.table or node.table.lower() in names)
    )
