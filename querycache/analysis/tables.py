"""One iterative walk over a parsed statement: tables read and written.

The walk keeps, for every node, the set of CTE names in scope (a CTE shadows a
real table only inside the query that defines it) and whether a table reached
from here is read or written. It also collects the nodes the later passes need
(functions, locks, literals, identifiers...), so the tree is walked once.
An explicit stack is used instead of recursion because ORM-generated ``AND``
chains can be thousands of levels deep.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp

READ: Final = 0
WRITE: Final = 1

# what the walker does with a node, decided once per node class
_OTHER, _TABLE, _IDENT, _LITERAL, _PARAM, _FUNC, _QUERY, _DML, _DDL = range(9)
_LOCK, _SAMPLE, _DATATYPE, _COLUMN, _IN, _VALUES, _NEG, _ARRAY = range(9, 17)

_DML_CLASSES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy)
_DDL_CLASSES = (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable, exp.Comment, exp.Grant)
# DDL on these object kinds names tables; on anything else targets are unknown
TABLE_KINDS: Final = frozenset(
    {"TABLE", "VIEW", "INDEX", "MATERIALIZED VIEW", "MATERIALIZED_VIEW", "TEMPORARY TABLE"}
)

# constants that become a placeholder in the fingerprint
LITERAL_CLASSES: Final = (
    exp.Literal,
    exp.ByteString,
    exp.BitString,
    exp.HexString,
    exp.National,
    exp.UnicodeString,
    exp.RawString,
)

_categories: dict[type, int] = {}


def _category(cls: type) -> int:
    cat = _categories.get(cls)
    if cat is not None:
        return cat
    if cls is exp.Table:
        cat = _TABLE
    elif cls is exp.Identifier:
        cat = _IDENT
    elif cls in LITERAL_CLASSES:
        cat = _LITERAL
    elif cls in (exp.Placeholder, exp.Parameter):
        cat = _PARAM
    elif cls is exp.Lock:
        cat = _LOCK
    elif cls is exp.TableSample:
        cat = _SAMPLE
    elif cls in (exp.DataType, exp.DataTypeParam, exp.ObjectIdentifier):
        cat = _DATATYPE
    elif cls is exp.Column:
        cat = _COLUMN
    elif cls is exp.In:
        cat = _IN
    elif cls is exp.Values:
        cat = _VALUES
    elif cls is exp.Neg:
        cat = _NEG
    elif cls is exp.Array:
        cat = _ARRAY
    elif issubclass(cls, _DML_CLASSES):
        cat = _DML
    elif issubclass(cls, _DDL_CLASSES):
        cat = _DDL
    elif issubclass(cls, exp.Func):
        cat = _FUNC
    elif issubclass(cls, exp.Query):
        cat = _QUERY
    else:
        cat = _OTHER
    _categories[cls] = cat
    return cat


class Facts:
    """Everything one walk learns about a statement tree."""

    __slots__ = (
        "arrays",
        "bare_columns",
        "dml_nodes",
        "functions",
        "identifiers",
        "ins",
        "literals",
        "locks",
        "negs",
        "params",
        "reads",
        "reg_types",
        "samples",
        "system_refs",
        "values",
        "write_all",
        "writes",
    )

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.write_all = False
        self.system_refs: list[tuple[str, str]] = []  # (schema, name) of every table read
        self.dml_nodes: list[exp.Expr] = []
        self.functions: list[exp.Func] = []
        self.locks: list[exp.Lock] = []
        self.samples = 0
        self.bare_columns: list[exp.Column] = []
        self.identifiers: list[exp.Identifier] = []
        self.literals: list[exp.Expr] = []
        self.params: list[exp.Expr] = []
        self.ins: list[exp.In] = []
        self.values: list[exp.Values] = []
        self.negs: list[exp.Neg] = []
        self.arrays: list[exp.Array] = []
        self.reg_types: list[str] = []  # PostgreSQL reg* casts: name lookups in the catalog


def _name(node: exp.Expr | None) -> str:
    return node.name.lower() if isinstance(node, exp.Identifier) else ""


def walk(root: exp.Expr, dialect: str | None = None) -> Facts:
    """Collect tables and interesting nodes from ``root`` (parsed for ``dialect``)."""
    facts = Facts()
    sqlite = dialect == "sqlite"
    empty: frozenset[str] = frozenset()
    stack: list[tuple[exp.Expr, frozenset[str], int]] = [(root, empty, READ)]
    push = stack.append
    while stack:
        node, ctes, mode = stack.pop()
        cat = _category(type(node))
        args = node.args
        if cat == _IDENT:
            facts.identifiers.append(node)  # type: ignore[arg-type]
            continue
        if cat == _LITERAL:
            facts.literals.append(node)  # type: ignore[arg-type]
            continue
        if cat == _PARAM:
            facts.params.append(node)
            continue
        if cat == _DATATYPE:
            kind = node.this
            kind = str(getattr(kind, "value", kind)).lower()
            if kind.startswith("reg"):
                facts.reg_types.append(kind)
            continue
        child_mode = mode
        skip: tuple[str, ...] = ()
        if cat == _TABLE:
            _table(node, ctes, mode, facts, sqlite)  # type: ignore[arg-type]
            skip = ("indexed",)  # SQLite INDEXED BY <index>: not a table
            if not isinstance(args.get("this"), exp.Identifier):
                child_mode = READ  # a table-valued function: its arguments are read
        elif cat == _FUNC:
            facts.functions.append(node)  # type: ignore[arg-type]
            child_mode = READ
        elif cat == _QUERY:
            child_mode = READ
            into = args.get("into")
            if into is not None:
                push((into, ctes, WRITE))
                skip = ("into",)
        elif cat == _DML:
            facts.dml_nodes.append(node)
            child_mode = READ
            target = args.get("this")
            if isinstance(node, exp.Copy) and not args.get("kind"):
                pass  # COPY ... TO: the table is read
            elif target is not None:
                push((target, ctes, WRITE))
                skip = ("this",)
            for extra in args.get("tables") or ():  # MySQL multi-table DELETE
                push((extra, ctes, WRITE))
            skip = (*skip, "tables")
        elif cat == _DDL:
            child_mode = WRITE
            _ddl(node, facts)
            if isinstance(node, exp.Drop) and str(args.get("kind") or "").upper() == "INDEX":
                on = args.get("cluster")
                if isinstance(on, exp.OnProperty):
                    push((on.this, ctes, WRITE))
                else:
                    facts.write_all = True  # the table the index was on is unknown
                continue  # an index name is not a table name
        elif cat == _LOCK:
            facts.locks.append(node)  # type: ignore[arg-type]
            continue  # FOR UPDATE OF <alias> names no new table
        elif cat == _SAMPLE:
            facts.samples += 1
        elif cat == _COLUMN:
            if args.get("table") is None:
                facts.bare_columns.append(node)  # type: ignore[arg-type]
        elif cat == _IN:
            facts.ins.append(node)  # type: ignore[arg-type]
        elif cat == _VALUES:
            facts.values.append(node)  # type: ignore[arg-type]
        elif cat == _NEG:
            facts.negs.append(node)  # type: ignore[arg-type]
        elif cat == _ARRAY:
            facts.arrays.append(node)  # type: ignore[arg-type]

        with_ = args.get("with_")
        if with_ is not None:
            ctes = _push_ctes(with_, ctes, push)
            skip = (*skip, "with_")
        # pushed in reverse so nodes pop in source order (first reason = leftmost)
        for key, value in reversed(args.items()):
            if value is None or key in skip:
                continue
            if type(value) is list:
                for item in reversed(value):
                    if isinstance(item, exp.Expr):
                        push((item, ctes, child_mode))
            elif isinstance(value, exp.Expr):
                push((value, ctes, child_mode))
    return facts


def _push_ctes(with_: exp.Expr, outer: frozenset[str], push: object) -> frozenset[str]:
    """Push each CTE body with its own scope; return the scope of the main body."""
    ctes = [c for c in with_.expressions if isinstance(c, exp.CTE)]
    names = [c.alias_or_name.lower() for c in ctes]
    body = outer | frozenset(names)
    recursive = bool(with_.args.get("recursive"))
    for i, cte in enumerate(ctes):
        # without RECURSIVE a CTE sees only the ones before it; its own name
        # there is the real table
        scope = body if recursive else outer | frozenset(names[:i])
        push((cte, scope, READ))  # type: ignore[operator]
    return body


def _table(node: exp.Table, ctes: frozenset[str], mode: int, facts: Facts, sqlite: bool) -> None:
    this = node.args.get("this")
    if not isinstance(this, exp.Identifier):
        return
    name = this.name.lower()
    if not name:
        return
    schema = _name(node.args.get("db"))
    # SQLite: an attached (or the temp) database's table is its own relation,
    # "aux.t"; the bare name is kept too, since an unqualified "t" may resolve
    # to it (temp, main, then attached databases are searched in that order)
    qualified = f"{schema}.{name}" if sqlite and schema and schema != "main" else None
    if mode == WRITE:
        facts.writes.add(name)
        if qualified:
            facts.writes.add(qualified)
        return
    if not schema and name in ctes:
        return
    facts.reads.add(name)
    if qualified:
        facts.reads.add(qualified)
    facts.system_refs.append((schema, name))


def _ddl(node: exp.Expr, facts: Facts) -> None:
    """Mark DDL whose targets cannot be named as writing every table."""
    args = node.args
    if isinstance(node, exp.Grant):
        facts.write_all = True
        return
    kind = str(args.get("kind") or "").upper()
    # a nested Drop/Create is an ALTER action (DROP COLUMN...) on the outer table
    if (
        node.parent is None
        and isinstance(node, (exp.Create, exp.Drop, exp.Alter, exp.Comment))
        and kind not in TABLE_KINDS
    ):
        facts.write_all = True
    # CASCADE drops or changes dependent objects we cannot see
    if args.get("cascade") or str(args.get("option") or "").upper() == "CASCADE":
        facts.write_all = True
