"""The fleet view: every process publishes its report to Redis; the CLI merges.

Layout (same ``{ns}`` hash tag as the cache's keys, so one Cluster slot)::

    qc:{ns}:fleet               sorted set: process id -> last publish time
    qc:{ns}:fleet:<process id>  that process's report (JSON), expiring after
                                max(3 intervals, 30 s) without a publish

A publisher thread (``QueryCache(publish_stats=10.0)``, with Redis) builds the
report off every query path and writes both keys in one pipeline; on
``close()`` it publishes a last time. What it publishes is the report's JSON
(fingerprints, never parameter values), at most :data:`MAX_ROWS` queries and
tables (the busiest; the totals stay exact). Readers merge the processes:
counters add up, latency histograms merge (so the p95 is the fleet's),
recommendations are made again from the merged figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from querycache.reports.build import finish, p95_of, timeline_deltas
from querycache.reports.model import CORE_SECTIONS, Report
from querycache.settings import number

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = [
    "MAX_ROWS",
    "Publisher",
    "fleet_report",
    "merge",
    "read_fleet",
    "render_top",
    "start_publisher",
]

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


def _add(into: dict[str, Any], d: dict[str, Any]) -> None:
    for k, v in d.items():
        into[k] = into.get(k, 0) + v


_SUMMED = (
    "calls", "hits", "memory_hits", "redis_hits", "coalesced", "misses", "bypass_count",
    "stores", "db_ms", "time_saved_ms", "bytes_held", "entries", "invalidations",
    "writes_dropping", "writes_skipped", "dropped_unused", "expired",
)  # fmt: skip


def _merge_extra(values: list[Any]) -> Any:
    """Extra sections: numbers add up, dicts merge key by key, lists concatenate."""
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return values[0] if len(set(values)) == 1 else values
    if all(isinstance(v, int | float) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: _merge_extra([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, list) for v in values):
        return [x for v in values for x in v]
    return values[0] if all(v == values[0] for v in values) else values


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report's data for many processes' data (with recommendations)."""
    from querycache.reports.build import totals_of

    queries: dict[str, dict[str, Any]] = {}
    hists: dict[str, list[Any]] = {}
    tables: dict[str, dict[str, Any]] = {}
    processes, degraded, samples = [], [], []
    errors: dict[str, int] = {}
    events: dict[str, int] = {}
    memory = dict.fromkeys(("entries", "bytes_held", "memory_budget", "evictions"), 0)
    for d in reports:
        proc = d["processes"][0]
        t = d["totals"]
        processes.append(
            {
                **proc,
                **{
                    k: t[k]
                    for k in (
                        "calls",
                        "hits",
                        "misses",
                        "bypasses",
                        "hit_ratio",
                        "time_saved_ms",
                        "entries",
                        "bytes_held",
                        "errors",
                    )
                },
            }
        )
        for k in memory:
            memory[k] += t.get(k, 0)
        for q in d["queries"]:
            m = queries.get(q["fingerprint_id"])
            hists.setdefault(q["fingerprint_id"], []).append(q.get("db_histogram", []))
            if m is None:
                queries[q["fingerprint_id"]] = m = {
                    **q,
                    **dict.fromkeys(_SUMMED, 0),
                    "bypasses": {},
                    "not_stored": {},
                    "invalidated_by": {},
                    "admissions": {},
                    "last_seen": None,
                }
            for k in _SUMMED:
                m[k] += q.get(k, 0)
            for k in ("bypasses", "not_stored", "invalidated_by"):
                _add(m[k], q.get(k, {}))
            m["admissions"][q["admission"]] = m["admissions"].get(q["admission"], 0) + 1
            if q.get("last_seen"):
                m["last_seen"] = max(m["last_seen"] or 0, q["last_seen"])
        for tb in d["tables"]:
            m = tables.setdefault(tb["table"], {"table": tb["table"], "_share": 0.0})
            for k in (
                "reads",
                "writes",
                "invalidations",
                "entries_dropped",
                "entries",
                "invalidation_pending",
            ):
                m[k] = m.get(k, 0) + tb[k]
            m["queries"] = max(m.get("queries", 0), tb["queries"])
            m["_share"] += tb["mean_drop_share"] * tb["invalidations"]
        degraded += [dict(p, process=proc["id"]) for p in d.get("degraded", [])]
        _add(errors, d.get("errors", {}))
        _add(events, d.get("events", {}))
        for p in d.get("timeline", []):
            samples.append(p)
    qrows = []
    for fid, m in queries.items():
        admissions = m.pop("admissions")
        m["admission"] = (
            max(admissions, key=admissions.get)
            if len(admissions) == 1
            else ("; ".join(f"{n} process(es): {a}" for a, n in admissions.items()))
        )
        timed = sum(n for h in hists[fid] for _, n in h)
        m["mean_db_ms"] = m["db_ms"] / timed if timed else 0.0
        m["p95_db_ms"] = p95_of(hists[fid])
        merged: dict[int, int] = {}
        for h in hists[fid]:
            for i, n in h:
                merged[i] = merged.get(i, 0) + n
        m["db_histogram"] = [[i, n] for i, n in sorted(merged.items())]
        m["hit_ratio"] = m["hits"] / m["calls"] if m["calls"] else 0.0
        qrows.append(m)
    qrows.sort(key=lambda q: (-q["time_saved_ms"], -q["calls"], q["fingerprint_id"]))
    trows = []
    for m in tables.values():
        share = m.pop("_share")
        m["mean_drop_share"] = share / m["invalidations"] if m["invalidations"] else 0.0
        trows.append(m)
    trows.sort(key=lambda t: (-(t["reads"] + t["writes"]), t["table"]))
    totals = totals_of(qrows, trows, memory, sum(errors.values()))
    now = time.time()
    start = min((d["window"]["start"] for d in reports), default=now)
    end = max((d["window"]["end"] for d in reports), default=now)
    data: dict[str, Any] = {
        "schema": "querycache.report",
        "version": reports[0]["version"] if reports else 1,
        "generated_at": now,
        "window": {"start": start, "end": end, "seconds": end - start},
        "processes": processes,
        "totals": totals,
        "queries": qrows,
        "tables": trows,
        "timeline": _merge_timeline(samples),
        "errors": errors,
        "events": events,
        "degraded": degraded,
    }
    extras = list(dict.fromkeys(k for d in reports for k in d if k not in CORE_SECTIONS))
    for k in extras:
        data[k] = _merge_extra([d[k] for d in reports if k in d])
    return finish(data)


def _merge_timeline(points: list[dict[str, Any]], buckets: int = 120) -> list[dict[str, Any]]:
    """Per-process intervals re-cut into at most ``buckets`` common ones."""
    if not points:
        return []
    t0 = min(p["t"] - p["seconds"] for p in points)
    t1 = max(p["t"] for p in points)
    step = max((t1 - t0) / buckets, 1.0)
    cum: list[list[float]] = []
    n = int((t1 - t0) / step) + 1
    sums = [[0, 0, 0] for _ in range(n)]
    for p in points:
        i = min(n - 1, int((p["t"] - t0) / step))
        sums[i][0] += p["hits"]
        sums[i][1] += p["misses"]
        sums[i][2] += p["bypasses"]
    total = [0, 0, 0]
    cum.append([t0, 0, 0, 0])
    for i, s in enumerate(sums):
        total = [a + b for a, b in zip(total, s)]
        cum.append([t0 + (i + 1) * step, *total])
    return timeline_deltas(cum)


def fleet_report(url: str, namespace: str = "default") -> Report:
    """The merged report of every process publishing to ``url`` in ``namespace``."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return Report(merge(read_fleet(client, namespace)))
    finally:
        client.close()


# -- the command line ---------------------------------------------------------------
def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="the hit report of every process publishing to a Redis",
        description="Merge the reports that querycache processes publish to Redis "
        "(QueryCache(redis_url=..., publish_stats=10)) and print or write them.",
    )
    p.add_argument("--redis", required=True, metavar="URL", help="the caches' Redis URL")
    p.add_argument("--namespace", default="default", help="cache namespace (default: %(default)s)")
    p.add_argument("--format", choices=("text", "json", "html"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``querycache report``."""
    try:
        report = fleet_report(args.redis, args.namespace)
    except Exception as exc:
        print(f"querycache report: cannot read {args.redis}: {exc}", file=sys.stderr)
        return 2
    if not report.as_dict()["processes"]:
        print(
            f"querycache report: no process publishes in namespace {args.namespace!r}",
            file=sys.stderr,
        )
    form = {"text": report.to_text, "json": report.to_json, "html": report.to_html}
    out = form[args.format]()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(out + "\n")
        print(f"wrote {args.output}")
    else:
        print(out)
    return 0


def render_top(data: dict[str, Any], previous: dict[str, Any] | None, width: int = 100) -> str:
    """One frame of ``querycache top``: processes and the busiest queries, with
    rates against the ``previous`` frame's data."""
    dt = (data["generated_at"] - previous["generated_at"]) if previous else 0.0
    before = {p["id"]: p for p in previous["processes"]} if previous else {}
    qbefore = {q["fingerprint_id"]: q for q in previous["queries"]} if previous else {}

    def rate(now: float, old: float | None) -> str:
        return f"{(now - old) / dt:,.1f}" if dt > 0 and old is not None else "-"

    t = data["totals"]
    out = [
        f"querycache top: {len(data['processes'])} processes, "
        f"{time.strftime('%H:%M:%S')}, hit ratio {t['hit_ratio']:.1%}, "
        f"{t['calls']:,} calls, database time avoided {t['time_saved_ms'] / 1000:,.1f} s",
        "",
        f"  {'calls/s':>9} {'hit%':>6} {'calls':>9} {'misses':>8} {'entries':>8} "
        f"{'errors':>6} {'age s':>6}  process",
    ]
    now = time.time()
    for p in data["processes"]:
        old = before.get(p["id"])
        out.append(
            f"  {rate(p['calls'], old['calls'] if old else None):>9} {p['hit_ratio']:>6.1%} "
            f"{p['calls']:>9,} {p['misses']:>8,} {p['entries']:>8,} {p['errors']:>6} "
            f"{now - p['published_at']:>6.1f}  {p['id']}"
        )
    out += ["", f"  {'calls/s':>9} {'hit%':>6} {'calls':>9} {'p95 ms':>7}  query"]
    busiest = sorted(data["queries"], key=lambda q: -q["calls"])[:15]
    for q in busiest:
        old = qbefore.get(q["fingerprint_id"])
        head = (
            f"  {rate(q['calls'], old['calls'] if old else None):>9} {q['hit_ratio']:>6.1%} "
            f"{q['calls']:>9,} {q['p95_db_ms']:>7.2f}  "
        )
        fp = " ".join(q["fingerprint"].split())
        room = max(20, width - len(head))
        out.append(head + (fp if len(fp) <= room else fp[: room - 3] + "..."))
    return "\n".join(out)


def _add_top(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="a live view of every process publishing to a Redis",
        description="Refresh a table of the fleet's processes and busiest queries.",
    )
    p.add_argument("--redis", required=True, metavar="URL", help="the caches' Redis URL")
    p.add_argument("--namespace", default="default", help="cache namespace (default: %(default)s)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    p.add_argument("--iterations", type=int, default=0, help="stop after N frames (0: never)")
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    """``querycache top``."""
    import redis

    client = redis.Redis.from_url(args.redis, socket_timeout=5, socket_connect_timeout=5)
    tty = sys.stdout.isatty()
    previous = None
    frames = 0
    try:
        while True:
            try:
                data = merge(read_fleet(client, args.namespace))
            except redis.RedisError as exc:
                print(f"querycache top: cannot read {args.redis}: {exc}", file=sys.stderr)
                return 2
            frame = render_top(data, previous)
            print(("\x1b[H\x1b[2J" if tty else "") + frame + ("" if tty else "\n"), flush=True)
            previous = data
            frames += 1
            if args.iterations and frames >= args.iterations:
                return 0
            time.sleep(args.interval)  # a display refresh, not synchronisation
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
