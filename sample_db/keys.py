"""Seeded Zipf sampling of the keys an operation touches.

:class:`Zipf` draws ranks 1..n with probability proportional to ``1 / rank**s``
by bisecting a precomputed CDF; :class:`Keys` maps ranks to ids through a fixed
permutation so that the hot keys are spread over the id range.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from datetime import datetime
from functools import lru_cache

from sample_db import spec
from sample_db.spec import Sizes

__all__ = ["Keys", "Zipf"]

_MULTIPLIERS = (7_919, 104_729, 1_299_709, 15_485_863, 179_424_673)


@lru_cache(maxsize=64)
def _cdf(n: int, s: float) -> tuple[float, ...]:
    weights = (1.0 / (r**s) for r in range(1, n + 1))
    acc = list(itertools.accumulate(weights))
    total = acc[-1]
    return tuple(a / total for a in acc)


class Zipf:
    """Ranks 1..n, rank r with probability ∝ ``1 / r**s``."""

    def __init__(self, n: int, s: float = 1.1) -> None:
        if n < 1:
            raise ValueError("Zipf needs n >= 1")
        self.n = n
        self.s = s
        self._cdf = _cdf(n, s)

    def rank(self, rng: random.Random) -> int:
        """One rank in 1..n."""
        return min(bisect.bisect_left(self._cdf, rng.random()) + 1, self.n)


class _Ids:
    """Zipf ranks → ids ``first..first+n-1`` via ``rank * m + offset (mod n)``."""

    def __init__(self, first: int, n: int, s: float, salt: int) -> None:
        self.first = first
        self.n = n
        self.zipf = Zipf(n, s)
        self.mult = next((m for m in _MULTIPLIERS if math.gcd(m, n) == 1), 1)
        self.offset = salt % n

    def __call__(self, rng: random.Random) -> int:
        rank = self.zipf.rank(rng)
        return self.first + ((rank - 1) * self.mult + self.offset) % self.n


class Keys:
    """Key samplers for a database of ``sizes`` (hot keys depend on ``seed``)."""

    MONTHS = 24

    def __init__(self, sizes: Sizes, seed: int, s: float = 1.1) -> None:
        self.sizes = sizes
        top = len(spec.TOP_CATEGORIES)
        self.customer = _Ids(1, sizes.customers, s, seed * 31 + 1)
        self.product = _Ids(1, sizes.products, s, seed * 31 + 2)
        self.order = _Ids(1, sizes.orders, s, seed * 31 + 3)
        self.review = _Ids(1, sizes.reviews, s, seed * 31 + 4)
        self.category = _Ids(top + 1, sizes.categories - top, s, seed * 31 + 5)
        self.top_category = _Ids(1, top, s, seed * 31 + 6)
        self._word = Zipf(len(spec.WORDS), s)
        self._page = Zipf(50, 1.3)
        self._month = Zipf(self.MONTHS, 0.8)

    def word(self, rng: random.Random) -> str:
        """A search term that occurs in product names."""
        return spec.WORDS[self._word.rank(rng) - 1]

    def page(self, rng: random.Random) -> int:
        """A page number from 0 (the first pages are the hot ones)."""
        return self._page.rank(rng) - 1

    def month(self, rng: random.Random) -> tuple[datetime, datetime]:
        """``[start, end)`` of one month of the order history, recent ones hotter."""
        back = self._month.rank(rng)
        start = _month_start(spec.ORDER_TIME, self.MONTHS - back)
        return start, _month_start(start, 1)

    def year(self, rng: random.Random) -> tuple[datetime, datetime]:
        """``[start, end)`` of one year of the order history, the last one likelier."""
        first = spec.ORDER_TIME.year
        years = spec.ORDER_SPAN_DAYS // 365
        year = first + years - 1 - (0 if rng.random() < 0.7 else rng.randrange(years))
        start = spec.ORDER_TIME.replace(year=year, month=1, day=1)
        return start, start.replace(year=year + 1)


def _month_start(base: datetime, months: int) -> datetime:
    index = base.year * 12 + base.month - 1 + months
    return base.replace(
        year=index // 12, month=index % 12 + 1, day=1, hour=0, minute=0, second=0, microsecond=0
    )
