"""The values inside a codec payload: msgpack plus a fixed set of extension types.

Every type a SQL driver hands SQLAlchemy (Decimal, datetimes with their
zones, UUIDs, network addresses, big ints, nested tuples...) has an extension
code here and is rebuilt from it exactly; nothing else can be built, so a
payload from a shared store can never name a class to construct. Lists of
equal-length tuples (rows, cursor descriptions) are stored column by column
(see :func:`_column`), so a column of one type decodes with one C-level
``map``. :mod:`querycache.tiers.codec` wraps a payload in the envelope (magic,
version, HMAC, zlib).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
import sys
import uuid
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from itertools import pairwise, repeat
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

__all__ = ["FOREIGN", "PACKERS", "UNPACKERS", "CodecError", "UnsupportedType", "maybe_table"]


class CodecError(ValueError):
    """A value cannot be encoded or decoded (malformed, tampered, wrong key...)."""


class UnsupportedType(CodecError):
    """:meth:`Codec.encode` met a value it cannot restore exactly; do not cache it."""


# Extension type codes and their payloads.
_X_TUPLE = 1  # msgpack array of the items
_X_TABLE = 2  # [is_tuple, nrows, kind, data, kind, data, ...], see _column()
_X_BIGINT = 3  # two's complement, big endian (ints outside msgpack's 64-bit range)
_X_DECIMAL = 4  # ASCII str(d): keeps sign, exponent, NaN payloads
_X_DATE = 5  # u32 proleptic ordinal
_X_TIME = 6  # _TIME struct + tz, see _tz_bytes()
_X_DATETIME = 7  # _DATETIME struct + tz
_X_TIMEDELTA = 8  # i32 days, u32 seconds, u32 microseconds
_X_UUID = 9  # 16 bytes
_X_PG_UUID = 10  # 16 bytes, asyncpg's uuid.UUID subclass
_X_IP = 11  # kind byte (index in _IP_TYPES) + ASCII str(address)

_DATETIME = struct.Struct(">HBBBBBIB")
_TIME = struct.Struct(">BBBIB")
_TIMEDELTA = struct.Struct(">iII")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_US = dt.timedelta(microseconds=1)
_NONE = type(None)
_TUPLES = frozenset({tuple})
_PLAIN = frozenset({_NONE, bool, int, float, str, bytes, list, dict})  # column kind "any"
_FOREIGN = frozenset({msgpack.ExtType, msgpack.Timestamp})  # msgpack would pack these as-is
_DT_FIELDS = attrgetter("year", "month", "day", "hour", "minute", "second", "microsecond")
_TD_FIELDS = attrgetter("days", "seconds", "microseconds")
_TZINFO, _FOLD = attrgetter("tzinfo"), attrgetter("fold")
_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)
_IP_KIND = {t: bytes((i,)) for i, t in enumerate(_IP_TYPES)}
_Ext = msgpack.ExtType


def _pg_uuid_type() -> type | None:
    """asyncpg's UUID class if asyncpg is loaded (no instance can exist otherwise)."""
    return getattr(sys.modules.get("asyncpg.pgproto.pgproto"), "UUID", None)


def _blobs16(blobs: list[bytes]) -> list[bytes]:
    if set(map(len, blobs)) - {16}:
        raise CodecError("bad UUID length")
    return blobs


def _pg_uuids(blobs: list[bytes]) -> list[uuid.UUID]:
    from asyncpg.pgproto.pgproto import UUID  # a fixed class, never a name from the data

    return list(map(UUID, _blobs16(blobs)))


def _fast_uuids(ints: list[int]) -> list[uuid.UUID]:
    # What UUID.__setstate__ does, in C loops: twice as fast as UUID(int=...).
    objs = list(map(object.__new__, repeat(uuid.UUID, len(ints))))
    deque(map(object.__setattr__, objs, repeat("int"), ints), 0)
    deque(map(object.__setattr__, objs, repeat("is_safe"), repeat(uuid.SafeUUID.unknown)), 0)
    return objs


def _fast_uuids_work(n: int = 0xF0E1D2C3B4A5968778695A4B3C2D1E0F) -> bool:
    probe, ref = _fast_uuids([n])[0], uuid.UUID(int=n)
    return uuid.UUID.__slots__ == ("int", "is_safe", "__weakref__") and (
        str(probe),
        hash(probe),
        probe.is_safe,
    ) == (str(ref), hash(ref), ref.is_safe)


# Checked at import so that a future uuid.UUID layout falls back to the constructor.
_uuids_from_ints: Callable[[list[int]], list[uuid.UUID]] = (
    _fast_uuids if _fast_uuids_work() else lambda ints: [uuid.UUID(int=n) for n in ints]
)


def _uuids(blobs: list[bytes]) -> list[uuid.UUID]:
    return _uuids_from_ints(list(map(int.from_bytes, _blobs16(blobs))))


def _tz_bytes(tz: dt.tzinfo | None) -> bytes:
    """0 naive | 1 UTC | 2 + i64 offset in µs | 3 + i64 offset + own name | 4 + ZoneInfo key."""
    if tz is None:
        return b"\x00"
    if tz is dt.UTC:
        return b"\x01"
    if type(tz) is dt.timezone:
        offset, name = tz.utcoffset(None), tz.tzname(None)
        head = _I64.pack(offset // _US)
        if name == dt.timezone(offset).tzname(None):
            return b"\x02" + head
        return b"\x03" + head + name.encode()
    if type(tz) is ZoneInfo and tz.key is not None:
        return b"\x04" + tz.key.encode()
    raise UnsupportedType(f"cannot encode tzinfo {tz!r}: only datetime.timezone and ZoneInfo")


_TZ_FIXED = {b"\x00": None, b"\x01": dt.UTC}
_TZ_CACHE: dict[bytes, dt.tzinfo | None] = dict(_TZ_FIXED)


def _tz_from(data: bytes) -> dt.tzinfo | None:
    if data in _TZ_CACHE:
        return _TZ_CACHE[data]
    tag, rest = data[:1], data[1:]
    tz: dt.tzinfo
    if (tag == b"\x02" and len(rest) == 8) or (tag == b"\x03" and len(rest) >= 8):
        offset = dt.timedelta(microseconds=_I64.unpack_from(rest)[0])
        tz = dt.timezone(offset, rest[8:].decode()) if tag == b"\x03" else dt.timezone(offset)
    elif tag == b"\x04":
        tz = ZoneInfo(rest.decode())
    else:
        raise CodecError("bad time zone")
    if len(_TZ_CACHE) > 512:  # bounded: keys come from the data
        _TZ_CACHE.clear()
        _TZ_CACHE.update(_TZ_FIXED)
    _TZ_CACHE[data] = tz
    return tz


# -- encoding ---------------------------------------------------------------------------------


def _default(o: Any, depth: int) -> _Ext:
    """msgpack ``default``: called (strict_types) for every non-native or subclassed value."""
    t = type(o)
    if t is tuple:
        return _tuple(o, depth)
    if t is Decimal:
        return _Ext(_X_DECIMAL, str(o).encode())
    if t is dt.datetime:
        return _Ext(_X_DATETIME, _DATETIME.pack(*_DT_FIELDS(o), o.fold) + _tz_bytes(o.tzinfo))
    if t is uuid.UUID:
        return _Ext(_X_UUID, o.int.to_bytes(16))
    if t is dt.date:
        return _Ext(_X_DATE, _U32.pack(o.toordinal()))
    if t is dt.time:
        fields = (o.hour, o.minute, o.second, o.microsecond, o.fold)
        return _Ext(_X_TIME, _TIME.pack(*fields) + _tz_bytes(o.tzinfo))
    if t is dt.timedelta:
        return _Ext(_X_TIMEDELTA, _TIMEDELTA.pack(*_TD_FIELDS(o)))
    if t is int:  # only reached when outside msgpack's 64-bit range
        return _Ext(_X_BIGINT, o.to_bytes((o.bit_length() + 8) // 8, signed=True))
    if t in _IP_KIND:
        return _Ext(_X_IP, _IP_KIND[t] + str(o).encode())
    if t is _pg_uuid_type():
        return _Ext(_X_PG_UUID, o.bytes)
    raise UnsupportedType(f"cannot encode {t.__module__}.{t.__qualname__} exactly")


# Tuples and tables nest by packing their contents separately; the depth is bounded
# because each level of decoding takes ~40 KiB of C stack inside msgpack. A small
# initial buffer (it grows) avoids msgpack's 256 KiB malloc per nested packb.
_MAX_DEPTH = 32
_MIN_TABLE_ROWS = 2  # measured: for a single row a plain tuple is faster both ways
_PACKERS = [
    partial(msgpack.packb, default=partial(_default, depth=depth), strict_types=True, buf_size=4096)
    for depth in range(_MAX_DEPTH + 1)
]


def _tuple(o: tuple[Any, ...], depth: int) -> _Ext:
    if depth >= _MAX_DEPTH:
        raise UnsupportedType(f"tuples nested more than {_MAX_DEPTH} deep")
    types = set(map(type, o))
    if types == _TUPLES and (table := _table(o, True, depth)) is not None:
        return table
    if types & _FOREIGN:
        raise UnsupportedType("msgpack ExtType/Timestamp values are not supported")
    if list in types:  # a list of rows directly in a tuple, as in (description, rows)
        o = [_maybe_table(x, depth + 1) if type(x) is list else x for x in o]
    return _Ext(_X_TUPLE, _PACKERS[depth + 1](list(o)))


def _maybe_table(o: list[Any], depth: int) -> Any:
    if o and set(map(type, o)) == _TUPLES and (table := _table(o, False, depth)) is not None:
        return table
    return o


def _table(rows: Any, is_tuple: bool, depth: int) -> _Ext | None:
    if len(rows) < _MIN_TABLE_ROWS or len(set(map(len, rows))) != 1 or depth >= _MAX_DEPTH:
        return None
    out: list[Any] = [is_tuple, len(rows)]
    for col in zip(*rows):
        out += _column(col)
    return _Ext(_X_TABLE, _PACKERS[depth + 1](out))


def _datetimes(values: Any) -> list[Any] | None:
    if len(set(map(id, map(_TZINFO, values)))) != 1 or any(map(_FOLD, values)):
        return None  # mixed zones or fold=1: per value (bulk decoding cannot pass fold)
    tz = values[0].tzinfo
    return [_tz_bytes(tz), *map(list, zip(*map(_DT_FIELDS, values)))]


# Column kinds: 0 is "any", as values; the others hold [null positions, bulk data].
_C_ANY, _C_DECIMAL, _C_DATETIME, _C_DATE, _C_TIMEDELTA, _C_UUID, _C_PG_UUID = range(7)
_COLUMN_ENCODERS: dict[type, tuple[int, Callable[[Any], Any]]] = {
    Decimal: (_C_DECIMAL, lambda vs: list(map(str, vs))),
    dt.datetime: (_C_DATETIME, _datetimes),
    dt.date: (_C_DATE, lambda vs: list(map(dt.date.toordinal, vs))),
    dt.timedelta: (_C_TIMEDELTA, lambda vs: list(map(list, zip(*map(_TD_FIELDS, vs))))),
    uuid.UUID: (_C_UUID, lambda vs: [v.int.to_bytes(16) for v in vs]),
}


def _column(col: tuple[Any, ...]) -> tuple[int, Any]:
    types = set(map(type, col))
    if types <= _PLAIN:
        return _C_ANY, list(col)
    nullable = _NONE in types
    types.discard(_NONE)
    if types & _FOREIGN:
        raise UnsupportedType("msgpack ExtType/Timestamp values are not supported")
    if len(types) == 1:
        (t,) = types
        spec = _COLUMN_ENCODERS.get(t)
        if spec is None and t is _pg_uuid_type():
            spec = (_C_PG_UUID, lambda vs: [v.bytes for v in vs])
        if spec is not None:
            kind, encode = spec
            data = encode([v for v in col if v is not None] if nullable else col)
            if data is not None:
                return kind, [[i for i, v in enumerate(col) if v is None], data]
    return _C_ANY, list(col)


# -- decoding ---------------------------------------------------------------------------------


def _check(data: Any, t: type | None, parts: int = 0) -> Any:
    """``data`` if it is a list of ``t`` (any if None) or ``parts`` equal-length such lists."""
    lists = data if parts else [data]
    if type(data) is not list or (parts and len(data) != parts):
        raise CodecError("bad column data")
    for part in lists:
        if (
            type(part) is not list
            or len(part) != len(lists[0])
            or (t is not None and set(map(type, part)) - {t})
        ):
            raise CodecError("bad column data")
    return data


_COLUMN_DECODERS: dict[int, Callable[[Any], list[Any]]] = {
    _C_DECIMAL: lambda d: list(map(Decimal, _check(d, str))),
    # date and datetime reject non-int fields themselves: no per-item type check
    _C_DATETIME: lambda d: list(map(dt.datetime, *_check(d[1:], None, 7), repeat(_tz_from(d[0])))),
    _C_DATE: lambda d: list(map(dt.date.fromordinal, _check(d, None))),
    _C_TIMEDELTA: lambda d: list(map(dt.timedelta, *_check(d, int, 3))),
    _C_UUID: lambda d: _uuids(_check(d, bytes)),
    _C_PG_UUID: lambda d: _pg_uuids(_check(d, bytes)),
}


def _decode_column(kind: Any, data: Any, nrows: int) -> list[Any]:
    if type(kind) is not int or type(data) is not list:
        raise CodecError("bad column")
    if kind == _C_ANY:
        col = data
    elif kind in _COLUMN_DECODERS and len(data) == 2:
        nulls = _check(data[0], int)
        col = _COLUMN_DECODERS[kind](data[1])
        if nulls and (
            nulls[0] < 0 or nulls[-1] >= nrows or any(a >= b for a, b in pairwise(nulls))
        ):
            raise CodecError("bad null positions")
        for i in nulls:  # increasing positions, each within the list built so far
            col.insert(i, None)
    else:
        raise CodecError(f"bad column kind {kind!r}")
    if len(col) != nrows:
        raise CodecError("bad table: ragged columns")
    return col  # type: ignore[no-any-return]


def _decode_table(parts: Any) -> Any:
    if type(parts) is not list or len(parts) < 2 or len(parts) % 2:
        raise CodecError("bad table")
    is_tuple, nrows = parts[0], parts[1]
    if type(is_tuple) is not bool or type(nrows) is not int or nrows < 1:
        raise CodecError("bad table")
    cols = [
        data
        if kind == _C_ANY and type(data) is list and len(data) == nrows  # inlined
        else _decode_column(kind, data, nrows)
        for kind, data in zip(parts[2::2], parts[3::2])
    ]
    rows = zip(*cols) if cols else repeat((), nrows)
    return tuple(rows) if is_tuple else list(rows)


def _decode_with_tz(cls: type, fields: struct.Struct, data: bytes) -> Any:
    *args, fold = fields.unpack_from(data)
    return cls(*args, tzinfo=_tz_from(data[fields.size :]), fold=fold)


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    _X_BIGINT: lambda d: int.from_bytes(d, signed=True),
    _X_DECIMAL: lambda d: Decimal(d.decode("ascii")),
    _X_DATE: lambda d: dt.date.fromordinal(_U32.unpack(d)[0]),
    _X_TIME: partial(_decode_with_tz, dt.time, _TIME),
    _X_DATETIME: partial(_decode_with_tz, dt.datetime, _DATETIME),
    _X_TIMEDELTA: lambda d: dt.timedelta(*_TIMEDELTA.unpack(d)),
    _X_UUID: lambda d: _uuids([d])[0],
    _X_PG_UUID: lambda d: _pg_uuids([d])[0],
    _X_IP: lambda d: _IP_TYPES[d[0]](d[1:].decode("ascii")),  # bad kind: IndexError
}


def _ext_hook(code: int, data: bytes, depth: int) -> Any:
    if code in (_X_TUPLE, _X_TABLE):
        if depth >= _MAX_DEPTH:
            raise CodecError("tuples nested too deeply")
        inner = _UNPACKERS[depth + 1](data)
        return tuple(_check(inner, None)) if code == _X_TUPLE else _decode_table(inner)
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise CodecError(f"unknown extension type {code}")
    return decoder(data)


# unpackb bounds every length by the size of its input; maps may have non-str keys.
_UNPACKERS = [
    partial(
        msgpack.unpackb, ext_hook=partial(_ext_hook, depth=depth), raw=False, strict_map_key=False
    )
    for depth in range(_MAX_DEPTH + 1)
]


# the names the codec uses
PACKERS = _PACKERS
UNPACKERS = _UNPACKERS
FOREIGN = _FOREIGN
maybe_table = _maybe_table
