"""Recording keeps what a plain Session would write, for mapping patterns found in the wild.

Each test reproduces a pattern from SQLAlchemy's own examples (tests/corpus) that the
recorder once got wrong: the program runs directly on database A, recorded and replayed
on database B, and both databases must end up the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    select,
    update,
)
from sqlalchemy.ext.instrumentation import InstrumentationManager
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Mapped,
    Session,
    backref,
    foreign,
    mapped_column,
    registry,
    relationship,
    remote,
)

from orm_ext import DeferredOperationError, JournalingSession
from tests.conftest import Backend

Recorded = Callable[[], AbstractContextManager[Any]]


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "fidelity_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "type",
        "polymorphic_identity": "person",
    }


class Manager(Person):
    __tablename__ = "fidelity_manager"
    id: Mapped[int] = mapped_column(ForeignKey("fidelity_person.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(30))
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


class Item(Base):
    __tablename__ = "fidelity_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    flagged: Mapped[bool] = mapped_column(default=False)


class Folder(Base):
    """A self-referential tree whose children are deleted with their parent."""

    __tablename__ = "fidelity_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("fidelity_folder.id"))
    name: Mapped[str] = mapped_column(String(30))
    slug: Mapped[str] = mapped_column(String(40), default="")
    children: Mapped[list[Folder]] = relationship(cascade="all, delete-orphan")


class Feed(Base):
    """A parent whose entries are a dynamic relationship, deleted when removed from it."""

    __tablename__ = "fidelity_feed"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    entries: DynamicMapped[Entry] = relationship(cascade="all, delete-orphan")


class Entry(Base):
    __tablename__ = "fidelity_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("fidelity_feed.id"))
    title: Mapped[str] = mapped_column(String(30))


_STAMPS = iter(range(1000, 100000))


def _stamp() -> int:
    return next(_STAMPS)


class Stamped(Base):
    """Python-side defaults: one computed on insert, one on every update."""

    __tablename__ = "fidelity_stamped"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    created: Mapped[int] = mapped_column(default=_stamp)
    touched: Mapped[int] = mapped_column(default=0, onupdate=_stamp)


def contents(engine: Engine, metadata: MetaData) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            table.name: sorted(tuple(row) for row in connection.execute(select(table)))
            for table in metadata.sorted_tables
        }


def no_rows(session: Session) -> None:
    """Seed nothing."""


def assert_replay_equals_direct(
    backend: Backend,
    tmp_path: Path,
    metadata: MetaData,
    seed: Callable[[Session], None],
    body: Callable[[JournalingSession, Recorded], None],
) -> None:
    """Run ``body`` directly on A and recorded, then replayed, on B; both must agree."""
    a, b = backend.engine("a"), backend.engine("b")
    for engine in (a, b):
        metadata.drop_all(engine)
        metadata.create_all(engine)
        with Session(engine) as session:
            seed(session)
            session.commit()
    path = tmp_path / "ops.dbm"
    with JournalingSession(a) as session:
        body(session, contextlib.nullcontext)
        session.commit()
    with JournalingSession(b) as session:
        body(session, lambda: session.deferred_operations(path))
    with JournalingSession(b) as session:
        assert session.reconnect_and_commit(path).applied
    assert contents(b, metadata) == contents(a, metadata)


def test_unloaded_subclass_column_of_joined_inheritance(backend: Backend, tmp_path: Path) -> None:
    """Changing an expired subclass column records that row's old value, not another row's."""

    def seed(session: Session) -> None:
        session.add_all(Manager(name=f"m{n}", status=f"s{n}") for n in range(4))

    def body(session: JournalingSession, recorded: Recorded) -> None:
        third = session.scalars(select(Manager).where(Manager.name == "m2")).one()
        session.commit()  # expire_on_commit: status is no longer loaded
        with recorded():
            third.status = "promoted"

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, seed, body)


def test_statement_from_a_before_flush_listener(backend: Backend, tmp_path: Path) -> None:
    """An ORM update() run by a before_flush listener is recorded as a plain flush runs it."""

    def seed(session: Session) -> None:
        session.add_all(Item(kind="old") for _ in range(3))

    def flag_old_items(session: Session, flush_context: Any, instances: Any) -> None:
        session.execute(update(Item).where(Item.kind == "old").values(flagged=True))

    def body(session: JournalingSession, recorded: Recorded) -> None:
        event.listen(session, "before_flush", flag_old_items)
        with recorded():
            session.add(Item(kind="new"))
            session.flush()

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, seed, body)


class Custom:
    """Keeps its instance state where its instrumentation manager says, as in
    examples/custom_attributes, not in ``_sa_instance_state``."""

    __sa_instrumentation_manager__ = InstrumentationManager

    def __init__(self, name: str) -> None:
        self.name = name


custom_metadata = MetaData()
custom_table = Table(
    "fidelity_custom",
    custom_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(30)),
)


def custom_instrumentation() -> type[Custom]:
    """Map ``Custom`` on first use: custom instrumentation, once in use, changes how
    SQLAlchemy finds every object's state for the rest of the process."""
    if not hasattr(Custom, "__mapper__"):
        registry().map_imperatively(Custom, custom_table)
    return Custom


def test_class_with_custom_instrumentation(backend: Backend, tmp_path: Path) -> None:
    """A class whose instance state is kept by custom instrumentation can be added to sessions."""
    custom = custom_instrumentation()
    engine = backend.engine("a")
    custom_metadata.create_all(engine)
    with Session(engine) as plain:
        plain.add(custom("plain"))
        plain.commit()
    with JournalingSession(engine) as journaling:
        journaling.add(custom("journaling"))
        journaling.commit()
    with engine.connect() as connection:
        names = connection.execute(select(custom_table.c.name)).scalars()
        assert sorted(names) == ["journaling", "plain"]


def test_recording_a_class_with_custom_instrumentation(backend: Backend, tmp_path: Path) -> None:
    """Objects of a class with custom instrumentation are recorded in a deferred block."""
    custom = custom_instrumentation()
    engine = backend.engine("a")
    custom_metadata.create_all(engine)
    with JournalingSession(engine) as session:
        session.add(custom("seeded"))
        session.commit()
        seeded = session.scalars(select(custom)).one()
        with session.deferred_operations(tmp_path / "ops.dbm") as recorded:
            seeded.name = "renamed"
            session.add(custom("added"))
        assert recorded.operations == 2
    with engine.connect() as connection:
        assert connection.execute(select(custom_table.c.name)).scalars().all() == ["seeded"]


def test_new_root_of_a_delete_orphan_tree_is_inserted(backend: Backend, tmp_path: Path) -> None:
    """A new root of a self-referential delete-orphan tree is inserted, as a flush does."""

    def body(session: JournalingSession, recorded: Recorded) -> None:
        with recorded():
            session.add(Folder(name="root", children=[Folder(name="a"), Folder(name="b")]))
            session.flush()

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, no_rows, body)


def test_mapper_listener_runs_while_recording(backend: Backend, tmp_path: Path) -> None:
    """A before_insert listener runs in the recording process; the block sees what it set."""
    seen: list[str] = []

    def slug(mapper: Any, connection: Any, target: Folder) -> None:
        target.slug = target.name.lower().replace(" ", "-")

    def body(session: JournalingSession, recorded: Recorded) -> None:
        with recorded():
            folder = Folder(name="Shot List")
            session.add(folder)
            session.flush()
            seen.append(folder.slug)

    event.listen(Folder, "before_insert", slug)
    try:
        assert_replay_equals_direct(backend, tmp_path, Base.metadata, no_rows, body)
    finally:
        event.remove(Folder, "before_insert", slug)
    assert seen == ["shot-list", "shot-list"]


def test_mapper_listener_changing_another_object_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    """A mapper listener that changes another object is refused: replay would run it twice."""

    def count(mapper: Any, connection: Any, target: Folder) -> None:
        if target.parent_id is not None:
            parent = Session.object_session(target).get(Folder, target.parent_id)
            parent.slug = "has children"

    engine = backend.engine("a")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Folder(id=1, name="root"))
        session.commit()
    event.listen(Folder, "before_insert", count)
    try:
        with JournalingSession(engine) as session:
            with pytest.raises(DeferredOperationError, match="would apply that change twice"):
                with session.deferred_operations(tmp_path / "ops.dbm"):
                    session.add(Folder(name="child", parent_id=1))
                    session.flush()
    finally:
        event.remove(Folder, "before_insert", count)
    assert contents(engine, Base.metadata)["fidelity_folder"] == [(1, None, "root", "")]


def test_listener_reading_a_table_the_flush_writes_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    """SQL a mapper listener reads from a table its own flush writes is refused, not stale."""

    def count_siblings(mapper: Any, connection: Any, target: Folder) -> None:
        table = Folder.__table__
        connection.scalar(select(func.count()).select_from(table))

    engine = backend.engine("a")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    event.listen(Folder, "before_insert", count_siblings)
    try:
        with JournalingSession(engine) as session:
            with pytest.raises(DeferredOperationError, match="fidelity_folder"):
                with session.deferred_operations(tmp_path / "ops.dbm"):
                    session.add(Folder(name="new"))
                    session.flush()
    finally:
        event.remove(Folder, "before_insert", count_siblings)


def test_dynamic_relationship_records_and_replays(backend: Backend, tmp_path: Path) -> None:
    """Members added to and removed from a dynamic relationship replay as a flush writes them."""

    def seed(session: Session) -> None:
        session.add(Feed(id=1, name="news", entries=[Entry(title="old")]))

    def body(session: JournalingSession, recorded: Recorded) -> None:
        with recorded():
            feed = session.get(Feed, 1)
            assert feed is not None
            feed.entries.append(Entry(title="new"))
            old = feed.entries.filter_by(title="old").one()
            feed.entries.remove(old)
            session.flush()
            assert [e.title for e in feed.entries.order_by(Entry.title)] == ["new"]

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, seed, body)


def test_python_defaults_are_computed_while_recording(backend: Backend, tmp_path: Path) -> None:
    """Callable defaults and onupdate values are computed by the recording flush, read in
    the block, and replayed as those values."""
    seen: list[tuple[int, int]] = []

    def body(session: JournalingSession, recorded: Recorded) -> None:
        global _STAMPS
        _STAMPS = iter(range(1000, 100000))  # the same values in both runs
        with recorded():
            row = Stamped(name="a")
            session.add(row)
            session.flush()
            row.name = "b"
            session.flush()
            seen.append((row.created, row.touched))

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, no_rows, body)
    assert seen == [(1000, 1001), (1000, 1001)]


# -- two relationships writing one foreign key (the generic-foreign-key pattern) ----------


class Spot(Base):
    """A row whose parent_id refers to a Shop or a Depot, by its kind (no constraint)."""

    __tablename__ = "fidelity_spot"
    id: Mapped[int] = mapped_column(primary_key=True)
    street: Mapped[str] = mapped_column(String(30))
    kind: Mapped[str | None] = mapped_column(String(10))
    parent_id: Mapped[int | None]


def _spots_of(cls: type[Any], kind: str) -> Any:
    return relationship(
        Spot,
        primaryjoin=lambda: (cls.id == foreign(remote(Spot.parent_id))) & (Spot.kind == kind),
        backref=backref(
            f"parent_{kind}",
            primaryjoin=lambda: remote(cls.id) == foreign(Spot.parent_id),
            overlaps="spots, parent_shop, parent_depot",
        ),
        overlaps="spots",
    )


class Shop(Base):
    __tablename__ = "fidelity_shop"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


class Depot(Base):
    __tablename__ = "fidelity_depot"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


Shop.spots = _spots_of(Shop, "shop")
Depot.spots = _spots_of(Depot, "depot")


def _seed_spots(depot_id: int) -> Callable[[Session], None]:
    def seed(session: Session) -> None:
        session.add(Shop(id=1, name="shop"))
        session.add(Depot(id=depot_id, name="depot"))
        session.add_all(
            [
                Spot(street="first", kind="shop", parent_id=1),
                Spot(street="second", kind="shop", parent_id=1),
            ]
        )

    return seed


def _move_spot(session: Session, depot_id: int, *, flush_between: bool) -> None:
    shop = session.get(Shop, 1)
    depot = session.get(Depot, depot_id)
    assert shop is not None and depot is not None
    len(depot.spots)
    spot = next(s for s in shop.spots if s.street == "second")
    shop.spots.remove(spot)
    if flush_between:
        session.flush()
    spot.kind = "depot"
    depot.spots.append(spot)
    session.commit()


@pytest.mark.parametrize("depot_id", [1, 2], ids=["same key", "other key"])
def test_move_between_relationships_sharing_a_foreign_key_is_refused(
    backend: Backend, tmp_path: Path, depot_id: int
) -> None:
    """One flush that clears a foreign key through one relationship and sets it through
    another is refused: a plain flush keeps whichever step SQLAlchemy orders last (here
    NULL, in SQLAlchemy's generic_fk example the new key), which recording cannot know.
    The column is nullable: replaying either guess would write it without any error."""
    b = backend.engine("b")
    Base.metadata.drop_all(b)
    Base.metadata.create_all(b)
    with Session(b) as session:
        _seed_spots(depot_id)(session)
        session.commit()
    path = tmp_path / "ops.dbm"
    with JournalingSession(b) as session:
        with (
            pytest.raises(DeferredOperationError, match=r"clears Spot\.parent_id .* flush"),
            session.deferred_operations(path),
        ):
            _move_spot(session, depot_id, flush_between=False)
    with Session(b) as session:
        assert session.scalars(select(Spot.parent_id).order_by(Spot.id)).all() == [1, 1]


@pytest.mark.parametrize("depot_id", [1, 2], ids=["same key", "other key"])
def test_move_between_relationships_sharing_a_foreign_key_in_two_flushes(
    backend: Backend, tmp_path: Path, depot_id: int
) -> None:
    """The same move with a flush between its two steps replays as the direct run."""

    def body(session: JournalingSession, recorded: Recorded) -> None:
        with recorded():
            _move_spot(session, depot_id, flush_between=True)

    assert_replay_equals_direct(backend, tmp_path, Base.metadata, _seed_spots(depot_id), body)
