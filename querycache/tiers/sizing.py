"""Honest byte sizes for cached results (what ``tracemalloc`` would see).

Shared singletons (``None``, booleans, small ints, one-character strings)
cost nothing per row; everything else is its ``sys.getsizeof`` plus, for
containers, their contents. Large results are measured on an even sample of
rows and scaled, which keeps the miss path linear in columns, not cells.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

getsizeof = _getsizeof = sys.getsizeof
_SAMPLE = 64
_FREE = (type(None), bool)


def value_size(v: Any) -> int:
    """Bytes held by one column value (0 for shared singletons)."""
    t = type(v)
    if t in _FREE:
        return 0
    if t is int:
        return 0 if -5 <= v <= 256 else _getsizeof(v)
    if t is str:
        return 0 if len(v) <= 1 and v.isascii() else _getsizeof(v)
    if t is tuple or t is list:
        return _getsizeof(v) + sum(value_size(x) for x in v)
    if t is dict:
        return _getsizeof(v) + sum(value_size(k) + value_size(x) for k, x in v.items())
    if t is uuid.UUID:
        return _getsizeof(v) + _getsizeof(v.int)
    return _getsizeof(v)


def measure(rows: list[tuple[Any, ...]]) -> tuple[int, bool]:
    """``(rows_size(rows), whether any value is a dict or a list)``, in one
    pass over small results."""
    if len(rows) > _SAMPLE:
        return rows_size(rows), has_mutable(rows)
    part = _getsizeof(rows)
    mutable = False
    for row in rows:
        part += _getsizeof(row)
        for v in row:
            t = type(v)
            if t is dict or t is list:
                mutable = True
            part += value_size(v)
    return part, mutable


def has_mutable(rows: list[tuple[Any, ...]]) -> bool:
    """Whether any value in ``rows`` is a dict or a list."""
    for row in rows:
        for v in row:
            t = type(v)
            if t is dict or t is list:
                return True
    return False


def rows_size(rows: list[tuple[Any, ...]]) -> int:
    """Bytes held by a list of row tuples (sampled above 64 rows)."""
    n = len(rows)
    total = _getsizeof(rows)
    if n == 0:
        return total
    if n <= _SAMPLE:
        sample = rows
    else:
        step = n / _SAMPLE
        sample = [rows[int(i * step)] for i in range(_SAMPLE)]
    part = 0
    for row in sample:
        part += _getsizeof(row)
        for v in row:
            part += value_size(v)
    return total + part * n // len(sample)
