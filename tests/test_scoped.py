"""The three features through a scoped session (``ScopedJournalingSession``, SPEC §1)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from orm_ext import (
    AsyncJournalingSession,
    AsyncScopedJournalingSession,
    JournalingSession,
    ScopedJournalingSession,
)
from tests.conftest import Backend
from tests.models import Task
from tests.scenario import seed


def task_count(engine: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count(Task.id))) or 0)


def test_scoped_session_proxies_the_three_features(backend: Backend, tmp_path: Path) -> None:
    """Record, replay (with dry run and progress) and memoize through the registry."""
    engine = backend.engine("b")
    seed(engine)
    scoped = ScopedJournalingSession(sessionmaker(engine, class_=JournalingSession))
    path = tmp_path / "ops.dbm"
    with scoped.deferred_operations(path) as ops:
        scoped.add(Task(name="recorded"))
    assert ops.operations == 1 and task_count(engine) == 1
    calls: list[tuple[int, int]] = []
    dry = scoped.reconnect_and_commit(path, dry_run=True, progress=lambda *c: calls.append(c))
    assert (dry.applied, dry.dry_run, calls) == (True, True, [(1, 1)])
    assert task_count(engine) == 1
    result = scoped.reconnect_and_commit(path, on_conflict=lambda conflict: "fail")
    assert result.applied and task_count(engine) == 2
    with scoped.reusing_query_results() as memo:
        scoped.scalars(select(Task)).all()
        scoped.scalars(select(Task)).all()
    assert memo.hits == 1
    snapshot = tmp_path / "reads.snapshot"
    with scoped.reusing_query_results(snapshot, max_age=3600, refresh=True):
        scoped.scalars(select(Task)).all()
    assert snapshot.exists()  # the snapshot arguments reach the current session
    scoped.remove()


def test_each_thread_records_into_its_own_session(sqlite_url: str, tmp_path: Path) -> None:
    """The proxied block belongs to the calling thread's session, as every proxied method."""
    engine = create_engine(sqlite_url)
    seed(engine)
    scoped = ScopedJournalingSession(sessionmaker(engine, class_=JournalingSession))
    seen: list[Any] = []

    def worker(name: str) -> None:
        with scoped.deferred_operations(tmp_path / f"{name}.dbm"):
            scoped.add(Task(name=name))
            seen.append(scoped())
        scoped.remove()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in seen}) == 2
    assert task_count(engine) == 1
    for name in ("one", "two"):
        assert scoped.reconnect_and_commit(tmp_path / f"{name}.dbm").operations == 1
    assert task_count(engine) == 3


def test_a_factory_of_another_session_is_refused(sqlite_url: str) -> None:
    """A sessionmaker of plain sessions is refused with TypeError, saying what to pass."""
    engine = create_engine(sqlite_url)
    with pytest.raises(TypeError, match="class_=JournalingSession"):
        ScopedJournalingSession(sessionmaker(engine))
    loose = ScopedJournalingSession(lambda: Session(engine))
    with pytest.raises(TypeError, match="makes Session"):
        loose.reconnect_and_commit("x.dbm")
    with pytest.raises(TypeError, match="class_=JournalingSession"):
        AsyncScopedJournalingSession(async_sessionmaker(), scopefunc=asyncio.current_task)


def test_async_scoped_session_proxies_the_three_features(sqlite_url: str, tmp_path: Path) -> None:
    """AsyncScopedJournalingSession awaits the replay and enters both blocks asynchronously."""
    engine = create_engine(sqlite_url)
    seed(engine)
    path = tmp_path / "ops.dbm"

    async def main() -> tuple[Any, int]:
        async_engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
        factory = async_sessionmaker(async_engine, class_=AsyncJournalingSession)
        scoped = AsyncScopedJournalingSession(factory, scopefunc=asyncio.current_task)
        async with scoped.deferred_operations(path):
            scoped.add(Task(name="async"))
        result = await scoped.reconnect_and_commit(path, dry_run=False, if_busy="skip")
        async with scoped.reusing_query_results() as memo:
            await scoped.scalars(select(Task))
            await scoped.scalars(select(Task))
        await scoped.remove()
        await async_engine.dispose()
        return result, memo.hits

    result, hits = asyncio.run(main())
    assert result.applied and result.operations == 1 and hits == 1
    assert task_count(engine) == 2
