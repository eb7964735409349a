"""Replays that fail late: a COMMIT the server refuses, a flush that fails under a lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from journal import Journal
from orm_ext import DeferredOperationError, ledger
from tests.conftest import Backend
from tests.models import Asset
from tests.scenario import enforce_foreign_keys, make_sessions, seed, table_rows


class DeferredBase(DeclarativeBase):
    """Tables with a constraint the database checks only at COMMIT."""


class Shelf(DeferredBase):
    __tablename__ = "deferred_shelf"
    id: Mapped[int] = mapped_column(primary_key=True)


class Book(DeferredBase):
    __tablename__ = "deferred_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(
        ForeignKey("deferred_shelf.id", deferrable=True, initially="DEFERRED")
    )


def test_commit_refused_by_a_deferred_constraint(backend: Backend, tmp_path: Path) -> None:
    """A COMMIT the server refuses is a clear failure naming the commit, not a lost connection.

    Regression: every database error at COMMIT was reported as "the connection failed
    while committing ... replay it again", which is false and sends the user into a loop.
    """
    if backend.name == "mariadb":
        pytest.skip("MariaDB checks every constraint at once; none is left for COMMIT")
    engine = backend.engine()
    enforce_foreign_keys(engine)
    DeferredBase.metadata.create_all(engine)
    path = tmp_path / "ops.dbm"
    with make_sessions(engine)() as session, session.deferred_operations(path):
        session.add(Book(shelf_id=999))
    with Journal(path) as journal:
        journal_id = journal.journal_id

    for _ in range(2):
        with make_sessions(engine)() as session:
            with pytest.raises(DeferredOperationError) as caught:
                session.reconnect_and_commit(path)
            message = str(caught.value)
            assert f"journal {path}: the commit failed: " in message, message
            assert "foreign key" in message.lower() and "Nothing was applied" in message, message
            assert "while committing" not in message
            # The session is usable afterwards.
            assert session.scalars(select(Book)).all() == []
        with engine.connect() as conn:
            found = conn.execute(
                select(ledger.ledger_table.c.journal_id).where(
                    ledger.ledger_table.c.journal_id == journal_id
                )
            ).first()
        assert found is None


def test_failed_replay_releases_its_busy_lock(backend: Backend, tmp_path: Path) -> None:
    """After a failed replay with if_busy="skip", another replayer is not told it is busy.

    Regression: on MariaDB the advisory lock (which belongs to the connection, not the
    transaction) was released through a session that refuses to hand out its connection
    after a failed flush; the error was swallowed and the pooled connection kept the lock.
    """
    first, second = backend.engine(), backend.engine()
    seed(first)
    path = tmp_path / "ops.dbm"
    with make_sessions(first)() as session, session.deferred_operations(path):
        # An update goes through the session's flush, whose failure leaves the session
        # refusing to hand out its connection until rolled back.
        asset = session.scalars(select(Asset).where(Asset.name == "bc0040_comp")).one()
        asset.name = "duplicate"
    with make_sessions(first)() as session:
        session.add(Asset(name="duplicate"))
        session.commit()
    before = table_rows(first)

    for engine in (first, second):
        with make_sessions(engine)() as session, pytest.raises(DeferredOperationError) as caught:
            session.reconnect_and_commit(path, if_busy="skip")
        assert "Nothing was applied" in str(caught.value)
    assert table_rows(first) == before
    if backend.name == "mariadb":
        with second.connect() as conn:
            with Journal(path) as journal:
                name = f"orm_journal:{journal.journal_id}"
            assert conn.execute(text("SELECT IS_FREE_LOCK(:n)"), {"n": name}).scalar() == 1
