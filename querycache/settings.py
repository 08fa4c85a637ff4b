"""Validated settings: a mistake raises at construction, naming the setting."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Settings", "number"]


def number(
    name: str, value: Any, *, minimum: float = 0.0, allow_zero: bool = False, integer: bool = False
) -> Any:
    """Check that ``value`` is a number above ``minimum`` (or raise)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if math.isnan(value) or value < minimum or (value == minimum and not allow_zero):
        op = ">=" if allow_zero else ">"
        raise ValueError(f"{name} must be {op} {minimum:g}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """The scalar settings of a :class:`~querycache.QueryCache`."""

    ttl: float
    memory_bytes: int
    max_entry_bytes: int
    namespace: str
    lock_timeout: float
    discover_views: bool

    @classmethod
    def build(
        cls,
        *,
        ttl: Any,
        memory_bytes: Any,
        max_entry_bytes: Any,
        namespace: Any,
        lock_timeout: Any,
        discover_views: Any,
    ) -> Settings:
        if ttl is None:
            ttl = math.inf
        number("ttl", ttl)
        number("memory_bytes", memory_bytes, integer=True)
        if max_entry_bytes is None:
            max_entry_bytes = max(1, memory_bytes // 8)
        number("max_entry_bytes", max_entry_bytes, integer=True)
        if max_entry_bytes > memory_bytes:
            raise ValueError(
                f"max_entry_bytes must be <= memory_bytes ({memory_bytes}), got {max_entry_bytes}"
            )
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if not namespace or any(c in namespace for c in "{}: \t\r\n"):
            raise ValueError(
                f"namespace must be a non-empty string without braces, colons or spaces, "
                f"got {namespace!r}"
            )
        number("lock_timeout", lock_timeout, allow_zero=True)
        if not isinstance(discover_views, bool):
            raise TypeError(f"discover_views must be True or False, got {discover_views!r}")
        return cls(
            float(ttl),
            memory_bytes,
            max_entry_bytes,
            namespace,
            float(lock_timeout),
            discover_views,
        )
