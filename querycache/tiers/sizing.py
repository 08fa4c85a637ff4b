"""Honest byte sizes for cached results (what ``tracemalloc`` would see).

Shared singletons (``None``, booleans, small ints, one-character strings)
cost nothing per row; everything else is its ``sys.getsizeof`` plus, for
containers, their contents. Large results are measured on an even sample of
rows and scaled, which keeps the miss path linear in columns, not cells.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import sys
import uuid
from itertools import chain
from typing import Any

from querycache.keys import ADDRESSES

getsizeof = _getsizeof = sys.getsizeof
_SAMPLE = 64
_FREE = (type(None), bool)
#: sizes of the common values, without a call: an int of one 30-bit digit, an
#: ASCII str without its characters, a datetime, a float
_DIGIT = 2**30
_INT = _getsizeof(_DIGIT - 1)
_STR = _getsizeof("")
_DATETIME = _getsizeof(datetime.datetime(2000, 1, 1))
_FLOAT = _getsizeof(0.5)

#: types whose values nobody can change: handed to every hit as they are
IMMUTABLE = (
    frozenset(
        {
            type(None),
            bool,
            int,
            float,
            complex,
            str,
            bytes,
            decimal.Decimal,
            uuid.UUID,
            datetime.date,
            datetime.datetime,
            datetime.time,
            datetime.timedelta,
        }
    )
    | ADDRESSES
)


#: immutable driver types, by qualified name (their modules need not be imported)
_DRIVER_IMMUTABLE = frozenset({"asyncpg.pgproto.pgproto.UUID"})


def frozen(v: Any) -> bool:
    """Whether ``v`` is provably immutable (so a hit may share it): values of
    :data:`IMMUTABLE` types and known immutable driver types, enum members
    (singletons on every path), and tuples and frozensets of such. Everything
    else counts as mutable."""
    t = type(v)
    if t in IMMUTABLE:
        return True
    if t is tuple or t is frozenset:
        return all(frozen(x) for x in v)
    return isinstance(v, enum.Enum) or f"{t.__module__}.{t.__qualname__}" in _DRIVER_IMMUTABLE


def _shareable(v: Any) -> bool:
    """:func:`frozen`, checking on the way that a value which is not can be
    copied (a hit copies it); ``TypeError`` if it cannot: such a result must
    not be stored."""
    t = type(v)
    if t in IMMUTABLE:
        return True
    if t is dict:
        for k, x in v.items():
            _shareable(k)
            _shareable(x)
        return False
    if t is list or t is set:
        for x in v:
            _shareable(x)
        return False
    if t is tuple or t is frozenset:
        return all([_shareable(x) for x in v])  # every item checked
    if frozen(v):
        return True
    try:
        copy.deepcopy(v)
    except Exception as exc:
        raise TypeError(f"a {t.__name__} value that cannot be copied") from exc
    return False


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
    """``(rows_size(rows), whether any value may be mutable)``. "Mutable" is
    anything not :func:`frozen` (a hit then hands out copies,
    :func:`~querycache.tiers.base.thaw`); ``TypeError`` when a value could not
    be copied (the result must not be stored). Sizes are sampled above 64
    rows; mutability is checked on every value."""
    if len(rows) <= _SAMPLE:
        part, mutable = _part(rows)
        return _getsizeof(rows) + part, mutable
    part, _ = _part(_sample(rows))
    return _getsizeof(rows) + part * len(rows) // _SAMPLE, has_mutable(rows)


def _part(rows: list[tuple[Any, ...]], check: bool = True) -> tuple[int, bool]:
    """Bytes of ``rows``' tuples and values, and (with ``check``) whether one
    may be mutable."""
    part = _getsizeof(rows[0]) * len(rows) if rows else 0  # (rows of a result: one width)
    mutable = False
    for row in rows:
        for v in row:
            t = type(v)  # the common types inline, sized without a call: on every miss
            if t is int:
                if not -5 <= v <= 256:
                    part += _INT if -_DIGIT < v < _DIGIT else _getsizeof(v)
            elif t is str:
                if not v.isascii():
                    part += _getsizeof(v)
                elif len(v) > 1:
                    part += _STR + len(v)
            elif t is datetime.datetime:
                part += _DATETIME
            elif t is float:
                part += _FLOAT
            elif t not in _FREE:
                if check and t not in IMMUTABLE and not _shareable(v):
                    mutable = True
                part += value_size(v)
    return part, mutable


def _sample(rows: list[tuple[Any, ...]], n: int = _SAMPLE) -> list[tuple[Any, ...]]:
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def has_mutable(rows: list[tuple[Any, ...]]) -> bool:
    """Whether any value in ``rows`` may be mutable (see :func:`measure`)."""
    # the types present first, in C: a result of plain column types (nearly
    # every result) is then settled without a Python step per value
    odd = set(map(type, chain.from_iterable(rows))) - IMMUTABLE
    if not odd:
        return False
    mutable = False
    for row in rows:
        for v in row:
            if type(v) in odd and not _shareable(v):  # (every one: it may not copy)
                mutable = True
    return mutable


def rows_size(rows: list[tuple[Any, ...]], sample: int = _SAMPLE) -> int:
    """Bytes held by a list of row tuples (measured on ``sample`` of them,
    evenly spread, and scaled)."""
    n = len(rows)
    if n <= sample:
        return _getsizeof(rows) + _part(rows, False)[0]
    return _getsizeof(rows) + _part(_sample(rows, sample), False)[0] * n // sample
