"""``AsyncJournalingSession``: the three orm-journal features for asyncio (SPEC §8).

An :class:`~sqlalchemy.ext.asyncio.AsyncSession` proxies a synchronous ``Session`` and
runs it inside SQLAlchemy's greenlet, where database I/O is awaited on the event loop.
Here that sync session is a :class:`JournalingSession`, and each feature is its sync
context manager entered and exited through ``greenlet_spawn``, as ``AsyncSession``
wraps every other session method. The one thing the event loop cannot wait for is the
journal file: every batch is fsynced. The recorder runs each blocking journal call
through the sync session's ``_journal_io`` runner, and the runner installed here sends
the call to a worker thread and awaits it, so the loop keeps serving other tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, Final, Literal, TypeVar

from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from orm_ext.memo import QueryMemo
from orm_ext.recording import DeferredOperations
from orm_ext.replay import ConflictHandler, ConflictPolicy, ProgressCallback, ReplayResult
from orm_ext.session import JournalingSession

__all__ = ["AsyncJournalingSession"]

_T = TypeVar("_T")

# The attribute through which the recorder finds its runner for blocking journal calls
# (see orm_ext.recording.journal_io).
_JOURNAL_IO: Final = "_journal_io"


class AsyncJournalingSession(AsyncSession):
    """An :class:`~sqlalchemy.ext.asyncio.AsyncSession` that can record, replay and memoize.

    Its :attr:`sync_session` is a :class:`JournalingSession`; everything an
    ``AsyncSession`` does keeps working unchanged. Use it wherever an ``AsyncSession`` is
    used, e.g. ``async_sessionmaker(engine, class_=AsyncJournalingSession)``.

    Journal file writes (create, append with fsync, rewind, seal) run in a worker thread
    while the event loop serves other tasks; the database is reached through the async
    driver as usual.

    >>> async with AsyncJournalingSession(engine) as session:     # doctest: +SKIP
    ...     async with session.deferred_operations("ops.dbm") as ops:
    ...         session.add(Asset(name="bc0040_comp"))
    ...     result = await session.reconnect_and_commit("ops.dbm")

    :param bind: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` or
        :class:`~sqlalchemy.ext.asyncio.AsyncConnection`.
    :param journal_key: HMAC key used to sign journals this session records and to verify
        journals it replays; ``None`` falls back to the ``ORM_JOURNAL_KEY`` environment
        variable, and without either journals are unsigned.
    :param kw: everything :class:`~sqlalchemy.ext.asyncio.AsyncSession` accepts; a
        ``sync_session_class`` must be a :class:`JournalingSession` subclass.
    :raises TypeError: ``sync_session_class`` is not a ``JournalingSession`` subclass.
    """

    sync_session_class: type[Session] = JournalingSession
    sync_session: JournalingSession

    def __init__(
        self, bind: Any = None, *, journal_key: bytes | str | None = None, **kw: Any
    ) -> None:
        factory = kw.get("sync_session_class") or self.sync_session_class
        if isinstance(factory, type) and not issubclass(factory, JournalingSession):
            raise TypeError(_not_journaling(factory))
        super().__init__(bind, journal_key=journal_key, **kw)
        if not isinstance(self.sync_session, JournalingSession):
            raise TypeError(_not_journaling(factory))
        setattr(self.sync_session, _JOURNAL_IO, _run_off_loop)

    @asynccontextmanager
    async def deferred_operations(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, allow_dill: bool = True
    ) -> AsyncIterator[DeferredOperations]:
        """Record this session's writes into the journal at ``path`` instead of the database.

        The async form of :meth:`JournalingSession.deferred_operations`, with the same
        semantics (SPEC §3): inside the block no INSERT, UPDATE or DELETE is sent; every
        flush (``await session.flush()``, an autoflush before a query, ``await
        session.commit()``) becomes one durable batch; on normal exit the journal is
        sealed and the session left clean; an exception leaves the journal unsealed,
        rolls the session back and propagates. Journal writes run in a worker thread.

        >>> async with session.deferred_operations("ops.dbm") as ops:   # doctest: +SKIP
        ...     session.add(Asset(name="bc0040_comp"))
        >>> ops.operations                                             # doctest: +SKIP
        1

        :param allow_dill: see :meth:`JournalingSession.deferred_operations`.
        :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
        :raises JournalLockedError: another process is recording into ``path``.
        :raises DeferredOperationError: already inside a deferred block.
        """
        manager = self.sync_session.deferred_operations(
            path, overwrite=overwrite, allow_dill=allow_dill
        )
        async with _entered(manager) as handle:
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
        """Apply the journal at ``path`` to the database in one transaction, exactly once.

        The async form of :meth:`JournalingSession.reconnect_and_commit`, with the same
        semantics, results and errors (SPEC §5).

        >>> result = await session.reconnect_and_commit("ops.dbm")   # doctest: +SKIP
        >>> result.applied                                            # doctest: +SKIP
        True

        :param on_conflict: ``"fail"``, ``"overwrite"``, ``"skip"`` or a (plain, not
            async) callable deciding each conflict; see
            :meth:`JournalingSession.reconnect_and_commit`.
        :param allow_schema_drift: replay even if the schema differs from the recording's.
        :param allow_dill: unpickle ``dill`` values of a journal not verified with a key;
            see :meth:`JournalingSession.reconnect_and_commit`.
        :param if_busy: ``"wait"`` or ``"skip"``; see
            :meth:`JournalingSession.reconnect_and_commit`.
        :param dry_run: apply, then roll back; see
            :meth:`JournalingSession.reconnect_and_commit`.
        :param progress: a plain callable, ``progress(done, total)`` after each batch.
        :raises DeferredOperationError: pending changes, inside a deferred block, or an
            operation the database rejected (nothing is applied).
        :raises ReplayConflictError: a recorded update/delete no longer matches its row.
        :raises SchemaMismatchError: the schema differs and drift is not allowed.
        :raises JournalSignatureError: unverifiable, or holding dill values without a key
            or ``allow_dill``.
        """
        return await greenlet_spawn(
            self.sync_session.reconnect_and_commit,
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
        """Answer repeated identical SELECTs from a memo for the duration of the block.

        The async form of :meth:`JournalingSession.reusing_query_results` (SPEC §6, and
        §9 with ``snapshot``): hits return the very same ORM instances without a database
        round trip, and anything this session changes drops the memoized results that
        read it.

        >>> async with session.reusing_query_results() as memo:       # doctest: +SKIP
        ...     await session.scalars(select(Asset))
        ...     await session.scalars(select(Asset))
        >>> memo.hits                                                  # doctest: +SKIP
        1
        """
        async with _entered(
            self.sync_session.reusing_query_results(snapshot, max_age=max_age, refresh=refresh)
        ) as memo:
            yield memo


def _not_journaling(factory: object) -> str:
    return (
        f"AsyncJournalingSession needs a JournalingSession as its sync session, and "
        f"sync_session_class={factory!r} does not make one; pass a JournalingSession "
        "subclass or leave sync_session_class out"
    )


@asynccontextmanager
async def _entered(manager: AbstractContextManager[_T]) -> AsyncIterator[_T]:
    """Enter and exit a sync context manager of the session inside SQLAlchemy's greenlet.

    Both run through ``greenlet_spawn``, as ``AsyncSession`` runs every session call, so
    the flushes, rollbacks and queries they make are awaited on the event loop. An
    exception from the ``async with`` body is handed to ``__exit__`` as a ``with`` block
    would hand it, and propagates unless ``__exit__`` suppresses it.
    """
    value = await greenlet_spawn(manager.__enter__)
    try:
        yield value
    except BaseException as err:
        if not await greenlet_spawn(manager.__exit__, type(err), err, err.__traceback__):
            raise
    else:
        await greenlet_spawn(manager.__exit__, None, None, None)


def _run_off_loop(function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run a blocking journal call in a worker thread when called from SQLAlchemy's greenlet.

    This is the session's ``_journal_io`` runner. Inside ``greenlet_spawn`` (every call
    of the async session) it awaits the call in a thread, so the event loop keeps
    running; anywhere else (the sync session used directly) it simply calls it.
    ``await_only`` raises ``MissingGreenlet`` before anything runs when there is no
    greenlet to switch from, and closes the unstarted coroutine; the journal package
    never imports SQLAlchemy, so the call itself cannot be what raised it.
    """
    try:
        return await_only(_in_thread(function, *args, **kwargs))
    except MissingGreenlet:
        return function(*args, **kwargs)


async def _in_thread(function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Await ``function(*args, **kwargs)`` in a worker thread, to its end even if cancelled.

    A thread cannot be interrupted. If the awaiting task is cancelled mid-write, the
    cancellation is delivered only once the write has finished, so the session never
    closes (or rewinds) the journal while a batch is still being written into it.
    """
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller gets
        raise
