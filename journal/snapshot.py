"""Query snapshot files (SPEC §9): the memo's answers, persisted for offline reads.

A snapshot is a file of the journal family (same container, format version, checksum or
HMAC chain, seal, 0600, never written through a link) with its own SQLite application id,
so a snapshot is never replayed and a journal never served as query results. Its records
hold entries instead of operations, one per statement::

    entry = [key, sql, tables, read_at, row count, rows]

``key`` is the statement's key (64 hex digits, computed by :mod:`orm_ext`), ``sql`` its
SQL as text (for people: it is never executed), ``tables`` the lower-cased names of the
tables it read, ``read_at`` an ISO 8601 UTC timestamp, ``rows`` the codec's encoding of
``[column names, rows]``. The rows stay encoded until a statement asks for them, so opening
a large snapshot decodes none of them. The header's ``meta`` holds the schema fingerprint
of every table the entries read.

A snapshot is a cache: it is rewritten whole (a new file renamed over the old one) when
its entries change, and never holds a pickled value, so nothing in it can run code.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from journal import codec
from journal.exc import JournalCorruptError, JournalError, JournalSignatureError
from journal.reader import Journal
from journal.storage import SNAPSHOT_APPLICATION_ID, JournalWriter

__all__ = ["Snapshot", "SnapshotEntry", "is_snapshot", "write_snapshot"]

SNAPSHOT_KIND: Final = "query-snapshot"
_KEY = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = 6


@dataclass(frozen=True)
class SnapshotEntry:
    """One statement's answer as a snapshot stores it; ``rows()`` decodes its rows.

    :ivar key: the statement's key (64 lower-case hex digits).
    :ivar sql: the statement's SQL, for display only.
    :ivar tables: the lower-cased names of the tables it read.
    :ivar read_at: when the database answered it (UTC).
    :ivar row_count: how many rows it returned.
    """

    key: str
    sql: str
    tables: tuple[str, ...]
    read_at: dt.datetime
    row_count: int
    payload: bytes

    @classmethod
    def of_rows(
        cls,
        key: str,
        sql: str,
        tables: Iterable[str],
        read_at: dt.datetime,
        columns: list[str],
        rows: list[tuple[Any, ...]],
    ) -> SnapshotEntry:
        """Encode ``rows`` into a new entry.

        :raises TypeError: a value that is not a standard SQL value (it would need dill).
        """
        # Rows as arrays, not tuples (a codec extension each): they decode at C speed.
        payload = codec.encode([columns, [list(row) for row in rows]], pickles=False)
        return cls(key, sql, tuple(sorted(tables)), read_at, len(rows), payload)

    def age(self, now: dt.datetime | None = None) -> dt.timedelta:
        """How long ago the database answered the statement."""
        return (now or dt.datetime.now(dt.UTC)) - self.read_at

    def rows(
        self, path: str | os.PathLike[str] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Decode the column names and rows; nothing is imported or unpickled.

        An enum member is rebuilt only from a class its program has already imported.

        :raises JournalCorruptError: the rows are malformed, or hold a value a snapshot
            never holds (a pickle, an enum of a class not imported).
        """
        try:
            # Trusted decoding that refuses pickles: enum members only of classes the
            # program has imported, and a pickle (which snapshots never hold) raises.
            columns, rows = codec.decode(self.payload, refuse_pickles=True)
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise ValueError("column names are not a list of strings")
            if not isinstance(rows, list) or len(rows) != self.row_count:
                raise ValueError("the row count does not match")
            width = len(columns)
            if not all(type(row) is list and len(row) == width for row in rows):
                raise ValueError("a row does not have one value per column")
        except (JournalError, ValueError, TypeError) as err:
            what = "a pickled value" if isinstance(err, JournalSignatureError) else err
            raise JournalCorruptError(
                f"query snapshot {path}: the entry of statement {self.sql!r} is malformed "
                f"({what}); delete the snapshot and take it again",
                path=path,
            ) from err
        return columns, list(map(tuple, rows))

    def record(self) -> list[Any]:
        """The entry as stored in the file."""
        return [
            self.key,
            self.sql,
            list(self.tables),
            self.read_at.isoformat(),
            self.row_count,
            self.payload,
        ]


class Snapshot(Journal):
    """A query snapshot opened for reading; never modifies the file.

    Everything :class:`journal.Journal` offers (header, :meth:`verify`, one consistent
    read) plus :meth:`entries`, which verifies the whole file before decoding anything.

    >>> with Snapshot("reads.snapshot", key=secret) as snap:   # doctest: +SKIP
    ...     for entry in snap.entries():
    ...         print(entry.sql, entry.row_count, entry.age())

    :raises JournalCorruptError: not a snapshot (a journal, another file), damaged, or an
        unknown format version.
    """

    _application_id = SNAPSHOT_APPLICATION_ID

    def entries(self) -> list[SnapshotEntry]:
        """Verify the snapshot, then return its entries (rows still encoded).

        :raises JournalSignatureError: signed and the key is missing or wrong; unsigned
            while a key is configured.
        :raises JournalCorruptError: damaged, edited, or malformed.
        :raises JournalIncompleteError: never sealed (its writer died).
        """
        self.verify()
        found: dict[str, SnapshotEntry] = {}
        for batch in self.batches(pickles="opaque"):
            for record in batch.operations:
                entry = self._entry(record)
                if entry.key in found:
                    raise JournalCorruptError(
                        f"query snapshot {self.path} holds statement {entry.sql!r} twice; "
                        "the file was altered",
                        path=self.path,
                    )
                found[entry.key] = entry
        return list(found.values())

    def _entry(self, record: Any) -> SnapshotEntry:
        try:
            if not isinstance(record, list) or len(record) != _FIELDS:
                raise ValueError("not an entry")
            key, sql, tables, read_at, count, payload = record
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ValueError("malformed key")
            if not isinstance(sql, str) or not isinstance(payload, bytes):
                raise ValueError("malformed statement or rows")
            if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
                raise ValueError("malformed table list")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError("malformed row count")
            if not isinstance(read_at, str):
                raise ValueError("malformed time")
            when = dt.datetime.fromisoformat(read_at)
            if when.tzinfo is None:
                raise ValueError("a time without a time zone")
        except (ValueError, TypeError) as err:
            raise JournalCorruptError(
                f"query snapshot {self.path} holds a malformed entry ({err}); the file was "
                "altered or damaged: delete it and take the snapshot again",
                path=self.path,
            ) from err
        return SnapshotEntry(key, sql, tuple(tables), when, count, payload)

    def __enter__(self) -> Snapshot:
        return self

    def __repr__(self) -> str:
        return f"<Snapshot {self.path} id={self.journal_id} {self.state}>"


def is_snapshot(path: str | os.PathLike[str]) -> bool:
    """Whether the regular file at ``path`` says it is a query snapshot (its SQLite header's
    application id); False for anything else, including what cannot be read."""
    try:
        with open(path, "rb") as file:
            head = file.read(_SQLITE_HEADER)
    except OSError:
        return False
    return (
        len(head) == _SQLITE_HEADER
        and head.startswith(b"SQLite format 3\x00")
        and int.from_bytes(head[68:72], "big") == SNAPSHOT_APPLICATION_ID
    )


# The SQLite file header holds the application id at offset 68 (sqlite.org/fileformat.html).
_SQLITE_HEADER: Final = 100


def write_snapshot(
    path: str | os.PathLike[str],
    entries: Iterable[SnapshotEntry],
    *,
    key: bytes | str | None,
    meta: Mapping[str, Any],
    versions: Mapping[str, str] | None = None,
) -> None:
    """Write ``entries`` as a new snapshot and rename it over ``path``, durably.

    The new file is complete and sealed before it replaces the old one, so a reader (or a
    crash) sees the old snapshot or the new one, never a part. A symbolic link at ``path``
    is replaced, never followed.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"query snapshot {target} is a directory; pass a file path")
    scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex}.new")
    writer = JournalWriter.create(
        scratch,
        key=key,
        meta={"kind": SNAPSHOT_KIND, **meta},
        versions=versions,
        pickles=False,
        application_id=SNAPSHOT_APPLICATION_ID,
    )
    try:
        writer.append([entry.record() for entry in entries])
        writer.seal()
        os.replace(scratch, target)
    except BaseException as err:
        writer.close()
        scratch.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise JournalError(
                f"cannot write query snapshot {target}: {err}; check the directory is "
                "writable and has free space",
                path=target,
            ) from err
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
