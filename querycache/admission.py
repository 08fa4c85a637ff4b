"""Adaptive admission: store only what pays for its store.

Caching a result costs something on every miss (fetch, copy, size, index) and
pays back only when the entry is hit before a write, an eviction or its TTL
ends it. Per fingerprint, :class:`Admission` compares, over a window of
stores, what the entries returned (hits times the database time a hit saves)
with what storing them cost (the time the store path took). A fingerprint
whose entries do not pay, and mostly die unused (invalidated or expired
before a hit; evictions are the memory budget's problem, not the
statement's), stops being stored: its executions pass straight to
the database (the analysis, a counter and this check only). After a while
(``reprobe_after`` skipped executions or ``reprobe_seconds``) it is
*probed*: stored again for one window, so that a change in the workload
brings it back.

Hits already stored keep being served; admission only decides stores. The
hit path does not look at it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Admission", "AdmissionPolicy"]

ADMITTED, REJECTED, PROBING = "admitted", "rejected", "probing"


class AdmissionPolicy:
    """The settings of adaptive admission, and one :class:`Admission` per
    fingerprint. ``mode="always"`` stores everything."""

    def __init__(
        self,
        mode: str = "adaptive",
        *,
        window: int = 32,
        reprobe_after: int = 256,
        reprobe_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(mode, str):
            raise TypeError(f"admission must be 'adaptive' or 'always', got {mode!r}")
        if mode not in ("adaptive", "always"):
            raise ValueError(f"admission must be 'adaptive' or 'always', got {mode!r}")
        self.mode = mode
        self.window = window
        self.reprobe_after = reprobe_after
        self.reprobe_seconds = reprobe_seconds
        self.clock = clock

    def for_query(self, stats: Any) -> Admission | None:
        """The admission of ``stats``'s fingerprint (``None``: always store)."""
        if self.mode == "always":
            return None
        adm = stats.admission
        if adm is None:
            adm = stats.admission = Admission(self, stats)
        return adm  # type: ignore[no-any-return]


class Admission:
    """Whether one fingerprint's results are worth storing, with the evidence."""

    __slots__ = (
        "dropped_at",
        "hits_at",
        "policy",
        "rejected_at",
        "skipped",
        "state",
        "stats",
        "store_seconds",
        "stores",
        "verdicts",
    )

    def __init__(self, policy: AdmissionPolicy, stats: Any) -> None:
        self.policy = policy
        self.stats = stats
        self.state = ADMITTED
        self.stores = 0  # in the current window
        self.store_seconds = 0.0
        self.hits_at = stats.hits
        self.dropped_at = stats.dropped_unused
        self.skipped = 0
        self.rejected_at = 0.0
        #: the last decision: (stores, hits, dropped unused, benefit s, cost s)
        self.verdicts: tuple[int, int, int, float, float] | None = None

    def admits(self) -> bool:
        """On a miss that could be stored: may it be?"""
        if self.state != REJECTED:
            return True
        self.skipped += 1
        p = self.policy
        if self.skipped >= p.reprobe_after or p.clock() - self.rejected_at >= p.reprobe_seconds:
            self._open(PROBING)
            return True
        return False

    def stored(self, seconds: float) -> None:
        """A store happened, and took ``seconds``; decide at the window's end."""
        self.stores += 1
        self.store_seconds += seconds
        if self.stores < self.policy.window:
            return
        qs = self.stats
        hits = qs.hits - self.hits_at
        dropped = qs.dropped_unused - self.dropped_at
        saved_per_hit = qs.db_seconds / qs.misses if qs.misses else 0.0
        benefit = hits * saved_per_hit
        cost = self.store_seconds
        self.verdicts = (self.stores, hits, dropped, benefit, cost)
        # entries not reused *yet* are no evidence: only those that died unused
        if benefit < cost and dropped * 4 >= self.stores * 3:
            self._open(REJECTED)
            self.rejected_at = self.policy.clock()
        else:
            self._open(ADMITTED)

    def _open(self, state: str) -> None:
        self.state = state
        self.stores = 0
        self.store_seconds = 0.0
        self.skipped = 0
        self.hits_at = self.stats.hits
        self.dropped_at = self.stats.dropped_unused

    def describe(self) -> str:
        """The state and its evidence, for the report."""
        if self.verdicts is None:
            return f"{self.state} (deciding: {self.stores} stores so far)"
        stores, hits, dropped, benefit, cost = self.verdicts
        return (
            f"{self.state}: last window stored {stores}, reused {hits} times, "
            f"{dropped} dropped unused; saved {benefit * 1000:.2f} ms of database time "
            f"for {cost * 1000:.2f} ms of stores"
        )
