"""The ledger side of a replay: claiming a journal's id, advisory locks, the commit's answer.

The ledger's primary key is what makes a replay exactly-once (SPEC §5); the advisory
locks only let many replayers skip what another is applying.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

from alembic.util import CommandError
from sqlalchemy import insert, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from orm_ext import ledger
from orm_ext.exc import DeferredOperationError

__all__ = ["applied", "claim", "commit_failed", "ensure_ledger", "try_lock", "unlock"]


def commit_failed(
    session: Session, path: str | os.PathLike[str], journal_id: str, err: DBAPIError
) -> DeferredOperationError:
    """The error for a COMMIT whose answer never came: say what the ledger now shows.

    The connection can fail after the server committed and before its answer arrived,
    so "nothing was applied" would be a guess. A fresh connection asks the ledger; a
    commit still completing on the server is not shown yet, which is why that answer
    still sends the user to the safe action (replay again) rather than declaring a loss.
    """
    cause = f"{type(err.orig).__name__}: {str(err.orig).strip().splitlines()[0]}"
    try:
        with session.get_bind().engine.connect() as conn:
            landed: bool | None = applied(conn, journal_id)
    except SQLAlchemyError:
        landed = None
    if landed:
        outcome = (
            "the commit reached the database and the ledger shows the journal applied: "
            "nothing more to do (replaying it again returns applied=False)"
        )
    elif landed is None:
        outcome = (
            "the database cannot be reached to tell whether the commit landed: replay the "
            "journal again once it is back; the ledger makes that safe, it applies the "
            "journal only if this commit did not"
        )
    else:
        outcome = (
            "the ledger does not show the journal applied: replay it again; the ledger "
            "makes that safe even if this commit is still completing on the server"
        )
    return DeferredOperationError(
        f"journal {path}: the connection failed while committing ({cause}); {outcome}. "
        "The journal is unchanged",
        path=path,
    )


def ensure_ledger(session: Session, path: str | os.PathLike[str], *, create: bool) -> bool:
    """Create or upgrade the ledger when ``create``; return whether the database has one."""
    if not create:
        return bool(sa_inspect(session.connection()).has_table(ledger.LEDGER_TABLE))
    try:
        ledger.ensure_ledger(session.get_bind().engine)
    except CommandError as err:
        # Alembic does not know the database's revision of our branch: a newer release
        # migrated this ledger, and this one must not write to a table it does not know.
        raise DeferredOperationError(
            f"journal {path}: the database's orm-journal ledger is at a migration this "
            f"orm-journal does not know ({err}); replay with the orm-journal release that "
            "migrated it, or a newer one. Nothing was applied",
            path=path,
        ) from err
    return True


def try_lock(connection: Any, journal_id: str) -> bool:
    """Take a non-blocking advisory lock on the journal id; False if another holds it.

    Only an optimisation for many replayers sharing a directory of journals (they skip
    what another is applying instead of queueing behind it); the ledger's primary key is
    what guarantees exactly-once.
    """
    name = connection.dialect.name
    if name == "postgresql":
        return bool(
            connection.execute(
                text("SELECT pg_try_advisory_xact_lock(hashtextextended(:id, 0))"),
                {"id": journal_id},
            ).scalar()
        )
    if name in ("mysql", "mariadb"):
        return bool(
            connection.execute(
                text("SELECT GET_LOCK(:name, 0)"), {"name": f"orm_journal:{journal_id}"}
            ).scalar()
        )
    return True


def unlock(connection: Any, journal_id: str) -> None:
    # PostgreSQL's transaction-level lock ends with the transaction; MariaDB's belongs to
    # the connection, which goes back to the pool. Released before COMMIT, the ledger row
    # still stops anyone who gets the lock in between.
    if connection.dialect.name in ("mysql", "mariadb"):
        connection.execute(
            text("SELECT RELEASE_LOCK(:name)"), {"name": f"orm_journal:{journal_id}"}
        )


def applied(connection: Any, journal_id: str) -> bool:
    table = ledger.ledger_table
    found = connection.execute(
        select(table.c.journal_id).where(table.c.journal_id == journal_id)
    ).first()
    return found is not None


def claim(connection: Any, journal_id: str, count: int, digest: str) -> bool:
    """Insert the journal's ledger row first; False if another replay has it.

    A concurrent replayer of the same journal blocks on the row's primary key until the
    first one commits (then gets a duplicate key) or rolls back (then proceeds).
    """
    if applied(connection, journal_id):
        return False
    table = ledger.ledger_table
    # No SAVEPOINT around this insert: on SQLite (pysqlite) releasing the outermost
    # savepoint commits. A duplicate key simply ends the whole replay transaction, which
    # has done nothing else yet.
    try:
        connection.execute(
            insert(table).values(
                journal_id=journal_id,
                applied_at=dt.datetime.now(dt.UTC),
                operation_count=count,
                digest=digest,
                host=socket.gethostname()[:255],
            )
        )
    except IntegrityError:
        return False
    return True
