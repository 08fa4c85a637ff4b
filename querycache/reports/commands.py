"""``querycache report`` and ``querycache top``: the fleet from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from querycache.reports.fleet import fleet_report, read_fleet
from querycache.reports.merge import merge

__all__ = ["cmd_report", "cmd_top", "render_top"]


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
