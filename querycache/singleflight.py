"""One database execution per key, however many readers miss at once.

The first reader to miss a key becomes its *leader* and runs the query; the
others become *followers* and wait for the leader's result — threads on a
:class:`threading.Event`, asyncio tasks on a future of their own loop, so the
event loop is never blocked. A follower waits at most ``timeout`` seconds,
then runs the query itself.

A follower accepts the leader's result only if the versions it captured when
it started waiting equal the leader's: otherwise a commit was announced in
between and the leader may have read the database before it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["Flight", "Flights"]


class Flight:
    """One in-progress execution of a key.

    The leader alone never needs a :class:`threading.Event`: one is made only
    when a thread starts waiting, under the registry lock, so a miss nobody
    waits for costs no synchronisation objects.
    """

    __slots__ = ("_async_waiters", "_done", "entry", "event", "snapshot")

    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot
        self.entry: Any = None
        self.event: threading.Event | None = None
        self._done = False
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wait(self, timeout: float) -> bool:
        """Block this thread until the leader finishes; False on timeout."""
        with _registry_lock:
            if self._done:
                return True
            event = self.event
            if event is None:
                event = self.event = threading.Event()
        return event.wait(timeout)

    async def wait_async(self, timeout: float) -> bool:
        """Suspend this task until the leader finishes; False on timeout."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with _registry_lock:
            if self._done:
                return True
            self._async_waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True


_registry_lock = threading.Lock()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Flights:
    """The table of keys being fetched right now."""

    def __init__(self) -> None:
        self._flights: dict[Any, Flight] = {}

    def join(self, key: Any, snapshot: Any) -> tuple[Flight, bool]:
        """Return ``(flight, leader)``: lead a new flight or follow the current one."""
        with _registry_lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(snapshot)
            return flight, True

    def land(self, key: Any, flight: Flight, entry: Any) -> None:
        """The leader is done (``entry`` is None if it failed or must not be shared)."""
        with _registry_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.entry = entry
            flight._done = True
            event = flight.event
            waiters = flight._async_waiters
            if waiters:
                flight._async_waiters = []
        if event is not None:
            event.set()
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed; its task is gone
                pass

    def __len__(self) -> int:
        return len(self._flights)
