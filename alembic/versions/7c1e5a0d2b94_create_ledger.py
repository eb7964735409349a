"""Create the orm-journal ledger table.

The ledger records every journal that was replayed into this database, so that a
journal is applied exactly once (SPEC section 5.3).

Revision ID: 7c1e5a0d2b94
Revises:
Create Date: 2026-11-22 18:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Revision identifiers, used by Alembic.
revision: str = "7c1e5a0d2b94"
down_revision: str | Sequence[str] | None = None
# The branch label lets a host application that runs its own Alembic environment include
# our migrations (``version_locations``) and upgrade them as ``orm_journal@head`` without
# mixing them into its own history.
branch_labels: str | Sequence[str] | None = ("orm_journal",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``orm_journal_ledger``."""
    op.create_table(
        "orm_journal_ledger",
        # A journal id is a UUID string; as the primary key it is what makes a second
        # replay of the same journal fail to insert, even between concurrent replayers.
        sa.Column("journal_id", sa.String(36), primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operation_count", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    """Drop ``orm_journal_ledger``."""
    op.drop_table("orm_journal_ledger")
