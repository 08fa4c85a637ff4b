"""Invalidation between the caches of one process.

Two :class:`~querycache.cache.QueryCache` objects in one process may wrap
engines on one database (two caches on one SQLite file, one PostgreSQL
database). Without Redis nothing else would tell the second about a write
through the first, so every cache registers the scopes of the engines it
wraps here (weakly: a cache that is dropped or closed leaves), and an
invalidation applied by one is forwarded, as it was received, to every other
cache of the process holding that scope — except between two caches that both
use Redis under different namespaces: namespaces isolate caches in one process
as they do across processes.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["forward", "register", "unregister"]

_lock = threading.Lock()
_caches: dict[str, weakref.WeakSet[Any]] = {}


def register(cache: Any, scope: str) -> None:
    """``cache`` holds entries of ``scope`` from now on."""
    with _lock:
        members = _caches.get(scope)
        if members is None:
            members = _caches[scope] = weakref.WeakSet()
        members.add(cache)


def unregister(cache: Any) -> None:
    """``cache`` holds nothing any more (closed)."""
    with _lock:
        for scope in [s for s, members in _caches.items() if cache in members]:
            members = _caches[scope]
            members.discard(cache)
            if not members:
                del _caches[scope]


def forward(origin: Any, scope: str, *args: Any) -> None:
    """Apply what ``origin`` applied to ``scope`` (``args`` as it received
    them) in every other cache of this process on that scope.

    Each receiver runs its own ``_apply_scope``: its view expansions and
    catalog, its memory tier, its Redis namespace. A receiver that fails is
    counted in its own errors; the others still get the invalidation.
    """
    members = _caches.get(scope)
    if not members:
        return
    with _lock:
        others = [c for c in members if c is not origin and not _isolated(origin, c)]
    for cache in others:
        try:
            cache._apply_scope(scope, *args)
        except Exception as exc:
            cache.failed("invalidation from another cache", exc)


def _isolated(a: Any, b: Any) -> bool:
    return a.redis is not None and b.redis is not None and a.namespace != b.namespace
