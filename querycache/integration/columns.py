"""Columns whose values Python cannot compare as the database does, read from its catalog.

:mod:`querycache.invalidation.exact` decides by value alone, soundly for every
column of the ordinary types and collations. A few columns need the catalog
(:func:`read_kinds`, one statement on PostgreSQL, two ``PRAGMA`` per table on
SQLite):

* :data:`~querycache.invalidation.exact.OPAQUE` — equality or order that no
  Python key reproduces: a PostgreSQL nondeterministic collation (ICU,
  ``deterministic = false``: accent- or punctuation-insensitive), ``numeric``
  with a negative scale (``numeric(3, -2)`` stores 60 as 100), the
  ``"char"`` type (keeps one byte) and ``name`` (63 bytes); on SQLite a
  column ``COLLATE`` of the application's own (anything but ``BINARY``,
  ``NOCASE``, ``RTRIM``). An image never knows such a column.
* :data:`~querycache.invalidation.exact.TEXT` — a SQLite column of ``TEXT``
  affinity: a number written to it is stored as its text, and a number
  compared with it compares as text (``'9' >= 10``): an image holds the text.

Only such columns are listed (per table, lower-case names as the analysis
writes them on SQLite; PostgreSQL's as they are), so the result is small.
The integration passes a table's kinds to
:func:`~querycache.invalidation.images.bind_write` and
:meth:`~querycache.integration.preimage.PreImage.image`.
"""

from __future__ import annotations

import re
from typing import Any

import sqlglot
from sqlglot import exp

from querycache.invalidation.exact import OPAQUE, TEXT

__all__ = ["read_kinds"]

_PG_KINDS = """
SELECT c.relname, a.attname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype AND t.typtype = 'd'
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (
    NOT coalesce(co.collisdeterministic, true)
    OR coalesce(b.typname, t.typname) IN ('char', 'name')
    OR (coalesce(b.typname, t.typname) = 'numeric'
        AND (CASE WHEN b.oid IS NULL THEN a.atttypmod ELSE t.typtypmod END) >= 4
        AND ((((CASE WHEN b.oid IS NULL THEN a.atttypmod ELSE t.typtypmod END) - 4)
              & 2047) # 1024) - 1024 < 0)
  )
"""
_PLAIN_COLLATIONS = frozenset({"binary", "nocase", "rtrim"})
_COLLATE = re.compile(r"\bcollate\b", re.IGNORECASE)


def read_kinds(dbapi_connection: Any, dialect_name: str) -> dict[str, dict[str, str]]:
    """Per table, its columns of a kind :func:`~querycache.invalidation.exact.adapt`
    must know (see the module); empty for other dialects."""
    if dialect_name == "postgresql":
        return _postgres(dbapi_connection)
    if dialect_name == "sqlite":
        return _sqlite(dbapi_connection)
    return {}


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _postgres(conn: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for table, column in _rows(conn, _PG_KINDS):
        out.setdefault(str(table).lower(), {})[str(column)] = OPAQUE
    return out


def _affinity(declared: str) -> str:
    """SQLite's affinity rules, in their order (section 3.1 of its datatype page)."""
    t = declared.upper()
    if "INT" in t:
        return "integer"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "text"
    if "BLOB" in t or not t:
        return "blob"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "real"
    return "numeric"


def _sqlite(conn: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    schemas = [str(r[1]) for r in _rows(conn, "PRAGMA database_list")] or ["main"]
    for schema in schemas:
        quoted = '"' + schema.replace('"', '""') + '"'
        master = "sqlite_temp_master" if schema == "temp" else quoted + ".sqlite_master"
        tables = _rows(conn, f"SELECT name, sql FROM {master} WHERE type = 'table'")
        prefix = "" if schema == "main" else schema.lower() + "."
        for name, sql in tables:
            table = '"' + str(name).replace('"', '""') + '"'
            columns = _rows(conn, f"PRAGMA {quoted}.table_xinfo({table})")
            kinds = {
                str(c[1]).lower(): TEXT for c in columns if _affinity(str(c[2] or "")) == "text"
            }
            for column in _collated(str(sql or ""), [str(c[1]) for c in columns]):
                kinds[column] = OPAQUE
            if kinds:
                for key in {str(name).lower(), prefix + str(name).lower()}:
                    out[key] = kinds
    return out


def _collated(sql: str, columns: list[str]) -> set[str]:
    """Columns of a ``CREATE TABLE`` with a collation other than SQLite's own;
    every column when the statement does not parse."""
    if not _COLLATE.search(sql):
        return set()
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception:
        return {c.lower() for c in columns}
    out: set[str] = set()
    for definition in tree.find_all(exp.ColumnDef):
        for constraint in definition.args.get("constraints") or []:
            kind = constraint.args.get("kind")
            if isinstance(kind, exp.CollateColumnConstraint):
                name = kind.this.name if isinstance(kind.this, exp.Expression) else str(kind.this)
                if name.lower() not in _PLAIN_COLLATIONS:
                    out.add(definition.name.lower())
    return out
