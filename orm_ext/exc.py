"""The SQLAlchemy half of the orm-journal exception tree (SPEC §2).

Each class is a :class:`journal.JournalError` and also the SQLAlchemy exception a caller of
a plain session would catch for the same kind of failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

from journal.exc import JournalError

__all__ = [
    "DeferredOperationError",
    "ReplayConflictError",
    "SchemaMismatchError",
    "SnapshotMissError",
]


class DeferredOperationError(JournalError, sa_exc.InvalidRequestError):
    """Misuse of a deferred block, or a construct inside it that cannot be replayed faithfully."""


class ReplayConflictError(JournalError, orm_exc.StaleDataError):
    """A recorded update or delete no longer matches the row in the database.

    :ivar sequence: the operation's sequence number in the journal.
    :ivar table: the table of the row.
    :ivar key: the row's primary key (or the placeholder it resolved from).
    :ivar expected: the values the journal recorded as the row's old values.
    :ivar actual: the values the row has now (``None`` when the row is gone).
    """

    def __init__(
        self,
        message: str,
        *,
        sequence: int,
        table: str,
        key: Sequence[Any],
        expected: Mapping[str, Any],
        actual: Mapping[str, Any] | None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.sequence = sequence
        self.table = table
        self.key = tuple(key)
        self.expected = dict(expected)
        self.actual = None if actual is None else dict(actual)


class SchemaMismatchError(JournalError, sa_exc.InvalidRequestError):
    """The journal was recorded against another schema than the one it is replayed on.

    :ivar differences: one human-readable line per difference.
    """

    def __init__(
        self, message: str, *, differences: Sequence[str], path: str | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.differences = list(differences)


class SnapshotMissError(JournalError, LookupError):
    """An offline read that the query snapshot cannot answer (SPEC §9).

    The statement is not in the snapshot (or its entry is older than ``max_age``) and the
    database cannot be reached to answer it.

    :ivar statement: the statement that was not answered.
    :ivar sql: its SQL as text.
    """

    def __init__(self, message: str, *, statement: Any, sql: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.statement = statement
        self.sql = sql
