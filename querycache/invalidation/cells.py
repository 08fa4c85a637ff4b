"""Validity cells: the versions that make row-precise invalidation race-free.

A :class:`Cell` stands for one set of rows a cached result depends on; it is
alive until a committed write that may touch those rows *kills* it. Every
entry holds the cells it depends on, and is valid while all of them live.
The cells a result needs are **captured before** its query runs and checked
again when it is stored; a writer kills cells only **after** its commit. So a
result read before a commit can never be stored after it, and killing a cell
makes all its entries unreachable at once, however many there are: the
memory tier reclaims their bytes lazily (``CellRegistry.dead``).

Per scope and table, the cells form groups keyed by the *columns* the
reading statements reference (an ``UPDATE`` that sets none of a group's
columns leaves it alone). Within a group:

* ``every`` — results that depend on every row of the table;
* per column ``c``: a *wildcard* cell held by every result keyed on ``c``,
  killed when a write's image does not know ``c``; one cell per loose value
  (``c = v``, ``c IN (...)``, ``c IS NULL``), killed when an image holds
  ``v``; one cell per range (``lo <= c < hi``), killed when an image holds a
  value that may lie in it.

Each scope also has an *epoch* cell that every entry holds: killing it
invalidates the whole scope (unknown writes, DDL).
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from itertools import islice
from typing import Any

from querycache.analysis.footprints import ReadFootprint
from querycache.invalidation.guards import guards_of, outside, same_truth
from querycache.invalidation.images import Image, in_range, loose, missing, value_of
from querycache.invalidation.joins import kill_joins
from querycache.invalidation.pages import kill_pages, page_spec, swap_in_page

__all__ = ["Cell", "CellRegistry"]

_RANGED = frozenset({int, float, Decimal, str, dt.date, dt.datetime})
#: column groups per table beyond which a new guard binding shares the unguarded group
_MAX_GROUPS = 64


class Cell:
    """Alive until killed. ``keys``: memory-tier keys of entries holding it;
    ``owner``: the counters of the first statement that depended on it."""

    __slots__ = ("dead", "keys", "owner")

    def __init__(self) -> None:
        self.dead = False
        self.keys: set[Any] = set()
        self.owner: Any = None

    def __repr__(self) -> str:
        return f"<Cell {'dead' if self.dead else 'alive'} {len(self.keys)} entries>"


class _Column:
    __slots__ = ("eq", "followed", "joins", "pages", "ranges", "wild")

    def __init__(self) -> None:
        self.wild = Cell()
        self.eq: dict[Any, Cell] = {}
        self.ranges: dict[tuple[tuple[str, Any], ...], Cell] = {}
        #: (other table, its column, its condition) -> results of rows that
        #: join, through this column, rows of the other table meeting it
        self.joins: dict[tuple[str, str, Any], Cell] = {}
        #: (loose values, sort column, bounds, NULLs first) -> full LIMIT pages
        #: of rows with one of the values (:mod:`querycache.invalidation.pages`)
        self.pages: dict[tuple[frozenset[Any], str, Any, bool], Cell] = {}
        #: (other table, its column, its condition column) of the join cells made
        self.followed: set[tuple[str, str, str]] = set()


class _Group:
    __slots__ = ("captured", "columns", "every", "owners")

    def __init__(self) -> None:
        self.every = Cell()
        self.columns: dict[str, _Column] = {}
        self.owners: set[Any] = set()  # counters of the statements using it
        #: a read captured it since the last write to its table looked at it
        self.captured = True

    def held(self) -> list[tuple[str, _Column]]:
        """Its columns some stored result holds (every result keyed on, or
        joined through, a column holds the column's wildcard)."""
        return [(n, c) for n, c in self.columns.items() if c.wild.keys]

    def idle(self) -> bool:
        """Holds no stored result, and no read captured it since the last
        write looked (see :meth:`CellRegistry._prune`)."""
        if self.captured:
            self.captured = False
            return False
        return not self.every.keys and not any(c.wild.keys for c in self.columns.values())


class _Scope:
    __slots__ = ("epoch", "join_specs", "tables")

    def __init__(self) -> None:
        self.epoch = Cell()
        self.tables: dict[str, dict[frozenset[str] | None, _Group]] = {}
        #: per table, :meth:`CellRegistry.join_specs` as last computed; dropped
        #: when a join cell of the table is made or may have gone
        self.join_specs: dict[str, list[tuple[str, str, str, str]]] = {}


class CellRegistry:
    """Every live cell of this process, by scope, table, column group and value.

    ``precise=False`` gives table-level invalidation: footprints are ignored
    and every result depends on every row of each table it reads.
    """

    def __init__(self, precise: bool = True) -> None:
        self.precise = precise
        self.lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self.dead: list[Cell] = []
        #: dicts of cells dropped by a kill, emptied a batch at a time later (so
        #: that a commit does not pay for freeing a column's 200,000 cells)
        self.graveyard: list[dict[Any, Cell]] = []
        self._killed: list[Cell] = []  # during one table's kill, for the report
        self._collect: list[tuple[Any, ...]] | None = None  # keys of killed cells, if asked
        self._table = ""
        #: some join cell was ever made (writes then look for join lookups to do)
        self.joins_seen = False
        self._joins_changed = False  # during one table's kill

    # -- readers ---------------------------------------------------------------
    def capture(
        self,
        scope: str,
        tables: tuple[str, ...],
        footprint: ReadFootprint | None = None,
        params: Any = None,
        owner: Any = None,
    ) -> tuple[Cell, ...]:
        """The cells a result of this execution depends on (before its query)."""
        fps = footprint.tables if footprint is not None and self.precise else None
        with self.lock:
            s = self._scopes.get(scope)
            if s is None:
                s = self._scopes[scope] = _Scope()
            cells = [s.epoch]
            for table in tables:
                fp = fps.get(table) if fps is not None else None
                groups = s.tables.get(table)
                if groups is None:
                    groups = s.tables[table] = {}
                key: Any = fp.columns if fp is not None else None
                if fp is not None and fp.filters:
                    guards = guards_of(fp, params)
                    if guards and ((key, guards) in groups or len(groups) < _MAX_GROUPS):
                        key = (key, guards)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group()
                else:
                    group.captured = True
                if fp is None:
                    got = [group.every]
                elif fp.conds:
                    got = _keyed(group, fp.conds, params)
                else:
                    got = _joined(group, fp, fps, params, s.join_specs, table)  # type: ignore[arg-type]
                    self.joins_seen = self.joins_seen or len(got) > 1
                cells.extend(got)
                if owner is not None:
                    group.owners.add(owner)
                    for cell in got:
                        if cell.owner is None:
                            cell.owner = owner
            return tuple(cells)

    def refine_page(
        self, scope: str, snapshot: tuple[Cell, ...], footprint: Any, params: Any, rows: list[Any]
    ) -> tuple[Cell, ...]:
        """The cells a full ``LIMIT`` page result holds once stored: its value
        cells swapped for a page cell (:mod:`querycache.invalidation.pages`);
        ``snapshot`` itself when that does not apply or a cell of it died."""
        page = footprint.page
        fp = footprint.tables.get(page.table) if self.precise else None
        found = _condition(fp.conds, params) if fp is not None else None
        spec = page_spec(page, params, rows) if found is not None and found[1] == "=" else None
        if spec is None:
            return snapshot
        name, _, keys = found  # type: ignore[misc]
        with self.lock:
            s = self._scopes.get(scope)
            if s is None or any(c.dead for c in snapshot):
                return snapshot
            groups = s.tables.get(page.table, {})
            return swap_in_page(groups.values(), snapshot, name, keys, spec, Cell)

    # -- writers ---------------------------------------------------------------
    def kill(
        self,
        scope: str,
        writes: dict[str, Image | None] | None,
        collect: list[tuple[Any, ...]] | None = None,
    ) -> dict[str, int]:
        """Apply committed writes: per table its image (``None``: unknown rows);
        ``writes=None``: anything in ``scope``. Returns, per table, how many
        entries the write made unreachable (counting cells, not entries).
        ``collect`` receives, per killed cell, (up to 4096 of) its entries' keys."""
        with self.lock:
            self._collect = collect
            try:
                return self._kill(scope, writes)
            finally:
                self._collect = None

    def _kill(self, scope: str, writes: dict[str, Image | None] | None) -> dict[str, int]:
        dropped: dict[str, int] = {}
        s = self._scopes.get(scope)
        if s is None:
            return dropped
        if writes is None:
            self._die(s.epoch)
            s.epoch = Cell()
            return dropped
        for table, image in writes.items():
            groups = s.tables.get(table)
            if groups:
                self._table = table  # for the report (_account)
                image = image if self.precise else None
                dropped[table] = self._kill_table(groups, image, scope.startswith("sqlite"), writes)
                if self._joins_changed:
                    s.join_specs.pop(table, None)
                    self._joins_changed = False
        return dropped

    def kill_all(self) -> None:
        """Every scope's epoch: nothing captured before now can be stored."""
        with self.lock:
            for s in self._scopes.values():
                self._die(s.epoch)
                s.epoch = Cell()

    def keyed_columns(
        self, scope: str, table: str, changed: frozenset[str] | None = None
    ) -> list[str]:
        """Columns of ``table`` that some stored result is keyed on (what a
        pre-image could save). With ``changed`` (an ``UPDATE``'s columns), only
        those of results that reference one of them: :meth:`kill` skips the
        others whatever the image's values, so their keys need no pre-image.

        A column none of whose results is stored any more (evicted, dropped,
        or never admitted) is left out: without its values the write kills
        its wildcard, which drops nothing but results still being read (they
        are then not stored). Every result keyed on a column holds its
        wildcard, so ``wild.keys`` tells."""
        s = self._scopes.get(scope)
        groups = s.tables.get(table) if s is not None else None
        if not groups:
            return []
        with self.lock:
            keyed: set[str] = set()
            for key, g in groups.items():
                columns, guards = key if type(key) is tuple else (key, ())
                if changed is not None and columns is not None and not changed & columns:
                    continue
                live = g.held()
                if not live and not g.every.keys:
                    continue
                keyed.update(n for n, _ in live)
                keyed.update(p[1] for _, c in live for p in c.pages)
                keyed.update(c for c, _ in guards)
            return sorted(keyed)

    def join_specs(self, scope: str, table: str) -> list[tuple[str, str, str, str]]:
        """``(own column, other table, its column, its condition column)`` of
        every live join cell of ``table`` (what a join lookup could save).

        Only of columns some stored result holds: a result holding a join cell
        holds its column's wildcard too, so a column whose wildcard holds no
        entry has no join cell worth a lookup (without one the write kills its
        join cells, which drops nothing stored; a read in flight fails its store)."""
        s = self._scopes.get(scope)
        groups = s.tables.get(table) if s is not None else None
        if not groups:
            return []
        with self.lock:
            known = s.join_specs.get(table)  # type: ignore[union-attr]
            if known is None:
                known = s.join_specs[table] = sorted(  # type: ignore[union-attr]
                    {
                        (name, *followed)
                        for g in groups.values()
                        for name, c in g.columns.items()
                        if c.joins  # (not one per join cell: a write's cost stays small)
                        for followed in c.followed
                    }
                )
            if not known:
                return known
            held = {name for g in groups.values() for name, c in g.held() if c.joins}
            return [k for k in known if k[0] in held]

    def bury(self, budget: int) -> None:
        """Free up to ``budget`` cells of dropped columns."""
        graveyard = self.graveyard
        while budget > 0 and graveyard:
            d = graveyard[-1]
            n = min(budget, len(d))
            for _ in range(n):
                d.popitem()
            budget -= n
            if not d:
                graveyard.pop()

    def _die(self, cell: Cell) -> None:
        cell.dead = True
        if cell.keys:
            if self._collect is not None:  # before reclaim can pop them
                self._collect.append(tuple(islice(cell.keys, 4096)))
            self.dead.append(cell)
            self._killed.append(cell)

    def _account(self, group: _Group, wide: bool, verdicts: dict[Any, bool]) -> int:
        """Note, per statement using ``group``, whether this write dropped
        some of its entries (all of them if ``wide``: every or a wildcard)."""
        killed, self._killed = self._killed, []
        hit = {c.owner for c in killed}
        for owner in group.owners:
            verdicts[owner] = verdicts.get(owner, False) or wide or owner in hit
        return sum(len(c.keys) for c in killed)

    def _count(self, verdicts: dict[Any, bool]) -> None:
        """Once per write and statement (a statement may use several groups)."""
        for owner, dropping in verdicts.items():
            if dropping:
                owner.writes_dropping += 1
                owner.invalidated_by[self._table] += 1
            else:
                owner.writes_skipped += 1

    def _kill_table(
        self,
        groups: dict[frozenset[str] | None, _Group],
        image: Image | None,
        sqlite: bool,
        writes: dict[str, Image | None],
    ) -> int:
        changed = image.changed if image is not None else None
        dropped = 0
        verdicts: dict[Any, bool] = {}
        idle: list[Any] = []
        for key, group in groups.items():
            if group.idle():
                idle.append(key)
            columns, guards = key if type(key) is tuple else (key, ())
            touched = changed & columns if changed is not None and columns is not None else None
            if touched is not None and not touched:
                for owner in group.owners:  # the write changed no column they use
                    verdicts.setdefault(owner, False)
                continue
            if guards and image is not None and outside(guards, image, sqlite):
                for owner in group.owners:  # no row it touched passes their filter
                    verdicts.setdefault(owner, False)
                continue
            if touched is not None and guards and same_truth(touched, guards, image, sqlite):
                for owner in group.owners:  # the filters kept their truth
                    verdicts.setdefault(owner, False)
                continue
            wide = bool(group.every.keys)
            self._die(group.every)
            group.every = Cell()
            for name in list(group.columns):
                column = group.columns[name]
                values = image.values.get(name) if image is not None else None
                if values is None or not self._kill_values(column, values, sqlite):
                    if column.joins:
                        self._joins_changed = True
                    wide = wide or bool(column.wild.keys)
                    self._die(column.wild)  # every cell of the column with it
                    del group.columns[name]
                    self._bury_later(column)
                else:
                    if column.joins:
                        kill_joins(self._die, column.joins, values, sqlite, writes, image)
                        self._joins_changed = self._joins_changed or not column.joins
                    if column.pages:
                        kill_pages(self._die, column.pages, values, image, sqlite)
            dropped += self._account(group, wide, verdicts)
        self._count(verdicts)
        if idle:
            self._prune(groups, idle)
        return dropped

    def _prune(self, groups: dict[Any, _Group], idle: list[Any]) -> None:
        """Forget groups that hold no stored result and that no read captured
        since the previous write looked at them: otherwise every group ever
        made (one per guard binding, per statement) costs every later write a
        check. Every result of a group holds its ``every`` or a column's
        wildcard, so killing those first fails any read still holding the
        group's cells: it is not stored, and later reads make a new group."""
        for key in idle:
            group = groups.pop(key)
            group.every.dead = True
            for column in group.columns.values():
                column.wild.dead = True
                if column.joins:
                    self._joins_changed = True
                self._bury_later(column)

    def _bury_later(self, column: _Column) -> None:
        """A dropped column's large dicts of cells go to the graveyard
        (:meth:`bury` frees them a batch at a time, not in this commit)."""
        if len(column.eq) > 64:
            self.graveyard.append(column.eq)
        if len(column.pages) > 64:
            self.graveyard.append(column.pages)

    def _kill_values(self, column: _Column, values: list[Any], sqlite: bool) -> bool:
        """Kill the cells ``values`` may fall in; False if one cannot be keyed."""
        if column.eq:
            keys = [loose(v) for v in values]
            if any(k is None for k in keys):
                return False
            for k in keys:
                cell = column.eq.pop(k, None)
                if cell is not None:
                    self._die(cell)
        if column.ranges:
            for bounds in list(column.ranges):
                if any(in_range(v, bounds, sqlite) for v in values):
                    self._die(column.ranges.pop(bounds))
        return True


def _condition(conds: Any, params: Any) -> tuple[str, str, Any] | None:
    """The first usable condition of ``conds`` bound to ``params``:
    ``(column, "=", frozenset of loose keys)`` or ``(column, "range", bounds)``."""
    for cond in conds:
        if cond.op == "=":
            keys = []
            for source in cond.values:
                v = value_of(source, params)
                k = None if missing(v) else loose(v)
                if k is None:
                    break
                keys.append(k)
            else:
                return cond.column, "=", frozenset(keys)
    by_column: dict[str, list[tuple[str, Any]]] = {}
    for cond in conds:
        if cond.op == "=" or cond.op == "!=":
            continue
        v = value_of(cond.values[0], params)
        if missing(v) or type(v) not in _RANGED:
            continue
        by_column.setdefault(cond.column, []).append((cond.op, v))
    for name, bounds in by_column.items():
        return name, "range", tuple(sorted(bounds, key=repr))
    return None


def _joined(
    group: _Group, fp: Any, fps: dict[str, Any], params: Any, specs: dict[str, Any], table: str
) -> list[Cell]:
    """A table with no condition of its own, joined to one that has: its rows
    matter only through rows of the other table that meet the condition
    (a new join cell drops ``table``'s computed join ``specs``)."""
    for own, other, other_column in fp.joins:
        target = fps.get(other)
        found = _condition(target.conds, params) if target is not None else None
        if found is None:
            continue
        column = group.columns.get(own)
        if column is None:
            column = group.columns[own] = _Column()
        spec = (other, other_column, found)
        cell = column.joins.get(spec)
        if cell is None:
            cell = column.joins[spec] = Cell()
            column.followed.add((other, other_column, found[0]))
            specs.pop(table, None)
        return [column.wild, cell]
    return [group.every]


def _keyed(group: _Group, conds: Any, params: Any) -> list[Cell]:
    """The cells of the first usable condition, or ``every``."""
    found = _condition(conds, params)
    if found is None:
        return [group.every]
    name, how, arg = found
    column = group.columns.get(name)
    if column is None:
        column = group.columns[name] = _Column()
    if how == "=":
        cells = [column.wild]
        for k in arg:
            cell = column.eq.get(k)
            if cell is None:
                cell = column.eq[k] = Cell()
            cells.append(cell)
        return cells
    cell = column.ranges.get(arg)
    if cell is None:
        cell = column.ranges[arg] = Cell()
    return [column.wild, cell]
