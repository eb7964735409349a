"""The storage half of the orm-journal exception tree (SPEC §2).

Every error the journal file can raise is a :class:`JournalError`; each subclass also
inherits the built-in exception a caller would naturally catch, so ``except ValueError``
keeps working for code that does not know about journals.
"""

from __future__ import annotations

import os


class JournalError(Exception):
    """Root of every orm-journal error.

    ``path`` is the journal file concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = os.fspath(path) if path is not None else None


class JournalCorruptError(JournalError, ValueError):
    """Not a journal, truncated, failed its checksum chain, or an unknown format version."""


class JournalSignatureError(JournalError, ValueError):
    """A bad, missing or unverifiable HMAC signature."""


class JournalIncompleteError(JournalError, ValueError):
    """The journal was never sealed: recording raised or the recording process died."""


class JournalLockedError(JournalError, BlockingIOError):
    """Another process holds the journal open for writing."""
