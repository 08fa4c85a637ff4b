"""The sample shop: same rows on SQLite and PostgreSQL, same read results, determinism."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select

from sample_db.generate import SampleMismatch, build, ensure, is_built
from sample_db.models import Base, Order, OrderItem
from sample_db.normalize import normalize, rows
from sample_db.spec import Sizes
from sample_db.workload import READ_OPERATIONS, Workload, all_reads

SCALE = 0.02
TABLES = {"customers", "categories", "products", "inventory", "orders", "order_items", "reviews"}


def dump(url: str) -> dict[str, list[tuple]]:
    """Every sample table, ordered by primary key, normalized."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: rows(conn.execute(select(t).order_by(*t.primary_key.columns)))
                for t in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def run_reads(url: str, ops) -> list:
    from sqlalchemy.orm import sessionmaker

    engine = create_engine(url)
    try:
        session_factory = sessionmaker(bind=engine, expire_on_commit=False)
        out = []
        for op in ops:
            with session_factory() as session:
                out.append(op.run(session))
        return out
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sqlite_sample(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sample') / 'shop.sqlite'}"
    build(url, scale=SCALE, seed=42, progress=False)
    return url


@pytest.fixture(scope="module")
def pg_sample(postgres) -> str:
    url = postgres.create_database("sample_same_rows")
    build(url, scale=SCALE, seed=42, progress=False)
    return url


def test_sqlite_and_postgres_hold_the_same_rows(sqlite_sample, pg_sample):
    lite, pg = dump(sqlite_sample), dump(pg_sample)
    sizes = Sizes.for_scale(SCALE)
    assert set(lite) == set(pg) == TABLES
    assert len(lite["customers"]) == sizes.customers
    assert len(lite["products"]) == sizes.products
    assert len(lite["orders"]) == sizes.orders
    assert len(lite["categories"]) == sizes.categories
    assert len(lite["reviews"]) == sizes.reviews
    assert len(lite["order_items"]) > 2 * sizes.orders
    for name in sorted(TABLES):
        assert lite[name], name
        assert lite[name] == pg[name], f"table {name} differs"


def test_sample_values_have_the_promised_types(sqlite_sample):
    lite = dump(sqlite_sample)
    order = lite["orders"][0]
    assert len(order[1]) == 36 and order[1].count("-") == 4  # UUID
    assert order[5].startswith("2023-") and "+" not in order[5]  # naive UTC ISO
    product = lite["products"][0]
    assert product[5].startswith("{") and '"color"' in product[5]  # JSON
    assert isinstance(lite["customers"][0][4], bool)


def test_every_read_kind_returns_the_same_on_both(sqlite_sample, pg_sample):
    wl = Workload(scale=SCALE, seed=7)
    ops = all_reads(wl, per_kind=3)
    assert {op.name for op in ops} == set(READ_OPERATIONS)
    assert Workload.HEAVIEST in READ_OPERATIONS
    lite, pg = run_reads(sqlite_sample, ops), run_reads(pg_sample, ops)
    non_empty: dict[str, int] = defaultdict(int)
    for op, a, b in zip(ops, lite, pg, strict=True):
        assert a == b, f"{op.name} {op.params} differs"
        non_empty[op.name] += bool(a)
    empty_kinds = [name for name in READ_OPERATIONS if not non_empty[name]]
    assert not empty_kinds, f"these reads found nothing: {empty_kinds}"


def test_order_totals_match_their_items(sqlite_sample):
    engine = create_engine(sqlite_sample)
    with engine.connect() as conn:
        totals = dict(conn.execute(select(Order.id, Order.total)).all())
        sums: dict[int, Decimal] = defaultdict(Decimal)
        for oid, qty, price in conn.execute(
            select(OrderItem.order_id, OrderItem.quantity, OrderItem.unit_price)
        ):
            sums[oid] += qty * price
    engine.dispose()
    assert set(sums) == set(totals)
    assert all(sums[oid] == total for oid, total in totals.items())


def test_same_seed_same_data_other_seed_other_data(tmp_path, sqlite_sample):
    again = f"sqlite:///{tmp_path / 'again.sqlite'}"
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    build(again, scale=SCALE, seed=42, progress=False)
    build(other, scale=SCALE, seed=43, progress=False)
    first, second, third = dump(sqlite_sample), dump(again), dump(other)
    assert first == second
    for name in ("customers", "products", "orders", "order_items", "reviews"):
        assert first[name] != third[name], name
    assert first["categories"] == third["categories"]  # fixed, seed-independent


def test_build_replaces_rows_and_ensure_builds_only_once(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'data' / 'shop.sqlite'}"
    assert not is_built(url)
    assert ensure(url, SCALE, 42, progress=True) is True
    err = capsys.readouterr().err
    assert "building sample" in err and "100%" in err
    first = dump(url)
    assert ensure(url, SCALE, 42) is False
    build(url, scale=SCALE, seed=42, progress=False)  # on a full database: same rows again
    assert dump(url) == first
    with pytest.raises(SampleMismatch):
        ensure(url, SCALE * 2, 42)


def test_normalize_makes_naive_and_aware_timestamps_equal():
    from datetime import UTC, datetime, timedelta, timezone

    aware = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    naive_utc = datetime(2024, 5, 1, 12, 0)
    assert normalize(aware) == normalize(naive_utc) == "2024-05-01T12:00:00"
    assert normalize(datetime(2024, 5, 1, 12, 0, tzinfo=UTC)) == normalize(naive_utc)
    assert normalize(Decimal("3.1")) == normalize(3.1) == "3.10"
    assert normalize({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
