"""Turn query results into plain, comparable data.

The same query gives equal data on SQLite and PostgreSQL, sync or async:
``Decimal`` and ``float`` → string with 2 decimals, datetimes → naive UTC ISO
string, UUID → string, JSON (dict/list) → ``json.dumps(sort_keys=True)``, ORM
objects → tuples of their column values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import inspect

__all__ = ["normalize", "obj_row", "rows"]

_CENT = Decimal("0.01")


def normalize(value: Any) -> Any:
    """One value as a comparable primitive (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return str(value.quantize(_CENT, ROUND_HALF_UP))
    if isinstance(value, float):
        return str(Decimal(repr(value)).quantize(_CENT, ROUND_HALF_UP))
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, tuple):
        return tuple(normalize(v) for v in value)
    return str(value)


def rows(result: Iterable[Iterable[Any]]) -> list[tuple[Any, ...]]:
    """Every row of ``result`` (Core rows or tuples) as a tuple of normalized values."""
    return [tuple(normalize(v) for v in row) for row in result]


def obj_row(obj: Any, *extra: Any) -> tuple[Any, ...]:
    """An ORM object's column values in mapping order, then ``extra`` as given
    (already-normalized data, e.g. its loaded relationships)."""
    if obj is None:
        return (None,)
    mapper = inspect(obj).mapper
    return (*(normalize(getattr(obj, a.key)) for a in mapper.column_attrs), *extra)
