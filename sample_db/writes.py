"""The write operations of the workload; each commits its own transaction.

Writes keep the database consistent under concurrency: new rows get their ids
from the database, order totals are computed from the prices read in the same
transaction, stock never goes below zero. They return a small summary that
does not depend on ids the database assigned.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select, update

from sample_db import spec
from sample_db.keys import Keys
from sample_db.models import Inventory, Order, OrderItem, Product, Review
from sample_db.queries import Kind
from sample_db.requests import Add, Body, Commit, Execute

__all__ = ["WRITES"]

_STATUSES = ("paid", "shipped", "delivered", "cancelled")


def new_order(
    customer_id: int, lines: tuple[tuple[int, int], ...], uuid_seed: int, at_second: int
) -> Body:
    """Place an order: read prices, pick an unused public id, insert order + items."""
    product_ids = sorted({p for p, _ in lines})
    result = yield Execute(select(Product.id, Product.price).where(Product.id.in_(product_ids)))
    prices = dict(result.all())
    lines = tuple((p, q) for p, q in lines if p in prices)
    if not lines:
        return [("no products",)]
    public_id = yield from _unused_public_id(uuid_seed)
    items = [OrderItem(product_id=p, quantity=q, unit_price=prices[p]) for p, q in lines]
    total = sum((q * prices[p] for p, q in lines), Decimal(0))
    order = Order(
        public_id=public_id,
        customer_id=customer_id,
        status="pending",
        total=total,
        created_at=spec.WRITE_TIME + timedelta(seconds=at_second),
        items=items,
    )
    yield Add(order)
    yield Commit()
    return [(len(items), str(total))]


def _unused_public_id(uuid_seed: int) -> Body:
    """The first of a deterministic series of UUIDs that no order has yet, so the
    same operation can run again on the same database (a second demo run)."""
    rng = random.Random(uuid_seed)
    while True:
        candidates = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(4)]
        taken = set(
            (
                yield Execute(select(Order.public_id).where(Order.public_id.in_(candidates)))
            ).scalars()
        )
        for c in candidates:
            if c not in taken:
                return c


def update_order_status(order_id: int, status: str) -> Body:
    """Set an order's status (Core ``UPDATE ... WHERE id = ?``)."""
    result = yield Execute(update(Order).where(Order.id == order_id).values(status=status))
    yield Commit()
    return [(result.rowcount,)]


def decrement_stock(product_id: int, quantity: int, at_second: int) -> Body:
    """Take ``quantity`` off the product's stock in every warehouse that has enough."""
    result = yield Execute(
        update(Inventory)
        .where(Inventory.product_id == product_id, Inventory.quantity >= quantity)
        .values(
            quantity=Inventory.quantity - quantity,
            updated_at=spec.WRITE_TIME + timedelta(seconds=at_second),
        )
    )
    yield Commit()
    return [(result.rowcount,)]


def add_review(
    product_id: int, customer_id: int, rating: int, words: tuple[str, ...], at_second: int
) -> Body:
    """Insert a review (ORM)."""
    yield Add(
        Review(
            product_id=product_id,
            customer_id=customer_id,
            rating=rating,
            title=" ".join(words[:2]).capitalize(),
            body=" ".join(words).capitalize() + ".",
            created_at=spec.WRITE_TIME + timedelta(seconds=at_second),
        )
    )
    yield Commit()
    return [(1,)]


def delete_review(review_id: int) -> Body:
    """Delete a review (``DELETE ... WHERE id = ?``; gone already: 0 rows)."""
    result = yield Execute(delete(Review).where(Review.id == review_id))
    yield Commit()
    return [(result.rowcount,)]


def _new_order(k: Keys, r: random.Random) -> dict[str, Any]:
    lines = tuple((k.product(r), r.choice((1, 1, 2, 3))) for _ in range(r.randint(1, 4)))
    return {
        "customer_id": k.customer(r),
        "lines": lines,
        "uuid_seed": r.getrandbits(64),
        "at_second": r.randrange(86_400 * 30),
    }


def _review(k: Keys, r: random.Random) -> dict[str, Any]:
    return {
        "product_id": k.product(r),
        "customer_id": k.customer(r),
        "rating": r.choice((1, 2, 3, 4, 4, 5, 5)),
        "words": tuple(r.choice(spec.REVIEW_WORDS) for _ in range(r.randint(4, 12))),
        "at_second": r.randrange(86_400 * 30),
    }


WRITES: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("new_order", 40, _new_order, new_order, is_write=True),
        Kind(
            "update_order_status",
            25,
            lambda k, r: {"order_id": k.order(r), "status": r.choice(_STATUSES)},
            update_order_status,
            is_write=True,
        ),
        Kind(
            "decrement_stock",
            20,
            lambda k, r: {
                "product_id": k.product(r),
                "quantity": r.randint(1, 3),
                "at_second": r.randrange(86_400 * 30),
            },
            decrement_stock,
            is_write=True,
        ),
        Kind("add_review", 10, _review, add_review, is_write=True),
        Kind(
            "delete_review",
            5,
            lambda k, r: {"review_id": k.review(r)},
            delete_review,
            is_write=True,
        ),
    )
}
