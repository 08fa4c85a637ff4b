"""The channel lease: the memory tier serves only while the bus proves it is caught up.

A process with Redis learns about other processes' commits on its
invalidation channel (:mod:`querycache.invalidation.bus`). Detecting that the
channel failed takes time, and a stalled server keeps its sockets open; so
instead of detection the memory tier relies on a *lease*: it serves entries
only while it holds fresh proof that the channel was alive and caught up.

The proof is a ``PING`` sent on the subscription connection every
``staleness_bound / 4`` (at most ``redis_timeout / 5``) carrying its send
time ``s``. Redis answers on that connection after every message it
delivered there before, and the bus thread handles messages in order, so
when the ``PONG`` is handled every invalidation published before ``s`` has
been applied. The lease then runs until ``s + staleness_bound - margin``: it
is computed from the *send* time carried by the reply, so a bus thread
starved of the GIL that handles the reply late cannot extend it, and the
reader checks it (:attr:`MemoryTier.lease_until
<querycache.tiers.memory.MemoryTier.lease_until>` against the clock read the
hit path already makes for the entry's TTL: one comparison). The *margin* (a
quarter of the bound, at most 10 ms) is for a reader preempted between
starting a read and that comparison.

The lease checks the channel; it cannot see a writer whose invalidation
failed (its ``MULTI`` timed out while Redis stalled): that writer keeps the
invalidation pending and retries it every 5 ms. So after any sign that Redis
may have stalled for ``redis_timeout`` — a reply later than ``redis_timeout``
minus the gap since the previous ping (a stall that long, begun after the
previous ping, either held this one or lies in the gap), a lost or new
subscription — the lease is *in doubt*: it is renewed only by a prompt reply
to a ping sent a *grace* (``staleness_bound / 2``, 20 to 50 ms) after Redis
answered again, which leaves the writers time to publish what they kept
(this assumes the writers' ``redis_timeout`` is not shorter), and meanwhile
Redis lookups are skipped too (:attr:`RedisTier.usable
<querycache.tiers.redis.RedisTier.usable>`), since an entry whose tokens a
pending writer has not yet replaced would look valid. While the lease has
lapsed, reads go to Redis when it is not in doubt, or to the database; the
memory tier keeps its entries, and the messages handled before the renewing
``PONG`` have revalidated them (after a new subscription it starts empty).

Not to be confused with the Redis *fetch* lease of
:mod:`querycache.integration.shared` (which process runs a missing query).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter, deque
from typing import Any

from querycache.settings import number

__all__ = ["ChannelLease", "check_bound", "lease_report"]

_monotonic = time.monotonic


def check_bound(value: Any) -> float:
    """Validate ``staleness_bound`` (seconds, a finite number > 0)."""
    number("staleness_bound", value)
    if not math.isfinite(value):
        raise ValueError(f"staleness_bound must be a finite number of seconds, got {value!r}")
    return float(value)


class ChannelLease:
    """The lease of one cache's memory tier on its invalidation channel.

    Driven by the bus thread (:meth:`payload`, :meth:`proof`,
    :meth:`subscribed`, :meth:`dropped`); read by the hit path through
    ``memory.lease_until``.
    """

    def __init__(self, memory: Any, tier: Any, stats: Any, bound: float, redis_timeout: float):
        self.memory = memory
        self.tier = tier
        self.stats = stats
        self.bound = bound
        #: seconds between pings
        self.interval = max(0.0005, min(bound / 4, redis_timeout / 5))
        #: how long one proof is good for: the bound minus a margin for a
        #: reader preempted between starting a read and checking the lease
        self.validity = bound - min(bound / 4, 0.01)
        #: a stall this long may have timed out a writer's invalidation
        self.timeout = redis_timeout
        self._last_sent: float | None = None
        #: after a sign of trouble: how long the writers get to publish what
        #: they kept (they retry every 5 ms)
        self.grace = max(0.02, min(bound / 2, 0.05))
        #: why the lease was put in doubt, and how often
        self.doubts: Counter[str] = Counter()
        self.epoch = 0  # one per subscription: replies to older ones are ignored
        self.doubt_from: float | None = None  # renew only from pings sent after this
        self.fresh = True  # never subscribed yet: nothing to doubt
        self._lapsed_from: float | None = None
        self._lock = threading.Lock()
        self.periods: deque[dict[str, float]] = deque(maxlen=100)
        memory.lease_until = 0.0
        memory.stats = stats

    # -- the bus thread ----------------------------------------------------------------
    def payload(self, now: float) -> str:
        """The argument of the next ``PING``: subscription epoch, send time and
        the previous ping's send time."""
        prev = self._last_sent if self._last_sent is not None else now
        self._last_sent = now
        return f"{self.epoch} {now!r} {prev!r}"

    def proof(self, data: Any, received: float) -> bool:
        """Handle a ``PONG``; True when it renewed the lease."""
        try:
            if isinstance(data, bytes):
                data = data.decode("ascii")
            epoch, sent_text, prev_text = str(data).split(" ")
            sent, prev = float(sent_text), float(prev_text)
        except (ValueError, UnicodeDecodeError):
            return False
        if int(epoch) != self.epoch:
            return False
        # A stall of redis_timeout or more (which may have timed out a writer)
        # began after the previous ping: if it held this one, the reply is
        # later than redis_timeout - gap; if not, the gap itself is longer.
        late = received - sent > self.timeout - (sent - prev)
        with self._lock:
            if self.doubt_from is not None:
                if late:
                    self.doubts["late reply"] += 1
                    self.doubt_from = max(self.doubt_from, received + self.grace)
                    return False
                if sent < self.doubt_from:
                    return False
                self.doubt_from = None
                self.tier.in_doubt = False
            elif late:
                self._doubt(received, "late reply" if received - sent > sent - prev else "gap")
                return False
            self.fresh = False
            self._renew(sent + self.validity, received)
        return True

    def subscribed(self, now: float) -> None:
        """A (new) subscription is confirmed; messages before it were missed."""
        with self._lock:
            self._last_sent = None
            if self.fresh:
                self.doubt_from = None
                self.tier.in_doubt = False
            else:
                self.doubts["new subscription"] += 1
                self.doubt_from = now + self.grace

    def dropped(self, now: float) -> None:
        """The subscription is gone: no proof until a new one is confirmed."""
        with self._lock:
            self.epoch += 1
            self._last_sent = None
            self.fresh = False
            if self.memory.lease_until > now:
                self.memory.lease_until = now
            if self.doubt_from is None:
                self._doubt(now, "subscription lost")
            self.doubt_from = math.inf

    def _doubt(self, now: float, why: str) -> None:
        self.doubts[why] += 1
        self.doubt_from = now + self.grace
        self.tier.in_doubt = True
        if self._lapsed_from is None and not self.fresh:
            until = self.memory.lease_until
            self._lapsed_from = until if until > 0.0 else now

    def _renew(self, deadline: float, received: float) -> None:
        memory = self.memory
        start = self._lapsed_from
        if start is None and 0.0 < memory.lease_until < received:
            start = memory.lease_until  # ran out between two proofs, no doubt
        self._lapsed_from = None
        if start is not None and start < received:
            self.stats.lease_lapses += 1
            self.stats.lease_seconds += received - start
            self.periods.append(
                {"start": start, "seconds": round(received - start, 4)},
            )
        if deadline > memory.lease_until:
            memory.lease_until = deadline

    # -- reading -----------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Whether the memory tier may serve right now."""
        return self.memory.lease_until >= _monotonic()

    def report(self) -> dict[str, Any]:
        """The figures of the report's ``lease`` section."""
        stats = self.stats
        now = _monotonic()
        lapsed = stats.lease_seconds
        held = self.memory.lease_until >= now
        if not held and not self.fresh:
            since = self._lapsed_from if self._lapsed_from is not None else self.memory.lease_until
            lapsed += max(0.0, now - since)
        return {
            "enabled": True,
            "pid": os.getpid(),
            "staleness_bound": self.bound,
            "ping_interval": self.interval,
            "held": held,
            "in_doubt": self.doubt_from is not None,
            "lapses": stats.lease_lapses,
            "seconds_without_lease": round(lapsed, 4),
            "hits_lost": stats.lease_hits_lost,
            "doubts": dict(self.doubts),
            "recent_lapses": [
                {"ago": round(now - p["start"], 3), "seconds": p["seconds"]}
                for p in list(self.periods)[-10:]
            ],
        }


def lease_report(cache: Any) -> dict[str, Any]:
    """``data["lease"]`` of the report: this process's time without a lease and
    the memory-tier hits that cost; a memory-only cache has no lease."""
    lease = getattr(cache, "lease", None)
    if lease is None:
        return {
            "enabled": False,
            "pid": os.getpid(),
            "staleness_bound": None,
            "lapses": 0,
            "seconds_without_lease": 0.0,
            "hits_lost": 0,
        }
    return lease.report()
