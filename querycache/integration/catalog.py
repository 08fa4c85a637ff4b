"""What the database does behind a statement's back, read from its catalog.

A statement's text names the tables it touches, but the database may touch
more: a view reads its base tables, ``ON DELETE CASCADE`` writes the child
table, a trigger writes whatever its body writes, and a function called from
a ``SELECT`` may write. :func:`read_catalog` collects these once per
database (on the first read or write that may depend on them, and again on
the first such statement after DDL only a read can follow commits, or that
names a relation the catalog has not seen; DDL itself and reads of the
system catalog never trigger a read; a new engine on PostgreSQL reuses the
database's catalog when :mod:`.fingerprint` says nothing changed) on the
statement's own DBAPI connection, never through the cache:

* ``views``: view → tables it reads (added to the reads of its readers);
* ``cascades``: table → tables a write to it may also write (foreign-key
  actions and trigger bodies, transitively);
* ``writes_everything``: tables whose triggers write what we cannot tell;
* ``writer_functions``: function name → tables it may write (``None``: any);
* ``writer_views``: the same for views whose definition calls such a function
  (reading the view runs it);
* ``uncacheable``: relations whose reads are never cached: sequences, and
  views whose definition would not be cacheable as a query of its own (a
  volatile or unknown function hides inside).

On PostgreSQL, table inheritance and partitions count as cascades both ways
(a parent's scan reads its children; a write to the parent may land in a
child), and so do rules: a rule's action may write any relation it names,
and a rule that calls a volatile function may write anything.

Trigger and function bodies are read conservatively: any dynamic SQL means
"may write anything". Calls are followed transitively: a function (of any
volatility or language) that calls a writing function writes what that one
writes, and so does a trigger whose function does (``NEW.n := bump()``), and a
table whose column ``DEFAULT`` (also a domain's) or ``CHECK`` calls one.
Function names match case-insensitively, quoted or not (``"Bump"()``).
Materialized views are tables (changed by REFRESH).

On SQLite every database of the connection is read (``PRAGMA database_list``:
``main``, ``temp`` and attached ones). Objects of an attached database are
named ``aux.t`` as well as ``t`` (an unqualified name may resolve to them);
names inside a non-temp view or trigger resolve in that view's own database.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from querycache.integration.calls import body_writes, call_pattern, called_writes, writer_closure
from querycache.integration.columns import read_kinds
from querycache.integration.ddl import DdlDelta
from querycache.integration.fingerprint import PG_FINGERPRINT, fingerprint_of

__all__ = ["Catalog", "body_writes", "read_catalog"]

_PG_VIEWS = """
SELECT DISTINCT v.relname, t.relname
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_depend d ON d.objid = r.oid
 AND d.classid = 'pg_catalog.pg_rewrite'::regclass
 AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
WHERE v.relkind = 'v' AND t.oid <> v.oid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
_PG_CASCADES = """
SELECT p.relname, c.relname
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_class p ON p.oid = con.confrelid
WHERE con.contype = 'f'
  AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd'))
"""
_PG_TRIGGERS = """
SELECT c.relname, l.lanname, p.prosrc, p.proname
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE NOT t.tgisinternal
"""
_PG_RELATIONS = """
SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
_PG_INHERITS = """
SELECT p.relname, c.relname
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
"""
_PG_RULE_TARGETS = """
SELECT DISTINCT c.relname, t.relname
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_depend d ON d.objid = r.oid
 AND d.classid = 'pg_catalog.pg_rewrite'::regclass
 AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
WHERE r.ev_type <> '1' AND t.oid <> c.oid
"""
_PG_RULE_FUNCTIONS = """
SELECT DISTINCT c.relname
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_depend d ON d.objid = r.oid
 AND d.classid = 'pg_catalog.pg_rewrite'::regclass
 AND d.refclassid = 'pg_catalog.pg_proc'::regclass
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
WHERE r.ev_type <> '1' AND p.provolatile = 'v'
"""
_PG_VIEW_DEFINITIONS = """
SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
_PG_DEFAULTS = """
SELECT c.relname, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
UNION ALL
SELECT c.relname, pg_catalog.pg_get_expr(t.typdefaultbin, 0)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE t.typtype = 'd' AND t.typdefaultbin IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT c.relname, pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
WHERE con.contype = 'c'
"""
_PG_FUNCTIONS = """
SELECT p.proname, l.lanname, p.prosrc, p.provolatile
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


@dataclass
class Catalog:
    """Hidden reads and writes of one database."""

    views: dict[str, set[str]] = field(default_factory=dict)
    cascades: dict[str, set[str]] = field(default_factory=dict)
    writes_everything: set[str] = field(default_factory=set)
    writer_functions: dict[str, set[str] | None] = field(default_factory=dict)
    uncacheable: set[str] = field(default_factory=set)
    #: tables with triggers: a trigger may change the rows a write names
    triggered: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    writer_views: dict[str, set[str] | None] = field(default_factory=dict)
    #: PostgreSQL: what :mod:`.fingerprint` compares before a new engine reuses this
    fingerprint: frozenset[tuple[Any, ...]] | None = None
    #: the scope's DDL epoch when the read began (``QueryCache.discover``)
    epoch: int = -1
    #: per table, its columns whose values only the database compares
    #: (:mod:`.columns`); ``kinds_read``: the tables that reading covered
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    kinds_read: set[str] = field(default_factory=set)
    _function_pattern: re.Pattern[str] | None = None
    _view_pattern: re.Pattern[str] | None = None

    def with_ddl(self, deltas: Iterable[DdlDelta]) -> Catalog | None:
        """A copy that also holds what ``deltas`` created, or None when one of
        them calls a function of this database (only a read can tell)."""
        deltas = list(deltas)
        if any(d.functions & self.functions for d in deltas):
            return None
        new = copy.copy(self)
        new.known = set(self.known)
        new.cascades = {k: set(v) for k, v in self.cascades.items()}
        for d in deltas:
            new.known |= d.known
            for parent, child in d.cascades:
                new.cascades.setdefault(parent, set()).add(child)
        new.missing = self.missing - new.known
        created = set().union(*(d.known for d in deltas)) if deltas else set()
        new.columns = {t: k for t, k in self.columns.items() if t not in created}
        new.kinds_read = self.kinds_read - created  # a table made again: read its kinds again
        return new

    def kinds_of(self, table: str, dbapi_connection: Any, dialect_name: str) -> Any:
        r"""The column kinds of ``table`` (:func:`~.columns.read_kinds`), read
        again on SQLite when the table was created after the last read (its
        ``PRAGMA``\ s cannot disturb the write's transaction); elsewhere such a
        table is compared by value alone until the catalog is read again."""
        if table not in self.kinds_read and table in self.known and dialect_name == "sqlite":
            self.columns.update(read_kinds(dbapi_connection, dialect_name))
            self.kinds_read |= self.known
        return self.columns.get(table)

    def has_news(self, names: frozenset[str]) -> bool:
        """True (once per name) when ``names`` holds a relation this catalog has
        not seen: it was created since, by something querycache did not watch."""
        new = names - self.known - self.missing
        if not new:
            return False
        self.missing |= new
        return True

    def has_new_function(self, name: str) -> bool:
        """Like :meth:`has_news`, for a function name."""
        key = "function " + name
        if name in self.functions or key in self.missing:
            return False
        self.missing.add(key)
        return True

    def expand_writes(self, tables: frozenset[str]) -> frozenset[str] | None:
        """``tables`` plus what writing them may also write (None: anything)."""
        out = set(tables)
        todo = list(tables)
        while todo:
            t = todo.pop()
            if t in self.writes_everything:
                return None
            for nxt in self.cascades.get(t, ()):
                if nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return frozenset(out)

    def functions_written(self, sql: str) -> tuple[bool, frozenset[str] | None]:
        """Whether ``sql`` calls a writing function (or reads a view that does),
        and what it may write."""
        if not self.writer_functions:
            return False, frozenset()
        if self._function_pattern is None:
            self._function_pattern = call_pattern(self.writer_functions)
            names = "|".join(re.escape(n) for n in sorted(self.writer_views, key=len)[::-1])
            if names:
                self._view_pattern = re.compile(
                    rf'(?<![\w$])"?({names})"?(?![\w$"])', re.IGNORECASE
                )
        found: list[tuple[str, dict[str, set[str] | None]]] = [
            (n, self.writer_functions) for n in self._function_pattern.findall(sql)
        ]
        if self._view_pattern is not None:
            found += [(n, self.writer_views) for n in self._view_pattern.findall(sql)]
        written: set[str] = set()
        for name, table in found:
            targets = table.get(name.lower(), set())
            if targets is None:
                return True, None
            written |= targets
        return bool(found), frozenset(written)


def _rows(dbapi_connection: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


_PG_PARTS = {
    "relations": (_PG_RELATIONS, 2),
    "views": (_PG_VIEWS, 2),
    "definitions": (_PG_VIEW_DEFINITIONS, 2),
    "cascades": (_PG_CASCADES, 2),
    "inherits": (_PG_INHERITS, 2),
    "rule_targets": (_PG_RULE_TARGETS, 2),
    "rule_functions": (_PG_RULE_FUNCTIONS, 1),
    "functions": (_PG_FUNCTIONS, 4),
    "triggers": (_PG_TRIGGERS, 4),
    "defaults": (_PG_DEFAULTS, 2),
    "fingerprint": (PG_FINGERPRINT, 4),
}


def _pg_query() -> str:
    """Every part in one statement: one round trip and one snapshot."""
    selects = []
    for part, (sql, width) in _PG_PARTS.items():
        names = [f"c{i}" for i in range(width)]
        cols = [f"{n}::text" for n in names] + ["NULL::text"] * (4 - width)
        selects.append(
            f"SELECT '{part}', {', '.join(cols)} FROM ({sql}) AS {part}({', '.join(names)})"
        )
    return "\nUNION ALL\n".join(selects)


_PG_ALL = _pg_query()


def read_catalog(dbapi_connection: Any, dialect_name: str, analyzer: Any) -> Catalog:
    """Read views, cascades, triggers, writing functions and column kinds of the database."""
    if dialect_name == "postgresql":
        cat = _postgres(dbapi_connection, analyzer)
    elif dialect_name == "sqlite":
        cat = _sqlite(dbapi_connection, analyzer)
    else:
        return Catalog()
    cat.columns = read_kinds(dbapi_connection, dialect_name)
    cat.kinds_read = set(cat.known)
    return cat


def _postgres(conn: Any, analyzer: Any) -> Catalog:
    parts: dict[str, list[tuple[Any, ...]]] = {part: [] for part in _PG_PARTS}
    for part, *row in _rows(conn, _PG_ALL):
        parts[part].append(tuple(row[: _PG_PARTS[part][1]]))
    cat = Catalog(fingerprint=fingerprint_of(parts["fingerprint"]))
    for name, kind in parts["relations"]:
        cat.known.add(str(name).lower())
        if kind == "S":  # a sequence changes behind every nextval()
            cat.uncacheable.add(str(name).lower())
    for view, base in parts["views"]:
        cat.views.setdefault(str(view).lower(), set()).add(str(base).lower())
    definitions = parts["definitions"]
    for view, definition in definitions:
        if not analyzer.analyze(str(definition or ""), "postgresql").cacheable:
            cat.uncacheable.add(str(view).lower())
    for parent, child in parts["cascades"]:
        cat.cascades.setdefault(str(parent).lower(), set()).add(str(child).lower())
    for parent, child in parts["inherits"]:
        parent, child = str(parent).lower(), str(child).lower()
        cat.cascades.setdefault(parent, set()).add(child)
        cat.cascades.setdefault(child, set()).add(parent)
    for table, target in parts["rule_targets"]:
        cat.cascades.setdefault(str(table).lower(), set()).add(str(target).lower())
    for (table,) in parts["rule_functions"]:
        cat.writes_everything.add(str(table).lower())
    functions = parts["functions"]
    for name, *_ in functions:
        cat.functions.add(str(name).lower())
    cat.writer_functions = writer_closure(functions)
    calls = call_pattern(cat.writer_functions) if cat.writer_functions else None
    for table, language, source, function in parts["triggers"]:
        table = str(table).lower()
        cat.triggered.add(table)
        function = str(function).lower()
        if function in cat.functions:  # a function of ours: its closure says it all
            written = cat.writer_functions.get(function, set())
        else:
            written = body_writes(source or "") if language in ("plpgsql", "sql") else None
        if written is None:
            cat.writes_everything.add(table)
        elif written:
            cat.cascades.setdefault(table, set()).update(written)
    if calls is not None:  # views, column defaults and checks calling a writing function
        _writer_views(cat, calls, definitions)
        for table, expression in parts["defaults"]:
            table = str(table).lower()
            written = called_writes(calls, cat.writer_functions, str(expression or ""))
            if written is None:
                cat.writes_everything.add(table)
            elif written:
                cat.cascades.setdefault(table, set()).update(written)
    return cat


def _writer_views(cat: Catalog, calls: re.Pattern[str], definitions: list[Any]) -> None:
    """Views whose definition calls a writing function, also through other views."""
    for view, definition in definitions:
        written = called_writes(calls, cat.writer_functions, str(definition or ""))
        if written is None or written:
            cat.writer_views[str(view).lower()] = written
    grew = bool(cat.writer_views)
    while grew:
        grew = False
        for view, bases in cat.views.items():
            inner = [cat.writer_views[b] for b in bases if b in cat.writer_views]
            current = cat.writer_views.get(view, set())
            if not inner or current is None:
                continue
            new = None if None in inner else current.union(*inner)  # type: ignore[arg-type]
            if new is None or new != current:
                cat.writer_views[view] = new
                grew = True


_TRIGGER = re.compile(
    r"\bon\s+((?:\"[^\"]+\"|\[[^\]]+\]|`[^`]+`|[\w$]+)(?:\s*\.\s*(?:\"[^\"]+\"|[\w$]+))?)"
    r".*?\bbegin\b(.*)\bend\b",
    re.IGNORECASE | re.DOTALL,
)


_VIEW_BODY = re.compile(r"\bas\s+((?:select|with|values)\b.*)$", re.IGNORECASE | re.DOTALL)


def _in_schema(schema: str, names: Any) -> set[str]:
    """Names as seen from inside a non-temp object of ``schema``: SQLite resolves
    them in that object's own database ("t" -> "aux.t"); bare ones are kept."""
    if schema in ("main", "temp"):
        return set(names)
    out = set(names)
    out.update(f"{schema}.{n}" for n in names if "." not in n)
    return out


def _sqlite(conn: Any, analyzer: Any) -> Catalog:
    cat = Catalog()
    schemas = [str(row[1]) for row in _rows(conn, "PRAGMA database_list")] or ["main"]
    for schema in schemas:
        _sqlite_schema(conn, analyzer, cat, schema)
    return cat


def _sqlite_schema(conn: Any, analyzer: Any, cat: Catalog, schema: str) -> None:
    """Read one database (``main``, ``temp`` or an attached one) of the connection."""
    quoted = '"' + schema.replace('"', '""') + '"'
    master = "sqlite_temp_master" if schema == "temp" else quoted + ".sqlite_master"
    rows = _rows(conn, f"SELECT type, name, tbl_name, sql FROM {master} WHERE sql IS NOT NULL")
    prefix = "" if schema == "main" else schema.lower() + "."
    for kind, name, tbl_name, sql in rows:
        name = str(name).lower()
        # an object of an attached database is "aux.t", and also "t" (a bare
        # name may resolve to it); the bare name is the one writes always carry
        if kind in ("table", "view"):
            cat.known.update({name, prefix + name})
        if kind == "view":
            reads = _in_schema(schema, analyzer.analyze(sql, "sqlite").tables_read)
            for key in {name, prefix + name}:
                cat.views.setdefault(key, set()).update(reads - {key})
            body = _VIEW_BODY.search(sql)
            if body is None or not analyzer.analyze(body.group(1), "sqlite").cacheable:
                cat.uncacheable.update({name, prefix + name})
        elif kind == "trigger":
            table = str(tbl_name).lower()  # a write to "aux.t" also writes "t"
            m = _TRIGGER.search(sql)
            cat.triggered.update({table, prefix + table})
            written: set[str] | None = set() if m is not None else None
            for statement in m.group(2).split(";") if m is not None else ():
                if not statement.strip():
                    continue
                w = analyzer.analyze(statement, "sqlite").tables_written
                if not isinstance(w, frozenset):
                    written = None
                    break
                written |= w  # type: ignore[operator]
            if written is None:
                cat.writes_everything.add(table)
            elif written:
                cat.cascades.setdefault(table, set()).update(_in_schema(schema, written))
        elif kind == "table":
            fks = _rows(conn, f'PRAGMA {quoted}.foreign_key_list("{name}")')
            for fk in fks:
                parent, on_update, on_delete = str(fk[2]).lower(), fk[5], fk[6]
                if {str(on_update).upper(), str(on_delete).upper()} & {
                    "CASCADE",
                    "SET NULL",
                    "SET DEFAULT",
                }:
                    cat.cascades.setdefault(parent, set()).update({name, prefix + name})
