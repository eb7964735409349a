"""Alembic environment for orm-journal's own tables (the replay ledger) only.

Three ways in:

* Online, inside the caller's transaction: ``orm_ext.ledger.upgrade(connection)`` hands
  its connection in through ``config.attributes["connection"]``; nothing here commits
  or closes it, so the ledger is created atomically with whatever the caller does next
  (on databases with transactional DDL).
* Online from a URL: the ``sqlalchemy.url`` option, as set by
  ``orm_ext.ledger.alembic_config(url=...)`` or an ``alembic.ini`` for the CLI.
* Offline (``alembic upgrade --sql``): SQL is written out from ``sqlalchemy.url``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

# Our own version table keeps our revision apart from the host application's
# ``alembic_version``: the two histories never see each other. It must match
# ``orm_ext.ledger.VERSION_TABLE``; it is spelled out here so that this environment
# runs without importing the library (e.g. from a plain ``alembic`` CLI).
VERSION_TABLE = "orm_journal_alembic_version"

config = context.config

# Only an ini file used from the CLI can carry logging settings, and not every one does; a
# programmatic Config must never reconfigure the host application's logging.
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    """Return the configured database URL or explain how to provide one."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "orm-journal migrations need a database: hand a connection in through "
            "config.attributes['connection'] or set the sqlalchemy.url option"
        )
    return url


def _run_on(connection: Connection) -> None:
    """Run the migrations on ``connection``, in its transaction if it has one."""
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=VERSION_TABLE,
    )
    # When the connection is already in a transaction, Alembic joins it and leaves the
    # commit to the caller; otherwise it begins and commits its own.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Write the migration SQL for ``sqlalchemy.url``'s dialect without connecting."""
    context.configure(
        url=_url(),
        target_metadata=None,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the handed-in connection, else on ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        # A one-off CLI run has no use for pooled connections outliving it.
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as new_connection:
            _run_on(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
