"""Replay of mapping patterns beyond plain lists and module-level classes (SPEC §3.9, §5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, ForeignKey, Integer, String, event, select
from sqlalchemy.ext.declarative import ConcreteBase
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    declared_attr,
    mapped_column,
    relationship,
)
from sqlalchemy.orm.collections import attribute_keyed_dict

from orm_ext import SchemaMismatchError
from tests.conftest import Backend
from tests.scenario import make_sessions, replay


class Base(DeclarativeBase):
    """Models of this module only (MariaDB needs a length for every string)."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {str: String(40)}


class Shelf(Base):
    __tablename__ = "fid_shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[dict[str, Book]] = relationship(collection_class=attribute_keyed_dict("title"))
    labels: Mapped[set[Label]] = relationship(collection_class=set)


class Book(Base):
    __tablename__ = "fid_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("fid_shelf.id"))
    title: Mapped[str]


class Label(Base):
    __tablename__ = "fid_label"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("fid_shelf.id"))
    text: Mapped[str]


class Span(Base):
    """A row whose primary key includes a column the program changes (row versioning)."""

    __tablename__ = "fid_span"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    until: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    note: Mapped[str]


class Part:
    """A part of some owner; each owner class gets its own subclass and table."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class HasParts:
    """Gives a mapped class a ``parts`` collection of a class made while it is mapped."""

    @declared_attr
    def parts(cls) -> Mapped[list[Any]]:
        made = type(
            f"{cls.__name__}Part",  # type: ignore[attr-defined]
            (Part, Base),
            {
                "__tablename__": f"{cls.__tablename__}_part",  # type: ignore[attr-defined]
                "owner_id": mapped_column(ForeignKey(f"{cls.__tablename__}.id")),  # type: ignore[attr-defined]
            },
        )
        cls.Part = made  # type: ignore[attr-defined]
        return relationship(made)


class Machine(HasParts, Base):
    __tablename__ = "fid_machine"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Owner(Base):
    __tablename__ = "fid_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Pet(Base):
    __tablename__ = "fid_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("fid_owner.id"))
    owner: Mapped[Owner | None] = relationship(lazy="joined")


class Person(ConcreteBase, Base):
    __tablename__ = "fid_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "person"}


class Engineer(Person):
    __tablename__ = "fid_engineer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    language: Mapped[str]
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_identity": "engineer",
        "concrete": True,
    }


class OtherBase(DeclarativeBase):
    """A second registry, never created in a database: it only holds a twin."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {str: String(40)}


# Two mapped classes named tests.test_replay_fidelity:Twin, neither a module attribute.
TWINS = tuple(
    type(
        "Twin",
        (base,),
        {
            "__tablename__": f"fid_twin_{n}",
            "id": mapped_column(Integer, primary_key=True),
        },
    )
    for n, base in enumerate((Base, OtherBase))
)


def rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: sorted(tuple(row) for row in conn.execute(select(t)))
            for t in Base.metadata.sorted_tables
        }


def seeded(backend: Backend, seed: Callable[[Session], None]) -> tuple[Engine, Engine]:
    """Databases A and B with this module's tables, each seeded by ``seed``."""
    a, b = backend.engine("a"), backend.engine("b")
    for engine in (a, b):
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            seed(session)
            session.commit()
    return a, b


def check(
    backend: Backend,
    tmp_path: Path,
    seed: Callable[[Session], None],
    body: Callable[[Session], None],
) -> None:
    """Record ``body`` on A, run it directly on A, replay into B: A and B must be equal."""
    a, b = seeded(backend, seed)
    path = tmp_path / "ops.journal"
    with make_sessions(a)() as session, session.deferred_operations(path):
        body(session)
    with Session(a) as session:
        body(session)
        session.commit()
    assert replay(b, path).applied
    assert rows(b) == rows(a)


def no_rows(session: Session) -> None:
    pass


def test_keyed_dict_and_set_collections(backend: Backend, tmp_path: Path) -> None:
    """Members added to attribute_keyed_dict and set collections are replayed like a list's."""

    def body(session: Session) -> None:
        shelf = Shelf(id=1, name="s")
        shelf.books["dune"] = Book(id=1, title="dune")
        shelf.books["emma"] = Book(id=2, title="emma")
        shelf.labels.add(Label(id=1, text="new"))
        session.add(shelf)

    check(backend, tmp_path, no_rows, body)


def test_keyed_dict_member_moved_between_existing_rows(backend: Backend, tmp_path: Path) -> None:
    """A keyed-dict member moved from one existing row's dict to another's is replayed."""

    def seed(session: Session) -> None:
        first, second = Shelf(id=1, name="a"), Shelf(id=2, name="b")
        first.books["dune"] = Book(id=1, title="dune")
        second.labels.add(Label(id=1, text="x"))
        session.add_all([first, second])

    def body(session: Session) -> None:
        first, second = session.get_one(Shelf, 1), session.get_one(Shelf, 2)
        second.books["dune"] = first.books.pop("dune")
        label = next(iter(second.labels))
        second.labels.discard(label)
        first.labels.add(label)

    check(backend, tmp_path, seed, body)


def test_class_made_while_mapping(backend: Backend, tmp_path: Path) -> None:
    """A class made by type() inside a declared_attr, no module attribute, is found on replay."""

    def seed(session: Session) -> None:
        session.add(Machine(id=1, name="m"))

    def body(session: Session) -> None:
        machine = session.get_one(Machine, 1)
        machine.parts.append(Machine.Part(id=1, name="gear"))  # type: ignore[attr-defined]
        session.add(Machine(id=2, name="n", parts=[Machine.Part(id=2, name="cog")]))  # type: ignore[attr-defined]

    check(backend, tmp_path, seed, body)


def test_update_of_class_with_joined_relationship(backend: Backend, tmp_path: Path) -> None:
    """Rows of a class with a lazy="joined" many-to-one are locked and updated on replay."""

    def seed(session: Session) -> None:
        session.add_all([Owner(id=1, name="o"), Pet(id=1, name="rex", owner_id=1)])
        session.add(Pet(id=2, name="tom"))

    def body(session: Session) -> None:
        session.get_one(Pet, 1).name = "max"
        session.delete(session.get_one(Pet, 2))

    check(backend, tmp_path, seed, body)


def test_concrete_rows_sharing_keys(backend: Backend, tmp_path: Path) -> None:
    """Updates and deletes of a concrete hierarchy whose tables repeat keys hit the right row."""

    def seed(session: Session) -> None:
        session.add_all([Person(id=1, name="p1"), Person(id=2, name="p2")])
        session.add_all(
            [Engineer(id=1, name="e1", language="py"), Engineer(id=2, name="e2", language="c")]
        )

    def body(session: Session) -> None:
        person = session.scalars(select(Person).where(Person.name == "p1")).one()
        person.name = "p1'"
        engineer = session.scalars(select(Engineer).where(Engineer.name == "e2")).one()
        engineer.language = "rust"
        session.delete(session.scalars(select(Person).where(Person.name == "p2")).one())

    check(backend, tmp_path, seed, body)


def test_ambiguous_class_made_while_mapping(backend: Backend, tmp_path: Path) -> None:
    """Two mapped classes of one module:QualName, neither a module attribute, are refused."""
    a, b = backend.engine("a"), backend.engine("b")
    for engine in (a, b):
        Base.metadata.create_all(engine)
    path = tmp_path / "ops.journal"
    with make_sessions(a)() as session, session.deferred_operations(path):
        session.add(TWINS[0](id=1))
    with pytest.raises(SchemaMismatchError) as raised:
        replay(b, path)
    assert "mapped to fid_twin_0 and one mapped to fid_twin_1" in str(raised.value)
    assert rows(b)["fid_twin_0"] == []


def test_primary_key_change_replays(backend: Backend, tmp_path: Path) -> None:
    """An update that changes a primary key column moves the recorded row, not another."""

    def seed(session: Session) -> None:
        session.add_all([Span(id=1, until=10, note="a"), Span(id=2, until=10, note="b")])

    def body(session: Session) -> None:
        span = session.get(Span, (1, 10))
        assert span is not None
        span.until = 5

    check(backend, tmp_path, seed, body)


def test_session_class_listeners_do_not_run_at_replay(backend: Backend, tmp_path: Path) -> None:
    """A before_flush listener on the Session class runs where the block runs, not at replay."""
    calls: list[str] = []

    def rename(session: Session, flush_context: Any, instances: Any) -> None:
        calls.append("before_flush")
        for obj in session.new:
            if isinstance(obj, Label):
                obj.text = obj.text.upper()

    def seed(session: Session) -> None:
        session.add(Shelf(id=1, name="s"))

    def body(session: Session) -> None:
        session.add(Label(shelf_id=1, text="new"))

    a, b = seeded(backend, seed)
    path = tmp_path / "ops.journal"
    event.listen(Session, "before_flush", rename)
    try:
        with make_sessions(a)() as session, session.deferred_operations(path):
            body(session)
        recorded = len(calls)
        assert replay(b, path).applied
        assert len(calls) == recorded  # nothing ran again
    finally:
        event.remove(Session, "before_flush", rename)
    assert rows(b)["fid_label"] == [(1, 1, "NEW")]


def test_mapper_listener_values_are_the_recorded_ones(backend: Backend, tmp_path: Path) -> None:
    """A before_insert/before_update listener's values are written as recorded, not again.

    The listener stamps each row with a counter, as one that stamps a clock would: run
    again at replay it would write other values than the recording process saw.
    """
    stamps = iter(range(1, 1000))

    def stamp(mapper: Any, connection: Any, target: Label) -> None:
        target.text = f"{target.text.split('#')[0]}#{next(stamps)}"

    def seed(session: Session) -> None:
        session.add(Shelf(id=1, name="s"))
        session.add(Label(shelf_id=1, text="old"))

    def body(session: Session) -> list[str]:
        session.add(Label(shelf_id=1, text="new"))
        session.scalars(select(Label).where(Label.text == "old")).one().text = "old changed"
        session.flush()
        return sorted(label.text for label in session.scalars(select(Label)))

    _, b = seeded(backend, seed)
    path = tmp_path / "ops.journal"
    event.listen(Label, "before_insert", stamp)
    event.listen(Label, "before_update", stamp)
    try:
        with make_sessions(b)() as session, session.deferred_operations(path):
            seen = body(session)
        assert seen == ["new#1", "old changed#2"]
        assert replay(b, path).applied
    finally:
        event.remove(Label, "before_insert", stamp)
        event.remove(Label, "before_update", stamp)
    assert [text for *_, text in rows(b)["fid_label"]] == ["old changed#2", "new#1"]
