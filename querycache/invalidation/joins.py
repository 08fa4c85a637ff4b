"""Join cells: results that see a table only through rows joined to another.

``SELECT ... FROM order_items JOIN orders ON orders.id = order_items.order_id
WHERE orders.created_at >= ?`` depends on ``order_items`` only through items
of orders in the range. A write of items survives such a result's *join
cell* only if every written join value names a row of the other table whose
condition values are known and cannot meet the condition: a row the same
commit wrote (its image), or one a join lookup read
(:mod:`querycache.integration.lookups`, the image's ``facts``).
"""

from __future__ import annotations

from typing import Any

from querycache.invalidation.images import Image, in_range, loose

__all__ = ["kill_joins", "may_meet"]


def kill_joins(
    die: Any,
    joins: dict[Any, Any],
    values: list[Any],
    sqlite: bool,
    writes: dict[str, Image | None],
    image: Image | None,
) -> None:
    """Kill the join cells of one column that rows written with ``values`` in
    it may reach (see the module)."""
    keys = {loose(v) for v in values}
    if not keys:
        return  # the image knows the column, and no row: nothing was written
    facts = image.facts if image is not None else None
    for spec in list(joins):
        other, other_column, (cond_column, how, arg) = spec
        if None not in keys:
            target = writes.get(other)
            known = target.values.get(other_column) if target is not None else None
            if known is not None and keys <= {loose(v) for v in known}:
                candidates = target.values.get(cond_column)  # type: ignore[union-attr]
                if candidates is not None and not may_meet(candidates, how, arg, sqlite):
                    continue
            fact = facts.get((other, other_column, cond_column)) if facts else None
            if fact is not None and keys <= fact[0] and not may_meet(fact[1], how, arg, sqlite):
                continue
        die(joins.pop(spec))


def may_meet(values: list[Any], how: str, arg: Any, sqlite: bool) -> bool:
    """Whether one of ``values`` may meet a bound condition (``"="``: loose
    keys; else range bounds); True when unsure."""
    if how == "=":
        keys = [loose(v) for v in values]
        return any(k is None or k in arg for k in keys)
    return any(in_range(v, arg, sqlite) for v in values)
