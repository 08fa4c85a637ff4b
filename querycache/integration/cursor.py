"""DBAPI cursors that replay a cached result, or sit over a live one on a miss.

SQLAlchemy reads ``description`` and fetches rows from them exactly as from a
live cursor, so type conversion, ``Result`` methods and the ORM's loading all
run unchanged. :class:`ReplayCursor` never touches the database;
:class:`ChainCursor` and :class:`TeeCursor` pass fetches on to the driver's
cursor, so its rows and its errors reach the caller when they would without
the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from querycache.tiers.base import thaw
from querycache.tiers.sizing import has_mutable, rows_size

__all__ = ["DEFERRED", "ChainCursor", "ReplayCursor", "TeeCursor"]


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


class ChainCursor(ReplayCursor):
    """Replays the rows a miss fetched ahead, then continues on ``live``.

    ``error``, when given, is what the driver raised while fetching ahead,
    right after the last row in ``rows``: the fetch that needs the next row
    raises that same exception object, as the driver's own fetch would have.
    """

    def __init__(
        self,
        description: Any,
        rows: list[tuple[Any, ...]],
        live: Any,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(description, rows, -1)
        self._live = live
        self._error = error

    @property  # type: ignore[override]
    def rowcount(self) -> int:
        return self._live.rowcount  # type: ignore[no-any-return]

    @rowcount.setter
    def rowcount(self, value: int) -> None:
        pass

    def _tail(self, fetch: Callable[..., Any], *args: Any) -> Any:
        error = self._error
        if error is not None:
            self._error = None
            self._pos = len(self._rows)  # the driver's failed fetch consumed its rows
            raise error
        return fetch(*args)

    def fetchone(self) -> tuple[Any, ...] | None:
        pos = self._pos
        if pos < len(self._rows):
            self._pos = pos + 1
            return self._rows[pos]
        return self._tail(self._live.fetchone)  # type: ignore[no-any-return]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        if size is None:
            size = self._live.arraysize
        pos, n = self._pos, len(self._rows)
        if pos + size <= n:
            self._pos = pos + size
            return self._rows[pos : pos + size]
        head = self._rows[pos:]
        tail = self._tail(self._live.fetchmany, size - len(head))
        self._pos = n  # only once the live fetch succeeded (psycopg keeps its place)
        return head + list(tail)

    def fetchall(self) -> list[tuple[Any, ...]]:
        head = self._rows[self._pos :]
        tail = self._tail(self._live.fetchall)
        self._pos = len(self._rows)
        return head + list(tail)

    def close(self) -> None:
        self._rows = []
        self._pos = 0
        self._error = None
        self._live.close()

    async def _async_soft_close(self) -> None:
        soft = getattr(self._live, "_async_soft_close", None)
        if soft is not None:
            await soft()


class TeeCursor:
    """Passes every fetch to ``live`` (a server-side cursor) unchanged and
    keeps a copy of the rows while they fit in ``limit`` bytes.

    ``done(rows)`` is called once the caller has read the result to its end
    (an empty fetch, or ``fetchall``) and every row was kept; ``dropped()``
    once it is known they will not be (too large, or closed early).
    """

    def __init__(
        self,
        live: Any,
        description: Any,
        limit: int,
        done: Callable[[list[tuple[Any, ...]]], None],
        dropped: Callable[[str], None],
    ) -> None:
        self._live = live
        self.description = description
        self._limit = limit
        self._done = done
        self._dropped = dropped
        self._kept: list[tuple[Any, ...]] | None = []
        self._size = 0

    @property
    def rowcount(self) -> int:
        return self._live.rowcount  # type: ignore[no-any-return]

    @property
    def arraysize(self) -> int:
        return self._live.arraysize  # type: ignore[no-any-return]

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._live.arraysize = value

    def _keep(self, chunk: Any, end: bool) -> None:
        kept = self._kept
        if kept is None:
            return
        if chunk:
            rows = chunk if type(chunk[0]) is tuple else [tuple(r) for r in chunk]
            if has_mutable(rows):  # the caller may change its dicts; the copy stays as read
                rows = thaw(rows)
            self._size += rows_size(rows)
            if self._size > self._limit:
                self._kept = None
                self._dropped("larger than max_entry_bytes")
                return
            kept.extend(rows)
        if end:
            self._kept = None
            self._done(kept)

    def fetchone(self) -> Any:
        row = self._live.fetchone()
        self._keep(None if row is None else [row], row is None)
        return row

    def fetchmany(self, size: int | None = None) -> Any:
        chunk = self._live.fetchmany() if size is None else self._live.fetchmany(size)
        self._keep(chunk, not chunk)
        return chunk

    def fetchall(self) -> Any:
        rows = self._live.fetchall()
        self._keep(rows, True)
        return rows

    def nextset(self) -> None:
        return None

    def close(self) -> None:
        if self._kept is not None:
            self._kept = None
            self._dropped("not read to the end")
        self._live.close()

    async def _async_soft_close(self) -> None:
        soft = getattr(self._live, "_async_soft_close", None)
        if soft is not None:
            await soft()

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
