"""Recording a unit of work into a journal: ``deferred_operations`` (SPEC §3)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, event, func, insert, or_, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from journal import Journal, JournalIncompleteError, JournalLockedError
from orm_ext import DeferredOperationError, JournalingSession, Placeholder, block_reads, recording
from tests.conftest import Backend
from tests.models import (
    Account,
    Asset,
    AssetVersion,
    Component,
    Node,
    Post,
    Tag,
    Task,
)
from tests.scenario import make_sessions, record_seed_scenario, seed, table_rows, watch


@pytest.fixture
def world(backend: Backend) -> Any:
    """Database A seeded with the scenario's asset, a statement log and a session factory."""
    engine = backend.engine()
    seed(engine)
    log = watch(engine)

    class World:
        pass

    w = World()
    w.engine, w.log, w.sessions = engine, log, make_sessions(engine)  # type: ignore[attr-defined]
    return w


def operations(path: Path) -> list[dict[str, Any]]:
    with Journal(path) as journal:
        journal.verify()
        return [op for _, op in journal.operations()]


def batches(path: Path) -> list[list[dict[str, Any]]]:
    with Journal(path) as journal:
        return [b.operations for b in journal.batches()]


def test_seed_scenario_records_instead_of_writing(world: Any, tmp_path: Path) -> None:
    """The seed scenario sends no INSERT/UPDATE/DELETE and journals exactly its operations."""
    before = table_rows(world.engine)
    path = tmp_path / "ops.dbm"
    with world.sessions() as session:
        world.log.clear()
        with session.deferred_operations(path) as handle:
            record_seed_scenario(session)
        assert world.log.writes() == []
        assert world.log.selects(), "the query inside the block still reads the database"
        assert handle.operations == 4
    assert table_rows(world.engine) == before
    ops = operations(path)
    assert [(o["op"], o["class"].split(":")[1]) for o in ops] == [
        ("insert", "AssetVersion"),
        ("insert", "Component"),
        ("insert", "ComponentLocation"),
        ("update", "AssetVersion"),
    ]
    version, component, location, publish = ops
    assert version["values"] == {"version": 2, "is_published": False}
    assert version["links"] == {"asset": [1], "task": [1]}
    assert component["links"] == {"version": version["ref"]}
    assert location["links"] == {"component": component["ref"]}
    assert location["values"] == {"resource_identifier": "/path/to/final/file"}
    assert publish["target"] == version["ref"]
    assert publish["values"] == {"is_published": True}
    assert publish["old"] == {"is_published": False}
    assert {o["table"] for o in ops} == {"asset_version", "component", "component_location"}


def test_each_flush_is_one_batch_in_program_order(world: Any, tmp_path: Path) -> None:
    """Explicit flush, autoflush before a query and commit each append one batch, in order."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        session.add(Task(name="one"))
        session.flush()
        session.add(Task(name="two"))
        session.scalars(select(Task)).all()  # autoflush
        session.add(Task(name="three"))
        session.commit()
    assert [[op["values"]["name"] for op in batch] for batch in batches(path)] == [
        ["one"],
        ["two"],
        ["three"],
    ]


def test_placeholders_resolve_within_the_graph(world: Any, tmp_path: Path) -> None:
    """New objects get placeholder keys; later changes and deletes refer to the same placeholder."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        asset = Asset(name="new asset")
        version = AssetVersion(asset=asset, version=1)
        session.add(version)
        session.flush()
        assert isinstance(asset.id, Placeholder)
        assert version.asset_id == asset.id, "foreign keys are synchronised as by a flush"
        version.comment = "changed after the flush"
        session.flush()
        session.delete(version)
    inserts, update_, delete_ = batches(path)
    refs = {op["class"].split(":")[1]: op["ref"] for op in inserts}
    assert update_[0]["target"] == refs["AssetVersion"]
    assert update_[0]["values"] == {"comment": "changed after the flush"}
    assert delete_[0]["op"] == "delete" and delete_[0]["target"] == refs["AssetVersion"]


def test_updates_carry_old_values_even_when_not_loaded(world: Any, tmp_path: Path) -> None:
    """An update records old values of expired and deferred attributes, and the version counter."""
    with Session(world.engine) as plain:
        plain.add(Account(code="A-1", balance=decimal.Decimal("10.50"), note="old note"))
        plain.commit()
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        account = session.scalars(select(Account)).one()
        session.expire(account, ["balance"])
        account.balance = decimal.Decimal("99.00")
        account.note = "new note"  # deferred: never loaded
        session.flush()
        account.opened = dt.date(2026, 1, 2)
    first, second = (batch[0] for batch in batches(path))
    assert first["values"] == {"balance": decimal.Decimal("99.00"), "note": "new note"}
    assert first["old"] == {"balance": decimal.Decimal("10.50"), "note": "old note"}
    assert first["version"] == [1, 2]
    assert second["old"] == {"opened": None}
    assert second["version"] == [2, 3], "the second update expects the first one's version"


def test_orm_statements_are_recorded_not_executed(world: Any, tmp_path: Path) -> None:
    """ORM update(), delete() and insert() are journaled with their criteria and not run."""
    before = table_rows(world.engine)
    path = tmp_path / "ops.dbm"
    with world.sessions() as session:
        world.log.clear()
        with session.deferred_operations(path):
            session.execute(update(Task).where(Task.name == "compositing").values(name="comp"))
            session.execute(delete(Task).where(Task.name.in_(["x", "y"]), Task.id > 5))
            session.execute(insert(Task), [{"name": "a"}, {"name": "b"}])
        assert world.log.writes() == []
    assert table_rows(world.engine) == before
    upd, dele, ins = operations(path)
    assert upd["op"] == "bulk_update" and upd["values"] == {"name": "comp"}
    assert upd["where"] == ["cmp", "eq", "name", "compositing"]
    assert dele["where"] == ["and", [["cmp", "in", "name", ["x", "y"]], ["cmp", "gt", "id", 5]]]
    assert ins["rows"] == [{"name": "a"}, {"name": "b"}]


@pytest.mark.parametrize(
    "statement",
    [
        lambda: update(Task).values(name=func.upper(Task.name)),
        lambda: update(Task).where(func.lower(Task.name) == "x").values(name="y"),
        lambda: delete(Task).where(Task.id == select(func.max(Task.id)).scalar_subquery()),
        lambda: update(Task).values(name="z").returning(Task.id),
        lambda: delete(Task).where(Task.name.like("a/_%", escape="/")),
        lambda: update(Task).values(name="z").prefix_with("OR IGNORE"),
        lambda: insert(Task).values(name="z").prefix_with("IGNORE"),
    ],
    ids=[
        "expression-value",
        "function-criteria",
        "subquery",
        "returning",
        "like-escape",
        "prefix",
        "insert-prefix",
    ],
)
def test_unreplayable_statement_is_refused(world: Any, tmp_path: Path, statement: Any) -> None:
    """A statement that cannot be replayed faithfully raises at once and runs nothing."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session:
        world.log.clear()
        with pytest.raises(DeferredOperationError, match="Nothing was executed"):
            with session.deferred_operations(path):
                session.execute(statement())
        assert world.log.writes() == []


def test_commit_is_a_checkpoint_and_rollback_discards_after_it(world: Any, tmp_path: Path) -> None:
    """rollback() discards only what was recorded since the last commit() checkpoint."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path) as handle:
        kept = Task(name="kept")
        session.add(kept)
        session.commit()
        session.add(Task(name="discarded"))
        session.flush()
        assert handle.operations == 2
        session.rollback()
        assert handle.operations == 1
        kept.name = "kept and renamed"
    ops = operations(path)
    assert [(o["op"], o["values"].get("name")) for o in ops] == [
        ("insert", "kept"),
        ("update", "kept and renamed"),
    ]


def test_savepoint_rollback_discards_only_the_savepoint(world: Any, tmp_path: Path) -> None:
    """A rolled-back begin_nested() discards what was recorded inside it, nothing before."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        session.add(Task(name="before"))
        session.flush()
        savepoint = session.begin_nested()
        session.add(Task(name="inside"))
        session.flush()
        savepoint.rollback()
        with session.begin_nested():
            session.add(Task(name="released"))
    assert [o["values"]["name"] for o in operations(path)] == ["before", "released"]


def test_exit_seals_and_leaves_the_session_clean(world: Any, tmp_path: Path) -> None:
    """After the block the journal is sealed, nothing recorded is in the session, and DB values show."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session:
        with session.deferred_operations(path):
            task = session.scalars(select(Task)).one()
            task.name = "renamed in the journal"
            created = Task(name="created")
            session.add(created)
        assert not session.new and not session.dirty and not session.deleted
        assert created not in session
        assert created.name == "created", "recorded objects stay readable"
        assert task.name == "compositing", "loaded objects show the database's values"
        with pytest.raises(DeferredOperationError, match=str(path)):
            session.add(created)
        with Session(world.engine) as other, pytest.raises(DeferredOperationError):
            other.add(AssetVersion(asset=Asset(name="x"), task=created))
    with Journal(path) as journal:
        assert journal.sealed
        assert journal.header.operation_count == 2


def test_empty_block_gives_a_sealed_empty_journal(world: Any, tmp_path: Path) -> None:
    """An empty block seals a journal with zero operations."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        pass
    with Journal(path) as journal:
        journal.verify()
        assert journal.header.operation_count == 0


def test_exception_leaves_journal_unsealed_and_session_rolled_back(
    world: Any, tmp_path: Path
) -> None:
    """An exception leaving the block leaves an unsealed journal and a rolled-back session."""
    path = tmp_path / "ops.dbm"
    before = table_rows(world.engine)
    with world.sessions() as session:
        with pytest.raises(KeyError), session.deferred_operations(path):
            session.add(Task(name="lost"))
            session.flush()
            raise KeyError("boom")
        assert not session.new and not session.in_transaction()
        session.add(Task(name="after"))  # the session works normally again
        session.commit()
    with Journal(path) as journal:
        assert journal.state == "incomplete"
        with pytest.raises(JournalIncompleteError):
            journal.verify()
    after = table_rows(world.engine)
    assert len(after["task"]) == len(before["task"]) + 1


def test_existing_path_and_nesting_are_refused(world: Any, tmp_path: Path) -> None:
    """An existing file needs overwrite=True, and deferred blocks do not nest."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session:
        with session.deferred_operations(path):
            session.add(Task(name="first"))
            with pytest.raises(DeferredOperationError, match="do not nest"):
                with session.deferred_operations(tmp_path / "inner.dbm"):
                    pass
        before = path.read_bytes()
        with pytest.raises(FileExistsError), session.deferred_operations(path):
            pass
        assert path.read_bytes() == before
        with session.deferred_operations(path, overwrite=True):
            pass
    assert operations(path) == []


def test_second_session_on_the_same_path_is_locked_out(world: Any, tmp_path: Path) -> None:
    """Two sessions recording into one path: the second gets JournalLockedError."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as first, world.sessions() as second, first.deferred_operations(path):
        with pytest.raises(JournalLockedError):
            with second.deferred_operations(path, overwrite=True):
                pass


def test_pending_changes_before_the_block_are_refused(world: Any, tmp_path: Path) -> None:
    """Entering with pending changes raises instead of recording or losing them."""
    with world.sessions() as session:
        session.add(Task(name="pending"))
        with pytest.raises(DeferredOperationError, match="pending changes") as refused:
            with session.deferred_operations(tmp_path / "ops.dbm"):
                pass
        assert not (tmp_path / "ops.dbm").exists()
        # Its advice leads into the block: a flush alone would be refused again.
        assert "commit them" in str(refused.value)
        assert "flush" not in str(refused.value).split(";")[1]
        session.commit()
        with session.deferred_operations(tmp_path / "ops.dbm"):
            pass


def test_querying_by_a_placeholder_finds_the_new_object(world: Any, tmp_path: Path) -> None:
    """A query by the key of an object created in the block answers with that object."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        task = Task(name="new")
        session.add(task)
        session.flush()
        assert session.scalars(select(Task).where(Task.id == task.id)).all() == [task]


def test_a_placeholder_has_no_text_form(world: Any, tmp_path: Path) -> None:
    """A new object's key refuses to become text, which a direct run would give as the key."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        task = Task(name="new")
        session.add(task)
        session.flush()
        assert "placeholder #1.id" in repr(task.id)
        with pytest.raises(DeferredOperationError, match="assigned by the database"):
            str(task.id)
        with pytest.raises(DeferredOperationError, match="has no text form"):
            f"/tasks/{task.id}"


def test_a_placeholder_in_criteria_is_answered_or_refused_clearly(
    world: Any, tmp_path: Path
) -> None:
    """Criteria with a placeholder key: equality is answered over the block's rows (the
    placeholder never reaches the database as a value); an order comparison is refused."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        task = Task(name="new")
        session.add(task)
        session.flush()
        either = select(Task).where(or_(Task.id == task.id, Task.name == "x"))
        assert session.scalars(either).all() == [task]
        with pytest.raises(DeferredOperationError, match="a key the database assigns at replay"):
            session.scalars(select(Task).where(or_(Task.id > task.id, Task.name == "x"))).all()


def test_offline_recording_of_new_objects(tmp_path: Path) -> None:
    """A session whose database is unreachable still records new objects and their graph."""
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1")
    path = tmp_path / "offline.dbm"
    with JournalingSession(engine) as session, session.deferred_operations(path):
        asset = Asset(name="offline")
        version = AssetVersion(asset=asset, version=1)
        Component(name="main", version=version)
        session.add(asset)
        session.commit()
        version.is_published = True
    ops = operations(path)
    assert [o["op"] for o in ops] == ["insert", "insert", "insert", "update"]
    with Journal(path) as journal:
        assert journal.header.meta["alembic_revision"] is None
    engine.dispose()


def test_journal_carries_classes_schema_and_alembic_revision(world: Any, tmp_path: Path) -> None:
    """The header names the touched tables' schema and the database's Alembic revision."""
    with world.engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('abc123')"))
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        session.add(Task(name="t"))
    with Journal(path) as journal:
        meta = journal.header.meta
    assert meta["alembic_revision"] == "abc123"
    assert set(meta["schema"]) == {"task"}
    assert meta["schema"]["task"]["columns"]["name"]["type"] == "VARCHAR(100)"


def test_self_referential_tree(world: Any, tmp_path: Path) -> None:
    """A tree of new nodes records each node with a link to its parent's placeholder."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        root = Node(name="root")
        child = Node(name="child", parent=root)
        Node(name="grandchild", parent=child)
        session.add(root)
    ops = {o["values"]["name"]: o for o in operations(path)}
    assert "parent" not in ops["root"].get("links", {})
    assert ops["child"]["links"]["parent"] == ops["root"]["ref"]
    assert ops["grandchild"]["links"]["parent"] == ops["child"]["ref"]


def test_many_to_many_links_and_unlinks(world: Any, tmp_path: Path) -> None:
    """Many-to-many changes are recorded once, from one side, as added and removed targets."""
    with Session(world.engine) as plain:
        plain.add(Post(title="p", tags=[Tag(label="a"), Tag(label="b")]))
        plain.commit()
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        post = session.scalars(select(Post)).one()
        a = next(t for t in post.tags if t.label == "a")
        a_id = a.id
        post.tags.remove(a)
        post.tags.append(Tag(label="c"))
    ops = operations(path)
    insert_c = next(o for o in ops if o["op"] == "insert")
    update_post = next(o for o in ops if o["op"] == "update")
    assert update_post["class"].endswith(":Post")
    assert update_post["added"] == {"tags": [insert_c["ref"]]}
    assert update_post["removed"] == {"tags": [[a_id]]}
    assert len(ops) == 2


def test_insert_then_delete_in_one_flush_records_nothing(world: Any, tmp_path: Path) -> None:
    """An object added and expunged before any flush leaves nothing to replay."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        task = Task(name="ephemeral")
        session.add(task)
        session.expunge(task)
    assert operations(path) == []


def test_delete_then_reinsert_same_natural_key(world: Any, tmp_path: Path) -> None:
    """Deleting a row and inserting one with the same unique key records both, delete first."""
    with Session(world.engine) as plain:
        plain.add(Tag(label="unique"))
        plain.commit()
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        session.delete(session.scalars(select(Tag)).one())
        session.flush()
        session.add(Tag(label="unique"))
    ops = operations(path)
    assert [(o["op"], o.get("values", o.get("old"))["label"]) for o in ops] == [
        ("delete", "unique"),
        ("insert", "unique"),
    ]


def test_cascaded_delete_records_every_row(world: Any, tmp_path: Path) -> None:
    """Deleting a version records the deletes its delete-orphan cascade implies."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        version = session.scalars(select(AssetVersion)).one()
        session.delete(version)
    kinds = sorted((o["op"], o["class"].split(":")[1]) for o in operations(path))
    assert kinds == [
        ("delete", "AssetVersion"),
        ("delete", "Component"),
        ("delete", "ComponentLocation"),
    ]


def test_session_behaves_normally_outside_the_block(world: Any) -> None:
    """Outside a block a JournalingSession writes to the database like a plain Session."""
    with world.sessions() as session:
        session.add(Task(name="direct"))
        session.commit()
    assert any(row[1] == "direct" for row in table_rows(world.engine)["task"])


def test_recorded_objects_beyond_the_kept_rows_are_freed(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the rows a block keeps for its reads, recorded objects the program dropped are
    freed, graph and all, and a query over their tables is refused, not answered without them."""
    import gc
    import weakref

    monkeypatch.setattr(block_reads, "KEPT_ROWS", 40)
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        assets = []
        for batch in range(5):
            asset = Asset(name=f"asset {batch}")
            for i in range(100):
                version = AssetVersion(asset=asset, version=i)
                Component(name=f"c{i}", version=version)
            session.add(asset)
            session.commit()
            assets.append(weakref.ref(asset))
            del asset, version
        gc.collect()
        # The first batch holds the 40 kept rows (and what they refer to); no later one.
        assert [ref() is None for ref in assets] == [False, True, True, True, True]
        assert len(session.identity_map) <= 201
        with pytest.raises(DeferredOperationError, match="dropped rows the block wrote"):
            session.scalars(select(Component)).all()
        # Their states go too, by the next flush or read (a dict of the block's rows keyed
        # by state once kept every one alive: 2.7 GB for 1.1M recorded objects).
        gc.collect()
        states = sum(isinstance(o, InstanceState) for o in gc.get_objects())
        assert states <= 201 + 10


def test_rollback_restores_objects_recorded_before_the_checkpoint(
    world: Any, tmp_path: Path
) -> None:
    """After rollback() an object recorded before the checkpoint shows its checkpointed state."""
    with world.sessions() as session, session.deferred_operations(tmp_path / "ops.dbm"):
        asset = Asset(name="kept")
        version = AssetVersion(asset=asset, version=1)
        session.add(version)
        session.commit()
        version.comment = "discarded"
        session.flush()
        session.rollback()
        assert version.comment is None
        assert version.asset is asset
        assert isinstance(version.id, Placeholder)


def test_new_versioned_object_updated_after_its_flush(world: Any, tmp_path: Path) -> None:
    """A versioned object created in the block starts at version 1 and its update expects it."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        account = Account(code="NEW", balance=decimal.Decimal(1))
        session.add(account)
        session.flush()
        assert account.revision == 1
        account.balance = decimal.Decimal(2)
    insert_, update_ = operations(path)
    assert "revision" not in insert_["values"]
    assert update_["version"] == [1, 2]


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.execute(text("INSERT INTO task (name) VALUES ('raw')")),
        lambda s: s.bulk_insert_mappings(Task, [{"name": "legacy"}]),
        lambda s: s.connection().execute(text("DELETE FROM task")),
    ],
    ids=["text", "bulk-mappings", "connection"],
)
def test_writes_outside_the_unit_of_work_are_refused(
    world: Any, tmp_path: Path, write: Any
) -> None:
    """A write that bypasses flush and ORM statements raises before anything reaches the database."""
    before = table_rows(world.engine)
    with world.sessions() as session:
        world.log.clear()
        with pytest.raises(DeferredOperationError, match="Nothing was sent"):
            with session.deferred_operations(tmp_path / "ops.dbm"):
                session.scalars(select(Task)).all()  # a connection is open already
                write(session)
                session.commit()
        assert world.log.writes() == []
    assert table_rows(world.engine) == before


def test_many_to_many_change_through_the_unloaded_side(world: Any, tmp_path: Path) -> None:
    """A link added through one side is recorded even when the other side's collection is unloaded."""
    with Session(world.engine) as plain:
        plain.add_all([Post(title="p"), Tag(label="t")])
        plain.commit()
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        post = session.scalars(select(Post)).one()
        tag = session.scalars(select(Tag)).one()
        post_id = post.id
        tag.posts.append(post)
    [op] = operations(path)
    assert op["added"] == {"posts": [[post_id]]}


def test_a_refused_flush_leaves_the_session_ready_to_retry(world: Any, tmp_path: Path) -> None:
    """After a flush refused for an unrecordable value, fixing it and flushing records cleanly."""
    from sqlalchemy import func as sqlfunc

    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        good, bad = Task(name="good"), Task(name="bad")
        session.add_all([good, bad])
        bad.name = sqlfunc.upper("y")
        with pytest.raises(DeferredOperationError, match="SQL expression"):
            session.flush()
        assert good.id is None
        bad.name = "Y"
    ops = operations(path)
    assert [(o["ref"], o["values"], o.get("refs")) for o in ops] == [
        (1, {"name": "good"}, None),
        (2, {"name": "Y"}, None),
    ]


def test_relinking_records_the_old_foreign_key(world: Any, tmp_path: Path) -> None:
    """Changing a many-to-one records the foreign key's old value, for conflict detection."""
    with Session(world.engine) as plain:
        plain.add(Asset(name="other"))
        plain.commit()
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        version = session.scalars(select(AssetVersion)).one()
        other = session.scalars(select(Asset).where(Asset.name == "other")).one()
        old_id, other_id = version.asset_id, other.id
        version.asset = other
    [op] = operations(path)
    assert op["old"] == {"asset_id": old_id}
    assert op["links"] == {"asset": [other_id]}


def test_close_inside_the_block_discards_since_the_checkpoint(world: Any, tmp_path: Path) -> None:
    """close() inside the block drops what was recorded since the last commit, as a rollback."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        session.add(Task(name="kept"))
        session.commit()
        session.add(Task(name="discarded"))
        session.flush()
        session.close()
        session.add(Task(name="after close"))
    assert [o["values"]["name"] for o in operations(path)] == ["kept", "after close"]


def test_object_can_grow_after_a_rollback(world: Any, tmp_path: Path) -> None:
    """An object recorded before the checkpoint keeps usable collections after rollback()."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        asset = Asset(name="grows")
        session.add(asset)
        session.commit()
        asset.name = "renamed, then rolled back"
        session.flush()
        session.rollback()
        assert asset.name == "grows"
        asset.versions.append(AssetVersion(version=1))
    kinds = [(o["op"], o["class"].split(":")[1]) for o in operations(path)]
    assert kinds == [("insert", "Asset"), ("insert", "AssetVersion")]


def test_object_discarded_by_rollback_can_be_added_again(world: Any, tmp_path: Path) -> None:
    """An insert discarded by rollback() leaves a new object that can be added and recorded again."""
    path = tmp_path / "ops.dbm"
    with world.sessions() as session, session.deferred_operations(path):
        task = Task(name="again")
        session.add(task)
        session.flush()
        session.rollback()
        assert task.id is None
        session.add(task)
    [op] = operations(path)
    assert op["values"] == {"name": "again"}
    assert "refs" not in op


def test_statement_hook_is_attached_only_while_recording(tmp_path: Path, sqlite_url: str) -> None:
    """Outside a block a JournalingSession runs queries with no do_orm_execute listener.

    Any such listener makes SQLAlchemy prepare each statement twice; the recorder's is
    needed only to record ORM DML inside a block, also after a block ended by an error.
    """

    def hooked(session: JournalingSession) -> bool:
        return event.contains(session, "do_orm_execute", recording._do_orm_execute)

    engine = create_engine(sqlite_url)
    seed(engine)
    with make_sessions(engine)() as session:
        assert not hooked(session)
        with session.deferred_operations(tmp_path / "ok.dbm"):
            assert hooked(session)
            session.execute(update(Task).values(name="renamed"))
        assert not hooked(session)
        with pytest.raises(RuntimeError), session.deferred_operations(tmp_path / "failed.dbm"):
            assert hooked(session)
            raise RuntimeError("leaves the block")
        assert not hooked(session)
        assert session.scalars(select(Task.name)).all() == ["compositing"]
    engine.dispose()
