"""A write statement in the form the journal keeps: SQL text and DBAPI parameters.

:func:`journal_form` compiles a SQLAlchemy DML construct (or ``text()``) for
the target dialect, evaluates Python-side column defaults, runs the bind
processors, and encodes the result with the cache's codec
(:mod:`querycache.tiers.codec`: typed msgpack, never pickle). What is
journaled is exactly what the driver will be handed at apply time, so a
replay in another process executes the same thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from querycache.tiers.codec import Codec, CodecError

__all__ = ["Record", "decode_record", "journal_form"]

_CODEC = Codec(compress_threshold=4096)
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled write: what the worker executes."""

    sql: str
    #: a dict (named paramstyles) or a tuple (positional ones), DBAPI-ready
    params: dict[str, Any] | tuple[Any, ...]
    dialect: str
    submitted: float

    def encode(self) -> bytes:
        return _CODEC.encode(
            {
                "v": _VERSION,
                "sql": self.sql,
                "p": self.params,
                "d": self.dialect,
                "t": self.submitted,
            }
        )


def decode_record(data: bytes) -> Record:
    """The :class:`Record` of journal bytes (``ValueError`` if malformed)."""
    value = _CODEC.decode(data)
    if not isinstance(value, dict) or value.get("v") != _VERSION:
        raise CodecError("not a write-behind record")
    params = value["p"]
    if not isinstance(params, dict | tuple) or not isinstance(value["sql"], str):
        raise CodecError("malformed write-behind record")
    return Record(value["sql"], params, str(value["d"]), float(value["t"]))


def journal_form(stmt: Any, dialect: Any) -> Record:
    """Compile ``stmt`` for ``dialect`` into a journal :class:`Record`.

    Raises ``TypeError`` for anything without a stable form: not an INSERT,
    UPDATE, DELETE or ``text()``; ``RETURNING`` (the rows would be lost); a
    column default that needs an execution context; a parameter the codec
    cannot round-trip exactly (the message names it).
    """
    if isinstance(stmt, str):
        raise TypeError("submit() takes a SQLAlchemy statement; wrap SQL strings in text()")
    if not isinstance(stmt, UpdateBase | TextClause):
        raise TypeError(
            f"submit() takes an insert(), update(), delete() or text() statement, "
            f"got {type(stmt).__name__}"
        )
    if isinstance(stmt, UpdateBase) and stmt._returning:
        raise TypeError("a write-behind statement cannot use RETURNING: nobody reads its rows")
    compiled, extracted = _compiled(stmt, dialect)
    params = compiled.construct_params(extracted_parameters=extracted)
    for col in (*compiled.insert_prefetch, *compiled.update_prefetch):
        params[col.key] = _default_of(col, stmt)
    processors = compiled._bind_processors
    for name, value in params.items():
        proc = processors.get(name)
        if proc is not None and value is not None:
            params[name] = proc(value)
    for name, value in params.items():
        if isinstance(value, ClauseElement):  # pragma: no cover - defensive
            raise TypeError(f"parameter {name!r} is a SQL expression, not a value")
        try:
            _CODEC.encode(value)
        except CodecError as exc:
            raise TypeError(
                f"parameter {name!r} ({type(value).__name__}) cannot be journaled: {exc}"
            ) from None
    dbapi: dict[str, Any] | tuple[Any, ...]
    if compiled.positional:
        dbapi = tuple(params[name] for name in compiled.positiontup)
    else:  # names may be quoted_name (a str subclass the codec refuses)
        dbapi = {str(name): value for name, value in params.items()}
    return Record(compiled.string, dbapi, dialect.name, time.time())


#: (dialect, SQLAlchemy cache key) -> compiled form, or None when it cannot be reused
_COMPILED: dict[Any, Any] = {}
_MAX_COMPILED = 1000


def _compiled(stmt: Any, dialect: Any) -> tuple[Any, Any]:
    """``stmt`` compiled for ``dialect``, and the bound values to read its
    parameters from: compiled once per statement shape, as SQLAlchemy's own
    statement cache does (a compile is ~0.3 ms, most of a ``submit``). A shape
    whose string depends on its values (expanding ``IN``, literal-rendered
    parameters) is compiled every time."""
    key = cache_key = None
    if dialect._supports_statement_cache:
        cache_key = stmt._generate_cache_key()
        if cache_key is not None:
            key = (dialect, cache_key.key)
            compiled = _COMPILED.get(key)
            if compiled is not None:
                return compiled, cache_key.bindparams
    compiled = dialect.statement_compiler(
        dialect,
        stmt,
        cache_key=cache_key,
        for_executemany=True,
        compile_kwargs={"render_postcompile": True},
    )
    if key is not None and key not in _COMPILED:
        reusable = not (
            getattr(compiled, "post_compile_params", None)
            or getattr(compiled, "literal_execute_params", None)
            or getattr(compiled, "_post_compile_expanded_state", None)
        )
        if reusable:
            if len(_COMPILED) >= _MAX_COMPILED:
                _COMPILED.clear()
            _COMPILED[key] = compiled
    return compiled, None


def _default_of(col: Any, stmt: Any) -> Any:
    default = col.onupdate if stmt.is_update and col.onupdate is not None else col.default
    if default is None:
        return None
    if default.is_scalar:
        return default.arg
    if default.is_callable:
        try:
            return default.arg(None)
        except Exception as exc:
            raise TypeError(
                f"the default of column {col.key!r} needs an execution context; "
                f"give the value in the statement"
            ) from exc
    raise TypeError(f"the default of column {col.key!r} has no value outside the database")
