"""Typed, compact binary codec for values kept in a shared store (Redis).

No pickle, eval or import-by-name: a value is msgpack plus a fixed set of
extension types, so decoding can only build the types listed in :class:`Codec`::

    b"QC" | version (1 byte) | flags (1 byte) | [HMAC-SHA256 tag, 32 bytes] | payload

Flag bit 0: payload zlib-compressed; bit 1: tag present. The tag covers header
and stored payload, so it is checked before anything is inflated or parsed.
The payload's value types live in :mod:`querycache.tiers.values`.
"""

from __future__ import annotations

import hmac
import zlib

from querycache.tiers.values import (
    FOREIGN,
    PACKERS,
    UNPACKERS,
    CodecError,
    UnsupportedType,
    maybe_table,
)

__all__ = ["DEFAULT_MAX_SIZE", "Codec", "CodecError", "UnsupportedType"]

MAGIC = b"QC"
VERSION = 1
_COMPRESSED, _SIGNED = 1, 2
_TAG_LEN = 32
DEFAULT_MAX_SIZE = 64 * 2**20


def _int_setting(name: str, value: object, low: int, high: int | None = None) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class Codec:
    """Encode cached query results to bytes and back, without pickle.

    Round-trips these exact types (subclasses raise :class:`UnsupportedType`):
    None, bool, int (any size), float (nan, inf, -0.0), Decimal (NaN, sNaN,
    infinities, -0, any exponent), str, bytes (bytearray and memoryview come
    back as bytes), date, time and datetime (tzinfo None, ``datetime.timezone``
    with its name, or ``ZoneInfo`` by key; ``fold`` kept), timedelta,
    ``uuid.UUID`` and asyncpg's UUID subclass, ``ipaddress`` addresses,
    networks and interfaces, and list, tuple and dict (keys of any supported
    hashable type) of these, nested up to 32 tuples deep. ``OrderedDict``,
    enums, ``str`` subclasses, psycopg ``Range``, asyncpg ``Record`` etc. are
    refused; so are msgpack's own ``ExtType``/``Timestamp``, except deep inside
    lists or dicts, where msgpack packs them before the codec can see them.

    ``signing_key`` adds an HMAC-SHA256 tag: a codec with a key rejects unsigned
    values and values signed with another key; one without rejects signed ones.
    Payloads over ``compress_threshold`` bytes are zlib-compressed at
    ``compress_level`` (0: never) when that shrinks them. ``max_size`` bounds
    the uncompressed payload on both sides (a decompression-bomb guard).
    """

    def __init__(
        self,
        *,
        signing_key: bytes | str | None = None,
        compress_threshold: int = 2048,
        compress_level: int = 1,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if isinstance(signing_key, str):
            signing_key = signing_key.encode()
        if signing_key is not None and type(signing_key) is not bytes:
            raise TypeError(
                f"signing_key must be bytes, str or None, not {type(signing_key).__name__}"
            )
        if signing_key is not None and not signing_key:
            raise ValueError("signing_key must not be empty")
        self._key = signing_key
        self._threshold = _int_setting("compress_threshold", compress_threshold, 0)
        self._level = _int_setting("compress_level", compress_level, 0, 9)
        self._max_size = _int_setting("max_size", max_size, 1)

    def __repr__(self) -> str:
        return (
            f"Codec(signed={self._key is not None}, compress_threshold={self._threshold}, "
            f"compress_level={self._level}, max_size={self._max_size})"
        )

    def encode(self, value: object) -> bytes:
        """Serialize ``value``; raise :class:`UnsupportedType` if it cannot round-trip exactly."""
        if type(value) in FOREIGN:
            raise UnsupportedType("msgpack ExtType/Timestamp values are not supported")
        try:
            payload: bytes = PACKERS[0](maybe_table(value, 0) if type(value) is list else value)
        except CodecError:
            raise
        except (TypeError, ValueError, OverflowError, BufferError, RecursionError) as exc:
            raise UnsupportedType(f"cannot encode value: {exc}") from exc
        if len(payload) > self._max_size:
            raise UnsupportedType(f"encoded value is {len(payload)} bytes, over max_size")
        flags = 0
        if self._level and len(payload) > self._threshold:
            packed = zlib.compress(payload, self._level)
            if len(packed) < len(payload):
                payload, flags = packed, _COMPRESSED
        if self._key is None:
            return MAGIC + bytes((VERSION, flags)) + payload
        header = MAGIC + bytes((VERSION, flags | _SIGNED))
        return header + hmac.digest(self._key, header + payload, "sha256") + payload

    def decode(self, data: bytes) -> object:
        """Rebuild a value from :meth:`encode` output; any bad input raises :class:`CodecError`."""
        try:
            return self._decode(data)
        except CodecError:
            raise
        except Exception as exc:  # whatever malformed input trips over, callers see one type
            raise CodecError(f"malformed value: {type(exc).__name__}: {exc}") from exc

    def _decode(self, data: bytes) -> object:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 4 or data[:2] != MAGIC:
            raise CodecError("not a querycache value (bad magic)")
        if data[2] != VERSION:
            raise CodecError(f"unknown format version {data[2]}")
        flags = data[3]
        if flags & ~(_COMPRESSED | _SIGNED):
            raise CodecError(f"unknown flags {flags:#x}")
        payload = data[4:]
        if flags & _SIGNED:
            if self._key is None:
                raise CodecError("value is signed but this codec has no signing_key")
            tag, payload = payload[:_TAG_LEN], payload[_TAG_LEN:]
            expected = hmac.digest(self._key, data[:4] + payload, "sha256")
            if not hmac.compare_digest(tag, expected):
                raise CodecError("bad signature (tampered, truncated or another key)")
        elif self._key is not None:
            raise CodecError("value is not signed but this codec requires a signature")
        if flags & _COMPRESSED:
            inflater = zlib.decompressobj()
            payload = inflater.decompress(payload, self._max_size + 1)
            if len(payload) > self._max_size:
                raise CodecError(f"decompressed payload over max_size ({self._max_size} bytes)")
            if not inflater.eof or inflater.unused_data:
                raise CodecError("truncated or trailing compressed data")
        elif len(payload) > self._max_size:
            raise CodecError("payload over max_size")
        return UNPACKERS[0](payload)
