"""Join lookups: what the rows a write joins to look like, read after its commit.

``SELECT ... FROM order_items JOIN products ON products.id =
order_items.product_id WHERE products.category_id = ?`` depends on
``order_items`` only through items joined to a product of that category (a
*join cell*, :mod:`querycache.invalidation.joins`). An inserted order item
names its ``product_id``, not the product's category; without more, the
cell must die. When a write's image knows a column that some live join cell
of this process follows, the image *wants* a lookup; once the transaction
committed, before its invalidation is applied, the writer's connection reads
the joined rows' condition column (``SELECT id, category_id FROM products
WHERE id IN (...)``, every key the transaction wrote, in one statement per
followed join) and attaches the answer to the image as *facts*: the join
cell survives if every written key was found and no row found can meet its
condition.

Reading after the commit needs no lock: a row that met the condition when the
write committed and does not when it is read was changed (or deleted) by a
writer that committed in between, whose own invalidation kills the entry (the
entry also holds the other table's cells of that condition); a row created in
between is seen; a key with no row is not covered. Under autocommit the write
committed already: the lookup runs right after it. On PostgreSQL the lookup
would open a transaction on the connection: it is rolled back at once.

Only for plain tables of the catalog (not views) with lower-case plain names,
at most ``_MAX_KEYS`` keys; a failure is logged once and the cell dies.
Cost: one statement per followed join per committing transaction that wrote
such a column (plus ``BEGIN`` and ``ROLLBACK`` on PostgreSQL but with
psycopg), inside ``commit()``,
and only while a stored result holds the column's cells
(:meth:`~querycache.invalidation.cells.CellRegistry.join_specs`).
"""

from __future__ import annotations

import re
from typing import Any

from querycache.analysis.writespecs import WriteSpec
from querycache.integration.context import committed_now
from querycache.integration.txhooks import info_of
from querycache.invalidation.exact import OPAQUE
from querycache.invalidation.images import Image, PendingKeys, loose
from querycache.invalidation.transactions import STATE_KEY

__all__ = ["fetch_facts", "join_lookups", "resolve_lookups"]

_MAX_KEYS = 1000
_PLAIN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MARK = "/* querycache join lookup */ "


def _marks(style: str, n: int) -> str:
    if style == "qmark":
        return ", ".join(["?"] * n)
    if style == "numeric":
        return ", ".join(f":{i + 1}" for i in range(n))
    if style == "named":
        return ", ".join(f":qck{i}" for i in range(n))
    if style == "pyformat":
        return ", ".join(f"%(qck{i})s" for i in range(n))
    if style == "format":
        return ", ".join(["%s"] * n)
    return ", ".join(f"${i + 1}" for i in range(n))  # numeric_dollar (asyncpg)


def _params(style: str, values: list[Any]) -> Any:
    if style in ("named", "pyformat"):
        return {f"qck{i}": v for i, v in enumerate(values)}
    return tuple(values)


def fetch_facts(
    dbapi_connection: Any, style: str, catalog: Any, wants: Any, image: Image
) -> dict[tuple[str, str, str], tuple[frozenset[Any], list[Any]]]:
    """Per ``(other table, its join column, its condition column)`` followed
    from a written column (``wants``: ``(own, other, other column, condition
    column)``): the loose keys found and the condition column's values."""
    facts: dict[tuple[str, str, str], tuple[frozenset[Any], list[Any]]] = {}
    cursor = dbapi_connection.cursor()
    try:
        for own, other, other_column, cond_column in sorted(wants):
            values = image.values.get(own)
            if not values or any(v is None for v in values):
                continue
            if not all(_PLAIN.match(n) for n in (other, other_column, cond_column)):
                continue
            if other not in catalog.known or other in catalog.views:
                continue
            kinds = catalog.columns.get(other) or {}
            if kinds.get(other_column) == OPAQUE or kinds.get(cond_column) == OPAQUE:
                continue  # only the database compares those values
            by_key = {loose(v): v for v in values}
            if len(by_key) > _MAX_KEYS or None in by_key:
                continue
            keys = list(by_key.values())
            sql = (
                f"{MARK}SELECT {other_column}, {cond_column} FROM {other} "
                f"WHERE {other_column} IN ({_marks(style, len(keys))})"
            )
            cursor.execute(sql, _params(style, keys))
            rows = cursor.fetchall()
            found = frozenset(loose(r[0]) for r in rows)
            facts[(other, other_column, cond_column)] = (found, [r[1] for r in rows])
    finally:
        cursor.close()
    return facts


def join_lookups(binding: Any, ctx: Any) -> None:
    """After a write ran: mark its image as wanting the lookups of the live
    join cells that follow a column it knows (done now if the write is already
    committed, else by :func:`resolve_lookups`). Never raises."""
    core = binding.core
    try:
        spec = core.plan(ctx.statement, binding.dialect_name).footprint
        if not isinstance(spec, WriteSpec) or binding.dialect_name not in ("postgresql", "sqlite"):
            return
        fairy = ctx._dbapi_connection
        info = fairy.info
        scope = binding.scope_for(info)
        specs = binding.memory.cells.join_specs(scope, spec.table)
        state = info.get(STATE_KEY)
        parts = state.images.get(spec.table) if specs and state is not None else None
        part = parts[-1] if parts else None
        image = part.image if isinstance(part, PendingKeys) else part
        if image is None:
            return
        wants = {s for s in specs if s[0] in image.values}
        if not wants:
            return
        image.wants = (image.wants or frozenset()) | wants
        if committed_now(fairy, ctx.execution_options, binding.default_isolation):
            resolve_lookups(binding, fairy, {spec.table: image})
    except Exception as exc:
        core.failed("join lookup", exc)


def _autocommit_on(fairy: Any) -> Any:
    """The psycopg (3 or 2) connection under ``fairy``, switched to autocommit
    for the lookup (one round trip instead of ``BEGIN``, the read and
    ``ROLLBACK``); ``None`` when that does not apply: then the lookup's
    transaction is rolled back. Only between transactions: the switch is a
    client-side flag there, and it is switched back before the connection
    is used again."""
    driver = getattr(fairy, "dbapi_connection", None)
    if driver is None or not type(driver).__module__.startswith("psycopg"):
        return None
    if driver.autocommit is not False:
        return None
    status = getattr(getattr(driver, "info", None), "transaction_status", None)
    if status is None:  # psycopg2
        status = driver.get_transaction_status()
    if status != 0:  # TRANSACTION_STATUS_IDLE in both
        return None
    driver.autocommit = True
    return driver


def resolve_lookups(binding: Any, fairy: Any, images: dict[str, Any]) -> None:
    """After a commit, before its invalidation: the lookups its images want.
    Never raises (a lookup that failed leaves its cells to die)."""
    wanting = {t: im for t, im in images.items() if im is not None and im.wants}
    if not wanting:
        return
    core = binding.core
    postgres = binding.dialect_name == "postgresql"
    try:
        todo = [(image, image.wants) for image in wanting.values()]
        for image, _ in todo:
            image.wants = None  # done once, whatever happens
        info = info_of(fairy)
        catalog = core.catalogs.get(binding.scope_for(info)) if info is not None else None
        if catalog is None or not hasattr(fairy, "cursor"):
            return  # (an invalidated connection: nothing to read with)
        style = binding.dialect.paramstyle
        driver = _autocommit_on(fairy) if postgres else None
        try:
            for image, wants in todo:
                facts = fetch_facts(fairy, style, catalog, wants, image)
                if facts:
                    image.facts = image.merge(Image({}, None, facts)).facts
        finally:
            if driver is not None:
                try:
                    driver.autocommit = False
                except Exception:
                    fairy.invalidate()  # never hand back a connection left in autocommit
                    raise
            elif postgres and not getattr(fairy, "autocommit", False):
                fairy.rollback()  # the transaction the lookup opened
    except Exception as exc:
        core.failed("join lookup", exc)
