"""The ``querycache`` command line.

::

    querycache demo [--db URL] [--scale F] [--ops N] [--threads N] [--redis URL]
                    [--seed N] [--write-ratio F]
    querycache sample [--db URL] [--scale F] [--seed N] [--if-absent]
    querycache report --redis URL [--namespace N] [--format text|json|html] [-o FILE]
    querycache top --redis URL [--namespace N] [--interval S] [--iterations N]
    querycache queue status|retry|drop [--journal URL]

Each verb is a function that adds its subparser (``_add_<verb>``) and sets
``func`` to the function that runs it; add a verb by adding one to
:data:`VERBS`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from querycache import __version__

__all__ = ["VERBS", "ExecutionCounter", "build_parser", "main"]

from querycache.demo import (
    DEMO_OPS,
    DEMO_SCALE,
    DEMO_THREADS,
    ExecutionCounter,
    cmd_demo,
    shown,
)
from querycache.queues.cli import add_queue
from querycache.reports.commands import _add_report, _add_top

SAMPLE_SEED = 42


def _add_demo(sub: Any) -> None:
    from sample_db.urls import DEFAULT_URL

    p = sub.add_parser(
        "demo",
        help="run the sample workload plain and through querycache, side by side",
        description="Build the sample shop if absent, run the same seeded workload on a "
        "plain engine and through querycache, and compare.",
    )
    p.add_argument(
        "--db",
        default=DEFAULT_URL,
        metavar="URL",
        help="database URL (default: the SQLite file sample_db/data/shop.sqlite)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=DEMO_SCALE,
        help="sample size, 1.0 = 100k orders (default: %(default)s)",
    )
    p.add_argument(
        "--ops", type=int, default=DEMO_OPS, help="operations per run (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEMO_THREADS,
        help="worker threads (default: %(default)s: every read is checked exactly)",
    )
    p.add_argument("--redis", metavar="URL", help="also use a Redis tier at URL")
    p.add_argument("--seed", type=int, default=7, help="workload seed (default: %(default)s)")
    p.add_argument(
        "--write-ratio",
        type=float,
        default=0.05,
        help="share of operations that write (default: %(default)s)",
    )
    p.add_argument(
        "--html",
        default="querycache-report.html",
        metavar="FILE",
        help="where to write the HTML hit report (default: %(default)s)",
    )
    p.set_defaults(func=cmd_demo)


def _add_sample(sub: Any) -> None:
    from sample_db.urls import DEFAULT_URL

    p = sub.add_parser(
        "sample",
        help="build the sample shop database",
        description="Migrate the database to head and fill it with the "
        "deterministic sample shop (replacing its rows).",
    )
    p.add_argument("--db", default=DEFAULT_URL, metavar="URL", help="database URL")
    p.add_argument(
        "--scale",
        type=float,
        default=DEMO_SCALE,
        help="size, 1.0 = 100k orders (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=SAMPLE_SEED, help="default: %(default)s")
    p.add_argument(
        "--if-absent", action="store_true", help="only build when the database is absent or empty"
    )
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """``querycache sample``: build (or ensure) the sample database."""
    from sample_db.generate import SampleMismatch, build, ensure

    t0 = time.perf_counter()
    try:
        if args.if_absent:
            built = ensure(args.db, args.scale, args.seed)
        else:
            build(args.db, scale=args.scale, seed=args.seed)
            built = True
    except SampleMismatch as exc:
        print(f"querycache sample: {exc}", file=sys.stderr)
        return 2
    state = "built" if built else "already there"
    print(f"{state}: {shown(args.db)} (scale {args.scale}) in {time.perf_counter() - t0:.1f}s")
    return 0


#: the verbs: each adds its subparser to the ``add_subparsers`` object it is given
VERBS: list[Callable[[Any], None]] = [_add_demo, _add_sample, _add_report, _add_top, add_queue]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb of :data:`VERBS`."""
    parser = argparse.ArgumentParser(
        prog="querycache",
        description="querycache: a read-through query cache for SQLAlchemy.",
    )
    parser.add_argument("--version", action="version", version=f"querycache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``querycache`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
