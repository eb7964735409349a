"""The replay service's spool directory: which journals are ready, and moving them out.

A spool is a directory that recording workers drop journals (``*.dbm``) into, with two
folders the service fills: ``applied/`` and ``failed/`` (each failed journal with a
``NAME.json`` beside it, see :mod:`orm_ext.failures`). This module knows about files
only; what the database says is :mod:`orm_ext.service`'s business.

Several replayers may share one spool, so every move here is idempotent: a journal that
is no longer where it was has been moved by another replayer, and that is no error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from journal import Journal, JournalError, JournalLockedError

__all__ = ["SIDE_SUFFIXES", "Ready", "Spool"]

# SQLite's side files of a journal: its write-ahead log and index, its rollback journal.
# A sealed journal has none; a writer killed mid-seal can leave them, and the reader
# needs them beside the file to recover it, so they travel with it.
SIDE_SUFFIXES: Final = ("-wal", "-shm", "-journal")
_NEVER: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Ready:
    """A sealed journal no writer holds: the service may replay it."""

    path: Path
    journal_id: str
    sealed_at: dt.datetime


# What a file's header said, kept while the file is unchanged: (inode, size, mtime) ->
# (journal id, seal time), or None for a journal that is not sealed yet.
_Seen = tuple[str, dt.datetime] | None


class Spool:
    """The journals of ``directory`` and its ``applied/`` and ``failed/`` folders.

    :param directory: the spool; it must exist. ``applied/`` and ``failed/`` are created.
    :param key: HMAC key to open signed journals with (``None``: ``$ORM_JOURNAL_KEY``).
    :raises NotADirectoryError: ``directory`` is not a directory.
    """

    def __init__(self, directory: str | os.PathLike[str], *, key: bytes | str | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR,
                "the replay service's spool must be an existing directory; create it or "
                "pass the directory the recording workers write their journals into",
                str(self.directory),
            )
        self.applied = self.directory / "applied"
        self.failed = self.directory / "failed"
        self.applied.mkdir(exist_ok=True)
        self.failed.mkdir(exist_ok=True)
        self._key = key
        self._seen: dict[tuple[str, int, int, int], _Seen] = {}

    def ready(self) -> list[Ready]:
        """The sealed journals nobody is writing, in the order they were sealed.

        A journal whose writer still holds its lock, or that is not sealed, is left out
        (and looked at again on the next call). A file that cannot be opened as a journal
        is included with the latest possible seal time: replaying it reports why it fails.
        """
        found: list[Ready] = []
        seen: dict[tuple[str, int, int, int], _Seen] = {}
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(".dbm") or entry.name.startswith("."):
                continue  # side files, our folders, and a writer's hidden temporary files
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # moved by another replayer meanwhile
            if not entry.is_file(follow_symlinks=False) or st.st_size == 0:
                # Empty: a writer has just created it and is about to take its lock; even
                # a look at its lock now could make the writer's own attempt fail.
                continue
            mark = (entry.name, st.st_ino, st.st_size, st.st_mtime_ns)
            if mark in self._seen:
                state = self._seen[mark]
            elif _writer_holds(Path(entry.path)):
                continue
            else:
                try:
                    state = self._read(Path(entry.path))
                except FileNotFoundError:
                    continue
                except JournalLockedError:
                    continue
            seen[mark] = state
            if state is not None:
                found.append(Ready(Path(entry.path), state[0], state[1]))
        self._seen = seen
        found.sort(key=lambda r: (r.sealed_at, r.path.name))
        return found

    def _read(self, path: Path) -> _Seen:
        try:
            with Journal(path, key=self._key) as journal:
                if not journal.sealed:
                    return None
                sealed_at = journal.header.sealed_at
                return journal.journal_id, _parse_time(sealed_at)
        except (JournalLockedError, FileNotFoundError):
            raise
        except (JournalError, OSError):
            # Replay will refuse it again and say why, which goes into failed/NAME.json.
            return "(unreadable)", _NEVER

    def move(self, path: Path, folder: Path, journal_id: str) -> Path | None:
        """Move a journal (and any side files) into ``folder``; None if it was already gone.

        Idempotent and crash-safe: the journal is linked into ``folder`` and then unlinked
        from the spool, so it is never lost and never in neither place; a replayer that
        finds it in both (it died in between, or another replayer moved it at the same
        time) just removes the spool's name. A name taken in ``folder`` by another journal
        gets the journal id added.
        """
        target = self.target(path, folder, journal_id)
        try:
            _link(path, target)
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # A replayer that died between the two steps of moving it to the other folder
        # left it there too; this move is the one that counts now.
        for other in {self.applied, self.failed} - {folder}:
            stale = other / target.name
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(stale, target):
                    os.unlink(stale)
                    Path(f"{stale}.json").unlink(missing_ok=True)
        for suffix in SIDE_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{target}{suffix}")
        _fsync_directory(folder)
        _fsync_directory(self.directory)
        return target

    def target(self, path: Path, folder: Path, journal_id: str) -> Path:
        """Where :meth:`move` puts ``path`` in ``folder``."""
        target = folder / path.name
        try:
            same = target.exists() and os.path.samefile(path, target)
        except FileNotFoundError:
            same = False
        if target.exists() and not same:
            target = folder / f"{path.stem}.{journal_id}{path.suffix}"
        return target

    @contextlib.contextmanager
    def hold(self, path: Path) -> Iterator[bool]:
        """Hold ``path`` while it is replayed; yields False if someone else holds it.

        The lock is the writer's own (flock on the file), so replayers sharing the spool
        pass over a journal one of them is applying without asking the database, and a
        file that was moved away meanwhile (another replayer) counts as held. Only an
        optimisation: the ledger decides what is applied.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                named = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                named = None
            held = os.fstat(fd)
            # Locked after another replayer moved it out: this name is no longer it.
            yield named is not None and (named.st_dev, named.st_ino) == (
                held.st_dev,
                held.st_ino,
            )
        finally:
            os.close(fd)

    def tidy(self) -> None:
        """Move side files whose journal was moved out (a replayer died in between)."""
        for entry in os.scandir(self.directory):
            for suffix in SIDE_SUFFIXES:
                if entry.name.endswith(f".dbm{suffix}"):
                    main = entry.name[: -len(suffix)]
                    if (self.directory / main).exists():
                        continue
                    for folder in (self.applied, self.failed):
                        if (folder / main).exists():
                            with contextlib.suppress(FileNotFoundError):
                                os.replace(entry.path, folder / entry.name)
                            break


def _writer_holds(path: Path) -> bool:
    """Whether a writer holds the journal's lock (``journal.storage`` takes it with flock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # gone: nothing to do with it now
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _link(path: Path, target: Path) -> None:
    try:
        os.link(path, target)
    except FileExistsError:
        if not os.path.samefile(path, target):
            raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A file system without hard links: a rename is atomic too, only not idempotent.
        os.rename(path, target)


def _parse_time(text: str | None) -> dt.datetime:
    if not text:
        return _NEVER
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return _NEVER
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
