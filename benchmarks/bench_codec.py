"""Codec speed and size against pickle on typical query results.

Run: ``.venv/bin/python -m benchmarks.bench_codec [--rows 1 10 100 1000] [--repeat 15]``

The value is what the cache stores for a query: ``(description, rows)`` where
rows look like an orders/customers table as psycopg returns it (int, str,
Decimal, timestamptz with a ZoneInfo, UUID, bool, NULLs, a small jsonb dict).
Times are the best of ``--repeat`` interleaved runs, per call and per 100 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import pickle  # the baseline being compared against; never used by the codec
import platform
import random
import timeit
import uuid
import zlib
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

from querycache.tiers.codec import Codec

COLUMNS = [
    ("id", 23),
    ("customer", 25),
    ("email", 25),
    ("total", 1700),
    ("created_at", 1184),
    ("ref", 2950),
    ("paid", 16),
    ("note", 25),
    ("meta", 3802),
    ("qty", 23),
]


def make_result(nrows: int, seed: int = 1) -> tuple[Any, list[tuple[Any, ...]]]:
    """A ``(description, rows)`` value like a 10-column orders query."""
    rnd = random.Random(seed)
    zone = ZoneInfo("Europe/Paris")
    start = dt.datetime(2024, 1, 1, tzinfo=zone)
    description = tuple((name, oid, None, None, None, None, None) for name, oid in COLUMNS)
    rows = [
        (
            i + 1,
            f"Customer {rnd.randrange(10**6)}",
            f"user{i}@example.com",
            Decimal(rnd.randrange(10**7)) / 100,
            start + dt.timedelta(seconds=rnd.randrange(10**7), microseconds=rnd.randrange(10**6)),
            uuid.UUID(int=rnd.getrandbits(128), version=4),
            rnd.random() < 0.5,
            None if i % 3 else "gift wrap",
            {"source": rnd.choice(["web", "app", "phone"]), "items": rnd.randrange(1, 9)},
            rnd.randrange(1, 20),
        )
        for i in range(nrows)
    ]
    return description, rows


def measure(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best seconds per call of each function; runs are interleaved so load hits all alike."""
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    numbers = {name: max(1, t.autorange()[0] // 4) for name, t in timers.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(numbers[name]) / numbers[name])
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def variants(value: Any) -> dict[str, tuple[Callable[[], bytes], Callable[[bytes], object]]]:
    """name -> (encode, decode) on ``value``; pickle and pickle+zlib are the baselines."""
    key = b"k" * 32
    out: dict[str, tuple[Callable[[], bytes], Callable[[bytes], object]]] = {
        "pickle": (lambda: pickle.dumps(value, protocol=5), pickle.loads),
        "pickle+zlib": (
            lambda: zlib.compress(pickle.dumps(value, protocol=5), 1),
            lambda b: pickle.loads(zlib.decompress(b)),
        ),
    }
    for name, codec in {
        "codec": Codec(compress_level=0),
        "codec+zlib": Codec(compress_threshold=0),
        "codec+hmac": Codec(signing_key=key, compress_level=0),
        "codec+zlib+hmac": Codec(signing_key=key, compress_threshold=0),
    }.items():
        out[name] = (partial(codec.encode, value), codec.decode)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, msgpack {msgpack.version}, {cpu_model()}")
    print(
        f"{'variant':<17}{'rows':>5}{'enc us':>9}{'dec us':>9}{'enc/100r':>10}{'dec/100r':>10}"
        f"{'bytes':>8}{'enc/pickle':>11}{'dec/pickle':>11}"
    )
    for nrows in args.rows:
        value = make_result(nrows)
        pairs = variants(value)
        blobs = {name: enc() for name, (enc, _) in pairs.items()}
        for name, (_, dec) in pairs.items():
            assert dec(blobs[name]) == value, name
        enc_t = measure({name: enc for name, (enc, _) in pairs.items()}, args.repeat)
        dec_t = measure(
            {name: partial(dec, blobs[name]) for name, (_, dec) in pairs.items()}, args.repeat
        )
        for name in pairs:
            enc_us, dec_us = enc_t[name] * 1e6, dec_t[name] * 1e6
            print(
                f"{name:<17}{nrows:>5}{enc_us:>9.1f}{dec_us:>9.1f}"
                f"{enc_us * 100 / nrows:>10.1f}{dec_us * 100 / nrows:>10.1f}"
                f"{len(blobs[name]):>8}{enc_t[name] / enc_t['pickle']:>11.2f}"
                f"{dec_t[name] / dec_t['pickle']:>11.2f}"
            )
    print("us = microseconds per call, /100r = per 100 rows; best of --repeat interleaved runs")


if __name__ == "__main__":
    main()
