"""The JSON file the replay service writes beside a journal it moved to ``failed/``.

One document per failed journal, ``failed/NAME.dbm.json``: what failed (the error, its
type, the operation it names), the conflict when it was one (kind, table, key, and each
differing column's journal and database values), and what to do about it. Monitoring
reads these files; a person reads ``advice``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from journal import (
    JournalCorruptError,
    JournalIncompleteError,
    JournalSignatureError,
    Placeholder,
)
from orm_ext.exc import ReplayConflictError, SchemaMismatchError

__all__ = ["failure_document", "write_failure"]

# Replay's errors name the operation as "operation 3 (update of task)".
_OPERATION = re.compile(r"operation (\d+) \((\w+) of ([^)]+)\)")


def failure_document(
    path: Path, journal_id: str, err: BaseException, message: str
) -> dict[str, Any]:
    """The JSON document describing why the journal at ``path`` failed.

    :param message: the one-line error, as the command line would print it.
    """
    document: dict[str, Any] = {
        "journal": path.name,
        "journal_id": journal_id,
        "failed_at": dt.datetime.now(dt.UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "error_type": type(err).__name__,
        "error": message,
        "operation": None,
        "conflict": None,
        "advice": _advice(err),
    }
    if isinstance(err, ReplayConflictError):
        document["operation"] = {
            "sequence": err.sequence,
            "kind": err.operation,
            "table": err.table,
        }
        document["conflict"] = {
            "kind": err.kind,
            "table": err.table,
            "key": [_value(k) for k in err.key],
            "columns": {
                column: {
                    "journal": _value(err.expected.get(column)),
                    "database": _value((err.actual or {}).get(column)),
                }
                for column in err.columns
            },
            "detail": err.detail,
        }
    else:
        found = _OPERATION.search(message)
        if found:
            document["operation"] = {
                "sequence": int(found.group(1)),
                "kind": found.group(2),
                "table": found.group(3),
            }
    if isinstance(err, SchemaMismatchError):
        document["differences"] = list(err.differences)
    return document


def write_failure(target: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as ``TARGET.json`` atomically (a reader never sees half of it)."""
    final = target.with_name(f"{target.name}.json")
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.json")
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(document, out, ensure_ascii=True, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, final)
    return final


def _advice(err: BaseException) -> str:
    if isinstance(err, ReplayConflictError):
        return (
            "the database rows changed since the journal was recorded; look at the conflict, "
            "then replay it by hand with orm-journal replay URL PATH --on-conflict skip (or "
            "overwrite), or move it back into the spool for a service run with that option"
        )
    if isinstance(err, SchemaMismatchError):
        return (
            "the journal was recorded against another schema; migrate the database or "
            "update the models (--models), or replay it by hand with --allow-schema-drift "
            "if the differences do not matter, then move it back into the spool"
        )
    if isinstance(err, JournalSignatureError):
        return (
            "the journal's signature does not check out: give the service the recording "
            "key (--key or $ORM_JOURNAL_KEY) and move it back into the spool; never replay "
            "a journal that was tampered with"
        )
    if isinstance(err, JournalIncompleteError | JournalCorruptError):
        return (
            "the file is damaged or not a complete journal: do not replay it; record the "
            "work again if it is lost"
        )
    return (
        "fix the cause named in the error, then move the journal back into the spool; "
        "the ledger makes a second attempt safe"
    )


def _value(value: Any) -> Any:
    """A journal value as JSON data: numbers, text, booleans and null as they are."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Placeholder):
        return f"#{value.ref}.{value.attribute}"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
