"""Analysis of one parsed statement (one element of a possibly multi-statement string)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from functools import lru_cache

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

from querycache.analysis.classify import DDL_KEYWORDS, Part
from querycache.analysis.fingerprint import normalize, render
from querycache.analysis.model import ALL
from querycache.analysis.placeholders import rough_fingerprint
from querycache.analysis.refusal import refusals
from querycache.analysis.tables import walk

_quiet = threading.local()


class _MuteWhileAnalysing(logging.Filter):
    """Drop sqlglot's log records emitted by a thread inside :func:`analyze_parsed`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


logging.getLogger("sqlglot").addFilter(_MuteWhileAnalysing())

_REPLACE = re.compile(r"\s*REPLACE\b", re.IGNORECASE)
_UPDATE_OR = re.compile(r"\s*UPDATE\s+OR\s+(ROLLBACK|ABORT|REPLACE|FAIL|IGNORE)\b", re.IGNORECASE)
_WRITE_NODES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable)


@lru_cache(maxsize=16)
def _dialect(name: str | None) -> Dialect:
    return Dialect.get_or_raise(name)


def parse(text: str, dialect: str | None) -> list[exp.Expr | None]:
    """Parse one statement with sqlglot (call inside :func:`analyze_parsed`).

    Raises ``ValueError`` when the tokenizer left a character it does not
    know (a PostgreSQL backtick...): what it parsed is not what the database reads.
    """
    d = _dialect(dialect)
    tokens = d.tokenize(text)
    if any(t.token_type is TokenType.UNKNOWN for t in tokens):
        raise ValueError("unknown token")
    return d.parser().parse(tokens, text)


class Settings:
    """The analyser settings a statement analysis needs (immutable snapshot)."""

    __slots__ = ("immutable", "never_cache", "views", "volatile")

    def __init__(
        self,
        volatile: frozenset[str],
        immutable: frozenset[str],
        never_cache: frozenset[str],
        views: Mapping[str, frozenset[str]],
    ) -> None:
        self.volatile = volatile
        self.immutable = immutable
        self.never_cache = never_cache
        self.views = views

    def expand(self, tables: frozenset[str]) -> frozenset[str]:
        """``tables`` plus every table the views among them depend on."""
        views = self.views
        if not views or views.keys().isdisjoint(tables):
            return tables
        extra: set[str] = set()
        for name in tables:
            extra.update(views.get(name, ()))
        return tables | extra


def _unparseable(text: str, first: str) -> Part:
    if first in DDL_KEYWORDS:
        return Part("ddl", rough_fingerprint(text), writes=ALL, reason="not a read")
    if first == "TRUNCATE":
        return Part("write", rough_fingerprint(text), writes=ALL, reason="not a read")
    return Part("other", rough_fingerprint(text), writes=ALL, reason="unparseable")


def _temporary(tree: exp.Expr) -> bool:
    if isinstance(tree, exp.Create):
        props = tree.args.get("properties")
        return bool(props and any(isinstance(p, exp.TemporaryProperty) for p in props.expressions))
    into = tree.args.get("into") if isinstance(tree, exp.Select) else None
    return bool(into is not None and (into.args.get("temporary") or into.args.get("unlogged")))


def analyze_parsed(text: str, first: str, dialect: str | None, settings: Settings) -> Part:
    """Parse ``text`` (one statement whose first word is ``first``) and analyse it.

    sqlglot's log output (parser fallbacks, generator warnings) is muted for
    this thread meanwhile.
    """
    _quiet.on = True
    try:
        return _analyze_parsed(text, first, dialect, settings)
    finally:
        _quiet.on = False


def _analyze_parsed(text: str, first: str, dialect: str | None, settings: Settings) -> Part:
    # sqlglot cannot parse `REPLACE INTO t` nor SQLite's `UPDATE OR IGNORE t`;
    # both write exactly like `INSERT INTO t` / `UPDATE t`, so parse those instead
    prefix = ""
    if first == "REPLACE":
        prefix, text = "REPLACE", _REPLACE.sub("INSERT", text, count=1)
    elif first == "UPDATE":
        m = _UPDATE_OR.match(text)
        if m:
            prefix = "UPDATE OR " + m.group(1).upper()
            text = "UPDATE" + text[m.end() :]
    try:
        trees = parse(text, dialect)
    except Exception:  # ParseError, TokenError, RecursionError, anything else
        return _unparseable(text, first)
    if len(trees) != 1 or trees[0] is None or isinstance(trees[0], exp.Command):
        return _unparseable(text, first)
    tree = trees[0]
    facts = walk(tree, dialect)

    writes = ALL if facts.write_all else settings.expand(frozenset(facts.writes))
    reads = settings.expand(frozenset(facts.reads))
    session = False
    reason: str | None = None
    if isinstance(tree, (exp.Create, exp.Drop, exp.Alter, exp.Comment, exp.Grant)):
        kind = "ddl"
        session = _temporary(tree)
    elif isinstance(tree, _WRITE_NODES):
        kind = "write"
    elif isinstance(tree, exp.Copy):
        kind = "write" if tree.args.get("kind") else "read"
        if kind == "read":
            reason = "copy"
    elif isinstance(tree, (exp.Query, exp.Values)):
        kind = "write" if (facts.dml_nodes or facts.writes or facts.write_all) else "read"
        if kind == "write":
            reason = "writable CTE" if facts.dml_nodes else "not a read"
            session = _temporary(tree)
        elif tree.args.get("into") is not None:
            # SELECT ... INTO @var / OUTFILE: sets session variables or files
            reason, session = "select into", True
    else:
        return _unparseable(text, first)

    if kind == "read":
        found = refusals(
            facts, dialect, settings.volatile, settings.immutable, settings.never_cache, reads, text
        )
        session = session or found.session_state
        reason = reason or found.first
    elif reason is None:
        reason = "not a read"

    fingerprint = render(normalize(tree, facts), dialect)
    if prefix:
        word = fingerprint.split(" ", 1)[0]
        fingerprint = prefix + fingerprint[len(word) :]
    return Part(kind, fingerprint, reads, writes, reason, None, session)
