"""The only place where sync and async execution differ: waiting.

Async engines run SQLAlchemy's synchronous code inside a greenlet; to wait
without blocking the event loop that code hands an awaitable to the loop with
SQLAlchemy's ``await_``. Sync engines block their thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await

from querycache.singleflight import Flight

__all__ = ["await_ready", "run", "sleep", "wait"]

T = TypeVar("T")


class _Ready:
    """An awaitable that completes at once: a hit on an async engine must
    still await once, or SQLAlchemy raises ``AwaitRequired``."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_READY = _Ready()


def await_ready() -> None:
    """Switch to the event loop's greenlet and straight back."""
    _await(_READY)


def wait(flight: Flight, timeout: float, is_async: bool) -> bool:
    """Wait for a flight's leader; False when ``timeout`` passed first."""
    if is_async:
        return _await(flight.wait_async(timeout))
    return flight.wait(timeout)


def sleep(seconds: float, is_async: bool) -> None:
    """Pause this caller without blocking an event loop."""
    if is_async:
        _await(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def run(awaitable: Awaitable[T]) -> T:
    """Run an awaitable from the synchronous code of an async engine."""
    return _await(awaitable)
