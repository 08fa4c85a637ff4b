"""The execution context that serves hits, runs misses and records writes.

:func:`wrap <querycache.integration.engine.attach>` gives each engine's
dialect a subclass of its own execution context class. SQLAlchemy calls, for
every statement:

``create_cursor()``
    For anything that may be a read, a placeholder: no real cursor yet.
``pre_exec()``
    The statement text and DBAPI parameters are final. A hit puts a
    :class:`~querycache.integration.cursor.ReplayCursor` in place of the
    cursor and the driver is never called. A miss opens the real cursor and
    remembers what to store. A write is recorded as pending on its
    connection.
``post_exec()``
    After the driver ran: a miss fetches the rows, stores them and replays
    them to SQLAlchemy; a write under autocommit is invalidated now; a
    ``COMMIT``/``ROLLBACK`` sent as text is followed.

Everything here runs in SQLAlchemy's synchronous code, also for async
engines (inside their greenlet), so sync and async share every line; the only
difference is how a follower waits (see :mod:`querycache.integration.io`).
"""

from __future__ import annotations

import sqlite3
import time
from itertools import islice
from typing import TYPE_CHECKING, Any

from querycache.analysis import ALL
from querycache.analysis.footprints import WriteSpec
from querycache.errors import OptionError
from querycache.integration.cursor import DEFERRED, ChainCursor, ReplayCursor, TeeCursor
from querycache.integration.drivers import BEGAN_KEY, in_transaction, transaction_ended
from querycache.integration.identity import IDENT_KEY
from querycache.integration.shared import release_lease
from querycache.invalidation.images import PendingKeys, bind_write
from querycache.invalidation.transactions import STATE_KEY, state_of
from querycache.keys import TRUSTED, Opaque, exact_params
from querycache.tiers.base import Entry, thaw
from querycache.tiers.sizing import measure, rows_size

if TYPE_CHECKING:
    from querycache.integration.engine import EngineBinding

__all__ = ["CachingContext"]

_perf = time.perf_counter


class Miss:
    """What ``post_exec`` needs to finish a miss."""

    __slots__ = (
        "capture",
        "flight",
        "key",
        "l2",
        "lease",
        "plan",
        "qs",
        "snapshot",
        "started",
        "store",
        "ttl",
    )

    def __init__(
        self,
        key: Any,
        plan: Any,
        qs: Any,
        snapshot: Any,
        flight: Any,
        store: bool,
        ttl: float,
        capture: Any = None,
    ) -> None:
        self.capture = capture
        self.l2: tuple[str, list[Any]] | None = None
        self.lease: str | None = None
        self.key = key
        self.plan = plan
        self.qs = qs
        self.snapshot = snapshot
        self.flight = flight
        self.store = store
        self.ttl = ttl
        self.started = _perf()


class CachingContext:
    """Mixin placed before the dialect's own execution context class."""

    _qc: EngineBinding
    _qc_miss: Miss | None = None
    _qc_after: str | None = None
    _qc_key: Any = None
    _qc_reason: str | None = None
    _qc_pre: Any = None
    _qc_check: Any = None  # a sampled hit verify runs on the database (verify.py)

    # -- create_cursor --------------------------------------------------
    def create_cursor(self) -> Any:
        if self.is_text or (  # type: ignore[attr-defined]
            self.compiled is not None  # type: ignore[attr-defined]
            and not (self.isinsert or self.isupdate or self.isdelete or self.isddl)  # type: ignore[attr-defined]
        ):
            return DEFERRED
        return super().create_cursor()  # type: ignore[misc]

    def _qc_real_cursor(self) -> Any:
        return super().create_cursor()  # type: ignore[misc]

    # -- pre_exec ---------------------------------------------------------
    def pre_exec(self) -> None:
        binding = self._qc
        key = None
        if self.cursor is DEFERRED:  # type: ignore[has-type]
            opts = self.execution_options  # type: ignore[attr-defined]
            try:
                info = self._dbapi_connection.info  # type: ignore[attr-defined]
            except NotImplementedError:
                # SQLAlchemy's first-connect probe: no pool record, no caching
                self.cursor = self._qc_real_cursor()
                return super().pre_exec()  # type: ignore[misc]
            if (
                binding.fast_ok
                and (not opts or binding.plain_options(opts))
                and STATE_KEY not in info
            ):
                # The hit path: no analysis, no logging, one dict lookup.
                try:
                    key = key_for(info.get(IDENT_KEY), self.statement, self.parameters[0])  # type: ignore[attr-defined]
                    entry = binding.memory.get(key) if key is not None else None
                except Exception as exc:
                    if not isinstance(exc, TypeError):  # TypeError: unhashable values
                        binding.core.failed("memory lookup", exc)
                    key = entry = None
                if entry is not None:
                    n = binding.verify_left - 1  # verify mode's countdown
                    binding.verify_left = n
                    if n <= 0 and binding.core.verifier.sample(self, entry, key):
                        next(entry.stats.memory_hit)
                        return super().pre_exec()  # type: ignore[misc]
                    self._qc_serve(entry)
                    self._qc_key = key
                    next(entry.stats.memory_hit)
                    return super().pre_exec()  # type: ignore[misc]
        try:
            binding.before(self, key)
        except OptionError:
            self._qc_abandon()
            raise
        except Exception as exc:  # the cache must never fail the query
            binding.core.failed("before execute", exc)
            self._qc_abandon()
        if self.cursor is DEFERRED:  # type: ignore[has-type]
            self.cursor = self._qc_real_cursor()
        if type(self.cursor) is not ReplayCursor:  # the driver runs this statement
            try:
                self._dbapi_connection.info[BEGAN_KEY] = True  # type: ignore[attr-defined]
            except NotImplementedError:
                pass
        super().pre_exec()  # type: ignore[misc]

    def _qc_serve(self, entry: Entry) -> None:
        rows = thaw(entry.rows) if entry.mutable else entry.rows
        self.cursor = ReplayCursor(entry.description, rows, entry.rowcount)
        # a streamed result stays "server side" (AsyncConnection.stream checks)
        self._is_server_side = bool(self.execution_options.get("stream_results"))
        if self._qc.is_async:
            self._qc.await_ready()

    def _qc_abandon(self) -> None:
        miss = self._qc_miss
        if miss is not None:
            self._qc_miss = None
            if miss.flight is not None:
                self._qc.core.flights.land(miss.key, miss.flight, None)
            if miss.lease is not None:
                try:
                    release_lease(self._qc, miss)
                except Exception as exc:
                    self._qc.core.failed("lease release", exc)

    # -- post_exec --------------------------------------------------------
    def post_exec(self) -> None:
        super().post_exec()  # type: ignore[misc]
        if self._qc_miss is not None:
            self._qc_finish_miss()
        if self._qc_after is not None:
            try:
                self._qc.after(self, self._qc_after)
                if self._qc_after in ("commit", "rollback"):  # sent as text
                    transaction_ended(self._dbapi_connection.info)  # type: ignore[attr-defined]
            except Exception as exc:
                self._qc.core.failed("after execute", exc)

    def _qc_finish_miss(self) -> None:
        miss = self._qc_miss
        assert miss is not None
        self._qc_miss = None
        cursor = self.cursor  # type: ignore[has-type]
        try:
            description = cursor.description
        except BaseException:
            self._qc_miss = miss
            self._qc_abandon()
            raise
        if description is None:  # not a row-returning statement after all
            self._qc_miss = miss
            self._qc_abandon()
            return
        if type(description) is not tuple or (description and type(description[0]) is not tuple):
            description = plain_description(miss.plan, miss.key[0], description)
        if self._is_server_side:
            self._qc_tee(miss, cursor, description)
            return
        limit = self._qc.memory.max_entry_bytes
        rows: list[Any] = []
        size = 0
        want = _FIRST_CHUNK
        try:
            while True:
                got = _fill(cursor, rows, want)
                if got < want:
                    break  # the whole result
                size += rows_size(rows[-got:], _CHUNK_SAMPLE)  # (measured again if stored)
                if size > limit:  # stream the rest: fetched ahead only this far
                    self.cursor = ChainCursor(description, _tuples(rows), cursor)
                    self._qc_unstored(miss, "larger than max_entry_bytes")
                    return
                want = min(_MAX_CHUNK, max(_FIRST_CHUNK, (limit - size) * len(rows) // size + 1))
            rowcount = cursor.rowcount
        except Exception as exc:
            # the rows before the failure reach the caller, then the failure
            # does, at the fetch where the driver's own cursor raises it
            if _fetch_can_resume(cursor):
                # psycopg converts rows as they are fetched and keeps its place
                # when one fails: the live cursor takes over after the rows read
                self.cursor = ChainCursor(description, _tuples(rows), cursor)
                self._qc_unstored(miss, "a row failed to load")
            else:
                self.cursor = ChainCursor(description, _tuples(rows), cursor, exc)
                self._qc_unstored(miss, "the database failed while reading")
            return
        except BaseException:
            self._qc_miss = miss
            self._qc_abandon()
            raise
        elapsed = _perf() - miss.started
        rows = _tuples(rows)
        self.cursor = ReplayCursor(description, rows, rowcount)
        try:
            cursor.close()
        except Exception:
            pass
        try:
            entry = self._qc.store(self, miss, description, rows, rowcount, elapsed)
            if entry.mutable:  # the caller may change its dicts; the entry keeps its own
                self.cursor = ReplayCursor(description, thaw(rows), rowcount)
        except Exception as exc:
            self._qc.core.failed("store", exc)
            if miss.flight is not None:
                self._qc.core.flights.land(miss.key, miss.flight, None)

    def _qc_unstored(self, miss: Miss, reason: str) -> None:
        """A miss whose result will not be stored: account, wake followers."""
        miss.qs.miss(None, reason)
        self._qc_miss = miss
        self._qc_abandon()

    def _qc_tee(self, miss: Miss, cursor: Any, description: Any) -> None:
        """A server-side cursor: every fetch goes to the driver when the caller
        makes it (rows computed lazily, errors where they happen); the rows
        are stored once the caller has read them all, if they fit."""
        if miss.flight is not None:  # followers run their own: this may take long
            self._qc.core.flights.land(miss.key, miss.flight, None)
            miss.flight = None
        binding = self._qc

        def done(rows: list[tuple[Any, ...]]) -> None:
            try:
                elapsed = _perf() - miss.started
                binding.store(self, miss, description, rows, cursor.rowcount, elapsed)
            except Exception as exc:
                binding.core.failed("store", exc)

        def dropped(reason: str) -> None:
            try:
                self._qc_unstored(miss, reason)
            except Exception as exc:
                binding.core.failed("store", exc)

        self.cursor = TeeCursor(cursor, description, binding.memory.max_entry_bytes, done, dropped)


_FIRST_CHUNK = 64
#: rows sized per fetched chunk, to stop buffering past ``max_entry_bytes``
_CHUNK_SAMPLE = 8
_MAX_CHUNK = 10_000


def _fill(cursor: Any, rows: list[Any], n: int) -> int:
    """Append up to ``n`` rows of ``cursor`` to ``rows``; return how many.

    On sqlite3 the rows are taken one by one in C (``list.extend`` keeps the
    ones it got when the next fails), so a failure mid-chunk leaves exactly
    the rows the driver returned before it; elsewhere ``fetchmany``."""
    before = len(rows)
    if type(cursor) is sqlite3.Cursor:
        rows.extend(islice(cursor, n))
        return len(rows) - before
    chunk = cursor.fetchmany(n)
    rows.extend(chunk)
    return len(chunk)


def _tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    if rows and type(rows[0]) is not tuple:
        return [tuple(r) for r in rows]
    return rows


def _fetch_can_resume(cursor: Any) -> bool:
    """Whether a failed ``fetchall()`` left ``cursor`` where it was (psycopg 3)."""
    return type(cursor).__module__.startswith("psycopg") and hasattr(cursor, "_pos")


def key_for(ident: int | None, statement: str, params: Any) -> Any:
    """The memory-tier key of one execution on a connection of result identity
    ``ident`` (``info[IDENT_KEY]``), or None when the connection was not
    observed or a parameter cannot be keyed exactly
    (:class:`~querycache.keys.Opaque`). On the hit path: plain dicts and
    tuples of :data:`~querycache.keys.TRUSTED` values cost two tuples."""
    if ident is None:
        return None
    t = type(params)
    if t is dict:
        types = tuple([type(v) for v in params.values()])
        if TRUSTED.issuperset(types):
            return (ident, statement, tuple(params.items()), types)
    elif t is tuple:
        types = tuple([type(v) for v in params])
        if TRUSTED.issuperset(types):
            return (ident, statement, params, types)
    try:
        return (ident, statement, exact_params(params))
    except Opaque:
        return None


def plain_description(plan: Any, ident: int, raw: Any) -> tuple[tuple[Any, ...], ...]:
    """``raw`` (a driver's description, e.g. psycopg's ``Column`` objects) as
    plain tuples; converted once per statement, engine and shape, then shared
    by every entry of that statement."""
    try:  # psycopg's Column: its attributes are much cheaper than d[0], d[1]
        signature = (ident, *[(d.name, d.type_code) for d in raw])
    except AttributeError:
        signature = (ident, *[(d[0], d[1]) for d in raw])
    known = plan.description
    if known is not None and known[0] == signature:
        return known[1]  # type: ignore[no-any-return]
    description = tuple(tuple(d) for d in raw)
    plan.description = (signature, description)
    return description


def record_write(info: dict[str, Any], tables: Any, imaged: bool = False) -> None:
    """Mark ``tables`` (or ``ALL``) pending on this connection. Unless the
    caller records their images (``imaged``), their rows are unknown."""
    state = state_of(info)
    if tables is ALL:
        state.everything = True
        return
    state.written.update(tables)
    if not imaged:
        for table in tables:
            state.images.setdefault(table, []).append(None)


def record_image(info: dict[str, Any], tables: Any, spec: Any, ctx: Any, kinds: Any = None) -> Any:
    """Add what this write is known to touch to the connection's pending images;
    returns where its own table's image went (a pre-image may replace it).

    A table written without an image (no spec, or another table's) is
    remembered as unknown: any of its rows may have changed.
    """
    images = state_of(info).images
    part: Any = None
    if isinstance(spec, WriteSpec):
        part = bind_write(spec, ctx.parameters, kinds)
        if part is not None and spec.kind == "insert":
            keys = _generated_keys(ctx, part)
            if keys:
                part = PendingKeys(part, ctx, keys)
    where = None
    for table in tables:
        mine = part if spec is not None and spec.table == table else None
        parts = images.setdefault(table, [])
        if mine is not None:
            where = (parts, len(parts))
        parts.append(mine)
    return where


def _generated_keys(ctx: Any, image: Any) -> tuple[str, ...]:
    """Primary-key columns of a compiled ``INSERT`` that its values do not give."""
    compiled = ctx.compiled
    table = getattr(getattr(compiled, "statement", None), "table", None)
    pk = getattr(table, "primary_key", None)
    if compiled is None or pk is None:
        return ()
    fold = ctx.dialect.name != "postgresql"
    names = tuple(c.name.lower() if fold else c.name for c in pk.columns)
    return names if any(n not in image.values for n in names) else ()


def committed_now(fairy: Any, options: Any, default_isolation: str | None) -> bool:
    """After a write: did the driver commit it already (autocommit)?"""
    flag = in_transaction(fairy)
    if flag is not None:
        return not flag
    return options.get("isolation_level", default_isolation) == "AUTOCOMMIT"


def make_context_class(base: type, binding: EngineBinding) -> type:
    """A subclass of the dialect's execution context bound to ``binding``."""
    return type(f"QueryCache{base.__name__}", (CachingContext, base), {"_qc": binding})


def entry_for(description: Any, rows: list[tuple[Any, ...]], rowcount: int) -> Entry:
    """A new :class:`Entry` with its size measured."""
    size, mutable = measure(rows)
    entry = Entry(description, rows, rowcount, size + 64 * len(description) + 200)
    entry.mutable = mutable
    return entry
