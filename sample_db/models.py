"""Declarative models of the sample shop.

Tables: ``customers``, ``categories``, ``products``, ``inventory``, ``orders``,
``order_items``, ``reviews``. The Alembic revision
``migrations/versions/0001_sample_schema.py`` creates exactly this schema
(``tests/test_migrations.py`` checks that the two agree).

Relationships use the default lazy loading; collections are ordered by primary
key so that every way of loading them yields the same order.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "Category",
    "Customer",
    "Inventory",
    "Order",
    "OrderItem",
    "Product",
    "Review",
]

#: constraint names, so that batch-mode ALTERs on SQLite can address them
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(12, 2)
Timestamp = DateTime(timezone=True)


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base of the sample shop (``AsyncAttrs`` for ``awaitable_attrs``)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Customer(Base):
    """A shop customer."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    country: Mapped[str] = mapped_column(String(2), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)

    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")
    reviews: Mapped[list[Review]] = relationship(back_populates="customer", order_by="Review.id")


class Category(Base):
    """A product category; top-level categories have no parent."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), index=True)

    parent: Mapped[Category | None] = relationship(remote_side=[id])
    products: Mapped[list[Product]] = relationship(back_populates="category", order_by="Product.id")


class Product(Base):
    """Something for sale; ``attributes`` is free-form JSON."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"), index=True)
    price: Mapped[Decimal] = mapped_column(Money)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_discontinued: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp)

    category: Mapped[Category] = relationship(back_populates="products")
    inventory: Mapped[list[Inventory]] = relationship(
        back_populates="product", order_by="Inventory.id"
    )
    reviews: Mapped[list[Review]] = relationship(back_populates="product", order_by="Review.id")


class Inventory(Base):
    """Stock of one product in one warehouse."""

    __tablename__ = "inventory"
    __table_args__ = (
        UniqueConstraint("product_id", "warehouse", name="uq_inventory_product_id_warehouse"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    warehouse: Mapped[str] = mapped_column(String(8))
    quantity: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)

    product: Mapped[Product] = relationship(back_populates="inventory")


class Order(Base):
    """An order; ``total`` is the sum of its items' ``quantity * unit_price``."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_status_created_at", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)

    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order", order_by="OrderItem.id", cascade="all, delete-orphan"
    )


class OrderItem(Base):
    """One line of an order."""

    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Money)

    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()


class Review(Base):
    """A customer's review of a product (rating 1-5)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    rating: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)

    product: Mapped[Product] = relationship(back_populates="reviews")
    customer: Mapped[Customer] = relationship(back_populates="reviews")
