"""The applied-ids table: which journal entries a database already holds.

Each batch inserts its entry ids into this table in the same transaction as
its writes, so "applied" and "recorded as applied" commit or vanish together.
A replay after a crash skips the ids found here; ids below the journal's
low-water mark (nothing at or below it is still journaled) are pruned.
The table is created on first use; ``migrations/versions/0002_*`` ships the
same table for Alembic users (``migrations/env.py`` adds it to the metadata so
``alembic check`` compares the two).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

__all__ = ["DEFAULT_TABLE", "AppliedIds", "applied_table"]

DEFAULT_TABLE = "querycache_applied"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def applied_table(metadata: MetaData, name: str = DEFAULT_TABLE) -> Table:
    """The table's definition in ``metadata`` (primary key: journal, seq)."""
    return Table(
        name,
        metadata,
        Column("journal", String(64), primary_key=True),
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("applied_at", Float, nullable=False),
    )


class AppliedIds:
    """Reads and writes one journal's rows of the applied-ids table."""

    def __init__(self, name: str, journal: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"applied_table must be a plain SQL identifier, got {name!r}")
        self.table = applied_table(MetaData(), name)
        self.journal = journal
        self._created: set[int] = set()

    def ensure(self, engine: Engine) -> None:
        """``CREATE TABLE IF NOT EXISTS``, once per engine, in a transaction of
        its own (a batch that rolls back must not take the table with it)."""
        marker = id(engine)
        if marker not in self._created:
            with engine.begin() as conn:
                conn.execute(CreateTable(self.table, if_not_exists=True))
            self._created.add(marker)

    def already(self, conn: Connection, seqs: Iterable[int]) -> set[int]:
        """The subset of ``seqs`` this database has applied."""
        seqs = list(seqs)
        if conn.dialect.name == "postgresql":  # one statement text for any count
            sql = text(
                f"SELECT seq FROM {self.table.name} "
                "WHERE journal = :j AND seq = ANY(CAST(:seqs AS BIGINT[]))"
            )
            rows = conn.execute(
                sql, {"j": self.journal, "seqs": seqs}, execution_options={"querycache": False}
            )
            return {r[0] for r in rows}
        found: set[int] = set()
        c = self.table.c
        for i in range(0, len(seqs), 500):
            rows = conn.execute(
                select(c.seq).where(c.journal == self.journal, c.seq.in_(seqs[i : i + 500])),
                execution_options={"querycache": False},
            )
            found.update(r[0] for r in rows)
        return found

    def record(self, conn: Connection, seqs: Iterable[int]) -> None:
        """Insert the ids (PostgreSQL: one statement, from an array)."""
        now = time.time()
        seqs = list(seqs)
        if conn.dialect.name == "postgresql":
            sql = text(
                f"INSERT INTO {self.table.name} (journal, seq, applied_at) "
                "SELECT :j, s, :at FROM unnest(CAST(:seqs AS BIGINT[])) AS s"
            )
            conn.execute(sql, {"j": self.journal, "at": now, "seqs": seqs})
            return
        rows = [{"journal": self.journal, "seq": s, "applied_at": now} for s in seqs]
        if rows:
            conn.execute(insert(self.table), rows)

    def highest(self, conn: Connection) -> int:
        """The largest id recorded for this journal (0: none)."""
        c = self.table.c
        value = conn.execute(
            select(func.max(c.seq)).where(c.journal == self.journal),
            execution_options={"querycache": False},
        ).scalar()
        return int(value or 0)

    def prune(self, conn: Connection, low_water: int) -> None:
        """Forget ids below ``low_water``: the journal holds none of them any more."""
        c = self.table.c
        conn.execute(delete(self.table).where(c.journal == self.journal, c.seq < low_water))

    def count(self, conn: Connection) -> int:
        c = self.table.c
        return conn.execute(select(func.count()).where(c.journal == self.journal)).scalar_one()  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        return {"table": self.table.name, "journal": self.journal}
