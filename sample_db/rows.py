"""The rows of the sample shop, as plain tuples in column order.

Each table draws from its own ``random.Random`` stream seeded with
``f"{seed}:{table}"`` (string seeds hash the same in every process), so the
rows are a pure function of ``(sizes, seed)``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sample_db import spec
from sample_db.spec import Sizes

__all__ = ["Row", "chunked", "expected_rows", "generate"]

Row = tuple[Any, ...]
CHUNK = 10_000
CENT = Decimal("0.01")
_RATINGS = (1, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5)
_QUANTITIES = (1, 1, 1, 1, 2, 2, 3, 4)


def expected_rows(sizes: Sizes) -> int:
    """About how many rows :func:`generate` yields (for progress bars)."""
    return (
        sizes.customers + sizes.categories + sizes.products * 3 + sizes.orders * 4 + sizes.reviews
    )


def chunked(rows: Iterable[Row], size: int = CHUNK) -> Iterator[list[Row]]:
    """``rows`` in lists of at most ``size``."""
    chunk: list[Row] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def generate(sizes: Sizes, seed: int) -> Iterator[tuple[str, Iterator[list[Row]]]]:
    """``(table name, chunks of rows)`` in foreign-key order."""
    yield "customers", chunked(_customers(sizes, _rng(seed, "customers")))
    yield "categories", chunked(_categories(sizes))
    products = list(_products(sizes, _rng(seed, "products")))
    yield "products", chunked(products)
    yield "inventory", chunked(_inventory(sizes, _rng(seed, "inventory")))
    prices = {p[0]: p[4] for p in products}
    orders, items = _orders(sizes, prices, _rng(seed, "orders"))
    yield "orders", chunked(orders)
    yield "order_items", chunked(items)
    yield "reviews", chunked(_reviews(sizes, _rng(seed, "reviews")))


def _rng(seed: int, table: str) -> random.Random:
    return random.Random(f"{seed}:{table}")


def _skewed(rng: random.Random, n: int, power: float) -> int:
    """An id in 1..n, low ids more likely (``power`` > 1 skews more)."""
    return min(n, int(n * rng.random() ** power) + 1)


def _instant(base: datetime, rng: random.Random, days: int) -> datetime:
    return base + timedelta(seconds=rng.randrange(days * 86_400))


def _customers(sizes: Sizes, rng: random.Random) -> Iterator[Row]:
    countries = [c for c, _ in spec.COUNTRIES]
    weights = [w for _, w in spec.COUNTRIES]
    for cid in range(1, sizes.customers + 1):
        first = rng.choice(spec.FIRST_NAMES)
        last = rng.choice(spec.LAST_NAMES)
        yield (
            cid,
            f"{first}.{last}.{cid}@example.com".lower(),
            f"{first} {last}",
            rng.choices(countries, weights)[0],
            rng.random() < 0.9,
            _instant(spec.BASE_TIME, rng, 365),
        )


def _categories(sizes: Sizes) -> Iterator[Row]:
    tops = spec.TOP_CATEGORIES
    for i, name in enumerate(tops, start=1):
        yield (i, name, None)
    per_round = len(tops) * len(spec.NOUNS)
    for i in range(sizes.categories - len(tops)):
        parent = i % len(tops)
        noun = spec.NOUNS[(i // len(tops)) % len(spec.NOUNS)]
        suffix = f" {i // per_round + 1}" if i >= per_round else ""
        yield (len(tops) + i + 1, f"{tops[parent]} / {noun}s{suffix}", parent + 1)


def _products(sizes: Sizes, rng: random.Random) -> Iterator[Row]:
    first_leaf = len(spec.TOP_CATEGORIES) + 1
    for pid in range(1, sizes.products + 1):
        name = " ".join(
            (rng.choice(spec.ADJECTIVES), rng.choice(spec.MATERIALS), rng.choice(spec.NOUNS))
        )
        cents = int(199 * (49_999 / 199) ** (rng.random() ** 1.6))
        attributes = {
            "color": rng.choice(spec.COLORS),
            "weight_g": rng.randint(50, 20_000),
            "tags": sorted(rng.sample(spec.TAGS, rng.randint(0, 3))),
            "fragile": rng.random() < 0.2,
            "dimensions_cm": [rng.randint(5, 120) for _ in range(3)],
        }
        yield (
            pid,
            f"SKU-{pid:06d}",
            name,
            rng.randint(first_leaf, sizes.categories),
            Decimal(cents).scaleb(-2),
            attributes,
            rng.random() < 0.05,
            _instant(spec.BASE_TIME, rng, 365),
        )


def _inventory(sizes: Sizes, rng: random.Random) -> Iterator[Row]:
    iid = 0
    for pid in range(1, sizes.products + 1):
        k = rng.choice((1, 2, 2, 3))
        for warehouse in sorted(rng.sample(spec.WAREHOUSES, k)):
            iid += 1
            yield (
                iid,
                pid,
                warehouse,
                rng.randint(0, 500),
                _instant(spec.ORDER_TIME, rng, spec.ORDER_SPAN_DAYS),
            )


def _status(rng: random.Random, age_days: float) -> str:
    if rng.random() < 0.05:
        return "cancelled"
    if age_days < 2:
        return rng.choice(("pending", "paid"))
    if age_days < 10:
        return rng.choice(("paid", "shipped", "shipped"))
    return "delivered"


def _orders(
    sizes: Sizes, prices: dict[int, Decimal], rng: random.Random
) -> tuple[list[Row], list[Row]]:
    span = spec.ORDER_SPAN_DAYS * 86_400
    offsets = sorted(rng.randrange(span) for _ in range(sizes.orders))
    orders: list[Row] = []
    items: list[Row] = []
    item_id = 0
    discount = Decimal("0.9")
    for oid, offset in enumerate(offsets, start=1):
        customer = _skewed(rng, sizes.customers, 1.7)
        chosen: list[int] = []
        for _ in range(rng.randint(1, 5)):
            pid = _skewed(rng, sizes.products, 1.5)
            if pid not in chosen:
                chosen.append(pid)
        total = Decimal(0)
        for pid in chosen:
            qty = rng.choice(_QUANTITIES)
            price = prices[pid]
            if rng.random() < 0.1:
                price = (price * discount).quantize(CENT)
            item_id += 1
            items.append((item_id, oid, pid, qty, price))
            total += qty * price
        orders.append(
            (
                oid,
                uuid.UUID(int=rng.getrandbits(128), version=4),
                customer,
                _status(rng, (span - offset) / 86_400),
                total,
                spec.ORDER_TIME + timedelta(seconds=offset),
            )
        )
    return orders, items


def _reviews(sizes: Sizes, rng: random.Random) -> Iterator[Row]:
    words = spec.REVIEW_WORDS
    for rid in range(1, sizes.reviews + 1):
        title = f"{rng.choice(words).capitalize()} {rng.choice(words)}"
        body = " ".join(rng.choice(words) for _ in range(rng.randint(6, 30))) + "."
        yield (
            rid,
            _skewed(rng, sizes.products, 1.4),
            rng.randint(1, sizes.customers),
            rng.choice(_RATINGS),
            title,
            body.capitalize(),
            _instant(spec.ORDER_TIME, rng, spec.ORDER_SPAN_DAYS),
        )
