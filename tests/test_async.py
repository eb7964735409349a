"""The three features through asyncio: ``AsyncJournalingSession`` (SPEC §8).

Each test drives its coroutine with ``asyncio.run`` and creates and disposes its async
engines inside it. Databases are seeded and inspected through the backend fixture's sync
engines; everything under test goes through an async driver: aiosqlite for SQLite,
asyncpg for PostgreSQL (the two SPEC §8 names) and aiomysql for MariaDB (all three are
in the test extras).
"""

from __future__ import annotations

import asyncio
import decimal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.util import greenlet_spawn

from journal import Journal, JournalIncompleteError, JournalWriter
from orm_ext import (
    AsyncJournalingSession,
    DeferredOperationError,
    JournalingSession,
    ReplayConflictError,
)
from orm_ext.recording import journal_io
from tests.conftest import Backend
from tests.models import Account, Asset, AssetVersion, Component, ComponentLocation, Task
from tests.scenario import make_sessions, record_seed_scenario, seed, table_rows, watch

T = TypeVar("T")

ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mariadb": "mysql+aiomysql",
}


@dataclass
class Databases:
    """Seeded databases A and B: sync engines to set up and inspect, async URLs to test."""

    a: Engine
    b: Engine
    url_a: str
    url_b: str


@pytest.fixture
def dbs(backend: Backend) -> Databases:
    """Databases A and B of ``backend``, both seeded with the scenario's asset."""
    driver = ASYNC_DRIVERS[backend.name]

    def async_url(url: str) -> str:
        return sa.make_url(url).set(drivername=driver).render_as_string(hide_password=False)

    a, b = backend.engine("a"), backend.engine("b")
    seed(a)
    seed(b)
    return Databases(a, b, async_url(backend.url), async_url(backend.url_b))


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


@asynccontextmanager
async def engine_on(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def record_seed_scenario_async(session: AsyncJournalingSession) -> AssetVersion:
    """The seed scenario's block written against the async API: eager loads, awaited flush."""
    asset = (
        await session.scalars(
            select(Asset)
            .where(Asset.name == "bc0040_comp")
            .options(selectinload(Asset.versions).selectinload(AssetVersion.task))
        )
    ).one()
    previous = asset.versions[-1]
    version = AssetVersion(asset=asset, task=previous.task, version=previous.version + 1)
    component = Component(name="main", version=version)
    ComponentLocation(resource_identifier="/path/to/final/file", component=component)
    session.add(version)
    await session.flush()
    version.is_published = True
    return version


def operations(path: Path) -> list[dict[str, Any]]:
    with Journal(path) as journal:
        journal.verify()
        return [op for _, op in journal.operations()]


def balances(engine: Engine) -> dict[str, Any]:
    with Session(engine) as session:
        return {a.code: a.balance for a in session.scalars(select(Account))}


# -- recording ------------------------------------------------------------------------------


def test_seed_scenario_records_instead_of_writing(dbs: Databases, tmp_path: Path) -> None:
    """The async seed scenario sends no INSERT/UPDATE/DELETE and journals exactly its operations."""
    before = table_rows(dbs.a)
    path = tmp_path / "ops.dbm"

    async def main() -> Any:
        async with engine_on(dbs.url_a) as engine:
            log = watch(engine.sync_engine)
            async with AsyncJournalingSession(engine) as session:
                async with session.deferred_operations(path) as handle:
                    await record_seed_scenario_async(session)
            return log, handle

    log, handle = run(main)
    assert log.writes() == []
    assert log.selects(), "the query inside the block still reads the database"
    assert handle.operations == 4 and handle.path == path
    assert table_rows(dbs.a) == before
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
    assert location["values"] == {"resource_identifier": "/path/to/final/file"}
    assert publish["target"] == version["ref"]
    assert (publish["values"], publish["old"]) == ({"is_published": True}, {"is_published": False})


def test_exception_leaves_journal_unsealed_and_session_rolled_back(
    dbs: Databases, tmp_path: Path
) -> None:
    """An exception leaving the async block propagates, leaves the journal unsealed and rolls back."""
    path = tmp_path / "ops.dbm"
    before = table_rows(dbs.a)
    boom = KeyError("boom")

    async def main() -> None:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            with pytest.raises(KeyError) as caught:
                async with session.deferred_operations(path):
                    session.add(Task(name="lost"))
                    await session.flush()
                    raise boom
            assert caught.value is boom
            assert not session.new and not session.in_transaction()
            session.add(Task(name="after"))  # the session works normally again
            await session.commit()

    run(main)
    with Journal(path) as journal:
        assert journal.state == "incomplete"
        with pytest.raises(JournalIncompleteError):
            journal.verify()
    names = [row[1] for row in table_rows(dbs.a)["task"]]
    assert "lost" not in names and "after" in names
    assert len(names) == len(before["task"]) + 1


def test_misuse_raises_as_in_the_sync_api(dbs: Databases, tmp_path: Path) -> None:
    """Nesting, replaying inside a block and an existing path raise the sync API's errors."""
    path = tmp_path / "ops.dbm"

    async def main() -> None:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            async with session.deferred_operations(path):
                with pytest.raises(DeferredOperationError, match="do not nest"):
                    async with session.deferred_operations(tmp_path / "inner.dbm"):
                        pass
                with pytest.raises(DeferredOperationError, match="inside deferred_operations"):
                    await session.reconnect_and_commit(tmp_path / "inner.dbm")
            with pytest.raises(FileExistsError):
                async with session.deferred_operations(path):
                    pass
            async with session.deferred_operations(path, overwrite=True) as handle:
                pass
            assert handle.operations == 0

    run(main)
    assert operations(path) == []
    assert not (tmp_path / "inner.dbm").exists()


def test_sync_session_class_must_be_a_journaling_session() -> None:
    """A sync_session_class that is not a JournalingSession is refused at construction."""
    with pytest.raises(TypeError, match="JournalingSession"):
        AsyncJournalingSession(sync_session_class=Session)
    session = AsyncJournalingSession(journal_key="k")
    assert isinstance(session.sync_session, JournalingSession)
    assert session.sync_session.journal_key == "k"


# -- replay ---------------------------------------------------------------------------------


def test_replay_applies_exactly_once(dbs: Databases, tmp_path: Path) -> None:
    """An async replay applies the journal once; the second returns applied=False."""
    path = tmp_path / "ops.dbm"

    async def main() -> Any:
        async with engine_on(dbs.url_b) as engine:
            sessions = async_sessionmaker(engine, class_=AsyncJournalingSession)
            async with sessions() as session:
                async with session.deferred_operations(path):
                    created = await record_seed_scenario_async(session)
            async with sessions() as session:
                first = await session.reconnect_and_commit(path)
            once = await asyncio.to_thread(table_rows, dbs.b)
            async with sessions() as session:
                second = await session.reconnect_and_commit(path)
            return created, first, once, second

    created, first, once, second = run(main)
    assert first.applied and first.operations == 4
    assert sorted(first.identities.values()) == [2, 2, 2]
    assert first.identities[created.id] == 2
    assert second.applied is False and second.journal_id == first.journal_id
    assert table_rows(dbs.b) == once
    with Session(dbs.b) as session:
        version = session.get(AssetVersion, first.identities[created.id])
        assert version is not None and version.is_published and version.version == 2


def test_conflict_raises_and_applies_nothing(dbs: Databases, tmp_path: Path) -> None:
    """A row changed since the recording makes the async replay raise ReplayConflictError."""
    with Session(dbs.b) as session:
        session.add_all([Account(code="A-1", balance=10), Account(code="A-2", balance=20)])
        session.commit()
    path = tmp_path / "ops.dbm"

    async def record() -> None:
        async with engine_on(dbs.url_b) as engine, AsyncJournalingSession(engine) as session:
            async with session.deferred_operations(path):
                accounts = (await session.scalars(select(Account).order_by(Account.code))).all()
                accounts[0].balance = decimal.Decimal("11.00")
                await session.delete(accounts[1])

    run(record)
    with Session(dbs.b) as session:  # someone else changes both rows meanwhile
        for account in session.scalars(select(Account)):
            account.balance += 100
        session.commit()
    before = balances(dbs.b)

    async def replay(**kw: Any) -> Any:
        async with engine_on(dbs.url_b) as engine, AsyncJournalingSession(engine) as session:
            return await session.reconnect_and_commit(path, **kw)

    with pytest.raises(ReplayConflictError) as caught:
        run(replay)
    assert caught.value.table == "account" and caught.value.sequence == 1
    assert caught.value.expected["balance"] == decimal.Decimal("10.00")
    assert caught.value.actual is not None
    assert caught.value.actual["balance"] == decimal.Decimal("110.00")
    assert balances(dbs.b) == before
    skipped = run(lambda: replay(on_conflict="skip"))
    assert skipped.applied and [c.sequence for c in skipped.conflicts] == [1, 2]
    assert balances(dbs.b) == before


def test_async_recording_replays_with_the_sync_api(dbs: Databases, tmp_path: Path) -> None:
    """A journal recorded through the async API is applied by JournalingSession, exactly once."""
    path = tmp_path / "ops.dbm"

    async def record() -> None:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            async with session.deferred_operations(path):
                await record_seed_scenario_async(session)

    run(record)
    with make_sessions(dbs.b)() as session:
        assert session.reconnect_and_commit(path).applied
        assert session.reconnect_and_commit(path).applied is False
    with make_sessions(dbs.a)() as session:
        record_seed_scenario(session)
        session.commit()
    assert table_rows(dbs.a) == table_rows(dbs.b)


def test_sync_recording_replays_with_the_async_api(dbs: Databases, tmp_path: Path) -> None:
    """A journal recorded by JournalingSession is applied by AsyncJournalingSession, exactly once."""
    path = tmp_path / "ops.dbm"
    with make_sessions(dbs.a)() as session, session.deferred_operations(path):
        record_seed_scenario(session)

    async def replay() -> tuple[bool, bool]:
        async with engine_on(dbs.url_b) as engine, AsyncJournalingSession(engine) as session:
            first = await session.reconnect_and_commit(path)
            second = await session.reconnect_and_commit(path)
            return first.applied, second.applied

    assert run(replay) == (True, False)
    with make_sessions(dbs.a)() as session:
        record_seed_scenario(session)
        session.commit()
    assert table_rows(dbs.a) == table_rows(dbs.b)


def test_sync_code_records_through_run_sync(dbs: Databases, tmp_path: Path) -> None:
    """Unchanged sync recording code, lazy loads included, records through run_sync."""
    path = tmp_path / "ops.dbm"

    async def main() -> int:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            async with session.deferred_operations(path) as handle:
                await session.run_sync(record_seed_scenario)
            return handle.operations

    assert run(main) == 4
    assert [o["op"] for o in operations(path)] == ["insert", "insert", "insert", "update"]


# -- query memo -----------------------------------------------------------------------------


def test_memo_hit_and_invalidation(dbs: Databases) -> None:
    """An identical async query is a hit with the same instances; a flush of its table invalidates."""

    async def main() -> None:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            log = watch(engine.sync_engine)
            tasks = select(Task).order_by(Task.id)
            async with session.reusing_query_results() as memo:
                first = (await session.scalars(tasks)).all()
                second = (await session.scalars(tasks)).all()
                assert len(log.selects()) == 1
                assert len(first) == 1 and all(a is b for a, b in zip(first, second, strict=True))
                assert (memo.hits, memo.misses) == (1, 1)
                async with session.reusing_query_results() as inner:
                    assert inner is memo
                first[0].name = "renamed"
                await session.flush()
                assert memo.invalidations == 1
                third = (await session.scalars(tasks)).all()
                assert [t.name for t in third] == ["renamed"]
                assert len(log.selects()) == 2
                await session.rollback()
            assert (memo.hits, memo.misses) == (1, 2)
            assert len(memo) == 0, "the memo is cleared on exit"

    run(main)


def test_memo_inside_a_deferred_block(dbs: Databases, tmp_path: Path) -> None:
    """Inside an async deferred block reads are memoized and a recorded flush invalidates."""

    async def main() -> Any:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            async with (
                session.deferred_operations(tmp_path / "ops.dbm") as ops,
                session.reusing_query_results() as memo,
            ):
                first = (await session.scalars(select(Task))).all()
                assert (await session.scalars(select(Task))).all() == first
                first[0].name = "renamed"
                await session.flush()
                assert [t.name for t in await session.scalars(select(Task))] == ["renamed"]
            return ops.operations, (memo.hits, memo.misses, memo.invalidations)

    assert run(main) == (1, (1, 2, 1))
    assert [row[1] for row in table_rows(dbs.a)["task"]] == ["compositing"]


def test_an_exception_clears_the_memo(dbs: Databases) -> None:
    """An exception leaving the async memo block propagates and clears the memo."""

    async def main() -> None:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            with pytest.raises(KeyError, match="boom"):
                async with session.reusing_query_results() as memo:
                    await session.scalars(select(Task))
                    raise KeyError("boom")
            assert len(memo) == 0 and memo.misses == 1

    run(main)


# -- concurrency and the event loop ---------------------------------------------------------


def test_concurrent_tasks_record_their_own_journals(dbs: Databases, tmp_path: Path) -> None:
    """Five tasks with their own sessions record five journals at once, each holding only its own work."""
    count = 5
    paths = [tmp_path / f"ops-{i}.dbm" for i in range(count)]
    before = table_rows(dbs.a)

    async def main() -> Any:
        async with engine_on(dbs.url_a) as engine:
            log = watch(engine.sync_engine)
            sessions = async_sessionmaker(engine, class_=AsyncJournalingSession)
            all_inside = asyncio.Barrier(count)

            async def worker(i: int) -> int:
                async with sessions() as session, session.deferred_operations(paths[i]) as ops:
                    session.add(Task(name=f"task {i} first"))
                    await session.flush()
                    await all_inside.wait()  # every block is open at this point
                    session.add(Task(name=f"task {i} second"))
                    await session.commit()
                    await asyncio.sleep(0)
                    session.add(Task(name=f"task {i} third"))
                return ops.operations

            counts = await asyncio.gather(*(worker(i) for i in range(count)))
            return counts, log

    counts, log = run(main)
    assert counts == [3] * count
    assert log.writes() == []
    assert table_rows(dbs.a) == before
    for i, path in enumerate(paths):
        assert [op["values"]["name"] for op in operations(path)] == [
            f"task {i} first",
            f"task {i} second",
            f"task {i} third",
        ]
    with make_sessions(dbs.a)() as session:
        assert all(session.reconnect_and_commit(path).applied for path in paths)
    names = {row[1] for row in table_rows(dbs.a)["task"]}
    assert {f"task {i} {n}" for i in range(count) for n in ("first", "third")} <= names


def test_journal_io_runs_in_a_worker_thread(
    dbs: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating, appending to, rewinding and sealing the journal run off the event loop's thread."""
    calls: list[tuple[str, int]] = []

    def spy(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def spied(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.get_ident()))
            return original(*args, **kwargs)

        return spied

    for name in ("append", "rewind", "seal"):
        monkeypatch.setattr(JournalWriter, name, spy(name, getattr(JournalWriter, name)))
    monkeypatch.setattr(JournalWriter, "create", staticmethod(spy("create", JournalWriter.create)))

    async def main() -> int:
        async with engine_on(dbs.url_a) as engine, AsyncJournalingSession(engine) as session:
            async with session.deferred_operations(tmp_path / "ops.dbm"):
                session.add(Task(name="kept"))
                await session.commit()
                session.add(Task(name="discarded"))
                await session.flush()
                await session.rollback()
        return threading.get_ident()

    loop_thread = run(main)
    assert [name for name, _ in calls] == ["create", "append", "append", "rewind", "seal"]
    assert loop_thread not in {thread for _, thread in calls}
    assert [op["values"]["name"] for op in operations(tmp_path / "ops.dbm")] == ["kept"]


def test_journal_io_outside_the_greenlet_runs_inline() -> None:
    """The session's journal runner calls inline outside SQLAlchemy's greenlet and in a thread inside it."""
    io = journal_io(AsyncJournalingSession().sync_session)
    assert io(threading.get_ident) == threading.get_ident()

    async def main() -> int:
        return await greenlet_spawn(io, threading.get_ident)

    assert run(main) != threading.get_ident()


def test_cancelled_task_is_cancelled_after_its_write(
    dbs: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled mid-append is cancelled once the batch is written; its journal stays unsealed."""
    started, release = threading.Event(), threading.Event()
    events: list[str] = []
    original_append, original_close = JournalWriter.append, JournalWriter.close

    def append(writer: JournalWriter, ops: Any) -> int:
        started.set()
        release.wait(timeout=10)
        number = original_append(writer, ops)
        events.append("appended")
        return number

    def close(writer: JournalWriter) -> None:
        events.append("closed")
        original_close(writer)

    monkeypatch.setattr(JournalWriter, "append", append)
    monkeypatch.setattr(JournalWriter, "close", close)
    path = tmp_path / "ops.dbm"

    async def main() -> None:
        async with engine_on(dbs.url_a) as engine:

            async def record() -> None:
                async with AsyncJournalingSession(engine) as session:
                    async with session.deferred_operations(path):
                        session.add(Task(name="in flight"))
                        await session.flush()

            task = asyncio.create_task(record())
            await asyncio.to_thread(started.wait, 10)
            task.cancel()
            for _ in range(20):
                await asyncio.sleep(0)
            assert events == [], "the journal is not closed while a batch is being written"
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main)
    assert events[:2] == ["appended", "closed"]
    with Journal(path) as journal:
        assert journal.state == "incomplete"
