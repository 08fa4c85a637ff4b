"""Per-cell version tokens in Redis: row precision in the shared tier.

Besides the per-table token (``qc:{ns}:v:<scope>:<table>``, replaced by writes
whose rows are unknown), each table has, per *group* (the set of columns the
reading statements use, as in :mod:`querycache.invalidation.cells`)::

    ...:<table>|e|<group>               every-row generation: results without a
                                        usable equality (every row, ranges, joins)
    ...:<table>|w|<group>|<col>         wildcard of a keyed column
    ...:<table>|c|<group>|<col>|<value> one value of a keyed column (loose digest)
    ...:<table>|k                       the set of *members*: which groups and
                                        keyed columns readers depend on

An entry keyed on ``col = v`` (or ``IN``) holds the table token, the column's
wildcard and one cell per value; any other entry holds the table token and its
group's every-row generation. A writer with an image of its rows runs one Lua
script (:data:`BUMP`) that reads the member set and, per member whose columns
meet the columns the write changed, replaces the every-row generation, the
cells of the values the image holds (before and after), or the wildcard of a
column the image does not know — and publishes, in the same atomic step. A
writer that finds no member set (never created, or evicted) replaces the table
token: unknown means "may match".

Readers register their member before they query (:data:`REGISTER`: creating
the set replaces the table token, so that entries whose member an eviction
lost die with it) and remember, per member, the table token they registered
under; a different token in a lookup means "register again".
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

from querycache.analysis.footprints import ReadFootprint
from querycache.invalidation.cells import _condition
from querycache.invalidation.images import NULL, Image, loose

__all__ = [
    "BUMP",
    "MAX_READ_VALUES",
    "MAX_WRITE_VALUES",
    "REGISTER",
    "bump_args",
    "keyed_of",
    "reader_keys",
    "safe",
    "value_digest",
]

#: an ``IN`` list longer than this is read as "every row" in Redis
MAX_READ_VALUES = 16
#: a table image with more values than this bumps the table token instead
MAX_WRITE_VALUES = 512

_SAFE = re.compile(r"^[^|:,\s*]+$")

#: ARGV: token base, channel, message, key base, then per table:
#: name, "u" (unknown rows) | "p", changed (",a,b," or "*"), n columns,
#: per column: name, n values, value digests...
BUMP = """
local tok, base = ARGV[1], ARGV[4]
local n = 0
local function bump(key)
  n = n + 1
  redis.call('SET', key, tok .. ':' .. n)
end
local i = 5
while i <= #ARGV do
  local t, kind = ARGV[i], ARGV[i + 1]
  i = i + 2
  if kind == 'u' then
    bump(base .. t)
  else
    local changed, ncols = ARGV[i], tonumber(ARGV[i + 1])
    i = i + 2
    local known = {}
    for _ = 1, ncols do
      local col, nv = ARGV[i], tonumber(ARGV[i + 1])
      i = i + 2
      local ds = {}
      for v = 1, nv do ds[v] = ARGV[i]; i = i + 1 end
      known[col] = ds
    end
    local members = redis.call('SMEMBERS', base .. t .. '|k')
    if #members == 0 then
      bump(base .. t)
    end
    for _, m in ipairs(members) do
      local mk, gid, cols, col = string.match(m, '^(%a)|([^|]*)|([^|]*)|?(.*)$')
      local meets = true
      if mk and changed ~= '*' and cols ~= '*' then
        meets = false
        for c in string.gmatch(cols, '[^,]+') do
          if string.find(changed, ',' .. c .. ',', 1, true) then meets = true; break end
        end
      end
      if meets then
        if mk == 'e' then
          bump(base .. t .. '|e|' .. gid)
        elseif mk == 'k' and col ~= '' then
          local ds = known[col]
          if ds == nil then
            bump(base .. t .. '|w|' .. gid .. '|' .. col)
          else
            for _, d in ipairs(ds) do bump(base .. t .. '|c|' .. gid .. '|' .. col .. '|' .. d) end
          end
        else
          bump(base .. t)
        end
      end
    end
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

#: KEYS: member set, table token; ARGV: fresh token, members... Returns the
#: table token the members are registered under.
REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[2], ARGV[1]) end
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
return redis.call('GET', KEYS[2])
"""


def _digest(text: str, size: int = 8) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


_digests: dict[Any, str | None] = {}


def value_digest(key: Any) -> str | None:
    """The digest of a :func:`~querycache.invalidation.images.loose` key: equal
    for equal keys (``3``, ``Decimal("3.0")``); ``None`` if it cannot be keyed."""
    try:
        return _digests[key]
    except (KeyError, TypeError):
        pass
    got = _value_digest(key)
    if len(_digests) > 100_000:
        _digests.clear()
    try:
        _digests[key] = got  # keys equal as dict keys are equal loose keys
    except TypeError:
        pass
    return got


def _value_digest(key: Any) -> str | None:
    t = type(key)
    if t is int or t is Decimal:
        d = Decimal(key)
        text = "n0" if d == 0 else "n" + str(d.normalize())
    elif t is str:
        text = "s" + key
    elif key == NULL:
        text = "z"
    elif t is tuple and len(key) == 2 and key[0] == "b" and type(key[1]) is bytes:
        text = "b" + key[1].hex()
    else:
        return None
    return _digest(text)


_groups: dict[frozenset[str] | None, tuple[str, str]] = {}


def _group(columns: frozenset[str] | None) -> tuple[str, str]:
    """``(group id, columns as the script reads them)`` of a column set."""
    got = _groups.get(columns)
    if got is None:
        if columns is None:
            got = ("*", "*")
        else:
            names = sorted(columns)
            shown = ",".join(names) if all(_SAFE.match(c) for c in names) else "*"
            got = (_digest(",".join(names), 6), shown)
        if len(_groups) > 10_000:
            _groups.clear()
        _groups[columns] = got
    return got


def reader_keys(
    base: str, tables: tuple[str, ...], footprint: Any, params: Any
) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Token keys (after the generation and epoch) of one execution, and its
    members: ``(table, member, index of the table token in the keys)``."""
    fps = footprint.tables if isinstance(footprint, ReadFootprint) else None
    keys: list[str] = []
    members: list[tuple[str, str, int]] = []
    for table in tables:
        at = len(keys) + 2  # after the generation and epoch keys
        keys.append(base + table)
        if not _SAFE.match(table):
            continue  # writers bump only its table token
        fp = fps.get(table) if fps is not None else None
        gid, shown = _group(fp.columns if fp is not None else None)
        found = _condition(fp.conds, params) if fp is not None and fp.conds else None
        if found is not None and found[1] == "=" and _SAFE.match(found[0]):
            column, _, values = found
            digests = [value_digest(v) for v in values]
            if len(digests) <= MAX_READ_VALUES and None not in digests:
                head = f"{base}{table}|"
                keys.append(f"{head}w|{gid}|{column}")
                keys.extend(f"{head}c|{gid}|{column}|{d}" for d in sorted(digests))  # type: ignore[type-var]
                members.append((table, f"k|{gid}|{shown}|{column}", at))
                continue
        keys.append(f"{base}{table}|e|{gid}")
        members.append((table, f"e|{gid}|{shown}", at))
    return keys, members


def safe(name: str) -> bool:
    """Whether a table or column name can appear in cell keys and members."""
    return bool(_SAFE.match(name))


def keyed_of(members: Any) -> frozenset[str]:
    """The keyed columns named by a member set (``SMEMBERS``)."""
    out = set()
    for m in members:
        text = m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m)
        parts = text.split("|")
        if len(parts) == 4 and parts[0] == "k" and _SAFE.match(parts[3]):
            out.add(parts[3])
    return frozenset(out)


def bump_args(writes: dict[str, Image | None]) -> list[str] | None:
    """The per-table part of :data:`BUMP`'s ARGV; ``None`` when no table has a
    usable image (then a plain table-token replacement does the same)."""
    out: list[str] = []
    precise = False
    for table in sorted(writes):
        image = writes[table]
        if image is None or not _SAFE.match(table):
            out += [table, "u"]
            continue
        if image.changed is None:
            changed = "*"
        elif all(_SAFE.match(c) for c in image.changed):
            changed = "," + ",".join(sorted(image.changed)) + ","
        else:
            changed = "*"
        cols: list[str] = []
        total = 0
        n = 0
        for column, values in image.values.items():
            if not _SAFE.match(column):
                continue  # unknown: readers keyed on it see their wildcard bumped
            digests = {value_digest(loose(v)) for v in values}
            if None in digests:
                continue
            total += len(digests)
            cols += [column, str(len(digests)), *sorted(digests)]  # type: ignore[list-item]
            n += 1
        if total > MAX_WRITE_VALUES:
            out += [table, "u"]
            continue
        precise = True
        out += [table, "p", changed, str(n), *cols]
    return out if precise else None
