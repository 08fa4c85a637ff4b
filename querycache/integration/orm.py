"""The ORM fast path: serve ``Session.execute(select(Entity))`` before the
session takes a connection.

The execution context already caches every ORM query at the DBAPI level, but
then the ORM still checks out a connection, begins a transaction, compiles
and loads rows into objects. For plain entity and column queries (no loader
options, no eager relationships, no inheritance), a ``do_orm_execute`` hook
on sessions made by :meth:`QueryCache.sessionmaker` does better:

* the key is SQLAlchemy's own statement cache key plus the bound values;
* an entry holds, per row, each entity's primary key and *committed column
  values as the database returned them* (never values read back from
  objects, which may carry a session's uncommitted changes);
* on a hit each entity comes from the session's identity map when it is
  there (untouched, as a normal load leaves it: only its unloaded columns
  are filled in), or is created persistent in the session.

The entry is built on a miss from the raw rows the DBAPI level captured, so
the two levels never disagree. Anything the fast path does not understand
runs the normal way and is still cached at the DBAPI level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.result import IteratorResult
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict, instance_state
from sqlalchemy.orm.session import SessionTransactionState, _SessionCloseState

from querycache.integration.orm_plan import UNSUPPORTED, OrmPlan, plan_for
from querycache.invalidation.transactions import STATE_KEY
from querycache.keys import exact
from querycache.tiers.base import Entry, thaw

if TYPE_CHECKING:
    from querycache.cache import QueryCache
    from querycache.integration.engine import EngineBinding

__all__ = ["Capture", "OrmFastPath"]

CAPTURE_OPTION = "_querycache_capture"
_ACTIVE = SessionTransactionState.ACTIVE
_CLOSED = _SessionCloseState.CLOSED


class Capture:
    """Filled in by the DBAPI level during an ORM miss."""

    __slots__ = ("ctx", "entry", "executions", "snapshot", "storable")

    def __init__(self) -> None:
        self.ctx: Any = None
        self.snapshot: Any = None
        self.entry: Entry | None = None
        self.storable = False
        self.executions = 0


class OrmFastPath:
    """The ``do_orm_execute`` hook of one cache."""

    def __init__(self, cache: QueryCache) -> None:
        self.cache = cache
        self.plans: dict[Any, Any] = {}

    def install(self, target: Any) -> None:
        event.listen(target, "do_orm_execute", self.on_execute)

    # -- the hook -------------------------------------------------------------
    def on_execute(self, state: Any) -> Any:
        if not state.is_select or state.is_column_load or state.is_relationship_load:
            return None
        try:
            found = self._execute(state)
        except Exception as exc:
            self.cache.failed("orm fast path", exc)
            return None
        if type(found) is tuple:  # a miss: database errors reach the caller as they are
            return self._miss(state, *found)
        return found

    def _execute(self, state: Any) -> Any:
        """A hit's result, None (step aside) or the arguments of :meth:`_miss`."""
        stmt = state.statement
        if stmt._with_options or stmt._propagate_attrs.get("compile_state_plugin") != "orm":
            return None
        # hooks after ours (tenant criteria, sharding...) would not run on a hit
        if len(state._events_todo) > state._starting_event_idx + 1:
            return None
        load_options = state.load_options
        if (
            load_options._populate_existing
            or load_options._yield_per
            or (load_options._refresh_state is not None)
            or (load_options._identity_token is not None)
        ):
            return None
        opts = state.execution_options
        if (
            opts.get("querycache", True) is not True
            or opts.get("yield_per")
            or opts.get("stream_results")
            or opts.get("identity_token") is not None
        ):
            return None
        session: Session = state.session
        if (
            session.autoflush
            and load_options._autoflush
            and (session._new or session._deleted or session.identity_map._modified)
        ):
            return None  # the normal path flushes first; writes make reads bypass
        if session.dispatch.loaded_as_persistent:
            return None
        found = self._binding_for(session, state)
        if found is None:
            return None
        binding, bind = found
        ident = binding.ident  # the one place the engine identity enters ORM keys
        if ident is None:
            return None
        ck = stmt._generate_cache_key()
        if ck is None:
            return None
        params = state.parameters
        # statement, execute() and session options: SQLAlchemy renders the
        # schema names at execution time, not in its cache key
        schemas = opts.get("schema_translate_map")
        try:
            if schemas is not None:
                schemas = tuple(schemas.items())
            key = (
                "orm",
                ident,
                ck.key,
                tuple([exact(b.effective_value) for b in ck.bindparams]),
                tuple(sorted((k, exact(v)) for k, v in params.items())) if params else (),
                schemas,
            )
            entry = self.cache.memory.get(key)  # hashes ck.key: once per execution
        except TypeError:  # Opaque or unhashable: the normal path keys DBAPI values
            return None
        if entry is not None:
            if binding.verify_left <= 1:
                return None  # verify samples this hit at the DBAPI level
            binding.verify_left -= 1
            if not _ready(session, bind):
                return None  # the normal path raises, or runs hooks on connecting
            plan: OrmPlan = entry.description  # the plan rides in the description slot
            next(plan.qs.memory_hit)
            # a mutable entry keeps raw rows: the processors run again, as normally
            rows = plan.build(thaw(entry.rows)) if entry.mutable else entry.rows
            result = IteratorResult(plan.metadata, iter(self._materialize(session, plan, rows)))
            result._attributes = plan.attributes
            return result
        # plans hold an engine's scope and result processors: one per engine
        plan_key = (ident, ck.key, schemas)
        if self.plans.get(plan_key) is UNSUPPORTED:
            return None
        return (key, plan_key, binding, opts)

    def _binding_for(self, session: Session, state: Any) -> tuple[EngineBinding, Any] | None:
        """The binding and bind this statement would run on (the session's
        ``get_bind()``, as the normal path calls it: routing sessions, ``binds``,
        ``bind_arguments``), if nothing rules a hit out."""
        try:
            bind = session.get_bind(**state.bind_arguments)
        except Exception:
            return None  # the normal path raises the same
        binding = self.cache._bindings.get(id(getattr(bind, "dialect", None)))
        if binding is None or not binding.fast_ok or not binding.ident:
            return None  # ident 0: its connections differ, and we cannot see which one
        # options of an OptionEngine or a Connection bind apply below us
        bind_opts = getattr(bind, "_execution_options", None)
        if bind_opts and (
            not binding.plain_options(bind_opts) or "schema_translate_map" in bind_opts
        ):
            return None
        connections = [bind] if isinstance(bind, Connection) else []
        tx = session._transaction
        if tx is not None and not tx.is_active:
            return None  # failed or ending: the normal path raises what it must
        while tx is not None:  # a savepoint's enclosing transactions too
            connections += [entry[0] for entry in tx._connections.values()]
            tx = tx._parent
        for conn in connections:
            fairy = conn._dbapi_connection
            if fairy is not None and STATE_KEY in fairy.info:
                return None  # that transaction wrote, or the connection is tainted
            conn_opts = conn._execution_options
            if conn_opts and (
                not binding.plain_options(conn_opts) or "schema_translate_map" in conn_opts
            ):
                return None
        return binding, bind

    def _miss(self, state: Any, key: Any, plan_key: Any, binding: EngineBinding, opts: Any) -> Any:
        capture = Capture()
        result = state.invoke_statement(execution_options={CAPTURE_OPTION: capture})
        try:  # the statement ran: nothing below may make the normal path run it again
            self._store(capture, result, key, plan_key, binding, opts)
        except Exception as exc:
            self.cache.failed("orm store", exc)
        return result

    def _store(
        self, capture: Capture, result: Any, key: Any, plan_key: Any, binding: Any, opts: Any
    ) -> None:
        ctx = capture.ctx
        if capture.executions != 1 or ctx is None or capture.entry is None:
            if capture.executions > 1:
                self.plans[plan_key] = UNSUPPORTED
            return
        if ctx._qc is not binding:
            return  # the session routed the execution elsewhere than get_bind() said
        plan = self.plans.get(plan_key)
        if plan is None:
            dbapi_plan = self.cache.plan(ctx.statement, binding.dialect_name)
            plan = plan_for(ctx, dbapi_plan.stats, dbapi_plan.tables, binding.scope, result)
            self.plans[plan_key] = plan
        if plan is UNSUPPORTED or not capture.storable:
            return
        assert isinstance(plan, OrmPlan)
        raw = capture.entry
        rows, size, mutable = plan.convert(raw.rows)
        if mutable or raw.mutable:
            # hits rebuild from (copies of) the raw rows: every value their own.
            # The rows are the DBAPI entry's own list, whose size counts them
            entry = Entry(plan, raw.rows, -1, 200 + 8 * len(raw.rows))  # type: ignore[arg-type]
            entry.mutable = True
        else:
            entry = Entry(plan, rows, -1, size + 200)  # type: ignore[arg-type]
        entry.stats = plan.qs
        memory = self.cache.memory
        if entry.size <= memory.max_entry_bytes:
            ttl = opts.get("querycache_ttl") or self.cache.ttl
            # the DBAPI level read the versions before the database: the same
            # check-at-store rule applies to this second form of its result
            memory.put(key, entry, plan.scope, plan.tables, capture.snapshot, ttl)

    # -- building objects -----------------------------------------------------------
    @staticmethod
    def _materialize(session: Session, plan: OrmPlan, rows: list[tuple[Any, ...]]) -> list[Any]:
        if plan.columns_only:
            return rows
        identity_map = session.identity_map
        session_id = session.hash_key
        slots = plan.slots
        out = []
        for row in rows:
            item = []
            for n, slot in enumerate(slots):
                value = row[n]
                if type(slot) is int or value is None:
                    item.append(value)
                    continue
                pk, values = value
                ikey = (slot.identity_class, pk, None)
                existing = identity_map.get(ikey)
                if existing is not None:
                    st = instance_state(existing)
                    unloaded = st.unloaded
                    if unloaded:
                        keys = unloaded & plan.key_set[n]
                        if keys:
                            d = instance_dict(existing)
                            for k, v in zip(slot.attr_keys, values):
                                if k in keys:
                                    d[k] = v
                            st._commit(d, keys)
                    item.append(existing)
                    continue
                obj = slot.manager.new_instance()
                st = instance_state(obj)
                st.key = ikey
                st.identity_token = None
                st.session_id = session_id
                identity_map._add_unpresent(st, ikey)
                instance_dict(obj).update(zip(slot.attr_keys, values))
                item.append(obj)
            out.append(tuple(item))
        return out


def _ready(session: Session, bind: Any) -> bool:
    """Whether the normal path would reach ``bind``'s connection without
    raising and without running a hook: the checks ``Session._connection_for_bind``
    makes, without a clock or I/O. Autobegins as the normal path does."""
    ctx = session._trans_context_manager
    if ctx is not None and not ctx._transaction_is_active():
        return False  # "Can't operate on closed transaction inside context manager"
    tx = session._transaction
    if tx is None:
        if not session.autobegin or session._close_state is _CLOSED:
            return False  # InvalidRequestError on the normal path
        tx = session._autobegin_t()  # after_transaction_create fires, as normally
    elif tx._state is not _ACTIVE:
        return False  # PendingRollbackError, IllegalStateChangeError...
    if bind not in tx._connections:
        # connecting would run after_begin hooks (SET ROLE, search_path...), or
        # join a Connection bind; a savepoint's parents must be usable too
        if session.dispatch.after_begin or isinstance(bind, Connection):
            return False
        parent = tx._parent
        while parent is not None:
            if parent._state is not _ACTIVE:
                return False
            parent = parent._parent
    return True
