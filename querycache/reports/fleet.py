"""The fleet view: every process publishes its report to Redis; the CLI merges.

Layout (same ``{ns}`` hash tag as the cache's keys, so one Cluster slot)::

    qc:{ns}:fleet               sorted set: process id -> last publish time
    qc:{ns}:fleet:<process id>  that process's report (JSON), expiring after
                                max(3 intervals, 30 s) without a publish

A publisher thread (``QueryCache(publish_stats=10.0)``, with Redis) builds the
report off every query path and writes both keys in one pipeline; on
``close()`` it publishes a last time. What it publishes is the report's JSON
(fingerprints, never parameter values), at most :data:`MAX_ROWS` queries and
tables (the busiest; the totals stay exact). Readers merge the processes
(:mod:`.merge`); the command line is in :mod:`.commands`.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from querycache.reports.merge import merge
from querycache.reports.model import Report
from querycache.settings import number

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["MAX_ROWS", "Publisher", "fleet_report", "read_fleet", "start_publisher"]

MAX_ROWS = 500
_MIN_TTL = 30.0


def _index_key(namespace: str) -> str:
    return f"qc:{{{namespace}}}:fleet"


class Publisher:
    """The thread that publishes one cache's report every ``interval`` seconds."""

    def __init__(self, cache: QueryCache, interval: float) -> None:
        self.cache = cache
        self.interval = interval
        self.ttl = max(3 * interval, _MIN_TTL)
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="querycache-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def publish(self) -> bool:
        """Publish now; False (counted as an event) if Redis refused."""
        cache = self.cache
        redis = cache.redis
        if redis is None:
            return False
        try:
            data = cache.report().as_dict()
            pid = data["processes"][0]["id"]
            data["processes"][0]["interval"] = self.interval
            data["queries"] = data["queries"][:MAX_ROWS]
            data["tables"] = data["tables"][:MAX_ROWS]
            data["recommendations"] = []  # made again from the merged figures
            index = _index_key(cache.namespace)
            pipe = redis.clients.sync.pipeline(transaction=False)
            pipe.set(f"{index}:{pid}", json.dumps(data), px=int(self.ttl * 1000))
            pipe.zadd(index, {pid: data["generated_at"]})
            pipe.zremrangebyscore(index, "-inf", data["generated_at"] - 3600)
            pipe.expire(index, 86400)
            pipe.execute()
        except Exception:  # Redis down: the next period tries again
            cache.stats.count("fleet publish failed")
            return False
        self.published += 1
        return True

    def stop(self) -> None:
        """Stop the thread and publish the final figures."""
        self._stop.set()
        self._thread.join(5)
        self.publish()


def start_publisher(cache: QueryCache, interval: float | None) -> Publisher | None:
    """A :class:`Publisher` for ``cache`` if it has Redis and ``interval`` is set."""
    if interval is None:
        return None
    number("publish_stats", interval)
    if cache.redis is None:
        return None
    return Publisher(cache, float(interval))


def read_fleet(client: Any, namespace: str = "default") -> list[dict[str, Any]]:
    """The latest report of every live process of ``namespace`` (``client``:
    a ``redis.Redis``)."""
    index = _index_key(namespace)
    ids = [i.decode() if isinstance(i, bytes) else i for i in client.zrange(index, 0, -1)]
    if not ids:
        return []
    out = []
    for raw in client.mget([f"{index}:{i}" for i in ids]):
        if raw is None:
            continue  # expired: the process stopped publishing
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("schema") == "querycache.report":
            out.append(data)
    out.sort(key=lambda d: d["processes"][0]["id"])
    return out


def fleet_report(url: str, namespace: str = "default") -> Report:
    """The merged report of every process publishing to ``url`` in ``namespace``."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return Report(merge(read_fleet(client, namespace)))
    finally:
        client.close()
