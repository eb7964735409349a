"""Reads inside a deferred block see the block's own writes (SPEC §3.11).

Every test runs one body twice from the same seeded rows (``reset`` of
tests/test_equivalence.py): directly with a plain ``Session`` on database A, and recorded
with ``deferred_operations`` on database B, whose journal is then replayed into B with
``reconnect_and_commit``. What the body returned must be the same in both runs, and A and
B must end with the same rows, compared by natural keys (``contents``). A query the block
cannot answer is expected to be refused in the recorded run and is left out of the direct
one. Returned values are compared by type too: the ORM evaluator's stand-in for a value it
could not read compares equal to anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, func, inspect, select, text, update
from sqlalchemy.orm import Session, joinedload, selectinload

from orm_ext import DeferredOperationError
from tests.conftest import Backend
from tests.models import (
    Account,
    Asset,
    AssetVersion,
    Component,
    ComponentLocation,
    Node,
    Post,
    Tag,
    Task,
)
from tests.scenario import StatementLog, make_sessions, replay, watch
from tests.test_equivalence import contents, reset


@dataclasses.dataclass
class Run:
    """What a body is given: its session, the SQL its engine sent, and which run it is."""

    session: Session
    log: StatementLog
    recording: bool
    # Results of answered_or_refused() in the direct run, which runs first.
    direct: list[Any]

    def refused(self, query: Callable[[Session], object], table: str) -> None:
        """Expect ``query`` refused over ``table`` when recording; leave it out directly."""
        if not self.recording:
            return
        with pytest.raises(DeferredOperationError, match="cannot be answered") as raised:
            query(self.session)
        assert f"table {table!r}" in str(raised.value)

    def answered(self, query: Callable[[Session], object]) -> None:
        """Expect ``query`` to give, when recording, what it gave in the direct run."""
        if not self.recording:
            self.direct.append(query(self.session))
            return
        expected = self.direct.pop(0)
        seen = query(self.session)
        assert seen == expected
        assert shape(seen) == shape(expected)

    def answered_or_refused(self, query: Callable[[Session], object], table: str) -> None:
        """Expect ``query`` to give the direct run's result, or to be refused over ``table``."""
        if not self.recording:
            self.direct.append(query(self.session))
            return
        expected = self.direct.pop(0)
        try:
            seen = query(self.session)
        except DeferredOperationError as refusal:
            seen = refusal
        if isinstance(seen, DeferredOperationError):
            assert f"table {table!r}" in str(seen)
        else:
            assert seen == expected
            assert shape(seen) == shape(expected)

    def sent(self, table: str) -> list[str]:
        """The SELECTs sent since the log was last cleared that name ``table``."""
        named = re.compile(rf"\b{table}\b", re.IGNORECASE)
        return [s for s in self.log.selects() if named.search(re.sub(r"[\"`]", "", s))]


Body = Callable[[Run], Any]


def shape(value: Any) -> Any:
    """``value`` with each leaf replaced by its type, lists, tuples and rows kept."""
    if isinstance(value, list | tuple | Row):
        return [shape(item) for item in value]
    return type(value)


def assert_same_as_direct(
    backend: Backend,
    tmp_path: Path,
    body: Body,
    *,
    seed: Callable[[Any], None] = reset,
    rows: Callable[[Any], Any] = contents,
) -> Any:
    """Run ``body`` directly on A and recorded-then-replayed on B, each seeded by ``seed``;
    what they read and the rows they leave (``rows``) must agree."""
    a, b = backend.engine("a"), backend.engine("b")
    seed(a)
    seed(b)
    direct: list[Any] = []
    with Session(a) as session:
        seen_directly = body(Run(session, watch(a), recording=False, direct=direct))
        session.commit()
    path = tmp_path / "block.dbm"
    log = watch(b)
    with make_sessions(b)() as session, session.deferred_operations(path):
        seen_recording = body(Run(session, log, recording=True, direct=direct))
    assert log.writes() == []
    assert direct == []  # every answered() of the direct run was compared
    assert replay(b, path).applied
    assert seen_recording == seen_directly
    assert shape(seen_recording) == shape(seen_directly)
    assert rows(b) == rows(a)
    return seen_recording


def one(session: Session, model: type[Any], **criteria: Any) -> Any:
    """The single row of ``model`` matching ``criteria``, or None."""
    return session.scalars(select(model).filter_by(**criteria)).one_or_none()


def names(session: Session, column: Any) -> list[Any]:
    """Every value of ``column``, in order."""
    return list(session.scalars(select(column).order_by(column)))


# -- 1. refresh ---------------------------------------------------------------------------


def test_refresh_after_commit_of_a_new_object(backend: Backend, tmp_path: Path) -> None:
    """add(), commit(), refresh() of a new object shows its values and client defaults."""

    def body(run: Run) -> list[Any]:
        session = run.session
        shown: list[Any] = []
        for name in ("grading", "roto"):  # the FastAPI pattern, twice in one block
            task = Task(name=name)
            session.add(task)
            session.commit()
            session.refresh(task)
            shown.append((task.id is not None, task.name))
        asset = one(session, Asset, name="bc0040_comp")
        version = AssetVersion(asset=asset, version=2, comment="new")
        session.add(version)
        session.commit()
        session.refresh(version)
        shown.append((version.version, version.is_published, version.comment, version.asset.name))
        shown.append(version.asset_id == asset.id)
        return shown

    assert_same_as_direct(backend, tmp_path, body)


def test_refresh_of_a_changed_object_after_commit(backend: Backend, tmp_path: Path) -> None:
    """refresh() and expire() of a loaded object changed before a commit show the change."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-1")
        account.balance = decimal.Decimal("12.50")
        account.note = "changed"
        session.commit()
        session.refresh(account)
        shown = [account.balance, account.note, account.revision]
        session.expire(account)
        shown += [account.balance, account.note, account.revision]
        return shown

    assert_same_as_direct(backend, tmp_path, body)


# -- 2. reloads and second writes after a checkpoint ---------------------------------------


def test_reload_after_checkpoint_and_dropped_reference(backend: Backend, tmp_path: Path) -> None:
    """A row changed, checkpointed, dropped, reloaded and changed again replays without conflict."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-1")
        key = account.id
        account.balance += decimal.Decimal("5.00")
        session.commit()
        del account
        gc.collect()
        again = one(session, Account, code="A-1")
        seen = [again.balance, again.revision, again.note]
        again.balance += 1
        session.commit()
        del again
        gc.collect()
        third = session.get(Account, key)
        assert third is not None
        seen += [third.balance, third.revision]
        third.note = "third write"
        session.commit()
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_counter_incremented_across_checkpoints(backend: Backend, tmp_path: Path) -> None:
    """counter += 1 on a row reloaded with get() after each checkpoint counts from the block."""

    def body(run: Run) -> list[int]:
        session = run.session
        version = session.scalars(
            select(AssetVersion).where(AssetVersion.comment == "wip").order_by(AssetVersion.version)
        ).first()
        assert version is not None
        key = version.id
        del version
        seen = []
        for _ in range(3):
            loaded = session.get(AssetVersion, key)
            assert loaded is not None
            loaded.version += 10
            session.commit()
            del loaded
            gc.collect()
            seen.append(session.get_one(AssetVersion, key).version)
        seen += names(session, AssetVersion.version)
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_delete_after_checkpoint_of_a_change(backend: Backend, tmp_path: Path) -> None:
    """A row changed, checkpointed, dropped, reloaded and deleted replays without conflict."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-2")
        key = account.id
        account.balance = decimal.Decimal("3.00")
        session.commit()
        del account
        gc.collect()
        again = session.get_one(Account, key)
        seen: list[Any] = [again.balance, again.revision]
        session.delete(again)
        session.commit()
        del again
        gc.collect()
        seen += [session.get(Account, key), one(session, Account, code="A-2")]
        seen.append(names(session, Account.code))
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_objects_deleted_before_a_checkpoint_are_detached_by_it(
    backend: Backend, tmp_path: Path
) -> None:
    """After commit(), a deleted object, of the database or created in the block, is
    detached, as a plain commit leaves it (it stayed "deleted" in the session)."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-2")
        task = Task(name="short-lived")
        session.add(task)
        session.flush()
        session.delete(account)
        session.delete(task)
        session.flush()
        seen = [(inspect(o).deleted, inspect(o).detached) for o in (account, task)]
        session.commit()
        seen += [(inspect(o).deleted, inspect(o).detached, o in session) for o in (account, task)]
        return seen

    assert assert_same_as_direct(backend, tmp_path, body)[2:] == [(False, True, False)] * 2


def test_new_object_dropped_after_checkpoint_is_found_again(
    backend: Backend, tmp_path: Path
) -> None:
    """An object created in the block and dropped after a checkpoint is found by query and get()."""

    def body(run: Run) -> list[Any]:
        session = run.session
        task = Task(name="grading")
        session.add(task)
        session.commit()
        key = inspect(task).identity
        del task
        gc.collect()
        found: Task = one(session, Task, name="grading")
        assert session.get(Task, key) is found
        found.name = "grading2"
        session.commit()
        del found
        gc.collect()
        return [session.get_one(Task, key).name, names(session, Task.name)]

    assert_same_as_direct(backend, tmp_path, body)


# -- 3. add, then query it back -------------------------------------------------------------


def get_or_create(session: Session, name: str) -> tuple[Asset, bool]:
    """The asset named ``name``, created (with a first version) when missing."""
    found = session.scalars(select(Asset).where(Asset.name == name)).one_or_none()
    if found is not None:
        return found, False
    created = Asset(name=name, versions=[AssetVersion(version=1)])
    session.add(created)
    return created, True


def test_get_or_create_finds_what_it_created(backend: Backend, tmp_path: Path) -> None:
    """get-or-create by a unique name creates a row once and finds it on every later call."""

    def body(run: Run) -> list[Any]:
        session = run.session
        seen: list[Any] = []
        first, created = get_or_create(session, "bc0060_fx")
        seen.append(created)
        second, created = get_or_create(session, "bc0060_fx")
        seen += [created, second is first]
        session.commit()
        del first, second
        gc.collect()
        third, created = get_or_create(session, "bc0060_fx")
        seen += [created, [v.version for v in third.versions]]
        existing, created = get_or_create(session, "bc0040_comp")
        seen += [created, existing.name]
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_new_row_found_by_every_query_form(backend: Backend, tmp_path: Path) -> None:
    """A new row is found by a non-key column, filter_by, and legacy Query first()/one()."""

    def body(run: Run) -> list[Any]:
        session = run.session
        tag = Tag(label="t4")
        session.add(tag)
        found = [
            session.scalars(select(Tag).where(Tag.label == "t4")).one(),
            session.scalars(select(Tag).filter_by(label="t4")).one(),
            session.query(Tag).filter(Tag.label == "t4").first(),
            session.query(Tag).filter(Tag.label == "t4").one(),
            session.query(Tag).filter_by(label="t4").one_or_none(),
            session.execute(select(Tag).where(Tag.label.in_(["t4", "none"]))).scalar_one(),
        ]
        seen: list[Any] = [all(obj is tag for obj in found)]
        seen.append(session.query(Tag).filter(Tag.label == "t5").first())
        seen.append([t.label for t in session.query(Tag).order_by(Tag.label)])
        seen.append(names(session, Tag.label))
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_order_by_and_limit_over_new_and_database_rows(backend: Backend, tmp_path: Path) -> None:
    """ORDER BY, LIMIT and OFFSET interleave the block's new rows with the database's."""

    def body(run: Run) -> list[Any]:
        session = run.session
        session.add_all([Task(name="animation"), Task(name="modeling"), Task(name="zz")])
        by_name = select(Task).order_by(Task.name)
        return [
            [t.name for t in session.scalars(by_name.limit(2))],
            [t.name for t in session.scalars(by_name.offset(1).limit(2))],
            [t.name for t in session.scalars(select(Task).order_by(Task.name.desc()).limit(3))],
            session.scalars(
                select(Task.name).where(Task.name.like("%ing")).order_by(Task.name)
            ).all(),
            session.execute(select(Task.name, Task.name).order_by(Task.name.desc())).all(),
            [t.name for t in session.scalars(select(Task).order_by(Task.id))],
            session.scalars(select(Task).order_by(Task.name).limit(1)).one().name,
        ]

    assert_same_as_direct(backend, tmp_path, body)


def test_order_by_text_follows_the_database_collation(backend: Backend, tmp_path: Path) -> None:
    """Text sorts as the database sorts it: without regard to case on MySQL/MariaDB."""

    def body(run: Run) -> list[Any]:
        session = run.session
        session.add_all([Task(name="L2"), Task(name="compositing"), Task(name="Zeta")])
        return [
            session.scalars(select(Task.name).order_by(Task.name)).all(),
            session.scalars(select(Task.name).order_by(Task.name.desc()).limit(2)).all(),
        ]

    assert_same_as_direct(backend, tmp_path, body)


def test_lazy_load_of_a_collection_after_expire_all(backend: Backend, tmp_path: Path) -> None:
    """A one-to-many collection lazy-loaded after expire_all() holds the block's new members."""

    def body(run: Run) -> list[Any]:
        session = run.session
        asset = one(session, Asset, name="bc0050_light")
        first = one(session, AssetVersion, asset_id=asset.id, version=1)
        session.add(AssetVersion(asset_id=asset.id, version=3, comment="added by key"))
        session.add(Component(name="beauty1_alt", version_id=first.id))
        session.flush()
        session.expire_all()
        seen = [
            [(v.version, v.comment) for v in asset.versions],
            sorted(c.name for c in first.components),
        ]
        session.commit()
        session.expire_all()
        seen.append([v.version for v in asset.versions])
        seen.append(sorted(c.name for v in asset.versions for c in v.components))
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_selectinload_includes_the_block_rows(backend: Backend, tmp_path: Path) -> None:
    """selectinload() of collections loads the block's new members with the database's."""

    def body(run: Run) -> list[Any]:
        session = run.session
        light = one(session, Asset, name="bc0050_light")
        version = AssetVersion(asset=light, version=3)
        Component(name="beauty3", version=version)
        session.add(version)
        session.add(Asset(name="bc0070_new", versions=[AssetVersion(version=1)]))
        session.commit()
        session.expire_all()
        assets = session.scalars(
            select(Asset)
            .order_by(Asset.name)
            .options(selectinload(Asset.versions).selectinload(AssetVersion.components))
        ).all()
        return [
            (
                asset.name,
                [(v.version, sorted(c.name for c in v.components)) for v in asset.versions],
            )
            for asset in assets
        ]

    assert_same_as_direct(backend, tmp_path, body)


def test_lazy_load_of_a_new_parent_finds_children_linked_by_key(
    backend: Backend, tmp_path: Path
) -> None:
    """A new parent's collection lazy-loads rows whose foreign key was set to its key."""

    def body(run: Run) -> list[list[str]]:
        session = run.session
        asset = one(session, Asset, name="bc0040_comp")
        version = AssetVersion(asset_id=asset.id, version=2)
        session.add(version)
        session.flush()
        session.add(Component(name="linked by key", version_id=version.id))
        one(session, Component, name="beauty2").version_id = version.id
        session.flush()
        seen = [sorted(c.name for c in version.components)]
        session.commit()
        session.expire_all()
        seen.append(sorted(c.name for c in version.components))
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_joinedload_of_a_written_collection(backend: Backend, tmp_path: Path) -> None:
    """joinedload() of a collection the block added to shows the new member, or is refused."""

    def body(run: Run) -> list[str]:
        session = run.session
        version = one(session, AssetVersion, comment="wip", version=1)
        session.add(Component(name="extra", version=version))
        session.commit()
        session.expire_all()
        run.answered_or_refused(
            lambda s: [
                (v.version, sorted(c.name for c in v.components))
                for v in s.scalars(
                    select(AssetVersion)
                    .where(AssetVersion.comment == "wip")
                    .order_by(AssetVersion.version)
                    .options(joinedload(AssetVersion.components))
                ).unique()
            ],
            "component",
        )
        return sorted(c.name for c in version.components)

    assert_same_as_direct(backend, tmp_path, body)


def test_deferred_column_over_a_written_table(backend: Backend, tmp_path: Path) -> None:
    """A deferred column selected or ordered by over a written table reads each row's value."""

    def body(run: Run) -> list[str]:
        session = run.session
        one(session, Account, code="A-2").note = "second"
        session.add(Account(code="A-3", note="third"))
        session.flush()
        run.answered_or_refused(
            lambda s: s.scalars(select(Account.note).order_by(Account.code)).all(), "account"
        )
        run.answered_or_refused(
            lambda s: [a.code for a in s.scalars(select(Account).order_by(Account.note.desc()))],
            "account",
        )
        return names(session, Account.code)

    assert_same_as_direct(backend, tmp_path, body)


# -- 4. deleted rows ------------------------------------------------------------------------


def test_deleted_rows_absent_from_queries_and_get(backend: Backend, tmp_path: Path) -> None:
    """Rows deleted in the block, loaded or new, are absent from later queries and get()."""

    def body(run: Run) -> list[Any]:
        session = run.session
        location = one(session, ComponentLocation, resource_identifier="/light/v1/beauty.exr")
        location_key = location.id
        component = location.component
        session.delete(location)
        node = one(session, Node, name="right")
        node_key = node.id
        session.delete(node)
        tag = Tag(label="short-lived")
        session.add(tag)
        session.flush()
        tag_key = inspect(tag).identity
        session.delete(tag)
        session.flush()
        seen = [
            one(session, ComponentLocation, resource_identifier="/light/v1/beauty.exr"),
            session.get(ComponentLocation, location_key),
            [loc.resource_identifier for loc in component.locations],
            names(session, ComponentLocation.resource_identifier),
            one(session, Tag, label="short-lived"),
            session.get(Tag, tag_key),
            names(session, Tag.label),
        ]
        session.commit()
        del location, node, tag
        gc.collect()
        seen += [
            session.get(Node, node_key),
            names(session, Node.name),
            session.query(Node).filter(Node.name == "right").first(),
        ]
        return seen

    assert_same_as_direct(backend, tmp_path, body)


# -- 5. updated values ----------------------------------------------------------------------


def test_updated_values_found_by_new_value_only(backend: Backend, tmp_path: Path) -> None:
    """A changed value matches queries by its new value and no longer by its old one."""

    def body(run: Run) -> list[Any]:
        session = run.session
        task = one(session, Task, name="lighting")
        task.name = "relighting"
        account = one(session, Account, code="A-2")
        account.balance = decimal.Decimal("100.00")
        new = Tag(label="t9")
        session.add(new)
        session.flush()
        new.label = "t10"
        seen = [
            one(session, Task, name="relighting") is task,
            one(session, Task, name="lighting"),
            session.scalars(
                select(Task.name)
                .where(Task.name.in_(["lighting", "relighting", "compositing"]))
                .order_by(Task.name)
            ).all(),
            names(session, Task.name),
            session.scalars(select(Account.code).where(Account.balance > 50)).all(),
            session.scalars(select(Account.code).where(Account.balance == 0)).all(),
            one(session, Tag, label="t9"),
            one(session, Tag, label="t10") is new,
        ]
        session.commit()
        seen += [
            names(session, Task.name),
            [tuple(row) for row in session.query(Account.code).filter(Account.balance > 50)],
        ]
        return seen

    assert_same_as_direct(backend, tmp_path, body)


def test_changed_foreign_key_moves_a_row_between_collections(
    backend: Backend, tmp_path: Path
) -> None:
    """A row whose foreign key changed leaves the old parent's collection and joins the new one's."""

    def body(run: Run) -> list[Any]:
        session = run.session
        first, second = session.scalars(
            select(AssetVersion).where(AssetVersion.comment == "wip").order_by(AssetVersion.version)
        ).all()
        component = one(session, Component, name="beauty1")
        component.version_id = second.id
        session.commit()
        session.expire_all()
        return [
            sorted(c.name for c in first.components),
            sorted(c.name for c in second.components),
            session.scalars(
                select(Component.name)
                .where(Component.version_id == second.id)
                .order_by(Component.name)
            ).all(),
        ]

    assert_same_as_direct(backend, tmp_path, body)


# -- 6. refusals ----------------------------------------------------------------------------

# Queries over written tables that Python cannot evaluate (aggregates, joins, EXISTS): the
# database answers them with the block's rows laid over its own (orm_ext/block_overlay.py).
ANSWERED: dict[str, Callable[[Session], object]] = {
    "aggregate": lambda s: s.scalar(select(func.count()).select_from(Task)),
    "join": lambda s: sorted(
        s.execute(select(Task.name, AssetVersion.version).join(AssetVersion.task)).all()
    ),
    "join from an unwritten table": lambda s: sorted(
        a.name
        for a in s.scalars(select(Asset).join(Asset.versions).where(AssetVersion.version > 1))
    ),
    "exists": lambda s: sorted(
        a.name for a in s.scalars(select(Asset).where(Asset.versions.any(AssetVersion.version > 1)))
    ),
    "count of keys through a join": lambda s: tuple(
        s.execute(
            select(func.count(Task.id), func.count(AssetVersion.id)).outerjoin(
                AssetVersion, AssetVersion.task_id == Task.id
            )
        ).one()
    ),
    # A new row's key sorts after the database's, in the order the block created the rows.
    "order by a new key": lambda s: s.execute(
        select(Task.name, AssetVersion.version)
        .outerjoin(AssetVersion, AssetVersion.task_id == Task.id)
        .order_by(Task.id.desc(), AssetVersion.version)
    ).all(),
    "rows without a match": lambda s: sorted(
        t.name
        for t in s.scalars(
            select(Task)
            .outerjoin(AssetVersion, AssetVersion.task_id == Task.id)
            .where(AssetVersion.id.is_(None))
        )
    ),
}


@pytest.mark.parametrize("kind", list(ANSWERED))
def test_query_the_evaluator_cannot_answer_is_answered_by_the_database(
    backend: Backend, tmp_path: Path, kind: str
) -> None:
    """A join, aggregate or EXISTS over written tables gives the direct run's answer."""
    query = ANSWERED[kind]

    def body(run: Run) -> list[Any]:
        session = run.session
        one(session, Task, name="lighting").name = "relit"
        session.add(Task(name="new"))
        version = one(session, AssetVersion, comment="wip", version=2)
        version.comment = "changed"
        session.flush()
        run.answered(query)
        session.add(Task(name="after"))
        newer = one(session, Task, name="new")
        newer.name = "newer"
        session.add(AssetVersion(asset=version.asset, task=newer, version=3, comment="third"))
        session.delete(one(session, AssetVersion, comment="wip", version=1))
        session.commit()
        run.answered(query)
        return [names(session, Task.name), names(session, AssetVersion.comment)]

    assert_same_as_direct(backend, tmp_path, body)


def test_joins_through_a_link_table_the_block_changed(backend: Backend, tmp_path: Path) -> None:
    """Joins and counts through a many-to-many link table show the block's links: added,
    removed, those of new objects, those a deleted object took with it, and none that a
    rollback discarded."""

    def tagged(session: Session) -> list[tuple[str, str]]:
        rows = session.execute(select(Post.title, Tag.label).join(Post.tags)).all()
        return sorted((title, label) for title, label in rows)

    def counts(session: Session) -> list[tuple[str, int]]:
        statement = (
            select(Tag.label, func.count(Post.id))
            .outerjoin(Tag.posts)
            .group_by(Tag.label)
            .order_by(Tag.label)
        )
        return [(label, n) for label, n in session.execute(statement)]

    def body(run: Run) -> list[Any]:
        session = run.session
        p1, p2 = one(session, Post, title="p1"), one(session, Post, title="p2")
        t1, t3 = one(session, Tag, label="t1"), one(session, Tag, label="t3")
        p2.tags.append(t3)
        p1.tags.remove(t1)
        session.add(Post(title="p3", tags=[t1, Tag(label="t4")]))
        session.flush()
        run.answered(tagged)
        run.answered(counts)
        session.commit()
        p2.tags.append(t1)
        session.flush()
        session.rollback()  # takes the p2-t1 link back
        session.delete(one(session, Post, title="p3"))
        session.flush()
        run.answered(tagged)
        run.answered(counts)
        # Sorted by the posts' keys, a new one's included: as after replay.
        run.answered(
            lambda s: s.scalars(select(Post.title).join(Post.tags).order_by(Post.id)).all()
        )
        return [tagged(session)]

    assert_same_as_direct(backend, tmp_path, body)


# What each query reads, and the written table its refusal names (the body writes task and
# asset_version, never asset).
REFUSED: dict[str, tuple[str, Callable[[Session], object]]] = {
    # Whether the new task's key, assigned at replay, is above 1 is not known yet.
    "order comparison of a new key": (
        "task",
        lambda s: s.execute(
            select(Task.name, AssetVersion.version).join(AssetVersion.task).where(Task.id > 1)
        ).all(),
    ),
    "function of a new key": (
        "task",
        lambda s: s.scalar(
            select(func.max(Task.id)).join(AssetVersion, AssetVersion.task_id == Task.id)
        ),
    ),
    "text": ("task", lambda s: s.execute(text("select name from task")).all()),
    "connection": ("task", lambda s: s.connection().execute(select(Task.__table__)).all()),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_unanswerable_query_is_refused_and_block_goes_on(
    backend: Backend, tmp_path: Path, kind: str
) -> None:
    """A query the block cannot answer is refused; the block stays usable and keeps its writes."""
    table, query = REFUSED[kind]

    def body(run: Run) -> list[Any]:
        session = run.session
        one(session, Task, name="lighting").name = "relit"
        session.add(Task(name="new"))
        version = one(session, AssetVersion, comment="wip", version=2)
        version.comment = "changed"
        session.flush()
        run.refused(query, table)
        session.add(Task(name="after"))
        one(session, Task, name="new").name = "newer"
        session.commit()
        run.refused(query, table)
        return [names(session, Task.name), names(session, AssetVersion.comment)]

    assert_same_as_direct(backend, tmp_path, body)


def test_refusal_after_rollback_of_the_only_write_is_lifted(
    backend: Backend, tmp_path: Path
) -> None:
    """Once a rollback discards the only write to a table, what was refused is answered again."""

    def body(run: Run) -> list[Any]:
        session = run.session
        session.add(Task(name="discarded"))
        session.flush()
        # The new row's key exists only at replay: its largest key is refused.
        run.refused(lambda s: s.scalar(select(func.max(Task.id))), "task")
        session.rollback()
        return [session.scalar(select(func.max(Task.id))), names(session, Task.name)]

    assert_same_as_direct(backend, tmp_path, body)


def test_statement_over_a_partly_loaded_object_then_its_reload_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    """An update() whose criteria test a column it also sets, then the load of a deferred
    column it set: the object's loaded values already show the statement, so its criteria
    cannot be evaluated again on them (it would no longer match)."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-1")  # its deferred note is not loaded
        session.execute(
            update(Account)
            .where(Account.balance == account.balance)
            .values(balance=decimal.Decimal("99.00"), note="changed")
        )
        run.refused(lambda _: account.note, "account")
        return [account.balance]

    assert_same_as_direct(backend, tmp_path, body)


def test_unsynchronized_statement_then_reload_of_an_expired_attribute_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    """With synchronize_session=False the loaded values keep what the statement changed:
    reloading one expired attribute cannot apply the statement to them alone."""

    def body(run: Run) -> None:
        session = run.session
        account = one(session, Account, code="A-1")
        session.expire(account, ["balance"])
        session.execute(
            update(Account)
            .where(Account.code == "A-1")
            .values(balance=decimal.Decimal("6.00"), opened=None),
            execution_options={"synchronize_session": False},
        )
        run.refused(lambda _: account.balance, "account")

    assert_same_as_direct(backend, tmp_path, body)


def test_unsynchronized_statement_then_a_flush_of_the_object_hides_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    """After an update() with synchronize_session=False the object shows its old value, as
    in a plain session; flushed for another change and reloaded, the column the statement
    set is refused (it read the old value, hiding the statement), the others read."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-1")
        session.execute(
            update(Account).where(Account.code == "A-1").values(balance=decimal.Decimal("6.00")),
            execution_options={"synchronize_session": False},
        )
        seen = [account.balance]
        account.opened = dt.date(2024, 1, 2)
        session.flush()
        session.commit()
        if run.recording:
            with pytest.raises(DeferredOperationError, match=r"Account\.balance .* update\(\)"):
                _ = account.balance
        return [*seen, account.code, account.opened]

    assert_same_as_direct(backend, tmp_path, body)


def test_statement_on_an_object_expired_by_a_checkpoint_shows_on_reload(
    backend: Backend, tmp_path: Path
) -> None:
    """An object commit() expired is passed over by a statement's synchronization; loading
    it again shows what the statement did, as a plain session's reload does."""

    def body(run: Run) -> list[Any]:
        session = run.session
        account = one(session, Account, code="A-1")
        other = one(session, Account, code="A-2")
        session.commit()
        session.execute(
            update(Account).where(Account.code == "A-1").values(balance=decimal.Decimal("7.00"))
        )
        session.execute(
            update(Account).where(Account.code == "A-2").values(balance=decimal.Decimal("8.00")),
            execution_options={"synchronize_session": False},
        )
        return [account.balance, account.code, other.balance, other.code]

    assert_same_as_direct(backend, tmp_path, body)


def test_statement_comparing_a_new_objects_key_by_order_is_refused_unrecorded(
    backend: Backend, tmp_path: Path
) -> None:
    """update() whose criteria compare keys by order, with a new object in the session: its
    effect on that object is only known at replay, so it is refused and left out of the
    journal (it crashed with a TypeError, already recorded); unsynchronized, it records."""

    def body(run: Run) -> None:
        session = run.session
        session.add(Task(name="new"))
        session.flush()
        statement = update(Task).where(Task.id > 0).values(name="renamed")
        if run.recording:
            with pytest.raises(DeferredOperationError, match=r"cannot record update\(\) of Task"):
                session.execute(statement)
        session.execute(statement, execution_options={"synchronize_session": False})
        session.expire_all()

    assert_same_as_direct(backend, tmp_path, body)


def test_query_under_no_autoflush_matches_the_flushed_row(backend: Backend, tmp_path: Path) -> None:
    """Under no_autoflush a query matches what the database holds after the last flush, not
    an object's change made since (it matched the unflushed value before)."""

    def body(run: Run) -> list[Any]:
        session = run.session
        task = Task(name="first")
        session.add(task)
        session.flush()
        with session.no_autoflush:
            task.name = "second"
            run.answered(lambda s: s.scalars(select(Task.id).where(Task.name == "second")).all())
            run.answered(
                lambda s: [t.name for t in s.scalars(select(Task).where(Task.name == "first"))]
            )
        return names(session, Task.name)

    assert_same_as_direct(backend, tmp_path, body)


# -- 7. unwritten tables --------------------------------------------------------------------


def test_queries_over_unwritten_tables_go_to_the_database(backend: Backend, tmp_path: Path) -> None:
    """Queries over tables the block has not written are sent to the database, any form."""

    def body(run: Run) -> list[Any]:
        session = run.session
        session.add(Task(name="new"))
        session.flush()
        run.log.clear()
        seen = [
            names(session, Tag.label),
            session.scalar(select(func.count()).select_from(Tag)),
            session.execute(text("select label from tag order by label")).scalars().all(),
            sorted(
                tuple(row)
                for row in session.execute(
                    select(Asset.name, AssetVersion.version).join(AssetVersion.asset)
                )
            ),
            session.connection()
            .execute(select(Asset.__table__.c.name).order_by(Asset.__table__.c.name))
            .scalars()
            .all(),
        ]
        assert len(run.sent("tag")) == 3
        assert len(run.sent("asset")) == 2
        # A written table's query still asks the database for the rows it has.
        run.log.clear()
        seen.append(names(session, Task.name))
        assert len(run.sent("task")) == 1
        return seen

    assert_same_as_direct(backend, tmp_path, body)
