"""The exactly-once ledger: its table and the packaged Alembic migration that creates it.

Every journal that is replayed into a database leaves one row in ``orm_journal_ledger``,
written in the replay's own transaction; the journal id being the primary key is what
makes a second replay of the same journal a no-op. The table is created by orm-journal's
own Alembic migration (branch ``orm_journal``, version table
``orm_journal_alembic_version``), which keeps it apart from the host application's
migration history.

Example::

    from sqlalchemy import create_engine
    from orm_ext import ledger

    engine = create_engine("sqlite:///app.db")
    with engine.begin() as connection:
        ledger.upgrade(connection)
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import alembic.command
from alembic.config import Config
from sqlalchemy import BigInteger, Column, Connection, DateTime, MetaData, String, Table

LEDGER_TABLE = "orm_journal_ledger"
VERSION_TABLE = "orm_journal_alembic_version"
BRANCH = "orm_journal"

# Mirrors alembic/versions/*_create_ledger.py; replay code writes and reads through this
# Table, never through a reflected one, so that it works before and after migration alike.
# It has its own MetaData so that no application's ``metadata.create_all()`` creates it
# behind the migration's back.
ledger_table = Table(
    LEDGER_TABLE,
    MetaData(),
    Column("journal_id", String(36), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    Column("operation_count", BigInteger(), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("host", String(255), nullable=False),
)


def script_location() -> str:
    """Return the directory holding orm-journal's Alembic environment (``env.py``).

    An installed wheel carries the scripts as ``orm_ext/migrations``; a source checkout
    (including an editable install) has them in the top-level ``alembic/`` folder next
    to the ``orm_ext`` package directory.

    Raises:
        RuntimeError: neither location holds ``env.py`` and ``versions/``, i.e. the
            installation is incomplete.
    """
    # Alembic reads the scripts with plain file-system calls, so only a real directory
    # will do; an installation inside a zip archive is reported as missing.
    installed = Path(str(files("orm_ext") / "migrations"))
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    for candidate in (installed, checkout):
        # Asking for versions/ too keeps an unrelated "alembic" directory (such as the real
        # Alembic package beside an installed orm_ext) from being taken for ours.
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return str(candidate)
    raise RuntimeError(
        f"orm-journal's migration scripts are missing: neither {installed} (installed "
        f"package) nor {checkout} (source checkout) contains env.py and versions/; "
        "reinstall orm-journal"
    )


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Build an Alembic ``Config`` for orm-journal's migrations, without an ini file.

    Args:
        connection: run the migrations on this connection, inside its transaction if it
            has one begun (the caller then commits).
        url: a database URL, used when no connection is given (e.g. ``init-db``).

    Example::

        import alembic.command

        alembic.command.upgrade(alembic_config(url="sqlite:///app.db"), "orm_journal@head")
    """
    config = Config()
    config.set_main_option("script_location", script_location())
    if url is not None:
        # Config values go through ConfigParser interpolation, and URL-encoded passwords
        # contain "%".
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Create or upgrade orm-journal's tables on ``connection`` (idempotent).

    Runs inside the connection's transaction when one is begun, and leaves the commit to
    the caller; otherwise Alembic begins and commits a transaction of its own. Whether the
    DDL itself is undone by a rollback depends on the database: on PostgreSQL it is;
    MariaDB/MySQL commit DDL implicitly, and so does SQLite through the default pysqlite
    driver settings.
    """
    alembic.command.upgrade(alembic_config(connection=connection), f"{BRANCH}@head")
