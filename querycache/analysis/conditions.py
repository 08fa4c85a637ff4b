"""The pieces footprints and write specs are read with: placeholders as
named markers, and conjuncts of the form ``column op value``.

A statement's placeholders are rewritten ``:qcp<i>`` before sqlglot parses it
(:func:`markers`), each remembered with its DBAPI accessor (position or
name), so that a condition's value can be bound to one execution's
parameters later (:mod:`querycache.invalidation.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlglot import exp

from querycache.analysis.placeholders import _compiled, named_accessor

__all__ = [
    "SQLGLOT",
    "Cond",
    "Ctx",
    "Source",
    "Src",
    "cond_of",
    "conjuncts",
    "markers",
    "split_between",
    "table_name",
]

#: ``("p", accessor)`` for a DBAPI parameter (index or name), ``("l", value)``
#: for a literal; made by the analysis as a :class:`Src`.
Source = tuple[str, Any]
_FAMILIES = {"sqlite": "sqlite", "postgres": "postgres"}


class Src(tuple):  # type: ignore[type-arg]
    """A :data:`Source` that also carries ``how`` the database reads its value:
    ``(family, casts)`` (:func:`querycache.invalidation.coercion.coerce`).
    Equal to the plain pair, so that it reads (and compares) as one."""

    how: tuple[str, tuple[tuple[str, Any], ...]]

    def __new__(cls, kind: str, ref: Any, how: Any) -> Src:
        self = super().__new__(cls, (kind, ref))
        self.how = how
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (self[0], self[1], self.how)

    def recast(self, cast: tuple[str, Any]) -> Src:
        """The same source read through one more cast."""
        family, casts = self.how
        return Src(self[0], self[1], (family, (*casts, cast)))


Op = Literal["=", "!=", "<", "<=", ">", ">="]

SQLGLOT = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "mysql": "mysql"}
_PREDICATES = (exp.Cast, exp.Connector, exp.Binary, exp.Not, exp.Paren, exp.Is, exp.In)
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}
_CMP = {exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
# casts that hand a parameter's value to the comparison unchanged
_PLAIN_CASTS = frozenset(
    {
        "INT",
        "BIGINT",
        "SMALLINT",
        "TINYINT",
        "VARCHAR",
        "CHAR",
        "NCHAR",
        "NVARCHAR",
        "TEXT",
        "DECIMAL",
        "DOUBLE",
        "FLOAT",
        "BOOLEAN",
        "UUID",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "DATE",
    }
)


@dataclass(frozen=True, slots=True)
class Cond:
    """One conjunct on a column: ``column op value`` (``values`` has one
    source; op ``"!="`` too: never a cell, only a guard), ``column IN
    (values)`` (op ``"="``, several), or ``IS NULL`` (op ``"="``, the literal
    ``None``)."""

    column: str
    op: Op
    values: tuple[Source, ...]


def markers(sql: str, family: str) -> tuple[str | None, list[Any]]:
    """``sql`` with its i-th placeholder written ``:qcp<i>``, and for each the
    DBAPI accessor (positional index or parameter name)."""
    out: list[str] = []
    accessors: list[Any] = []
    pos = 0
    positional = 0
    for m in _compiled(family).finditer(sql):
        out.append(sql[pos : m.start()])
        pos = m.end()
        group, token = m.lastgroup, m.group()
        if group in ("str", "ident", "btick", "estr", "dollar"):
            out.append(token)
            continue
        if group in ("lc", "bc", "hc"):
            out.append(" ")
            continue
        if group == "semi":
            if sql[pos:].strip():
                return None, []  # several statements
            continue
        if group == "pct":
            out.append("%")
            continue
        accessor = named_accessor(group, token)  # type: ignore[arg-type]
        if accessor is None:  # format %s, qmark ?
            accessor = positional
            positional += 1
        accessors.append(accessor)
        out.append(f" :qcp{len(accessors) - 1} ")
    out.append(sql[pos:])
    return "".join(out), accessors


class Ctx:
    __slots__ = ("accessors", "dialect", "family", "fold")

    def __init__(self, accessors: list[Any], dialect: str) -> None:
        self.accessors = accessors
        self.dialect = SQLGLOT.get(dialect)
        self.family = _FAMILIES.get(self.dialect or "", "other")
        # PostgreSQL keeps the case of quoted names; SQLite ignores case
        self.fold = dialect != "postgresql"

    def column(self, ident: Any) -> str:
        name = ident.name if isinstance(ident, exp.Identifier | exp.Column) else str(ident)
        quoted = isinstance(ident, exp.Identifier) and ident.quoted
        if isinstance(ident, exp.Column):
            node = ident.this
            quoted = isinstance(node, exp.Identifier) and node.quoted
        return name if quoted and not self.fold else name.lower()

    def value(self, node: Any) -> Source | None:
        """The source of a value expression, or None when it is not a plain value."""
        while isinstance(node, exp.Paren):
            node = node.this
        casts: tuple[tuple[str, Any], ...] = ()
        if isinstance(node, exp.Cast):
            cast = self.cast_of(node.args.get("to"))
            if cast is None:
                return None
            casts = (cast,)
            node = node.this
        how = (self.family, casts)
        if isinstance(node, exp.Placeholder):
            name = node.name
            if name.startswith("qcp") and name[3:].isdigit():
                index = int(name[3:])
                if index < len(self.accessors):
                    return Src("p", self.accessors[index], how)
            return None
        if isinstance(node, exp.Literal):
            if node.is_string:
                return Src("l", node.this, how)
            return Src("l", _number(node.this), how)
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
            if node.this.is_string:
                return None
            n = _number(node.this.this)
            return None if n is None else Src("l", -n, how)
        if isinstance(node, exp.Boolean):
            return Src("l", bool(node.this), how)
        if isinstance(node, exp.Null):
            return Src("l", None, how)
        return None

    def cast_of(self, to: Any) -> tuple[str, Any] | None:
        """``(type name, integer parameters or None)`` of a cast's target type,
        None when it is not one of the plain types."""
        kind = getattr(getattr(to, "this", None), "name", None)
        if kind not in _PLAIN_CASTS:
            return None
        params: tuple[int, ...] | None = ()
        for p in to.expressions:
            literal = getattr(p, "this", None)
            if not isinstance(literal, exp.Literal) or literal.is_string:
                params = None
                break
            try:
                params = (*params, int(literal.this))  # type: ignore[misc]
            except ValueError:
                params = None
                break
        return kind, params


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return Decimal(text)
        except InvalidOperation:
            return None


def table_name(node: exp.Table) -> str:
    return node.name.lower()


def conjuncts(node: Any) -> list[Any]:
    out: list[Any] = []
    todo = [node]
    while todo:
        n = todo.pop()
        while isinstance(n, exp.Paren):
            n = n.this
        if isinstance(n, exp.And):
            todo.append(n.this)
            todo.append(n.expression)
        elif n is not None:
            out.append(n)
    return out


def cond_of(node: Any, resolve: Any, ctx: Ctx) -> tuple[str, Cond] | None:
    """``(table, Cond)`` for a usable conjunct, else None."""
    cls = type(node)
    if cls in _CMP:
        op = _CMP[cls]
        left, right = node.this, node.expression
        if not isinstance(left, exp.Column):
            left, right = right, left
            op = _FLIP[op]
        if not isinstance(left, exp.Column):
            return None
        source = ctx.value(right)
        if source is None or (source[0] == "l" and source[1] is None):
            return None
        table = resolve(left)
        return None if table is None else (table, Cond(ctx.column(left), op, (source,)))
    if cls is exp.In and isinstance(node.this, exp.Column) and not node.args.get("query"):
        values = [ctx.value(v) for v in node.expressions]
        if not values or any(v is None or (v[0] == "l" and v[1] is None) for v in values):
            return None
        table = resolve(node.this)
        if table is None:
            return None
        return table, Cond(ctx.column(node.this), "=", tuple(values))  # type: ignore[arg-type]
    if (
        cls is exp.Is
        and isinstance(node.this, exp.Column)
        and isinstance(node.expression, exp.Null)
    ):
        table = resolve(node.this)
        return None if table is None else (table, Cond(ctx.column(node.this), "=", (("l", None),)))
    if cls is exp.Between and isinstance(node.this, exp.Column):
        low, high = ctx.value(node.args.get("low")), ctx.value(node.args.get("high"))
        table = resolve(node.this)
        if table is None or low is None or high is None:
            return None
        column = ctx.column(node.this)
        # two conditions on one column; the caller keeps them together
        return table, Cond(column, ">=", (low, high))
    return None


def split_between(cond: Cond) -> list[Cond]:
    if cond.op == ">=" and len(cond.values) == 2:
        return [Cond(cond.column, ">=", cond.values[:1]), Cond(cond.column, "<=", cond.values[1:])]
    return [cond]
