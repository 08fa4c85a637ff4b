"""Entry sizes and the mutability check, against plain ``sys.getsizeof`` sums."""

from __future__ import annotations

import datetime
import decimal
import random
import sys
import uuid
from typing import Any

import pytest

from querycache.tiers.sizing import measure, rows_size


def reference(rows: list[tuple[Any, ...]]) -> int:
    """Every tuple and value by ``sys.getsizeof``; shared singletons free."""

    def one(v: Any) -> int:
        if v is None or type(v) is bool:
            return 0
        if type(v) is int and -5 <= v <= 256:
            return 0
        if type(v) is str and len(v) <= 1 and v.isascii():
            return 0
        if type(v) is dict:
            return sys.getsizeof(v) + sum(one(k) + one(x) for k, x in v.items())
        if type(v) is list:
            return sys.getsizeof(v) + sum(one(x) for x in v)
        if type(v) is uuid.UUID:
            return sys.getsizeof(v) + sys.getsizeof(v.int)
        return sys.getsizeof(v)

    return sys.getsizeof(rows) + sum(sys.getsizeof(r) + sum(one(v) for v in r) for r in rows)


def row(r: random.Random) -> tuple[Any, ...]:
    return (
        r.randint(-(10**12), 10**12),
        r.randint(-3, 300),
        r.randint(-(2**31), 2**31),
        "n" * r.randint(0, 30),
        "é" * r.randint(0, 3),
        r.random(),
        datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=r.randrange(10**6)),
        datetime.date(2026, 1, 1),
        None,
        r.random() < 0.5,
        decimal.Decimal(r.randint(0, 10**6)) / 100,
        uuid.UUID(int=r.getrandbits(128)),
        b"xx",
    )


@pytest.mark.parametrize("n", [0, 1, 5, 64])
def test_small_results_are_measured_exactly(n):
    rows = [row(random.Random(i)) for i in range(n)]
    assert measure(rows) == (reference(rows), False)
    assert rows_size(rows) == reference(rows)


def test_large_results_are_sampled_within_a_few_percent():
    rows = [row(random.Random(i)) for i in range(2000)]
    size, mutable = measure(rows)
    assert not mutable
    assert abs(size - reference(rows)) <= 0.05 * reference(rows)
    assert abs(rows_size(rows, 8) - reference(rows)) <= 0.15 * reference(rows)


@pytest.mark.parametrize("n", [3, 65, 500])
def test_one_mutable_value_anywhere_makes_the_result_mutable(n):
    """Sizes are sampled, mutability never: the last row's dict is found."""
    rows = [(i, f"name {i}") for i in range(n)]
    assert measure(rows)[1] is False
    rows[-1] = (n, {"tags": ["x"]})
    assert measure(rows)[1] is True


def test_a_value_that_cannot_be_copied_refuses_the_result():
    class Opaque:
        def __deepcopy__(self, memo: Any) -> Any:
            raise RuntimeError("no copies")

    rows: list[tuple[Any, ...]] = [(i,) for i in range(500)]
    rows[400] = (Opaque(),)
    with pytest.raises(TypeError):
        measure(rows)
