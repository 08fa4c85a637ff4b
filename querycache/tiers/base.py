"""What a tier stores: one query result, as the driver returned it."""

from __future__ import annotations

import copy
from typing import Any

from querycache.tiers.sizing import IMMUTABLE, frozen

__all__ = ["Entry", "thaw"]


class Entry:
    """A cached result: the cursor's ``description`` and its raw rows.

    Rows are kept as the DBAPI driver produced them (plain tuples), so that on
    a hit SQLAlchemy converts types exactly as it would for a live cursor.
    ``cells`` are the validity cells the result depends on, ``stats``
    the per-fingerprint counters a hit increments.
    """

    __slots__ = (
        "cells",
        "deps",
        "description",
        "expires",
        "key",
        "mutable",
        "refresh",
        "rowcount",
        "rows",
        "size",
        "stats",
        "used",
    )

    def __init__(
        self,
        description: tuple[tuple[Any, ...], ...] | None,
        rows: list[tuple[Any, ...]],
        rowcount: int,
        size: int,
    ) -> None:
        self.description = description
        self.rows = rows
        self.rowcount = rowcount
        self.size = size
        self.expires = 0.0
        self.cells: tuple[Any, ...] = ()
        self.deps: tuple[tuple[str, str], ...] = ()  # (scope, table) it read
        self.key: Any = None
        self.stats: Any = None
        self.used = False  # served at least once (admission counts the unused)
        # rows hold values not provably immutable (JSON, arrays, driver
        # objects): each hit gets its own copies
        self.mutable = False
        #: what re-executing it takes (:mod:`querycache.refresh`), only for
        #: entries that may be refreshed
        self.refresh: Any = None


def _copy(v: Any) -> Any:
    t = type(v)
    if t in IMMUTABLE:
        return v
    if t is dict:
        return {_copy(k): _copy(x) for k, x in v.items()}
    if t is list:
        return [_copy(x) for x in v]
    if t is tuple:
        return tuple([_copy(x) for x in v])
    if frozen(v):  # enum members, frozensets of immutables
        return v
    if t is set:
        return {_copy(x) for x in v}
    return copy.deepcopy(v)  # anything else: measure() checked that it copies


def thaw(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows whose values that are not provably immutable (dicts, lists, sets,
    driver objects...) are fresh copies, safe to hand to a caller."""
    return [_copy(row) for row in rows]
