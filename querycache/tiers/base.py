"""What a tier stores: one query result, as the driver returned it."""

from __future__ import annotations

from typing import Any

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
        "rowcount",
        "rows",
        "size",
        "stats",
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
        # rows hold dicts or lists (JSON, arrays): each hit gets its own copies
        self.mutable = False


def _copy(v: Any) -> Any:
    t = type(v)
    if t is dict:
        return {k: _copy(x) for k, x in v.items()}
    if t is list:
        return [_copy(x) for x in v]
    if t is tuple:
        return tuple([_copy(x) for x in v])
    return v


def thaw(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows whose dicts and lists are fresh copies, safe to hand to a caller."""
    return [_copy(row) for row in rows]
