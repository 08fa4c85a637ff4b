"""Values that make the database read its clock: ``'now'``, ``'today 10:00'``...

PostgreSQL's date/time input accepts the special words ``now``, ``today``,
``tomorrow`` and ``yesterday`` in any case, with surrounding whitespace and
combined with other fields (``'today 10:00'``, ``'y now'``, ``'{now}'`` as an
array, ``'[today,tomorrow)'`` as a range), wherever a string becomes a
timestamp, date or time: an explicit cast, or implicitly (an untyped string
compared with a timestamp column). SQLite's date functions read the clock for
the time value ``'now'`` (any case, also as a blob). A SQL literal or a bound
parameter spelling one of these makes a result depend on the time it ran.

The checks here over-approximate: any string in which one of the words stands
alone (not inside a longer word) counts, whatever its type turns out to be.
"""

from __future__ import annotations

import re
from typing import Any, Final

CLOCK_WORDS: Final = frozenset({"now", "today", "tomorrow", "yesterday"})

_PG_CLOCK = re.compile(r"(?<![a-z])(?:now|today|tomorrow|yesterday)(?![a-z])", re.I | re.A)
_MAX_DEPTH = 8


def _family(dialect: str | None) -> str:
    """``"sqlite"``, ``"mysql"`` or ``"postgres"`` (unknown dialects: the PostgreSQL rule)."""
    if dialect in ("sqlite",):
        return "sqlite"
    if dialect in ("mysql", "mariadb"):
        return "mysql"
    return "postgres"


def text_reads_clock(text: str | bytes, dialect: str | None) -> bool:
    """Whether the database of ``dialect`` may read its clock to interpret ``text``
    as a date/time value (``dialect`` as sqlglot or SQLAlchemy names it)."""
    family = _family(dialect)
    if family == "mysql":
        return False  # MySQL reads no special words in date/time strings
    if family == "sqlite":
        if isinstance(text, bytes):
            return text.strip().lower() == b"now"
        return text.strip().lower() == "now"
    if isinstance(text, bytes):
        return False  # bytea is never parsed as a date
    return _PG_CLOCK.search(text) is not None


def params_read_clock(params: Any, dialect: str | None) -> str | None:
    """The first parameter value (in a dict, tuple or list, also nested in
    lists and tuples) that makes the database read its clock, or None."""
    if not params:
        return None
    if _family(dialect) == "mysql":
        return None
    values = params.values() if isinstance(params, dict) else params
    return _first_clock(values, dialect, 0)


def _first_clock(values: Any, dialect: str | None, depth: int) -> str | None:
    for v in values:
        t = type(v)
        if t is str or t is bytes:
            if text_reads_clock(v, dialect):
                return v if t is str else v.decode("latin-1")
        elif (t is list or t is tuple) and depth < _MAX_DEPTH:
            found = _first_clock(v, dialect, depth + 1)
            if found is not None:
                return found
    return None


def describe(value: str) -> str:
    """A short quoted form of ``value`` for a bypass reason."""
    value = " ".join(value.split())
    return repr(value if len(value) <= 40 else value[:37] + "...")
