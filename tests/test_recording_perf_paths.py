"""Recording's compact bookkeeping behaves as the full form did (SPEC §3).

A new object's first rollback snapshot is kept as one flat tuple, objects created by a
flush are remembered per batch, leaving the block detaches an all-recorded session at
once, and a flush is recorded with the cyclic garbage collector paused; these tests pin
what each of them must still show.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, event, func, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    attribute_keyed_dict,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from journal import Journal
from orm_ext import DeferredOperationError, JournalingSession, Placeholder, block_reads
from tests.conftest import Backend
from tests.models import Asset, AssetVersion, Task
from tests.scenario import make_sessions, seed


@pytest.fixture
def no_kept_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rows kept alive for the block's reads: what is left alive is what rollback pins."""
    monkeypatch.setattr(block_reads, "KEPT_ROWS", 0)


@pytest.fixture
def world(backend: Backend) -> Any:
    """Database A seeded with the scenario, and a JournalingSession factory."""
    engine = backend.engine()
    seed(engine)

    class World:
        pass

    w = World()
    w.engine, w.sessions = engine, make_sessions(engine)  # type: ignore[attr-defined]
    return w


def operations(path: Path) -> list[dict[str, Any]]:
    with Journal(path) as journal:
        journal.verify()
        return [op for _, op in journal.operations()]


def test_rollback_shows_an_unchanged_new_object_from_its_first_snapshot(
    world: Any, tmp_path: Path
) -> None:
    """Unflushed changes to an object recorded before the checkpoint are undone, link too."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        asset, other = Asset(name="first"), Asset(name="other")
        version = AssetVersion(asset=asset, version=3, comment="kept")
        session.add_all([version, other])
        session.commit()
        asset_key = asset.id
        version.comment = "discarded"
        version.asset = other
        session.rollback()
        assert (version.comment, version.version, version.is_published) == ("kept", 3, False)
        assert version.asset is asset
        assert version.asset_id == asset_key
        assert isinstance(asset_key, Placeholder)
        assert version.task is None and version.task_id is None


def test_rollback_returns_to_the_last_checkpointed_change(world: Any, tmp_path: Path) -> None:
    """An object changed in several batches shows the values of the last checkpoint."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        version = AssetVersion(asset=Asset(name="a"), version=1, comment="one")
        session.add(version)
        session.commit()
        version.comment = "two"
        session.commit()
        version.comment = "three"
        session.flush()
        version.comment = "four"
        session.rollback()
        assert version.comment == "two"
        version.comment = "five"
    comments = [o["values"]["comment"] for o in operations(path) if o["op"] == "update"]
    assert comments == ["two", "five"]


def test_rollback_discards_every_flush_since_the_checkpoint(world: Any, tmp_path: Path) -> None:
    """Objects inserted by two flushes after the checkpoint become new objects again."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        kept = Task(name="kept")
        session.add(kept)
        session.commit()
        first, second = Task(name="first"), Task(name="second")
        session.add(first)
        session.flush()
        session.add(second)
        session.flush()
        session.rollback()
        assert first.id is None and second.id is None
        assert isinstance(kept.id, Placeholder)
        session.add(second)
    assert [o["values"]["name"] for o in operations(path)] == ["kept", "second"]


def test_recorded_object_is_refused_by_another_session(world: Any, tmp_path: Path) -> None:
    """An object recorded into a journal cannot be added to any session afterwards."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        task = Task(name="recorded")
        session.add(task)
    with Session(world.engine) as plain:
        plain.add(Task(name="never recorded"))
        with pytest.raises(DeferredOperationError, match="was recorded into journal"):
            plain.add(task)


@pytest.mark.parametrize("load_first", [False, True], ids=["only-recorded", "with-loaded"])
def test_leaving_the_block_detaches_only_recorded_objects(
    world: Any, tmp_path: Path, load_first: bool
) -> None:
    """Recorded objects leave the session with their values; loaded objects stay."""
    with world.sessions() as session:
        loaded = session.scalars(select(Asset)).first() if load_first else None
        with session.deferred_operations(tmp_path / "ops.dbm"):
            version = AssetVersion(asset=Asset(name="new asset"), version=7)
            session.add(version)
            session.flush()
        assert version not in session and version.asset not in session
        assert version.version == 7
        assert version.asset.name == "new asset"
        assert isinstance(version.asset_id, Placeholder)
        if loaded is not None:
            assert loaded in session
            assert list(session) == [loaded]
        else:
            assert list(session) == []


@pytest.fixture
def collector_seen(world: Any) -> Iterator[list[bool]]:
    """Whether the collector was enabled each time a recorded flush made an object persistent."""
    seen: list[bool] = []

    def note(session: Session, instance: object) -> None:
        seen.append(gc.isenabled())

    event.listen(Session, "pending_to_persistent", note)
    try:
        yield seen
    finally:
        event.remove(Session, "pending_to_persistent", note)
        gc.enable()


def test_a_flush_is_recorded_with_the_collector_paused(
    world: Any, tmp_path: Path, collector_seen: list[bool]
) -> None:
    """The cyclic collector is off while a flush is recorded and on again right after."""
    assert gc.isenabled()
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        session.add_all([Task(name="a"), Task(name="b")])
        session.flush()
        assert collector_seen == [False, False]
        assert gc.isenabled()
    assert [op["values"]["name"] for op in operations(tmp_path / "ops.dbm")] == ["a", "b"]


def test_a_refused_flush_leaves_the_collector_enabled(world: Any, tmp_path: Path) -> None:
    """A flush that raises while it is recorded still turns the collector back on."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        task = Task(name="x")
        session.add(task)
        task.name = func.upper("y")
        with pytest.raises(DeferredOperationError, match="SQL expression"):
            session.flush()
        assert gc.isenabled()
        task.name = "Y"


def test_a_collector_the_program_disabled_stays_disabled(
    world: Any, tmp_path: Path, collector_seen: list[bool]
) -> None:
    """Recording never turns on a collector that the program itself turned off."""
    gc.disable()
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        session.add(Task(name="a"))
        session.flush()
        assert not gc.isenabled()
    assert collector_seen == [False]
    assert not gc.isenabled()


class KeyedBase(DeclarativeBase):
    """Models with a dict collection, kept apart from the shared test schema."""


class Shelf(KeyedBase):
    __tablename__ = "keyed_shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[dict[str, Book]] = relationship(
        collection_class=attribute_keyed_dict("title"), back_populates="shelf"
    )


class Book(KeyedBase):
    __tablename__ = "keyed_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    shelf_id: Mapped[int] = mapped_column(ForeignKey("keyed_shelf.id"))
    shelf: Mapped[Shelf] = relationship(back_populates="books")


@pytest.fixture
def keyed_engine(backend: Backend) -> Iterator[Engine]:
    """An engine on the backend's database with the dict-collection tables, dropped after."""
    engine = backend.engine()
    KeyedBase.metadata.drop_all(engine)
    KeyedBase.metadata.create_all(engine)
    try:
        yield engine
    finally:
        KeyedBase.metadata.drop_all(engine)


def test_dict_collection_is_recorded_and_shown_again_after_rollback(
    keyed_engine: Engine, tmp_path: Path
) -> None:
    """A keyed (dict) collection records its members and comes back whole after rollback()."""
    path = tmp_path / "ops.dbm"
    sessions = sessionmaker(keyed_engine, class_=JournalingSession)
    with sessions() as session, session.deferred_operations(path):
        shelf = Shelf(name="kept", books={"a": Book(title="a"), "b": Book(title="b")})
        session.add(shelf)
        session.commit()
        shelf.name = "rolled back"
        session.flush()
        session.rollback()
        assert shelf.name == "kept"
        assert sorted(shelf.books) == ["a", "b"]
        assert shelf.books["a"].shelf is shelf
    assert [op["class"].rsplit(":", 1)[1] for op in operations(path)] == [
        "Shelf",
        "Book",
        "Book",
    ]


def test_a_failed_rollback_leaves_nothing_pinned(
    world: Any, tmp_path: Path, no_kept_rows: None
) -> None:
    """Objects pinned for a rollback that another listener broke are freed by the next one."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        failures = [RuntimeError("a listener failed")]

        @event.listens_for(session, "after_rollback")
        def fail_once(session: Session) -> None:
            if failures:
                raise failures.pop()

        version = AssetVersion(asset=Asset(name="dropped"), version=1)
        session.add(version)
        session.flush()
        asset = weakref.ref(version.asset)
        with pytest.raises(RuntimeError, match="a listener failed"):
            session.rollback()
        del version
        session.add(Task(name="next"))
        session.flush()
        session.rollback()
        gc.collect()
        assert asset() is None


def test_a_rollback_that_reads_the_database_keeps_every_collection(
    keyed_engine: Engine, tmp_path: Path
) -> None:
    """Collections refilled after a rollback that had to load members are all whole."""
    with Session(keyed_engine) as plain:
        plain.add_all(
            Shelf(name=name, books={t: Book(title=t) for t in titles})
            for name, titles in (("s1", ["a", "b"]), ("s2", ["c"]))
        )
        plain.commit()
    sessions = sessionmaker(keyed_engine, class_=JournalingSession)
    with sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        shelves = session.scalars(
            select(Shelf).order_by(Shelf.name).options(selectinload(Shelf.books))
        ).all()
        for shelf in shelves:
            shelf.name += "x"
        session.commit()
        session.scalars(select(Shelf)).all()  # the next transaction begins
        session.rollback()  # books are keyed by their expired title: loaded again
        gc.collect()
        assert [(s.name, sorted(s.books)) for s in shelves] == [
            ("s1x", ["a", "b"]),
            ("s2x", ["c"]),
        ]


def test_relations_of_a_deleted_object_the_program_dropped_are_freed(
    world: Any, tmp_path: Path, no_kept_rows: None
) -> None:
    """What a deleted object related to is not kept alive once the program drops the object."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        versions = [AssetVersion(asset=Asset(name=f"a{i}"), version=i) for i in range(50)]
        session.add_all(versions)
        session.commit()
        assets = [weakref.ref(v.asset) for v in versions]
        for version in versions:
            session.delete(version)
        session.flush()
        del versions, version
        gc.collect()
        assert [a for a in assets if a() is not None] == []
