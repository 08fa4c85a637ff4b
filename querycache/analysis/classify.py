"""Statements decided by their leading keywords, before (or instead of) parsing.

sqlglot parses transaction control, ``SET``, ``PRAGMA`` and friends
inconsistently across dialects (``SAVEPOINT x`` comes back as an alias,
``SET ROLE`` as an opaque command), so these are recognised here from their
first words. Only statements that may read or write tables are parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from querycache.analysis.model import ALL, Written
from querycache.analysis.placeholders import leading_words, rough_fingerprint


@dataclass(slots=True)
class Part:
    """The analysis of one statement of a (possibly multi-statement) string."""

    kind: str
    fingerprint: str
    reads: frozenset[str] = frozenset()
    writes: Written = frozenset()
    reason: str | None = None
    transaction_op: str | None = None
    session_state: bool = False


# statements that go to sqlglot
PARSED: Final = frozenset(
    {
        "SELECT",
        "WITH",
        "VALUES",
        "TABLE",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "REPLACE",
        "TRUNCATE",
        "COPY",
        "CREATE",
        "ALTER",
        "DROP",
        "COMMENT",
        "GRANT",
        "REVOKE",
        "RENAME",
    }
)
DDL_KEYWORDS: Final = frozenset({"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "RENAME"})
_SESSION: Final = frozenset({"SET", "RESET", "DISCARD", "USE", "ATTACH", "DETACH"})
# statements that neither read cacheable data nor change any table
_QUIET: Final = {
    "SHOW": "metadata",
    "DESCRIBE": "metadata",
    "DESC": "metadata",
    "HELP": "metadata",
    "LISTEN": "notification",
    "UNLISTEN": "notification",
    "NOTIFY": "notification",
    "DEALLOCATE": "prepared statement",
    "DECLARE": "cursor",
    "FETCH": "cursor",
    "MOVE": "cursor",
    "CLOSE": "cursor",
    "CHECKPOINT": "maintenance",
    "VACUUM": "maintenance",
    "ANALYZE": "maintenance",
    "ANALYSE": "maintenance",
    "REINDEX": "maintenance",
    "CLUSTER": "maintenance",
    "OPTIMIZE": "maintenance",
    "CHECK": "maintenance",
    "CHECKSUM": "maintenance",
}
# statements that run code or change data in ways that cannot be traced to tables
_UNRESOLVED: Final = frozenset(
    {
        "CALL",
        "DO",
        "EXECUTE",
        "EXEC",
        "LOCK",
        "UNLOCK",
        "LOAD",
        "HANDLER",
        "XA",
        "REPAIR",
        "IMPORT",
        "SECURITY",
        "FLUSH",
        "KILL",
        "UPSERT",
        "PURGE",
        "RESTORE",
        "INSTALL",
        "UNINSTALL",
        "SHUTDOWN",
        "BACKUP",
        "REASSIGN",
        "ALTER_SYSTEM",
    }
)
# PRAGMAs that take an argument but only report
_QUERY_PRAGMAS: Final = frozenset(
    {
        "TABLE_INFO",
        "TABLE_XINFO",
        "INDEX_LIST",
        "INDEX_INFO",
        "INDEX_XINFO",
        "FOREIGN_KEY_LIST",
        "FOREIGN_KEY_CHECK",
        "INTEGRITY_CHECK",
        "QUICK_CHECK",
        "TABLE_LIST",
    }
)
_EXPLAIN_READS: Final = frozenset({"SELECT", "VALUES", "TABLE"})
_EXPLAIN_TARGETS: Final = PARSED | {"DECLARE", "EXECUTE"}

_REFRESH = re.compile(
    r"\s*REFRESH\s+MATERIALIZED\s+VIEW\s+(?:CONCURRENTLY\s+)?"
    r"((?:\"[^\"]+\"|[\w$]+)(?:\s*\.\s*(?:\"[^\"]+\"|[\w$]+))*)",
    re.IGNORECASE,
)


def _part(kind: str, text: str, **kw: object) -> Part:
    return Part(kind, rough_fingerprint(text), **kw)  # type: ignore[arg-type]


def _transaction(op: str, fingerprint: str) -> Part:
    return Part("transaction", fingerprint, reason="transaction control", transaction_op=op)


def _skip(words: list[str], i: int, *fillers: str) -> int:
    while i < len(words) and words[i] in fillers:
        i += 1
    return i


def _transaction_part(words: list[str], text: str) -> Part | None:
    first = words[0]
    after = words[1] if len(words) > 1 else ""
    if first == "BEGIN" or (first == "START" and after == "TRANSACTION"):
        return _transaction("begin", " ".join(words))
    if first in ("COMMIT", "END"):
        if after == "PREPARED":
            return _part("other", text, writes=ALL, reason="prepared transaction")
        return _transaction("commit", "COMMIT")
    if first in ("ROLLBACK", "ABORT"):
        i = _skip(words, 1, "WORK", "TRANSACTION")
        nxt = words[i] if i < len(words) else ""
        if nxt == "TO":
            return _transaction("rollback_to", "ROLLBACK TO SAVEPOINT ?")
        if nxt == "PREPARED":
            return _part("other", text, reason="prepared transaction")
        return _transaction("rollback", "ROLLBACK")
    if first == "SAVEPOINT":
        return _transaction("savepoint", "SAVEPOINT ?")
    if first == "RELEASE":
        return _transaction("release", "RELEASE SAVEPOINT ?")
    if first == "PREPARE" and after == "TRANSACTION":
        return _transaction("prepare", "PREPARE TRANSACTION ?")
    return None


def _pragma(words: list[str], text: str) -> Part:
    i = 3 if len(words) > 3 and words[2] == "." else 1
    name = words[i] if i < len(words) else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if nxt in ("=", "(") and name not in _QUERY_PRAGMAS:
        return _part("other", text, reason="session setting", session_state=True)
    return _part("other", text, reason="pragma")


def _explain(text: str) -> Part:
    words = leading_words(text, 40)
    analyze = False
    inner = ""
    i = 1
    while i < len(words):
        w = words[i]
        if w in ("ANALYZE", "ANALYSE"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            analyze = nxt not in ("FALSE", "OFF", "0")
        elif w in _EXPLAIN_TARGETS:
            inner = w
            break
        i += 1
    if analyze and inner not in _EXPLAIN_READS:
        # EXPLAIN ANALYZE runs the statement: a write through it writes for real
        return _part("other", text, writes=ALL, reason="explain")
    return _part("other", text, reason="explain")


def _refresh(text: str) -> Part:
    m = _REFRESH.match(text)
    if not m:
        return _part("write", text, writes=ALL, reason="not a read")
    name = re.split(r"\s*\.\s*", m.group(1))[-1].strip('"').lower()
    return _part("write", text, writes=frozenset({name}), reason="not a read")


def classify_keywords(text: str, words: list[str]) -> Part | None:
    """A :class:`Part` for ``text`` decided from its leading ``words``, or
    ``None`` if the statement must be parsed."""
    if not words:
        return _part("other", text, writes=ALL, reason="unparseable")
    first = words[0]
    if first in PARSED:
        return None
    txn = _transaction_part(words, text)
    if txn is not None:
        return txn
    if first in _SESSION:
        return _part("other", text, reason="session setting", session_state=True)
    if first == "PRAGMA":
        return _pragma(words, text)
    if first == "EXPLAIN":
        return _explain(text)
    if first == "PREPARE":
        return _part("other", text, reason="prepared statement")
    if first == "REFRESH":
        return _refresh(text)
    quiet = _QUIET.get(first)
    if quiet is not None:
        return _part("other", text, reason=quiet)
    if first in _UNRESOLVED or first == "START":
        return _part("other", text, writes=ALL, reason="unsupported statement: " + first)
    return _part("other", text, writes=ALL, reason="unparseable")
