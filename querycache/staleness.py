"""Opt-in bounded staleness: stale-while-revalidate for heavy reads.

Some reads (dashboards, reports, aggregates) are worth serving a few seconds
old rather than recomputing after every write. A result may be served stale
only when its statement opted in:

* ``execution_options(querycache_max_stale=5)`` on the statement, or
* ``QueryCache(max_stale={"orders": 5, "<fingerprint id>": 30})``: per
  fingerprint id (as the report shows it), or per table: writes to that table
  may reach its readers up to that many seconds late. A commit that also
  wrote a table the statement reads and that is not listed is not late.

When a commit invalidates such an entry, :class:`StaleStore` keeps it aside
(``held``), served for at most that many seconds after the invalidation was
applied (microseconds after the database's commit returned), while exactly
one refresh re-executes it in the background
(:mod:`querycache.refresh`). The first fresh result replaces it; after the
deadline readers miss as usual. Without the option nothing changes: the entry
dies with its cells, as always.

Never stale where it would break read-your-writes: a read inside a
transaction that has pending writes to a table it reads bypasses the cache
before this store is consulted (as every such read does), so the writing
transaction sees its own writes; after the commit, opted-in readers anywhere
(the writer included) may see the old result within the bound — that is what
they asked for. Epoch kills (DDL, writes to unknown tables, ``clear()``) and
invalidations from other processes never leave stale entries.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from querycache.errors import OptionError

__all__ = ["MAX_STALE_OPTION", "Stale", "StaleStore", "check_max_stale", "check_option"]

MAX_STALE_OPTION = "querycache_max_stale"

#: a record's allowance is decided per write from the per-table settings
BY_TABLE = -1.0

_MAX_HELD = 10_000

_monotonic = time.monotonic


def check_max_stale(value: Any) -> dict[str, float]:
    """Validate ``QueryCache(max_stale=...)``: table names or fingerprint ids
    mapped to seconds > 0. Raises ``TypeError``/``ValueError`` naming it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            "max_stale must be a mapping of table names or fingerprint ids to seconds, "
            f"got {type(value).__name__}"
        )
    out: dict[str, float] = {}
    for name, seconds in value.items():
        if not isinstance(name, str) or not name.strip():
            raise TypeError(
                f"max_stale keys must be table names or fingerprint ids (str), got {name!r}"
            )
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(
                f"max_stale[{name!r}] must be a number of seconds, "
                f"got {type(seconds).__name__} {seconds!r}"
            )
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"max_stale[{name!r}] must be a finite number > 0, got {seconds!r}")
        out[name.rsplit(".", 1)[-1].strip('"`[]').lower()] = float(seconds)
    return out


def check_option(value: Any) -> float:
    """Validate ``execution_options(querycache_max_stale=...)`` (0: never stale)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise OptionError(
            f"execution option {MAX_STALE_OPTION!r} must be a finite number of seconds >= 0, "
            f"not {value!r}"
        )
    return float(value)


class Stale:
    """An invalidated entry kept aside: served until ``until``."""

    __slots__ = ("entry", "since", "until", "written")

    def __init__(self, entry: Any, since: float, until: float, written: frozenset[str]) -> None:
        self.entry = entry
        self.since = since
        self.until = until
        self.written = written


class StaleStore:
    """Invalidated entries that may still be served, by memory-tier key."""

    def __init__(self, settings: Mapping[str, float], clock: Any = _monotonic) -> None:
        self.settings = dict(settings)
        self.clock = clock
        self.held: dict[Any, Stale] = {}
        self._lock = threading.Lock()

    # -- storing ----------------------------------------------------------------
    def allowance_at_store(self, opts: Mapping[str, Any], plan: Any) -> float | None:
        """What an entry stored by this execution may be served stale for:
        seconds, :data:`BY_TABLE`, or None (never stale)."""
        value = opts.get(MAX_STALE_OPTION) if opts else None
        if value is not None:
            return float(value) or None
        settings = self.settings
        if not settings:
            return None
        seconds = settings.get(plan.stats.fingerprint_id)
        if seconds is not None:
            return seconds
        if any(t in settings for t in plan.tables):
            return BY_TABLE
        return None

    def _for_write(
        self, allowance: float, tables: tuple[str, ...], written: frozenset[str]
    ) -> float:
        """Seconds an entry of ``allowance`` may lag behind a commit of ``written``."""
        if allowance != BY_TABLE:
            return allowance
        hit = [t for t in tables if t in written]
        settings = self.settings
        if not hit or any(t not in settings for t in hit):
            return 0.0  # a table it reads and nobody allowed to lag was written
        return min(settings[t] for t in hit)

    def retain(self, entry: Any, written: frozenset[str]) -> bool:
        """Keep ``entry``, just invalidated by a commit of ``written``, if it
        opted in; True when it is (or already was) held."""
        record = entry.refresh
        if record.max_stale is None:
            return False
        seconds = self._for_write(record.max_stale, record.plan.tables, written)
        if seconds <= 0:
            return False
        now = self.clock()
        key = entry.key
        with self._lock:
            held = self.held.get(key)
            if held is not None and held.until > now:
                return True  # the older entry keeps its (earlier) deadline
            if len(self.held) >= _MAX_HELD:
                self._sweep(now)
                if len(self.held) >= _MAX_HELD:
                    return False
            self.held[key] = Stale(entry, now, now + seconds, written)
        return True

    def drop(self, key: Any) -> None:
        """A fresh result of ``key`` is stored: nothing stale to serve."""
        with self._lock:
            self.held.pop(key, None)

    def pending(self, key: Any) -> bool:
        """Whether ``key`` is held and still within its bound."""
        held = self.held.get(key)
        return held is not None and held.until > self.clock()

    def clear(self) -> None:
        with self._lock:
            self.held.clear()

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self.held.items() if s.until <= now]:
            del self.held[key]

    # -- serving (the miss path only) ------------------------------------------
    def serve(self, ctx: Any, key: Any, plan: Any, capture: Any) -> bool:
        """Serve ``key``'s stale entry to ``ctx`` if this reader opted in and
        the bound allows; True when served."""
        held = self.held.get(key)
        if held is None:
            return False
        opts = ctx.execution_options
        allowed = opts.get(MAX_STALE_OPTION) if opts else None
        if allowed is None:  # no option: only what the settings allow
            base = self.allowance_at_store({}, plan)
            allowed = self._for_write(base, plan.tables, held.written) if base else 0.0
        now = self.clock()
        age = now - held.since
        if now >= held.until:
            with self._lock:
                if self.held.get(key) is held:
                    del self.held[key]
            return False
        if age >= allowed:
            return False
        ctx._qc_serve(held.entry)
        qs = plan.stats
        qs.stale_hits += 1
        qs.stale_age += age
        if age > qs.stale_age_max:
            qs.stale_age_max = age
        if capture is not None:  # the ORM must not store stale rows as fresh
            capture.entry, capture.storable = held.entry, False
        return True


def stale_figures(queries: Any) -> dict[str, Any]:
    """The report's ``stale`` section: served-stale hits and their ages."""
    rows = []
    for qs in queries:
        if qs.stale_hits:
            rows.append(
                {
                    "fingerprint_id": qs.fingerprint_id,
                    "fingerprint": qs.fingerprint,
                    "stale_hits": qs.stale_hits,
                    "mean_age_ms": qs.stale_age / qs.stale_hits * 1000,
                    "max_age_ms": qs.stale_age_max * 1000,
                }
            )
    rows.sort(key=lambda r: -r["stale_hits"])
    hits = sum(r["stale_hits"] for r in rows)
    total_age = sum(r["mean_age_ms"] * r["stale_hits"] for r in rows)
    return {
        "hits": hits,
        "mean_age_ms": total_age / hits if hits else 0.0,
        "max_age_ms": max((r["max_age_ms"] for r in rows), default=0.0),
        "queries": rows,
    }
