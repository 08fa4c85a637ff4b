"""Per-table version counters: the bookkeeping that closes the stale-set race.

Every invalidation of a table bumps its version. A reader captures the
versions of the tables it reads *before* it queries the database and may only
store its result if they are unchanged at store time; a writer bumps them
only *after* its commit. So a result that could predate a commit is never
stored once that commit has been announced (docs/architecture.md has the
whole argument).

A write whose targets are unknown (``ALL``) bumps the scope's epoch, and
:meth:`LocalVersions.bump_everything` the generation; every capture includes
both.
"""

from __future__ import annotations

from collections.abc import Iterable

EPOCH = "*"


class LocalVersions:
    """This process's view of table versions, per scope.

    Not locked by itself: the memory tier holds the lock that makes a
    version check and an insert atomic with respect to bump-and-evict.
    """

    __slots__ = ("_generation", "_scopes")

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, int]] = {}
        self._generation = 0

    def capture(self, scope: str, tables: tuple[str, ...]) -> tuple[int, ...]:
        """The current versions of ``tables`` plus the scope epoch and generation."""
        v = self._scopes.get(scope)
        if v is None:
            return (self._generation, *((0,) * (len(tables) + 1)))
        get = v.get
        return (self._generation, get(EPOCH, 0), *[get(t, 0) for t in tables])

    def bump(self, scope: str, tables: Iterable[str] | None) -> None:
        """Advance ``tables`` (or, with ``None``, the whole scope)."""
        v = self._scopes.setdefault(scope, {})
        if tables is None:
            v[EPOCH] = v.get(EPOCH, 0) + 1
            return
        for t in tables:
            v[t] = v.get(t, 0) + 1

    def bump_everything(self) -> None:
        """Advance every capture in every scope (``clear()``, lost messages)."""
        self._generation += 1
