"""Normalised statement text and its stable short id.

The parsed tree is rewritten in place (it is thrown away afterwards):
literals and bind parameters become one placeholder, bind casts added by
psycopg 3 / asyncpg (``$1::VARCHAR``) are dropped, ``IN`` lists, ``ARRAY[...]``
and multi-row ``VALUES`` of placeholders collapse to one element, identifiers
are lowercased and unquoted when that is unambiguous. sqlglot's generator then
fixes keyword case and whitespace, and drops comments.
"""

from __future__ import annotations

import hashlib
import re

from sqlglot import exp
from sqlglot.errors import ErrorLevel

from querycache.analysis.tables import LITERAL_CLASSES, Facts

_SIMPLE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_CONSTANT_TYPES = (*LITERAL_CLASSES, exp.Placeholder, exp.Parameter)


def fingerprint_id(fingerprint: str) -> str:
    """16 hex characters of BLAKE2b over the fingerprint: stable everywhere."""
    return hashlib.blake2b(fingerprint.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _is_constant(node: exp.Expr) -> bool:
    if isinstance(node, _CONSTANT_TYPES):
        return True
    if isinstance(node, (exp.Cast, exp.Neg, exp.Paren)):
        inner = node.this
        return isinstance(inner, exp.Expr) and _is_constant(inner)
    if isinstance(node, exp.Tuple):
        return all(_is_constant(e) for e in node.expressions)
    return False


def _placeholder_like(node: exp.Expr) -> exp.Expr:
    """One placeholder of the same shape (a tuple stays a tuple)."""
    if isinstance(node, exp.Tuple):
        return exp.Tuple(expressions=[exp.Placeholder() for _ in node.expressions])
    return exp.Placeholder()


def _collapse(items: list[exp.Expr]) -> list[exp.Expr] | None:
    if len(items) < 2 or not all(_is_constant(e) for e in items):
        return None
    width = {len(e.expressions) if isinstance(e, exp.Tuple) else -1 for e in items}
    if len(width) != 1:
        return None
    return [_placeholder_like(items[0])]


def normalize(root: exp.Expr, facts: Facts) -> exp.Expr:
    """Rewrite ``root`` in place for fingerprinting; returns the (new) root."""
    for ident in facts.identifiers:
        name = ident.this
        if isinstance(name, str):
            lower = name.lower()
            ident.set("this", lower)
            if ident.quoted and _SIMPLE_IDENT.match(lower):
                ident.set("quoted", False)
    # collapse lists before the constants inside them are replaced, so the
    # shape check still sees literals, casts and tuples
    for node in facts.ins:
        items = node.args.get("expressions")
        if items:
            collapsed = _collapse(items)
            if collapsed is not None:
                node.set("expressions", collapsed)
    for node in facts.arrays:
        collapsed = _collapse(node.expressions)
        if collapsed is not None:
            node.set("expressions", collapsed)
    for node in facts.values:
        collapsed = _collapse(node.expressions)
        if collapsed is not None:
            node.set("expressions", collapsed)
    for func in facts.functions:
        if type(func) is exp.Cast and func.parent is not None and _is_constant(func.this):
            func.replace(exp.Placeholder())
    for neg in facts.negs:
        if neg.parent is not None and _is_constant(neg.this):
            neg.replace(exp.Placeholder())
    for node in facts.literals:
        if node.parent is not None and not isinstance(node.parent, exp.Parameter):
            node.replace(exp.Placeholder())
    for node in facts.params:
        if node.parent is not None and type(node) is not exp.Placeholder:
            node.replace(exp.Placeholder())
        elif node.args:
            node.args.clear()  # a named placeholder (:name) renders as plain ?
    if isinstance(root, _CONSTANT_TYPES):
        return exp.Placeholder()
    return root


def render(root: exp.Expr, dialect: str | None) -> str:
    """Generate normalised SQL text without comments."""
    return root.sql(dialect=dialect, comments=False, unsupported_level=ErrorLevel.IGNORE)
