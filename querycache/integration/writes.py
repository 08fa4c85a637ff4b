"""The write path of an engine: what a write records, and what commit applies.

A statement the analysis calls a write (or a read calling a writing
function) is recorded on its connection's transaction state
(:mod:`querycache.invalidation.transactions`): the tables it touched and,
when its statement and parameters pin them down, its image
(:mod:`querycache.invalidation.images`), completed by a pre-image read for
``UPDATE``/``DELETE`` (:mod:`.preimage`) and join lookups (:mod:`.lookups`).
Nothing is invalidated before the database commits: :meth:`WritePath.apply_pending`
runs after ``do_commit`` (or a text ``COMMIT``, or a write the driver
auto-committed); a rollback drops what was pending.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from querycache.analysis import ALL
from querycache.integration.context import committed_now, record_image, record_write
from querycache.integration.ddl import ddl_delta
from querycache.integration.lookups import join_lookups, resolve_lookups
from querycache.integration.preimage import data_version, fetch_preimage
from querycache.integration.txhooks import info_of
from querycache.invalidation.images import Image, merge_parts
from querycache.invalidation.transactions import STATE_KEY, state_of

__all__ = ["WritePath"]


class WritePath:
    """Mixin of :class:`~querycache.integration.engine.EngineBinding`: its write path."""

    core: Any
    memory: Any
    dialect: Any
    dialect_name: str
    check_isolation: bool
    default_isolation: str | None
    private: bool
    is_async: bool
    catalog_pending: bool
    scope_for: Callable[[Any], str]

    def _functions_may_write(self, ctx: Any, info: dict[str, Any]) -> None:
        """A SELECT calling a function that writes is a write."""
        scope = self.scope_for(info)
        catalog = self.core.catalogs.get(scope)
        if catalog is None:
            return
        reason = ctx._qc_reason or ""
        name = reason.partition(": ")[2].lower() if reason.startswith("unknown function") else ""
        if name and catalog.has_new_function(name):
            self.core.discover(self, ctx._dbapi_connection)  # created behind our back
            catalog = self.core.catalogs.get(scope) or catalog
        found, written = catalog.functions_written(ctx.statement)
        if found:
            record_write(info, ALL if written is None else written)
            ctx._qc_after = "write"

    def _before_other(self, ctx: Any, plan: Any, info: dict[str, Any]) -> None:
        analysis = plan.analysis
        kind = analysis.kind
        if kind == "transaction":
            op = analysis.transaction_op
            if op == "begin" and self.check_isolation:
                text = ctx.statement.upper()
                if "REPEATABLE" in text or "SERIALIZABLE" in text:
                    state_of(info).snapshot = True
            if op in ("commit", "rollback"):
                ctx._qc_after = op
            return
        if analysis.session_state:
            state_of(info).tainted = True
        written = analysis.tables_written
        if kind == "read" and not written:
            plan.stats.bypass("executemany")
            return
        if written is not ALL and not written:
            return
        imaged = kind == "write" and written is not ALL
        record_write(info, written, imaged)
        if imaged:
            kinds = self._kinds(ctx, plan.footprint)
            where = record_image(info, written, plan.footprint, ctx, kinds)
            spec = plan.footprint
            if where is not None and spec.fetch and not ctx.executemany:
                self._prefetch(ctx, spec, where)
        if kind == "ddl":
            state = state_of(info)
            delta = ddl_delta(ctx.statement, self.dialect_name)
            if not state.ddl:
                state.ddl, state.ddl_deltas = True, []
            if delta is None or state.ddl_deltas is None:
                state.ddl_deltas = None
            else:
                state.ddl_deltas.append(delta)
        self.core.count_writes(written)
        ctx._qc_after = "write"

    def _prefetch(self, ctx: Any, spec: Any, where: Any) -> None:
        """Read the rows an UPDATE/DELETE will touch (:mod:`.preimage`)."""
        scope = self.scope_for(ctx._dbapi_connection.info)
        columns = self.memory.cells.keyed_columns(scope, spec.table, spec.changed)
        if self.core.redis is not None and not self.private:  # other processes' keys too
            shared = self.core.redis.keyed_columns(scope, spec.table, self.is_async)
            if not shared.issubset(columns):
                columns = sorted(shared.union(columns))
        postgres = self.dialect_name == "postgresql"
        if not columns or not (postgres or self.dialect_name == "sqlite"):
            return
        parts, index = where
        known = parts[index]
        if isinstance(known, Image) and all(c in known.values for c in columns):
            return  # the statement alone gives every keyed column (WHERE id = ?)
        core = self.core
        catalog = core.catalogs.get(scope)
        table = spec.table
        if (
            catalog is None
            or table not in catalog.known
            or table in catalog.views
            or table in catalog.triggered
            or table in core._views
        ):
            return
        if postgres:
            driver = getattr(ctx._dbapi_connection, "dbapi_connection", None)
            level = ctx.execution_options.get("isolation_level", self.default_isolation)
            if level == "AUTOCOMMIT" or getattr(driver, "autocommit", False):
                return
        try:
            pre = fetch_preimage(ctx, spec, columns, postgres, self.dialect.paramstyle)
        except Exception as exc:
            core.failed("pre-image", exc)
            return
        if pre is not None:
            pre.part = where
            ctx._qc_pre = pre

    def _kinds(self, ctx: Any, spec: Any) -> Any:
        """The catalog's column kinds of the table ``spec`` writes (None: none known)."""
        table = getattr(spec, "table", None)
        catalog = self.core.catalogs.get(self.scope_for(ctx._dbapi_connection.info))
        if table is None or catalog is None:
            return None
        try:
            return catalog.kinds_of(table, ctx._dbapi_connection, self.dialect_name)
        except Exception as exc:  # compared by value alone, as without a catalog
            self.core.failed("column kinds", exc)
            return None

    def _finish_preimage(self, ctx: Any) -> None:
        pre, ctx._qc_pre = ctx._qc_pre, None
        version = data_version(ctx) if self.dialect_name == "sqlite" else None
        spec = self.core.plan(ctx.statement, self.dialect_name).footprint
        kinds = self._kinds(ctx, spec)
        image = pre.image(spec, ctx.parameters[0], ctx.cursor.rowcount, version, kinds)
        if image is not None and pre.part is not None:
            parts, index = pre.part
            if index < len(parts):
                parts[index] = image

    # -- after the driver ran -------------------------------------------------
    def after(self, ctx: Any, what: str) -> None:
        """Follow a text COMMIT/ROLLBACK, or a write the driver auto-committed."""
        if what == "verify":
            self.core.verifier.finish(ctx)
            return
        fairy = ctx._dbapi_connection
        if getattr(ctx, "_qc_pre", None) is not None:
            self._finish_preimage(ctx)
        if what == "write" and self.memory.cells.joins_seen:
            join_lookups(self, ctx)
        if what == "commit":
            self.apply_pending(fairy)
        elif what == "rollback":
            self.drop_pending(fairy)
        elif committed_now(fairy, ctx.execution_options, self.default_isolation):
            self.apply_pending(fairy)

    # -- transaction ends -------------------------------------------------------
    def apply_pending(self, fairy: Any) -> None:
        info = info_of(fairy)
        state = info.get(STATE_KEY) if info is not None else None
        if state is None:
            return
        images = {t: merge_parts(parts) for t, parts in state.images.items()}
        if self.memory.cells.joins_seen:  # after the commit, before the kills
            resolve_lookups(self, fairy, images)
        written, everything = state.take_writes()
        state.snapshot = False
        scope = self.scope_for(info)
        if state.ddl:
            deltas, state.ddl, state.ddl_deltas = state.ddl_deltas, False, None
            if self.private:  # that database's catalog: read again on its next use
                self.core.catalogs.pop(scope, None)
            elif not self.core.apply_ddl(scope, deltas):
                self.catalog_pending = self.core.settings.discover_views
        if state.idle:
            info.pop(STATE_KEY, None)
        if everything:
            self.core.invalidate_scope(scope, None, self.is_async)
        elif written:
            self.core.invalidate_scope(scope, frozenset(written), self.is_async, images)

    def drop_pending(self, fairy: Any) -> None:
        info = info_of(fairy)
        state = info.get(STATE_KEY) if info is not None else None
        if state is None:
            return
        state.take_writes()
        state.snapshot = state.ddl = False
        state.ddl_deltas = None
        if state.idle:
            info.pop(STATE_KEY, None)
