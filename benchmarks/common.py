"""Shared helpers of the server benchmarks (core, workload, redis, propagation).

* :class:`Env` starts a throw-away PostgreSQL (and, if asked, Redis) with
  :mod:`querycache.testing`, loads the sample shop at scale 1 into PostgreSQL
  and gives a private copy of the SQLite sample; everything is stopped and
  removed on exit. The pristine SQLite sample is built once and kept in
  ``benchmarks/.data/`` (git-ignored); benchmarks work on copies of it, so the
  workload's writes never reach the cached file.
* :func:`interleave` / :func:`ainterleave` time several *sides* (uncached,
  cached, ...) in alternating rounds, one latency per operation, so that
  machine noise hits every side alike; :class:`Lat` summarises them.
* :func:`table` prints a fixed-width table; :func:`machine` the versions.
* :func:`totals` / :func:`check_delta` read ``cache.report()`` to prove that
  the measured operations were hits (or misses) of the kind claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy

from querycache.testing import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / ".data"
SCALE = 1.0
#: the sample database's seed (rows), and the workload's seed (operations)
BUILD_SEED = 42
WORKLOAD_SEED = 7

_perf = time.perf_counter


def say(*parts: Any) -> None:
    """Progress to stderr (tables go to stdout)."""
    print(*parts, file=sys.stderr, flush=True)


# -- the sample databases ---------------------------------------------------------------


def pristine_sqlite() -> Path:
    """The sample at scale 1 as a SQLite file, built on first use."""
    from sample_db.generate import ensure

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"shop-scale{SCALE:g}-seed{BUILD_SEED}.sqlite"
    if not path.exists():
        tmp = path.with_suffix(".building.sqlite")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        t = _perf()
        ensure(f"sqlite:///{tmp}", scale=SCALE, seed=BUILD_SEED, progress=False)
        os.replace(tmp, path)
        say(f"built the SQLite sample in {_perf() - t:.1f}s: {path}")
    else:
        # migrate to head and check the scale (cheap when nothing changed)
        ensure(f"sqlite:///{path}", scale=SCALE, seed=BUILD_SEED, progress=False)
    for suffix in ("-wal", "-shm"):
        extra = Path(str(path) + suffix)
        if extra.exists() and extra.stat().st_size == 0:
            extra.unlink()
    return path


class Env:
    """Servers and sample databases of one benchmark run.

    ::

        with Env(redis=True) as env:
            env.pg_url, env.pg_async_url, env.sqlite_url, env.aiosqlite_url, env.redis_url
    """

    def __init__(self, *, postgres: bool = True, sqlite: bool = True, redis: bool = False) -> None:
        self.want_pg = postgres
        self.want_sqlite = sqlite
        self.want_redis = redis
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="qc-bench-"))
        self.pg_url = self.pg_async_url = self.sqlite_url = self.aiosqlite_url = ""
        self.redis_url = ""

    def __enter__(self) -> Env:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from sample_db.generate import build

        if self.want_sqlite:
            src = pristine_sqlite()
            dst = self.tmp / "shop.sqlite"
            shutil.copyfile(src, dst)
            self.sqlite_url = f"sqlite:///{dst}"
            self.aiosqlite_url = f"sqlite+aiosqlite:///{dst}"
        if self.want_redis:
            self.redis = RedisServer().start()
            self.redis_url = self.redis.url
        if self.want_pg:
            t = _perf()
            self.pg = PostgresServer().start()
            self.pg_url = self.pg.create_database("shop")
            build(self.pg_url, scale=SCALE, seed=BUILD_SEED, progress=False)
            self.pg_async_url = self.pg.url("asyncpg", "shop")
            say(f"PostgreSQL started and sample loaded in {_perf() - t:.1f}s")

    def fresh_pg(self, name: str) -> str:
        """A new database copied from the loaded sample (``CREATE DATABASE ... TEMPLATE``)."""
        assert self.pg is not None
        self.pg.drop_database(name)
        with self.pg.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "shop"')
        return self.pg.url("psycopg", name)

    def fresh_sqlite(self, name: str) -> str:
        """A new copy of the pristine SQLite sample."""
        dst = self.tmp / f"{name}.sqlite"
        shutil.copyfile(pristine_sqlite(), dst)
        return f"sqlite:///{dst}"

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.pg is not None:
            self.pg.stop()
            self.pg = None
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine(env: Env | None = None) -> str:
    """One line: CPU, cores, CPython, SQLAlchemy, PostgreSQL and Redis versions."""
    parts = [
        f"{cpu_model()}, {os.cpu_count()} cores",
        f"CPython {platform.python_version()}",
        f"SQLAlchemy {sqlalchemy.__version__}",
    ]
    if env is not None and env.pg is not None:
        from sqlalchemy import create_engine, text

        eng = create_engine(env.pg_url)
        try:
            with eng.connect() as conn:
                parts.append(f"PostgreSQL {conn.execute(text('SHOW server_version')).scalar()}")
        finally:
            eng.dispose()
    if env is not None and env.redis is not None:
        client = env.redis.client()
        try:
            parts.append(f"Redis {client.info('server')['redis_version']}")
        finally:
            client.close()
    return "; ".join(parts)


# -- timing -----------------------------------------------------------------------------


class Lat:
    """Per-operation latencies of one side, in seconds."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.values = list(values)

    def add(self, v: float) -> None:
        self.values.append(v)

    def __len__(self) -> int:
        return len(self.values)

    def q(self, frac: float) -> float:
        s = sorted(self.values)
        return s[min(len(s) - 1, max(0, round(frac * (len(s) - 1))))]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


def interleave(
    sides: dict[str, Callable[[int], Any]],
    keys: Sequence[Any],
    rounds: int,
    per_round: int,
    before_each: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Lat]:
    """Time ``sides[name](key)`` one operation at a time, in alternating rounds.

    Round ``r`` runs ``per_round`` operations on each side in turn, the order
    of sides rotating every round; every side gets the same keys in the same
    order. ``before_each[name]()`` runs before each timed operation of that
    side, outside the timing (e.g. to empty a memory tier).
    """
    names = list(sides)
    out = {n: Lat() for n in names}
    before_each = before_each or {}
    pos = 0
    for r in range(rounds):
        batch = [keys[(pos + i) % len(keys)] for i in range(per_round)]
        pos += per_round
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        gc.collect()
        for name in order:
            fn = sides[name]
            prep = before_each.get(name)
            lat = out[name]
            for k in batch:
                if prep is not None:
                    prep()
                t = _perf()
                fn(k)
                lat.add(_perf() - t)
    return out


async def ainterleave(
    sides: dict[str, Callable[[Any], Awaitable[Any]]],
    keys: Sequence[Any],
    rounds: int,
    per_round: int,
) -> dict[str, Lat]:
    """:func:`interleave` for coroutine functions (run inside one event loop)."""
    names = list(sides)
    out = {n: Lat() for n in names}
    pos = 0
    for r in range(rounds):
        batch = [keys[(pos + i) % len(keys)] for i in range(per_round)]
        pos += per_round
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        gc.collect()
        for name in order:
            fn = sides[name]
            lat = out[name]
            for k in batch:
                t = _perf()
                await fn(k)
                lat.add(_perf() - t)
    return out


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- cache counters ---------------------------------------------------------------------


def totals(cache: Any) -> dict[str, Any]:
    """``cache.report().as_dict()["totals"]`` (a copy)."""
    return dict(cache.report().as_dict()["totals"])


def check_delta(
    label: str, before: dict[str, Any], after: dict[str, Any], **expected: int
) -> dict[str, int]:
    """Differences of report totals; fail loudly unless each ``expected`` one matches
    (a value of ``-1`` means "at least one")."""
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
    for k, want in expected.items():
        got = delta[k]
        if (want == -1 and got < 1) or (want != -1 and got != want):
            raise AssertionError(
                f"{label}: expected {k} to grow by {want}, it grew by {got} (delta {delta})"
            )
    return delta  # type: ignore[return-value]


# -- output -----------------------------------------------------------------------------


def us(seconds: float) -> str:
    """Seconds as microseconds (or ms above 10 ms), fixed width friendly."""
    if seconds >= 0.01:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A fixed-width table; the first ``left`` columns are left-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
