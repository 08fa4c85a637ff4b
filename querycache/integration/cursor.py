"""A DBAPI cursor that replays a cached result.

SQLAlchemy reads ``description`` and fetches rows from it exactly as from a
live cursor, so type conversion, ``Result`` methods and the ORM's loading all
run unchanged on a hit. Nothing here touches the database.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFERRED", "ReplayCursor"]


class ReplayCursor:
    """Serves ``rows`` (a list of tuples) through the DBAPI cursor protocol."""

    arraysize = 1
    lastrowid = None

    def __init__(self, description: Any, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.description = description
        self._rows = rows
        self._pos = 0
        self.rowcount = rowcount

    def execute(self, *args: Any, **kw: Any) -> None:
        """The statement already ran (or its result is cached): nothing to do."""

    executemany = execute
    setinputsizes = execute
    setoutputsize = execute

    def fetchone(self) -> tuple[Any, ...] | None:
        pos = self._pos
        if pos < len(self._rows):
            self._pos = pos + 1
            return self._rows[pos]
        return None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        pos = self._pos
        end = pos + (size or self.arraysize)
        self._pos = min(end, len(self._rows))
        return self._rows[pos:end]

    def fetchall(self) -> list[tuple[Any, ...]]:
        pos = self._pos
        self._pos = len(self._rows)
        return self._rows[pos:] if pos else list(self._rows)

    def nextset(self) -> None:
        return None

    def close(self) -> None:
        self._rows = []

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's async results call this on their cursor; nothing to do."""

    def __iter__(self) -> Any:
        while (row := self.fetchone()) is not None:
            yield row


class _Deferred:
    """Stands in for a cursor until ``pre_exec`` knows whether one is needed.

    Opening a real cursor costs a thread hop on aiosqlite; a hit needs none.
    """

    description = None
    rowcount = -1

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<querycache deferred cursor>"


DEFERRED = _Deferred()
