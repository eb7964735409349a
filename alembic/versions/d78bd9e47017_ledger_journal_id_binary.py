"""Compare ledger journal ids exactly on MySQL/MariaDB.

Journal ids are canonical lower-case UUIDs and are compared exactly on every backend
(SPEC section 4, "Files"). MySQL and MariaDB compare ``VARCHAR`` columns with the
table's default collation, which is case-insensitive, so there an upper-cased copy of a
journal id would count as already applied. This revision gives ``journal_id`` a binary
collation on those two dialects; PostgreSQL and SQLite already compare strings exactly,
so it changes nothing there. Existing rows keep their ids: a column whose ids were all
unique case-insensitively is unique case-sensitively too.

Revision ID: d78bd9e47017
Revises: 7c1e5a0d2b94
Create Date: 2026-12-01 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# Revision identifiers, used by Alembic.
revision: str = "d78bd9e47017"
down_revision: str | Sequence[str] | None = "7c1e5a0d2b94"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A journal id is a UUID string: ASCII is all it needs, and ascii_bin compares byte by byte.
EXACT = mysql.VARCHAR(36, charset="ascii", collation="ascii_bin")


def _is_mysql() -> bool:
    # The migration context's dialect, not a connection's: offline (--sql) runs have none.
    return op.get_context().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    """Give ``orm_journal_ledger.journal_id`` a binary collation on MySQL/MariaDB."""
    if _is_mysql():
        # MODIFY keeps the column in the primary key; NOT NULL must be restated or MySQL
        # would drop it with the rest of the old definition.
        op.alter_column(
            "orm_journal_ledger",
            "journal_id",
            type_=EXACT,
            existing_type=sa.String(36),
            existing_nullable=False,
        )


def downgrade() -> None:
    """Give ``journal_id`` the table's default (case-insensitive) collation back.

    Fails with a duplicate key if the ledger holds two ids that differ only in case,
    which the older schema cannot hold apart.
    """
    if _is_mysql():
        op.alter_column(
            "orm_journal_ledger",
            "journal_id",
            type_=sa.String(36),
            existing_type=EXACT,
            existing_nullable=False,
        )
