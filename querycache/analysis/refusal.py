"""Why a read may not be cached: volatile functions, locks, catalogs, samples."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from sqlglot import exp

from querycache.analysis.clock import describe, text_reads_clock
from querycache.analysis.functions import (
    BUILTIN_DETERMINISTIC,
    NOW_WORDS,
    SESSION_FUNCTIONS,
    SQLITE_DATE_FUNCTIONS,
    VOLATILE_CLASSES,
    VOLATILE_NAMES,
    VOLATILE_PREFIXES,
)
from querycache.analysis.tables import Facts

OK, VOLATILE, UNKNOWN, SESSION = range(4)

# unquoted, unqualified words PostgreSQL evaluates as session functions even
# though sqlglot parses them as column references
_PG_KEYWORD_FUNCTIONS: Final = frozenset(
    {"user", "current_role", "session_user", "current_catalog", "current_schema"}
)
_SYSTEM_SCHEMAS: Final = {
    "postgres": frozenset({"pg_catalog", "information_schema", "pg_toast"}),
    "sqlite": frozenset({"information_schema"}),
    "mysql": frozenset({"information_schema", "performance_schema", "mysql", "sys"}),
    None: frozenset({"pg_catalog", "information_schema", "performance_schema"}),
}

_class_names: dict[type, tuple[str, ...]] = {}


def function_names(node: exp.Func) -> tuple[str, ...]:
    """Every lowercase name ``node`` answers to; the first is its display name."""
    cls = type(node)
    if cls is exp.Anonymous:
        return (node.name.lower(),)
    names = _class_names.get(cls)
    if names is None:
        names = VOLATILE_CLASSES.get(cls)
        if names is None:
            try:
                names = tuple(n.lower() for n in cls.sql_names()) or (cls.__name__.lower(),)
            except Exception:
                names = (cls.__name__.lower(),)
        _class_names[cls] = names
    return names


def _arguments(node: exp.Expr) -> Iterable[exp.Expr]:
    for value in node.args.values():
        if type(value) is list:
            yield from (v for v in value if isinstance(v, exp.Expr))
        elif isinstance(value, exp.Expr):
            yield value


def _mentions_now(node: exp.Func) -> bool:
    for arg in _arguments(node):
        if type(arg) is exp.Literal and arg.is_string and arg.name.strip().lower() in NOW_WORDS:
            return True
    return False


def _builtin_verdict(node: exp.Func, name: str, anonymous: bool, dialect: str | None) -> int:
    if anonymous:
        if name in SESSION_FUNCTIONS:
            return SESSION
        if name in VOLATILE_NAMES or name.startswith(VOLATILE_PREFIXES):
            return VOLATILE
    elif type(node) in VOLATILE_CLASSES:
        return VOLATILE
    if _mentions_now(node):
        return VOLATILE
    if anonymous:
        argc = sum(1 for _ in _arguments(node))
        if name == "unix_timestamp" and argc == 0:
            return VOLATILE
        if name == "age" and argc == 1:  # age(x) is measured from current_date
            return VOLATILE
        # SQLite's date functions without a time value mean "now"
        no_time = argc == 0 or (name == "strftime" and argc == 1)
        if dialect == "sqlite" and name in SQLITE_DATE_FUNCTIONS and no_time:
            return VOLATILE
        return OK if name in BUILTIN_DETERMINISTIC or name == "age" else UNKNOWN
    sqlite_date = isinstance(node, (exp.Date, exp.Time, exp.TimeToStr))
    if dialect == "sqlite" and sqlite_date and not node.this:
        return VOLATILE
    return OK


def function_verdict(
    node: exp.Func,
    dialect: str | None,
    volatile: frozenset[str],
    immutable: frozenset[str],
) -> tuple[int, str]:
    """``(verdict, display name)`` for one function call."""
    names = function_names(node)
    if immutable and not immutable.isdisjoint(names):
        return OK, names[0]
    if volatile and not volatile.isdisjoint(names):
        return VOLATILE, names[0]
    return _builtin_verdict(node, names[0], type(node) is exp.Anonymous, dialect), names[0]


def _as_written(node: exp.Func, name: str, text: str) -> str:
    """The alias of a typed function the statement used (``now`` for ``now()``)."""
    names = VOLATILE_CLASSES.get(type(node))
    if names and len(names) > 1 and text:
        lowered = text.lower()
        for alias in names:
            if re.search(r"(?<![\w$])" + alias + r"(?![\w$])", lowered):
                return alias
    return name


def lock_name(lock: exp.Lock) -> str:
    """``FOR UPDATE`` / ``FOR NO KEY UPDATE`` / ``FOR SHARE`` / ``FOR KEY SHARE``."""
    update = bool(lock.args.get("update"))
    key = bool(lock.args.get("key"))
    if update:
        return "FOR NO KEY UPDATE" if key else "FOR UPDATE"
    return "FOR KEY SHARE" if key else "FOR SHARE"


def system_catalog(schema: str, name: str, dialect: str | None) -> str | None:
    """The catalog a table reference belongs to, or None for user tables."""
    if schema and schema in _SYSTEM_SCHEMAS.get(dialect, _SYSTEM_SCHEMAS[None]):
        return schema
    if dialect in ("postgres", None) and name.startswith("pg_") and schema in ("", "public"):
        return "pg_catalog"
    if dialect in ("sqlite", None) and name.startswith(("sqlite_", "pragma_")):
        return name  # pragma_*: SQLite's table-valued PRAGMA functions, also without ()
    return None


_STRING_LITERALS = (exp.National, exp.RawString, exp.ByteString)


def _literal_text(node: exp.Expr, dialect: str | None) -> str | bytes | None:
    """The text a string literal stands for (None for numbers and the like)."""
    cls = type(node)
    if cls is exp.Literal:
        return node.name if node.is_string else None
    if cls in _STRING_LITERALS:
        return node.name
    if cls is exp.UnicodeString:  # U&'n\006Fw': decode the default escapes
        text = node.name
        try:
            return re.sub(
                r"\\(\+[0-9a-fA-F]{6}|[0-9a-fA-F]{4})",
                lambda m: chr(int(m.group(1).lstrip("+"), 16)),
                text,
            )
        except (ValueError, OverflowError):
            return text
    if cls is exp.HexString and dialect in ("sqlite", None):  # X'6e6f77' is the blob "now"
        try:
            return bytes.fromhex(node.name)
        except ValueError:
            return None
    return None


def clock_literal(facts: Facts, dialect: str | None) -> str | None:
    """The first string literal that makes the database read its clock."""
    for node in facts.literals:
        text = _literal_text(node, dialect)
        if text is not None and text_reads_clock(text, dialect):
            return describe(text if isinstance(text, str) else text.decode("latin-1"))
    return None


class Refusals:
    """Reasons found in one statement, in the order they are reported."""

    __slots__ = ("reasons", "session_state")

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.session_state = False

    @property
    def first(self) -> str | None:
        return self.reasons[0] if self.reasons else None


def refusals(
    facts: Facts,
    dialect: str | None,
    volatile: frozenset[str],
    immutable: frozenset[str],
    never_cache: frozenset[str],
    reads: frozenset[str],
    text: str = "",
) -> Refusals:
    """Everything that keeps a read with these ``facts`` out of the cache.

    ``reads`` is the final read set (views expanded), used for never-cache
    tables; ``text`` (the statement) names volatile functions as written.
    """
    found = Refusals()
    volatile_name = unknown_name = None
    for func in facts.functions:
        verdict, name = function_verdict(func, dialect, volatile, immutable)
        if verdict == SESSION:
            found.session_state = True
            volatile_name = volatile_name or name
        elif verdict == VOLATILE and volatile_name is None:
            volatile_name = _as_written(func, name, text)
        elif verdict == UNKNOWN:
            unknown_name = unknown_name or name
    if dialect in ("postgres", None):
        for column in facts.bare_columns:
            ident = column.this
            if isinstance(ident, exp.Identifier) and not ident.quoted:
                word = ident.name.lower()
                if word in _PG_KEYWORD_FUNCTIONS and word not in immutable:
                    volatile_name = volatile_name or word
    if found.session_state:
        found.reasons.append("session setting")
    if facts.locks:
        found.reasons.append("locking clause: " + lock_name(facts.locks[0]))
    for schema, name in facts.system_refs:
        catalog = system_catalog(schema, name, dialect)
        if catalog:
            found.reasons.append("system catalog: " + catalog)
            break
    if never_cache:
        hit = sorted(never_cache.intersection(reads))
        if hit:
            found.reasons.append("never-cache table: " + hit[0])
    if facts.samples:
        found.reasons.append("tablesample")
    if volatile_name:
        found.reasons.append("volatile function: " + volatile_name)
    clock = clock_literal(facts, dialect)
    if clock is not None:
        found.reasons.append("clock value: " + clock)
    if facts.reg_types and dialect in ("postgres", None):
        # 't'::regclass looks a name up in the catalog: no table is read, and
        # the answer changes with DROP/CREATE
        found.reasons.append("catalog lookup: " + facts.reg_types[0])
    if unknown_name:
        found.reasons.append("unknown function: " + unknown_name)
    return found
