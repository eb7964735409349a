"""The replay service: apply every journal dropped into a spool directory, exactly once.

``orm-journal replay URL DIR --watch`` wraps :class:`ReplayService`; a program can embed
it the same way (SPEC §10). The spool's files are :mod:`orm_ext.spool`'s business, the
ledger decides what is applied (:func:`orm_ext.replay.reconnect_and_commit`), and this
module ties the two together: the order, what becomes of each journal, and what to do
when the database goes away.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from orm_ext.exc import ReplayConflictError
from orm_ext.failures import failure_document, write_failure
from orm_ext.replay import ConflictPolicy, ProgressCallback, reconnect_and_commit
from orm_ext.reporting import cli_words
from orm_ext.session import JournalingSession
from orm_ext.spool import Ready, Spool

__all__ = ["ReplayService", "ServiceEvent", "ServiceSummary"]

_log = logging.getLogger("orm_ext.service")

Outcome = Literal["applied", "already applied", "failed"]


@dataclass
class ServiceEvent:
    """What became of one journal of the spool.

    :ivar outcome: ``applied`` (by this service), ``already applied`` (the ledger had it:
        another replayer applied it, or this one before it was moved), or ``failed``.
    :ivar moved_to: where the journal is now (``None``: another replayer moved it first).
    :ivar error: the one-line error of a failure; its JSON file is ``moved_to`` + ``.json``.
    """

    path: Path
    outcome: Outcome
    journal_id: str
    operations: int = 0
    duration: float = 0.0
    conflicts: list[ReplayConflictError] = field(default_factory=list)
    moved_to: Path | None = None
    error: str | None = None


@dataclass
class ServiceSummary:
    """What one :meth:`ReplayService.run` did, journal by journal outcome counts."""

    applied: int = 0
    already_applied: int = 0
    failed: int = 0


class ReplayService:
    """Replay the journals of a spool directory into one database, each exactly once.

    Sealed journals are applied in the order they were sealed and moved to
    ``DIRECTORY/applied/``; one that fails is moved to ``DIRECTORY/failed/`` with a JSON
    file beside it saying why and what to do. A journal still being written is left
    alone until it is sealed. A journal another replayer is applying is passed over and
    looked at again later. When the database cannot be reached the service waits, with
    a growing pause, and tries again: a journal is never marked failed for that.

    >>> service = ReplayService("postgresql+psycopg://app@db/app", "/srv/spool")  # doctest: +SKIP
    >>> service.run(once=True)  # doctest: +SKIP
    ServiceSummary(applied=12, already_applied=0, failed=0)

    :param bind: an :class:`~sqlalchemy.engine.Engine`, or a database URL to create one
        from (with ``pool_pre_ping``, so connections lost with a restart are replaced).
    :param directory: the spool; it must exist.
    :param key: HMAC key of signed journals (``None``: ``$ORM_JOURNAL_KEY``).
    :param on_conflict: as for ``reconnect_and_commit``: ``"fail"`` (the journal goes to
        ``failed/``), ``"overwrite"`` or ``"skip"``.
    :param poll_interval: seconds between looks at the spool when it has nothing ready.
    :param max_backoff: longest pause, in seconds, between tries to reach the database.
    :param attempts: tries of a journal whose replay hit a database error (a deadlock, a
        lost connection) while the database itself answers, before it counts as failed.
    :param on_event: called with a :class:`ServiceEvent` for each journal moved.
    :param progress: called as ``progress(done, total)`` while a journal is applied.
    :raises NotADirectoryError: ``directory`` is not a directory.
    :raises ValueError: a setting out of range.
    """

    def __init__(
        self,
        bind: Engine | str,
        directory: str | os.PathLike[str],
        *,
        key: bytes | str | None = None,
        on_conflict: ConflictPolicy = "fail",
        allow_schema_drift: bool = False,
        allow_dill: bool = False,
        poll_interval: float = 1.0,
        max_backoff: float = 30.0,
        attempts: int = 3,
        on_event: Callable[[ServiceEvent], object] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        if on_conflict not in ("fail", "overwrite", "skip"):
            raise ValueError(
                f"ReplayService on_conflict={on_conflict!r}: choose 'fail', 'overwrite' or 'skip'"
            )
        if poll_interval <= 0 or max_backoff <= 0:
            raise ValueError("ReplayService poll_interval and max_backoff must be above 0 s")
        if attempts < 1:
            raise ValueError(f"ReplayService attempts={attempts}: must be 1 or more")
        self.spool = Spool(directory, key=key)
        self._owns_engine = isinstance(bind, str)
        self.engine = create_engine(bind, pool_pre_ping=True) if isinstance(bind, str) else bind
        self._sessions = sessionmaker(self.engine, class_=JournalingSession, journal_key=key)
        self._key = key
        self._on_conflict: ConflictPolicy = on_conflict
        self._allow_schema_drift = allow_schema_drift
        self._allow_dill = allow_dill
        self._poll = poll_interval
        self._max_backoff = max_backoff
        self._attempts = attempts
        self._on_event = on_event
        self._progress = progress
        self._stop = threading.Event()
        # Database errors per journal id while the database answered (see _attempt).
        self._tries: dict[str, int] = {}

    def stop(self) -> None:
        """Ask :meth:`run` to return once the journal in progress is done (thread-safe).

        Safe to call from a signal handler: it only sets a flag. A stopped service stays
        stopped: a later :meth:`run` returns at once; make a new one to start again.
        """
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self, *, once: bool = False) -> ServiceSummary:
        """Replay what the spool holds until :meth:`stop`, or with ``once`` until it is drained.

        Drained means no sealed journal is left in the spool: journals still being
        written stay for a later run. ``once`` still waits for the database to come back.
        """
        summary = ServiceSummary()
        backoff = 0.0
        _log.info(
            "replaying the journals of %s into %s%s",
            self.spool.directory,
            self.engine.url.render_as_string(hide_password=True),
            " until it is drained" if once else "",
        )
        try:
            while not self._stop.is_set():
                self.spool.tidy()
                ready = self.spool.ready()
                if once and not ready:
                    break
                waiting = False
                for journal in ready:
                    if self._stop.is_set():
                        break
                    state = self._attempt(journal, summary)
                    if state == "unavailable":
                        backoff = min(self._max_backoff, max(0.5, backoff * 2))
                        _log.warning(
                            "database %s cannot be reached; trying again in %.1f s",
                            self.engine.url.render_as_string(hide_password=True),
                            backoff,
                        )
                        self._stop.wait(backoff)
                        break
                    backoff = 0.0
                    waiting = waiting or state == "later"
                else:
                    if not ready or waiting:
                        # Nothing new, or journals another replayer holds: look again soon.
                        self._stop.wait(self._poll if not ready or not once else 0.05)
        finally:
            if self._owns_engine:
                self.engine.dispose()
        return summary

    def _attempt(self, journal: Ready, summary: ServiceSummary) -> str:
        """Replay one journal; ``done``, ``later`` (busy, or retry) or ``unavailable``."""
        with self.spool.hold(journal.path) as held:
            if not held:
                return "later" if journal.path.exists() else "done"
            return self._replay(journal, summary)

    def _replay(self, journal: Ready, summary: ServiceSummary) -> str:
        try:
            with self._sessions() as session:
                result = reconnect_and_commit(
                    session,
                    journal.path,
                    key=self._key,
                    on_conflict=self._on_conflict,
                    allow_schema_drift=self._allow_schema_drift,
                    allow_dill=self._allow_dill,
                    if_busy="skip",
                    progress=self._progress,
                )
        except FileNotFoundError:
            return "done"  # another replayer moved it away
        except Exception as err:
            if _database_error(err):
                if not self._reachable():
                    return "unavailable"
                tries = self._tries.get(journal.journal_id, 0) + 1
                self._tries[journal.journal_id] = tries
                if tries < self._attempts:
                    _log.warning(
                        "journal %s (%s): database error, will try again: %s",
                        journal.journal_id,
                        journal.path,
                        _first_line(err),
                    )
                    return "later"
            self._tries.pop(journal.journal_id, None)
            self._fail(journal, err, summary)
            return "done"
        self._tries.pop(journal.journal_id, None)
        if result.busy:
            return "later"
        outcome: Outcome = "applied" if result.applied else "already applied"
        moved = self.spool.move(journal.path, self.spool.applied, result.journal_id)
        if result.applied:
            summary.applied += 1
        else:
            summary.already_applied += 1
        _log.info(
            "journal %s (%s): %s, moved to %s",
            result.journal_id,
            journal.path.name,
            outcome,
            moved or "(moved by another replayer)",
        )
        self._emit(
            ServiceEvent(
                journal.path,
                outcome,
                result.journal_id,
                operations=result.operations,
                duration=result.duration,
                conflicts=list(result.conflicts),
                moved_to=moved,
            )
        )
        return "done"

    def _fail(self, journal: Ready, err: Exception, summary: ServiceSummary) -> None:
        message = _first_line(err)
        target = self.spool.target(journal.path, self.spool.failed, journal.journal_id)
        if not journal.path.exists():
            return  # another replayer dealt with it
        write_failure(target, failure_document(journal.path, journal.journal_id, err, message))
        moved = self.spool.move(journal.path, self.spool.failed, journal.journal_id)
        summary.failed += 1
        _log.error(
            "journal %s (%s): failed, moved to %s: %s",
            journal.journal_id,
            journal.path.name,
            moved or "(moved by another replayer)",
            message,
        )
        self._emit(
            ServiceEvent(journal.path, "failed", journal.journal_id, moved_to=moved, error=message)
        )

    def _emit(self, event: ServiceEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _reachable(self) -> bool:
        """Whether a new connection to the database answers a query."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True


def _database_error(err: BaseException) -> bool:
    """Whether ``err`` came from the database rather than from the journal.

    Replay wraps a database failure in ``DeferredOperationError``; the driver's error is
    in the chain. An integrity error is the journal's (a constraint it breaks).
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DisconnectionError):
            return True
        if isinstance(current, DBAPIError) and not isinstance(current, IntegrityError):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    # The files and log lines are read by whoever runs the command: its options, not
    # Python arguments.
    return cli_words(f"{type(err).__name__}: {lines[0] if lines else ''}")
