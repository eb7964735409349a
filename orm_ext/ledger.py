"""The exactly-once ledger: its table and the packaged Alembic migrations that manage it.

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
    ledger.ensure_ledger(engine)  # what a replay does first; cheap after the first call
"""

from __future__ import annotations

import threading
import time
import weakref
from importlib.resources import files
from pathlib import Path

import alembic.command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    inspect,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import SQLAlchemyError

LEDGER_TABLE = "orm_journal_ledger"
VERSION_TABLE = "orm_journal_alembic_version"
BRANCH = "orm_journal"
# The newest revision of alembic/versions/; ``ensure_ledger`` upgrades any other to it.
HEAD_REVISION = "d78bd9e47017"
# The revision that creates the ledger table.
FIRST_REVISION = "7c1e5a0d2b94"

# Mirrors alembic/versions/ at HEAD_REVISION; replay code writes and reads through this
# Table, never through a reflected one, so that it works before and after migration alike.
# It has its own MetaData so that no application's ``metadata.create_all()`` creates it
# behind the migration's back.
ledger_table = Table(
    LEDGER_TABLE,
    MetaData(),
    # Journal ids are compared exactly on every backend (SPEC §4): MySQL/MariaDB need a
    # binary collation for that, their default one ignores case.
    Column(
        "journal_id",
        String(36).with_variant(
            mysql.VARCHAR(36, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
        ),
        primary_key=True,
    ),
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


# Engines whose ledger was found (or brought) at HEAD_REVISION in this process. A replay
# asks on every call; only the first one per engine costs queries.
_AT_HEAD: weakref.WeakSet[Engine] = weakref.WeakSet()
# Alembic's command API keeps its context in module globals, so two threads of one process
# must not run it at once.
_MIGRATION_LOCK = threading.Lock()
# Named lock (MySQL/MariaDB) that makes processes migrate one at a time; see _migrate.
_SERVER_LOCK = "orm_journal:migration"
_SERVER_LOCK_WAIT = 60
_ATTEMPTS = 100
_RETRY_DELAY = 0.05


def ensure_ledger(engine: Engine) -> None:
    """Create the ledger, or upgrade it to :data:`HEAD_REVISION`, unless it is there already.

    Runs the packaged migration in a short transaction of its own when
    ``orm_journal_alembic_version`` holds another revision than the head (or none). A
    ledger table without that version table is managed in the application's own Alembic
    history (``version_locations``, see the Alembic guide) and is left to it. Once an
    engine's ledger is known to be at head, later calls for that engine return at once
    without a query; a ledger dropped behind the engine's back is therefore not noticed.

    Replayers starting together race to migrate. On MySQL/MariaDB they take turns; on
    PostgreSQL and SQLite the losers' migration fails on the winner's tables or version
    row, and they try again until the ledger is at head.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached, or the migration
            still fails after retrying for about five seconds.
        alembic.util.CommandError: the database is at a revision this orm-journal does not
            know (e.g. written by a newer release), after the same retries.
    """
    if engine in _AT_HEAD:
        return
    for attempt in range(_ATTEMPTS):
        with engine.connect() as connection:
            if _is_current(connection):
                break
        try:
            _migrate(engine)
            break
        # A concurrent migration shows as a failed CREATE TABLE, or as Alembic finding the
        # version row already moved on (CommandError).
        except (SQLAlchemyError, CommandError):
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(_RETRY_DELAY)
    _AT_HEAD.add(engine)


def _migrate(engine: Engine) -> None:
    """Upgrade the ledger to head unless it is there by now.

    MySQL/MariaDB commit each DDL statement on its own, so a replayer that saw the old
    revision could repeat the winner's ``ALTER TABLE`` while others already replay into
    the ledger, and the table copy deadlocks their inserts. A named lock makes the other
    processes wait, then find the ledger at head. PostgreSQL and SQLite roll a colliding
    migration back whole, so there the retry in :func:`ensure_ledger` is enough.
    """
    with _MIGRATION_LOCK, engine.connect() as connection:
        named = connection.dialect.name in ("mysql", "mariadb")
        if named:
            # Not granted within the wait means a stuck holder: migrating anyway can at
            # worst collide, which fails and is retried.
            connection.execute(
                text("SELECT GET_LOCK(:name, :wait)"),
                {"name": _SERVER_LOCK, "wait": _SERVER_LOCK_WAIT},
            )
            connection.commit()
        try:
            with connection.begin():
                if not _is_current(connection):
                    _stamp_if_cut_short(connection)
                    upgrade(connection)
        finally:
            # The lock belongs to the session, which outlives this block in the pool.
            if named and not connection.invalidated:
                connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _SERVER_LOCK})
                connection.commit()


def _stamp_if_cut_short(connection: Connection) -> None:
    """Record the first revision for a ledger table whose creation was cut short.

    Where DDL commits on its own (SQLite through pysqlite, MySQL/MariaDB), a replayer
    killed during the first migration can leave the ledger table created and the version
    table empty; upgrading from nothing would then fail forever on the existing table.
    The first revision only creates that table, so the table being there is that
    revision: stamp it, and upgrade from there (later revisions are safe to repeat).
    """
    inspector = inspect(connection)
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    if inspector.has_table(LEDGER_TABLE) and not context.get_current_heads():
        alembic.command.stamp(alembic_config(connection=connection), FIRST_REVISION)


def _is_current(connection: Connection) -> bool:
    """Whether the ledger needs no migration from us: at head, or managed by the app."""
    inspector = inspect(connection)
    if not inspector.has_table(VERSION_TABLE):
        return inspector.has_table(LEDGER_TABLE)
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_heads() == (HEAD_REVISION,)
