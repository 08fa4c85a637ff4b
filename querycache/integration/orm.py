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
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_dict, instance_state
from sqlalchemy.orm.context import _MapperEntity, _ORMColumnEntity, _RawColumnEntity

from querycache.invalidation.transactions import STATE_KEY
from querycache.keys import exact
from querycache.tiers.base import Entry, thaw
from querycache.tiers.sizing import getsizeof, value_size

if TYPE_CHECKING:
    from querycache.cache import QueryCache
    from querycache.integration.engine import EngineBinding

__all__ = ["Capture", "OrmFastPath"]

CAPTURE_OPTION = "_querycache_capture"
_UNSUPPORTED = object()


class Capture:
    """Filled in by the DBAPI level during an ORM miss."""

    __slots__ = ("ctx", "entry", "executions", "snapshot", "storable")

    def __init__(self) -> None:
        self.ctx: Any = None
        self.snapshot: Any = None
        self.entry: Entry | None = None
        self.storable = False
        self.executions = 0


class _Entity:
    __slots__ = ("attr_keys", "identity_class", "manager", "pk_index", "value_index")

    def __init__(
        self,
        mapper: Mapper[Any],
        attr_keys: tuple[str, ...],
        value_index: tuple[int, ...],
        pk_index: tuple[int, ...],
    ) -> None:
        self.identity_class = mapper._identity_class
        self.manager = mapper.class_manager
        self.attr_keys = attr_keys
        self.value_index = value_index
        self.pk_index = pk_index


class OrmPlan:
    """How to turn raw rows of one compiled ORM statement into entry rows."""

    __slots__ = (
        "attributes",
        "columns_only",
        "key_set",
        "metadata",
        "processors",
        "qs",
        "scope",
        "slots",
        "tables",
    )

    def __init__(
        self,
        slots: list[Any],
        processors: list[Any],
        result: Any,
        tables: tuple[str, ...],
        scope: str,
        qs: Any,
    ) -> None:
        self.slots = slots
        self.processors = processors
        # the miss's own metadata: rows of a hit answer to entities and columns
        # (row._mapping[User], .columns(User.id)) exactly as the ORM's do
        self.metadata = result._metadata
        self.attributes = result._attributes
        self.tables = tables
        self.scope = scope
        self.qs = qs
        self.key_set = [frozenset(s.attr_keys) if isinstance(s, _Entity) else None for s in slots]
        #: no entities: an entry's rows are the result's rows as they are
        self.columns_only = all(type(s) is int for s in slots)

    def convert(self, raw_rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int, bool]:
        """Entry rows, the bytes they add (values shared with the raw rows are
        already counted there), and whether any value is mutable."""
        procs = self.processors
        converted = [i for i, p in enumerate(procs) if p is not None]
        out = []
        size = getsizeof(out)
        mutable = False
        for raw in raw_rows:
            row = [p(v) if p is not None else v for p, v in zip(procs, raw)]
            for i in converted:
                size += value_size(row[i])
            for v in row:
                if type(v) is dict or type(v) is list:
                    mutable = True
            item: list[Any] = []
            for slot in self.slots:
                if type(slot) is int:
                    item.append(row[slot])
                    continue
                pk = tuple([row[i] for i in slot.pk_index])
                if None in pk:
                    item.append(None)
                else:
                    values = tuple([row[i] for i in slot.value_index])
                    item.append((pk, values))
                    size += 56 + getsizeof(pk) + getsizeof(values)
            t = tuple(item)
            size += getsizeof(t)
            out.append(t)
        return out, size + 8 * len(out), mutable


def _plan_for(
    ctx: Any, qs: Any, tables: tuple[str, ...], scope: str, result: Any
) -> OrmPlan | object:
    keys = list(result.keys())
    compiled = ctx.compiled
    state = getattr(compiled, "compile_state", None)
    entities = getattr(state, "_entities", None)
    if (
        not entities
        or getattr(state, "eager_joins", None)
        or getattr(state, "multi_row_eager_loaders", False)
    ):
        return _UNSUPPORTED
    description = ctx.cursor.description
    result_columns = compiled._result_columns
    if description is None or len(description) != len(result_columns):
        return _UNSUPPORTED
    index: dict[Any, int] = {}
    processors = []
    for i, rc in enumerate(result_columns):
        for obj in rc.objects:
            index.setdefault(obj, i)
        processors.append(ctx.get_result_processor(rc.type, rc.keyname, description[i][1]))
    slots: list[Any] = []
    for ent in entities:
        kind = type(ent)
        if kind is _MapperEntity:
            mapper = ent.mapper
            if (
                ent.is_aliased_class
                or mapper.inherits is not None
                or mapper.polymorphic_on is not None
                or ent._with_polymorphic_mappers
                or mapper.class_manager.dispatch.load
                or mapper.class_manager.dispatch.refresh
            ):
                return _UNSUPPORTED
            for rel in mapper.relationships:
                if rel.lazy not in (
                    "select",
                    True,
                    "noload",
                    "raise",
                    "raise_on_sql",
                    "write_only",
                    "dynamic",
                ):
                    return _UNSUPPORTED
            attr_keys, value_index = [], []
            for prop in mapper.column_attrs:
                if prop.deferred:
                    continue
                if len(prop.columns) != 1 or (i := index.get(prop.columns[0])) is None:
                    return _UNSUPPORTED
                attr_keys.append(prop.key)
                value_index.append(i)
            pk_index = []
            for col in mapper.primary_key:
                if (i := index.get(col)) is None:
                    return _UNSUPPORTED
                pk_index.append(i)
            slots.append(_Entity(mapper, tuple(attr_keys), tuple(value_index), tuple(pk_index)))
        elif kind is _ORMColumnEntity or kind is _RawColumnEntity:
            if (i := index.get(ent.column)) is None:
                return _UNSUPPORTED
            slots.append(i)
        else:
            return _UNSUPPORTED
    if len(keys) != len(slots):
        return _UNSUPPORTED
    return OrmPlan(slots, processors, result, tables, scope, qs)


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
            return self._execute(state)
        except Exception as exc:
            self.cache.failed("orm fast path", exc)
            return None

    def _execute(self, state: Any) -> Any:
        stmt = state.statement
        if stmt._with_options or stmt._propagate_attrs.get("compile_state_plugin") != "orm":
            return None
        load_options = state.load_options
        if (
            load_options._populate_existing
            or load_options._yield_per
            or (load_options._refresh_state is not None)
        ):
            return None
        opts = state.execution_options
        if (
            opts.get("querycache", True) is not True
            or opts.get("yield_per")
            or opts.get("stream_results")
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
        binding = self._binding_for(session, state)
        if binding is None:
            return None
        ck = stmt._generate_cache_key()
        if ck is None:
            return None
        params = state.parameters
        try:
            key = (
                "orm",
                binding.ident,
                ck.key,
                tuple([exact(b.effective_value) for b in ck.bindparams]),
                tuple(sorted((k, exact(v)) for k, v in params.items())) if params else (),
            )
            entry = self.cache.memory.get(key)  # hashes ck.key: once per execution
        except TypeError:  # Opaque or unhashable: the normal path keys DBAPI values
            return None
        if entry is not None:
            plan: OrmPlan = entry.description  # the plan rides in the description slot
            plan.qs.memory_hits += 1
            rows = thaw(entry.rows) if entry.mutable else entry.rows
            result = IteratorResult(plan.metadata, iter(self._materialize(session, plan, rows)))
            result._attributes = plan.attributes
            return result
        # plans hold an engine's scope and result processors: one per engine
        plan_key = (binding.ident, ck.key)
        if self.plans.get(plan_key) is _UNSUPPORTED:
            return None
        return self._miss(state, key, plan_key, binding, opts)

    def _binding_for(self, session: Session, state: Any) -> EngineBinding | None:
        """The binding this statement would run on, if nothing rules a hit out."""
        arguments = state.bind_arguments
        bind = arguments.get("bind")
        if bind is None:
            bind = session.bind if not session.binds else session.get_bind(**arguments)
        binding = self.cache._bindings.get(id(getattr(bind, "dialect", None)))
        if binding is None or not binding.fast_ok:
            return None
        # options of an OptionEngine or a Connection bind apply below us
        if getattr(bind, "_execution_options", None) and not binding.plain_options(
            bind._execution_options  # type: ignore[union-attr]
        ):
            return None
        if "schema_translate_map" in (getattr(bind, "_execution_options", None) or ()):
            return None
        connections = [bind] if isinstance(bind, Connection) else []
        tx = session._transaction
        if tx is not None and not tx.is_active:
            return None  # failed or ending: the normal path raises what it must
        if tx is not None:
            connections += [entry[0] for entry in tx._connections.values()]
        for conn in connections:
            fairy = conn._dbapi_connection
            if fairy is not None and STATE_KEY in fairy.info:
                return None  # that transaction wrote, or the connection is tainted
            conn_opts = conn._execution_options
            if conn_opts and (
                not binding.plain_options(conn_opts) or "schema_translate_map" in conn_opts
            ):
                return None
        return binding

    def _miss(self, state: Any, key: Any, plan_key: Any, binding: EngineBinding, opts: Any) -> Any:
        capture = Capture()
        memory = self.cache.memory
        result = state.invoke_statement(execution_options={CAPTURE_OPTION: capture})
        ctx = capture.ctx
        if capture.executions != 1 or ctx is None or capture.entry is None:
            if capture.executions > 1:
                self.plans[plan_key] = _UNSUPPORTED
            return result
        plan = self.plans.get(plan_key)
        if plan is None:
            dbapi_plan = self.cache.plan(ctx.statement, binding.dialect_name)
            plan = _plan_for(ctx, dbapi_plan.stats, dbapi_plan.tables, binding.scope, result)
            self.plans[plan_key] = plan
        if plan is _UNSUPPORTED or not capture.storable:
            return result
        assert isinstance(plan, OrmPlan)
        rows, size, mutable = plan.convert(capture.entry.rows)
        entry = Entry(plan, rows, -1, size + 200)  # type: ignore[arg-type]
        entry.stats = plan.qs
        entry.mutable = mutable
        if entry.size <= memory.max_entry_bytes:
            ttl = opts.get("querycache_ttl") or self.cache.ttl
            # the DBAPI level read the versions before the database: the same
            # check-at-store rule applies to this second form of its result
            memory.put(key, entry, plan.scope, plan.tables, capture.snapshot, ttl)
        return result

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
