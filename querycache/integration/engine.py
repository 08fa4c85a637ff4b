"""Attaching a cache to an engine, and the per-engine read and write paths.

:func:`attach` changes three things on the engine's own dialect instance
(never the dialect class, so other engines are untouched):

* ``execution_ctx_cls`` becomes a subclass that consults the cache
  (:mod:`querycache.integration.context`);
* ``do_commit`` applies the connection's pending invalidations *after* the
  database committed; ``do_rollback`` drops them;
* pool ``invalidate`` events apply them too: a transaction whose outcome is
  unknown is treated as committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from querycache.analysis import ALL
from querycache.analysis.clock import params_read_clock
from querycache.errors import OptionError
from querycache.integration import io
from querycache.integration.connection import make_connection_class
from querycache.integration.context import (
    Miss,
    entry_for,
    key_for,
    make_context_class,
)
from querycache.integration.drivers import (
    called_from_outside,
    foreign_transaction,
    in_transaction,
    mark_raw,
    transaction_ended,
)
from querycache.integration.identity import IDENT_KEY, SCOPE_KEY, ConnectionIdentities
from querycache.integration.orm import CAPTURE_OPTION
from querycache.integration.shared import lookup_shared, release_lease, store_shared
from querycache.integration.txhooks import (
    attach_twophase,
    checked_in,
    clear_failed,
    guarded,
    info_of,
    mark_failed,
)
from querycache.integration.writes import WritePath
from querycache.invalidation.transactions import STATE_KEY, state_of
from querycache.keys import connection_settings, private_memory, result_identity, scope_of
from querycache.refresh import REFRESH_OPTION
from querycache.staleness import MAX_STALE_OPTION, check_option
from querycache.tiers.base import Entry

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["EngineBinding", "attach"]

log = logging.getLogger("querycache")

SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
_OPTIONS = {"querycache", "querycache_ttl", "querycache_admission", MAX_STALE_OPTION}


class EngineBinding(WritePath):
    """One engine as the cache sees it: identity, scope, dialect, sync or async.

    ``ident`` is the interned result identity all its observed connections
    share, 0 when none was observed yet or they differ; keys use each
    connection's own (``info[IDENT_KEY]``, see :mod:`.identity`).
    """

    #: hits until verify mode samples one (:mod:`querycache.verify`)
    verify_left = 1 << 62

    def __init__(self, core: QueryCache, engine: Engine) -> None:
        url = engine.url
        self.core = core
        self.memory = core.memory
        self.analyzer = core.analyzer
        self.engine_ref = id(engine)
        self.ident = 0
        self.identity = self.identity_of(engine)
        self.scope = scope_of(url, id(engine))
        #: each DBAPI connection is its own database (``sqlite://``): its own scope
        self.private = private_memory(url)
        self.scopes = {self.scope}
        dialect = engine.dialect
        self.dialect_name = dialect.name
        self.is_async = bool(getattr(dialect, "is_async", False))
        self.default_isolation: str | None = getattr(dialect, "_on_connect_isolation_level", None)
        # SQLite: only PostgreSQL has per-transaction snapshots to worry about
        # here; SQLite's explicit transactions are found by asking the driver.
        self.check_isolation = dialect.name == "postgresql"
        self.await_ready = io.await_ready
        self.catalog_pending = False
        #: a new engine: its first catalog read may reuse its scope's (QueryCache.discover)
        self.catalog_reusable = False
        # False until the first full execution has seen the engine's default
        # isolation level (read by SQLAlchemy at first connect): snapshot
        # isolation by default turns every fast path off
        self.fast_ok = False
        self.dialect = dialect
        self.aliases: dict[Any, Any] = {}
        self.context_class: Any = None
        self.connections = ConnectionIdentities(self, engine, self.private)

    @staticmethod
    def identity_of(engine: Engine) -> str:
        """The base result identity of ``engine``'s connections: URL and
        ``connect_args`` (see :mod:`querycache.keys`); each connection adds
        what it was observed to be."""
        return result_identity(engine.url, id(engine), connection_settings(engine))

    def scope_for(self, info: Mapping[str, Any]) -> str:
        """The invalidation scope of the connection whose ``info`` this is."""
        return info.get(SCOPE_KEY, self.scope) if self.private else self.scope

    def redis_identity(self, key: Any) -> str:
        """The identity string behind a memory key's ident (the Redis key uses it)."""
        return self.core.idents.identity[key[0]]

    # -- options ------------------------------------------------------------
    def plain_options(self, opts: Mapping[str, Any]) -> bool:
        """True when ``opts`` need nothing but the hit path.

        Options of ours, an isolation level or an ORM capture send the
        execution to :meth:`before`, which validates and applies them.
        """
        for name in opts:  # (the ORM's subqueryload names an option with a tuple)
            if type(name) is str and name.startswith(
                ("querycache", "_querycache", "isolation_level")
            ):
                return False
        return True

    def isolation_of(self, opts: Mapping[str, Any]) -> str | None:
        """The isolation level a statement runs at, as far as SQLAlchemy knows
        (the connection's option, the engine's, or the server default read at
        first connect)."""
        level = opts.get("isolation_level") or self.default_isolation
        if level is None:
            level = getattr(self.dialect, "default_isolation_level", None)
        return level.upper() if isinstance(level, str) else None

    def check_options(self, opts: Mapping[str, Any]) -> None:
        for name in opts:
            if type(name) is str and name.startswith("querycache") and name not in _OPTIONS:
                raise OptionError(
                    f"unknown execution option {name!r}; querycache knows "
                    f"'querycache' (bool), 'querycache_ttl' (seconds > 0), "
                    f"'querycache_admission' ('always' or 'adaptive') and "
                    f"'querycache_max_stale' (seconds >= 0)"
                )
        flag = opts.get("querycache", True)
        if not isinstance(flag, bool):
            raise OptionError(f"execution option 'querycache' must be True or False, not {flag!r}")
        admission = opts.get("querycache_admission")
        if admission is not None and admission not in ("always", "adaptive"):
            raise OptionError(
                "execution option 'querycache_admission' must be 'always' or 'adaptive', "
                f"not {admission!r}"
            )
        if opts.get(MAX_STALE_OPTION) is not None:
            check_option(opts[MAX_STALE_OPTION])
        ttl = opts.get("querycache_ttl")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0
        ):
            raise OptionError(
                f"execution option 'querycache_ttl' must be a number of seconds > 0, not {ttl!r}"
            )

    # -- before the driver runs ---------------------------------------------
    def before(self, ctx: Any, key: Any) -> None:
        """Everything but the plain hit: analysis, bypasses, misses, writes."""
        opts = ctx.execution_options
        if opts:
            self.check_options(opts)
        core = self.core
        if not self.fast_ok:
            self.fast_ok = not (self.check_isolation and self.isolation_of({}) in SNAPSHOT_LEVELS)
            if core.write_pending:  # after the store: see querycache.queues.pending
                self.fast_ok = False
        info = ctx._dbapi_connection.info
        scope = self.scope_for(info)
        plan = core.plan(ctx.statement, self.dialect_name)
        analysis = plan.analysis
        # DDL and reads of the system catalog do not consult it: it is read
        # when the first statement that needs it arrives (one read per
        # create_all, not one per CREATE TABLE and one at wrap())
        needs_catalog = analysis.kind == "write" or (
            analysis.kind == "read" and not (analysis.reason or "").startswith("system catalog")
        )
        if needs_catalog and (
            self.catalog_pending
            or (self.private and scope not in core.catalogs and core.settings.discover_views)
        ):
            core.discover(self, ctx._dbapi_connection)
            plan = core.plan(ctx.statement, self.dialect_name)
            analysis = plan.analysis
        catalog = core.catalogs.get(scope)
        if needs_catalog and catalog is not None and plan.checked is not catalog:
            if catalog.has_news(_relations(analysis)):
                core.discover(self, ctx._dbapi_connection)  # created behind our back
                plan = core.plan(ctx.statement, self.dialect_name)
                analysis = plan.analysis
            else:
                plan.checked = catalog  # a catalog's known names only grow
        if analysis.kind != "read" or ctx.executemany:
            self._before_other(ctx, plan, info)
            return
        if core.write_pending:  # write-behind entries pending: read your writes
            state = info.get(STATE_KEY)
            core.write_pending.before_read(
                analysis.tables_read, state is not None and state.has_writes, self.is_async
            )
        qs = plan.stats
        capture = opts.get(CAPTURE_OPTION)
        if capture is not None:
            capture.executions += 1
            capture.ctx = ctx
        if not analysis.cacheable:
            qs.bypass(analysis.reason or "not cacheable")
            if analysis.session_state:
                state_of(info).tainted = True
            # any uncacheable read may also call a writing function
            ctx._qc_reason = analysis.reason
            self._functions_may_write(ctx, info)
            return
        if opts.get("querycache", True) is False:
            qs.bypass("disabled by execution option")
            return
        if (
            self.check_isolation
            and (not self.fast_ok or "isolation_level" in opts)
            and self.isolation_of(opts) in SNAPSHOT_LEVELS
        ):
            qs.bypass("snapshot isolation")
            return
        state = info.get(STATE_KEY)
        if state is not None:
            reason = state.blocks_read_of(analysis.tables_read)
            if reason is not None:
                qs.bypass(reason)
                return
        if key is None:  # else the hit path looked it up a moment ago
            ident = info.get(IDENT_KEY)
            if ident is None:
                qs.bypass("connection settings not observed")
                return
            key = key_for(ident, ctx.statement, ctx.parameters[0])
            if key is None:
                qs.bypass("parameter of a type without an exact key")
                return
            entry = self.memory.get(key)
        else:
            entry = None
        if entry is not None:
            if not (core.verifier.due(self) and core.verifier.sample(ctx, entry, key)):
                self._serve_memory(ctx, entry, key, plan, scope, capture)
            return
        if core.refresher.stale.held and core.refresher.serve_stale(ctx, key, plan, capture):
            return  # invalidated, but this statement opted into bounded staleness
        # a parameter such as 'now' makes the database read its clock: never
        # stored, so never hit (checked here, on the miss path only)
        if params_read_clock(ctx.parameters[0], self.dialect_name) is not None:
            qs.bypass("parameter reads the clock ('now', 'today'...)")
            return
        admission = plan.admission
        if (
            admission is not None
            and not admission.admits()
            and opts.get("querycache_admission") != "always"
        ):
            qs.bypass("not admitted: its entries did not pay for their stores")
            return
        # a transaction that wrote anything never stores what it reads; nor
        # does a SQLite transaction opened explicitly (its snapshot may be old)
        store = state is None or not state.has_writes
        if store and self.dialect_name == "sqlite" and in_transaction(ctx._dbapi_connection):
            store = False
        if store and self.check_isolation and foreign_transaction(ctx._dbapi_connection):
            store = False  # a transaction begun behind SQLAlchemy's back (raw DBAPI use)
        snapshot = self.capture(plan, ctx.parameters[0], scope)
        ttl = opts.get("querycache_ttl") or core.ttl
        miss = Miss(key, plan, qs, snapshot, None, store, ttl, capture)
        if store:
            flight, leader = core.flights.join(key, snapshot)
            if leader:
                # the lookup above ran before the catalog wait and the
                # analysis: a leader that landed since has stored the result
                entry = self.memory.get(key)
                if entry is not None:
                    core.flights.land(key, flight, entry)
                    self._serve_memory(ctx, entry, key, plan, scope, capture)
                    return
                miss.flight = flight
            else:
                done = io.wait(flight, core.lock_timeout, self.is_async)
                if done and flight.entry is not None and flight.snapshot == snapshot:
                    ctx._qc_serve(flight.entry)
                    qs.coalesce()
                    if capture is not None:
                        capture.entry, capture.storable = flight.entry, True
                        capture.snapshot = snapshot
                    return
                # waited long enough, or the result is not for us: run our own
        shared = lookup_shared(self, ctx, miss)
        if shared is not None:
            if core.verifier.due(self) and core.verifier.sample(ctx, shared, key, "redis"):
                qs.redis_hits += 1
                if miss.flight is not None:
                    core.flights.land(key, miss.flight, None)
                return
            self._serve_shared(ctx, miss, shared)
            return
        ctx._qc_miss = miss
        ctx.cursor = ctx._qc_real_cursor()
        miss.started = time.perf_counter()  # database time only, not Redis

    def _serve_memory(
        self, ctx: Any, entry: Entry, key: Any, plan: Any, scope: str, capture: Any
    ) -> None:
        """A memory-tier hit found on the slow path (not the plain hit)."""
        plan.stats.memory_hit_slow()
        ctx._qc_serve(entry)
        ctx._qc_key = key
        if capture is not None:
            capture.entry, capture.storable = entry, True
            capture.snapshot = self.capture(plan, ctx.parameters[0], scope)

    def capture(self, plan: Any, params: Any, scope: str) -> tuple[Any, ...]:
        """The validity cells a result of ``plan`` with ``params`` depends on in
        ``scope``, captured before the query runs (:mod:`querycache.invalidation.cells`)."""
        return self.memory.cells.capture(scope, plan.tables, plan.footprint, params, plan.stats)

    def _serve_shared(self, ctx: Any, miss: Miss, entry: Entry) -> None:
        """A Redis hit: fill the memory tier, serve, wake this process's followers."""
        qs = miss.qs
        entry.stats = qs
        if self.core.refresher.active or ctx.execution_options:
            self.core.refresher.prepare(ctx, miss, entry)
        if miss.store and entry.size <= self.memory.max_entry_bytes:
            ttl = miss.ttl
            if entry.expires:
                ttl = min(ttl, entry.expires - time.time())
            scope = self.scope_for(ctx._dbapi_connection.info)
            if ttl > 0 and self.memory.put(
                miss.key, entry, scope, miss.plan.tables, miss.snapshot, ttl
            ):
                ctx._qc_key = miss.key
        ctx._qc_serve(entry)
        qs.redis_hit()
        if miss.flight is not None:
            self.core.flights.land(miss.key, miss.flight, entry)
        if miss.capture is not None:
            miss.capture.entry, miss.capture.storable = entry, miss.store
            miss.capture.snapshot = miss.snapshot

    def store(
        self,
        ctx: Any,
        miss: Miss,
        description: Any,
        rows: list[Any],
        rowcount: int,
        elapsed: float,
    ) -> Entry:
        """Account for a miss and store its result when that is safe."""
        t0 = time.perf_counter()
        qs = miss.qs
        opts = ctx.execution_options
        if REFRESH_OPTION not in opts:  # a refresh is counted in the report's "refresh"
            qs.miss(elapsed)
        entry = entry_for(description, rows, rowcount)
        entry.stats = qs
        if self.core.refresher.active or opts:
            self.core.refresher.prepare(ctx, miss, entry)
        stored = False
        if not miss.store:
            qs.unstored("read inside a transaction")
        elif entry.size > self.memory.max_entry_bytes:
            qs.unstored("larger than max_entry_bytes")
        else:
            scope, snapshot = self.scope_for(ctx._dbapi_connection.info), miss.snapshot
            footprint = miss.plan.footprint
            if getattr(footprint, "page", None) is not None:  # a LIMIT page: its bound
                cells = self.memory.cells
                snapshot = cells.refine_page(scope, snapshot, footprint, ctx.parameters[0], rows)
            stored = self.memory.put(miss.key, entry, scope, miss.plan.tables, snapshot, miss.ttl)
            if stored:
                qs.stored()
                ctx._qc_key = miss.key
                if miss.plan.admission is not None:
                    miss.plan.admission.stored(time.perf_counter() - t0)
            else:
                qs.unstored("invalidated while reading")
        if miss.flight is not None:
            self.core.flights.land(miss.key, miss.flight, entry)
        if miss.l2 is not None:
            if miss.store and entry.size <= self.memory.max_entry_bytes:
                store_shared(self, miss, entry)
            else:
                release_lease(self, miss)
        capture = miss.capture
        if capture is not None:
            capture.entry, capture.storable, capture.snapshot = entry, miss.store, miss.snapshot
        return entry


def attach(core: QueryCache, engine: Engine) -> EngineBinding:
    """Install the cache on ``engine`` (a sync :class:`Engine`)."""
    binding = EngineBinding(core, engine)
    dialect = engine.dialect
    dialect.execution_ctx_cls = make_context_class(dialect.execution_ctx_cls, binding)
    binding.context_class = dialect.execution_ctx_cls
    engine._connection_cls = make_connection_class(engine._connection_cls, binding)

    original_commit = dialect.do_commit
    original_rollback = dialect.do_rollback
    original_to_savepoint = dialect.do_rollback_to_savepoint
    original_release = dialect.do_release_savepoint
    pg = dialect.name == "postgresql"

    def do_commit(dbapi_connection: Any) -> None:
        try:
            original_commit(dbapi_connection)
        finally:
            # also when commit raised: it may have committed before failing
            guarded(core, "commit", binding.apply_pending, dbapi_connection)
            guarded(core, "commit", transaction_ended, info_of(dbapi_connection))

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            original_rollback(dbapi_connection)
        finally:
            guarded(core, "rollback", binding.drop_pending, dbapi_connection)
            guarded(core, "rollback", transaction_ended, info_of(dbapi_connection))

    def do_rollback_to_savepoint(connection: Any, name: str) -> None:
        original_to_savepoint(connection, name)
        # a PostgreSQL transaction that failed after the savepoint works again
        guarded(core, "rollback", clear_failed, connection._dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    def do_release_savepoint(connection: Any, name: str) -> None:
        original_release(connection, name)
        # SQLite: a SAVEPOINT outside BEGIN opened the transaction, and its
        # RELEASE committed it (pysqlite sends no BEGIN): that is a commit
        fairy = connection._dbapi_connection
        if fairy is not None and in_transaction(fairy) is False:
            guarded(core, "commit", binding.apply_pending, fairy)
            guarded(core, "commit", transaction_ended, info_of(fairy))

    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]
    dialect.do_release_savepoint = do_release_savepoint  # type: ignore[method-assign]
    attach_twophase(core, binding, dialect)

    @event.listens_for(engine, "handle_error")
    def _on_error(exc_ctx: Any) -> None:
        ctx = exc_ctx.execution_context
        if ctx is not None and getattr(ctx, "_qc_miss", None) is not None:
            ctx._qc_abandon()
        if pg and not exc_ctx.is_disconnect:
            # also for an error raised while the caller fetched rows
            conn = ctx if ctx is not None else exc_ctx.connection
            fairy = getattr(conn, "_dbapi_connection", None)
            guarded(core, "error", mark_failed, fairy)

    @event.listens_for(engine.pool, "invalidate")
    def _on_invalidate(dbapi_conn: Any, record: Any, exception: Any) -> None:
        state = record.info.get(STATE_KEY) if record is not None else None
        if state is not None and state.has_writes:
            guarded(core, "invalidate", binding.apply_pending, _RecordView(record))

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            guarded(core, "checkin", checked_in, record.info)

    original_raw = engine.raw_connection

    def raw_connection() -> Any:
        fairy = original_raw()
        if called_from_outside(2):  # handed to user code, not to a Connection
            guarded(core, "raw connection", mark_raw, fairy)
        return fairy

    engine.raw_connection = raw_connection  # type: ignore[method-assign]
    return binding


def _relations(analysis: Any) -> frozenset[str]:
    written = analysis.tables_written
    if written is ALL or not written:
        return analysis.tables_read  # type: ignore[no-any-return]
    return analysis.tables_read | written  # type: ignore[no-any-return]


class _RecordView:
    """Gives a pool record the ``info`` attribute a connection fairy has."""

    __slots__ = ("info",)

    def __init__(self, record: Any) -> None:
        self.info = record.info
