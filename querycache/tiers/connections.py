"""Redis clients for every caller: sync engines, each event loop, the bus.

Async engines must use ``redis.asyncio`` (never a blocking call on the event
loop), and an asyncio client belongs to the loop it first ran on, so one is
made per running loop. Sync engines and the background bus thread share one
sync client. Everything is derived from one URL or one ready client
(``redis.Redis``, ``redis.asyncio.Redis``, ``redis.cluster.RedisCluster`` or
its asyncio twin); the derived clients get short timeouts.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as ARetry
from redis.backoff import NoBackoff
from redis.backoff import NoBackoff as ANoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

__all__ = ["RedisClients"]


class RedisClients:
    """Builds and caches the clients for one cache."""

    def __init__(self, *, url: str | None, client: Any, timeout: float) -> None:
        if (url is None) == (client is None):
            raise ValueError("give either redis_url or redis, not both")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self.cluster = False
        if url is not None:
            if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
            self._url: str | None = url
            self._recipe: dict[str, Any] = {}
            self.sync: Any = redis.Redis.from_url(url, **self._options())
            return
        # a given client is a recipe: querycache talks through clients of its
        # own, with short timeouts and no retries, and never closes yours
        self._url = None
        if isinstance(client, RedisCluster | AsyncRedisCluster):
            self.cluster = True
            manager = client.nodes_manager
            nodes = list(manager.nodes_cache.values()) or list(manager.startup_nodes.values())
            self._nodes = [(n.host, n.port) for n in nodes]
            kw = dict(manager.connection_kwargs)
            self._recipe = {k: kw[k] for k in ("username", "password", "ssl") if kw.get(k)}
            self.sync = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                **self._recipe,
            )
        elif isinstance(client, aredis.Redis | redis.Redis):
            self._recipe = _recipe(client.connection_pool)
            self.sync = redis.Redis(**self._recipe, **self._options())
        else:
            raise TypeError(
                "redis must be a redis.Redis, redis.asyncio.Redis or RedisCluster client, "
                f"got {type(client).__name__}"
            )

    def _options(self, timeout: float | None = None) -> dict[str, Any]:
        t = self.timeout if timeout is None else timeout
        return {
            "socket_timeout": t,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    def async_client(self) -> Any:
        """The asyncio client of the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._loops.get(loop)
        if client is not None:
            return client
        with self._lock:
            client = self._loops.get(loop)
            if client is None:
                client = self._loops[loop] = self._new_async()
        return client

    def _new_async(self) -> Any:
        options = self._options()
        options["retry"] = ARetry(ANoBackoff(), 0)
        if self._url is not None:
            return aredis.Redis.from_url(self._url, **options)
        if self.cluster:
            return AsyncRedisCluster(
                startup_nodes=[AClusterNode(h, p) for h, p in self._nodes],
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                **self._recipe,
            )
        return aredis.Redis(**self._recipe, **options)

    def subscriber(self) -> Any:
        """A new sync client for the bus thread (longer read timeout)."""
        options = self._options(timeout=max(self.timeout, 0.5))
        if self._url is not None:
            return redis.Redis.from_url(self._url, **options)
        if self.cluster:
            return self.sync
        return redis.Redis(**self._recipe, **options)

    def close(self) -> None:
        try:
            self.sync.close()
        except Exception:
            pass


_RECIPE_KEYS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "client_name",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)


def _recipe(pool: Any) -> dict[str, Any]:
    """How to reach the server a pool reaches, as ``Redis(**kwargs)``."""
    if pool is None:
        return {}
    kw = pool.connection_kwargs
    out = {k: kw[k] for k in _RECIPE_KEYS if kw.get(k) is not None}
    name = getattr(pool, "connection_class", type(None)).__name__
    if "SSL" in name:
        out["ssl"] = True
    if kw.get("path"):
        out = {k: v for k, v in out.items() if k not in ("host", "port")}
        out["unix_socket_path"] = kw["path"]
    return out
