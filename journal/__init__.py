"""The orm-journal file format: durable, signed journals of recorded operations.

This package never imports SQLAlchemy; :mod:`orm_ext` builds on it.
"""

from __future__ import annotations

from journal.codec import EnumRef, OpaqueValue, Placeholder
from journal.exc import (
    JournalCorruptError,
    JournalError,
    JournalIncompleteError,
    JournalLockedError,
    JournalSignatureError,
)
from journal.reader import Batch, Journal, JournalHeader, Pickles
from journal.snapshot import Snapshot, SnapshotEntry
from journal.storage import FORMAT_VERSION, JournalWriter, Position

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "EnumRef",
    "Journal",
    "JournalCorruptError",
    "JournalError",
    "JournalHeader",
    "JournalIncompleteError",
    "JournalLockedError",
    "JournalSignatureError",
    "JournalWriter",
    "OpaqueValue",
    "Pickles",
    "Placeholder",
    "Position",
    "Snapshot",
    "SnapshotEntry",
]
