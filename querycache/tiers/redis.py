"""L2: Redis, shared by every process.

Key layout (one Redis Cluster hash tag per namespace, so every multi-key
command stays in one slot)::

    qc:{ns}:r:<digest>          an entry: codec(key digest, tokens, description, rows, rowcount)
    qc:{ns}:v:<scope>:<table>   a table's version token (random, never reused)
    qc:{ns}:v:<scope>:*         the scope's epoch token (writes to unknown tables)
    qc:{ns}:v:<scope>:<table>|… per-cell tokens and the member set of a table
                                (:mod:`querycache.tiers.redis_cells`)
    qc:{ns}:g                   the namespace generation (``clear()``)
    qc:{ns}:l:<digest>          a short lease: who fetches a missing entry
    qc:{ns}:inv                 the pub/sub channel of invalidations

An entry carries the tokens its reader saw *before* querying the database. A
lookup is one ``MGET`` of the entry and the current tokens: the entry is
valid only if they are equal. A committed write replaces the tokens of its
tables (and publishes) in one round trip. Tokens are random, so an evicted
token key comes back different and an evicted entry is a miss: eviction can
only cause misses, never a stale hit.

Every call has a short timeout; any failure marks the tier unhealthy and the
cache carries on without it (see :mod:`querycache.invalidation.bus` for the
way back).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

from redis import exceptions as redis_errors

from querycache.integration import io
from querycache.invalidation.wire import encode_images
from querycache.keys import redis_key, stable_repr
from querycache.tiers import redis_cells
from querycache.tiers.base import Entry
from querycache.tiers.codec import Codec, CodecError, UnsupportedType
from querycache.tiers.sizing import measure

__all__ = ["RedisTier"]

_FORMAT = 1
Cmds = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


def _digest(text: str, size: int = 8) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def new_token() -> bytes:
    return os.urandom(8).hex().encode()


class RedisTier:
    """Entries and table versions in Redis, for sync and async engines."""

    def __init__(
        self, clients: Any, namespace: str, codec: Codec, stats: Any, hash_params: bool = True
    ) -> None:
        self.clients = clients
        self.namespace = namespace
        self.hash_params = hash_params
        self.codec = codec
        self.stats = stats
        self.prefix = f"qc:{{{namespace}}}:"
        self.channel = self.prefix + "inv"
        self.gen_key = self.prefix + "g"
        self.origin = os.urandom(6).hex()
        self.healthy = True
        #: set by the channel lease after a sign that Redis stalled: another
        #: process may still hold an invalidation it could not publish
        self.in_doubt = False
        self._lock = threading.Lock()
        self.pending: dict[str, set[str] | None] = {}  # scope digest -> tables (None: all)
        self.distrusted: dict[str, set[str] | None] = {}  # held by other processes
        self._vkeys: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        #: (scope digest, table, member) -> the table token it was registered under
        self._registered: dict[tuple[str, str, str], bytes] = {}
        self._scripts: dict[str, str] = {}  # source -> sha1 once loaded
        self._keyed: dict[tuple[str, str], tuple[frozenset[str], float]] = {}
        self._down_since: float | None = None
        self._down_reason = ""
        self.round_trips = 0
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._futures: set[Future[None]] = set()

    # -- keys -------------------------------------------------------------------
    def scope_id(self, scope: str) -> str:
        return _digest(scope)

    def version_keys(self, scope: str, tables: tuple[str, ...]) -> list[str]:
        """``[generation, epoch, table...]`` keys of ``scope``."""
        cached = self._vkeys.get((scope, tables))
        if cached is None:
            base = f"{self.prefix}v:{self.scope_id(scope)}:"
            cached = [self.gen_key, base + "*", *[base + t for t in tables]]
            if len(self._vkeys) > 10_000:
                self._vkeys.clear()
            self._vkeys[(scope, tables)] = cached
        return cached

    def reader_keys(
        self, scope: str, tables: tuple[str, ...], footprint: Any, params: Any
    ) -> tuple[list[str], list[tuple[str, str, int]]]:
        """``[generation, epoch, per table: its token and cell tokens...]`` of one
        execution, and the members it must have registered before it stores
        (:func:`querycache.tiers.redis_cells.reader_keys`)."""
        head = self.version_keys(scope, ())
        if self.clients.cluster:
            return self.version_keys(scope, tables), []  # table tokens only
        base = head[1][:-1]
        keys, members = redis_cells.reader_keys(base, tables, footprint, params)
        return [*head, *keys], members

    def prepare(
        self,
        scope: str,
        vkeys: list[str],
        tokens: list[Any],
        members: list[tuple[str, str, int]],
        lease: str,
        ms: int,
        is_async: bool,
    ) -> tuple[list[Any] | None, bool | None]:
        """After a miss, in one round trip: give missing token keys a fresh
        token (``SET NX GET``), register ``members`` so that writers see them
        before this execution queries (:data:`~querycache.tiers.redis_cells.REGISTER`),
        and try the fetch lease. Returns the tokens to store with (None: do not
        store) and whether the lease was taken (None: Redis failed)."""
        missing = [i for i, t in enumerate(tokens) if t is None]
        fresh = {i: new_token() for i in missing}
        cmds: Cmds = [("set", (vkeys[i], fresh[i]), {"nx": True, "get": True}) for i in missing]
        sid = self.scope_id(scope)
        todo: dict[str, list[tuple[str, int]]] = {}
        for table, member, at in members:
            if tokens[at] is None or self._registered.get((sid, table, member)) != tokens[at]:
                todo.setdefault(table, []).append((member, at))
        for some in todo.values():
            tkey = vkeys[some[0][1]]
            args = (tkey + "|k", tkey, new_token(), *[m for m, _ in some])
            cmds.append(("eval", (redis_cells.REGISTER, 2, *args), {}))
        cmds.append(("set", (lease, self.origin), {"nx": True, "px": ms}))
        try:
            got = self._pipeline(is_async, cmds)
        except Exception as exc:
            self.failed(exc, "version init" if len(cmds) > 1 else "lease")
            return None, None
        out = list(tokens)
        for i, old in zip(missing, got):
            out[i] = old if old is not None else fresh[i]
        held = bool(got[-1])
        if len(self._registered) > 10_000:
            self._registered.clear()
        for (table, some), token in zip(todo.items(), got[len(missing) : -1]):
            if token is None:  # evicted meanwhile: do not store
                if held:
                    self.release(lease, is_async)
                return None, False
            for member, at in some:
                out[at] = token
                self._registered[(sid, table, member)] = token
        return out, held

    def keyed_columns(self, scope: str, table: str, is_async: bool) -> frozenset[str]:
        """Columns of ``table`` some process's Redis entries are keyed on (read
        at most once a second per table; empty when unknown): a writer reads
        them in its pre-image so that its image names their values."""
        if self.clients.cluster or not self.healthy or not redis_cells.safe(table):
            return frozenset()
        now = time.monotonic()
        got = self._keyed.get((scope, table))
        if got is not None and now - got[1] < 1.0:
            return got[0]
        key = self.version_keys(scope, ())[1][:-1] + table + "|k"
        try:
            members = self._call(is_async, "smembers", key)
        except Exception as exc:
            self.failed(exc, "keyed columns")
            return frozenset()
        columns = redis_cells.keyed_of(members)
        if len(self._keyed) > 10_000:
            self._keyed.clear()
        self._keyed[(scope, table)] = (columns, now)
        return columns

    def entry_key(self, identity: str, statement: str, params: Any, plan: Any) -> str:
        """The key of one execution's entry (see :func:`querycache.keys.redis_key`)."""
        key = redis_key(self.namespace, identity, statement, params)
        if self.hash_params:
            return key
        # readable keys for debugging: fingerprint and parameter values in clear
        shown = stable_repr(params)[:200].replace(" ", "")
        return f"{key}:{plan.analysis.fingerprint_id}:{shown}"

    def lease_key(self, rkey: str) -> str:
        return self.prefix + "l:" + rkey.split(":", 4)[3]

    # -- health -----------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.healthy and not self.pending and not self.in_doubt

    def failed(self, exc: BaseException, where: str, fatal: bool = False) -> None:
        """A Redis call failed: stop using Redis until the bus finds it back.

        A refusal by a live server (``ResponseError``: out of memory,
        read-only) of a store or a lease is only counted: those are harmless
        misses. Refused invalidations (``fatal``) and lost connections are not.
        """
        self.stats.count(f"redis {where}", errors=True)
        if not fatal and isinstance(exc, redis_errors.ResponseError):
            return
        with self._lock:
            if self.healthy:
                self.healthy = False
                self._down_since = time.time()
                self._down_reason = f"{where}: {type(exc).__name__}"

    def recovered(self) -> None:
        with self._lock:
            if not self.healthy and self._down_since is not None:
                self.stats.degraded.append(
                    {
                        "start": self._down_since,
                        "end": time.time(),
                        "seconds": round(time.time() - self._down_since, 3),
                        "reason": self._down_reason,
                    }
                )
            self.healthy = True
            self._down_since = None

    # -- reads ----------------------------------------------------------------------
    def lookup(
        self, rkey: str, vkeys: list[str], is_async: bool, lease_last: bool = False
    ) -> tuple[Entry | None, list[Any]] | None:
        """One ``MGET``: a valid entry (or None) and the current tokens.

        Returns None when Redis failed.
        """
        keys = [rkey, *vkeys]
        try:
            values = self._call(is_async, "mget", keys)
        except Exception as exc:
            self.failed(exc, "lookup")
            return None
        raw, tokens = values[0], values[1:]
        current = tokens[:-1] if lease_last else tokens
        if raw is None or None in current:
            return None, tokens
        try:
            data = self.codec.decode(raw)
            fmt, key_id, stored_tokens, description, rows, rowcount, expires = data  # type: ignore[misc]
            if fmt != _FORMAT or key_id != rkey:
                raise CodecError("entry for another key or format")
        except (CodecError, ValueError, TypeError):
            self.stats.count("redis values that failed to decode")
            return None, tokens
        if list(stored_tokens) != current:
            return None, tokens
        size, mutable = measure(rows)
        entry = Entry(description, rows, rowcount, size + 200)
        entry.mutable = mutable
        entry.expires = expires  # wall clock; the memory tier turns it into its own TTL
        return entry, tokens

    def poll(
        self, rkey: str, vkeys: list[str], lease: str, is_async: bool
    ) -> tuple[Entry | None, bool] | None:
        """Like :meth:`lookup`, also telling whether ``lease`` is still held."""
        found = self.lookup(rkey, [*vkeys, lease], is_async, lease_last=True)
        if found is None:
            return None
        entry, tokens = found
        return entry, tokens[-1] is not None

    def release(self, lease: str, is_async: bool) -> None:
        self._submit(is_async, [("delete", (lease,), {})])

    def fill_tokens(self, vkeys: list[str], tokens: list[Any], is_async: bool) -> list[Any] | None:
        """Give every missing token key a fresh token (``SET NX GET``)."""
        missing = [i for i, t in enumerate(tokens) if t is None]
        if not missing:
            return tokens
        fresh = {i: new_token() for i in missing}
        try:
            got = self._pipeline(
                is_async,
                [("set", (vkeys[i], fresh[i]), {"nx": True, "get": True}) for i in missing],
            )
        except Exception as exc:
            self.failed(exc, "version init")
            return None
        out = list(tokens)
        for i, old in zip(missing, got):
            out[i] = old if old is not None else fresh[i]
        return out

    # -- writes ---------------------------------------------------------------------
    def store(
        self,
        rkey: str,
        tokens: list[Any],
        entry: Entry,
        ttl: float,
        lease: str | None,
        is_async: bool,
    ) -> bool:
        """``SET`` the entry (and drop the lease) in one round trip, in the
        background: the caller has its rows already."""
        try:
            expires = time.time() + ttl if ttl != float("inf") else 0.0
            value = self.codec.encode(
                (
                    _FORMAT,
                    rkey,
                    tuple(tokens),
                    entry.description,
                    entry.rows,
                    entry.rowcount,
                    expires,
                )
            )
        except UnsupportedType:
            self.stats.count("results with types the codec cannot store")
            if lease:
                self._submit(is_async, [("delete", (lease,), {})])
            return False
        ms = max(1, int(ttl * 1000)) if ttl != float("inf") else None
        cmds: Cmds = [("set", (rkey, value), {"px": ms} if ms else {})]
        if lease:
            cmds.append(("delete", (lease,), {}))
        self._submit(is_async, cmds)
        return True

    def _submit(self, is_async: bool, cmds: Cmds) -> None:
        self.round_trips += 1
        if is_async:
            coro = _run_async_pipeline(self.clients.async_client(), cmds)
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            future = self._executor().submit(self._background, cmds)
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)

    def _background(self, cmds: Cmds) -> None:
        try:
            pipe = self.clients.sync.pipeline(transaction=False)
            for name, args, kw in cmds:
                getattr(pipe, name)(*args, **kw)
            pipe.execute()
        except Exception as exc:
            # a failed store is harmless (a miss later), but a dead server is not
            self.failed(exc, "store")

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed(task.exception(), "store")  # type: ignore[arg-type]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(2, thread_name_prefix="querycache-store")
        return self._pool

    def flush(self, timeout: float = 5.0) -> None:
        """Wait for the background stores submitted so far (sync engines)."""
        futures_wait(list(self._futures), timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.clients.close()

    def acquire_lease(self, lease: str, ms: int, is_async: bool) -> bool | None:
        try:
            return bool(self._call(is_async, "set", lease, self.origin, nx=True, px=ms))
        except Exception as exc:
            self.failed(exc, "lease")
            return None

    def bump(
        self,
        scope: str,
        tables: frozenset[str] | None,
        is_async: bool | None,
        writes: dict[str, Any] | None = None,
    ) -> bool:
        """Replace the tokens of ``tables`` (None: the scope epoch) and publish.

        ``writes``: per table its image (``None``: unknown rows). With an
        image, only the cells it may touch get new tokens (one Lua script that
        also publishes the images, :mod:`querycache.tiers.redis_cells`).

        The token writes and the message go in one ``MULTI``: a server that
        refuses the writes (out of memory, read-only) sends no "invalidated"
        message that would let other processes read the old entries again.
        On failure the bump stays pending here (this process stops reading
        Redis until the bus applies it) and a "hold" message asks the other
        processes to stop trusting Redis for these tables meanwhile.
        """
        sid = self.scope_id(scope)
        names = ["*"] if tables is None else sorted(tables)
        try:
            if (
                tables is None
                or not writes
                or not self._replace_cells(sid, names, writes, bool(is_async))
            ):
                self._replace_tokens(sid, names, bool(is_async))
        except Exception as exc:
            with self._lock:
                if tables is None or self.pending.get(sid, set()) is None:
                    self.pending[sid] = None
                else:
                    self.pending.setdefault(sid, set()).update(tables)  # type: ignore[union-attr]
            self.failed(exc, "invalidate", fatal=True)
            self._hold(sid, names, bool(is_async))
            return False
        return True

    def _replace_tokens(
        self, sid: str, names: list[str], is_async: bool, text: bytes | str | None = None
    ) -> None:
        base = f"{self.prefix}v:{sid}:"
        cmds: Cmds = [("set", (base + t, new_token()), {}) for t in names]
        text = self._message("inv", sid, names) if text is None else text
        message = ("inv", (self.channel, text), {})
        if self.clients.cluster:
            # a cluster pipeline takes no PUBLISH: tokens first, then the news
            for result in self._pipeline(is_async, cmds, raise_on_error=False):
                if isinstance(result, Exception):
                    raise result
            self._call(is_async, "publish", *message[1])
        else:
            self._pipeline(is_async, [*cmds, ("publish", message[1], {})], transaction=True)

    def _replace_cells(
        self, sid: str, names: list[str], writes: dict[str, Any], is_async: bool
    ) -> bool:
        """The precise bump; False when no image is usable (then: table tokens)."""
        images = {t: writes.get(t) for t in names}
        payload = encode_images(self.codec, images)
        if payload is None:
            return False
        message = self._message("img", sid, names).encode() + b" " + payload
        per_table = None if self.clients.cluster else redis_cells.bump_args(images)
        if per_table is None:  # tokens by table; the images still reach memory tiers
            self._replace_tokens(sid, names, is_async, message)
            return True
        base = f"{self.prefix}v:{sid}:"
        argv = (new_token(), self.channel, message, base, *per_table)
        self._script(is_async, redis_cells.BUMP, *argv)
        return True

    def _script(self, is_async: bool, source: str, *argv: Any) -> Any:
        """``EVALSHA`` of ``source`` without keys (``EVAL`` the first time)."""
        sha = self._scripts.get(source)
        if sha is not None:
            try:
                return self._call(is_async, "evalsha", sha, 0, *argv)
            except redis_errors.NoScriptError:
                pass
        result = self._call(is_async, "eval", source, 0, *argv)
        self._scripts[source] = hashlib.sha1(source.encode()).hexdigest()
        return result

    def _message(self, kind: str, sid: str, names: list[str]) -> str:
        return f"{kind} {self.origin} {sid} {','.join(names)}"

    def _hold(self, sid: str, names: list[str], is_async: bool) -> None:
        """Best effort: remove the old tokens and tell the others to hold off."""
        base = f"{self.prefix}v:{sid}:"
        try:
            self._pipeline(is_async, [("delete", tuple(base + t for t in names), {})])
        except Exception:
            pass
        try:
            self._call(is_async, "publish", self.channel, self._message("hold", sid, names))
        except Exception:
            pass

    # -- what other processes said ------------------------------------------------
    def distrusts(self, scope: str, tables: tuple[str, ...]) -> bool:
        """Whether a failed invalidation elsewhere makes Redis unsafe for these tables."""
        if not self.distrusted:
            return False
        held = self.distrusted.get(self.scope_id(scope), False)
        if held is False:
            return False
        return held is None or not held.isdisjoint(tables)  # type: ignore[union-attr]

    def heard(self, kind: str, sid: str, tables: frozenset[str] | None) -> None:
        """Record a "hold" (distrust) or an "inv" (tokens replaced: trust again)."""
        with self._lock:
            if kind == "hold":
                old = self.distrusted.get(sid, set())
                self.distrusted[sid] = (
                    None if tables is None or old is None else old | tables  # type: ignore[operator]
                )
                return
            if sid not in self.distrusted:
                return
            old = self.distrusted[sid]
            if tables is None or old is None:
                if tables is None:
                    del self.distrusted[sid]
                return
            rest = old - tables
            if rest:
                self.distrusted[sid] = rest
            else:
                del self.distrusted[sid]

    def bump_generation(self, is_async: bool | None) -> bool:
        try:
            self._pipeline(bool(is_async), [("set", (self.gen_key, new_token()), {})])
            self._call(bool(is_async), "publish", self.channel, f"inv {self.origin} * *")
        except Exception as exc:
            self.failed(exc, "clear", fatal=True)
            return False
        return True

    def apply_pending(self) -> bool:
        """Retry failed invalidations on the sync client (from the bus thread)."""
        with self._lock:
            pending, self.pending = self.pending, {}
        ok = True
        for sid, tables in pending.items():
            names = ["*"] if tables is None else sorted(tables)
            try:
                self._replace_tokens(sid, names, False)
            except Exception:
                ok = False
                with self._lock:
                    old = self.pending.get(sid, set())
                    self.pending[sid] = None if tables is None or old is None else old | tables
        return ok

    # -- I/O edges ------------------------------------------------------------------
    def _call(self, is_async: bool, name: str, *args: Any, **kw: Any) -> Any:
        self.round_trips += 1
        if is_async:
            return io.run(getattr(self.clients.async_client(), name)(*args, **kw))
        return getattr(self.clients.sync, name)(*args, **kw)

    def _pipeline(
        self, is_async: bool, cmds: Cmds, transaction: bool = False, raise_on_error: bool = True
    ) -> list[Any]:
        self.round_trips += 1
        if is_async:
            client = self.clients.async_client()
            return io.run(_run_async_pipeline(client, cmds, transaction, raise_on_error))
        pipe = self.clients.sync.pipeline(transaction=transaction)
        for name, args, kw in cmds:
            getattr(pipe, name)(*args, **kw)
        return pipe.execute(raise_on_error=raise_on_error)


async def _run_async_pipeline(
    client: Any, cmds: Cmds, transaction: bool = False, raise_on_error: bool = True
) -> list[Any]:
    pipe = client.pipeline(transaction=transaction)
    for name, args, kw in cmds:
        getattr(pipe, name)(*args, **kw)
    return await pipe.execute(raise_on_error=raise_on_error)
