"""Run every benchmark in sequence: ``python -m benchmarks [--quick] [--only NAME ...]``.

This is what ``make bench`` runs. Each benchmark runs in its own Python process
(``python -m benchmarks.bench_<name>``), starts and stops its own servers, and
prints its table; the numbers and how to read them are in docs/benchmarks.md.
``--quick`` passes ``--quick`` on (shorter runs, for a smoke test); the codec
and analysis benchmarks get ``--repeat 3`` and ``--rounds 1`` instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> (full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "codec": ([], ["--repeat", "3", "--rows", "1", "100"]),
    "analysis": ([], ["--rounds", "1"]),
    "core": ([], ["--quick"]),
    "workload": ([], ["--quick"]),
    "redis": ([], ["--quick"]),
    "propagation": ([], ["--quick"]),
    "stats": ([], ["--quick"]),
    "write_behind": ([], ["--quick"]),
    "lease": ([], ["--quick"]),
    "precise_redis": ([], ["--quick"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)})",
    )
    args = parser.parse_args(argv)
    failed = []
    start = time.perf_counter()
    for name, (full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *(quick if args.quick else full)]
        print(f"==> {' '.join(['python', *cmd[1:]])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"<== bench_{name}: exit {rc} in {time.perf_counter() - t:.0f}s\n", flush=True)
        if rc:
            failed.append(name)
    print(
        f"all benchmarks done in {time.perf_counter() - start:.0f}s"
        + (f"; failed to run: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
