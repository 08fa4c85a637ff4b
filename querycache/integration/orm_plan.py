"""How the ORM fast path turns the raw rows of one compiled ORM statement
into entry rows (:class:`OrmPlan`), and which statements it understands."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Mapper
from sqlalchemy.orm.context import _MapperEntity, _ORMColumnEntity, _RawColumnEntity

from querycache.tiers.sizing import IMMUTABLE, frozen, getsizeof, value_size

__all__ = ["UNSUPPORTED", "OrmPlan", "plan_for"]

UNSUPPORTED = object()


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

    def _item(self, row: list[Any]) -> tuple[Any, ...]:
        item: list[Any] = []
        for slot in self.slots:
            if type(slot) is int:
                item.append(row[slot])
                continue
            pk = tuple([row[i] for i in slot.pk_index])
            # an outer join's missing entity is None
            item.append(None if None in pk else (pk, tuple([row[i] for i in slot.value_index])))
        return tuple(item)

    def build(self, raw_rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Entry rows from raw rows: result processors applied, each entity as
        ``(primary key, column values)``."""
        procs = self.processors
        return [
            self._item([p(v) if p is not None else v for p, v in zip(procs, raw)])
            for raw in raw_rows
        ]

    def convert(self, raw_rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int, bool]:
        """:meth:`build`'s rows, the bytes they add (values shared with the raw
        rows are already counted there), and whether any processed value may
        be mutable (not :func:`~querycache.tiers.sizing.frozen`: a set from a
        TypeDecorator, an unpickled dict, a JSON list...). Such an entry keeps
        raw rows and runs the processors on every hit, as the normal path does."""
        procs = self.processors
        converted = [n for n, p in enumerate(procs) if p is not None]
        out = []
        size = getsizeof(out) + 8 * len(raw_rows)
        mutable = False
        for raw in raw_rows:
            row = [p(v) if p is not None else v for p, v in zip(procs, raw)]
            for n in converted:
                v = row[n]
                size += value_size(v)
                if type(v) not in IMMUTABLE and not frozen(v):
                    mutable = True
            item = self._item(row)
            size += getsizeof(item)
            for v in item:
                if type(v) is tuple:  # an entity: (pk, values)
                    size += 56 + getsizeof(v) + getsizeof(v[0]) + getsizeof(v[1])
            out.append(item)
        return out, size, mutable


def plan_for(
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
        return UNSUPPORTED
    description = ctx.cursor.description
    result_columns = compiled._result_columns
    if description is None or len(description) != len(result_columns):
        return UNSUPPORTED
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
                return UNSUPPORTED
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
                    return UNSUPPORTED
            attr_keys, value_index = [], []
            for prop in mapper.column_attrs:
                if prop.deferred:
                    continue
                if len(prop.columns) != 1 or (i := index.get(prop.columns[0])) is None:
                    return UNSUPPORTED
                attr_keys.append(prop.key)
                value_index.append(i)
            pk_index = []
            for col in mapper.primary_key:
                if (i := index.get(col)) is None:
                    return UNSUPPORTED
                pk_index.append(i)
            slots.append(_Entity(mapper, tuple(attr_keys), tuple(value_index), tuple(pk_index)))
        elif kind is _ORMColumnEntity or kind is _RawColumnEntity:
            if (i := index.get(ent.column)) is None:
                return UNSUPPORTED
            slots.append(i)
        else:
            return UNSUPPORTED
    if len(keys) != len(slots):
        return UNSUPPORTED
    return OrmPlan(slots, processors, result, tables, scope, qs)
