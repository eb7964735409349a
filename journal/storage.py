"""The journal file on disk: one SQLite file, written through ``sqlitedict``.

Layout (format version 1). The SQLite header carries ``application_id`` = ``ORMJ`` and
``user_version`` = the format version, so a foreign SQLite file is recognised before any
record is read. One table, ``records``, maps a zero-padded sequence number to a record::

    record = tag (32 bytes) || kind (1 byte) || operation count (4 bytes, big endian) || body

* record 0, kind ``H``: the header, a JSON object;
* records 1..n, kind ``B``: a chunk of one batch, ``codec.encode([batch number, operations])``;
* the last record of a sealed journal, kind ``S``: the seal, a JSON object with the counts
  and the digest of the chain.

``tag`` chains each record to the one before it (see :mod:`journal.signing`). The operation
count sits outside the body so that verification never needs to decode a value.

Everything that knows about SQLite, ``sqlitedict`` and file locks lives in this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import os
import platform
import queue
import shutil
import socket
import sqlite3
import struct
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, NoReturn

import sqlitedict

from journal import codec
from journal.exc import (
    JournalCorruptError,
    JournalError,
    JournalLockedError,
)
from journal.signing import GENESIS, TAG_SIZE, chain_tag, resolve_key

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "PIECE_SIZE",
    "SNAPSHOT_APPLICATION_ID",
    "JournalWriter",
    "Position",
    "RawRecord",
    "ReadConnection",
    "iter_raw_records",
    "open_readonly",
]

FORMAT_VERSION: Final = 1
APPLICATION_ID: Final = int.from_bytes(b"ORMJ", "big")
# Query snapshots (SPEC §9) share the format but not the identity: a snapshot is never
# taken for a journal (replayed), nor a journal for a snapshot (served as query results).
SNAPSHOT_APPLICATION_ID: Final = int.from_bytes(b"ORMS", "big")
TABLE: Final = "records"
KIND_HEADER: Final = b"H"
KIND_BATCH: Final = b"B"
KIND_SEAL: Final = b"S"
_PREFIX = struct.Struct(">cI")
PREFIX_SIZE: Final = TAG_SIZE + _PREFIX.size
# A batch is split into records of at most this many operations so that a reader never
# holds more than one chunk of a very large flush in memory at once.
CHUNK_OPERATIONS: Final = 1000
# How long a write may take before the journal is declared broken. Generous, because a
# batch waits for fsync; finite, because sqlitedict can otherwise wait forever.
WRITE_TIMEOUT: Final = 60.0
# How long closing a broken writer waits for the statement SQLite may still be running.
CLOSE_TIMEOUT: Final = 60.0
# Records per INSERT statement: two bound values each, within the SQLite library's limit
# (999 before SQLite 3.32, 32,766 since). With a current SQLite a batch of up to a million
# operations is a single statement.
with contextlib.closing(sqlite3.connect(":memory:")) as _probe:
    _ROWS_PER_STATEMENT: Final = min(
        1000, _probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 2
    )
del _probe


def key_for(sequence: int) -> str:
    """Return the table key of record ``sequence``; zero padding keeps text order numeric."""
    return f"{sequence:012d}"


def library_version() -> str:
    try:
        return metadata.version("orm-journal")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Position:
    """A point in a journal being written, to rewind to (see :meth:`JournalWriter.rewind`)."""

    records: int
    operations: int
    batches: int
    tag: bytes
    pickled: int = 0


@dataclass(frozen=True)
class RawRecord:
    """One record as stored: its bytes, not yet verified nor decoded.

    ``body`` and ``signed_part`` are views into the stored value, so that a record holding
    a very large value is not copied again to be checked and decoded. A batch record over
    ``PIECE_SIZE`` bytes comes without them (see :func:`iter_raw_records`): its signed
    part is read piece by piece by :meth:`signed_pieces`, or whole by :meth:`loaded`.
    """

    sequence: int
    tag: bytes
    kind: bytes
    operations: int
    body: memoryview
    signed_part: memoryview
    pieces: Callable[[], Iterator[bytes]] | None = None
    load: Callable[[], RawRecord] | None = None

    def signed_pieces(self) -> Iterable[bytes | memoryview]:
        """The signed part (kind, count, body), in pieces of at most ``PIECE_SIZE`` bytes."""
        return (self.signed_part,) if self.pieces is None else self.pieces()

    def loaded(self) -> RawRecord:
        """This record with ``body`` and ``signed_part``, read from the file if need be."""
        return self if self.load is None else self.load()


class JournalWriter:
    """Create a journal file and append batches to it; see :meth:`create`.

    A writer holds an exclusive lock on the file until :meth:`seal` or :meth:`close`.
    Every :meth:`append` returns only once its batch is on disk.
    """

    def __init__(
        self,
        path: Path,
        lock_fd: int,
        store: sqlitedict.SqliteDict,
        key: bytes | None,
        journal_id: str,
        pickles: bool,
        application_id: int = APPLICATION_ID,
    ) -> None:
        self.path = path
        self._application_id = application_id
        self.journal_id = journal_id
        self._lock_fd = lock_fd
        self._store = store
        self._key = key
        self._pickles = pickles
        self._records = 0
        self._operations = 0
        self._batches = 0
        # Batch records holding a dill value: the seal says how many, so that a reader can
        # refuse a journal it must not unpickle before it decodes or applies anything.
        self._pickled = 0
        self._tag = GENESIS
        self._broken: str | None = None
        self._closed = False
        self._sealed = False

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        key: bytes | str | None = None,
        versions: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
        pickles: bool = True,
        application_id: int = APPLICATION_ID,
    ) -> JournalWriter:
        """Create a new journal at ``path`` and write its header durably.

        The file is created with mode 0600, never through a symbolic link.

        :param overwrite: replace an existing file (a new file is renamed over it); without
            it an existing file raises ``FileExistsError`` (an unreplayed journal is data).
        :param key: HMAC key; ``None`` falls back to ``$ORM_JOURNAL_KEY``; no key gives an
            unsigned journal protected by a plain checksum chain.
        :param versions: extra component versions for the header (e.g. SQLAlchemy's).
        :param meta: JSON-compatible data for the header (e.g. a schema fingerprint).
        :param pickles: with ``False`` a value that needs ``dill`` raises ``TypeError`` in
            :meth:`append` instead of being stored.
        :param application_id: the SQLite application id marking the kind of file
            (``SNAPSHOT_APPLICATION_ID`` for a query snapshot).
        :raises JournalLockedError: another writer holds ``path``.
        """
        target = Path(path)
        signing_key = resolve_key(key)
        lock_fd = _create_locked(target, overwrite=overwrite)
        try:
            store = sqlitedict.SqliteDict(
                os.fspath(target),
                tablename=TABLE,
                flag="c",
                autocommit=False,
                journal_mode="WAL",
                encode=sqlitedict.identity,
                decode=sqlitedict.identity,
                outer_stack=False,
            )
        except Exception as err:
            _discard(target)
            os.close(lock_fd)
            raise JournalError(
                f"cannot create journal {target}: {err}; check the directory is writable "
                "and its file system has free space",
                path=target,
            ) from err
        journal_id = str(uuid.uuid4())
        writer = cls(target, lock_fd, store, signing_key, journal_id, pickles, application_id)
        try:
            _check_same_file(target, lock_fd)
            writer._configure()
            header = {
                "format": FORMAT_VERSION,
                "journal_id": journal_id,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "host": socket.gethostname(),
                "signed": signing_key is not None,
                "versions": {
                    "orm_journal": library_version(),
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    **dict(versions or {}),
                },
                "meta": dict(meta or {}),
            }
            writer._write([(KIND_HEADER, 0, _json(header))])
        except BaseException:
            writer._abort()
            raise
        _fsync_directory(target.parent)
        return writer

    def _configure(self) -> None:
        # sqlitedict opens its connection with synchronous=OFF; a journal that acknowledges
        # a batch must have it on disk, so set FULL and read every setting back.
        self._call(f"PRAGMA application_id = {int(self._application_id)}")
        self._call(f"PRAGMA user_version = {FORMAT_VERSION}")
        self._call("PRAGMA synchronous = FULL")
        expected = {
            "journal_mode": "wal",
            "synchronous": 2,
            "application_id": self._application_id,
        }
        for pragma, value in expected.items():
            rows = self._call(f"PRAGMA {pragma}")
            actual = rows[0][0] if rows else None
            if actual != value:
                raise JournalError(
                    f"journal {self.path}: SQLite refused PRAGMA {pragma} = {value} "
                    f"(reads back {actual!r}); the file system may not support it",
                    path=self.path,
                )

    # -- state ----------------------------------------------------------------------------

    @property
    def operations(self) -> int:
        """Number of operations appended so far."""
        return self._operations

    @property
    def batches(self) -> int:
        """Number of batches appended so far."""
        return self._batches

    @property
    def sealed(self) -> bool:
        """Whether :meth:`seal` completed."""
        return self._sealed

    @property
    def pickles(self) -> bool:
        """Whether values that need ``dill`` may be stored (see :meth:`create`)."""
        return self._pickles

    def position(self) -> Position:
        """Return the current end of the journal, for a later :meth:`rewind`."""
        return Position(self._records, self._operations, self._batches, self._tag, self._pickled)

    # -- writing --------------------------------------------------------------------------

    def append(self, operations: Sequence[object]) -> int:
        """Append ``operations`` as one batch, durably and atomically; return the batch number.

        Either the whole batch is on disk when this returns, or an error is raised and
        none of it is visible to a reader.
        """
        self._check_writable()
        if not operations:
            return self._batches
        number = self._batches + 1
        pickled = 0

        def records() -> Iterator[tuple[bytes, int, bytes]]:
            nonlocal pickled
            for start in range(0, len(operations), CHUNK_OPERATIONS):
                chunk = operations[start : start + CHUNK_OPERATIONS]
                before = codec.pickles_encoded()
                body = codec.encode([number, list(chunk)], pickles=self._pickles)
                pickled += codec.pickles_encoded() != before
                yield KIND_BATCH, len(chunk), body

        self._write(records())
        self._batches = number
        self._pickled += pickled
        return number

    def rewind(self, position: Position) -> None:
        """Durably discard every record appended after ``position``.

        Used when the recorded unit of work is rolled back: the chain continues from the
        record at ``position`` as if nothing had been written since.
        """
        self._check_writable()
        if position.records > self._records:
            raise ValueError("cannot rewind forward")
        if position.records == self._records:
            return
        self._call("BEGIN IMMEDIATE")
        self._call(f'DELETE FROM "{TABLE}" WHERE key >= ?', (key_for(position.records),))
        self._commit()
        self._records = position.records
        self._operations = position.operations
        self._batches = position.batches
        self._tag = position.tag
        self._pickled = position.pickled

    def seal(self, *, meta: Mapping[str, Any] | None = None) -> None:
        """Write the seal record, fold the write-ahead log into the file and close it.

        :param meta: JSON-compatible data merged into the header's ``meta`` by readers
            (e.g. the schema fingerprint of the tables the journal touched).
        """
        self._check_writable()
        seal = {
            "records": self._records,
            "operations": self._operations,
            "batches": self._batches,
            "pickled": self._pickled,
            "digest": self._tag.hex(),
            "sealed_at": dt.datetime.now(dt.UTC).isoformat(),
            "meta": dict(meta or {}),
        }
        # A sealed journal must be one self-contained file that can be copied anywhere.
        # Fold the write-ahead log in before the seal exists: folding grows the file by
        # every batch, so a full disk fails here, while the journal is still truthfully
        # unsealed, rather than after a seal that an error then calls absent.
        self._fold(busy_ok=True)
        try:
            self._write([(KIND_SEAL, 0, _json(seal))])
        except JournalError as err:
            # A COMMIT that timed out may still complete: once the worker has finished,
            # the file says whether the journal is sealed, and the error must say so too.
            self.close()
            if _has_record(self.path, self._records):
                raise JournalError(
                    f"journal {self.path}: writing its seal record reported a failure "
                    f"({err.__cause__ or err}), but the record reached the file: the journal "
                    "is sealed and complete. Do not record it again: replay it as it is, "
                    "or copy it together with its -wal file",
                    path=self.path,
                ) from err
            raise
        try:
            # Only the seal's few pages are left to fold now.
            self._fold()
            mode = self._call("PRAGMA journal_mode = DELETE")[0][0]
            if mode != "delete":
                self._fail(RuntimeError(f"SQLite kept journal_mode {mode!r}"))
        except JournalError as err:
            raise JournalError(
                f"journal {self.path} is sealed and complete, but its write-ahead log could "
                f"not be folded into the file ({err.__cause__ or err}); do not record it "
                "again: replay it as it is, or copy it together with its -wal file",
                path=self.path,
            ) from err
        self.close()
        self._sealed = True

    def _fold(self, *, busy_ok: bool = False) -> None:
        busy, _, _ = self._call("PRAGMA wal_checkpoint(TRUNCATE)")[0]
        # A reader of the journal (``orm-journal inspect``, say) holds the log busy; before
        # the seal that is no failure: the fold after it is the one that must succeed.
        if busy and not busy_ok:
            raise JournalError(
                f"journal {self.path}: a reader holds its write-ahead log; close readers of "
                "the journal while it is sealed",
                path=self.path,
            )

    def close(self) -> None:
        """Close without sealing (an unsealed journal is refused by replay); idempotent."""
        self._close(discard=False)

    def _abort(self) -> None:
        # Creation failed before the header was on disk: what is left at the path is not
        # a journal, and would only make the next attempt fail with FileExistsError.
        self._close(discard=True)

    def _close(self, *, discard: bool) -> None:
        if self._closed:
            return
        self._closed = True
        worker = getattr(self._store, "conn", None)
        try:
            self._store.close(do_log=False, force=self._broken is not None)
            if worker is not None:
                # A forced close does not wait for the worker; the lock must outlast its
                # last write, or another writer could take over a file still being written.
                worker.join(CLOSE_TIMEOUT)
        except Exception:
            pass
        finally:
            # Still under the lock, so no other writer can have opened the path meanwhile.
            if discard:
                _discard(self.path)
            os.close(self._lock_fd)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise JournalError(
                f"journal {self.path} can no longer be written: {self._broken}; it keeps every "
                "batch acknowledged before the failure and stays unsealed",
                path=self.path,
            )
        if self._closed:
            raise JournalError(f"journal {self.path} is closed", path=self.path)

    def _write(self, records: Iterable[tuple[bytes, int, bytes]]) -> None:
        """Write ``records`` (kind, operation count, body) in one transaction, durably.

        A batch of at most ``_ROWS_PER_STATEMENT`` records (``CHUNK_OPERATIONS`` operations
        each) is one multi-row INSERT queued together with the COMMIT, so SQLite's worker
        thread is waited for once per batch. The connection sqlitedict opens (checked on
        2.1.0) lets Python's sqlite3 begin a transaction implicitly before the INSERT; the
        statement is atomic, so the COMMIT behind it commits all of the batch or none.
        A larger batch needs several statements. They run only after an explicit BEGIN is
        known to have succeeded, and the COMMIT is sent only once the last of them has run
        without error: sqlitedict's worker carries on after a failed statement, so a COMMIT
        queued behind it would make the rest of the batch visible.

        Anything that interrupts a write once it is sent (even ``KeyboardInterrupt``) marks
        the writer broken: the transaction left open must never be committed by the next
        batch.
        """
        sequence, tag, rows, operations = self._records, self._tag, [], 0
        # E.g. a value the codec refuses raises here: nothing was sent, the journal stays
        # as it was, and writable.
        for kind, count, body in records:
            signed_part = _PREFIX.pack(kind, count) + body
            tag = chain_tag(self._key, tag, sequence, signed_part)
            rows.append((key_for(sequence), sqlite3.Binary(tag + signed_part)))
            sequence += 1
            operations += count
        try:
            if len(rows) <= _ROWS_PER_STATEMENT:
                # Its replies are not read: an error of the INSERT is raised by the COMMIT.
                self._send(_insert_statement(len(rows)), _flat(rows))
            else:
                self._call("BEGIN IMMEDIATE")
                for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                    part = rows[start : start + _ROWS_PER_STATEMENT]
                    sent = self._send(_insert_statement(len(part)), _flat(part))
                # Raises the error of any of the statements, which all ran before the last.
                self._receive(sent)
            self._commit()
        except JournalError:
            raise
        except BaseException as interruption:
            self._broken = f"interrupted by {type(interruption).__name__}"
            raise
        self._records = sequence
        self._tag = tag
        self._operations += operations

    def _commit(self) -> None:
        # An explicit COMMIT statement rather than sqlitedict's commit(): a failing
        # "--commit--" request kills sqlitedict's worker thread and leaves the caller
        # waiting forever (sqlitedict issue 108); a failing statement is reported.
        self._call("COMMIT")

    def _call(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._receive(self._send(sql, args))

    def _send(self, sql: str, args: Sequence[object] = ()) -> queue.Queue[Any]:
        try:
            return _send(self._store, sql, args)
        except Exception as err:
            self._fail(err)

    def _receive(self, responses: queue.Queue[Any]) -> list[tuple[Any, ...]]:
        try:
            return _receive(self._store, responses, WRITE_TIMEOUT)
        except Exception as err:
            self._fail(err)

    def _fail(self, err: Exception) -> NoReturn:
        self._broken = f"{type(err).__name__}: {err}"
        if _NO_TRANSACTION in str(err):
            # sqlitedict keeps only the latest error: the INSERT's own (a full disk, say)
            # is in the log of its "sqlitedict" logger, not here.
            self._broken = (
                "SQLite rolled the batch back when writing it failed (the cause is logged "
                'by the "sqlitedict" logger)'
            )
        raise JournalError(
            f"journal {self.path}: a write failed ({self._broken}); the journal keeps every "
            "batch acknowledged before and stays unsealed, so replay will refuse it. Free "
            "space on its file system (or fix the file system) and record again",
            path=self.path,
        ) from err


# What SQLite says to a COMMIT after a failed statement ended the whole transaction.
_NO_TRANSACTION = "no transaction is active"


def _flat(rows: Sequence[tuple[str, object]]) -> list[object]:
    return [value for row in rows for value in row]


@functools.lru_cache(maxsize=64)
def _insert_statement(rows: int) -> str:
    # INSERT, not sqlitedict's REPLACE: a sequence number written twice is a bug to report.
    return f'INSERT INTO "{TABLE}" (key, value) VALUES ' + ", ".join(["(?, ?)"] * rows)


def _send(store: sqlitedict.SqliteDict, sql: str, args: Sequence[object]) -> queue.Queue[Any]:
    """Queue one statement for sqlitedict's worker thread; :func:`_receive` waits for it.

    Uses ``SqliteMultithread.execute(req, arg, res)`` with our own response queue so the
    wait can time out and notice a dead worker (checked on sqlitedict 2.1.0).
    """
    responses: queue.Queue[Any] = queue.Queue()
    store.conn.execute(sql, tuple(args), res=responses)
    return responses


def _receive(
    store: sqlitedict.SqliteDict, responses: queue.Queue[Any], timeout: float
) -> list[tuple[Any, ...]]:
    """Wait a bounded time for the rows of a statement sent by :func:`_send`; raise its error.

    ``_RESPONSE_NO_MORE`` is sqlitedict's end-of-response marker (checked on 2.1.0).
    """
    worker = store.conn
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while True:
        try:
            item = responses.get(timeout=0.05)
        except queue.Empty:
            if not worker.is_alive():
                raise JournalError("the journal's SQLite worker thread stopped") from None
            if time.monotonic() > deadline:
                raise JournalError(f"SQLite did not answer within {timeout:.0f} s") from None
            continue
        if item == sqlitedict._RESPONSE_NO_MORE:
            break
        rows.append(tuple(item))
    worker.check_raise_error()
    return rows


# O_NOFOLLOW: a journal is never written through a symbolic link someone left at its
# path (or at the name of a file being created); O_EXCL: always a file of our own.
_CREATE_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def _create_locked(path: Path, *, overwrite: bool) -> int:
    """Create a new, empty journal file at ``path`` and take the writer's lock on it.

    The file has mode 0600 (SQLite gives its side files the same mode): a journal holds
    application data. An existing file is replaced only with ``overwrite``, by a new file
    renamed over it, so neither it nor a symbolic link's target is ever truncated.
    Returns the locked descriptor.
    """
    try:
        fd = os.open(path, _CREATE_FLAGS, 0o600)
    except FileExistsError:
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(
                errno.EISDIR, "is a directory, not a journal", str(path)
            ) from None
        return _replace(path, overwrite=overwrite)
    try:
        _flock(fd, path)
    except BaseException:
        os.close(fd)
        raise
    try:
        # Nobody's write-ahead log: the path held no file, so these are stale or planted.
        _unlink_side_files(path)
    except BaseException:
        os.close(fd)
        _discard(path)
        raise
    return fd


def _replace(path: Path, *, overwrite: bool) -> int:
    """Put a new, locked journal file in place of the file or link at ``path``."""
    try:
        old: int | None = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno != errno.ELOOP:  # ELOOP: a symbolic link, replaced, never followed
            raise
        old = None
    try:
        if old is not None:
            # A journal still being written keeps its lock: never replace it.
            _flock(old, path)
        if not overwrite:
            raise FileExistsError(
                errno.EEXIST,
                "a journal (or another file) already exists there; replay or move it, or "
                "pass overwrite=True to replace it",
                str(path),
            )
        fresh = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
        fd = os.open(fresh, _CREATE_FLAGS, 0o600)
        try:
            _flock(fd, fresh)
            # A stale write-ahead log would be replayed into the new file by SQLite.
            _unlink_side_files(path)
            os.replace(fresh, path)
        except BaseException:
            os.close(fd)
            fresh.unlink(missing_ok=True)
            raise
        return fd
    finally:
        if old is not None:
            os.close(old)


def _flock(fd: int, path: Path) -> None:
    try:
        # flock, not fcntl locks: SQLite uses fcntl locks on this same file, and the two
        # kinds do not interfere; flock is released by the kernel when a writer dies.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalLockedError(
            f"journal {path} is being written by another process; wait for it to finish "
            "or choose another path",
            path=path,
        ) from None


def _unlink_side_files(path: Path) -> None:
    for suffix in _SIDE_FILES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _check_same_file(path: Path, fd: int) -> None:
    """Refuse to go on if ``path`` is no longer the file created and locked as ``fd``.

    SQLite opens the journal by name; someone who can write the directory could have put
    another file (or a link) there in between.
    """
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        named = None
    held = os.fstat(fd)
    if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        raise JournalError(
            f"journal {path} was replaced by another file while it was being created; "
            "record into a directory that only trusted users can write",
            path=path,
        )


def _has_record(path: Path, sequence: int) -> bool:
    """Whether record ``sequence`` is committed in the journal at ``path``; False if unreadable."""
    try:
        conn = open_readonly(path)
    except (OSError, JournalError):
        return False
    try:
        query = f'SELECT 1 FROM "{TABLE}" WHERE key = ?'
        return conn.query(query, (key_for(sequence),)).fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _discard(path: Path) -> None:
    # The file itself last: once it is gone another writer may create the path, and its
    # write-ahead log must not be the one removed here.
    _unlink_side_files(path)
    path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


# -- reading ------------------------------------------------------------------------------


# Longest a single step of reading may take (one statement, or one row of it). Reading a
# journal is an index walk; a file crafted to make SQLite work forever is refused instead.
READ_STEP_SECONDS: Final = 30.0
# SQLite virtual-machine instructions between two looks at the clock.
_PROGRESS_INSTRUCTIONS: Final = 10_000
# The whole schema of a journal, as sqlitedict creates it (checked on sqlitedict 2.1.0):
# anything else (a view, a trigger, another table or index) could make two reads of one
# file disagree, or make reading it run arbitrary SQL.
_SCHEMA: Final = frozenset(
    {
        ("table", TABLE, TABLE, f'CREATE TABLE "{TABLE}" (key TEXT PRIMARY KEY, value BLOB)'),
        ("index", f"sqlite_autoindex_{TABLE}_1", TABLE, None),
    }
)


class _Clock:
    """The deadline of the reading step in progress; SQLite's progress handler asks it."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + READ_STEP_SECONDS

    def arm(self) -> None:
        self.deadline = time.monotonic() + READ_STEP_SECONDS

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


class ReadConnection(sqlite3.Connection):
    """A connection that reads one journal from one snapshot, each step bounded in time.

    Opened by :func:`open_readonly`, which begins the read transaction that every later
    read of the connection shares, so verification and decoding see the same records.
    """

    clock: _Clock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = _Clock()
        # An interrupted statement raises sqlite3.OperationalError("interrupted").
        self.set_progress_handler(self.clock.expired, _PROGRESS_INSTRUCTIONS)

    def query(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        """Execute ``sql`` with a fresh deadline."""
        self.clock.arm()
        return self.execute(sql, args)


def open_readonly(
    path: str | os.PathLike[str], *, application_id: int = APPLICATION_ID
) -> ReadConnection:
    """Open a journal file read-only in one read transaction and check it is a journal.

    Checks the format identity and that the file holds exactly the format's table: a view,
    trigger or any other object is refused before a record is read.

    Reading goes straight to SQLite rather than through sqlitedict: sqlitedict issues
    ``PRAGMA journal_mode`` on every open, which would rewrite the file being read.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(errno.ENOENT, "no journal file at this path", str(target))
    if target.is_dir():
        raise JournalCorruptError(
            f"{target} is a directory, not a journal file; pass the journal's file path",
            path=target,
        )
    if not target.is_file():
        # A FIFO or a device would block SQLite's open forever, or feed it endless bytes.
        raise JournalCorruptError(
            f"{target} is not a regular file (a pipe, socket or device), so not a journal",
            path=target,
        )
    uri = f"{target.resolve().as_uri().replace('file://', 'file:', 1)}?mode=ro"
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, factory=ReadConnection
        )
    except sqlite3.Error as err:
        raise JournalCorruptError(f"cannot open journal {target}: {err}", path=target) from err
    assert isinstance(conn, ReadConnection)
    try:
        found_id, version = _identity(conn)
    # A message or schema text that is not UTF-8 fails in the sqlite3 module, not SQLite.
    except (sqlite3.Error, UnicodeDecodeError) as err:
        conn.close()
        if not _left_by_a_dead_writer(target):
            raise _unreadable(target, err) from err
        conn = _recovered_copy(target)
        try:
            found_id, version = _identity(conn)
        except (sqlite3.Error, UnicodeDecodeError) as copy_err:
            conn.close()
            raise _unreadable(target, copy_err) from copy_err
    try:
        if found_id != application_id:
            raise JournalCorruptError(_wrong_kind(target, found_id, application_id), path=target)
        if version != FORMAT_VERSION:
            raise JournalCorruptError(
                f"{target} has journal format version {version}; this orm-journal reads "
                f"version {FORMAT_VERSION}: use the orm-journal release that wrote it",
                path=target,
            )
        _check_schema(conn, target)
    except BaseException:
        conn.close()
        raise
    return conn


def _wrong_kind(target: Path, found: int, expected: int) -> str:
    if found == SNAPSHOT_APPLICATION_ID:
        return (
            f"{target} is an orm-journal query snapshot, not a journal: it holds query "
            "results, not operations to replay"
        )
    if found == APPLICATION_ID and expected == SNAPSHOT_APPLICATION_ID:
        return (
            f"{target} is an orm-journal journal, not a query snapshot: pass another path "
            "as snapshot="
        )
    return f"{target} is not an orm-journal file (an empty file or another SQLite database)"


def _unreadable(target: Path, err: sqlite3.Error | UnicodeDecodeError) -> JournalCorruptError:
    if "interrupted" in str(err):
        return JournalCorruptError(
            f"{target}: reading it took over {READ_STEP_SECONDS:.0f} s for one step; the "
            "file is damaged or crafted, not a journal to replay",
            path=target,
        )
    return JournalCorruptError(f"{target} is not an orm-journal file ({err})", path=target)


def _check_schema(conn: ReadConnection, target: Path) -> None:
    try:
        found = {
            tuple(row) for row in conn.query("SELECT type, name, tbl_name, sql FROM sqlite_master")
        }
    except (sqlite3.Error, UnicodeDecodeError) as err:
        raise _unreadable(target, err) from err
    if found != _SCHEMA:
        extra = sorted(f"{kind} {name!r}" for kind, name, _, _ in found - _SCHEMA)
        missing = sorted(f"{kind} {name!r}" for kind, name, _, _ in _SCHEMA - found)
        detail = ", ".join(
            [*(f"unexpected {e}" for e in extra), *(f"missing {m}" for m in missing)]
        )
        raise JournalCorruptError(
            f"{target} is not an orm-journal file as written by orm-journal ({detail}); it "
            "was altered: do not replay it",
            path=target,
        )


def _identity(conn: ReadConnection) -> tuple[int, int]:
    """Begin the connection's read transaction; return the file's SQLite application id
    and user version (our format version)."""
    conn.query("BEGIN")
    application_id = conn.query("PRAGMA application_id").fetchone()[0]
    version = conn.query("PRAGMA user_version").fetchone()[0]
    return application_id, version


def _left_by_a_dead_writer(target: Path) -> bool:
    """Whether ``target`` has the rollback journal or write-ahead log of a dead writer.

    :raises JournalLockedError: a live writer holds the journal: its files are changing,
        and a copy of them could be torn.
    """
    if not any(Path(f"{target}{suffix}").exists() for suffix in ("-journal", "-wal")):
        return False
    fd = os.open(target, os.O_RDONLY)
    try:
        # The writer's lock (see _lock); taken shared and let go at once.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise JournalLockedError(
            f"journal {target} is being written by another process; read it once that "
            "process has finished",
            path=target,
        ) from None
    finally:
        os.close(fd)
    return True


class _RecoveredCopy(ReadConnection):
    """A connection to a private copy of a journal; the copy goes when it is closed."""

    scratch = ""

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _recovered_copy(target: Path) -> ReadConnection:
    """Open a copy of a journal whose writer died in the middle of a transaction.

    A writer killed while SQLite changes the file (sealing switches it out of WAL mode,
    for one) leaves a hot rollback journal or a write-ahead log whose index must be
    rebuilt. Only a connection that may write can recover those, and reading must never
    change the journal: so SQLite recovers a private copy, which is read instead.
    """
    scratch = tempfile.mkdtemp(prefix="orm-journal-read-")
    copy = Path(scratch) / target.name
    try:
        for suffix in ("", "-wal", "-journal"):
            source = Path(f"{target}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{copy}{suffix}")
        conn = sqlite3.connect(
            copy, isolation_level=None, check_same_thread=False, factory=_RecoveredCopy
        )
    except (OSError, sqlite3.Error) as err:
        shutil.rmtree(scratch, ignore_errors=True)
        raise JournalCorruptError(
            f"cannot read journal {target}: its writer stopped mid-write and a copy to "
            f"recover from could not be made ({err}); free space in {tempfile.gettempdir()} "
            "and try again",
            path=target,
        ) from err
    assert isinstance(conn, _RecoveredCopy)
    conn.scratch = scratch
    # Also when a caller drops the connection without closing it.
    weakref.finalize(conn, shutil.rmtree, scratch, True)
    return conn


# Records larger than this are read in pieces of this size where only their bytes are
# needed (verification): checking a journal never holds a whole large value in memory.
PIECE_SIZE: Final = 1 << 20


def iter_raw_records(
    conn: ReadConnection, path: Path, *, descending: bool = False, limit: int | None = None
) -> Iterator[RawRecord]:
    """Yield stored records in sequence order (bytes only; nothing is decoded).

    Each row must come within ``READ_STEP_SECONDS`` of asking for it. A batch record over
    ``PIECE_SIZE`` bytes comes without ``body``: it is read only when asked, piece by
    piece through :meth:`RawRecord.signed_pieces` or whole through
    :meth:`RawRecord.loaded` (SQLite's incremental blob I/O, in the same read
    transaction, which also spares SQLite's own copy of the value).
    """
    order = "DESC" if descending else "ASC"
    # length() and typeof() of a column do not load its content; the value itself is read
    # here only when it is small.
    sql = (
        f"SELECT key, CASE WHEN length(value) <= {PIECE_SIZE} THEN value END, rowid, "
        f'typeof(value), length(value) FROM "{TABLE}" ORDER BY key {order}'
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    try:
        cursor = conn.query(sql)
        while True:
            conn.clock.arm()
            row = cursor.fetchone()
            if row is None:
                return
            key, stored, rowid, kind, size = row
            if stored is None and kind == "blob":
                yield _large(conn, path, key, rowid, size)
            else:
                yield _split(key, stored, path)
    # A key whose bytes are not UTF-8 fails in the sqlite3 module, not in SQLite.
    except (sqlite3.Error, UnicodeDecodeError) as err:
        if isinstance(err, sqlite3.Error) and "interrupted" in str(err):
            raise _unreadable(path, err) from err
        raise JournalCorruptError(
            f"journal {path} cannot be read: {err}; the file is damaged or not a journal",
            path=path,
        ) from err


def _split(key: object, value: object, path: Path) -> RawRecord:
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if (
        not isinstance(key, str)
        or not (key.isascii() and key.isdigit())
        or not isinstance(value, bytes)
    ):
        raise JournalCorruptError(f"journal {path} holds a malformed record {key!r}", path=path)
    if len(value) < PREFIX_SIZE:
        raise JournalCorruptError(f"journal {path}: record {int(key)} is truncated", path=path)
    kind, count = _PREFIX.unpack_from(value, TAG_SIZE)
    view = memoryview(value)
    return RawRecord(
        sequence=int(key),
        tag=value[:TAG_SIZE],
        kind=kind,
        operations=count,
        body=view[PREFIX_SIZE:],
        signed_part=view[TAG_SIZE:],
    )


def _large(conn: ReadConnection, path: Path, key: object, rowid: int, size: int) -> RawRecord:
    """A record too large to read whole: its prefix now, the rest on demand, in pieces."""
    with conn.blobopen(TABLE, "value", rowid, readonly=True) as blob:
        head = blob.read(PREFIX_SIZE)
        record = _split(key, head, path)
        if record.kind != KIND_BATCH:
            # Headers and seals are decoded as JSON; only batches are verified in pieces.
            blob.seek(0)
            return _split(key, blob.read(), path)

    def reopen() -> sqlite3.Blob:
        blob = conn.blobopen(TABLE, "value", rowid, readonly=True)
        if len(blob) != size:
            blob.close()
            raise JournalCorruptError(
                f"journal {path}: record {record.sequence} changed while it was read",
                path=path,
            )
        return blob

    def pieces() -> Iterator[bytes]:
        with reopen() as blob:
            blob.seek(TAG_SIZE)
            while piece := blob.read(PIECE_SIZE):
                yield piece

    def load() -> RawRecord:
        with reopen() as blob:
            return _split(key, blob.read(), path)

    empty = memoryview(b"")
    return RawRecord(
        record.sequence, record.tag, record.kind, record.operations, empty, empty, pieces, load
    )


def decode_json(record: RawRecord, path: Path) -> dict[str, Any]:
    """Decode a header or seal body (plain JSON: nothing executable)."""
    try:
        value = json.loads(bytes(record.body))
    except (ValueError, RecursionError) as err:
        # Runs before verification, on bytes anyone may have written: a value error is
        # also an over-long integer, and nesting deep enough exhausts the stack.
        raise JournalCorruptError(
            f"journal {path}: record {record.sequence} is not valid JSON", path=path
        ) from err
    if not isinstance(value, dict):
        raise JournalCorruptError(
            f"journal {path}: record {record.sequence} is not a JSON object", path=path
        )
    return value
