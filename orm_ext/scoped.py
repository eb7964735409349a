"""The three features through a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``).

SQLAlchemy's :class:`~sqlalchemy.orm.scoped_session` proxies a fixed list of ``Session``
methods, generated when the class is defined, so ``deferred_operations``,
``reconnect_and_commit`` and ``reusing_query_results`` are not among them. SQLAlchemy's
documented way to add to a registry's proxy is a subclass whose methods call the current
session, which calling the registry returns; the subclasses here do just that.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, Literal

from sqlalchemy.ext.asyncio import async_scoped_session
from sqlalchemy.orm import scoped_session

from orm_ext.aio import AsyncJournalingSession
from orm_ext.memo import QueryMemo
from orm_ext.recording import DeferredOperations
from orm_ext.replay import ConflictHandler, ConflictPolicy, ProgressCallback, ReplayResult
from orm_ext.session import JournalingSession

__all__ = ["AsyncScopedJournalingSession", "ScopedJournalingSession"]


class ScopedJournalingSession(scoped_session[JournalingSession]):
    """A :class:`~sqlalchemy.orm.scoped_session` of :class:`JournalingSession` objects.

    Everything a ``scoped_session`` proxies keeps working; the three orm-journal features
    are proxied to the current session too.

    >>> Session = ScopedJournalingSession(                          # doctest: +SKIP
    ...     sessionmaker(engine, class_=JournalingSession))
    >>> with Session.deferred_operations("ops.dbm"):                # doctest: +SKIP
    ...     Session.add(Task(name="compositing"))

    :param session_factory: a factory of :class:`JournalingSession` objects, such as
        ``sessionmaker(engine, class_=JournalingSession)``.
    :param scopefunc: as for ``scoped_session`` (default: one session per thread).
    :raises TypeError: the factory is a ``sessionmaker`` of another session class, or
        (at first use) it made a session that is not a ``JournalingSession``.
    """

    def __init__(self, session_factory: Any, scopefunc: Any = None) -> None:
        made = getattr(session_factory, "class_", JournalingSession)
        if isinstance(made, type) and not issubclass(made, JournalingSession):
            raise TypeError(_not_journaling(made))
        super().__init__(session_factory, scopefunc=scopefunc)

    def _current(self) -> JournalingSession:
        session = self()
        if not isinstance(session, JournalingSession):
            raise TypeError(_not_journaling(type(session)))
        return session

    def deferred_operations(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, allow_dill: bool = True
    ) -> AbstractContextManager[DeferredOperations]:
        """Proxy for :meth:`JournalingSession.deferred_operations` of the current session."""
        return self._current().deferred_operations(path, overwrite=overwrite, allow_dill=allow_dill)

    def reconnect_and_commit(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: ConflictPolicy | ConflictHandler = "fail",
        allow_schema_drift: bool = False,
        allow_dill: bool = False,
        if_busy: Literal["wait", "skip"] = "wait",
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ReplayResult:
        """Proxy for :meth:`JournalingSession.reconnect_and_commit` of the current session."""
        return self._current().reconnect_and_commit(
            path,
            on_conflict=on_conflict,
            allow_schema_drift=allow_schema_drift,
            allow_dill=allow_dill,
            if_busy=if_busy,
            dry_run=dry_run,
            progress=progress,
        )

    def reusing_query_results(
        self,
        snapshot: str | os.PathLike[str] | None = None,
        *,
        max_age: dt.timedelta | float | None = None,
        refresh: bool = False,
    ) -> AbstractContextManager[QueryMemo]:
        """Proxy for :meth:`JournalingSession.reusing_query_results` of the current session."""
        return self._current().reusing_query_results(snapshot, max_age=max_age, refresh=refresh)


class AsyncScopedJournalingSession(async_scoped_session[AsyncJournalingSession]):
    """An :class:`~sqlalchemy.ext.asyncio.async_scoped_session` of
    :class:`AsyncJournalingSession` objects, proxying the three features too.

    :param session_factory: e.g. ``async_sessionmaker(engine, class_=AsyncJournalingSession)``.
    :param scopefunc: as for ``async_scoped_session`` (required there too, e.g.
        ``asyncio.current_task``).
    :raises TypeError: the factory makes another session class.
    """

    def __init__(self, session_factory: Any, scopefunc: Any) -> None:
        made = getattr(session_factory, "class_", AsyncJournalingSession)
        if isinstance(made, type) and not issubclass(made, AsyncJournalingSession):
            raise TypeError(_not_journaling(made))
        super().__init__(session_factory, scopefunc=scopefunc)

    def _current(self) -> AsyncJournalingSession:
        session = self()
        if not isinstance(session, AsyncJournalingSession):
            raise TypeError(_not_journaling(type(session)))
        return session

    @asynccontextmanager
    async def deferred_operations(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, allow_dill: bool = True
    ) -> AsyncIterator[DeferredOperations]:
        """Proxy for :meth:`AsyncJournalingSession.deferred_operations`."""
        manager = self._current().deferred_operations(
            path, overwrite=overwrite, allow_dill=allow_dill
        )
        async with manager as handle:
            yield handle

    async def reconnect_and_commit(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: ConflictPolicy | ConflictHandler = "fail",
        allow_schema_drift: bool = False,
        allow_dill: bool = False,
        if_busy: Literal["wait", "skip"] = "wait",
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ReplayResult:
        """Proxy for :meth:`AsyncJournalingSession.reconnect_and_commit`."""
        return await self._current().reconnect_and_commit(
            path,
            on_conflict=on_conflict,
            allow_schema_drift=allow_schema_drift,
            allow_dill=allow_dill,
            if_busy=if_busy,
            dry_run=dry_run,
            progress=progress,
        )

    @asynccontextmanager
    async def reusing_query_results(
        self,
        snapshot: str | os.PathLike[str] | None = None,
        *,
        max_age: dt.timedelta | float | None = None,
        refresh: bool = False,
    ) -> AsyncIterator[QueryMemo]:
        """Proxy for :meth:`AsyncJournalingSession.reusing_query_results`."""
        async with self._current().reusing_query_results(
            snapshot, max_age=max_age, refresh=refresh
        ) as memo:
            yield memo


def _not_journaling(made: type) -> str:
    return (
        f"a scoped orm-journal session needs a factory of JournalingSession (or, async, "
        f"AsyncJournalingSession) objects, and this one makes {made.__name__}; pass "
        "sessionmaker(engine, class_=JournalingSession)"
    )
