"""What a tier stores: one query result, as the driver returned it."""

from __future__ import annotations

from typing import Any

__all__ = ["Entry"]


class Entry:
    """A cached result: the cursor's ``description`` and its raw rows.

    Rows are kept as the DBAPI driver produced them (plain tuples), so that on
    a hit SQLAlchemy converts types exactly as it would for a live cursor.
    ``deps`` are the ``(scope, table)`` pairs the result depends on, ``stats``
    the per-fingerprint counters a hit increments.
    """

    __slots__ = ("deps", "description", "expires", "key", "rowcount", "rows", "size", "stats")

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
        self.deps: tuple[str, ...] = ()
        self.key: Any = None
        self.stats: Any = None
