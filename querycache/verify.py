"""Verify (shadow) mode: re-execute a sample of hits and compare.

``QueryCache(verify=0.01)`` checks about one hit in a hundred against the
database; ``verify=1.0`` checks every hit, synchronously, and the caller then
receives the database's result, not the cached one.

**Sampling.** Each engine binding holds a countdown (``verify_left``); every
hit decrements it, and the hit whose decrement reaches zero is sampled (the
next countdown is drawn from a geometric distribution of mean ``1 / rate``, so
a periodic workload cannot dodge it). That decrement and compare is the whole
cost on the hit path; with ``verify=0`` the countdown starts at 2**62.

**Where the check runs.** A sampled hit of a synchronous engine on a shared
database is served from the cache as usual, and a small background executor
(two threads, at most :data:`MAX_PENDING` checks queued, more are skipped and
counted) runs the statement on a connection of the engine's own pool with the
same result identity. Async engines, private in-memory databases and
``verify=1.0`` check on the caller's own connection instead: the hit is turned
into an execution, the rows the database returns go to the caller and are
compared with the entry.

**No false mismatches.** Rows are compared as multisets (SQL does not promise
an order among equal sort keys; NaN equals NaN). When they differ, a write may
have committed between the hit and the check: such a write kills one of the
entry's validity cells (memory) or replaces a version token (Redis) right after
its commit, or, from another process, within the declared delivery bound. So
the check waits up to ``settle`` seconds for that to happen; only an entry
still valid after it is a **mismatch**: counted per fingerprint with a diff
summary (row counts and differing column names, never values), logged once per
fingerprint, and every entry reading its tables is invalidated.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from querycache.integration import io
from querycache.integration.cursor import ChainCursor, ReplayCursor
from querycache.integration.drivers import BEGAN_KEY
from querycache.integration.identity import IDENT_KEY

if TYPE_CHECKING:
    from querycache.cache import QueryCache
    from querycache.integration.engine import EngineBinding
    from querycache.tiers.base import Entry

__all__ = ["MAX_PENDING", "Tally", "Verifier", "verify_report", "verify_text"]

log = logging.getLogger("querycache")

#: background checks queued at most; a sample beyond this is skipped
MAX_PENDING = 16
_NEVER = 1 << 62
_MAX_DETAILS = 50


class Tally:
    """Verdicts summed over several caches (the pytest plugin's); ``where``
    names what is running (the test), recorded with each mismatch."""

    def __init__(self) -> None:
        self.where = ""
        self.checked = 0
        self.matched = 0
        self.mismatches = 0
        self.concurrent_writes = 0
        self.details: list[dict[str, Any]] = []


def check_rate(value: Any) -> float:
    """Validate the ``verify`` setting: a fraction of hits in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"verify must be a number in [0, 1] (the fraction of hits re-checked), "
            f"got {type(value).__name__} {value!r}"
        )
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"verify must be a number in [0, 1], got {value!r}")
    return float(value)


class Check:
    """One sampled hit: what was served and how to tell whether it went stale."""

    __slots__ = ("entry", "key", "params", "plan", "rkey", "scope", "statement", "tier", "vkeys")

    def __init__(self, entry: Entry, key: Any, plan: Any, scope: str, ctx: Any, tier: str) -> None:
        self.entry = entry
        self.key = key
        self.plan = plan
        self.scope = scope
        self.statement: str = ctx.statement
        self.params: Any = ctx.parameters[0]
        self.tier = tier
        self.rkey: str | None = None
        self.vkeys: list[str] = []


class Verifier:
    """The verify mode of one cache (``cache.verifier``)."""

    def __init__(self, cache: QueryCache, rate: float) -> None:
        self.cache = cache
        self.rate = check_rate(rate)
        #: seconds a differing result waits for a concurrent commit's invalidation
        self.settle = 0.5 if cache.redis is not None else 0.05
        self.lock = threading.Lock()
        self.sampled = 0
        self.checked = 0
        self.matched = 0
        self.mismatches = 0
        self.concurrent_writes = 0
        self.skipped: Counter[str] = Counter()
        self.details: dict[str, dict[str, Any]] = {}
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self._engines: dict[int, weakref.ref[Any]] = {}
        self._rng = random.Random()
        #: also told every verdict (the pytest plugin's :class:`Tally`)
        self.tallies: list[Tally] = []
        self._flagged: dict[int, Any] = {}  # entries found wrong (kept: ids stay unique)

    # -- sampling ----------------------------------------------------------------
    def interval(self) -> int:
        """Hits until the next sample."""
        rate = self.rate
        if rate <= 0.0:
            return _NEVER
        if rate >= 1.0:
            return 1
        u = 1.0 - self._rng.random()  # (0, 1]
        return 1 + int(math.log(u) / math.log1p(-rate))

    def attach(self, binding: EngineBinding, engine: Any) -> None:
        """Arm ``binding``'s countdown; remember its engine for background checks."""
        binding.verify_left = self.interval()
        self._engines[id(binding)] = weakref.ref(engine)

    def due(self, binding: EngineBinding) -> bool:
        """Count one hit outside the hit path; True when it is sampled."""
        n = binding.verify_left - 1
        binding.verify_left = n
        return n <= 0

    def sample(self, ctx: Any, entry: Entry, key: Any, tier: str = "memory") -> bool:
        """A sampled hit (its countdown reached zero). Returns True when the
        statement now runs on the caller's connection (checked in
        :meth:`finish`), False when the hit is served (checked in the background
        or skipped)."""
        binding: EngineBinding = ctx._qc
        binding.verify_left = self.interval()
        try:
            with self.lock:
                self.sampled += 1
            plan = self.cache.plan(ctx.statement, binding.dialect_name)
            scope = binding.scope_for(ctx._dbapi_connection.info)
            check = Check(entry, key, plan, scope, ctx, tier)
            if tier == "redis":
                tier_ = self.cache.redis
                assert tier_ is not None
                check.rkey = tier_.entry_key(
                    binding.redis_identity(key), check.statement, check.params, plan
                )
                check.vkeys, _ = tier_.reader_keys(
                    binding.scope, plan.tables, plan.footprint, check.params
                )
            if self.rate >= 1.0 or binding.is_async or binding.private:
                ctx.cursor = ctx._qc_real_cursor()
                ctx._dbapi_connection.info[BEGAN_KEY] = True
                ctx._qc_after = "verify"
                ctx._qc_check = check
                ctx._qc_key = key
                return True
            self._submit(binding, check)
        except Exception as exc:
            self.cache.failed("verify", exc)
        return False

    # -- checking on the caller's connection -----------------------------------------
    def finish(self, ctx: Any) -> None:
        """After the driver ran a sampled hit's statement: hand the database's
        rows to the caller, then compare them with the entry."""
        check: Check = ctx._qc_check
        ctx._qc_check = None
        cursor = ctx.cursor
        description = cursor.description
        if description is None:
            return
        if type(description) is not tuple or (description and type(description[0]) is not tuple):
            description = tuple(tuple(d) for d in description)
        try:
            rows = [tuple(r) for r in cursor.fetchall()]
            rowcount = cursor.rowcount
        except Exception as exc:  # the caller meets the database's error at its fetch
            ctx.cursor = ChainCursor(description, [], cursor, exc)
            return
        ctx.cursor = ReplayCursor(description, rows, rowcount)
        try:
            cursor.close()
        except Exception:
            pass
        try:
            self.judge(check, rows, description, ctx._qc.is_async)
        except Exception as exc:
            self.cache.failed("verify", exc)

    # -- checking in the background --------------------------------------------------
    def _submit(self, binding: EngineBinding, check: Check) -> None:
        with self.lock:
            if self._pending >= MAX_PENDING:
                self.skipped["verifier busy"] += 1
                return
            self._pending += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(2, thread_name_prefix="querycache-verify")
            executor = self._executor
        try:
            executor.submit(self._background, binding, check)
        except RuntimeError:  # shut down
            with self.lock:
                self._pending -= 1

    def _background(self, binding: EngineBinding, check: Check) -> None:
        try:
            ref = self._engines.get(id(binding))
            engine = ref() if ref is not None else None
            if engine is None or self.cache._closed:
                self.skipped["engine gone"] += 1
                return
            fairy = engine.raw_connection()
            try:
                if fairy.info.get(IDENT_KEY) != check.key[0]:
                    self.skipped["no connection with the same result identity"] += 1
                    return
                cursor = fairy.cursor()
                try:
                    cursor.execute(check.statement, check.params)
                    description = cursor.description
                    rows = [tuple(r) for r in cursor.fetchall()]
                finally:
                    cursor.close()
                fairy.rollback()
            finally:
                fairy.close()
            self.judge(check, rows, description, False)
        except Exception as exc:
            self.cache.failed("verify", exc)
        finally:
            with self.lock:
                self._pending -= 1

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no background check is queued or running (tests, soak)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pending == 0:
                return True
            time.sleep(0.005)
        return self._pending == 0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the verdict -------------------------------------------------------------------
    def judge(
        self, check: Check, fresh: list[tuple[Any, ...]], description: Any, aio: bool
    ) -> None:
        """Compare ``fresh`` rows with the entry; classify and act on a difference."""
        served = check.entry.rows
        if _same(served, fresh):
            self._count("matched")
            return
        if id(check.entry) not in self._flagged:  # else verify itself invalidated it
            deadline = time.monotonic() + self.settle
            delay = 0.0005
            while id(check.entry) not in self._flagged:
                if self._went_stale(check, aio):
                    self._count("concurrent_writes")  # a commit between hit and check
                    return
                if time.monotonic() >= deadline:
                    break
                io.sleep(delay, aio)
                delay = min(delay * 2, 0.02)
        self._mismatch(check, served, fresh, description)

    def _count(self, what: str) -> None:
        with self.lock:
            self.checked += 1
            setattr(self, what, getattr(self, what) + 1)
            for t in self.tallies:
                t.checked += 1
                setattr(t, what, getattr(t, what) + 1)

    def _went_stale(self, check: Check, aio: bool) -> bool:
        if check.tier == "redis":
            tier = self.cache.redis
            if tier is None or check.rkey is None:
                return True
            found = tier.lookup(check.rkey, check.vkeys, aio)
            if found is None:  # Redis failed: cannot tell, so not a mismatch
                return True
            entry = found[0]
            return entry is None or not _same(entry.rows, check.entry.rows)
        return any(cell.dead for cell in check.entry.cells)

    def _mismatch(self, check: Check, served: Any, fresh: Any, description: Any) -> None:
        qs = check.plan.stats
        diff = diff_summary(served, fresh, description)
        with self.lock:
            self.checked += 1
            self.mismatches += 1
            if len(self._flagged) >= 1024:
                self._flagged.clear()
            # hits of this entry already served count as mismatches too
            self._flagged[id(check.entry)] = check.entry
            d = self.details.get(qs.fingerprint_id)
            first = d is None
            if first:
                if len(self.details) >= _MAX_DETAILS:
                    self.details.pop(next(iter(self.details)))
                d = self.details[qs.fingerprint_id] = {
                    "fingerprint": qs.fingerprint,
                    "fingerprint_id": qs.fingerprint_id,
                    "tier": check.tier,
                    "count": 0,
                    "diff": diff,
                }
            d["count"] += 1
            d["diff"] = diff
            for t in self.tallies:
                t.checked += 1
                t.mismatches += 1
                if len(t.details) < 100:
                    t.details.append({**d, "test": t.where})
        if first:
            log.warning(
                "querycache verify: a cached result of %s differed from the database "
                "(%s); its tables' entries were invalidated",
                qs.fingerprint,
                diff,
            )
        tables = frozenset(check.plan.tables)
        if tables:
            self.cache.invalidate_scope(check.scope, tables)
        else:
            self.cache.invalidate_scope(check.scope, None)


def _canon(v: Any) -> Any:
    t = type(v)
    if t is float and v != v:
        return ("nan",)
    if t is memoryview:
        return bytes(v)
    if t is tuple or t is list:
        return tuple(_canon(x) for x in v)
    try:
        hash(v)
    except TypeError:
        return (t.__name__, repr(v))
    return v


def _same(a: list[Any], b: list[Any]) -> bool:
    """Whether two results hold the same rows (as multisets)."""
    if len(a) != len(b):
        return False
    try:
        if a == b:
            return True
    except Exception:
        pass
    return Counter(_canon(tuple(r)) for r in a) == Counter(_canon(tuple(r)) for r in b)


def diff_summary(served: list[Any], fresh: list[Any], description: Any) -> str:
    """What differs, without any value: row counts, rows only on one side and
    the columns that differ in the first differing row."""
    a = Counter(_canon(tuple(r)) for r in served)
    b = Counter(_canon(tuple(r)) for r in fresh)
    only_cache = sum((a - b).values())
    only_db = sum((b - a).values())
    text = (
        f"served {len(served)} rows, database {len(fresh)}; {only_cache} rows only in the "
        f"cache, {only_db} only in the database"
    )
    names = [d[0] for d in description] if description else []
    for i, (x, y) in enumerate(zip(served, fresh)):
        if _canon(tuple(x)) != _canon(tuple(y)):
            cols = [
                str(names[j]) if j < len(names) else str(j)
                for j, (u, v) in enumerate(zip(x, y))
                if _canon(u) != _canon(v)
            ]
            text += f"; row {i} differs in {', '.join(cols) or 'its width'}"
            break
    return text


def verify_report(cache: QueryCache) -> dict[str, Any]:
    """The report's ``verify`` section."""
    v: Verifier = cache.verifier
    return {
        "rate": v.rate,
        "sampled": v.sampled,
        "checked": v.checked,
        "matched": v.matched,
        "mismatches": v.mismatches,
        "concurrent_writes": v.concurrent_writes,
        "skipped": dict(v.skipped),
        "details": [dict(d) for d in v.details.values()],
    }


def verify_text(data: dict[str, Any] | None) -> list[str]:
    """Lines of ``to_text()`` for the ``verify`` section."""
    if not data or not data["rate"]:
        return []
    out = [
        "",
        f"  verify {data['rate']:.2%} of hits: checked {data['checked']}, "
        f"mismatches {data['mismatches']}, changed by a concurrent write "
        f"{data['concurrent_writes']}, skipped {sum(data['skipped'].values())}",
    ]
    for d in data["details"]:
        fp = d["fingerprint"].replace("\n", " ")[:70]
        out.append(f"  - mismatch x{d['count']} ({d['tier']}): {fp}: {d['diff']}")
    return out
