"""A child process of tests/test_fleet.py: one cache publishing to Redis.

``python tests/fleet_worker.py '<json config>'`` with ``redis_url``,
``namespace``, ``db`` (a SQLite file), ``reads`` (how many times to run the
shared query) and ``own`` (how many times a query only this process runs).
It runs the reads, publishes once (so the parent knows what is published),
prints ``{"event": "published", ...}`` with what its database executed, keeps
publishing every 0.2 s, and on a line ``exit`` on stdin closes its cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from dbcount import SqliteTrace
from sqlalchemy import create_engine, text

from querycache import QueryCache

SHARED = "SELECT v FROM kv WHERE k = :k"
SECRET = "fleet-secret-value"


def main() -> int:
    cfg = json.loads(sys.argv[1])
    cache = QueryCache(redis_url=cfg["redis_url"], namespace=cfg["namespace"], publish_stats=0.2)
    if cache.bus is not None and not cache.bus.connected.wait(10):
        print(json.dumps({"event": "error", "what": "bus did not connect"}), flush=True)
        return 1
    engine = create_engine(f"sqlite:///{cfg['db']}")
    trace = SqliteTrace(engine)  # before wrap(), which connects
    cache.wrap(engine)
    with engine.connect() as conn:
        for _ in range(cfg["reads"]):
            conn.execute(text(SHARED), {"k": SECRET}).all()
        for _ in range(cfg["own"]):
            conn.execute(text(f"SELECT count(*) FROM kv WHERE k <> '{cfg['name']}'")).all()
    assert cache.publisher is not None
    cache.redis.flush()  # the Redis store of our miss is written before we say so
    ok = cache.publisher.publish()
    print(
        json.dumps(
            {
                "event": "published",
                "ok": ok,
                "shared_executions": trace.count("FROM kv WHERE k ="),
                "own_executions": trace.count("FROM kv WHERE k <>"),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if line.strip() == "exit":
            break
    cache.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
