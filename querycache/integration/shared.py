"""The shared-tier part of a miss: Redis lookup, lease, and store.

Called by :class:`~querycache.integration.engine.EngineBinding` after the
memory tier missed and this execution became its process's leader for the
key. One ``MGET`` answers with the entry and the current version tokens; an
entry whose tokens match is a hit and fills the memory tier. Otherwise the
tokens are kept for the store, and a short lease decides which process runs
the query; the others poll the entry (each poll one ``MGET``, which also
tells whether the lease is still held) until it appears or the lease ends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from querycache.integration import io
from querycache.tiers.base import Entry

if TYPE_CHECKING:
    from querycache.integration.context import Miss
    from querycache.integration.engine import EngineBinding

__all__ = ["lookup_shared", "release_lease", "store_shared"]


def lookup_shared(binding: EngineBinding, ctx: Any, miss: Miss) -> Entry | None:
    """A valid Redis entry for this execution, or None (then run the query)."""
    tier = binding.core.redis
    if tier is None or not tier.usable or binding.private:
        return None  # a private in-memory database is this process's only
    plan = miss.plan
    if tier.distrusts(binding.scope, plan.tables):
        return None  # another process could not invalidate these tables yet
    rkey = tier.entry_key(binding.redis_identity(miss.key), ctx.statement, ctx.parameters[0], plan)
    params = ctx.parameters[0]
    vkeys, members = tier.reader_keys(binding.scope, plan.tables, plan.footprint, params)
    found = tier.lookup(rkey, vkeys, binding.is_async)
    if found is None:
        return None
    entry, tokens = found
    if entry is not None:
        return entry
    if not miss.store:
        return None
    lease = tier.lease_key(rkey)
    timeout = binding.core.lease_timeout
    # missing tokens, the members writers must see before we query, the lease
    tokens, got = tier.prepare(
        binding.scope, vkeys, tokens, members, lease, max(1, int(timeout * 1000)), binding.is_async
    )
    if tokens is None:
        return None
    miss.l2 = (rkey, tokens)
    if got:
        miss.lease = lease
        return None
    if got is None or timeout <= 0:
        return None
    return _await_other_process(binding, rkey, vkeys, lease, time.monotonic() + timeout)


def _await_other_process(
    binding: EngineBinding, rkey: str, vkeys: list[str], lease: str, deadline: float
) -> Entry | None:
    tier = binding.core.redis
    assert tier is not None
    delay = 0.002
    while time.monotonic() < deadline:
        io.sleep(delay, binding.is_async)
        found = tier.poll(rkey, vkeys, lease, binding.is_async)
        if found is None:
            return None
        entry, held = found
        if entry is not None or not held:
            return entry
        delay = min(delay * 1.5, 0.02)
    return None


def store_shared(binding: EngineBinding, miss: Miss, entry: Entry) -> None:
    """Store a fresh result in Redis (background), releasing the lease."""
    tier = binding.core.redis
    if tier is None or miss.l2 is None:
        return
    rkey, tokens = miss.l2
    tier.store(rkey, tokens, entry, miss.ttl, miss.lease, binding.is_async)
    miss.lease = None


def release_lease(binding: EngineBinding, miss: Miss) -> None:
    tier = binding.core.redis
    if tier is not None and miss.lease is not None:
        tier.release(miss.lease, binding.is_async)
        miss.lease = None
