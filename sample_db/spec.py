"""Facts shared by the generator and the workload: sizes per scale, vocabularies.

Everything here is a pure function of ``scale`` (and constants), so the
workload knows the key ranges of a database built with the same scale without
asking the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "BASE_TIME",
    "ORDER_SPAN_DAYS",
    "ORDER_TIME",
    "WAREHOUSES",
    "WORDS",
    "WRITE_TIME",
    "Sizes",
]

#: customers sign up from here on (fixed, so that builds are reproducible)
BASE_TIME = datetime(2022, 1, 1, tzinfo=UTC)
#: orders are placed from here on, over ORDER_SPAN_DAYS days
ORDER_TIME = datetime(2023, 1, 1, tzinfo=UTC)
ORDER_SPAN_DAYS = 730
#: rows written by the workload are stamped from here on (operation index = seconds)
WRITE_TIME = datetime(2025, 1, 1, tzinfo=UTC)

WAREHOUSES = ("AMS", "NYC", "SIN")

# fmt: off
FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Brian", "Carla", "Chen", "Dana", "Diego", "Elena", "Emil",
    "Fatima", "Felix", "Grace", "Hugo", "Ines", "Ivan", "Jun", "Karin", "Lars", "Leila",
    "Marta", "Mohamed", "Nadia", "Noah", "Olga", "Omar", "Priya", "Rafael", "Sara", "Tomas",
    "Uma", "Victor", "Wei", "Yara", "Zoe",
)
LAST_NAMES = (
    "Andersen", "Bauer", "Costa", "Dubois", "Eriksson", "Fischer", "Garcia", "Haddad",
    "Ivanova", "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov",
    "Quinn", "Rossi", "Schmidt", "Tanaka", "Usman", "Vargas", "Weber", "Xu", "Yilmaz", "Zhang",
)
#: (country code, weight)
COUNTRIES = (
    ("US", 30), ("DE", 12), ("GB", 10), ("FR", 9), ("NL", 6), ("ES", 6), ("IT", 6),
    ("SE", 4), ("PL", 4), ("JP", 5), ("BR", 4), ("IN", 4),
)
TOP_CATEGORIES = (
    "Electronics", "Home", "Garden", "Sports", "Toys", "Books", "Fashion", "Kitchen",
)
ADJECTIVES = (
    "Classic", "Compact", "Deluxe", "Eco", "Ergonomic", "Heavy", "Light", "Modern",
    "Portable", "Premium", "Rugged", "Smart", "Solid", "Vintage", "Wireless",
)
MATERIALS = (
    "Bamboo", "Carbon", "Ceramic", "Cotton", "Glass", "Granite", "Leather", "Linen",
    "Maple", "Oak", "Plastic", "Rubber", "Silk", "Steel", "Wool",
)
NOUNS = (
    "Backpack", "Blender", "Bottle", "Chair", "Clock", "Desk", "Drone", "Gloves", "Headset",
    "Jacket", "Kettle", "Lamp", "Mug", "Notebook", "Pan", "Puzzle", "Racket", "Shelf",
    "Speaker", "Tent", "Umbrella", "Vase", "Watch",
)
COLORS = ("black", "white", "red", "green", "blue", "grey", "yellow", "orange")
TAGS = ("gift", "bestseller", "new", "eco", "sale", "limited", "bundle")
REVIEW_WORDS = (
    "great", "solid", "flimsy", "value", "broke", "love", "returned", "perfect", "okay",
    "sturdy", "cheap", "recommend", "quality", "fast", "slow", "shipping",
)

# fmt: on

#: search terms used by the workload's LIKE search (all occur in product names)
WORDS = tuple(w.lower() for w in (*ADJECTIVES, *MATERIALS, *NOUNS))


def _at_least(minimum: int, value: float) -> int:
    return max(minimum, round(value))


@dataclass(frozen=True)
class Sizes:
    """Row counts of a sample database of a given scale (ids are 1..count)."""

    scale: float
    customers: int
    categories: int
    products: int
    orders: int
    reviews: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        """The sizes at ``scale`` (1.0: 10k customers, 2k products, 100k orders)."""
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        return cls(
            scale=scale,
            customers=_at_least(50, 10_000 * scale),
            categories=len(TOP_CATEGORIES) + _at_least(8, 40 * scale),
            products=_at_least(20, 2_000 * scale),
            orders=_at_least(100, 100_000 * scale),
            reviews=_at_least(40, 20_000 * scale),
        )
