"""Guards: filter-only columns, and when a write cannot move a row across them.

``SELECT ... FROM orders WHERE status != 'cancelled' AND created_at >= ?``
uses ``status`` only to filter. An ``UPDATE`` that sets ``status`` from
``'paid'`` to ``'shipped'`` changes a column the statement references, but
the row passes the filter before and after, and nothing else the statement
sees of it changed: the result is the same. The cells of such a statement are
grouped per *guard* (its filter-only columns' conditions, bound to the
execution's parameters), and a write whose changed columns are all guarded
skips the group when every value of its image (old and new, every row)
decides each guard the same way (:func:`same_truth`).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from querycache.invalidation.images import NULL, in_range, loose, missing, value_of

__all__ = ["guards_of", "outside", "same_truth"]

_RANGED = frozenset({int, float, Decimal, str, dt.date, dt.datetime})


def guards_of(fp: Any, params: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Per filter-only column, its conditions bound to ``params`` (see
    :func:`same_truth`); a column whose conditions cannot all be bound is left out."""
    tests: dict[str, list[Any]] = {}
    bad: set[str] = set()
    for cond in fp.conds:
        if cond.column not in fp.filters:
            continue
        vals = [value_of(v, params) for v in cond.values]
        if any(missing(v) for v in vals):
            bad.add(cond.column)
            continue
        if cond.op == "=" or cond.op == "!=":
            keys = [loose(v) for v in vals]
            if any(k is None for k in keys):
                bad.add(cond.column)
                continue
            test: Any = (cond.op, frozenset(keys))
        elif type(vals[0]) in _RANGED:
            test = (cond.op, vals[0])
        else:
            bad.add(cond.column)
            continue
        tests.setdefault(cond.column, []).append(test)
    return tuple(
        (c, tuple(sorted(set(t), key=repr))) for c, t in sorted(tests.items()) if c not in bad
    )


def _truth(v: Any, tests: tuple[Any, ...], sqlite: bool) -> bool | None:
    """Whether a row with ``v`` in the column passes all ``tests``: ``None``
    when unsure. Loosely different values are different for the database
    (never the reverse), so only "loosely different" decides ``=`` and ``!=``;
    a range decides only when ``v`` certainly falls outside it."""
    if v is None:
        return False  # NULL passes no comparison (IS NULL is "=" NULL below)
    k = loose(v)
    passes = True
    for op, arg in tests:
        if op == "=":
            if k is None or k in arg:
                return None
            return False
        if op == "!=":
            if k is None or k in arg:
                return None
        elif in_range(v, ((op, arg),), sqlite):
            passes = False  # may pass, may not: unsure unless another test fails
        else:
            return False
    return True if passes else None


def same_truth(touched: Any, guards: Any, image: Any, sqlite: bool) -> bool:
    """Whether every column ``touched`` is a guarded filter that each value of
    the image (old and new, every row) passes, or that each fails: then no
    row entered or left the result, and nothing else of it changed."""
    by_column = dict(guards)
    for c in touched:
        tests = by_column.get(c)
        values = image.values.get(c) if tests is not None else None
        if not values:
            return False
        if None in values and any(op == "=" for op, _ in tests):
            return False  # IS NULL: "=" with the NULL key, decided above as unsure
        truths = {_truth(v, tests, sqlite) for v in values}
        if len(truths) != 1 or None in truths:
            return False
    return True


def outside(guards: Any, image: Any, sqlite: bool) -> bool:
    """Whether some guard fails for every value of the image (old and new,
    every row): then no row the write touched passes the statement's filter
    on this table before the write or after it, so none entered, left or
    changed its result, whatever else the write changed."""
    values_of = image.values
    for c, tests in guards:
        values = values_of.get(c)
        if not values:
            continue
        for v in values:
            if v is None:
                if any(op == "=" and NULL in arg for op, arg in tests):
                    break  # IS NULL may pass
            elif _truth(v, tests, sqlite) is not False:
                break
        else:
            return True
    return False
