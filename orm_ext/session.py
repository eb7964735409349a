"""``JournalingSession``: a drop-in ``Session`` with the three orm-journal features.

Each feature lives in its own module and is wired in here through SQLAlchemy's session
events, registered per instance in ``__init__`` (as ``sqlalchemy.ext.horizontal_shard``
does); outside the three context managers the session behaves as a plain ``Session``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from orm_ext import logs, memo, recording, replay
from orm_ext.exc import DeferredOperationError
from orm_ext.memo import QueryMemo
from orm_ext.recording import DeferredOperations, Recorder
from orm_ext.replay import ConflictHandler, ConflictPolicy, ProgressCallback, ReplayResult

__all__ = ["JournalingSession"]


class JournalingSession(Session):
    """A :class:`sqlalchemy.orm.Session` that can record, replay and memoize.

    Use it wherever a ``Session`` is used, e.g. ``sessionmaker(engine,
    class_=JournalingSession)``.

    :param journal_key: HMAC key used to sign journals this session records and to verify
        journals it replays; ``None`` falls back to the ``ORM_JOURNAL_KEY`` environment
        variable, and without either journals are unsigned.
    :param kwargs: everything :class:`~sqlalchemy.orm.Session` accepts.
    """

    def __init__(
        self, bind: Any = None, *, journal_key: bytes | str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(bind, **kwargs)
        if journal_key is not None and not isinstance(journal_key, bytes | str):
            raise TypeError("journal_key must be bytes or str")
        if journal_key is not None and not journal_key:
            raise ValueError("journal_key must not be empty")
        self.journal_key = journal_key
        self._recorder: Recorder | None = None
        # Whether this session's transaction holds flushed, uncommitted writes: a block
        # cannot start on them, nor a replay commit them along with a journal.
        self._flushed_changes = False
        event.listen(self, "after_flush", _flushed)
        event.listen(self, "after_transaction_end", _transaction_ended)
        # The memo of an open reusing_query_results() block; the memo attaches its
        # listeners only while one is open, placed so they see the unit of work before
        # the recorder turns it into a journal batch.
        self._query_memo: QueryMemo | None = None
        recording.install(self)

    @contextmanager
    def deferred_operations(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, allow_dill: bool = True
    ) -> Iterator[DeferredOperations]:
        """Record this session's writes into the journal at ``path`` instead of the database.

        Inside the block no INSERT, UPDATE or DELETE is sent; every flush becomes one
        durable batch of the journal, ``commit()`` is a checkpoint and ``rollback()``
        discards what was recorded since the last one. On normal exit the journal is
        sealed and the session left clean; on an exception it stays unsealed and the
        session is rolled back. See SPEC §3.

        >>> with session.deferred_operations("ops.dbm") as ops:  # doctest: +SKIP
        ...     session.add(Asset(name="bc0040_comp"))
        >>> ops.operations                                        # doctest: +SKIP
        1

        :param overwrite: replace an existing file at ``path`` (a new file is renamed over
            it; a symbolic link there is replaced, never followed).
        :param allow_dill: with ``False``, a value that is not a standard SQL value (it
            would be stored with ``dill``, whose decoding runs code) raises
            :class:`DeferredOperationError` at the flush that records it, so the journal
            can be replayed without a key and without ``allow_dill``.
        :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
        :raises JournalLockedError: another process is recording into ``path``.
        :raises DeferredOperationError: already inside a deferred block.
        """
        if self._recorder is not None:
            raise DeferredOperationError(
                f"already recording into {self._recorder.path}; deferred blocks do not nest",
                path=self._recorder.path,
            )
        expire_on_commit = self.expire_on_commit

        def stopped() -> None:
            self._recorder = None
            self.expire_on_commit = expire_on_commit

        recorder = Recorder.start_recording(
            self,
            path,
            overwrite=overwrite,
            key=self.journal_key,
            stopped=stopped,
            allow_dill=allow_dill,
            expire_on_checkpoint=expire_on_commit,
        )
        self._recorder = recorder
        # A commit inside the block is a checkpoint: nothing reached the database, so
        # SQLAlchemy's expiry on commit is the recorder's own (Recorder.checkpointed).
        self.expire_on_commit = False
        started = time.monotonic()
        try:
            yield recorder.handle
        except BaseException as err:
            recorder.abandon()
            logs.journal_recorded(recorder.handle, started, f"abandoned ({type(err).__name__})")
            raise
        try:
            recorder.finish()
        except BaseException as err:
            logs.journal_recorded(recorder.handle, started, f"failed ({type(err).__name__})")
            raise
        logs.journal_recorded(recorder.handle, started, "sealed")

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
        """Apply the journal at ``path`` to the database in one transaction, exactly once.

        The journal is verified (seal, integrity, signature with ``journal_key``) and its
        schema compared with this process's mapping before anything is written; its id
        goes into the ledger table in the same transaction, so replaying it again returns
        ``applied=False``. See SPEC §5.

        >>> result = session.reconnect_and_commit("ops.dbm")   # doctest: +SKIP
        >>> result.applied, result.operations                   # doctest: +SKIP
        (True, 4)

        :param on_conflict: ``"fail"`` raises :class:`ReplayConflictError` when a recorded
            update/delete no longer matches its row; ``"overwrite"`` applies it anyway;
            ``"skip"`` leaves it out (and an insert or update the database refuses with a
            unique or foreign-key constraint) and lists it in ``ReplayResult.conflicts``.
            A callable is given each conflict (its ``kind`` is ``"data"``, ``"notfound"``
            or ``"constraint"``) and returns one of the three for that operation; only a
            ``"data"`` conflict can be overwritten.
        :param allow_schema_drift: replay even if the schema differs from the recording's.
        :param allow_dill: unpickle ``dill`` values although the journal did not verify
            with a key. Unpickling runs code from the file: allow it only for journals
            nobody else can write. Without it such a journal is refused with
            :class:`JournalSignatureError` before anything is claimed or applied.
        :param if_busy: when another replayer is applying the same journal right now:
            ``"wait"`` for it (the result is then ``applied=False``) or ``"skip"`` at once
            with ``busy=True`` (PostgreSQL and MariaDB; SQLite serialises writers).
        :param dry_run: do everything (verify, schema check, locks, conflict checks, every
            statement) and roll back: the result says whether the journal would apply
            (``applied``, with ``dry_run=True``) and with which conflicts; the database
            and the ledger are unchanged.
        :param progress: ``progress(done, total)`` is called after each batch of
            operations; ``done`` grows to ``total``, the journal's operation count.
        :raises DeferredOperationError: pending changes, inside a deferred block, or an
            operation the database rejected (nothing is applied).
        :raises SchemaMismatchError: the schema differs and drift is not allowed.
        :raises JournalSignatureError: the signature does not verify, or the journal holds
            dill values without a key or ``allow_dill``.
        :raises JournalCorruptError: the journal is damaged, altered or malformed.
        """
        return replay.reconnect_and_commit(
            self,
            path,
            key=self.journal_key,
            on_conflict=on_conflict,
            allow_schema_drift=allow_schema_drift,
            allow_dill=allow_dill,
            if_busy=if_busy,
            dry_run=dry_run,
            progress=progress,
        )

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        if self._recorder is not None:
            # The unit of work is recorded once every other before_flush listener has run,
            # as a plain flush writes what they leave (SPEC §3.10), whenever they were added.
            recording.listen_last(self)
            if logs.record_log.isEnabledFor(logging.DEBUG):
                handle, before = self._recorder.handle, self._recorder.handle.operations
                super().flush(objects)
                logs.batch_recorded(handle, before)
                return
        super().flush(objects)

    # SQLAlchemy has no event for these; memoized results must not outlive them.
    def expire_all(self) -> None:
        super().expire_all()
        memo.invalidate(self)
        if self._recorder is not None:
            self._recorder.hold_unknown(self.identity_map.all_states())

    def expire(self, instance: object, attribute_names: Iterable[str] | None = None) -> None:
        super().expire(instance, attribute_names)
        memo.invalidate(self)
        if self._recorder is not None:
            self._recorder.hold_unknown([inspect(instance)])

    def close(self) -> None:
        # Inside a deferred block, closing discards what was recorded since the last
        # checkpoint, as closing rolls a real transaction back.
        if self._recorder is not None:
            self._recorder.discard_uncommitted()
        super().close()

    def expunge_all(self) -> None:
        super().expunge_all()
        memo.invalidate(self)

    @contextmanager
    def reusing_query_results(
        self,
        snapshot: str | os.PathLike[str] | None = None,
        *,
        max_age: dt.timedelta | float | None = None,
        refresh: bool = False,
    ) -> Iterator[QueryMemo]:
        """Answer repeated identical SELECTs from a memo for the duration of the block.

        Hits return the very same ORM instances without a database round trip; anything
        this session changes drops the memoized results that read it. See SPEC §6.

        With ``snapshot``, what the database answers is also saved to that query
        snapshot file, and statements it holds are answered from it, by this process or
        a later one, whose database may be unreachable (SPEC §9):

        >>> with session.reusing_query_results(snapshot="reads.snapshot"):  # doctest: +SKIP
        ...     asset = session.scalars(select(Asset).filter_by(name="bc0040")).one()

        :param snapshot: the snapshot file; created if absent, verified (with
            ``journal_key``) and extended if present, written back when the block exits.
        :param max_age: entries older than this (a ``timedelta`` or seconds) are read
            again online, and refused offline.
        :param refresh: serve nothing from the snapshot: read every statement again and
            replace its entry.
        :raises SchemaMismatchError: the snapshot was taken against other tables.
        :raises JournalSignatureError: its signature does not verify with the key, or it
            is unsigned while a key is configured.
        :raises JournalCorruptError: it is damaged, edited, or not a snapshot.
        :raises SnapshotMissError: (inside the block) a statement the snapshot cannot
            answer while the database cannot be reached.
        """
        age = _max_age(max_age)
        if snapshot is None and (age is not None or refresh):
            raise ValueError("max_age and refresh need a snapshot: pass snapshot=PATH")
        with memo.reusing_query_results(
            self,
            snapshot,
            key=self.journal_key,
            max_age=age,
            refresh=bool(refresh),
            attach=self._attach_memo,
        ) as query_memo:
            yield query_memo

    def _attach_memo(self, query_memo: QueryMemo | None) -> None:
        self._query_memo = query_memo


def _max_age(value: dt.timedelta | float | None) -> dt.timedelta | None:
    if value is None or isinstance(value, dt.timedelta):
        age = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        age = dt.timedelta(seconds=value)
    else:
        raise TypeError(f"max_age must be a timedelta or a number of seconds, not {value!r}")
    if age is not None and age < dt.timedelta(0):
        raise ValueError(f"max_age must not be negative, not {value!r}")
    return age


@event.listens_for(Session, "before_attach")
def _refuse_recorded_objects(session: Session, instance: object) -> None:
    # Listens on every Session, not only ours: an object recorded into a journal must not
    # reach any database directly, or replay would write it a second time.
    recording.refuse_if_recorded(session, instance)


def _flushed(session: JournalingSession, flush_context: Any) -> None:
    session._flushed_changes = True


def _transaction_ended(session: JournalingSession, transaction: Any) -> None:
    if transaction.parent is None:
        session._flushed_changes = False
