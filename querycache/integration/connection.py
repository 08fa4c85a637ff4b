"""The Core fast path: a hit served before an execution context is built.

The execution context (:mod:`querycache.integration.context`) can only look
a statement up once SQLAlchemy has processed every bind parameter into its
DBAPI form. For a compiled statement those DBAPI values are a pure function of
the compiled object, the parameters given to ``execute()`` and the literal
values extracted from the statement; so after the context has served or
stored a result, this connection class remembers an *alias*: that triple →
the memory-tier key. The next execution with the same triple finds the entry
with two dict lookups and builds the result directly.

An alias is only a pointer: the entry it names is looked up (and its
validity checked) every time; an alias whose entry is gone is a miss that
takes the normal path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.engine.base import Connection
from sqlalchemy.engine.default import DefaultExecutionContext

from querycache.integration.cursor import ReplayCursor
from querycache.integration.drivers import called_from_outside, mark_raw
from querycache.integration.identity import IDENT_KEY
from querycache.invalidation.transactions import STATE_KEY
from querycache.keys import TRUSTED
from querycache.tiers.base import thaw

if TYPE_CHECKING:
    from querycache.integration.engine import EngineBinding

__all__ = ["make_connection_class"]

_INIT_COMPILED = DefaultExecutionContext._init_compiled.__func__  # type: ignore[attr-defined]
_MAX_ALIASES = 50_000


def _alias_key(compiled: Any, parameters: Any, extracted: Any, options: Any) -> Any:
    """The alias of one execution, or None unless every value's type is
    :data:`~querycache.keys.TRUSTED`: the others take the normal path, which
    keys on exact forms of the DBAPI values."""
    params = parameters[0] if parameters else None
    ptypes = tuple([type(v) for v in params.values()]) if params else None
    values = [b.effective_value for b in extracted] if extracted else None
    vtypes = tuple([type(v) for v in values]) if values else None
    if (ptypes and not TRUSTED.issuperset(ptypes)) or (vtypes and not TRUSTED.issuperset(vtypes)):
        return None
    stm = options.get("schema_translate_map")
    return (
        compiled,
        tuple(params.items()) if params else None,
        ptypes,
        tuple(values) if values else None,
        vtypes,
        tuple(stm.items()) if stm else None,
    )


class CachingConnection(Connection):
    """A :class:`~sqlalchemy.engine.Connection` that serves aliased hits."""

    _qc: EngineBinding

    @property
    def connection(self) -> Any:  # type: ignore[override]
        """The pool's DBAPI connection proxy; handed to code outside SQLAlchemy,
        it is marked *raw* until checkin (its reads bypass the cache)."""
        fairy = super().connection
        if called_from_outside(2):
            mark_raw(fairy)
        return fairy

    def _execute_context(  # type: ignore[override]
        self,
        dialect: Any,
        constructor: Any,
        statement: Any,
        parameters: Any,
        execution_options: Any,
        *args: Any,
        **kw: Any,
    ) -> Any:
        if (
            getattr(constructor, "__func__", None) is _INIT_COMPILED
            and len(parameters) <= 1
            and not (self._has_events or self.engine._has_events or self._echo)
        ):
            binding = self._qc
            try:
                akey = _alias_key(statement, parameters, args[3], execution_options)
                key = binding.aliases.get(akey) if akey is not None else None
            except TypeError:  # unhashable parameter values
                akey = key = None
            if key is not None:
                try:
                    result = self._qc_hit(binding, key, statement, execution_options, args)
                except Exception as exc:  # never fail the query: take the normal path
                    binding.core.failed("connection fast path", exc)
                    result = None
                if result is not None:
                    return result
            result = super()._execute_context(
                dialect, constructor, statement, parameters, execution_options, *args, **kw
            )
            if akey is not None:
                stored = getattr(result.context, "_qc_key", None)
                if stored is not None:
                    aliases = binding.aliases
                    if len(aliases) >= _MAX_ALIASES:
                        aliases.clear()
                    aliases[akey] = stored
            return result
        return super()._execute_context(
            dialect, constructor, statement, parameters, execution_options, *args, **kw
        )

    def _qc_hit(
        self, binding: EngineBinding, key: Any, compiled: Any, options: Any, args: Any
    ) -> Any:
        fairy = self._dbapi_connection
        if fairy is None or not binding.fast_ok:
            return None
        info = fairy.info
        # the alias names a key of one result identity: this connection's?
        if STATE_KEY in info or key[0] != info.get(IDENT_KEY):
            return None
        if options and not binding.plain_options(options):
            return None
        trans = self._transaction
        if trans is not None and not trans.is_active:
            return None  # the normal path raises the right error
        entry = binding.memory.get(key)
        if entry is None or binding.verify_left <= 1:
            return None  # at 1, verify samples this hit on the context's path
        binding.verify_left -= 1
        if trans is None:
            self._autobegin()
        cls = binding.context_class
        ctx = cls.__new__(cls)
        ctx.root_connection = self
        ctx._dbapi_connection = fairy
        ctx.dialect = binding.dialect
        ctx.compiled = compiled
        ctx.execution_options = options
        ctx.invoked_statement = args[2]
        ctx.extracted_parameters = args[3]
        ctx.result_column_struct = (
            compiled._result_columns,
            compiled._ordered_columns,
            compiled._textual_ordered_columns,
            compiled._ad_hoc_textual,
            compiled._loose_column_name_matching,
        )
        ctx.is_text = compiled.isplaintext
        rows = thaw(entry.rows) if entry.mutable else entry.rows
        ctx.cursor = ReplayCursor(entry.description, rows, entry.rowcount)
        ctx._is_server_side = bool(options.get("stream_results"))
        ctx._qc_key = key
        next(entry.stats.memory_hit)
        if binding.is_async:
            binding.await_ready()
        return ctx._setup_result_proxy()


def make_connection_class(base: type[Connection], binding: EngineBinding) -> type[Connection]:
    """A per-engine subclass of ``base`` bound to ``binding``."""
    if not issubclass(base, Connection):  # pragma: no cover - defensive
        raise TypeError(f"unexpected connection class {base!r}")
    return type(f"QueryCache{base.__name__}", (CachingConnection, base), {"_qc": binding})
