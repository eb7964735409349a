"""The SQLAlchemy half of the orm-journal exception tree (SPEC §2).

Each class is a :class:`journal.JournalError` and also the SQLAlchemy exception a caller of
a plain session would catch for the same kind of failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

from journal.exc import JournalError

__all__ = [
    "ConflictKind",
    "DeferredOperationError",
    "ReplayConflictError",
    "SchemaMismatchError",
    "SnapshotMissError",
]

# The kinds of SQLite's session-extension changeset conflicts, folded to the three a replay
# can meet: DATA (old values differ), NOTFOUND (the row is gone) and CONSTRAINT (also
# CONFLICT, an insert whose key is taken, and FOREIGN_KEY).
ConflictKind = Literal["data", "notfound", "constraint"]


class DeferredOperationError(JournalError, sa_exc.InvalidRequestError):
    """Misuse of a deferred block, or a construct inside it that cannot be replayed faithfully."""


class ReplayConflictError(JournalError, orm_exc.StaleDataError):
    """A recorded operation no longer fits the row in the database.

    :ivar kind: ``"data"`` (the row's values differ from the recorded old values),
        ``"notfound"`` (the row is gone) or ``"constraint"`` (an insert or update hits a
        unique or foreign-key constraint).
    :ivar sequence: the operation's sequence number in the journal.
    :ivar table: the table of the row.
    :ivar key: the row's primary key (or the placeholder it resolved from); for a
        constraint conflict of an insert, the key values the journal gave the row (empty
        when the database assigns it).
    :ivar expected: the values the journal recorded as the row's old values.
    :ivar actual: the values the row has now (``None`` when the row is gone, and for a
        constraint conflict).
    :ivar columns: the columns whose value differs between ``expected`` and ``actual``.
    :ivar operation: the kind of the recorded operation (``"update"``, ``"delete"``,
        ``"insert"``, ...).
    :ivar detail: what conflicts, in words (the row differs in ..., the row is gone, the
        database refuses it ...).
    :ivar decision: what became of the operation: ``"fail"``, ``"overwrite"`` or
        ``"skip"`` (``None`` until decided).
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
        kind: ConflictKind | None = None,
        operation: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message, path=path)
        self.kind: ConflictKind = kind or ("notfound" if actual is None else "data")
        self.operation = operation
        self.detail = detail
        self.decision: Literal["fail", "overwrite", "skip"] | None = None
        self.sequence = sequence
        self.table = table
        self.key = tuple(key)
        self.expected = dict(expected)
        self.actual = None if actual is None else dict(actual)
        self.columns: tuple[str, ...] = (
            ()
            if actual is None
            else tuple(k for k in self.expected if k not in actual or actual[k] != self.expected[k])
        )


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
