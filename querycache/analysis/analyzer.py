"""The :class:`Analyzer`: settings, the memo, and combining statements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from querycache.analysis.classify import Part, classify_keywords
from querycache.analysis.fingerprint import fingerprint_id
from querycache.analysis.footprints import footprint_of
from querycache.analysis.inlists import collapse, expand
from querycache.analysis.model import ALL, Analysis, Written
from querycache.analysis.placeholders import (
    Unterminated,
    family_of,
    leading_words,
    split_statements,
)
from querycache.analysis.statement import Settings, analyze_parsed

DIALECTS: Final = MappingProxyType(
    {
        "sqlite": "sqlite",
        "postgresql": "postgres",
        "postgres": "postgres",
        "mysql": "mysql",
        "mariadb": "mysql",
    }
)
"""SQLAlchemy dialect names (and a few aliases) -> sqlglot dialect names."""

DEFAULT_MAX_ENTRIES: Final = 4096
DEFAULT_MAX_SQL_LENGTH: Final = 256 * 1024
# strings longer than this are analysed every time rather than kept in the memo
MEMO_MAX_SQL_LENGTH: Final = 64 * 1024

_RANK = {"read": 0, "transaction": 1, "other": 2, "write": 3, "ddl": 4}
_OP_RANK = ("commit", "rollback", "prepare", "rollback_to", "release", "savepoint", "begin")


def _names(setting: str, value: Any) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{setting} must be an iterable of names (str), not {type(value).__name__}")
    out = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{setting} must contain non-empty names (str), got {item!r}")
        # drop schema qualifiers and quotes: tables and functions match by bare name
        out.add(item.strip().rsplit(".", 1)[-1].strip('"`[] ').lower())
    return frozenset(out)


def _views(value: Any) -> Mapping[str, frozenset[str]]:
    """Validate ``view_dependencies`` and close it transitively."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise TypeError(
            "view_dependencies must be a mapping of view name -> iterable of table names, "
            f"not {type(value).__name__}"
        )
    direct: dict[str, frozenset[str]] = {}
    for view, bases in value.items():
        if not isinstance(view, str) or not view.strip():
            raise TypeError(f"view_dependencies keys must be view names (str), got {view!r}")
        name = next(iter(_names("view_dependencies keys", [view])))
        direct[name] = direct.get(name, frozenset()) | _names(f"view_dependencies[{view!r}]", bases)
    closed: dict[str, frozenset[str]] = {}
    for view in direct:
        seen: set[str] = set()
        todo = list(direct[view])
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(direct.get(name, ()))
        seen.discard(view)
        closed[view] = frozenset(seen)
    return MappingProxyType(closed)


def _count(setting: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{setting} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{setting} must be >= {minimum}, got {value}")
    return value


def _failure(reason: str = "unparseable", fingerprint: str = "") -> Analysis:
    return Analysis(
        "other", fingerprint, fingerprint_id(fingerprint), frozenset(), ALL, False, reason
    )


def _combine(parts: list[Part]) -> Analysis:
    if len(parts) == 1:
        p = parts[0]
        fp = p.fingerprint
        cacheable = p.kind == "read" and p.reason is None
        return Analysis(
            p.kind,  # type: ignore[arg-type]
            fp,
            fingerprint_id(fp),
            p.reads,
            p.writes,
            cacheable,
            None if cacheable else (p.reason or "not a read"),
            p.transaction_op if p.kind == "transaction" else None,  # type: ignore[arg-type]
            p.session_state,
        )
    kind = max((p.kind for p in parts), key=_RANK.__getitem__)
    reads: frozenset[str] = frozenset().union(*(p.reads for p in parts))
    writes: Written
    if any(p.writes is ALL for p in parts):
        writes = ALL
    else:
        writes = frozenset().union(*(p.writes for p in parts))  # type: ignore[arg-type]
    op = None
    if kind == "transaction":
        ops = {p.transaction_op for p in parts}
        op = next(o for o in _OP_RANK if o in ops)
    fp = "; ".join(p.fingerprint for p in parts)
    return Analysis(
        kind,  # type: ignore[arg-type]
        fp,
        fingerprint_id(fp),
        reads,
        writes,
        False,
        "multiple statements",
        op,  # type: ignore[arg-type]
        any(p.session_state for p in parts),
    )


class Analyzer:
    """Analyses SQL strings with a fixed set of settings, memoizing results.

    Settings:

    * ``volatile_functions``: extra function names whose results must never be
      cached (case-insensitive, schema qualifiers ignored);
    * ``immutable_functions``: functions declared safe to cache; this overrides
      both the unknown-function refusal and the built-in volatile list;
    * ``never_cache_tables``: reads touching any of these are never cached;
    * ``view_dependencies``: view name -> names it selects from (views of views
      are resolved transitively); a read of a view also reads its bases;
    * ``max_entries``: size of the LRU memo keyed by ``(sql, dialect)``
      (0 disables it);
    * ``max_sql_length``: longer strings are not parsed but reported as
      ``"other"``/``"unparseable"`` writing :data:`ALL`.

    Instances are thread-safe; :meth:`analyze` never raises.
    """

    __slots__ = ("_memo", "_settings", "max_entries", "max_sql_length")

    def __init__(
        self,
        *,
        volatile_functions: Iterable[str] = (),
        immutable_functions: Iterable[str] = (),
        never_cache_tables: Iterable[str] = (),
        view_dependencies: Mapping[str, Iterable[str]] | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_sql_length: int = DEFAULT_MAX_SQL_LENGTH,
    ) -> None:
        self._settings = Settings(
            _names("volatile_functions", volatile_functions),
            _names("immutable_functions", immutable_functions),
            _names("never_cache_tables", never_cache_tables),
            _views(view_dependencies),
        )
        self.max_entries = _count("max_entries", max_entries, 0)
        self.max_sql_length = _count("max_sql_length", max_sql_length, 1)
        self._memo = lru_cache(maxsize=self.max_entries)(self._compute)

    # -- settings ---------------------------------------------------------------
    @property
    def volatile_functions(self) -> frozenset[str]:
        """User-declared volatile function names (lowercase)."""
        return self._settings.volatile

    @property
    def immutable_functions(self) -> frozenset[str]:
        """User-declared immutable function names (lowercase)."""
        return self._settings.immutable

    @property
    def never_cache_tables(self) -> frozenset[str]:
        """Tables whose reads are never cached (lowercase)."""
        return self._settings.never_cache

    @property
    def view_dependencies(self) -> Mapping[str, frozenset[str]]:
        """View -> every table it depends on, resolved transitively (read-only)."""
        return self._settings.views

    def set_view_dependencies(self, view_dependencies: Mapping[str, Iterable[str]] | None) -> None:
        """Replace ``view_dependencies`` (validated like the constructor's) and clear the memo."""
        s = self._settings
        self._settings = Settings(s.volatile, s.immutable, s.never_cache, _views(view_dependencies))
        self._memo.cache_clear()

    def set_never_cache_tables(self, never_cache_tables: Iterable[str]) -> None:
        """Replace ``never_cache_tables`` (validated like the constructor's) and clear the memo."""
        s = self._settings
        names = _names("never_cache_tables", never_cache_tables)
        self._settings = Settings(s.volatile, s.immutable, names, s.views)
        self._memo.cache_clear()

    def clear(self) -> None:
        """Forget every memoized analysis."""
        self._memo.cache_clear()

    def memo_info(self) -> Any:
        """``functools`` cache statistics of the memo (hits, misses, currsize...)."""
        return self._memo.cache_info()

    # -- analysis ---------------------------------------------------------------
    def analyze(self, sql: str, dialect: str) -> Analysis:
        """Analyse ``sql`` as sent to a database of SQLAlchemy dialect ``dialect``.

        Unknown dialect names use sqlglot's default dialect. Never raises.
        """
        try:
            if len(sql) <= MEMO_MAX_SQL_LENGTH:
                # the settings snapshot is part of the key so a result computed
                # with old settings never answers after set_view_dependencies()
                return self._memo(sql, dialect, self._settings)
            return self._compute(sql, dialect, self._settings)
        except Exception:
            return self._compute(sql, dialect, self._settings)

    def _compute(self, sql: Any, dialect: Any, settings: Settings) -> Analysis:
        try:
            shared = self._from_template(sql, dialect, settings)
            if shared is not None:
                return shared
            analysis = self._analyze(sql, dialect, settings)
            if analysis.cacheable or analysis.kind == "write":
                footprint = footprint_of(sql, dialect)
                if footprint is not None:
                    analysis = replace(analysis, footprint=footprint)
            return analysis
        except RecursionError:
            return _failure()
        except Exception:
            return _failure()

    def _from_template(self, sql: Any, dialect: Any, settings: Settings) -> Analysis | None:
        """One analysis for every length of an ``IN`` list (:mod:`.inlists`)."""
        if not isinstance(sql, str) or not isinstance(dialect, str):
            return None
        if len(sql) > self.max_sql_length or " IN " not in sql.upper():
            return None  # (too long: refused whatever its shape)
        shape = collapse(sql, family_of(DIALECTS.get(dialect.lower())))
        if shape is None:
            return None
        template, mapping = shape
        return expand(self._memo(template, dialect, settings), mapping)

    def _analyze(self, sql: Any, dialect: Any, settings: Settings) -> Analysis:
        if not isinstance(sql, str):
            return _failure()
        if len(sql) > self.max_sql_length:
            return _failure(fingerprint="statement too long")
        name = DIALECTS.get(dialect.lower()) if isinstance(dialect, str) else None
        try:
            statements = split_statements(sql, family_of(name))
        except Unterminated as exc:  # not fully readable: it may write anything
            return _failure(f"unparseable: {exc}")
        if not statements:
            return Analysis(
                "other",
                "",
                fingerprint_id(""),
                frozenset(),
                frozenset(),
                False,
                "empty statement",
            )
        parts = []
        for text in statements:
            words = leading_words(text)
            part = classify_keywords(text, words)
            if part is None:
                part = analyze_parsed(text, words[0], name, settings)
            parts.append(part)
        return _combine(parts)


_default = Analyzer()


def analyze(sql: str, dialect: str) -> Analysis:
    """Analyse ``sql`` with the default :class:`Analyzer` (no user settings)."""
    return _default.analyze(sql, dialect)
