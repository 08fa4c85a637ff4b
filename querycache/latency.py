"""A cheap, mergeable latency sketch (database time of misses)."""

from __future__ import annotations

import math

__all__ = ["LatencySketch"]

#: sub-buckets per power of two (bucket width <= 1/8 of its value)
_SUB = 8


class LatencySketch:
    """A log-linear histogram of durations: exact count, sum and max; any
    quantile within 1/8 above its value (eight buckets per power of two,
    from one microsecond). Mergeable: buckets are fixed. After a merge the
    maximum is unknown, so quantiles are bucket tops."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    @staticmethod
    def index(seconds: float) -> int:
        micros = seconds * 1e6
        if micros < 1.0:
            return 0
        m, e = math.frexp(micros)  # micros = m * 2**e, 0.5 <= m < 1
        return (e - 1) * _SUB + int((m * 2 - 1) * _SUB) + 1

    @staticmethod
    def bounds(index: int) -> tuple[float, float]:
        """``(low, high)`` seconds of bucket ``index``."""
        if index <= 0:
            return 0.0, 1e-6
        e, sub = divmod(index - 1, _SUB)
        base = 2.0**e * 1e-6
        return base * (1 + sub / _SUB), base * (1 + (sub + 1) / _SUB)

    def add(self, seconds: float) -> None:
        i = self.index(seconds)
        self.buckets[i] = self.buckets.get(i, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, sparse: list[list[int]] | dict[int, int]) -> None:
        """Add buckets given as ``{index: n}`` or ``[[index, n], ...]``."""
        items = sparse.items() if isinstance(sparse, dict) else sparse
        for i, n in items:
            self.buckets[int(i)] = self.buckets.get(int(i), 0) + int(n)
            self.count += int(n)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in seconds, 0.0 when empty: the top of its
        bucket, capped by the maximum seen (never below the true value, at
        most 1/8 above it)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                high = self.bounds(i)[1]
                return min(high, self.max) if self.max else high
        return self.max  # pragma: no cover - rank <= count

    def sparse(self) -> list[list[int]]:
        return [[i, n] for i, n in sorted(self.buckets.items())]
