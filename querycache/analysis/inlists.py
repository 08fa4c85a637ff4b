"""IN lists: one analysis for every length of an expanded ``IN (...)``.

SQLAlchemy expands ``col.in_(values)`` (and every ``selectinload``) into one
placeholder per value, so the same statement arrives as a new SQL string for
each list length: ``IN (%(id_1_1)s, %(id_1_2)s)``, ``IN (%(id_1_1)s, ...,
%(id_1_37)s)``. Each would cost a full parse and analysis (milliseconds) on
the miss path of the user's query, again and again as new lengths appear.

Every such string is the same statement as its *template*, the string with
each list cut down to its first placeholder: same tables, same kind, same
fingerprint (which already writes a list as one ``%s``), and the same
footprint except that a list's condition lists all its placeholders instead
of the first. :func:`collapse` finds the lists (outside strings, quoted names
and comments, with the lexer of :mod:`.placeholders`) and gives the template
and, per placeholder of the template, the placeholders of the real string it
stands for; :func:`expand` turns the template's analysis into the string's.
Anything unexpected gives ``None`` and the string is analysed in full:
a list whose placeholder appears in anything but an ``=``/``IN`` condition, a
write, a list of mixed placeholder styles or casts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from querycache.analysis.conditions import Cond, Src
from querycache.analysis.footprints import ReadFootprint
from querycache.analysis.model import Analysis
from querycache.analysis.placeholders import PG, SQLITE, _compiled, named_accessor

__all__ = ["collapse", "expand"]

_STYLES = frozenset({"pyformat", "format", "numeric", "qmark", "named", "sqlitenamed"})
#: placeholders counted by position (the others carry their name or number)
_IMPLICIT = frozenset({"format", "qmark"})
_OPEN = re.compile(r"\bIN\s*\(\s*\Z", re.IGNORECASE)
#: between two items of a list: an optional cast, then a comma
_GAP = re.compile(
    r"(?P<cast>(?:\s*::\s*[A-Za-z_][A-Za-z_0-9 ]*(?:\(\s*\d+\s*(?:,\s*\d+\s*)?\))?(?:\[\])?)?)"
    r"\s*,\s*\Z"
)
_CLOSE = re.compile(r"\s*\)")

Mapping_ = dict[Any, tuple[Any, ...]]


def collapse(sql: str, family: str) -> tuple[str, Mapping_] | None:
    """``(template, accessors)`` when ``sql`` has an ``IN`` list of two or more
    placeholders; ``accessors`` maps each DBAPI accessor (name or position)
    of the template to those of ``sql`` it stands for. ``None`` otherwise."""
    if family not in (PG, SQLITE) or "(" not in sql:
        return None
    # (start, end, style, accessor) of every token: strings, quoted names and
    # comments too (style None), so that a list broken by one is no list
    tokens: list[tuple[int, int, str | None, Any]] = []
    positional = 0
    for m in _compiled(family).finditer(sql):
        group = m.lastgroup
        if group == "semi" or group == "unterminated":
            return None
        if group not in _STYLES:
            tokens.append((m.start(), m.end(), None, None))
            continue
        style: str = group  # type: ignore[assignment]
        accessor = named_accessor(style, m.group())
        if accessor is None:
            accessor = positional
            positional += 1
        elif type(accessor) is int:
            style = "numbered"  # ($3, ?3: explicit, nothing to shift)
        tokens.append((m.start(), m.end(), style, accessor))
    runs = _runs(sql, tokens)
    if not runs:
        return None
    out: list[str] = []
    pos = 0
    mapping: Mapping_ = {}
    shift = 0  # implicit positions the template has lost so far
    in_run = {i: run for run in runs for i in range(run[0], run[1] + 1)}
    for i, (_, end, style, accessor) in enumerate(tokens):
        if style is None:
            continue
        run = in_run.get(i)
        if run is None:
            key = accessor - shift if style in _IMPLICIT else accessor
            if key in mapping:
                return None  # one name used twice: keep the full analysis simple
            mapping[key] = (accessor,)
            continue
        first, last = run
        if i != first:
            continue
        members = tuple(tokens[k][3] for k in range(first, last + 1))
        key = accessor - shift if style in _IMPLICIT else accessor
        if key in mapping:
            return None
        mapping[key] = members
        out.append(sql[pos:end])
        pos = tokens[last][1]
        if style in _IMPLICIT:
            shift += last - first
    out.append(sql[pos:])
    names = [a for members in mapping.values() for a in members]
    if len(set(names)) != len(names):
        return None  # a list's placeholder also used elsewhere
    return "".join(out), mapping


def _runs(sql: str, tokens: list[Any]) -> list[tuple[int, int]]:
    """``(first, last)`` token indexes of every list of 2+ placeholders of one
    style and one cast, directly inside ``IN (`` ... ``)``."""
    runs = []
    i, n = 0, len(tokens)
    while i < n:
        start, _, style, _ = tokens[i]
        before = tokens[i - 1][1] if i else 0
        if style is None or not _OPEN.search(sql[before:start]):
            i += 1
            continue
        j, gap = i, None
        while j + 1 < n and tokens[j + 1][2] == style:
            between = sql[tokens[j][1] : tokens[j + 1][0]]
            if gap is None:
                if not _GAP.match(between):
                    break
                gap = between
            elif between != gap:
                break
            j += 1
        if j > i and gap is not None:
            cast = _GAP.match(gap).group("cast")  # type: ignore[union-attr]
            tail = sql[tokens[j][1] :]
            if tail.startswith(cast) and _CLOSE.match(tail, len(cast)):
                # the list ends here, after the same cast as every other item
                runs.append((i, j))
        i = j + 1
    return runs


def expand(analysis: Analysis, mapping: Mapping_) -> Analysis | None:
    """The analysis of the real string, from its template's; ``None`` when
    the template's footprint uses a list's placeholder other than in an
    ``=``/``IN`` condition (then the string is analysed in full)."""
    if analysis.kind != "read":
        return None
    footprint = analysis.footprint
    if footprint is None:
        return analysis  # every row: no placeholder to carry over
    if type(footprint) is not ReadFootprint:
        return None
    tables = {}
    for name, table in footprint.tables.items():
        conds = []
        for cond in table.conds:
            values: list[Any] = []
            for source in cond.values:
                got = _sources(source, mapping)
                if got is None or (len(got) > 1 and cond.op != "="):
                    return None
                values.extend(got)
            conds.append(Cond(cond.column, cond.op, tuple(values)))
        tables[name] = replace(table, conds=tuple(conds))
    page = footprint.page
    if page is not None:
        got = _sources(page.limit, mapping)
        if got is None or len(got) != 1:
            return None
        page = replace(page, limit=got[0])
    return replace(analysis, footprint=ReadFootprint(tables, page))


def _sources(source: Any, mapping: Mapping_) -> tuple[Any, ...] | None:
    if source[0] != "p":
        return (source,)
    members = mapping.get(source[1])
    if members is None:
        return None
    how = getattr(source, "how", None)
    if how is None:
        return tuple(("p", a) for a in members)
    return tuple(Src("p", a, how) for a in members)
