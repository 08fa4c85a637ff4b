"""The front object: :class:`QueryCache`.

One cache holds the tiers, the version bookkeeping, the statistics and the
settings; engines are attached to it with :meth:`QueryCache.wrap`. From
``session.execute()`` a query reaches the cache in the engine's execution
context (:mod:`querycache.integration.context`), which looks it up in
:class:`~querycache.tiers.memory.MemoryTier` and, on a miss, runs it and
stores the rows.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import orm
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from querycache.admission import AdmissionPolicy
from querycache.analysis import Analysis, Analyzer
from querycache.integration.catalog import Catalog, read_catalog
from querycache.integration.drivers import in_transaction, note_began
from querycache.integration.engine import EngineBinding, attach
from querycache.integration.fingerprint import unchanged
from querycache.integration.identity import Idents
from querycache.integration.orm import OrmFastPath
from querycache.invalidation import local
from querycache.invalidation.bus import InvalidationBus
from querycache.invalidation.cells import CellRegistry
from querycache.invalidation.lease import ChannelLease, check_bound
from querycache.queues.pending import PendingWrites
from querycache.refresh import Refresher
from querycache.reports import Report, build_report
from querycache.reports.fleet import Publisher, start_publisher
from querycache.settings import Settings, number
from querycache.singleflight import Flights
from querycache.staleness import check_max_stale
from querycache.stats import QueryStats, Stats
from querycache.tiers.codec import Codec
from querycache.tiers.connections import RedisClients
from querycache.tiers.memory import MemoryTier
from querycache.tiers.redis import RedisTier
from querycache.verify import Verifier, check_rate

__all__ = ["Plan", "QueryCache"]

log = logging.getLogger("querycache")

_MAX_PLANS = 20_000


class Plan:
    """Everything derived once per distinct SQL string."""

    __slots__ = (
        "admission",
        "analysis",
        "checked",
        "description",
        "footprint",
        "stats",
        "tables",
    )

    def __init__(
        self, analysis: Analysis, stats: QueryStats, footprint: Any = None, admission: Any = None
    ) -> None:
        #: :class:`~querycache.admission.Admission` (None: always store)
        self.admission = admission
        self.analysis = analysis
        self.tables: tuple[str, ...] = tuple(sorted(analysis.tables_read))
        self.stats = stats
        #: :class:`~querycache.analysis.footprints.ReadFootprint` of a cacheable
        #: read, :class:`~querycache.analysis.footprints.WriteSpec` of a write
        self.footprint = footprint
        #: ``(signature, description)`` of the last result, shared by entries
        self.description: tuple[Any, Any] | None = None
        #: the catalog this statement's relations were last found in
        self.checked: Any = None


class QueryCache:
    """A read-through cache for SQLAlchemy engines.

    ::

        cache = QueryCache(ttl=300, memory_bytes=64 * 2**20, namespace="app")
        engine = cache.wrap(create_engine(url))
        Session = cache.sessionmaker(bind=engine, expire_on_commit=False)

    Every cacheable read through a wrapped engine is served from memory while
    its entry is valid; every committed write invalidates the entries that
    read the tables it wrote. See ``docs/architecture.md``.

    :param ttl: seconds an entry lives at most (per statement:
        ``execution_options(querycache_ttl=...)``).
    :param memory_bytes: byte budget of the memory tier.
    :param max_entry_bytes: results larger than this are not cached
        (default: 1/8 of ``memory_bytes``).
    :param namespace: isolates caches that share a store.
    :param lock_timeout: how long concurrent misses of one key wait for the
        first one's result before running their own query.
    :param volatile_functions: extra SQL function names whose results must
        never be cached.
    :param immutable_functions: functions you declare deterministic and
        side-effect free (makes queries using them cacheable).
    :param never_cache_tables: tables whose reads are never cached.
    :param view_dependencies: view name → base tables it reads, so that
        writes to the base tables invalidate readers of the view.
    :param redis_url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL of the
        shared tier; without it (and without ``redis``) the cache is memory only.
    :param redis: a ready ``redis.Redis``, ``redis.asyncio.Redis`` or
        ``RedisCluster`` client, used as a recipe for querycache's own clients.
    :param signing_key: authenticate Redis values with HMAC-SHA256.
    :param redis_timeout: seconds any Redis call may take before the cache
        carries on without Redis.
    :param lease_timeout: how long a process waits for another process that
        is fetching the same missing entry.
    :param compress_threshold: Redis values larger than this are compressed.
    :param hash_params: Redis keys are digests (default); ``False`` appends the
        fingerprint id and parameter values in clear, for debugging.
    :param discover_views: read hidden dependencies from each database's
        catalog when an engine is wrapped (and after DDL): views, foreign-key
        cascades, triggers, functions that write (PostgreSQL and SQLite).
    :param invalidation: ``"precise"`` (default): a write drops only the
        entries whose rows it may have touched (see ``querycache.analyze()``'s
        ``footprint``); ``"table"``: every entry that read a written table.
    :param admission: ``"adaptive"`` (default): a statement whose entries are
        dropped before they pay for their stores stops being stored for a
        while (see :mod:`querycache.admission`; per statement
        ``execution_options(querycache_admission="always")``); ``"always"``:
        store every cacheable result.
    :param refresh_on_write: after a commit, re-execute (in the background, on
        a connection of its own) the N entries it invalidated that had the
        most hits, so that the next reader hits (:mod:`querycache.refresh`).
    :param refresh_budget: seconds ``commit()`` waits for those refreshes at
        most; the rest finish in the background.
    :param max_stale: table names or fingerprint ids → seconds an invalidated
        entry of theirs may still be served while one refresh runs (per
        statement: ``execution_options(querycache_max_stale=...)``; see
        :mod:`querycache.staleness`). Never stale without it.
    :param publish_stats: with Redis, seconds between publishing this process's
        report for ``querycache report --redis`` and ``querycache top``
        (``None``: never); see :mod:`querycache.reports.fleet`.
    :param staleness_bound: seconds (default 0.1): the longest time after
        another process's commit during which this process may still serve a
        memory-tier entry the commit invalidated, under any Redis fault (see
        :mod:`querycache.invalidation.lease`; only caches with Redis have a lease).
    :param verify: the fraction of hits re-executed against the database and
        compared with what was served (``0``: off; ``1.0``: every hit, and the
        caller gets the database's result); see :mod:`querycache.verify`.
    """

    def __init__(
        self,
        ttl: float = 300,
        memory_bytes: int = 64 * 2**20,
        namespace: str = "default",
        *,
        max_entry_bytes: int | None = None,
        lock_timeout: float = 30.0,
        volatile_functions: Iterable[str] = (),
        immutable_functions: Iterable[str] = (),
        never_cache_tables: Iterable[str] = (),
        view_dependencies: Mapping[str, Iterable[str]] | None = None,
        discover_views: bool = True,
        redis_url: str | None = None,
        redis: Any = None,
        signing_key: bytes | str | None = None,
        redis_timeout: float = 0.05,
        lease_timeout: float = 2.0,
        compress_threshold: int = 2048,
        hash_params: bool = True,
        invalidation: str = "precise",
        admission: str = "adaptive",
        refresh_on_write: int = 0,
        refresh_budget: float = 0.005,
        max_stale: Mapping[str, float] | None = None,
        publish_stats: float | None = 10.0,
        staleness_bound: float = 0.1,
        verify: float = 0.0,
    ) -> None:
        check_rate(verify)
        self.settings = Settings.build(
            ttl=ttl,
            memory_bytes=memory_bytes,
            max_entry_bytes=max_entry_bytes,
            namespace=namespace,
            lock_timeout=lock_timeout,
            discover_views=discover_views,
        )
        self.ttl = self.settings.ttl
        self.lock_timeout = self.settings.lock_timeout
        self.namespace = self.settings.namespace
        self.analyzer = Analyzer(
            volatile_functions=volatile_functions,
            immutable_functions=immutable_functions,
            never_cache_tables=never_cache_tables,
            view_dependencies=dict(view_dependencies or {}),
        )
        self._views: dict[str, set[str]] = {
            k.lower(): {t.lower() for t in v} for k, v in (view_dependencies or {}).items()
        }
        if not isinstance(invalidation, str):
            raise TypeError(f"invalidation must be 'precise' or 'table', got {invalidation!r}")
        if invalidation not in ("precise", "table"):
            raise ValueError(f"invalidation must be 'precise' or 'table', got {invalidation!r}")
        self.invalidation = invalidation
        self.admission = AdmissionPolicy(admission)
        self.cells = CellRegistry(precise=invalidation == "precise")
        self.memory = MemoryTier(
            self.settings.memory_bytes, self.settings.max_entry_bytes, self.cells
        )
        self.flights = Flights()
        self.stats = Stats()
        number("refresh_on_write", refresh_on_write, allow_zero=True, integer=True)
        number("refresh_budget", refresh_budget, allow_zero=True)
        self.refresher = Refresher(
            self, refresh_on_write, float(refresh_budget), check_max_stale(max_stale)
        )
        self._plans: dict[tuple[str, str], Plan] = {}
        self._lock = threading.RLock()
        self._bindings: dict[int, EngineBinding] = {}
        self.idents = Idents()
        self._logged: set[tuple[str, type]] = set()
        self._closed = False
        self._orm = OrmFastPath(self)
        self._scope_ids: dict[str, str] = {}
        self.catalogs: dict[str, Catalog] = {}
        # per scope: a fresh value at each DDL committed through a wrapped
        # engine that only a read can follow (values are never reused, so no
        # lock); a catalog read before the last one is never reused
        self._ddl_epochs: dict[str, int] = {}
        self._epoch_values = itertools.count(1)
        self.redis: RedisTier | None = None
        self.bus: InvalidationBus | None = None
        # write-behind (querycache.queues): open queues, read-your-writes tables
        self.write_behinds: list[Any] = []
        self.write_pending = PendingWrites()
        # the Redis settings are checked with or without Redis: a mistake
        # should not wait for the day a URL is added
        number("redis_timeout", redis_timeout)
        number("lease_timeout", lease_timeout, allow_zero=True)
        if not isinstance(hash_params, bool):
            raise TypeError(f"hash_params must be True or False, got {hash_params!r}")
        codec = Codec(signing_key=signing_key, compress_threshold=compress_threshold)
        self.lease_timeout = float(lease_timeout)
        self.staleness_bound = check_bound(staleness_bound)
        #: the memory tier's lease on the invalidation channel (with Redis)
        self.lease: ChannelLease | None = None
        if redis_url is not None or redis is not None:
            clients = RedisClients(url=redis_url, client=redis, timeout=float(redis_timeout))
            self.redis = RedisTier(clients, self.namespace, codec, self.stats, hash_params)
            # until the bus is subscribed, invalidations from other processes
            # could be missed: the memory tier starts suspended
            self.memory.suspend()
            self.lease = ChannelLease(
                self.memory, self.redis, self.stats, self.staleness_bound, float(redis_timeout)
            )
            self.bus = InvalidationBus(
                self.redis,
                self._remote_invalidation,
                self._bus_down,
                self._bus_up,
                self.lease,
            )
            self.bus.start()
        self.publisher: Publisher | None = start_publisher(self, publish_stats)
        self.verifier = Verifier(self, verify)

    # -- attaching ------------------------------------------------------------
    def wrap(self, engine: Engine | AsyncEngine) -> Any:
        """Attach the cache to ``engine`` (sync or async) and return it.

        Wrapping an engine twice is harmless; wrapping one that another cache
        already wraps is an error.
        """
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        if not isinstance(sync, Engine):
            raise TypeError(
                f"wrap() expects a sqlalchemy Engine or AsyncEngine, got {type(engine).__name__}"
            )
        with self._lock:
            if id(sync.dialect) in self._bindings:
                return engine
            owner = getattr(sync.dialect.execution_ctx_cls, "_qc", None)
            if owner is not None:
                raise ValueError("this engine is already wrapped by another QueryCache")
            binding = attach(self, sync)
            self.verifier.attach(binding, sync)
            if not binding.private:
                local.register(self, binding.scope)
            # read on the first statement that needs it (not here: an engine
            # that only runs DDL, or is never used, costs no catalog queries;
            # async engines can only do I/O inside their event loop anyway)
            binding.catalog_pending = self.settings.discover_views
            binding.catalog_reusable = True  # its first catalog use may reuse the scope's
            self._bindings[id(sync.dialect)] = binding
            if self.redis is not None:
                self._scope_ids[self.redis.scope_id(binding.scope)] = binding.scope
        return engine

    def sessionmaker(self, bind: Any = None, **kw: Any) -> orm.sessionmaker[orm.Session]:
        """A drop-in for :class:`sqlalchemy.orm.sessionmaker` (wraps ``bind``)."""
        if bind is not None:
            self.wrap(_engine_of(bind))
        maker = orm.sessionmaker(bind=bind, **kw)
        self._orm.install(maker)
        return maker

    def async_sessionmaker(self, bind: Any = None, **kw: Any) -> async_sessionmaker[Any]:
        """A drop-in for :class:`sqlalchemy.ext.asyncio.async_sessionmaker`."""
        if bind is not None:
            self.wrap(_engine_of(bind))
        # async sessions run a sync Session inside; the hook goes on its class
        base = kw.pop("sync_session_class", orm.Session)
        sync_class = type(f"QueryCache{base.__name__}", (base,), {})
        self._orm.install(sync_class)
        return async_sessionmaker(bind=bind, sync_session_class=sync_class, **kw)

    def write_behind(
        self,
        engine: Engine | AsyncEngine,
        journal: Any = "sqlite:///querycache-journal.db",
        **kw: Any,
    ) -> Any:
        """A durable write-behind queue applying to ``engine`` (wrapped if it is
        not yet): see :class:`querycache.queues.WriteBehind` for the settings."""
        from querycache.queues.writebehind import WriteBehind

        return WriteBehind(self, engine, journal, **kw)

    # -- invalidation -----------------------------------------------------------
    def invalidate(self, *tables: str) -> None:
        """Invalidate every entry that reads any of ``tables``, in every database.

        Use this after writing through something querycache does not see.
        """
        names = frozenset(_table_name(t) for t in tables)
        if not names:
            return
        for scope in self._scopes():
            self.invalidate_scope(scope, names, None)

    def clear(self) -> None:
        """Drop every entry, in this process and (with Redis) everywhere; other
        caches of this process drop what they hold of this cache's databases."""
        self.memory.clear()
        if self.redis is not None:
            self.redis.bump_generation(None)
        for scope in self._scopes():
            local.forward(self, scope, None, None)

    def invalidate_scope(
        self,
        scope: str,
        tables: frozenset[str] | None,
        is_async: bool | None = None,
        images: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply a committed write: ``tables`` of ``scope`` (``None``: all).

        ``images`` holds, per written table, what the write is known to have
        touched (:class:`~querycache.invalidation.images.Image`); a table
        without one may have had any row changed. Memory first (this process
        reads its own writes at once), then Redis: new version tokens and a
        message to the other processes; then the other caches of this process
        on ``scope`` (:mod:`.invalidation.local`).
        """
        tables, writes = self._widen(scope, tables, images)
        jobs = self._apply_writes(scope, tables, writes, is_async)
        # forward what was applied here, widened by this cache's catalog (it
        # ran the statement, after rereading its catalog for any DDL it ran);
        # another cache's catalog may predate that DDL. Each receiver widens
        # again with its own, and trusts only the images trusted here.
        trusted = {t: i for t, i in writes.items() if i is not None} if writes else None
        local.forward(self, scope, tables, is_async, trusted or None)
        if jobs:
            self.refresher.wait(jobs, is_async)

    def _apply_scope(
        self,
        scope: str,
        tables: frozenset[str] | None,
        is_async: bool | None,
        images: Mapping[str, Any] | None = None,
    ) -> Any:
        tables, writes = self._widen(scope, tables, images)
        return self._apply_writes(scope, tables, writes, is_async)

    def _widen(
        self, scope: str, tables: frozenset[str] | None, images: Mapping[str, Any] | None
    ) -> tuple[frozenset[str] | None, dict[str, Any] | None]:
        """``tables`` plus what writing them also writes (views, this cache's
        catalog; None: everything), and the writes to apply: per table its
        image where nothing hidden widens the write, else None."""
        written = tables
        catalog = self.catalogs.get(scope)
        if tables is not None:
            tables = self._expand_views(tables)
            if catalog is not None:
                tables = catalog.expand_writes(tables)
        writes: dict[str, Any] | None = None
        if tables is not None:
            writes = dict.fromkeys(tables)
            if images and tables == written:
                # an image is trusted only when nothing hidden (a view, a
                # cascade, a trigger) widens the write
                hidden = catalog.triggered if catalog is not None else ()
                for t, image in images.items():
                    if t in writes and t not in hidden:
                        writes[t] = image
        return tables, writes

    def _apply_writes(
        self,
        scope: str,
        tables: frozenset[str] | None,
        writes: dict[str, Any] | None,
        is_async: bool | None,
    ) -> Any:
        refreshable: list[Any] | None = [] if self.refresher.armed else None
        dropped = self.memory.invalidate(scope, writes, refreshable)
        entries = self.memory.entries_of
        shares = {t: min(1.0, n / max(1, entries(scope, t))) for t, n in dropped.items()}
        self.stats.invalidated(scope, tables, dropped, shares)
        if self.redis is not None:
            self.redis.bump(scope, tables, is_async, writes if self.cells.precise else None)
        # after Redis too: a refresh must not read Redis's old entry back
        return self.refresher.invalidated(tables, refreshable) if refreshable else None

    def _bus_down(self) -> None:
        self.memory.suspend()
        if not self._closed:
            self.stats.degraded_begin("invalidation channel lost", "memory tier suspended")

    def _bus_up(self) -> None:
        self.memory.resume()
        self.stats.degraded_end("invalidation channel lost")

    def _remote_invalidation(
        self, scope_id: str, tables: frozenset[str] | None, images: Any = None
    ) -> None:
        """Another process's commit (``images``: per table, what its rows were)."""
        if scope_id == "*":
            self.memory.clear()
            return
        scope = self._scope_ids.get(scope_id)
        if scope is None:
            return
        writes: Any = tables
        if images is not None and tables is not None:
            catalog = self.catalogs.get(scope)
            hidden = catalog.triggered if catalog is not None else ()
            writes = {t: None if t in hidden else images.get(t) for t in tables}
        self.memory.invalidate(scope, writes)

    def count_writes(self, tables: Any) -> None:
        if isinstance(tables, frozenset):
            self.stats.wrote(tables)
        else:
            self.stats.count("writes to unknown tables")

    # -- reporting -----------------------------------------------------------------
    def report(self) -> Report:
        """A snapshot of the hit report (see :class:`~querycache.reports.Report`)."""
        return build_report(self)

    def reset_stats(self) -> None:
        self.stats.reset()

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the bus thread, close Redis clients, drop the memory tier."""
        self._closed = True
        self.refresher.close()
        self.verifier.close()
        local.unregister(self)
        if self.publisher is not None:
            self.publisher.stop()
        if self.bus is not None:
            self.bus.stop()
        if self.redis is not None:
            self.redis.close()
        self.memory.clear()

    async def aclose(self) -> None:
        """:meth:`close` for code running with async engines."""
        self.close()

    # -- internals -------------------------------------------------------------------
    def plan(self, sql: str, dialect: str) -> Plan:
        """The per-SQL-string facts: analysis, sorted tables, counters."""
        key = (dialect, sql)
        plan = self._plans.get(key)
        if plan is None:
            analysis = self.analyzer.analyze(sql, dialect)
            stats = self.stats.query(
                analysis.fingerprint, analysis.fingerprint_id, analysis.tables_read
            )
            footprint = analysis.footprint if self.cells.precise else None
            admission = self.admission.for_query(stats) if analysis.cacheable else None
            plan = Plan(analysis, stats, footprint, admission)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def failed(self, where: str, exc: BaseException) -> None:
        """A failure inside the cache layer: counted, logged once per kind."""
        self.stats.count(where, errors=True)
        marker = (where, type(exc))
        if marker not in self._logged:
            self._logged.add(marker)
            log.warning(
                "querycache: %s failed (%s); the query ran uncached",
                where,
                type(exc).__name__,
                exc_info=exc,
            )

    def _scopes(self) -> set[str]:
        return {s for b in self._bindings.values() for s in b.scopes}

    def discover(self, binding: EngineBinding, dbapi_connection: Any) -> None:
        """Read the hidden dependencies of ``binding``'s database (never raises).

        The first time for a new engine on a scope whose catalog this cache
        already read on PostgreSQL, that catalog is reused when no DDL only a
        read can follow committed through a wrapped engine since, and
        :func:`~querycache.integration.fingerprint.unchanged` says nothing
        else changed what it holds (docs/architecture.md, "A new engine reuses it").
        """
        binding.catalog_pending = False
        first, binding.catalog_reusable = binding.catalog_reusable, False
        scope = binding.scope_for(dbapi_connection.info)
        old = self.catalogs.get(scope)
        epoch = self._ddl_epochs.get(scope, 0)  # before the read: a later DDL wins
        reuse = first and old is not None and old.fingerprint is not None and old.epoch == epoch
        idle = in_transaction(dbapi_connection) is False
        try:
            if reuse and unchanged(dbapi_connection, old):
                return
            catalog = read_catalog(dbapi_connection, binding.dialect_name, self.analyzer)
        except Exception as exc:
            self.failed("catalog discovery", exc)
            return
        finally:
            if idle:  # a transaction our own catalog queries began is not foreign
                note_began(dbapi_connection)
        catalog.epoch = epoch
        old = self.catalogs.get(scope)
        if old is not None:
            catalog.missing = old.missing - catalog.known
        self.catalogs[scope] = catalog
        self.add_views(catalog.views)
        self.add_never_cache(catalog.uncacheable)

    def apply_ddl(self, scope: str, deltas: list[Any] | None) -> bool:
        """Bring the catalog of ``scope`` up to date with committed DDL whose
        text says what it created (:mod:`~querycache.integration.ddl`);
        False: the catalog must be read again (by every engine on ``scope``:
        none reuses a catalog read before)."""
        catalog = self.catalogs.get(scope)
        new = None if deltas is None or catalog is None else catalog.with_ddl(deltas)
        if new is None:
            self._ddl_epochs[scope] = next(self._epoch_values)
            return False
        self.catalogs[scope] = new
        return True

    def add_views(self, views: Mapping[str, Iterable[str]]) -> None:
        if not views:
            return
        with self._lock:
            for view, bases in views.items():
                self._views.setdefault(view, set()).update(bases)
            self.analyzer.set_view_dependencies({k: sorted(v) for k, v in self._views.items()})
            self._plans.clear()

    def add_never_cache(self, relations: Iterable[str]) -> None:
        """Relations whose reads must never be cached (sequences, views over
        volatile functions), found in a catalog; added to the user's list."""
        with self._lock:
            known = self.analyzer.never_cache_tables
            if not set(relations) - known:
                return
            self.analyzer.set_never_cache_tables(known | set(relations))
            self._plans.clear()

    def _expand_views(self, tables: frozenset[str]) -> frozenset[str]:
        # writes to a view's base table are writes "to" the view's readers;
        # analysis already adds base tables to reads of views, so nothing to
        # do for reads — but a write *through* a view must reach its bases.
        if not self._views:
            return tables
        extra = set()
        for t in tables:
            extra.update(self._views.get(t, ()))
        return tables | extra if extra else tables


def _engine_of(bind: Any) -> Any:
    """The engine behind a session bind (an engine or a connection)."""
    if isinstance(bind, Connection | AsyncConnection):
        return bind.engine
    return bind


def _table_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"invalidate() takes table names (str), got {name!r}")
    return name.rsplit(".", 1)[-1].strip('"`[]').lower()
