"""querycache write-behind: the applied-ids table.

Each write-behind batch records its journal entry ids here, in the same
transaction as its writes, so a replay after a crash never applies an entry
twice (``querycache.queues.applied``). The worker also creates it on first
use (``CREATE TABLE IF NOT EXISTS``); this revision is for applications whose
schema Alembic owns. A non-default ``applied_table=`` name needs its own copy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``querycache_applied`` (primary key: journal, seq)."""
    op.create_table(
        "querycache_applied",
        sa.Column("journal", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("journal", "seq"),
    )


def downgrade() -> None:
    """Drop ``querycache_applied``."""
    op.drop_table("querycache_applied")
