"""The invalidation bus: how other processes' commits reach this process.

A daemon thread subscribes to the namespace's channel. Each message names a
scope (by digest) and the tables a commit wrote, and, for a precise commit,
the rows' images (:mod:`querycache.invalidation.wire`); the thread kills the
matching memory-tier cells exactly as the writer's own process did
(``on_message(scope digest, tables[, images])``). Messages from
this process are skipped: its own commits were applied before they were
published.

The thread also keeps the memory tier's lease
(:mod:`querycache.invalidation.lease`): a ``PING`` carrying its send time every
``staleness_bound / 4`` on the subscription connection, whose ``PONG`` —
answered after every earlier message — renews it. The lease, not failure
detection, bounds staleness. Without any ``PONG`` for a while (at least
0.35 s: a stopped server keeps its sockets open) the connection is given up:
the memory tier is *suspended* (emptied, refusing stores) and resumes empty
after re-subscribing. The same thread retries invalidations that failed to
reach Redis — every ping interval, and before every reconnection attempt,
so that they are published as soon as Redis answers again — and marks the
Redis tier healthy again once a ``PING`` succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from querycache.invalidation.lease import ChannelLease
from querycache.invalidation.wire import decode_images

__all__ = ["InvalidationBus"]

log = logging.getLogger("querycache")

#: seconds between retries of invalidations that failed to reach Redis
_RETRY = 0.005


class InvalidationBus:
    """Subscriber thread of one cache."""

    def __init__(
        self,
        tier: Any,
        on_message: Callable[..., None],
        on_down: Callable[[], None],
        on_up: Callable[[], None],
        lease: ChannelLease,
    ) -> None:
        self.tier = tier
        self.on_message = on_message
        self.on_down = on_down
        self.on_up = on_up
        self.lease = lease
        self.ping_interval = lease.interval
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="querycache-bus", daemon=True)
        self.messages = 0
        #: the current subscription (None between two)
        self.pubsub: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.01
        up = False
        while not self._stop.is_set():
            pubsub = None
            try:
                if self.tier.pending:  # publish what this process kept first
                    self.tier.apply_pending()
                client = self.tier.clients.subscriber()
                pubsub = client.pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(self.tier.channel)
                self.pubsub = pubsub
                self._await_subscribed(pubsub)
                self.lease.subscribed(time.monotonic())
                self._recover_tier()
                if not up:
                    up = True
                    self.on_up()
                backoff = 0.01
                self._listen(pubsub)
            except Exception as exc:
                if up:
                    log.warning("querycache: invalidation channel lost (%s)", type(exc).__name__)
                    self.tier.stats.count("invalidation channel lost")
            finally:
                if up:
                    up = False
                    self.connected.clear()
                    self.lease.dropped(time.monotonic())
                    self.on_down()
                self.pubsub = None
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
            # a writer with invalidations to publish must not sleep long
            self._stop.wait(min(backoff, _RETRY) if self.tier.pending else backoff)
            backoff = min(backoff * 2, 1.0)

    def _await_subscribed(self, pubsub: Any) -> None:
        deadline = time.monotonic() + max(1.0, self.ping_interval * 5)
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=self.ping_interval)
            if msg and msg.get("type") == "subscribe":
                return
        raise TimeoutError("no subscribe confirmation")

    def _recover_tier(self) -> None:
        tier = self.tier
        if tier.healthy and not tier.pending:
            return
        tier.clients.sync.ping()
        if tier.apply_pending():
            tier.recovered()

    def _listen(self, pubsub: Any) -> None:
        lease = self.lease
        interval = lease.interval
        silence = max(0.35, 3 * interval + 0.05)
        last_pong = time.monotonic()
        next_ping = last_pong  # at once: the first proof
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                pubsub.ping(lease.payload(now))  # the send time, read before sending
                next_ping = now + interval
                self._retry()
            wait = next_ping - time.monotonic()
            if self.tier.pending:  # a writer publishes what it kept without delay
                self._retry()
                wait = min(wait, _RETRY)
            msg = pubsub.get_message(timeout=max(0.0, wait))
            now = time.monotonic()
            if msg is not None:
                kind = msg.get("type")
                if kind == "message":
                    self._handle(msg.get("data"))
                elif kind == "pong":
                    last_pong = now
                    if lease.proof(msg.get("data"), now) and not self.connected.is_set():
                        self.connected.set()
            if now - last_pong > silence:
                raise TimeoutError("no PONG on the invalidation channel")

    def _retry(self) -> None:
        """Retry pending invalidations / health; a failure keeps the subscription."""
        if self.tier.healthy and not self.tier.pending:
            return
        try:
            self._recover_tier()
        except Exception:
            pass

    def _handle(self, data: Any) -> None:
        """``inv|hold <origin> <scope digest or *> <tables or *>``, or
        ``img <origin> <scope digest> <tables> <images>`` (:mod:`.wire`)."""
        payload = None
        if isinstance(data, bytes) and data.startswith(b"img "):
            head = data.split(b" ", 4)
            if len(head) != 5:
                return
            payload = head[4]
            data = b"inv " + b" ".join(head[1:4])
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        parts = str(data).split(" ", 3)
        if len(parts) != 4 or parts[0] not in ("inv", "hold"):
            return
        kind, origin, sid, names = parts
        tables = None if names == "*" else frozenset(names.split(","))
        try:
            if sid != "*":
                self.tier.heard(kind, sid, tables)
            if origin == self.tier.origin:
                return  # applied here before it was sent
            self.messages += 1
            if payload is not None and tables is not None and sid != "*":
                images = decode_images(self.tier.codec, payload, tables)
                if all(image is None for image in images.values()):
                    self.tier.stats.count("bus images that failed to decode")
                self.on_message(sid, tables, images)
            else:
                self.on_message(sid, tables)
        except Exception as exc:  # never let one message kill the thread
            self.tier.stats.count("bus message", errors=True)
            log.warning("querycache: bus message failed: %r", exc)
