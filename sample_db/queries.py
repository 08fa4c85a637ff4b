"""The read operations of the workload, cheap to heavy.

Each kind has a weight (its share of reads), a ``draw`` that picks parameters
from the seeded key samplers, and a ``body`` (see :mod:`sample_db.requests`)
that runs the query and returns plain, comparable data. Every ORDER BY ends on
a unique key, so the data is the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import desc, func, select, text
from sqlalchemy.orm import joinedload, selectinload

from sample_db.keys import Keys
from sample_db.models import Category, Customer, Order, OrderItem, Product, Review
from sample_db.normalize import obj_row, rows
from sample_db.requests import Body, Execute, Get, Load

__all__ = ["READS", "Kind"]

Draw = Callable[[Keys, random.Random], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """One kind of operation: its name, weight, parameter draw and body."""

    name: str
    weight: float
    draw: Draw
    body: Callable[..., Body]
    is_write: bool = False


CUSTOMERS = Customer.__table__
REVENUE = func.sum(OrderItem.quantity * OrderItem.unit_price)
NOT_CANCELLED = Order.status != "cancelled"


def customer_by_id(customer_id: int) -> Body:
    """Core point lookup by primary key."""
    result = yield Execute(select(CUSTOMERS).where(CUSTOMERS.c.id == customer_id))
    return rows(result)


def product_get(product_id: int) -> Body:
    """``Session.get`` of a product."""
    product = yield Get(Product, product_id)
    return [obj_row(product)] if product is not None else []


def product_page(product_id: int) -> Body:
    """A product with its category, stock and reviews, all lazy loaded."""
    product = yield Get(Product, product_id)
    if product is None:
        return []
    category = yield Load(product, "category")
    inventory = yield Load(product, "inventory")
    reviews = yield Load(product, "reviews")
    return [
        obj_row(
            product,
            obj_row(category),
            tuple(obj_row(i) for i in inventory),
            tuple(obj_row(r) for r in reviews),
        )
    ]


def customer_orders(customer_id: int) -> Body:
    """A customer with every order and its items (``selectinload`` twice)."""
    stmt = (
        select(Customer)
        .where(Customer.id == customer_id)
        .options(selectinload(Customer.orders).selectinload(Order.items))
    )
    customers = (yield Execute(stmt)).scalars().all()
    return [
        obj_row(c, tuple(obj_row(o, tuple(obj_row(i) for i in o.items)) for o in c.orders))
        for c in customers
    ]


def order_detail(order_id: int) -> Body:
    """An order with its customer and items' products (``joinedload``)."""
    stmt = (
        select(Order)
        .where(Order.id == order_id)
        .options(
            joinedload(Order.customer),
            joinedload(Order.items).joinedload(OrderItem.product),
        )
    )
    orders = (yield Execute(stmt)).unique().scalars().all()
    return [
        obj_row(
            o,
            obj_row(o.customer),
            tuple(obj_row(i, i.product.sku, i.product.name) for i in o.items),
        )
        for o in orders
    ]


def recent_orders_page(status: str, page: int) -> Body:
    """Orders of one status, newest first, 20 a page (LIMIT/OFFSET)."""
    stmt = (
        select(Order)
        .where(Order.status == status)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(20)
        .offset(page * 20)
    )
    return [obj_row(o) for o in (yield Execute(stmt)).scalars().all()]


def product_search(term: str) -> Body:
    """Case-insensitive ``LIKE '%term%'`` over product names."""
    stmt = (
        select(Product.id, Product.sku, Product.name, Product.price)
        .where(Product.name.ilike(f"%{term}%"))
        .order_by(Product.id)
        .limit(25)
    )
    return rows((yield Execute(stmt)))


def top_products_by_revenue(category_id: int) -> Body:
    """Top 10 products of a category by revenue (aggregate, GROUP BY, LIMIT)."""
    stmt = (
        select(
            Product.id,
            Product.name,
            REVENUE.label("revenue"),
            func.sum(OrderItem.quantity).label("units"),
        )
        .join(OrderItem, OrderItem.product_id == Product.id)
        .where(Product.category_id == category_id)
        .group_by(Product.id, Product.name)
        .order_by(desc("revenue"), Product.id)
        .limit(10)
    )
    return rows((yield Execute(stmt)))


def country_sales(start: Any, end: Any) -> Body:
    """Orders, buyers and revenue per country in one month (join + GROUP BY)."""
    stmt = (
        select(
            Customer.country,
            func.count(Order.id).label("orders"),
            func.count(func.distinct(Customer.id)).label("buyers"),
            func.sum(Order.total).label("revenue"),
        )
        .join(Order, Order.customer_id == Customer.id)
        .where(Order.created_at >= start, Order.created_at < end, NOT_CANCELLED)
        .group_by(Customer.country)
        .order_by(desc("revenue"), Customer.country)
    )
    return rows((yield Execute(stmt)))


def revenue_by_category(start: Any, end: Any) -> Body:
    """The heavy one: revenue, units and lines per category over every order
    item of a year (orders ⋈ order_items ⋈ products ⋈ categories, GROUP BY)."""
    stmt = (
        select(
            Category.id,
            Category.name,
            REVENUE.label("revenue"),
            func.sum(OrderItem.quantity).label("units"),
            func.count(OrderItem.id).label("lines"),
        )
        .join(Product, Product.category_id == Category.id)
        .join(OrderItem, OrderItem.product_id == Product.id)
        .join(Order, Order.id == OrderItem.order_id)
        .where(Order.created_at >= start, Order.created_at < end, NOT_CANCELLED)
        .group_by(Category.id, Category.name)
        .order_by(desc("revenue"), Category.id)
    )
    return rows((yield Execute(stmt)))


def top_customers_month(start: Any, end: Any) -> Body:
    """Top 10 spenders of one month (a CTE joined to customers)."""
    monthly = (
        select(
            Order.customer_id,
            func.count().label("orders"),
            func.sum(Order.total).label("spent"),
        )
        .where(Order.created_at >= start, Order.created_at < end, NOT_CANCELLED)
        .group_by(Order.customer_id)
        .cte("monthly")
    )
    stmt = (
        select(Customer.id, Customer.name, Customer.country, monthly.c.orders, monthly.c.spent)
        .join(monthly, monthly.c.customer_id == Customer.id)
        .order_by(monthly.c.spent.desc(), Customer.id)
        .limit(10)
    )
    return rows((yield Execute(stmt)))


def customer_running_total(customer_id: int) -> Body:
    """A customer's orders with running total and number (window functions)."""
    window = {"order_by": (Order.created_at, Order.id)}
    stmt = (
        select(
            Order.id,
            Order.created_at,
            Order.status,
            Order.total,
            func.sum(Order.total).over(**window).label("running_total"),
            func.row_number().over(**window).label("n"),
        )
        .where(Order.customer_id == customer_id)
        .order_by(Order.created_at, Order.id)
    )
    return rows((yield Execute(stmt)))


def category_price_rank(top_category_id: int) -> Body:
    """The 3 dearest products of each subcategory of a top category
    (``rank() OVER (PARTITION BY ...)`` in a subquery)."""
    ranked = (
        select(
            Product.id,
            Product.category_id,
            Product.name,
            Product.price,
            func.rank()
            .over(partition_by=Product.category_id, order_by=(Product.price.desc(), Product.id))
            .label("pos"),
        )
        .join(Category, Category.id == Product.category_id)
        .where(Category.parent_id == top_category_id)
        .subquery("ranked")
    )
    stmt = (
        select(ranked)
        .where(ranked.c.pos <= 3)
        .order_by(ranked.c.category_id, ranked.c.pos, ranked.c.id)
    )
    return rows((yield Execute(stmt)))


LOW_STOCK = text(
    "SELECT p.id, p.sku, p.name, i.warehouse, i.quantity "
    "FROM inventory i JOIN products p ON p.id = i.product_id "
    "WHERE i.quantity < :threshold AND p.is_discontinued = :discontinued "
    "ORDER BY i.quantity, p.id, i.warehouse "
    "LIMIT 20"
)


def low_stock(threshold: int) -> Body:
    """Products running out of stock (a hand-written ``text()`` query)."""
    result = yield Execute(LOW_STOCK, {"threshold": threshold, "discontinued": False})
    return rows(result)


def top_rated_products(category_id: int) -> Body:
    """Best rated products of a category with at least 2 reviews (HAVING)."""
    n = func.count(Review.id)
    stmt = (
        select(Product.id, Product.name, n.label("reviews"), func.sum(Review.rating).label("stars"))
        .join(Review, Review.product_id == Product.id)
        .where(Product.category_id == category_id)
        .group_by(Product.id, Product.name)
        .having(n >= 2)
        .order_by(func.avg(Review.rating).desc(), n.desc(), Product.id)
        .limit(10)
    )
    return rows((yield Execute(stmt)))


def _customer(k: Keys, r: random.Random) -> dict[str, Any]:
    return {"customer_id": k.customer(r)}


def _product(k: Keys, r: random.Random) -> dict[str, Any]:
    return {"product_id": k.product(r)}


def _category(k: Keys, r: random.Random) -> dict[str, Any]:
    return {"category_id": k.category(r)}


def _month(k: Keys, r: random.Random) -> dict[str, Any]:
    start, end = k.month(r)
    return {"start": start, "end": end}


def _year(k: Keys, r: random.Random) -> dict[str, Any]:
    start, end = k.year(r)
    return {"start": start, "end": end}


_STATUSES = ("paid", "shipped", "delivered", "delivered", "cancelled")

READS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("customer_by_id", 20, _customer, customer_by_id),
        Kind("product_get", 16, _product, product_get),
        Kind("product_page", 8, _product, product_page),
        Kind("order_detail", 10, lambda k, r: {"order_id": k.order(r)}, order_detail),
        Kind("customer_orders", 5, _customer, customer_orders),
        Kind(
            "recent_orders_page",
            8,
            lambda k, r: {"status": r.choice(_STATUSES), "page": k.page(r)},
            recent_orders_page,
        ),
        Kind("product_search", 8, lambda k, r: {"term": k.word(r)}, product_search),
        Kind("top_products_by_revenue", 4, _category, top_products_by_revenue),
        Kind("country_sales", 3, _month, country_sales),
        Kind("revenue_by_category", 1, _year, revenue_by_category),
        Kind("top_customers_month", 3, _month, top_customers_month),
        Kind("customer_running_total", 5, _customer, customer_running_total),
        Kind(
            "category_price_rank",
            3,
            lambda k, r: {"top_category_id": k.top_category(r)},
            category_price_rank,
        ),
        Kind("low_stock", 3, lambda k, r: {"threshold": r.choice((5, 10, 25))}, low_stock),
        Kind("top_rated_products", 3, _category, top_rated_products),
    )
}
