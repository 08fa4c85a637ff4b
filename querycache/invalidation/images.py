"""Binding footprints and write specs to one execution's parameters.

A :class:`~querycache.analysis.footprints.WriteSpec` names parameters; bound
to the DBAPI parameters of an execution it becomes an :class:`Image`: per
column, every value the touched rows may have had before or after the
write. A column missing from ``values`` is *unknown*: it may be anything.

Values are compared by :mod:`querycache.invalidation.exact` (:func:`loose`
keys, :func:`in_range`), only after :func:`value_of` resolved what the
statement itself does to them (:mod:`querycache.invalidation.coercion`:
PostgreSQL's untyped strings, casts); a value whose database value is not
known exactly is left out, as if it were not there: unknown, "may be
anything". Loose equality may join values the database tells apart (that
costs an extra invalidation), never the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from querycache.analysis.footprints import Cond, WriteSpec
from querycache.invalidation.coercion import MISSING, coerce
from querycache.invalidation.exact import NULL, adapt, in_range, loose

__all__ = [
    "NULL",
    "Image",
    "PendingKeys",
    "bind_write",
    "in_range",
    "loose",
    "merge_parts",
    "value_of",
]

_MISSING = MISSING


def value_of(source: tuple[str, Any], params: Any) -> Any:
    """The value a :data:`~querycache.analysis.footprints.Source` has in
    ``params``, as the database reads it; ``_MISSING`` when the parameter is
    not there or its database value is not known exactly (:func:`coerce`)."""
    kind, ref = source
    if kind == "l":
        v = ref
    else:
        try:
            v = params[ref]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return coerce(v, getattr(source, "how", None))


def missing(v: Any) -> bool:
    return v is _MISSING


class Image:
    """What one transaction's writes tell about the rows of one table.

    ``values``: column -> the values it may have had, before or after, in
    any touched row (a column not there: unknown). ``changed``: columns whose
    values may have changed (``None``: any — every insert and delete).
    """

    __slots__ = ("changed", "facts", "values", "wants")

    def __init__(
        self,
        values: dict[str, list[Any]],
        changed: frozenset[str] | None,
        facts: Any = None,
        wants: frozenset[tuple[str, str, str, str]] | None = None,
    ) -> None:
        self.values = values
        self.changed = changed
        #: join lookups (:mod:`querycache.integration.lookups`): per ``(other
        #: table, its join column, its condition column)``, the loose join keys
        #: found there and their rows' condition values
        self.facts: dict[tuple[str, str, str], tuple[frozenset[Any], list[Any]]] | None = facts
        #: the lookups to do at commit: ``(own column, other table, ...)``
        self.wants = wants

    def merge(self, other: Image) -> Image:
        """Both writes' rows: a column known only if known in both."""
        values = {c: vs + other.values[c] for c, vs in self.values.items() if c in other.values}
        if self.changed is None or other.changed is None:
            changed = None
        else:
            changed = self.changed | other.changed
        facts = self.facts
        if other.facts:  # facts describe the other table's rows: any write's hold
            facts = dict(facts or {})
            for k, (keys, vals) in other.facts.items():
                mine = facts.get(k)
                facts[k] = (keys, vals) if mine is None else (mine[0] | keys, mine[1] + vals)
        wants = self.wants
        if other.wants:
            wants = other.wants | (wants or frozenset())
        return Image(values, changed, facts, wants)

    def __repr__(self) -> str:
        return f"Image(values={self.values!r}, changed={self.changed!r})"


def _pinned(pins: tuple[Cond, ...], params: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for cond in pins:
        if cond.column in out:
            continue  # any one pin is a superset of the truth
        vals = [value_of(s, params) for s in cond.values]
        if any(v is _MISSING for v in vals):
            continue
        out[cond.column] = vals
    return out


def bind_write(spec: WriteSpec, parameter_sets: Iterable[Any], kinds: Any = None) -> Image | None:
    """The :class:`Image` of ``spec`` executed with each of ``parameter_sets``
    (one for ``execute``, many for ``executemany``); ``None`` if nothing is known.
    ``kinds``: the catalog's column kinds of the table (:func:`adapt`)."""
    image: Image | None = None
    for params in parameter_sets:
        for one in _images(spec, params):
            image = one if image is None else image.merge(one)
    if image is not None and kinds:
        image.values = adapt(image.values, kinds)
    return image


def _images(spec: WriteSpec, params: Any) -> list[Image]:
    if spec.kind == "insert":
        out = []
        for row in spec.rows:
            values: dict[str, list[Any]] = {}
            for column, source in row.items():
                if source is None:
                    continue
                v = value_of(source, params)
                if v is not _MISSING:
                    values[column] = [v]
            out.append(Image(values, None))
        return out
    pinned = _pinned(spec.pins, params)
    if spec.kind == "delete":
        return [Image(pinned, None)]
    values = {}
    sets = spec.sets or {}
    for column, vals in pinned.items():
        if column not in sets:
            values[column] = vals
            continue
        source = sets[column]
        new = value_of(source, params) if source is not None else _MISSING
        if new is not _MISSING:
            values[column] = [*vals, new]
    return [Image(values, spec.changed)]


class PendingKeys:
    """An insert's image whose database-generated primary key is known only
    once SQLAlchemy has read it back (``lastrowid`` or ``RETURNING``): completed
    at commit from the execution context's ``inserted_primary_key_rows``."""

    __slots__ = ("columns", "ctx", "image")

    def __init__(self, image: Image, ctx: Any, columns: tuple[str, ...]) -> None:
        self.image, self.ctx, self.columns = image, ctx, columns

    def complete(self) -> Image:
        try:
            rows = self.ctx.inserted_primary_key_rows
        except Exception:
            return self.image
        values = dict(self.image.values)
        for i, column in enumerate(self.columns):
            got = [row[i] if row is not None and len(row) > i else None for row in rows or ()]
            if not got or any(v is None for v in got):
                return self.image  # not generated or not read back: unknown
            values[column] = got
        return Image(values, self.image.changed, self.image.facts, self.image.wants)


def merge_parts(parts: list[Any]) -> Image | None:
    """One table's images of a whole transaction (``None`` if any is unknown)."""
    merged: Image | None = None
    for part in parts:
        if isinstance(part, PendingKeys):
            part = part.complete()
        if part is None:
            return None
        merged = part if merged is None else merged.merge(part)
    return merged
