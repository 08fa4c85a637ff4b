"""Which PostgreSQL functions write, and what: bodies and calls, transitively.

A function writes the tables its body names after ``INSERT INTO``, ``UPDATE``,
``DELETE FROM``... (dynamic SQL: anything), plus whatever the writing
functions it calls write. Used by :mod:`querycache.integration.catalog`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["body_writes", "call_pattern", "called_writes", "writer_closure"]

_DML = re.compile(
    r"\b(?:insert\s+into|update|delete\s+from|truncate(?:\s+table)?|merge\s+into|copy)"
    r"\s+(?:only\s+)?((?:\"[^\"]+\"|[a-z_][\w$]*)(?:\s*\.\s*(?:\"[^\"]+\"|[a-z_][\w$]*))?)",
    re.IGNORECASE,
)
_DYNAMIC = re.compile(
    r"\bexecute\b(?!\s+(?:procedure|function)\b)|\bcall\b|\bperform\b", re.IGNORECASE
)


def call_pattern(names: Any) -> re.Pattern[str]:
    """A pattern finding calls of ``names`` (lowercase): ``bump(``, ``"Bump" (``,
    ``public.bump(``; group 1 is the name as written."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf'(?<![\w$])"?({alternatives})"?\s*\(', re.IGNORECASE)


def _name(raw: str) -> str:
    return raw.rsplit(".", 1)[-1].strip().strip('"').lower()


def body_writes(body: str) -> set[str] | None:
    """Tables a plpgsql/SQL body writes, or None when it cannot be told."""
    if _DYNAMIC.search(body):
        return None
    return {_name(m) for m in _DML.findall(body)}


_EXECUTE = re.compile(r"\bexecute\b(?!\s+(?:procedure|function)\b)", re.IGNORECASE)


def called_writes(
    pattern: re.Pattern[str], writers: dict[str, set[str] | None], text: str
) -> set[str] | None:
    """What the writing functions ``text`` calls may write (None: anything)."""
    out: set[str] = set()
    for name in pattern.findall(text):
        targets = writers.get(name.lower(), set())
        if targets is None:
            return None
        out |= targets
    return out


def writer_closure(functions: list[tuple[Any, ...]]) -> dict[str, set[str] | None]:
    """Function name -> tables it may write (None: anything), for every function
    that writes directly or through the functions it calls, transitively.

    ``functions`` rows are ``(name, language, source, volatility)``; overloads
    share a name and are merged. A STABLE or IMMUTABLE function cannot write
    itself, but may call a VOLATILE one that does; dynamic SQL in a
    SQL/plpgsql body, or a VOLATILE function in another language, may write
    anything.
    """
    own: dict[str, set[str] | None] = {}
    sources: dict[str, list[str]] = {}
    for name, language, source, volatility in functions:
        name, source = str(name).lower(), str(source or "")
        sources.setdefault(name, []).append(source)
        if language in ("plpgsql", "sql"):
            if volatility == "v":
                written = body_writes(source)
            else:
                written = None if _EXECUTE.search(source) else set()
        else:
            written = None if volatility == "v" else set()
        before = own.get(name, set())
        own[name] = None if written is None or before is None else before | written
    writers = {n: (None if w is None else set(w)) for n, w in own.items() if w is None or w}
    while writers:  # grows monotonically (None absorbs): terminates
        pattern = call_pattern(writers)
        grew = False
        for name, texts in sources.items():
            current = writers.get(name, set())
            if current is None:
                continue
            new: set[str] | None = set(current)
            for text in texts:
                found = called_writes(pattern, writers, text)
                if found is None:
                    new = None
                    break
                new |= found  # type: ignore[operator]
            if new is None or (new and new != current):
                writers[name] = new
                grew = True
        if not grew:
            break
    return writers
