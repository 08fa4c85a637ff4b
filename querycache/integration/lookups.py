"""Join lookups: what the rows a write joins to look like, read in its transaction.

``SELECT ... FROM order_items JOIN products ON products.id =
order_items.product_id WHERE products.category_id = ?`` depends on
``order_items`` only through rows joined to a product of that category
(a *join cell*, :mod:`querycache.invalidation.cells`). An inserted order item
names its ``product_id``, not the product's category; without more, the
cell must die. Right after such a write, when some live join cell of this
process follows the written column, this module reads the joined rows'
condition column (``SELECT id, category_id FROM products WHERE id IN
(...)``) on the writer's connection and attaches the answer to the write's
image as *facts*: the join cell then survives if no looked-up row can meet
its condition.

The answer must still hold when the write's invalidation is applied, or a
change to those rows must kill the entry by itself (it does: the entry also
holds the other table's cells of its condition, which any write changing
the condition column of such a row kills). What remains is a row the lookup
could not see:

* SQLite: after the write, this connection holds the database's write lock
  until it commits (or it committed already, under autocommit): nothing
  commits in between.
* PostgreSQL, inside a transaction: ``FOR SHARE`` locks the rows read until
  the writer's transaction ends, and the lookup is only done when the looked
  up column has a single-column, immediate, non-partial unique index (so no
  second row with that key can appear); it runs inside a savepoint, so that
  an error cannot abort the user's transaction. Under autocommit the write
  committed before the lookup, which then reads what was committed since.

A key the lookup found no row for is not covered (a phantom may appear): the
cell dies. Only done for plain tables (not views) with lower-case plain
names, and at most ``_MAX_KEYS`` keys.
"""

from __future__ import annotations

import re
from typing import Any

from querycache.analysis.writespecs import WriteSpec
from querycache.integration.context import committed_now
from querycache.invalidation.images import Image, PendingKeys, loose
from querycache.invalidation.transactions import STATE_KEY

__all__ = ["Lookups", "fetch_facts", "join_lookups"]

_MAX_KEYS = 1000
_PLAIN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MARK = "/* querycache join lookup */ "
_UNIQUE = (
    "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "WHERE i.indrelid = to_regclass({t}) AND i.indisunique AND i.indimmediate "
    "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = {c})"
)


def _marks(style: str, n: int, start: int = 0) -> list[str]:
    if style == "qmark":
        return ["?"] * n
    if style == "numeric":
        return [f":{start + i + 1}" for i in range(n)]
    if style == "named":
        return [f":qck{start + i}" for i in range(n)]
    if style == "pyformat":
        return [f"%(qck{start + i})s" for i in range(n)]
    if style == "format":
        return ["%s"] * n
    return [f"${start + i + 1}" for i in range(n)]  # numeric_dollar (asyncpg)


def _params(style: str, values: list[Any]) -> Any:
    if style in ("named", "pyformat"):
        return {f"qck{i}": v for i, v in enumerate(values)}
    return tuple(values)


class Lookups:
    """Per engine: which looked-up columns are unique (PostgreSQL), by catalog."""

    def __init__(self) -> None:
        self.catalog: Any = None
        self.unique: dict[tuple[str, str], bool] = {}

    def is_unique(self, cursor: Any, catalog: Any, table: str, column: str, style: str) -> bool:
        if catalog is not self.catalog:  # DDL since: read again
            self.catalog, self.unique = catalog, {}
        key = (table, column)
        if key not in self.unique:
            t, c = _marks(style, 2)
            cursor.execute(_UNIQUE.format(t=t, c=c), _params(style, [table, column]))
            self.unique[key] = bool(cursor.fetchone()[0])
        return self.unique[key]


def fetch_facts(
    ctx: Any,
    lookups: Lookups,
    catalog: Any,
    specs: list[tuple[str, str, str, str]],
    image: Any,
    postgres: bool,
    in_transaction: bool,
) -> dict[tuple[str, str, str], tuple[frozenset[Any], list[Any]]]:
    """Per ``(other table, its join column, its condition column)`` followed
    from a written column (``specs``: ``(own, other, other column, condition
    column)``): the loose keys found and the condition column's values."""
    style = ctx.dialect.paramstyle
    facts: dict[tuple[str, str, str], tuple[frozenset[Any], list[Any]]] = {}
    cursor = ctx._dbapi_connection.cursor()
    savepoint = postgres and in_transaction
    try:
        for own, other, other_column, cond_column in specs:
            values = image.values.get(own)
            if not values or any(v is None for v in values):
                continue
            if not all(_PLAIN.match(n) for n in (other, other_column, cond_column)):
                continue
            if other not in catalog.known or other in catalog.views:
                continue
            keys = list({loose(v): v for v in values}.values())
            if len(keys) > _MAX_KEYS or None in {loose(v) for v in keys}:
                continue
            sql = (
                f"{MARK}SELECT {other_column}, {cond_column} FROM {other} "
                f"WHERE {other_column} IN ({', '.join(_marks(style, len(keys)))})"
            )
            if savepoint:
                cursor.execute("SAVEPOINT querycache_lookup")
            try:
                if savepoint:
                    if not lookups.is_unique(cursor, catalog, other, other_column, style):
                        cursor.execute("RELEASE SAVEPOINT querycache_lookup")
                        continue
                    sql += " FOR SHARE"
                cursor.execute(sql, _params(style, keys))
                rows = cursor.fetchall()
                if savepoint:
                    cursor.execute("RELEASE SAVEPOINT querycache_lookup")
            except Exception:
                if savepoint:
                    cursor.execute("ROLLBACK TO SAVEPOINT querycache_lookup")
                    cursor.execute("RELEASE SAVEPOINT querycache_lookup")
                raise
            found = frozenset(loose(r[0]) for r in rows)
            facts[(other, other_column, cond_column)] = (found, [r[1] for r in rows])
    finally:
        cursor.close()
    return facts


def join_lookups(binding: Any, ctx: Any) -> None:
    """After a write ran: attach join facts to its image when some live join
    cell follows a column it wrote (see the module). Never raises."""
    core = binding.core
    try:
        spec = core.plan(ctx.statement, binding.dialect_name).footprint
        if not isinstance(spec, WriteSpec):
            return
        postgres = binding.dialect_name == "postgresql"
        if not postgres and binding.dialect_name != "sqlite":
            return
        fairy = ctx._dbapi_connection
        info = fairy.info
        scope = binding.scope_for(info)
        specs = binding.memory.cells.join_specs(scope, spec.table)
        state = info.get(STATE_KEY)
        parts = state.images.get(spec.table) if specs and state is not None else None
        part = parts[-1] if parts else None
        image = part.image if isinstance(part, PendingKeys) else part
        catalog = core.catalogs.get(scope)
        if image is None or catalog is None or spec.table in catalog.views:
            return
        specs = [s for s in specs if s[0] in image.values]
        if not specs:
            return
        in_tx = not committed_now(fairy, ctx.execution_options, binding.default_isolation)
        facts = fetch_facts(ctx, binding.lookups, catalog, specs, image, postgres, in_tx)
    except Exception as exc:
        core.failed("join lookup", exc)
        return
    if facts:
        image.facts = image.merge(Image({}, None, facts)).facts
