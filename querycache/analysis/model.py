"""The result of analysing one SQL string: :class:`Analysis`, and the :data:`ALL` sentinel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Kind = Literal["read", "write", "ddl", "transaction", "other"]
TransactionOp = Literal[
    "begin", "commit", "rollback", "savepoint", "release", "rollback_to", "prepare"
]

KINDS: Final = frozenset({"read", "write", "ddl", "transaction", "other"})
TRANSACTION_OPS: Final = frozenset(
    {"begin", "commit", "rollback", "savepoint", "release", "rollback_to", "prepare"}
)


class _All:
    """Type of :data:`ALL`: "every table may have been written". Compare with ``is``."""

    __slots__ = ()
    _instance: _All | None = None

    def __new__(cls) -> _All:
        # one object per process, even through copy/pickle, so `is ALL` always works
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "querycache.ALL"

    def __reduce__(self) -> str:
        return "ALL"

    def __copy__(self) -> _All:
        return self

    def __deepcopy__(self, memo: object) -> _All:
        return self


ALL: Final = _All()
"""Sentinel for ``tables_written``: the statement may have written any table."""

Tables = frozenset[str]
Written = frozenset[str] | _All


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the cache needs to know about one SQL string.

    ``tables_read``/``tables_written`` hold lowercase, unqualified table names
    (``public.Users`` -> ``users``), except SQLite tables of an attached or the
    temp database, which are named both ``aux.t`` and ``t`` (the bare name may
    resolve to them); ``tables_written`` is :data:`ALL` when the
    statement's targets cannot be known. ``reason`` is ``None`` exactly when
    ``cacheable`` is true; ``transaction_op`` is set exactly for kind
    ``"transaction"``; ``session_state`` is true for statements that change
    connection settings that can alter later results (``SET``, ``PRAGMA x = y``,
    ``ATTACH``, ``set_config()``...).

    ``footprint`` says which rows the statement can touch, for row-precise
    invalidation: a :class:`~querycache.analysis.footprints.ReadFootprint`
    for a cacheable read (per table, the conditions on its rows and the
    columns it uses; a table not listed depends on every row), a
    :class:`~querycache.analysis.footprints.WriteSpec` for a write, ``None``
    when nothing can be pinned down (every row).
    """

    kind: Kind
    fingerprint: str
    fingerprint_id: str
    tables_read: Tables
    tables_written: Written
    cacheable: bool
    reason: str | None
    transaction_op: TransactionOp | None = None
    session_state: bool = False
    footprint: Any = None
