"""The connection write guard: nothing a recording session sends may write (SPEC §3.1).

Flushes and ORM statements are recorded before they reach a connection; what does not
go through them (``text()`` writes, legacy ``bulk_*`` methods,
``session.connection().execute()``) is stopped here, at the cursor, on every connection
a recording session uses. A read of a table the block wrote that no ORM query answered
is handed to the block's reads to refuse (SPEC §3.11).
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Protocol

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Dialect

from orm_ext.exc import DeferredOperationError

__all__ = ["Guarded", "guard_connection", "release"]


class _Reads(Protocol):
    def check_sql(self, statement: str, dialect: Dialect) -> None: ...


class Guarded(Protocol):
    """What the guard needs of a recorder: its journal, its reads, its connections."""

    guarded: list[sqlalchemy.Connection]

    @property
    def path(self) -> Any: ...

    @property
    def reads(self) -> _Reads: ...


# Connections (SQLAlchemy's per-checkout facades, not the pooled DBAPI connections, whose
# info would outlive the block) of sessions that are recording, with their recorder.
_recording_connections: weakref.WeakKeyDictionary[sqlalchemy.Connection, Guarded] = (
    weakref.WeakKeyDictionary()
)


_WRITE = re.compile(
    r"^\s*(?:insert|update|delete|replace|merge|upsert)\b"
    r"|^\s*with\b.*\b(?:insert|update|delete|merge)\b",
    re.IGNORECASE | re.DOTALL,
)


def _refuse_writes(conn: sqlalchemy.Connection, cursor: Any, statement: str, *args: Any) -> None:
    # The guarantee of SPEC §3.1 for what does not go through a flush or an ORM
    # statement: text() writes, legacy bulk_* methods, session.connection().execute().
    recorder = _recording_connections.get(conn)
    if recorder is None:
        return
    if not _WRITE.match(statement):
        # SPEC §3.11: a read of a table the block wrote that no ORM query answered.
        recorder.reads.check_sql(statement, conn.dialect)
        return
    path = recorder.path
    raise DeferredOperationError(
        f"a write statement reached the database connection while recording into {path} "
        f"({statement.split(None, 1)[0].upper()} ...); only flushes and ORM "
        "insert()/update()/delete() statements can be recorded. Nothing was sent",
        path=path,
    )


def guard_connection(recorder: Guarded, connection: sqlalchemy.Connection) -> None:
    """Make ``connection`` refuse INSERT/UPDATE/DELETE while ``recorder`` records."""
    if connection in _recording_connections:
        return
    _recording_connections[connection] = recorder
    engine = connection.engine
    if not event.contains(engine, "before_cursor_execute", _refuse_writes):
        event.listen(engine, "before_cursor_execute", _refuse_writes)
    recorder.guarded.append(connection)


def release(recorder: Guarded) -> None:
    """Let the connections ``recorder`` guarded write again (its block has ended)."""
    for connection in recorder.guarded:
        _recording_connections.pop(connection, None)
    recorder.guarded.clear()
