"""The workload: deterministic, runs sync/threaded/async without errors, the demo CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from sample_db.generate import build
from sample_db.keys import Zipf
from sample_db.models import Inventory, Order, OrderItem
from sample_db.urls import async_url
from sample_db.workload import (
    READ_OPERATIONS,
    WRITE_OPERATIONS,
    Workload,
    all_reads,
    run,
    run_async,
)

SCALE = 0.02
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('workload') / 'shop.sqlite'}"
    build(url, scale=SCALE, seed=42, progress=False)
    return url


@pytest.fixture(scope="module")
def pg_db(postgres) -> str:
    url = postgres.create_database("workload_runs")
    build(url, scale=SCALE, seed=42, progress=False)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


def assert_consistent(url: str) -> None:
    """Every order's total is the sum of its items; no stock below zero."""
    engine = create_engine(url)
    with engine.connect() as conn:
        sums: dict[int, Decimal] = defaultdict(Decimal)
        for oid, qty, price in conn.execute(
            select(OrderItem.order_id, OrderItem.quantity, OrderItem.unit_price)
        ):
            sums[oid] += qty * price
        totals = dict(conn.execute(select(Order.id, Order.total)).all())
        negative = conn.execute(
            select(func.count()).select_from(Inventory).where(Inventory.quantity < 0)
        ).scalar()
    engine.dispose()
    assert all(sums[oid] == total for oid, total in totals.items())
    assert set(sums) == set(totals)
    assert negative == 0


def test_operations_are_deterministic():
    ops = Workload(scale=SCALE, seed=7).operations(500)
    assert ops == Workload(scale=SCALE, seed=7).operations(500)
    assert Workload(scale=SCALE, seed=7).operations(100) == ops[:100]
    assert Workload(scale=SCALE, seed=7).operations(50, start=200) == ops[200:250]
    assert [o.index for o in ops] == list(range(500))
    assert ops != Workload(scale=SCALE, seed=8).operations(500)
    assert all_reads(Workload(scale=SCALE, seed=7)) == all_reads(Workload(scale=SCALE, seed=7))


def test_every_kind_occurs_and_the_write_ratio_is_respected():
    n = 4000
    for ratio in (0.0, 0.05, 0.3, 1.0):
        ops = Workload(scale=SCALE, seed=3, write_ratio=ratio).operations(n)
        writes = sum(op.is_write for op in ops)
        assert abs(writes / n - ratio) < 0.025, (ratio, writes)
        assert all(op.is_write == (op.name in WRITE_OPERATIONS) for op in ops)
    names = Counter(op.name for op in Workload(scale=SCALE, seed=3, write_ratio=0.3).operations(n))
    assert set(names) == set(READ_OPERATIONS) | set(WRITE_OPERATIONS)
    with pytest.raises(ValueError):
        Workload(write_ratio=1.5)


def test_zipf_is_skewed_and_seeded():
    import random

    zipf = Zipf(1000, 1.1)
    draws = Counter(zipf.rank(random.Random(i)) for i in range(5000))
    assert set(draws) <= set(range(1, 1001))
    assert draws[1] > draws[2] > draws[10] and draws[1] > 5000 * 0.1
    wl = Workload(scale=SCALE, seed=7)
    keys = Counter(
        op.params["customer_id"]
        for op in wl.operations(3000)
        if "customer_id" in op.params and not op.is_write
    )
    assert keys.most_common(1)[0][1] > 0.08 * sum(keys.values())


def test_single_thread_run_on_sqlite(sqlite_db):
    engine = create_engine(sqlite_db)
    results: dict[int, object] = {}
    stats = run(
        sessionmaker(bind=engine, expire_on_commit=False),
        ops=400,
        threads=1,
        seed=11,
        write_ratio=0.1,
        scale=SCALE,
        results=results,
    )
    engine.dispose()
    assert stats.errors == 0, stats.error_samples
    assert stats.ops == 400 and stats.reads + stats.writes == 400
    assert stats.writes > 10
    assert 0 < stats.p50_ms <= stats.p99_ms and stats.ops_per_sec > 0
    assert len(results) == stats.reads
    assert_consistent(sqlite_db)


def test_four_threads(db_url):
    engine = create_engine(db_url)
    stats = run(
        sessionmaker(bind=engine, expire_on_commit=False),
        ops=600,
        threads=4,
        seed=12,
        write_ratio=0.2,
        scale=SCALE,
    )
    engine.dispose()
    assert stats.errors == 0, stats.error_samples
    assert stats.ops == 600 and stats.writes > 60
    assert_consistent(db_url)


async def test_asyncio_run(db_url):
    engine = create_async_engine(async_url(db_url))
    try:
        stats = await run_async(
            async_sessionmaker(bind=engine, expire_on_commit=False),
            ops=600,
            concurrency=8,
            seed=13,
            write_ratio=0.2,
            scale=SCALE,
        )
    finally:
        await engine.dispose()
    assert stats.errors == 0, stats.error_samples
    assert stats.ops == 600 and stats.writes > 60
    assert_consistent(db_url)


async def test_sync_and_async_reads_agree(db_url):
    ops = all_reads(Workload(scale=SCALE, seed=21), per_kind=2)
    engine = create_engine(db_url)
    sync_session = sessionmaker(bind=engine, expire_on_commit=False)
    expected = []
    for op in ops:
        with sync_session() as session:
            expected.append(op.run(session))
    engine.dispose()
    aengine = create_async_engine(async_url(db_url))
    async_session = async_sessionmaker(bind=aengine, expire_on_commit=False)
    try:
        for op, want in zip(ops, expected, strict=True):
            async with async_session() as session:
                assert await op.run_async(session) == want, op.name
    finally:
        await aengine.dispose()


def test_writes_can_be_replayed_on_the_same_database(sqlite_db):
    """The same new_order operations twice: fresh public ids, no conflicts."""
    wl = Workload(scale=SCALE, seed=99, write_ratio=1.0)
    ops = [op for op in wl.operations(200) if op.name == "new_order"][:10]
    engine = create_engine(sqlite_db)
    session_factory = sessionmaker(bind=engine, expire_on_commit=False)
    before = _count_orders(engine)
    for _ in range(2):
        for op in ops:
            with session_factory() as session:
                op.run(session)
    assert _count_orders(engine) == before + 2 * len(ops)
    engine.dispose()


def _count_orders(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Order)).scalar()


def test_demo_prints_the_side_by_side_table(tmp_path):
    db = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "querycache.cli",
            "demo",
            "--db",
            db,
            "--scale",
            "0.01",
            "--ops",
            "500",
            "--threads",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if "plain" in line and "querycache" in line)
    assert header.index("plain") < header.index("querycache")
    for label in (
        "operations",
        "ops/s",
        "p50 latency ms",
        "p99 latency ms",
        "cache hit ratio",
        "db executions",
        "db executions saved",
    ):
        assert any(line.startswith(label) for line in out.splitlines()), label
    executions = next(line for line in out.splitlines() if line.startswith("db executions "))
    assert "n/a" not in executions  # counted on SQLite through the trace callback
    assert (tmp_path / "demo.sqlite").exists()


def test_demo_sides_start_from_identical_data_and_leave_the_database_unchanged(tmp_path):
    from querycache.demo import content_digest

    path = tmp_path / "demo.sqlite"
    db = f"sqlite:///{path}"
    args = ["--db", db, "--scale", "0.01", "--ops", "300", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "querycache.cli", "demo", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = content_digest(path)  # the demo copies, never writes, the sample
    line = next(ln for ln in proc.stdout.splitlines() if "identical data" in ln)
    assert line.endswith(f"(content digest {source})")
    summary = next(ln for ln in proc.stdout.splitlines() if ln.startswith("querycache: "))
    assert " 0 stale reads in " in summary
    assert (tmp_path / "querycache-report.html").exists()
