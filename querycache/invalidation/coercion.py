"""What the database makes of a statement's own values before they meet a column.

A footprint or a write spec names its values by :data:`~querycache.analysis.conditions.Source`:
a DBAPI parameter or a literal of the SQL text. The value the database then
compares or stores is not always that Python value:

* PostgreSQL reads a string parameter (psycopg sends ``str`` untyped) or a
  string literal as whatever type the other side has: ``'7'`` is the integer
  7, ``'yes'`` is true, ``'2024-1-1'`` a date, ``'{"a": 1}'`` a jsonb equal to
  ``'{"a":1}'``, ``'1 day'`` an interval equal to ``'24 hours'``. Which one
  depends on the column, which the cache does not know: such a string is
  unknown. Strings on SQLite stay text (its type affinity is
  :mod:`querycache.invalidation.exact`'s business), and other dialects'
  comparisons of strings (case- and accent-insensitive, numeric) are not
  modelled: unknown too.
* A cast in the SQL (``CAST(? AS INT)``, ``?::NUMERIC(12, 2)``,
  ``?::VARCHAR(3)``) rounds, truncates, pads or parses. :func:`coerce` applies
  the casts whose result it knows exactly (an integer cast of an integral
  number or of a plain integer string, a ``numeric(p, s)`` cast of a value
  that already fits, a text cast of a string that fits its length...) and
  says :data:`MISSING` for any other: the value is unknown, "may be
  anything", and the condition or image column using it is dropped.

The ``how`` of a source is ``(family, casts)``: ``"sqlite"``, ``"postgres"``
or ``"other"``, and the casts around it, innermost first, each ``(sqlglot
type name, integer parameters)`` (``None``: parameters we cannot read).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from querycache.invalidation.exact import _F4, _F8, _f4

__all__ = ["MISSING", "coerce"]

#: a value that is not there (a missing parameter) or whose database value is unknown
MISSING: Any = object()

_INT = re.compile(r"^\s*[+-]?[0-9]+\s*$")
_DECIMAL = re.compile(r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$")
_ISO_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_INTS = frozenset({"INT", "BIGINT", "SMALLINT", "TINYINT"})
_TEXTS = frozenset({"TEXT", "VARCHAR", "NVARCHAR", "CHAR", "NCHAR"})
_TRUE = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})


def coerce(v: Any, how: Any) -> Any:
    """The value the database compares or stores for ``v`` read as ``how``
    says (see the module); :data:`MISSING` when it is not known exactly."""
    if v is None:
        return None  # NULL, whatever it is cast to
    family, casts = how if how is not None else ("other", ())
    for name, params in casts:
        if family == "postgres":
            v = _postgres(v, name, params)
        elif family == "sqlite":
            v = _sqlite(v, name)
        else:
            return MISSING
        if v is MISSING or v is None:
            return v
    if type(v) is str and family != "sqlite" and not (family == "postgres" and casts):
        return MISSING  # untyped: the database reads it as the column's type
    return v


def _sqlite(v: Any, name: str) -> Any:
    """A SQLite cast: its type name gives an affinity, and sqlglot's names do
    not tell which (``STRING`` is NUMERIC there): only integers pass (as an
    integer or as its text, they compare alike: see :mod:`.exact`)."""
    t = type(v)
    if name == "VARBINARY" or not (t is int or t is bool) or not -_F8 <= v <= _F8:
        return MISSING
    return int(v)


def _postgres(v: Any, name: str, params: Any) -> Any:
    if params is None:
        return MISSING
    t = type(v)
    if name in _INTS:
        if t is int or t is bool:
            return int(v)
        if t is float or t is Decimal:
            return int(v) if _integral(v) else MISSING  # a fraction rounds
        if t is str and _INT.match(v):
            return int(v)
        return MISSING
    if name == "DECIMAL":
        return _numeric(v, params)
    if name == "DOUBLE":
        if t is float:
            return v if v == v else MISSING
        if t is int and -_F8 <= v <= _F8:
            return v
        return MISSING
    if name == "FLOAT":  # PostgreSQL's real: float4
        if t is float:
            return v if v == v and _f4(v) == v else MISSING
        if t is int and -_F4 <= v <= _F4:
            return v
        return MISSING
    if name in _TEXTS:
        return _text(v, name, params)
    if name == "BOOLEAN":
        if t is bool:
            return v
        if t is int:
            return v != 0
        if t is str:
            s = v.strip().lower()
            return True if s in _TRUE else False if s in _FALSE else MISSING
        return MISSING
    if name == "UUID":
        if isinstance(v, uuid.UUID):
            return v
        if t is str:
            try:
                return uuid.UUID(v.strip())
            except ValueError:
                return MISSING
        return MISSING
    if name == "DATE":
        if t is dt.date:
            return v
        if t is str and _ISO_DAY.match(v):
            try:
                return dt.date.fromisoformat(v)
            except ValueError:
                return MISSING
        return MISSING
    if name == "TIMESTAMP" or name == "TIMESTAMPTZ":
        return _timestamp(v, name == "TIMESTAMPTZ", params)
    return MISSING


def _integral(v: Any) -> bool:
    try:
        return bool(v == v and v == int(v))
    except (OverflowError, ValueError, InvalidOperation):
        return False


def _numeric(v: Any, params: tuple[int, ...]) -> Any:
    t = type(v)
    if t is int:
        d: Decimal | int = v
    elif t is Decimal and v.is_finite():
        d = v
    elif t is float and _integral(v) and abs(v) < 10**15:
        d = int(v)  # float8 to numeric keeps 15 digits
    elif t is str and _DECIMAL.match(v):
        d = Decimal(v.strip())
    else:
        return MISSING
    if params:
        precision = params[0]
        scale = params[1] if len(params) > 1 else 0
        exact = Decimal(d)
        try:
            fits = exact.quantize(Decimal(1).scaleb(-scale)) == exact
        except InvalidOperation:
            return MISSING
        if not fits or exact.adjusted() >= precision - scale:
            return MISSING  # rounded to the scale (or too large: an error)
    return d


def _text(v: Any, name: str, params: tuple[int, ...]) -> Any:
    t = type(v)
    if t is str:
        s = v
    elif t is bool:
        s = "true" if v else "false"
    elif t is int:
        s = str(v)
    elif t is Decimal and v.is_finite():
        s = format(v, "f")
    elif isinstance(v, uuid.UUID):
        s = str(v)
    elif t is dt.date:
        s = v.isoformat()
    else:
        return MISSING  # a float's or a timestamp's text is PostgreSQL's own
    if params:
        limit = params[0]
    elif name in ("CHAR", "NCHAR"):
        limit = 1  # char without a length is char(1)
    else:
        return s
    return s if len(s) <= limit else MISSING  # an explicit cast truncates


def _timestamp(v: Any, tz: bool, params: tuple[int, ...]) -> Any:
    t = type(v)
    if t is dt.date and not tz:
        return dt.datetime.combine(v, dt.time())
    if t is not dt.datetime or (not tz and v.tzinfo is not None):
        return MISSING  # timestamptz to timestamp: the session time zone's
    if params and params[0] < 6 and v.microsecond % 10 ** (6 - params[0]):
        return MISSING  # rounded to the precision
    return v
