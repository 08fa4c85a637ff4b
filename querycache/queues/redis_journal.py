"""The Redis journal: one stream per queue, read through a consumer group.

Several processes can submit to, and work on, the same queue. Only the holder
of a lease (``SET NX PX``, renewed every cycle) reads the stream, so entries
are applied in stream order; a new holder first re-reads the group's
pending entries (delivered to a holder that died before acking them), then
new ones. Acking removes an entry from the stream (``XACK`` + ``XDEL`` in one
``MULTI``), so the stream holds exactly the unacked entries.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an
``XADD`` that returned survives a crash of Redis; with the default
``everysec`` up to a second of acknowledged submits can be lost.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from typing import Any

import redis

from querycache.queues.journal import DeadLetter, Journal, Journaled
from querycache.tiers.codec import Codec

__all__ = ["RedisJournal", "seq_of", "stream_id"]

_GROUP, _CONSUMER = "querycache", "worker"
_LEASE_MS = 10_000
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)
_TAKEOVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return 0 end"
)
_CODEC = Codec()
_HOST = socket.gethostname()


def _dead_here(token: str) -> bool:
    """True when the lease ``token`` names a process of this host that has exited."""
    host, _, rest = token.partition(":")
    pid, _, _ = rest.partition(":")
    if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def seq_of(stream_id: bytes | str) -> int:
    """A stream id ``ms-n`` as one growing integer."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, n = text.partition("-")
    if int(n) >= 1 << 20:  # pragma: no cover - a million XADDs in one millisecond
        raise ValueError(f"stream id {text} out of range")
    return int(ms) << 20 | int(n)


def stream_id(seq: int) -> str:
    return f"{seq >> 20}-{seq & 0xFFFFF}"


class RedisJournal(Journal):
    """A queue named ``queue`` in ``namespace`` on the Redis ``client``."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "default",
        queue: str = "default",
        lease_ms: int = _LEASE_MS,
    ) -> None:
        self.client = client
        self.lease_ms = lease_ms
        base = f"qc:{namespace}:wb:{queue}"
        self.stream, self.dead, self.lease = base + ":s", base + ":dead", base + ":lease"
        digest = hashlib.sha256(base.encode()).hexdigest()[:32]
        self.name = f"redis:{digest}"
        self._token: str | None = None
        self._history: bytes | None = None
        try:
            client.xgroup_create(self.stream, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def append(self, data: bytes) -> int:
        return seq_of(self.client.xadd(self.stream, {"d": data}))

    def acquire(self) -> bool:
        if self._token is not None:
            if self.client.eval(_RENEW, 1, self.lease, self._token, self.lease_ms):
                return True
            self._token = self.lease_id = None  # expired: start over when it is ours again
        token = f"{_HOST}:{os.getpid()}:{secrets.token_hex(8)}"
        if self.client.set(self.lease, token, nx=True, px=self.lease_ms):
            self._token, self._history, self.lease_id = token, b"0", token
            return True
        held = self.client.get(self.lease)
        # a holder on this host that no longer exists: take over at once
        if (
            held is not None
            and _dead_here(held.decode())
            and self.client.eval(_TAKEOVER, 1, self.lease, held, token, self.lease_ms)
        ):
            self._token, self._history, self.lease_id = token, b"0", token
            return True
        return False

    def claim(self, limit: int) -> list[Journaled]:
        out: list[Journaled] = []
        while self._history is not None and not out:
            reply = self.client.xreadgroup(
                _GROUP, _CONSUMER, {self.stream: self._history}, count=limit
            )
            items = reply[0][1] if reply else []
            if not items:
                self._history = None
                break
            self._history = items[-1][0]
            # "0-0"-style history can hold ids whose entry was deleted: skip them
            out = [Journaled(seq_of(i), fields[b"d"]) for i, fields in items if fields]
        if self._history is None and not out:
            reply = self.client.xreadgroup(_GROUP, _CONSUMER, {self.stream: ">"}, count=limit)
            items = reply[0][1] if reply else []
            out = [Journaled(seq_of(i), fields[b"d"]) for i, fields in items if fields]
        return out

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        ids = [stream_id(s) for s in seqs]
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, _GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()

    def bury(self, entry: Journaled, sql: str, error: str) -> None:
        sid = stream_id(entry.seq)
        value = _CODEC.encode({"data": entry.data, "sql": sql, "error": error, "at": time.time()})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.dead, sid, value)
        pipe.xack(self.stream, _GROUP, sid)
        pipe.xdel(self.stream, sid)
        pipe.execute()

    def pending(self) -> int:
        return int(self.client.xlen(self.stream))

    def _first(self) -> int | None:
        items = self.client.xrange(self.stream, count=1)
        return seq_of(items[0][0]) if items else None

    def oldest(self) -> float | None:
        first = self._first()
        return None if first is None else (first >> 20) / 1000

    def low_water(self) -> int:
        first = self._first()
        if first is not None:
            return first
        last = self.client.xinfo_stream(self.stream)["last-generated-id"]
        return seq_of(last) + 1

    def high_water(self) -> int:
        items = self.client.xrevrange(self.stream, count=1)
        return seq_of(items[0][0]) if items else 0

    def settled(self, through: int) -> bool:
        first = self._first()
        return first is None or first > through

    def _dead(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for sid, raw in self.client.hgetall(self.dead).items():
            value = _CODEC.decode(raw)
            if isinstance(value, dict):
                out.append((sid.decode(), value))
        out.sort(key=lambda item: seq_of(item[0]))
        return out

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter(sid, v["sql"], v["error"], float(v["at"])) for sid, v in self._dead()]

    def retry(self, ids: list[str] | None = None) -> int:
        chosen = [(s, v) for s, v in self._dead() if ids is None or s in ids]
        for sid, value in chosen:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.stream, {"d": value["data"]})
            pipe.hdel(self.dead, sid)
            pipe.execute()
        return len(chosen)

    def drop(self, ids: list[str] | None = None) -> int:
        chosen = [s for s, _ in self._dead() if ids is None or s in ids]
        if chosen:
            self.client.hdel(self.dead, *chosen)
        return len(chosen)

    def release(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self.lease_id = None
            try:
                self.client.eval(_RELEASE, 1, self.lease, token)
            except redis.RedisError:
                pass  # it expires on its own

    def close(self) -> None:
        self.release()
        self.client.close()
