"""Query analysis speed: first analysis with and without sqlglotc, and memo hits.

Run: ``.venv/bin/python -m benchmarks.bench_analysis [--rounds 3]``

* first analysis: every statement of ``tests/analysis_corpus`` analysed with the
  memo disabled, so each call parses; per statement the median of ``--rounds``
  runs, then the median and p99 over statements. It runs twice, each time in a
  fresh subprocess: once as installed (sqlglotc's compiled modules) and once
  with sqlglot's compiled extension modules hidden from the import system, so
  the pure-Python ``.py`` files load. Each subprocess reports which one it ran
  (``sqlglot.tokens.SQLGLOTC_INSTALLED`` and the parser module's file), and the
  run fails if the pure one did not really run pure Python.
* memo hit: ``Analyzer.analyze`` on strings already analysed (must be <= 2 µs),
  next to the raw cost of the two memo designs considered.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "analysis_corpus"
HIT_BUDGET_US = 2.0
_PURE_ENV = "QUERYCACHE_BENCH_PURE_SQLGLOT"


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Import ``sqlglot.*`` from ``.py`` files, ignoring the compiled ``.so`` next to them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname != "sqlglot" and not fullname.startswith("sqlglot."):
            return None
        loaders = [(importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)]
        for entry in path or sys.path:
            spec = importlib.machinery.FileFinder(entry or ".", *loaders).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def corpus() -> list[tuple[str, str]]:
    """``(sql, dialect)`` for every statement of the test corpus."""
    items: list[tuple[str, str]] = []
    for path in sorted(CORPUS.glob("*.toml")):
        for case in tomllib.loads(path.read_text(encoding="utf-8"))["case"]:
            dialects = case["dialect"]
            for d in [dialects] if isinstance(dialects, str) else dialects:
                items.append((case["sql"], d))
    for row in json.loads((CORPUS / "orm.json").read_text(encoding="utf-8")):
        items.append((row["sql"], row["dialect"]))
    return items


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def worker(rounds: int) -> dict[str, Any]:
    """Measure first-analysis times in this process (called in a subprocess)."""
    if os.environ.get(_PURE_ENV) == "1":
        sys.meta_path.insert(0, _SourceOnly())
    import sqlglot.parser
    import sqlglot.tokens

    from querycache.analysis import Analyzer

    items = corpus()
    analyzer = Analyzer(max_entries=0)
    for sql, dialect in items:  # warm up: dialect objects, lazy tables
        analyzer.analyze(sql, dialect)
    per_statement = []
    for sql, dialect in items:
        runs = []
        for _ in range(rounds):
            t = time.perf_counter()
            analyzer.analyze(sql, dialect)
            runs.append(time.perf_counter() - t)
        per_statement.append(statistics.median(runs) * 1e6)
    return {
        "compiled": bool(sqlglot.tokens.SQLGLOTC_INSTALLED),
        "parser_file": Path(sqlglot.parser.__file__).name,
        "statements": len(items),
        "median_us": statistics.median(per_statement),
        "p99_us": _percentile(per_statement, 0.99),
        "max_us": max(per_statement),
    }


def _run_worker(pure: bool, rounds: int) -> dict[str, Any]:
    env = dict(os.environ, **{_PURE_ENV: "1" if pure else "0"})
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_analysis", "--worker", "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _per_call_us(fn: Any, keys: list[tuple[str, str]], repeat: int = 5) -> float:
    """Best-of-``repeat`` mean time of ``fn(sql, dialect)`` over ``keys``, in µs."""
    loops = max(1, 200_000 // len(keys))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(loops):
            for sql, dialect in keys:
                fn(sql, dialect)
        best = min(best, (time.perf_counter() - t) / (loops * len(keys)))
    return best * 1e6


def memo_costs() -> dict[str, float]:
    """Memo-hit cost of ``Analyzer.analyze`` and of the two designs considered."""
    from querycache.analysis import Analyzer

    items = corpus()
    analyzer = Analyzer()
    for sql, dialect in items:
        analyzer.analyze(sql, dialect)

    cached = lru_cache(maxsize=4096)(lambda sql, dialect: (sql, dialect))
    lock = threading.Lock()
    od: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def ordered_dict(sql: str, dialect: str) -> Any:
        key = (sql, dialect)
        with lock:
            value = od.get(key)
            if value is not None:
                od.move_to_end(key)
                return value
            od[key] = value = (sql, dialect)
            if len(od) > 4096:
                od.popitem(last=False)
            return value

    for sql, dialect in items:
        cached(sql, dialect)
        ordered_dict(sql, dialect)
    return {
        "Analyzer.analyze (memo hit)": _per_call_us(analyzer.analyze, items),
        "raw functools.lru_cache": _per_call_us(cached, items),
        "raw OrderedDict + Lock LRU": _per_call_us(ordered_dict, items),
    }


def list_lengths(lengths: range = range(2, 202)) -> dict[str, float]:
    """First analysis of a ``selectinload``-style statement at each list length
    (each a new SQL string): from the shared template, and in full."""
    from querycache.analysis import analyzer as module

    def sql(n: int) -> str:
        items = ", ".join(f"%(order_id_1_{i})s::INTEGER" for i in range(1, n + 1))
        return (
            "SELECT order_items.order_id, order_items.id, order_items.product_id, "
            "order_items.quantity FROM order_items "
            f"WHERE order_items.order_id IN ({items}) ORDER BY order_items.id"
        )

    strings = [sql(n) for n in lengths]
    out = {}
    for label, shared in (("from the template", True), ("analysed in full", False)):
        collapse = module.collapse
        if not shared:
            module.collapse = lambda sql, family: None  # type: ignore[assignment]
        try:
            an = module.Analyzer()
            an.analyze(sql(1), "postgresql")
            t0 = time.perf_counter()
            for text in strings:
                an.analyze(text, "postgresql")
            out[label] = (time.perf_counter() - t0) / len(strings) * 1e6
        finally:
            module.collapse = collapse
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per statement (median)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.rounds)))
        return 0

    compiled = _run_worker(False, args.rounds)
    pure = _run_worker(True, args.rounds)
    if pure["compiled"] or not pure["parser_file"].endswith(".py"):
        print(f"the pure-Python run loaded compiled sqlglot ({pure}); aborting")
        return 1
    memo = memo_costs()
    lists = list_lengths()

    print(
        f"querycache analysis benchmark: {compiled['statements']} corpus statements, "
        f"median of {args.rounds} runs each"
    )
    print(f"machine: {_cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print()
    print(
        f"{'first analysis (memo off)':<34}{'median µs':>11}{'p99 µs':>10}{'max µs':>10}"
        f"  parser module"
    )
    for label, r in (("sqlglot + sqlglotc (compiled)", compiled), ("sqlglot pure Python", pure)):
        print(
            f"{label:<34}{r['median_us']:>11.0f}{r['p99_us']:>10.0f}{r['max_us']:>10.0f}"
            f"  {r['parser_file']}"
        )
    print(
        f"{'speed-up from sqlglotc':<34}{pure['median_us'] / compiled['median_us']:>10.1f}x"
        f"{pure['p99_us'] / compiled['p99_us']:>9.1f}x"
    )
    print()
    print(f"{'memoized repeat':<34}{'µs/call':>11}")
    for label, us in memo.items():
        print(f"{label:<34}{us:>11.3f}")
    print()
    print(f"{'a new IN-list length (selectin)':<34}{'µs/call':>11}")
    for label, us in lists.items():
        print(f"{label:<34}{us:>11.0f}")
    hit = memo["Analyzer.analyze (memo hit)"]
    verdict = "OK" if hit <= HIT_BUDGET_US else "OVER BUDGET"
    print(f"memo hit budget {HIT_BUDGET_US} µs: {verdict}")
    return 0 if hit <= HIT_BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
