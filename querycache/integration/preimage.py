"""Pre-images: reading the rows an ``UPDATE``/``DELETE`` is about to touch.

``UPDATE orders SET status = ? WHERE id = ?`` says nothing about the order's
customer or date, so by itself it must drop every cached result keyed on
those columns. Just before such a write runs, in the writer's own
transaction, this module reads the current values of the columns that
cached results are keyed on (``SELECT c1, c2 FROM t WHERE <the same
WHERE>``); with the ``SET`` values they give the write's full image.

The read is only trusted when it saw exactly the rows the write then
touched:

* PostgreSQL: ``SELECT ... FOR UPDATE`` inside the transaction locks the
  rows it read until the transaction ends, so none of them can change or
  stop matching; a row that starts matching in between (a phantom) shows as
  a row count larger than the rows read, and the image is then not used.
  Never under autocommit (the locks would end with the statement).
* SQLite: ``PRAGMA data_version`` is read before the pre-image and after the
  write; once the write ran, this connection holds the write lock, so equal
  versions mean no other connection committed in between.

It is only done when some cached result of this process is keyed on a
column of the table (otherwise the image has nothing to save), for a
single-table ``WHERE`` with no function call or subquery, on a plain table.
Its cost is one extra statement per such write, measured in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from querycache.invalidation.exact import adapt
from querycache.invalidation.images import Image, missing, value_of

__all__ = ["PreImage", "fetch_preimage"]

_MAX_ROWS = 1000
_INT_LIMIT = 2**53
#: leads every pre-image query, so that it is recognisable in the database's logs
MARK = "/* querycache pre-image */ "
_MARKER = re.compile(r"%\(qcp(\d+)\)s|:qcp(\d+)")


class PreImage:
    """The rows read before a write, to be checked after it."""

    __slots__ = ("columns", "part", "rows", "version")

    def __init__(self, columns: list[str], rows: list[Any], version: Any) -> None:
        self.columns = columns
        self.rows = rows
        self.version = version
        self.part: tuple[list[Any], int] | None = None  # where the image goes

    def image(
        self, spec: Any, params: Any, rowcount: int, version: Any, kinds: Any = None
    ) -> Image | None:
        """The write's image, or None if the rows read may not be those written
        (``kinds``: the catalog's column kinds of the table, :func:`adapt`)."""
        if rowcount != len(self.rows) or version != self.version:
            return None
        values: dict[str, list[Any]] = {c: [] for c in self.columns}
        for row in self.rows:
            for c, v in zip(self.columns, row, strict=False):
                values[c].append(v)
        sets = spec.sets or {}
        deltas = spec.deltas or {}
        for c in list(values):
            if c in deltas:
                news = _shifted(values[c], *deltas[c], params)
                if news is None:
                    del values[c]
                else:
                    values[c].extend(news)
            elif c in sets:
                source = sets[c]
                new = value_of(source, params) if source is not None else None
                if source is None or missing(new):
                    del values[c]
                else:
                    values[c].append(new)
        return Image(adapt(values, kinds), spec.changed)


def _shifted(olds: list[Any], op: str, source: Any, params: Any) -> list[Any] | None:
    """Each row's new value of ``SET c = c + v`` (``-``) from its old one: only
    an integer ``v`` added to an integer (exact in the database and here, well
    inside 64 bits) or to a decimal (``numeric``: exact, its scale unchanged,
    so no rounding on assignment); else None (unknown)."""
    v = value_of(source, params)
    if missing(v) or type(v) is not int:
        return None
    out = []
    for old in olds:
        if old is None:
            out.append(None)  # NULL + v is NULL
            continue
        if not (type(old) is int or (type(old) is Decimal and old.is_finite())):
            return None
        new = old + v if op == "+" else old - v
        if type(new) is int and abs(new) >= _INT_LIMIT:
            return None
        out.append(new)
    return out


def fetch_preimage(
    ctx: Any, spec: Any, columns: list[str], postgres: bool, paramstyle: str
) -> PreImage | None:
    """Read ``columns`` of the rows ``spec``'s write will touch (see the module)."""
    cursor = ctx._dbapi_connection.cursor()
    try:
        version = None
        if not postgres:
            cursor.execute("PRAGMA data_version")
            version = cursor.fetchone()[0]
        sql, params = _render(spec, columns, ctx.parameters[0], paramstyle)
        if postgres:
            sql += " FOR UPDATE"
        cursor.execute(sql, params)
        rows = cursor.fetchmany(_MAX_ROWS + 1)
        if len(rows) > _MAX_ROWS:
            return None
        return PreImage(columns, [tuple(r) for r in rows], version)
    finally:
        cursor.close()


def data_version(ctx: Any) -> Any:
    """SQLite's ``PRAGMA data_version`` on the write's connection."""
    cursor = ctx._dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA data_version")
        return cursor.fetchone()[0]
    finally:
        cursor.close()


def _render(spec: Any, columns: list[str], params: Any, style: str) -> tuple[str, Any]:
    """The pre-image query in the driver's paramstyle, with its parameters."""
    listed = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    text = MARK + "SELECT " + listed + spec.fetch[len("SELECT *") :]
    pieces = _MARKER.split(text)
    out: list[str] = []
    values: list[Any] = []
    named: dict[str, Any] = {}
    pct = style in ("format", "pyformat")
    for i in range(0, len(pieces), 3):
        literal = pieces[i]
        out.append(literal.replace("%", "%%") if pct else literal)
        if i + 1 >= len(pieces):
            break
        index = int(pieces[i + 1] or pieces[i + 2])
        accessor = spec.accessors[index]
        value = params[accessor]
        if style in ("named", "pyformat"):
            name = f"qcp{index}"
            named[name] = value
            out.append(f":{name}" if style == "named" else f"%({name})s")
        else:
            values.append(value)
            n = len(values)
            out.append({"qmark": "?", "format": "%s", "numeric": f":{n}"}.get(style, f"${n}"))
    return "".join(out), (named if style in ("named", "pyformat") else tuple(values))
