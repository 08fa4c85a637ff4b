"""Images on the invalidation bus: a commit's row images, encoded for other processes.

A bus message of a precise commit is ``img <origin> <scope> <tables> <payload>``:
the header as in a table-level ``inv`` message, then the images in the
project's no-pickle codec (:mod:`querycache.tiers.codec`, signed when the
cache has a ``signing_key``). Per table the payload holds its image's values
and changed columns, or nothing (unknown rows). An image the codec cannot
encode, or that would make the message larger than :data:`MAX_MESSAGE`, is
sent as unknown; a receiver that cannot decode a table's image (tampered,
another version, malformed) treats the table as unknown. So a message can
only lose precision, never invalidate less than the writer's own commit did.
"""

from __future__ import annotations

from typing import Any

from querycache.invalidation.images import Image
from querycache.tiers.codec import Codec, CodecError, UnsupportedType

__all__ = ["MAX_MESSAGE", "decode_images", "encode_images"]

#: bytes of images in one message at most (beyond: those tables are unknown)
MAX_MESSAGE = 32 * 1024
_FORMAT = 1


def encode_images(codec: Codec, writes: dict[str, Image | None]) -> bytes | None:
    """The payload for ``writes`` (per table an image or ``None``); ``None``
    when no image survives encoding (a table-level message says the same)."""
    parts: dict[str, bytes] = {}
    for table, image in writes.items():
        if image is None:
            continue
        changed = None if image.changed is None else sorted(image.changed)
        try:
            parts[table] = codec.encode((_FORMAT, dict(image.values), changed))
        except (UnsupportedType, TypeError, ValueError):
            continue
    total = sum(len(b) for b in parts.values())
    for table in sorted(parts, key=lambda t: len(parts[t]), reverse=True):
        if total <= MAX_MESSAGE:
            break
        total -= len(parts.pop(table))
    if not parts:
        return None
    try:
        return codec.encode(parts)
    except (UnsupportedType, TypeError, ValueError):
        return None


def decode_images(codec: Codec, payload: bytes, tables: frozenset[str]) -> dict[str, Image | None]:
    """Per table of ``tables`` its image from ``payload`` (``None``: unknown)."""
    writes: dict[str, Image | None] = dict.fromkeys(tables)
    try:
        parts = codec.decode(payload)
    except CodecError:
        return writes
    if not isinstance(parts, dict):
        return writes
    for table, raw in parts.items():
        if table in writes and isinstance(raw, bytes):
            writes[table] = _image(codec, raw)
    return writes


def _image(codec: Codec, raw: bytes) -> Image | None:
    try:
        data: Any = codec.decode(raw)
    except CodecError:
        return None
    if not (isinstance(data, list | tuple) and len(data) == 3 and data[0] == _FORMAT):
        return None
    _, values, changed = data
    if not isinstance(values, dict):
        return None
    out: dict[str, list[Any]] = {}
    for column, vals in values.items():
        if not isinstance(column, str) or not isinstance(vals, list | tuple):
            return None
        out[column] = list(vals)
    if changed is None:
        return Image(out, None)
    if not isinstance(changed, list | tuple) or not all(isinstance(c, str) for c in changed):
        return None
    return Image(out, frozenset(changed))
