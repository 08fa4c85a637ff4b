"""Page cells: a ``LIMIT`` page keyed on a value *and* a bound of its sort key.

``... WHERE status = ? ORDER BY created_at DESC LIMIT 20`` holds, like any
read keyed on ``status``, the cell of its status value; a write that touches
an order of that status kills it. But a full page only depends on the rows
that sort at or before its last row (:mod:`querycache.analysis.pages`): a
new or updated order of that status dated before the page's last row comes
after the page and cannot change it.

When such a result is stored, :func:`refine` swaps its value cells for one
*page cell* ``(values, sort column, bound, NULLs sort first)`` of the same
column, created under the registry's lock only while every cell the reader
captured before its query is still alive: any write that committed since
the capture and touched a row of those values killed a value cell, and the
store is then refused; a later one meets the page cell. A write kills a page
cell (:func:`kill_pages`) when its image holds one of the values and a sort
key that may fall within the bound (unknown: it may), or NULL where NULLs sort
first.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from querycache.invalidation.images import in_range, loose, value_of

__all__ = ["kill_pages", "page_spec", "swap_in_page"]

_RANGED = frozenset({int, float, Decimal, str, dt.date, dt.datetime})


def page_spec(page: Any, params: Any, rows: list[Any]) -> tuple[str, tuple[Any, ...], bool] | None:
    """``(sort column, bounds, NULLs first)`` of a stored page's result, or
    None when it is not a full page with a usable last key."""
    limit = value_of(page.limit, params)
    if type(limit) is not int or limit <= 0 or len(rows) != limit:
        return None
    try:
        last = rows[-1][page.index]
    except (IndexError, TypeError, KeyError):
        return None
    if last is None or type(last) not in _RANGED:
        return None
    bounds = ((">=", last),) if page.desc else (("<=", last),)
    return page.column, bounds, page.nulls_first


def kill_pages(
    die: Any, pages: dict[Any, Any], values: list[Any], image: Any, sqlite: bool
) -> None:
    """Kill the page cells of one column that the image's rows may reach."""
    keys = {loose(v) for v in values}
    for spec in list(pages):
        eq, column, bounds, nulls_first = spec
        if keys.isdisjoint(eq):
            continue  # no touched row had one of the values, before or after
        sort_keys = image.values.get(column) if image is not None else None
        if sort_keys is not None and not any(
            nulls_first if v is None else in_range(v, bounds, sqlite) for v in sort_keys
        ):
            continue  # every touched row sorts after the page
        die(pages.pop(spec))


def swap_in_page(
    groups: Any, snapshot: tuple[Any, ...], name: str, keys: Any, spec: Any, cell_class: Any
) -> tuple[Any, ...]:
    """``snapshot`` with the value cells of ``name = keys`` it holds replaced by
    their page cell (made if new); ``snapshot`` itself if it holds none. The
    caller holds the registry's lock and checked every cell of it alive."""
    held = {id(c) for c in snapshot}
    for group in groups:
        column = group.columns.get(name)
        cells = [column.eq.get(k) for k in keys] if column is not None else []
        if not cells or any(c is None or id(c) not in held for c in cells):
            continue
        key = (keys, *spec)
        cell = column.pages.get(key)
        if cell is None:
            cell = column.pages[key] = cell_class()
            cell.owner = cells[0].owner
        drop = {id(c) for c in cells}
        return (*(c for c in snapshot if id(c) not in drop), cell)
    return snapshot
