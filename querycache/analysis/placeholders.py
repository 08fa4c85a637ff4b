"""Lexical pre-pass: placeholders, comments and statement boundaries.

sqlglot cannot parse every paramstyle SQLAlchemy's drivers emit (``%(name)s``,
``%s``, ``:name``...), so before parsing, every bind placeholder outside string
literals, quoted identifiers and comments is rewritten to one form the dialect
parses (``$1`` for PostgreSQL, ``?`` elsewhere). The same pass drops comments,
undoes pyformat's ``%%`` escaping and splits the string at top-level ``;``.
Everything is done with one compiled regular expression per dialect, so the
cost is linear in the length of the input.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# Families the lexer distinguishes; anything else is lexed like "generic".
PG, MYSQL, SQLITE, GENERIC = "postgres", "mysql", "sqlite", "generic"

_SQ_STD = r"'[^']*(?:''[^']*)*'"
_SQ_BACKSLASH = r"'[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*)*'"
_DQ_STD = r'"[^"]*(?:""[^"]*)*"'
_DQ_BACKSLASH = r'"[^"\\]*(?:(?:\\[\s\S]|"")[^"\\]*)*"'
_BACKTICK = r"`[^`]*(?:``[^`]*)*`"
_NAMED = r"(?<![\w:\]\)\"'`$.]):[A-Za-z_][A-Za-z_0-9]*"


def _pattern(family: str) -> re.Pattern[str]:
    parts = [
        r"(?P<lc>--[^\n]*)",
        r"(?P<bc>/\*[\s\S]*?\*/)",
    ]
    if family == MYSQL:
        parts.append(r"(?P<hc>\#[^\n]*)")
    if family == PG:
        parts += [
            r"(?P<dollar>\$\$[\s\S]*?\$\$|(?<![\w$])\$(?P<tag>[A-Za-z_]\w*)\$[\s\S]*?\$(?P=tag)\$)",
            r"(?P<estr>(?<![\w$])[eE]" + _SQ_BACKSLASH + ")",
        ]
    parts.append("(?P<str>" + (_SQ_BACKSLASH if family == MYSQL else _SQ_STD) + ")")
    parts.append("(?P<ident>" + (_DQ_BACKSLASH if family == MYSQL else _DQ_STD) + ")")
    if family != PG:
        parts.append("(?P<btick>" + _BACKTICK + ")")
    parts.append(r"(?P<pyformat>%\([^()\s]*\)s)")
    if family in (PG, MYSQL):
        parts += [r"(?P<pct>%%)", r"(?P<format>%s(?![A-Za-z_0-9]))"]
    parts.append(r"(?P<numeric>\$\d+)")
    if family != PG:
        # in PostgreSQL `?` is a jsonb operator, and no PG driver uses qmark
        parts.append(r"(?P<qmark>\?\d*)")
    parts.append("(?P<named>" + _NAMED + ")")
    if family == SQLITE:
        parts.append(r"(?P<sqlitenamed>(?<![\w$])[@$][A-Za-z_][A-Za-z_0-9]*)")
    parts.append(r"(?P<semi>;)")
    # reached only when the complete forms above failed: an opening with no end
    opened = [r"/\*", "'", '"']
    if family != PG:
        opened.append("`")
    else:
        opened.append(r"(?<![\w$])\$(?:[A-Za-z_]\w*)?\$")
    parts.append("(?P<unterminated>" + "|".join(opened) + ")")
    return re.compile("|".join(parts))


@lru_cache(maxsize=8)
def _compiled(family: str) -> re.Pattern[str]:
    return _pattern(family)


_EXECUTABLE_COMMENT = re.compile(r"/\*!\d*([\s\S]*?)\*/")
_PLACEHOLDER_GROUPS = frozenset({"pyformat", "format", "numeric", "qmark", "named", "sqlitenamed"})


def named_accessor(group: str, token: str) -> Any:
    """The DBAPI accessor a placeholder token names itself: its parameter name
    (``%(name)s``, ``:name``, ``@name``) or its 0-based number (``$3``,
    ``?3``); ``None`` for ``%s`` and ``?``, which count by position."""
    if group == "pyformat":
        return token[2:-2]
    if group == "named" or group == "sqlitenamed":
        return token[1:]
    if group == "numeric" or (group == "qmark" and len(token) > 1):
        return int(token[1:]) - 1
    return None


class Unterminated(ValueError):
    """A comment, string, quoted identifier or dollar quote that never ends:
    the statement cannot be fully read (the analysis then assumes the worst)."""


def family_of(sqlglot_dialect: str | None) -> str:
    """The lexical family for a sqlglot dialect name."""
    if sqlglot_dialect in (PG, MYSQL, SQLITE):
        return sqlglot_dialect
    return GENERIC


def split_statements(sql: str, family: str) -> list[str]:
    """Split ``sql`` into statements with placeholders made parseable.

    Comments are replaced by a space; every bind placeholder becomes ``$1``
    (PostgreSQL) or ``?``; pyformat's ``%%`` becomes ``%``; MySQL executable
    comments (``/*!50001 ... */``) are unwrapped, as MySQL runs them. Empty statements
    (whitespace only) are dropped, so ``""`` and ``"-- hi"`` give ``[]``.
    Raises :class:`Unterminated` for a comment, string or quoted name that
    never ends (SQLite would read one to the end of input; others refuse).
    """
    # sqlglot mis-tokenizes "$1,$2" (it looks like a dollar-quote): pad with spaces
    token = " $1 " if family == PG else "?"
    if family == MYSQL and "/*!" in sql:
        # executable comments are code to MySQL: unwrap them before lexing
        sql = _EXECUTABLE_COMMENT.sub(r" \1 ", sql)
    statements: list[str] = []
    out: list[str] = []
    pos = 0
    for m in _compiled(family).finditer(sql):
        start = m.start()
        if start > pos:
            out.append(sql[pos:start])
        pos = m.end()
        group = m.lastgroup
        if group in ("str", "ident", "btick", "estr", "dollar"):
            out.append(m.group())
        elif group in _PLACEHOLDER_GROUPS:
            out.append(token)
        elif group == "semi":
            _flush(out, statements)
            out = []
        elif group == "pct":
            out.append("%")
        elif group == "unterminated":
            raise Unterminated(f"unterminated {_OPENED.get(m.group()[0], 'dollar quote')}")
        else:  # comments
            out.append(" ")
    if pos < len(sql):
        out.append(sql[pos:])
    _flush(out, statements)
    return statements


_OPENED = {"/": "comment", "'": "string", '"': "quoted identifier", "`": "quoted identifier"}


def _flush(out: list[str], statements: list[str]) -> None:
    text = "".join(out).strip()
    if text:
        statements.append(text)


_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*|\S")


def leading_words(statement: str, n: int = 8) -> list[str]:
    """The first ``n`` words/symbols of a statement, words uppercased.

    Leading parentheses are skipped so ``(SELECT 1) UNION ...`` starts with
    ``SELECT``.
    """
    words: list[str] = []
    for m in _WORD.finditer(statement, 0, min(len(statement), 400)):
        w = m.group()
        if not words and w == "(":
            continue
        words.append(w.upper() if w[0].isalpha() or w[0] == "_" else w)
        if len(words) >= n:
            break
    return words


_ROUGH = re.compile(
    r"(?P<s>'[^']*(?:''[^']*)*')|(?P<q>\"[^\"]*(?:\"\"[^\"]*)*\"|`[^`]*`)"
    r"|(?P<n>(?<![\w$])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<p>\$\d+|\?)|(?P<w>\s+)"
)


def rough_fingerprint(statement: str) -> str:
    """A normalisation for statements sqlglot could not parse.

    Literals and placeholders become ``?``, whitespace collapses, and text
    outside quoted identifiers is lowercased.
    """

    def repl(m: re.Match[str]) -> str:
        kind = m.lastgroup
        if kind in ("s", "n", "p"):
            return "?"
        if kind == "q":
            return m.group()
        return " "

    pieces: list[str] = []
    pos = 0
    for m in _ROUGH.finditer(statement):
        if m.start() > pos:
            pieces.append(statement[pos : m.start()].lower())
        pieces.append(repl(m))
        pos = m.end()
    pieces.append(statement[pos:].lower())
    return "".join(pieces).strip()
