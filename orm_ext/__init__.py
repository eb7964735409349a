"""orm-journal's SQLAlchemy side: ``JournalingSession`` and everything it raises.

``journal`` (the file format) never imports SQLAlchemy; this package builds on it.
"""

from __future__ import annotations

from journal.exc import (
    JournalCorruptError,
    JournalError,
    JournalIncompleteError,
    JournalLockedError,
    JournalSignatureError,
)
from orm_ext.aio import AsyncJournalingSession
from orm_ext.exc import (
    DeferredOperationError,
    ReplayConflictError,
    SchemaMismatchError,
    SnapshotMissError,
)
from orm_ext.memo import QueryMemo
from orm_ext.recording import DeferredOperations
from orm_ext.references import Placeholder
from orm_ext.replay import ReplayResult
from orm_ext.scoped import AsyncScopedJournalingSession, ScopedJournalingSession
from orm_ext.service import ReplayService, ServiceEvent, ServiceSummary
from orm_ext.session import JournalingSession

__all__ = [
    "AsyncJournalingSession",
    "AsyncScopedJournalingSession",
    "DeferredOperationError",
    "DeferredOperations",
    "JournalCorruptError",
    "JournalError",
    "JournalIncompleteError",
    "JournalLockedError",
    "JournalSignatureError",
    "JournalingSession",
    "Placeholder",
    "QueryMemo",
    "ReplayConflictError",
    "ReplayResult",
    "ReplayService",
    "SchemaMismatchError",
    "ScopedJournalingSession",
    "ServiceEvent",
    "ServiceSummary",
    "SnapshotMissError",
]
