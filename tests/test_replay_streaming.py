"""Replay streams the journal: what it holds at once is bounded by a batch (SPEC §5.9).

Each test replays a journal of many batches and looks, from the ``progress`` callback
that runs after each batch, at the real objects alive in the process: the decoded
operations (found through the garbage collector), the session's identity map, and the
Python memory traced by ``tracemalloc``. A replay that read the whole journal first, kept
the objects of earlier batches, or kept more than a compact key per new object would
hold a number or size of them that grows with the journal instead.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, class_mapper, mapped_column

from orm_ext import JournalingSession, Placeholder
from orm_ext.replay_keys import Identities, NewKeys
from tests.conftest import Backend
from tests.models import Asset, AssetVersion, Base, Node
from tests.scenario import make_sessions

BATCHES = 30
BATCH = 60  # new objects per recorded flush
# Growth of traced memory per new object over the replay, in bytes. The compact key map
# costs about 12 per object (plus array headroom); a dict of dicts cost about 250.
BYTES_PER_OBJECT = 80


def count_operations() -> int:
    """The decoded operations (dicts of an operation's shape) alive in the process."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is dict and "op" in o and "class" in o)


@dataclass
class Watch:
    """What the progress callback saw after each batch."""

    session: Session
    # Decoded operations alive before the replay began (left by earlier tests).
    before: int = field(default_factory=count_operations)
    live_operations: list[int] = field(default_factory=list)
    identity_map: list[int] = field(default_factory=list)
    traced: list[tuple[int, int]] = field(default_factory=list)  # (done, bytes)

    def __call__(self, done: int, total: int) -> None:
        self.live_operations.append(count_operations() - self.before)
        self.identity_map.append(len(self.session.identity_map))
        self.traced.append((done, tracemalloc.get_traced_memory()[0]))


@pytest.fixture
def db(backend: Backend) -> tuple[Engine, Engine]:
    """Database A to record against and database B to replay into, with the test models."""
    a, b = backend.engine("a"), backend.engine("b")
    for engine in (a, b):
        Base.metadata.create_all(engine)
    return a, b


def record_assets(session: JournalingSession) -> None:
    """Plain inserts, one flush per batch: the bulk path replays them."""
    for batch in range(BATCHES):
        per = BATCH // 3
        for i in range(per):
            asset = Asset(name=f"asset-{batch}-{i}")
            asset.versions = [AssetVersion(version=v) for v in (1, 2)]
            session.add(asset)
        session.commit()


def record_tree(session: JournalingSession) -> None:
    """Chains of nodes, each batch's hung from the last node of the one before.

    A node's parent is new in the same flush (row-level order within one table), so the
    unit of work replays each batch, looking up the previous batch's last node by key.
    """
    parent: Node | None = None
    for batch in range(BATCHES):
        for i in range(BATCH):
            parent = Node(name=f"node-{batch}-{i}", parent=parent)
            session.add(parent)
        session.commit()


def replay_watched(
    db: tuple[Engine, Engine], tmp_path: Path, record: Callable[[JournalingSession], None]
) -> Watch:
    """Record with ``record`` against A, then replay into B watched after every batch."""
    a, b = db
    path = tmp_path / "ops.journal"
    with make_sessions(a)() as session, session.deferred_operations(path):
        record(session)
    tracemalloc.start()
    try:
        with make_sessions(b)() as session:
            watch = Watch(session)
            result = session.reconnect_and_commit(path, progress=watch)
    finally:
        tracemalloc.stop()
    assert result.applied and result.operations == BATCHES * BATCH
    assert len(watch.live_operations) == BATCHES
    return watch


def assert_bounded(watch: Watch) -> None:
    """At most two batches of operations and objects alive; compact growth."""
    # Two: the reader finds where a batch ends by decoding the next one's first record.
    assert max(watch.live_operations) <= 2 * BATCH, watch.live_operations
    assert max(watch.identity_map) <= 2 * BATCH, watch.identity_map
    # From the third batch on: caches of statements and plans are filled by then.
    (start, before), (end, after) = watch.traced[2], watch.traced[-1]
    assert after - before <= BYTES_PER_OBJECT * (end - start), (before, after)


@pytest.mark.parametrize("record", [record_assets, record_tree], ids=["bulk", "unit_of_work"])
def test_replay_holds_a_batch_at_a_time(
    db: tuple[Engine, Engine], tmp_path: Path, record: Callable[[JournalingSession], None]
) -> None:
    """Operations, session objects and memory held during replay stay within a batch or two."""
    watch = replay_watched(db, tmp_path, record)
    assert_bounded(watch)


def test_identities_of_a_streamed_replay_name_every_new_row(
    db: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """The compact key map still answers result.identities for every placeholder."""
    a, b = db
    path = tmp_path / "ops.journal"
    with make_sessions(a)() as session, session.deferred_operations(path):
        record_tree(session)
    with make_sessions(b)() as session:
        result = session.reconnect_and_commit(path)
        keys = {n.name: n.id for n in session.scalars(select(Node))}
    assert len(result.identities) == BATCHES * BATCH
    assert sorted(result.identities.values()) == sorted(keys.values())
    placeholders = list(result.identities)
    assert [p.ref for p in placeholders] == sorted(p.ref for p in placeholders)
    assert result.identities[placeholders[-1]] == keys[f"node-{BATCHES - 1}-{BATCH - 1}"]


class _Base(DeclarativeBase):
    """Models of this module only: keys that are not one integer."""


class Pair(_Base):
    __tablename__ = "streaming_pair"
    left: Mapped[int] = mapped_column(primary_key=True)
    right: Mapped[str] = mapped_column(String(10), primary_key=True)


class Named(_Base):
    __tablename__ = "streaming_named"
    code: Mapped[str] = mapped_column(String(10), primary_key=True)


def test_new_keys_hold_every_kind_of_key() -> None:
    """Integer, text and composite keys, and refs far beyond the journal, all come back."""
    keys = NewKeys(operations=10)
    asset, pair, named = (class_mapper(c) for c in (Asset, Pair, Named))
    keys.add(1, asset, (5,))
    keys.add(2, pair, (7, "x"))
    keys.add(3, named, ("abc",))
    keys.add(4, asset, (2**70,))  # no 64-bit int: kept aside
    keys.add(10**12, asset, (9,))  # a crafted ref: no array that long
    keys.add_ints([5, 6], asset, [11, -3])
    assert len(keys) == 7
    assert keys.key(1) == {"id": 5}
    assert keys.key(2) == {"left": 7, "right": "x"}
    assert keys.key(3) == {"code": "abc"}
    assert keys.key(4) == {"id": 2**70}
    assert keys.key(10**12) == {"id": 9}
    assert keys.values(6) == (-3,)
    assert keys.mapper(2) is pair and keys.mapper(10**12) is asset
    assert keys.key(7) is None and 7 not in keys and 0 not in keys
    assert list(keys.refs()) == [1, 2, 3, 4, 5, 6, 10**12]
    assert len(keys._classes) <= 2 * 10 + 4096 + 1  # the crafted ref grew nothing


def test_new_keys_replace_and_forget() -> None:
    """A ref noted again replaces its key; a forgotten one is gone (a savepoint rolled back)."""
    keys = NewKeys(operations=4)
    asset, named = class_mapper(Asset), class_mapper(Named)
    keys.add(1, named, ("a",))
    keys.add_ints([1, 2], asset, [10, 20])
    keys.add(2, named, ("b",))
    assert (keys.key(1), keys.key(2), len(keys)) == ({"id": 10}, {"code": "b"}, 2)
    keys.forget(1)
    keys.forget(2)
    keys.forget(3)
    assert (keys.key(1), keys.key(2), len(keys), list(keys.refs())) == (None, None, 0, [])
    identities = Identities(keys)
    keys.add(3, asset, (30,))
    assert dict(identities) == {Placeholder(3, "id"): 30}
    with pytest.raises(KeyError):
        identities[Placeholder(3, "code")]
