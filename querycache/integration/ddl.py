"""What a committed DDL statement changes in a catalog, when the text says it all.

After DDL commits, the hidden dependencies of the database may have changed,
and the catalog (:mod:`.catalog`) used to be read again. Test suites that
build and drop their schema around every test paid that read (ten catalog
queries on PostgreSQL, on a cold connection) once per test. Most of that DDL
cannot add a hidden dependency, or adds one the statement spells out:

* ``DROP`` of a table, index, sequence, type or view, ``CREATE INDEX``,
  ``CREATE TYPE``: nothing to add. A dependency of something dropped stays in
  the catalog until its next read, and can only make a write invalidate more.
* ``CREATE TABLE`` with columns, keys and constraints: the new name is known,
  and each foreign key with an action (``ON DELETE CASCADE``, ``SET NULL``,
  ``SET DEFAULT``, the same ``ON UPDATE``) makes a write to the parent a write
  to the new table.

Everything else, and anything in these statements that could hide a
dependency (a function of the database's own in a ``DEFAULT`` or ``CHECK``,
an unknown function, ``INHERITS``/``PARTITION OF``/``LIKE``, ``AS SELECT``,
temporary or schema-qualified tables on SQLite, any table property), makes
:func:`ddl_delta` return ``None``: the catalog is read again, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sqlglot
from sqlglot import exp

from querycache.analysis.analyzer import DIALECTS

__all__ = ["DdlDelta", "ddl_delta"]

_NEUTRAL_DROPS = frozenset({"TABLE", "INDEX", "SEQUENCE", "TYPE", "VIEW"})
_NEUTRAL_CREATES = frozenset({"INDEX", "TYPE"})
_ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")
# builtins a server default may call without hiding a write that matters
# (a sequence is never cached: the catalog lists it when a read names it)
_SAFE_ANONYMOUS = frozenset({"nextval"})
_TABLE_PARTS = (
    exp.ColumnDef,
    exp.PrimaryKey,
    exp.ForeignKey,
    exp.UniqueColumnConstraint,
    exp.CheckColumnConstraint,
    exp.Constraint,
)


@dataclass(frozen=True)
class DdlDelta:
    """Relations a DDL statement created, and parent -> child cascades it added.

    ``functions`` are the function names its expressions call: the delta
    holds only if none of them is one of the database's own.
    """

    known: frozenset[str] = frozenset()
    cascades: tuple[tuple[str, str], ...] = ()
    functions: frozenset[str] = field(default_factory=frozenset)


@lru_cache(maxsize=256)
def ddl_delta(sql: str, dialect_name: str) -> DdlDelta | None:
    """The catalog change of one DDL statement, or None (read the catalog)."""
    try:
        trees = sqlglot.parse(sql, read=DIALECTS.get(dialect_name))
    except Exception:
        return None
    if len(trees) != 1 or trees[0] is None:
        return None
    tree = trees[0]
    kind = str(tree.args.get("kind") or "").upper()
    if isinstance(tree, exp.Drop):
        return DdlDelta() if kind in _NEUTRAL_DROPS else None
    if not isinstance(tree, exp.Create):
        return None
    if kind in _NEUTRAL_CREATES:
        return DdlDelta()
    if kind != "TABLE":
        return None
    return _create_table(tree, dialect_name)


def _create_table(tree: exp.Create, dialect_name: str) -> DdlDelta | None:
    schema = tree.this
    if (
        not isinstance(schema, exp.Schema)
        or tree.args.get("expression") is not None
        or tree.args.get("properties") is not None
        or not isinstance(schema.this, exp.Table)
    ):
        return None
    table = schema.this
    if dialect_name == "sqlite" and table.db:
        return None  # an attached or the temp database: named in more than one way
    if not all(isinstance(part, _TABLE_PARTS) for part in schema.expressions):
        return None  # LIKE, and whatever else a table can be built from
    name = table.name.lower()
    cascades = []
    for ref in schema.find_all(exp.Reference):
        parent = ref.find(exp.Table)
        if parent is None or (dialect_name == "sqlite" and parent.db):
            return None
        options = " ".join(str(o) for o in ref.args.get("options") or ()).upper()
        if any(action in options for action in _ACTIONS):
            cascades.append((parent.name.lower(), name))
    functions = set()
    for fn in schema.find_all(exp.Func):
        if isinstance(fn, exp.Anonymous):
            called = str(fn.this).lower()
            if called not in _SAFE_ANONYMOUS:
                return None  # a function we do not know: only the catalog can tell
            functions.add(called)
        else:
            functions.add(fn.sql_name().lower())
    return DdlDelta(frozenset({name}), tuple(cascades), frozenset(functions))
