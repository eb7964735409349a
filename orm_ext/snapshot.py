"""The query snapshot of a ``reusing_query_results(snapshot=...)`` block (SPEC §9).

The block's memo answers repeated statements from memory; this store keeps, in a file,
what the database answered for every statement the block read, so that a later process,
online or not, answers the same statements without the database. It is opened (verified,
its schema compared with this process's mapping) when the block is entered and written
back, whole and atomically, when the block exits, if anything changed.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Table

from journal.exc import JournalCorruptError, JournalError
from journal.snapshot import Snapshot, SnapshotEntry, write_snapshot
from orm_ext.exc import SchemaMismatchError
from orm_ext.fingerprint import describe_table, diff_schemas
from orm_ext.sa_private import all_registries

__all__ = ["QuerySnapshot", "mapped_tables"]

log = logging.getLogger("orm_ext.query")


class QuerySnapshot:
    """The entries of one snapshot file while a block uses it.

    :ivar path: the snapshot file.
    :ivar max_age: entries older than this are not served.
    :ivar refresh: no entry is served; every statement is read again and replaced.
    """

    def __init__(
        self,
        path: Path,
        entries: Mapping[str, SnapshotEntry],
        schema: Mapping[str, Any],
        *,
        key: bytes | str | None,
        max_age: dt.timedelta | None,
        refresh: bool,
    ) -> None:
        self.path = path
        self.max_age = max_age
        self.refresh = refresh
        self._key = key
        self._entries: dict[str, SnapshotEntry | _Fresh] = dict(entries)
        # Tables whose fingerprint this block has taken already (describing one compiles
        # its column types).
        self._described: dict[Table, None] = {}
        self._schema: dict[str, Any] = dict(schema)
        self._changed = False
        # Tables this session wrote in its current transaction: entries read after such a
        # write may hold rows a rollback undoes.
        self._written: set[str] = set()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | str | None,
        max_age: dt.timedelta | None = None,
        refresh: bool = False,
    ) -> QuerySnapshot:
        """Open the snapshot at ``path`` (an absent file is an empty snapshot), verified.

        :raises JournalSignatureError: a bad or missing signature, or an unsigned snapshot
            while a key is configured.
        :raises JournalCorruptError: damaged, edited, incomplete or not a snapshot.
        :raises SchemaMismatchError: taken against other tables than this process maps.
        """
        target = Path(path)
        if not target.parent.is_dir():
            raise FileNotFoundError(
                errno.ENOENT,
                "the directory of the query snapshot (snapshot=) does not exist; create it "
                "or pass another path",
                str(target),
            )
        if not target.exists() and not target.is_symlink():
            return cls(target, {}, {}, key=key, max_age=max_age, refresh=refresh)
        try:
            with Snapshot(target, key=key) as snapshot:
                entries = snapshot.entries()
                recorded = snapshot.header.meta.get("schema", {})
        except JournalError as err:
            # The file format's errors call the file a journal; say what it is used as.
            raise type(err)(
                f"query snapshot: {err} (delete the file to take the snapshot again)",
                path=err.path,
            ) from err
        if not isinstance(recorded, dict) or not all(
            isinstance(v, dict) for v in recorded.values()
        ):
            raise _corrupt(target, "its schema fingerprint is malformed")
        differences = _schema_differences(recorded)
        if differences:
            raise SchemaMismatchError(
                f"query snapshot {target} was taken against another schema ("
                + "; ".join(differences)
                + "); its rows would not fit this program's tables: delete it and take the "
                "snapshot again online",
                differences=differences,
                path=str(target),
            )
        return cls(
            target,
            {entry.key: entry for entry in entries},
            recorded,
            key=key,
            max_age=max_age,
            refresh=refresh,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> tuple[SnapshotEntry | _Fresh | None, str]:
        """Return the entry to serve for ``key``, or None and why there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None, "the statement is not in the snapshot"
        if self.refresh:
            return None, "refresh=True asks for every statement to be read again"
        if self.max_age is not None:
            age = entry.age()
            if age > self.max_age:
                return None, (
                    f"its entry was read {_duration(age)} ago, longer than max_age "
                    f"({_duration(self.max_age)})"
                )
        return entry, ""

    def put(
        self,
        key: str,
        sql: str,
        tables: Iterable[str],
        columns: list[str],
        rows: list[tuple[Any, ...]],
        read: Iterable[Table] = (),
    ) -> None:
        """Store (or replace) what the database answered for a statement just now.

        ``tables`` names the tables the statement read (lower-cased, as the memo names
        them); ``read`` holds those of them that are ``Table`` objects, whose fingerprints
        the snapshot keeps.

        A value that is not a standard SQL value cannot be stored without a pickle: the
        statement is then left out of the snapshot (it is logged) and later processes read
        it from the database.
        """
        for table in read:
            if table not in self._described:
                self._described[table] = None
                self._schema[str(table.fullname)] = describe_table(table)
        self._entries[key] = _Fresh(key, sql, tuple(sorted(tables)), columns, rows)
        self._changed = True

    def drop_key(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._changed = True

    def drop_tables(self, names: Iterable[str] | None) -> int:
        """Drop the entries reading any of ``names`` (lower-cased), or all for None.

        An entry that read through raw SQL (``*``) goes with any table. Returns how many
        entries were dropped.
        """
        if names is None:
            doomed = list(self._entries)
            self._written.add("*")
        else:
            wanted = {n.lower() for n in names}
            self._written.update(wanted)
            doomed = [
                k
                for k, e in self._entries.items()
                if "*" in e.tables or wanted.intersection(e.tables)
            ]
        for key in doomed:
            del self._entries[key]
        self._changed = self._changed or bool(doomed)
        return len(doomed)

    def _encoded(self) -> list[SnapshotEntry]:
        """The entries as the file stores them: the rows read in this block encoded now,
        so that a miss does not pay for it."""
        entries: list[SnapshotEntry] = []
        for key, entry in list(self._entries.items()):
            if isinstance(entry, SnapshotEntry):
                entries.append(entry)
                continue
            try:
                entries.append(entry.encoded())
            except TypeError as err:
                log.warning("Not saved in query snapshot %s (%s): %s", self.path, err, entry.sql)
                del self._entries[key]
        return entries

    def undo_writes(self) -> None:
        """The transaction rolled back: drop what was read after its writes."""
        if self._written:
            written, self._written = self._written, set()
            self.drop_tables(None if "*" in written else written)
        self._written.clear()

    def settle_writes(self) -> None:
        """The transaction ended: its writes are the database's state now."""
        self._written.clear()

    def save(self) -> None:
        """Write the snapshot back if its entries changed (a new file renamed over it)."""
        if not self._changed:
            return
        tables = {t for e in self._entries.values() for t in e.tables}
        schema = {
            name: description
            for name, description in self._schema.items()
            if name.rsplit(".", 1)[-1].lower() in tables
        }
        write_snapshot(
            self.path,
            self._encoded(),
            key=self._key,
            meta={"schema": schema},
            versions={"sqlalchemy": sqlalchemy.__version__},
        )
        self._changed = False


class _Fresh:
    """An entry read from the database in this block, its rows not encoded yet."""

    __slots__ = ("columns", "key", "read_at", "row_list", "sql", "tables")

    def __init__(
        self,
        key: str,
        sql: str,
        tables: tuple[str, ...],
        columns: list[str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        self.key = key
        self.sql = sql
        self.tables = tables
        self.columns = columns
        self.row_list = rows
        self.read_at = dt.datetime.now(dt.UTC)

    def age(self, now: dt.datetime | None = None) -> dt.timedelta:
        return (now or dt.datetime.now(dt.UTC)) - self.read_at

    def rows(self, path: object = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self.columns, self.row_list

    def encoded(self) -> SnapshotEntry:
        """The entry as the file stores it.

        :raises TypeError: a value that is not a standard SQL value (it would need dill).
        """
        return SnapshotEntry.of_rows(
            self.key, self.sql, self.tables, self.read_at, self.columns, self.row_list
        )


def _schema_differences(recorded: Mapping[str, Any]) -> list[str]:
    """Return how this process's mapping differs from the tables a snapshot recorded.

    A table no registry of this process maps is not compared (no statement of this
    process reads it through the mapping). A program may map one table in several
    registries: the snapshot fits if one of them is the table it recorded.
    """
    current: dict[str, list[dict[str, Any]]] = {}
    for table in mapped_tables():
        current.setdefault(str(table.fullname), []).append(describe_table(table))
    differences: list[str] = []
    for name, description in sorted(recorded.items()):
        candidates = current.get(name)
        if candidates and description not in candidates:
            differences.extend(diff_schemas({name: description}, {name: candidates[0]}))
    return differences


def mapped_tables() -> list[Table]:
    """Return every table of this process's mapped registries."""
    return [table for reg in all_registries() for table in reg.metadata.tables.values()]


def _corrupt(path: Path, why: str) -> JournalError:
    return JournalCorruptError(
        f"query snapshot {path}: {why}; the file was altered: delete it and take the "
        "snapshot again",
        path=path,
    )


def _duration(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{delta.total_seconds():.0f} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
