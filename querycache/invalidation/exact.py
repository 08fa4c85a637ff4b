"""What Python may decide about values the database stores and compares.

Row-precise invalidation keeps a cached result alive when a write's values
(its image) *cannot* meet the result's (its footprint). That verdict is
computed in Python, but the database decides with the value it stored or
compares, which its column's type and collation may have changed: 1.6 into
an ``integer`` is 2, 16777217 into a ``real`` is 16777216, ``0.30000000000000004``
into a SQLite ``TEXT`` column is ``'0.3'``, ``True`` into a PostgreSQL
``text`` is ``'true'``, ``'ab'`` into ``char(5)`` is ``'ab   '``, ``'ABC'`` in a
``citext`` or ``COLLATE NOCASE`` column equals ``'abc'``, a timestamp into a
``date`` loses its time. The cache does not know the
column's type, so a verdict here must hold for *every* column type it may
meet (:mod:`querycache.invalidation.coercion` first resolves what the
statement itself does to its values: untyped strings, casts):

* :func:`loose` — an equality key, equal for every two values the database
  may find equal after any such coercion, or ``None`` (unknown). Keys are
  coarse: numbers by value, integral ones only (a fraction may round either
  way), beyond 2**24 by their nearest ``real`` (float4) and beyond 2**53 not
  at all; strings trimmed and case-folded (``char(n)``, ``citext``, NOCASE,
  RTRIM), a numeric string as its number, ``'true'``/``'false'`` as ``1``/``0``
  (PostgreSQL's text of a boolean), without hyphens (UUIDs); bytes as their
  ``bytea`` text. Two values with different keys are different for the
  database; equal keys may still differ (an extra invalidation).
* :func:`in_range` — whether a value may satisfy ``op bound`` conditions,
  ``False`` only when every value the database may have made of it fails
  one: a fraction may have become either neighbouring integer, a timestamp
  its day (or moved by a session time zone's offset change).

Not covered by value alone: PostgreSQL nondeterministic collations,
``numeric`` with a negative scale, the ``"char"`` and ``name`` types; on
SQLite, collations of the application's own, and numbers in a column of
``TEXT`` affinity, which SQLite stores and compares as text (``'9' >= 10``).
The catalog tells which columns those are
(:func:`querycache.integration.columns.read_kinds`), and :func:`adapt` makes
an image's values of them unknown, or the text SQLite stores.

Cost: a few type checks per value, once per value of a write's image and of
a miss's footprint; nothing on the hit path.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
import uuid
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

__all__ = ["NULL", "OPAQUE", "TEXT", "adapt", "in_range", "loose"]

NULL = ("null",)
_NUMERIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\d")
#: integers every numeric type holds exactly (float4 has a 24-bit mantissa)
_F4 = 2**24
#: beyond: a float8 column rounds them
_F8 = 2**53
#: how far PostgreSQL may move a timestamp it stores or compares: down to the
#: start of its (session-local) day in a ``date`` column; by an offset change
#: of the session time zone (a DST fold or gap) on a way between ``timestamp``
#: and ``timestamptz``; by half a second when a precision rounds it
_DAY_BACK = dt.timedelta(hours=25)
_ZONE_SHIFT = dt.timedelta(hours=1)


def _f4(x: float) -> float:
    """``x`` rounded to the nearest float4, as PostgreSQL stores it in a ``real``."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _int_key(n: int) -> int | None:
    if -_F4 <= n <= _F4:
        return n
    if -_F8 <= n <= _F8:
        # a ``real`` column keeps the nearest float4: its neighbours share the key
        return int(_f4(float(n)))
    return None


def _decimal_key(d: Decimal) -> int | None:
    if not d.is_finite() or d.adjusted() > 16 or d != d.to_integral_value():
        return None  # a fraction: an integer column rounds it, either way
    return _int_key(int(d))


def loose(v: Any) -> Any:
    """A hashable key equal for every two values the database may find equal;
    ``None`` when ``v`` cannot be keyed (the caller treats it as unknown)."""
    t = type(v)
    if v is None:
        return NULL
    if t is int or t is bool:
        return _int_key(int(v))
    if t is str:
        return _loose_memo(v) if len(v) <= _MEMO_TEXT else _loose_str(v)
    if t is float:
        if v.is_integer() and -_F8 <= v <= _F8:
            return _int_key(int(v))
        return None  # a fraction, NaN (NULL on SQLite) or an infinity
    if t is Decimal:
        return _decimal_key(v)
    if t is bytes:
        return "\\x" + v.hex()  # PostgreSQL's text of a bytea
    if isinstance(v, uuid.UUID):
        return v.hex
    if t is dt.date:
        return v.isoformat().replace("-", "")
    return None


def _loose_str(v: str) -> Any:
    s = v.strip()
    if _NUMERIC.match(s):
        try:
            return _decimal_key(Decimal(s))
        except InvalidOperation:
            return None
    s = s.casefold()
    if s == "true" or s == "false":  # a boolean written into a text column
        return 1 if s == "true" else 0
    if not s.isascii():
        # a Turkish locale's lower() maps I to dotless i, and İ to i
        s = s.replace("\u0131", "i").replace("\u0307", "")
    return s.replace("-", "")


#: texts up to this length have their loose key memoized: the same values
#: (statuses, dates) are checked against every group a write looks at
_MEMO_TEXT = 64
_loose_memo = lru_cache(maxsize=8192)(_loose_str)


# -- ranges -------------------------------------------------------------------

_NUMBERS = (int, float, Decimal)


def _span(v: Any, sqlite: bool) -> tuple[Any, Any] | None:
    """The least and the greatest value the database may compare in place of
    the number or timestamp ``v``; ``None`` when it cannot be bounded."""
    t = type(v)
    if t is int:
        if -_F4 <= v <= _F4:
            return v, v
        if -_F8 <= v <= _F8:
            r = _f4(float(v))  # a real column's float4
            return min(v, r), max(v, r)
        return None
    if t is float or t is Decimal:
        if v != v:
            return None  # NaN: PostgreSQL sorts it above everything, SQLite stores NULL
        if (t is float and math.isinf(v)) or (t is Decimal and v.is_infinite()):
            return v, v
        if abs(v) >= _F4:
            return None
        if sqlite:
            return v, v  # SQLite keeps a REAL as it is
        # an integer column rounds a fraction, a numeric(p, s) to its scale, a
        # real to float4: always to a value between the neighbouring integers
        return math.floor(v), math.ceil(v)
    if t is dt.datetime:
        if sqlite:
            return v, v  # ISO text, compared character by character
        try:
            return v - _DAY_BACK, v + _ZONE_SHIFT
        except OverflowError:
            return None
    if t is dt.date:
        return v, v
    return None


def _bounds_of(b: Any) -> tuple[Any, ...] | None:
    """The values the database may compare a bound ``b`` as: a float column
    reads an integer or a decimal as its nearest float8."""
    t = type(b)
    if t is int or t is Decimal:
        if t is Decimal and not b.is_finite():
            return (b,) if b.is_infinite() else None
        try:
            f = float(b)
        except OverflowError:
            return None
        return (b,) if f == b else (b, f)
    if t is float:
        return None if b != b else (b,)
    if t is dt.datetime or t is dt.date:
        return (b,)
    return None


def _fails(lo: Any, hi: Any, op: str, b: Any) -> bool:
    """Whether every value in ``[lo, hi]`` fails ``value op b``."""
    if op == "<":
        return lo >= b
    if op == "<=":
        return lo > b
    if op == ">":
        return hi <= b
    return hi < b


def _comparable(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta in _NUMBERS and tb in _NUMBERS:
        return True
    if ta is dt.datetime and tb is dt.datetime:
        return (a.tzinfo is None) == (b.tzinfo is None)
    return ta is dt.date and tb is dt.date


def _iso_fails(v: tuple[str, str, str], op: str, b: tuple[str, str, str]) -> bool:
    """SQLite ISO date texts (:func:`_iso`): fails under the BINARY, NOCASE
    and RTRIM collations."""
    return (
        _fails(v[0], v[0], op, b[0])
        and _fails(v[1], v[1], op, b[1])
        and _fails(v[2], v[2], op, b[2])
    )


def _iso_forms(s: str) -> tuple[str, str, str] | None:
    """An ISO date text as the BINARY, NOCASE and RTRIM collations see it;
    None for any other text."""
    if not _ISO_DATE.match(s):
        return None
    return s, s.lower(), s.rstrip(" ")


_iso_memo = lru_cache(maxsize=4096)(_iso_forms)


def _iso(s: str) -> tuple[str, str, str] | None:
    return _iso_memo(s) if len(s) <= _MEMO_TEXT else _iso_forms(s)


def in_range(v: Any, bounds: tuple[tuple[str, Any], ...], sqlite: bool) -> bool:
    """Whether ``v`` may satisfy every ``(op, bound)``; True when unsure."""
    if v is None:
        return False  # NULL satisfies no comparison
    tv = type(v)
    if tv is str:
        if not sqlite:
            return True
        fv = _iso(v)
        if fv is None:
            return True
        for op, b in bounds:
            if type(b) is str:
                fb = _iso(b)
                if fb is not None and _iso_fails(fv, op, fb):
                    return False
        return True
    if (
        tv is dt.datetime
        and sqlite
        and v.tzinfo is not None
        and any(type(b) is not dt.datetime or b.utcoffset() != v.utcoffset() for _, b in bounds)
    ):
        return True  # SQLite compares the texts: their offsets must agree
    span = _span(v, sqlite)
    if span is None:
        return True
    lo, hi = span
    try:
        for op, b in bounds:
            if not _comparable(v, b):
                continue
            candidates = _bounds_of(b)
            if candidates is None:
                continue
            if all(_fails(lo, hi, op, c) for c in candidates):
                return False
    except (TypeError, ArithmeticError):
        return True
    return True


# -- what the catalog knows -------------------------------------------------------

#: a column whose equality or order Python cannot reproduce: never known
OPAQUE = "opaque"
#: a SQLite column of TEXT affinity: a number is stored (and compared) as its text
TEXT = "text"
_UNKNOWN = object()


def _as_text(v: Any) -> Any:
    t = type(v)
    if t is int or t is bool:
        return str(int(v))  # what SQLite stores for an integer in a TEXT column
    if t is float:
        return _UNKNOWN  # its 15-digit text is SQLite's own
    return v


def adapt(values: dict[str, list[Any]], kinds: Any) -> dict[str, list[Any]]:
    """An image's ``values`` as the database holds them in columns of the
    ``kinds`` the catalog reported (column -> :data:`OPAQUE` or :data:`TEXT`):
    an opaque column is unknown, a ``TEXT`` column's numbers become text."""
    if not kinds:
        return values
    out: dict[str, list[Any]] = {}
    for column, vals in values.items():
        kind = kinds.get(column)
        if kind is None:
            out[column] = vals
        elif kind == TEXT:
            texts = [_as_text(v) for v in vals]
            if _UNKNOWN not in texts:
                out[column] = texts
    return out
