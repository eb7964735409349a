"""Values the database fills in, read inside a deferred block (SPEC §3.11).

A plain flush lets the database fill in ``server_default`` columns, SQL-expression and
sequence defaults; the session reads them back on first access. Inside a block there is
no row yet: a literal default reads as the value the database stores, anything else is
refused when read, never shown as ``None``. Each test compares with a direct run on a
second database, then replays the journal and compares the rows.
"""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, Integer, String, func, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from orm_ext import DeferredOperationError
from tests.conftest import Backend
from tests.scenario import make_sessions, replay


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), server_default="open")
    priority: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    label: Mapped[str] = mapped_column(String(20), server_default=text("'triage'"))
    opened: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    notes: Mapped[list[Note]] = relationship(back_populates="ticket")


class Stamp(Base):
    """Columns the database sets when it updates the row: an onupdate SQL expression."""

    __tablename__ = "stamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    touched: Mapped[str] = mapped_column(String(20), default="new", onupdate=func.lower("TOUCHED"))


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"))
    body: Mapped[str] = mapped_column(String(50), server_default="")
    ticket: Mapped[Ticket] = relationship(back_populates="notes")


def fresh(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Ticket(title="existing", status="closed", priority=1))
        session.add(Stamp(id=1, name="s"))
        session.commit()


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    """Every row but the database's clock, by title."""
    with Session(engine) as session:
        tickets = session.execute(
            select(Ticket.title, Ticket.status, Ticket.priority, Ticket.label).order_by(
                Ticket.title
            )
        )
        notes = session.execute(select(Note.body, Note.ticket_id).order_by(Note.body))
        return [*map(tuple, tickets), *map(tuple, notes)]


def both(backend: Backend, tmp_path: Path, body: Any) -> Any:
    """Run ``body(session)`` directly on A and recorded-then-replayed on B; compare."""
    a, b = backend.engine("a"), backend.engine("b")
    fresh(a)
    fresh(b)
    with Session(a) as session:
        seen_directly = body(session)
        session.commit()
    path = tmp_path / "block.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        seen_recording = body(session)
    assert replay(b, path).applied
    assert seen_recording == seen_directly
    assert rows(b) == rows(a)
    return seen_recording


def test_literal_server_defaults_read_as_the_database_stores_them(
    backend: Backend, tmp_path: Path
) -> None:
    """A string or integer server default reads as its value after flush and refresh."""

    def body(session: Session) -> list[Any]:
        ticket = Ticket(title="new")
        session.add(ticket)
        session.flush()
        shown = [ticket.status, ticket.priority, ticket.label]
        session.commit()
        session.refresh(ticket)
        shown += [ticket.status, ticket.priority, ticket.label]
        note = Note(ticket=ticket)
        session.add(note)
        session.flush()
        return [*shown, note.body]

    assert both(backend, tmp_path, body) == ["open", 3, "triage"] * 2 + [""]


def test_queries_over_literal_server_defaults(backend: Backend, tmp_path: Path) -> None:
    """Queries filter and sort new rows by their literal server defaults."""

    def body(session: Session) -> list[Any]:
        session.add_all([Ticket(title="b"), Ticket(title="a", priority=5)])
        session.flush()
        by_status = session.scalars(
            select(Ticket.title).where(Ticket.status == "open").order_by(Ticket.title)
        ).all()
        by_priority = session.scalars(
            select(Ticket.title).order_by(Ticket.priority, Ticket.title)
        ).all()
        return [list(by_status), list(by_priority)]

    assert both(backend, tmp_path, body) == [["a", "b"], ["existing", "b", "a"]]


def test_database_computed_value_is_refused_when_read(backend: Backend, tmp_path: Path) -> None:
    """A value only the database computes (func.now()) is refused, never read as None."""
    b = backend.engine("b")
    fresh(b)
    path = tmp_path / "block.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        ticket = Ticket(title="new")
        session.add(ticket)
        session.flush()
        with pytest.raises(DeferredOperationError, match=r"Ticket\.opened .* set by the database"):
            _ = ticket.opened
        # The block goes on: the other values read, a refresh works, the write replays.
        session.refresh(ticket)
        assert (ticket.title, ticket.status) == ("new", "open")
        with pytest.raises(DeferredOperationError, match="not loaded"):
            session.scalars(select(Ticket).where(Ticket.opened > dt.datetime(2000, 1, 1))).all()
        with pytest.raises(DeferredOperationError, match="not loaded"):
            session.scalars(select(Ticket.opened)).all()
        assert session.scalars(select(Ticket.title).where(Ticket.status == "open")).all() == ["new"]
    assert replay(b, path).applied
    with Session(b) as session:
        opened = session.scalars(select(Ticket.opened).where(Ticket.title == "new")).one()
        assert isinstance(opened, dt.datetime)


def test_value_set_by_the_program_reads_as_given(backend: Backend, tmp_path: Path) -> None:
    """A server-default column the program sets reads as set, as in a plain session."""

    def body(session: Session) -> list[Any]:
        ticket = Ticket(title="given", status="waiting", opened=dt.datetime(2024, 5, 6, 7, 8))
        session.add(ticket)
        session.flush()
        session.commit()
        return [ticket.status, ticket.opened]

    assert both(backend, tmp_path, body) == ["waiting", dt.datetime(2024, 5, 6, 7, 8)]


def test_server_value_stays_refused_after_rollback(backend: Backend, tmp_path: Path) -> None:
    """After rollback() to a checkpoint, a new object's database-set value is still unknown."""
    b = backend.engine("b")
    fresh(b)
    path = tmp_path / "block.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        ticket = Ticket(title="kept")
        session.add(ticket)
        session.commit()
        ticket.title = "rolled back"
        session.flush()
        session.rollback()
        assert (ticket.title, ticket.status, ticket.priority) == ("kept", "open", 3)
        with pytest.raises(DeferredOperationError, match="set by the database"):
            _ = ticket.opened
    assert replay(b, path).applied
    assert ("kept", "open", 3, "triage") in rows(b)


def test_rows_an_insert_statement_added(backend: Backend, tmp_path: Path) -> None:
    """After an ORM insert() statement, a query none of its rows can match is answered;
    one they could match (or that compares a value the database sets) is refused."""

    def body(session: Session) -> list[Any]:
        existing = session.scalars(select(Ticket).where(Ticket.title == "existing")).one()
        session.execute(insert(Ticket).values(title="inserted", priority=9))
        session.expire(existing)
        shown = [existing.status, existing.priority]  # a reload by key: answered
        found = session.get(Ticket, existing.id)
        shown.append(found is existing)
        shown.append(session.scalars(select(Ticket.title).where(Ticket.priority < 5)).all())
        return shown

    assert both(backend, tmp_path, body) == ["closed", 1, True, ["existing"]]
    b = backend.engine("b")
    fresh(b)
    with make_sessions(b)() as session, session.deferred_operations(tmp_path / "more.dbm"):
        session.execute(insert(Ticket).values(title="inserted", priority=9))
        for query in (
            select(Ticket).where(Ticket.priority > 5),  # the inserted row matches
            select(Ticket).where(Ticket.status == "open"),  # its server default: 'open'
            select(Ticket).where(Ticket.opened > dt.datetime(2000, 1, 1)),  # only at replay
            select(Ticket).order_by(Ticket.id),  # its key has no order yet
        ):
            with pytest.raises(DeferredOperationError, match="cannot be answered"):
                session.scalars(query).all()


def test_value_the_database_sets_on_update_is_refused_when_read(
    backend: Backend, tmp_path: Path
) -> None:
    """After a recorded UPDATE, a column the database sets as it updates the row is refused
    when read, after the flush and after commit() (it read the value before the block)."""
    a, b = backend.engine("a"), backend.engine("b")
    fresh(a)
    fresh(b)
    with Session(a) as session:
        stamp = session.get(Stamp, 1)
        assert stamp is not None
        stamp.name = "renamed"
        session.flush()
        assert stamp.touched == "touched"  # a plain session reloads the database's value
    path = tmp_path / "block.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        stamp = session.get(Stamp, 1)
        assert stamp is not None
        assert stamp.touched == "new"
        stamp.name = "renamed"
        session.flush()
        with pytest.raises(DeferredOperationError, match=r"Stamp\.touched .* set by the database"):
            _ = stamp.touched
        session.commit()
        with pytest.raises(DeferredOperationError, match=r"Stamp\.touched .* set by the database"):
            _ = stamp.touched
        assert stamp.name == "renamed"
        session.expire(stamp)
        with pytest.raises(DeferredOperationError, match=r"Stamp\.touched .* set by the database"):
            _ = stamp.touched
        stamp.touched = "given"  # a value the program gives is known again
        session.commit()
        assert stamp.touched == "given"
    assert replay(b, path).applied
    with Session(b) as session:
        assert session.execute(select(Stamp.name, Stamp.touched)).one() == ("renamed", "given")


def test_database_value_read_first_after_commit_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    """Read first after commit(), a value only the database computes is refused each time,
    never a failed load followed by None; the object still pickles."""
    b = backend.engine("b")
    fresh(b)
    path = tmp_path / "block.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        ticket = Ticket(title="new")
        session.add(ticket)
        session.commit()
        for _ in range(2):
            with pytest.raises(
                DeferredOperationError, match=r"Ticket\.opened .* set by the database"
            ):
                _ = ticket.opened
        assert (ticket.title, ticket.status) == ("new", "open")
        copy = pickle.loads(pickle.dumps(ticket))
        assert copy.title == "new"
    assert replay(b, path).applied
