"""Groups of cells that hold nothing are forgotten, without losing a write.

Every guard binding (``status != 'x'`` with its parameter) makes a group of
cells, and every write to the table looks at every group. A group that no
stored result holds and that no read captured since the previous write looked
is dropped, so a write's cost follows what is cached, not every binding ever
read. These tests work on the registry and the memory tier directly: what is
checked is which cells die, and whether a store is refused.
"""

from __future__ import annotations

from typing import Any

from querycache import analyze
from querycache.invalidation.cells import CellRegistry
from querycache.invalidation.images import bind_write
from querycache.tiers.base import Entry
from querycache.tiers.memory import MemoryTier

SCOPE = "sqlite:test"
#: ``status`` only filters: each binding of it is its own guarded group
READ = "SELECT id, total FROM orders WHERE status != :s AND customer_id = :c"
WRITE = "INSERT INTO orders (id, customer_id, status, total) VALUES (:id, :c, :s, :t)"


def setup() -> tuple[CellRegistry, MemoryTier, Any, Any]:
    registry = CellRegistry()
    memory = MemoryTier(1 << 24, 1 << 20, registry)
    return registry, memory, analyze(READ, "sqlite").footprint, analyze(WRITE, "sqlite").footprint


def groups(registry: CellRegistry) -> int:
    return len(registry._scopes[SCOPE].tables["orders"])


def write(registry: CellRegistry, spec: Any, status: str, customer: int) -> None:
    row = {"id": 10_000 + customer, "c": customer, "s": status, "t": 1}
    registry.kill(SCOPE, {"orders": bind_write(spec, [row])})


def entry() -> Entry:
    return Entry((("id", None, None, None, None, None, None),), [(1,)], 1, 300)


def test_groups_no_result_holds_are_forgotten() -> None:
    registry, _memory, fp, spec = setup()
    for i in range(40):  # read in flight, then not stored (a failed store, say)
        registry.capture(SCOPE, ("orders",), fp, {"s": f"closed-{i}", "c": 1})
    assert groups(registry) == 40
    write(registry, spec, "open", 2)  # the first look: captured since
    assert groups(registry) == 40
    write(registry, spec, "open", 2)  # the second: idle, and nothing stored
    assert groups(registry) == 0


def test_a_group_a_stored_result_holds_is_kept() -> None:
    registry, memory, fp, spec = setup()
    kept = registry.capture(SCOPE, ("orders",), fp, {"s": "closed", "c": 1})
    assert memory.put("kept", entry(), SCOPE, ("orders",), kept, 300)
    for i in range(5):
        registry.capture(SCOPE, ("orders",), fp, {"s": f"gone-{i}", "c": 1})
    for _ in range(3):
        write(registry, spec, "open", 2)  # customer 2: the kept result is not touched
    assert groups(registry) == 1
    assert memory.get("kept") is not None
    write(registry, spec, "open", 1)  # now it is: a new order of customer 1
    assert memory.get("kept") is None


def test_a_read_in_flight_across_the_forgetting_is_not_stored() -> None:
    registry, memory, fp, spec = setup()
    registry.capture(SCOPE, ("orders",), fp, {"s": "closed", "c": 1})
    write(registry, spec, "open", 2)  # looked at: captured since the group was made
    # a read captures the group, then two writes pass (neither touches it) while it
    # runs: the second forgets the group, so the read must not be stored, since
    # later writes would no longer find its cells
    snapshot = registry.capture(SCOPE, ("orders",), fp, {"s": "closed", "c": 1})
    write(registry, spec, "open", 2)
    write(registry, spec, "open", 2)
    assert groups(registry) == 0
    assert not memory.put("late", entry(), SCOPE, ("orders",), snapshot, 300)
    # a new read makes a new group, which the next write to customer 1 finds
    fresh = registry.capture(SCOPE, ("orders",), fp, {"s": "closed", "c": 1})
    assert memory.put("fresh", entry(), SCOPE, ("orders",), fresh, 300)
    write(registry, spec, "open", 1)
    assert memory.get("fresh") is None


def test_forgotten_groups_free_the_room_of_the_group_cap() -> None:
    registry, memory, fp, spec = setup()
    for round_ in range(3):  # 3 x 60 bindings: more than the 64 groups kept per table
        for i in range(60):
            registry.capture(SCOPE, ("orders",), fp, {"s": f"r{round_}-{i}", "c": 1})
        write(registry, spec, "open", 2)
        write(registry, spec, "open", 2)
    assert groups(registry) == 0  # all forgotten after each round's writes
    # so a new binding still gets its own guarded group, not the shared unguarded one
    snap = registry.capture(SCOPE, ("orders",), fp, {"s": "last", "c": 1})
    assert memory.put("last", entry(), SCOPE, ("orders",), snap, 300)
    (key,) = registry._scopes[SCOPE].tables["orders"]
    assert type(key) is tuple and key[1], key  # guarded
    write(registry, spec, "open", 1)  # and a write it may see still drops it
    assert memory.get("last") is None
