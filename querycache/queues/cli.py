"""``querycache queue status|retry|drop``: look at and repair a write-behind journal.

::

    querycache queue status [--journal URL] [--db URL] [--json]
    querycache queue retry  [--journal URL] [ID ...]     # re-queue dead letters
    querycache queue drop   [--journal URL] [ID ...]     # delete dead letters

``--journal`` is ``sqlite:///path`` (default ``sqlite:///querycache-journal.db``)
or a ``redis://`` URL (with ``--namespace``/``--queue`` naming the stream);
without IDs, ``retry`` and ``drop`` act on every dead letter.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["add_queue"]

_DEFAULT = "sqlite:///querycache-journal.db"


def add_queue(sub: Any) -> None:
    """Add the ``queue`` verb to the ``querycache`` parser."""
    p = sub.add_parser("queue", help="inspect or repair a write-behind journal")
    verbs = p.add_subparsers(dest="queue_verb", metavar="VERB", required=True)
    for name, doc in (
        ("status", "pending entries, oldest age, dead letters with their errors"),
        ("retry", "re-queue dead letters (all, or the given ids)"),
        ("drop", "delete dead letters (all, or the given ids)"),
    ):
        v = verbs.add_parser(name, help=doc, description=doc)
        v.add_argument("--journal", default=_DEFAULT, metavar="URL", help="default: %(default)s")
        v.add_argument("--namespace", default="default", help="Redis journals: cache namespace")
        v.add_argument("--queue", default="default", help="Redis journals: queue name")
        if name == "status":
            v.add_argument("--db", metavar="URL", help="target database: count applied ids")
            v.add_argument("--applied-table", default=None, help="name of the applied-ids table")
            v.add_argument("--json", action="store_true", help="print JSON")
        else:
            v.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids")
        v.set_defaults(func=cmd_queue)


def _journal(args: argparse.Namespace) -> Any:
    from querycache.queues.journal import SqliteJournal

    url = args.journal
    if url.startswith("sqlite:///"):
        return SqliteJournal(url[len("sqlite:///") :])
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        from querycache.queues.redis_journal import RedisJournal

        return RedisJournal(
            redis.Redis.from_url(url, socket_timeout=10), args.namespace, args.queue
        )
    raise SystemExit(
        f"querycache queue: --journal must be sqlite:///path or redis://..., got {url}"
    )


def status(journal: Any, db: str | None = None, table: str | None = None) -> dict[str, Any]:
    """The figures ``queue status`` prints."""
    oldest = journal.oldest()
    out: dict[str, Any] = {
        "journal": journal.name,
        "pending": journal.pending(),
        "oldest_age_s": round(time.time() - oldest, 3) if oldest is not None else None,
        "dead_letters": [
            {"id": d.id, "sql": d.sql, "error": d.error, "failed_at": d.failed_at}
            for d in journal.dead_letters()
        ],
    }
    if db is not None:
        from sqlalchemy import create_engine, inspect

        from querycache.queues.applied import DEFAULT_TABLE, AppliedIds

        applied = AppliedIds(table or DEFAULT_TABLE, journal.name)
        engine = create_engine(db)
        try:
            with engine.connect() as conn:
                has = inspect(conn).has_table(applied.table.name)
                out["applied"] = applied.count(conn) if has else 0
        finally:
            engine.dispose()
    return out


def cmd_queue(args: argparse.Namespace) -> int:
    """Run one ``queue`` verb."""
    journal = _journal(args)
    try:
        if args.queue_verb == "status":
            figures = status(journal, args.db, args.applied_table)
            if args.json:
                print(json.dumps(figures, indent=2))
                return 0
            age = figures["oldest_age_s"]
            print(f"journal       {figures['journal']}")
            print(f"pending       {figures['pending']}")
            print(f"oldest age    {'-' if age is None else f'{age:.1f}s'}")
            if "applied" in figures:
                print(f"applied       {figures['applied']} (ids kept in the database)")
            print(f"dead letters  {len(figures['dead_letters'])}")
            for d in figures["dead_letters"]:
                print(f"  {d['id']}: {d['error']}\n      {d['sql'][:200]}")
            return 0
        ids = list(args.ids) or None
        if args.queue_verb == "retry":
            print(f"re-queued {journal.retry(ids)} dead letter(s)")
        else:
            print(f"dropped {journal.drop(ids)} dead letter(s)")
        return 0
    finally:
        journal.close()
