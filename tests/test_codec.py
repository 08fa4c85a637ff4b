"""The shared-store value codec: exact round trips, signing, compression, hostile input.

Round trips compare exact types recursively (``assert_same``), not just ``==``:
``1 == 1.0 == True`` and ``[1] == (1,)`` would hide a codec that changes types.
The driver tests query a real PostgreSQL through psycopg and asyncpg, and
SQLite through pysqlite, and feed the raw rows to the codec.
"""

from __future__ import annotations

import ast
import collections
import datetime as dt
import enum
import ipaddress
import math
import random
import struct
import uuid
import zlib
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import asyncpg
import msgpack
import pytest
import sqlalchemy as sa
from asyncpg.pgproto import pgproto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from querycache.tiers.codec import Codec, CodecError, UnsupportedType

CODEC = Codec()
SIGNED = Codec(signing_key=b"k" * 32)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """``a`` and ``b`` are equal with identical types all the way down."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if type(a) is float:
        assert struct.pack(">d", a) == struct.pack(">d", b), f"{path}: {a!r} != {b!r}"
    elif type(a) is Decimal:
        assert a.as_tuple() == b.as_tuple() and a.compare_total(b) == 0, f"{path}: {a} != {b}"
    elif type(a) in (list, tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif type(a) is dict:
        assert len(a) == len(b), f"{path}: {len(a)} keys != {len(b)}"
        for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items())):
            assert_same(ka, kb, f"{path}.key{i}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif type(a) in (dt.datetime, dt.time):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), f"{path}: {a!r} != {b!r}"
        assert a.fold == b.fold, f"{path}: fold"
        assert type(a.tzinfo) is type(b.tzinfo), f"{path}: {a.tzinfo!r} != {b.tzinfo!r}"
        assert a.utcoffset() == b.utcoffset(), f"{path}: utcoffset"
        if type(a.tzinfo) is ZoneInfo:
            assert a.tzinfo.key == b.tzinfo.key and a.tzinfo is b.tzinfo, f"{path}: zone"
        elif type(a.tzinfo) is dt.timezone:
            assert a.tzinfo.tzname(None) == b.tzinfo.tzname(None), f"{path}: zone name"
            assert a.tzinfo.utcoffset(None) == b.tzinfo.utcoffset(None), f"{path}: offset"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
        if isinstance(a, ipaddress.IPv6Address):
            assert a.scope_id == b.scope_id


def roundtrip(value: Any, codec: Codec = CODEC) -> Any:
    back = codec.decode(codec.encode(value))
    assert_same(value, back)
    return back


# -- strategies -------------------------------------------------------------------------------

MAX_OFFSET = dt.timedelta(hours=24) - dt.timedelta(microseconds=1)
fixed_zones = st.builds(
    lambda offset, name: dt.timezone(offset) if name is None else dt.timezone(offset, name),
    st.timedeltas(-MAX_OFFSET, MAX_OFFSET),
    st.none() | st.text(max_size=8),
)
zones = st.none() | st.just(dt.UTC) | fixed_zones | st.timezones()
folds = st.integers(0, 1)
datetimes = st.builds(lambda d, f: d.replace(fold=f), st.datetimes(timezones=zones), folds)
times = st.builds(lambda t, f: t.replace(fold=f), st.times(timezones=zones), folds)
DECIMAL_SPECIALS = [
    "NaN",
    "-NaN",
    "sNaN",
    "-sNaN",
    "NaN123",
    "Infinity",
    "-Infinity",
    "-0",
    "0E-30",
    "-0E+7",
    "1E+999999",
    "-1.000E-999999",
    "123.4500",
]
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(DECIMAL_SPECIALS).map(Decimal),
    st.builds(
        lambda s, ds, e: Decimal((s, ds, e)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), max_size=40),
        st.integers(-(10**6), 10**6),
    ),
)
BIG = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**200, -(2**200), 10**400]
ints = st.integers() | st.sampled_from(BIG) | st.integers(-(2**300), 2**300)
addresses = st.ip_addresses()
prefixes = st.integers(0, 128)
networks = st.builds(
    lambda a, p: ipaddress.ip_network((a, p % (a.max_prefixlen + 1)), False), addresses, prefixes
)
interfaces = st.builds(
    lambda a, p: ipaddress.ip_interface((a, p % (a.max_prefixlen + 1))), addresses, prefixes
)
pg_uuids = st.uuids().map(lambda u: pgproto.UUID(u.bytes))
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=zones),
    st.timedeltas(),
    st.uuids(),
    addresses,
    networks,
)
scalars = st.one_of(
    hashable_scalars,
    st.floats(),
    decimals,
    datetimes,
    times,
    interfaces,
    pg_uuids,
)
hashables = st.recursive(
    hashable_scalars, lambda c: st.lists(c, max_size=3).map(tuple), max_leaves=6
)
values = st.recursive(
    scalars,
    lambda c: (
        st.lists(c, max_size=5)
        | st.lists(c, max_size=5).map(tuple)
        | st.dictionaries(hashables, c, max_size=4)
    ),
    max_leaves=25,
)
COLUMN_KINDS = {
    "int": ints,
    "str": st.text(max_size=10),
    "float": st.floats(),
    "bool": st.booleans(),
    "decimal": decimals,
    "date": st.dates(),
    "timedelta": st.timedeltas(),
    "uuid": st.uuids(),
    "pg_uuid": pg_uuids,
    "json": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    "array": st.lists(st.none() | st.integers(), max_size=3),
    "any": values,
}


@st.composite
def tables(draw: st.DrawFn) -> Any:
    """Rows as drivers return them: equal-length tuples, each column one type plus NULLs."""
    nrows, ncols = draw(st.integers(1, 12)), draw(st.integers(0, 6))
    cols = []
    for _ in range(ncols):
        kind = draw(st.sampled_from(["datetime", *COLUMN_KINDS]))
        if kind == "datetime":  # one zone per column, as a driver returns them
            zone = draw(zones)
            elem = st.builds(
                lambda d, f, z=zone: d.replace(tzinfo=z, fold=f), st.datetimes(), st.just(0) | folds
            )
        else:
            elem = COLUMN_KINDS[kind]
        if draw(st.booleans()):
            elem = st.none() | elem
        cols.append(draw(st.lists(elem, min_size=nrows, max_size=nrows)))
    rows = list(zip(*cols)) if cols else [()] * nrows
    shape = draw(st.sampled_from(["list", "tuple", "result"]))
    if shape == "tuple":
        return tuple(rows)
    if shape == "result":
        description = tuple((f"c{i}", 23, None, None, None, None, None) for i in range(ncols))
        return (description, rows)
    return rows


# -- round trips ------------------------------------------------------------------------------


@FAST
@given(values)
def test_roundtrip_any_value(value):
    roundtrip(value)


@FAST
@given(tables())
def test_roundtrip_tables(value):
    roundtrip(value)
    roundtrip(value, SIGNED)


def test_roundtrip_edge_values():
    paris, utc_named = ZoneInfo("Europe/Paris"), dt.timezone(dt.timedelta(0), "Zulu")
    edge = [
        None,
        True,
        False,
        0,
        -1,
        *BIG,
        0.0,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x2a")[0],  # NaN with a payload
        *map(Decimal, DECIMAL_SPECIALS),
        "",
        "é\x00\U0001f600",
        b"",
        b"\x00\xff",
        dt.date.min,
        dt.date.max,
        dt.datetime.min,
        dt.datetime.max,
        dt.datetime(2021, 10, 31, 2, 30, tzinfo=paris, fold=1),
        dt.datetime(2021, 3, 28, 2, 30, tzinfo=paris),  # imaginary wall time kept as is
        dt.datetime(2020, 1, 1, tzinfo=utc_named),
        dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=-1, microseconds=7))),
        dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "")),
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.time(1, tzinfo=paris, fold=1),
        dt.timedelta.min,
        dt.timedelta.max,
        dt.timedelta(days=-1, microseconds=1),
        uuid.UUID(int=0),
        uuid.uuid4(),
        pgproto.UUID(uuid.uuid4().bytes),
        ipaddress.IPv6Address("fe80::1%eth0"),
        ipaddress.ip_interface("192.168.0.1/24"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_interface("::1/128"),
        (),
        [],
        {},
        ((),),
        [()],
        [(), ()],
        {1: "int", 1.5: "float", None: 0, b"k": 1, (1, "a"): 2, Decimal("1.5"): 3},
        {"nested": [[1, None], [None, [2.5, {"x": (1,)}]]]},
    ]
    for value in edge:
        roundtrip(value)
    roundtrip(edge)
    roundtrip(tuple(edge))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda x: (x,),
        lambda x: [x, 1],
        lambda x: ("a", [(x, 1), (None, 2)]),
        lambda x: ((x, 1), (None, 2)),
        lambda x: {"k": (x, [1])},
        lambda x: [(x,)],
    ],
)
def test_deep_nesting_either_roundtrips_or_is_refused_on_encode(wrap):
    value: Any = Decimal("1.5")
    refused = False
    for _ in range(80):
        value = wrap(value)
        try:
            data = CODEC.encode(value)
        except UnsupportedType:
            refused = True
            continue
        assert not refused, "deeper values must stay refused"
        assert_same(value, CODEC.decode(data))


def test_bytes_like_values_come_back_as_bytes():
    for value in (bytearray(b"ab\x00"), memoryview(b"ab\x00")):
        back = CODEC.decode(CODEC.encode(value))
        assert type(back) is bytes and back == b"ab\x00"


def test_typical_result_is_stored_as_columns():
    description = (
        ("id", 23, None, None, None, None, None),
        ("at", 1184, None, None, None, None, None),
    )
    rows = [(i, dt.datetime(2024, 1, 1, i, tzinfo=dt.UTC)) for i in range(10)]
    data = CODEC.encode((description, rows))
    outer = msgpack.unpackb(data[4:])
    assert outer.code == 1  # the (description, rows) tuple
    items = msgpack.unpackb(outer.data)
    assert [item.code for item in items] == [2, 2]  # both stored as tables
    roundtrip((description, rows))


# -- refusals ---------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Label(str):
    pass


class Pair(NamedTuple):
    a: int
    b: int


class Meters(float):
    pass


class MyDecimal(Decimal):
    pass


class MyDatetime(dt.datetime):
    pass


class FixedZone(dt.tzinfo):
    def utcoffset(self, _: object) -> dt.timedelta:
        return dt.timedelta(hours=1)


def unsupported_values() -> list[Any]:
    from psycopg.types.range import Range

    loop: list[Any] = []
    loop.append(loop)
    return [
        Colour.RED,
        Level.LOW,
        Label("x"),
        Pair(1, 2),
        Meters(1.0),
        MyDecimal(1),
        MyDatetime(2020, 1, 1),
        dt.datetime(2020, 1, 1, tzinfo=FixedZone()),
        dt.time(1, tzinfo=FixedZone()),
        collections.OrderedDict(a=1),
        collections.defaultdict(int),
        {1, 2},
        frozenset(),
        1j,
        object(),
        Range(1, 3),
        asyncpg.BitString("101"),
        asyncpg.Point(1, 2),
        type,
        print,
        "\ud800",
        loop,
        type("MyUUID", (uuid.UUID,), {})(int=5),
    ]


@pytest.mark.parametrize("value", unsupported_values(), ids=lambda v: type(v).__name__)
def test_unsupported_values_are_refused(value):
    for wrapped in (value, [value], (value,), {"k": value}, [(1, value), (2, value)]):
        with pytest.raises(UnsupportedType):
            CODEC.encode(wrapped)


def test_msgpack_own_types_are_refused_where_checked():
    # msgpack packs ExtType/Timestamp natively, so they are only caught where the codec
    # looks at types anyway: top level, tuple items, table columns (see Codec's docstring).
    for value in (msgpack.ExtType(1, b""), msgpack.Timestamp(0)):
        for wrapped in (value, (value,), ((1, value),), [(1, value), (2, None)]):
            with pytest.raises(UnsupportedType):
                CODEC.encode(wrapped)


def test_zone_from_file_without_key_is_refused():
    candidates = (Path(d, "Europe/Paris") for d in zoneinfo.TZPATH)
    path = next(p for p in candidates if p.exists())
    with path.open("rb") as f:
        zone = ZoneInfo.from_file(f)
    with pytest.raises(UnsupportedType):
        CODEC.encode(dt.datetime(2020, 1, 1, tzinfo=zone))


def test_oversized_value_is_refused():
    with pytest.raises(UnsupportedType):
        Codec(max_size=100).encode(b"x" * 200)


# -- compression and signing ------------------------------------------------------------------


def payload_flags(data: bytes) -> int:
    return data[3]


def test_compression_threshold():
    codec = Codec(compress_threshold=100)
    small, large = "a" * 98, "a" * 99  # msgpack str8: 2 header bytes, so 100 and 101 bytes
    assert payload_flags(codec.encode(small)) == 0  # not above the threshold
    assert payload_flags(codec.encode(large)) == 1
    assert len(codec.encode(large)) < 50
    assert payload_flags(Codec(compress_threshold=0).encode("aaaaaaaa" * 4)) == 1
    assert payload_flags(Codec(compress_level=0).encode(large)) == 0
    incompressible = random.Random(0).randbytes(500)
    assert payload_flags(codec.encode(incompressible)) == 0  # kept raw: zlib would not shrink it
    for c in (codec, Codec(compress_threshold=0), Codec(compress_level=9)):
        for value in (small, large, incompressible, [(i, str(i)) for i in range(300)]):
            roundtrip(value, c)


def test_compressed_and_signed():
    codec = Codec(signing_key="secret", compress_threshold=10)
    data = codec.encode("z" * 1000)
    assert payload_flags(data) == 3 and len(data) < 100
    assert codec.decode(data) == "z" * 1000


def test_signing_keys():
    value = [(1, "a", Decimal("2.50"))]
    signed = SIGNED.encode(value)
    assert SIGNED.decode(signed) == value
    assert Codec(signing_key="k" * 32).decode(signed) == value  # str key == its UTF-8 bytes
    with pytest.raises(CodecError, match="signature"):
        Codec(signing_key=b"other").decode(signed)
    with pytest.raises(CodecError, match="not signed"):
        SIGNED.decode(CODEC.encode(value))
    with pytest.raises(CodecError, match="no signing_key"):
        CODEC.decode(signed)


@pytest.mark.parametrize("codec", [SIGNED, Codec(signing_key=b"k", compress_threshold=0)])
def test_signed_values_reject_every_flipped_bit_and_truncation(codec):
    data = codec.encode(("x", 1, [Decimal("1.1"), None]))
    for i in range(len(data)):
        for bit in range(8):
            tampered = bytearray(data)
            tampered[i] ^= 1 << bit
            with pytest.raises(CodecError):
                codec.decode(bytes(tampered))
        with pytest.raises(CodecError):
            codec.decode(data[:i])
    with pytest.raises(CodecError):
        codec.decode(data + b"\x00")


def test_decompression_bomb_is_refused():
    bomb = zlib.compress(bytes(65 * 2**20), 9)  # 65 MiB of zeros in ~65 KiB
    with pytest.raises(CodecError, match="max_size"):
        CODEC.decode(b"QC\x01\x01" + bomb)
    small = Codec(max_size=2**20)
    with pytest.raises(CodecError, match="max_size"):
        small.decode(b"QC\x01\x01" + zlib.compress(bytes(2**20 + 1)))
    with pytest.raises(CodecError, match="max_size"):
        small.decode(b"QC\x01\x00" + bytes(2**20 + 1))
    exact = msgpack.packb(b"\x00" * (2**20 - 5))
    assert len(exact) == 2**20
    assert small.decode(b"QC\x01\x01" + zlib.compress(exact)) == exact[5:]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"signing_key": 123}, TypeError, "signing_key"),
        ({"signing_key": b""}, ValueError, "signing_key"),
        ({"compress_threshold": -1}, ValueError, "compress_threshold"),
        ({"compress_threshold": 1.5}, TypeError, "compress_threshold"),
        ({"compress_threshold": True}, TypeError, "compress_threshold"),
        ({"compress_level": 10}, ValueError, "compress_level"),
        ({"compress_level": "1"}, TypeError, "compress_level"),
        ({"max_size": 0}, ValueError, "max_size"),
    ],
)
def test_settings_are_validated(kwargs, error, name):
    with pytest.raises(error, match=name):
        Codec(**kwargs)


# -- hostile input ----------------------------------------------------------------------------


def decode_or_codec_error(codec: Codec, data: Any) -> None:
    """Decoding may succeed (the bytes may be valid) but may only fail with CodecError."""
    try:
        codec.decode(data)
    except CodecError:
        pass


@FAST
@given(st.binary(max_size=200))
def test_garbage_raises_codec_error_only(data):
    decode_or_codec_error(CODEC, data)
    decode_or_codec_error(CODEC, b"QC\x01\x00" + data)
    decode_or_codec_error(CODEC, b"QC\x01\x01" + data)
    decode_or_codec_error(SIGNED, data)


@FAST
@given(st.integers(-128, 127), st.binary(max_size=40))
def test_garbage_extension_payloads_raise_codec_error_only(code, payload):
    ext8 = bytes((0xC7, len(payload))) + struct.pack(">b", code) + payload
    decode_or_codec_error(CODEC, b"QC\x01\x00" + ext8)


garbage_items = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.binary(max_size=18) | st.text(max_size=3),
    lambda c: st.lists(c, max_size=8),
    max_leaves=30,
)


@FAST
@given(st.integers(1, 11), garbage_items)
def test_garbage_structures_inside_extensions_raise_codec_error_only(code, inner):
    ext = msgpack.ExtType(code, msgpack.packb(inner))
    decode_or_codec_error(CODEC, b"QC\x01\x00" + msgpack.packb(ext))


@FAST
@given(tables(), st.data())
def test_mutated_values_raise_codec_error_only(value, data):
    encoded = bytearray(CODEC.encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            encoded[i] ^= data.draw(st.integers(1, 255))
        elif action == "drop":
            del encoded[i]
        else:
            encoded.insert(i, data.draw(st.integers(0, 255)))
    decode_or_codec_error(CODEC, bytes(encoded))


def test_specific_malformed_inputs():
    nested = msgpack.packb([])
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        nested = msgpack.packb(msgpack.ExtType(1, nested))
    cases = [
        "QC\x01\x00\xc0",
        None,
        b"",
        b"QC",
        b"QC\x02\x00\xc0",
        b"QC\x01\x80\xc0",
        b"QC\x01\x00\xc0\xc0",  # trailing data
        b"QC\x01\x00" + nested,
        b"QC\x01\x01" + zlib.compress(b"\xc0")[:-2],  # truncated stream
        b"QC\x01\x01" + zlib.compress(b"\xc0") + b"x",  # trailing compressed data
        b"QC\x01\x00" + msgpack.packb(msgpack.ExtType(99, b"")),
        b"QC\x01\x00" + msgpack.packb(msgpack.ExtType(9, b"short")),
        b"QC\x01\x00" + msgpack.packb(msgpack.ExtType(7, b"\x07\xe4\x0d" + bytes(10))),
        b"QC\x01\x00" + msgpack.packb(msgpack.ExtType(7, bytes(12) + b"\x04../../etc/passwd")),
        b"QC\x01\x00" + msgpack.packb({(1,): 2}),  # unhashable key after decoding
    ]
    for data in cases:
        with pytest.raises(CodecError):
            CODEC.decode(data)  # type: ignore[arg-type]


def test_table_with_bad_null_positions_is_refused():
    def table(nulls: list[int], values: list[str], nrows: int) -> bytes:
        inner = msgpack.packb([False, nrows, 1, [nulls, values]])
        return b"QC\x01\x00" + msgpack.packb(msgpack.ExtType(2, inner))

    assert CODEC.decode(table([0, 2], ["1"], 3)) == [(None,), (Decimal(1),), (None,)]
    for nulls in ([2, 0], [0, 0], [-1], [3], [5]):
        with pytest.raises(CodecError):
            CODEC.decode(table(nulls, ["1"] * (3 - len(nulls)), 3))


def test_no_pickle_in_codec_or_its_tests():
    root = Path(__file__).resolve().parents[1]
    for path in (root / "querycache/tiers/codec.py", Path(__file__)):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle", "importlib"}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"eval", "exec", "__import__"}, path


# -- real drivers -----------------------------------------------------------------------------

PG_SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE every_type (
    id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, num numeric, num_big numeric, f4 float4,
    f8 float8, f8_nan float8, txt text, vc varchar(10), ch char(3), ba bytea, b bool, d date,
    t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb,
    ia int[], ta text[], na numeric[], nested int[], m mood, ip inet, net cidr, ip6 inet
);
INSERT INTO every_type VALUES (
    1, -32768, 2147483647, -9223372036854775808, 12.3400, -1.5e-40, 1.5, -0.0, 'NaN',
    'héllo', 'v', 'ab', '\\x00ff', true, '2024-02-29', '23:59:59.999999', '12:34:56+05:30',
    '2024-01-02 03:04:05.678901', '2024-07-01 12:00:00+00', '1 year 2 mons 3 days 04:05:06.7',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5, null, "x"], "b": {"c": true}}',
    '{"k": [1, {"z": null}], "n": 1.25}', ARRAY[1, NULL, 3], ARRAY['a', NULL, 'c'],
    ARRAY[1.10, NULL, 'NaN'], ARRAY[[1, 2], [NULL, 4]], 'happy', '192.168.0.1/24',
    '10.0.0.0/8', '2001:db8::1'
);
INSERT INTO every_type (id) VALUES (2);
INSERT INTO every_type (id, num, tstz, u, d, iv, ts)
    VALUES (3, 'NaN', '1999-12-31 23:59:59+00', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
            '0001-01-01', '-3 days', '2000-01-01');
"""
PG_SELECT = "SELECT * FROM every_type ORDER BY id"


def expected_types(json_type: type, zone: type) -> dict[str, type]:
    return {
        "id": int,
        "i2": int,
        "i4": int,
        "i8": int,
        "num": Decimal,
        "num_big": Decimal,
        "f4": float,
        "f8": float,
        "f8_nan": float,
        "txt": str,
        "vc": str,
        "ch": str,
        "ba": bytes,
        "b": bool,
        "d": dt.date,
        "t": dt.time,
        "ttz": dt.time,
        "ts": dt.datetime,
        "tstz": dt.datetime,
        "iv": dt.timedelta,
        "j": json_type,
        "jb": json_type,
        "ia": list,
        "ta": list,
        "na": list,
        "nested": list,
        "m": str,
        "ip": ipaddress.IPv4Interface,
        "net": ipaddress.IPv4Network,
        "ip6": ipaddress.IPv6Address,
        "tstz.tzinfo": zone,
    }


def check_driver_rows(
    description: Any, rows: list[tuple[Any, ...]], types: dict[str, type]
) -> None:
    names = [d[0] for d in description]
    first = dict(zip(names, rows[0]))
    for name, expected in types.items():
        value = first[name.split(".")[0]]
        if "." in name:
            value = getattr(value, name.split(".")[1])
        assert type(value) is expected, (name, value)
    assert all(v is None for v in rows[1][1:])
    result = (tuple(tuple(d) for d in description), rows)
    roundtrip(result)
    roundtrip(result, SIGNED)
    roundtrip(rows, Codec(compress_threshold=0))
    for row in rows:
        for value in row:
            roundtrip(value)


@pytest.fixture
def pg_every_type(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PG_SETUP)
    engine.dispose()
    return pg_url


def test_psycopg_rows_roundtrip(pg_every_type):
    engine = sa.create_engine(pg_every_type)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TIME ZONE 'Europe/Paris'")
        result = conn.exec_driver_sql(PG_SELECT)
        description, rows = result.cursor.description, [tuple(r) for r in result]
        raw = conn.connection.dbapi_connection.cursor()
        raw.execute(PG_SELECT)
        assert [list(map(type, r)) for r in raw.fetchall()] == [list(map(type, r)) for r in rows]
    engine.dispose()
    check_driver_rows(description, rows, expected_types(dict, ZoneInfo))
    assert rows[0][names(description).index("tstz")].tzinfo.key == "Europe/Paris"
    assert type(rows[0][names(description).index("u")]) is uuid.UUID


def names(description: Any) -> list[str]:
    return [d[0] for d in description]


async def test_asyncpg_rows_roundtrip(pg_every_type, postgres):
    dbname = sa.make_url(pg_every_type).database
    engine = create_async_engine(postgres.url("asyncpg", dbname))
    async with engine.connect() as conn:  # SQLAlchemy's dialect decodes json to dict
        result = await conn.exec_driver_sql(PG_SELECT)
        description, rows = result.cursor.description, [tuple(r) for r in result]
    await engine.dispose()
    check_driver_rows(description, rows, expected_types(dict, dt.timezone))
    assert type(rows[0][names(description).index("u")]) is pgproto.UUID

    conn = await asyncpg.connect(postgres.url("asyncpg", dbname).replace("+asyncpg", ""))
    try:  # plain asyncpg leaves json as str and returns Record rows
        records = await conn.fetch(PG_SELECT)
    finally:
        await conn.close()
    raw_rows = [tuple(r) for r in records]
    check_driver_rows(description, raw_rows, expected_types(str, dt.timezone))
    with pytest.raises(UnsupportedType):  # the caller turns Records into tuples
        CODEC.encode(records)


def test_pysqlite_rows_roundtrip():
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n NUMERIC, d DATE, x)"
        )
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (9223372036854775807, -0.0, 'héllo', x'00ff', 1.5,"
            " '2024-01-02', 1e999), (-9223372036854775808, 2.5, '', x'', 7, NULL, 'x'),"
            " (NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        )
        result = conn.exec_driver_sql("SELECT *, 1e999 * -1 FROM t")
        description, rows = result.cursor.description, [tuple(r) for r in result]
    engine.dispose()
    assert [type(v) for v in rows[0]] == [int, float, str, bytes, float, str, float, float]
    assert rows[0][6] == math.inf and rows[1][4] == 7 and type(rows[1][4]) is int
    result_value = (tuple(tuple(d) for d in description), rows)
    roundtrip(result_value)
    roundtrip(result_value, SIGNED)
