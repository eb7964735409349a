"""The ``orm-journal`` commands, one plain function each (the parser is in :mod:`orm_ext.cli`).

Every command prints to the :class:`rich.console.Console` it is given and returns the
process exit status; errors are raised as exceptions, which the command line turns into
one line of output (:func:`one_line`).

A journal is a file anyone may have written, so nothing read from one is ever printed as
Rich markup or highlighted, and every line that holds text from a journal (or a path, or
an error message quoting either) goes through :func:`plain` first.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import json
import math
import os
import re
import reprlib
import signal
import stat
import subprocess
import sys
import tempfile
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from itertools import groupby, islice
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TextColumn
from rich.text import Text
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from journal import (
    EnumRef,
    Journal,
    JournalError,
    JournalIncompleteError,
    JournalSignatureError,
    OpaqueValue,
    Placeholder,
    Snapshot,
)
from journal.snapshot import is_snapshot
from orm_ext import demo as demo_models
from orm_ext import ledger
from orm_ext.replay import ConflictPolicy, reconnect_and_commit
from orm_ext.reporting import ReplayOutcome, cli_words, conflict_lines, json_line, outcome_line
from orm_ext.service import ReplayService, ServiceEvent
from orm_ext.session import JournalingSession

__all__ = [
    "CommandError",
    "demo",
    "init_db",
    "inspect",
    "one_line",
    "plain",
    "replay",
    "verify",
    "watch",
]


class CommandError(Exception):
    """A command could not do its job; the message is the one line the user sees."""


# -- plain output ---------------------------------------------------------------------------

# What a terminal would act on instead of showing: C0 controls (ESC starts an escape
# sequence, CR and BS overwrite a line), DEL, C1 controls (CSI), line and paragraph
# separators, and invisible formatting characters (bidirectional overrides reorder what
# follows them, zero-width ones hide text).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
    "\ufff9-\ufffb\U000e0000-\U000e007f]"
)
# Longest text of a header field, a name or a value shown by ``inspect`` before it is cut.
_FIELD = 200
_VALUE = 60
# Changes (columns, links, ...) shown per operation line, and rows per collection change.
_PARTS = 20
# Distinct (table, kind) groups counted one by one in the summary; the rest are summed, so
# a crafted journal with a new table name per operation cannot make the summary grow.
_GROUPS = 1000
# Longest str or bytes written in full by ``inspect --json``.
_JSON_TEXT = 1024
# Longest int formatted in decimal: Python refuses to format more than 4,300 digits.
_INT_BITS = 12_000


def plain(text: str) -> str:
    """Return ``text`` with terminal control and invisible formatting characters escaped.

    Each such character becomes a Python escape (``\\x1b``, ``\\u202e``), so that text
    from a journal, a path or an error message shows literally and stays on one line.

    >>> plain("host\\x1b[2J")
    'host\\\\x1b[2J'
    """
    return _UNSAFE.sub(_escape, text)


_MNEMONIC = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _MNEMONIC:
        return _MNEMONIC[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _clip(text: str, limit: int = _FIELD) -> str:
    """Cut ``text`` to ``limit`` characters (saying how long it was), then escape it."""
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text)} characters)"
    return plain(text)


class _ShortRepr(reprlib.Repr):
    """``repr()`` that never builds the full text of a long value, then cuts it."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = _VALUE
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 8
        self.maxlevel = 4

    def repr1(self, x: Any, level: int) -> str:
        kind = type(x)
        if kind is str:
            return self._cut(repr(x[: self.maxstring]), len(x) > self.maxstring, len(x), "chars")
        if kind in (bytes, bytearray):
            long = len(x) > self.maxstring
            return self._cut(repr(bytes(x[: self.maxstring])), long, len(x), "bytes")
        if kind is int and x.bit_length() > _INT_BITS:
            return f"<int of {x.bit_length()} bits>"
        if kind is Placeholder:
            return f"#{x.ref}.{_clip(str(x.attribute), _VALUE)}"
        if kind is EnumRef:
            return _clip(str(x), _VALUE)
        return super().repr1(x, level)

    @staticmethod
    def _cut(text: str, long: bool, length: int, unit: str) -> str:
        return f"{text}...({length} {unit})" if long else text


_REPR = _ShortRepr()


def _short(value: Any) -> str:
    """A value for one line of ``inspect``: at most about ``_VALUE`` characters, escaped."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a decoded (--unsafe) object's __repr__ may raise anything
        text = f"<{type(value).__name__}>"
    return plain(text)


def _line(out: Console, *parts: str | tuple[str, str]) -> None:
    """Print one line: never wrapped or cut, no markup, no highlighting."""
    out.print(Text.assemble(*parts), soft_wrap=True, highlight=False)


def _hide_password(text: str, url: str | None) -> str:
    """Replace the password of ``url`` wherever it occurs in ``text`` with ``***``."""
    if not url:
        return text
    # As written (maybe %-quoted), up to the first and to the last '@', and as parsed.
    secrets = set(re.findall(r"^[^:/]*://[^:@/]*:([^@]*)@", url))
    secrets.update(re.findall(r"^[^:/]*://[^:@/]*:(.*)@", url))
    with contextlib.suppress(Exception):
        secrets.add(make_url(url).password or "")
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _safe_url(url: str) -> str:
    """``url`` with its password masked, for a message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unparsable URL)"


def one_line(err: BaseException, *, url: str | None = None) -> str:
    """Return the one line that reports ``err``: escaped, with no password of ``url``.

    A database error loses the SQL and the link SQLAlchemy appends, and the line breaks of
    the driver's message become spaces; any other message is kept exactly, its control
    characters escaped (a path may hold a line break). An error the commands do not
    expect is named by its type. Advice naming a Python argument names the command
    line's option instead (``--on-conflict skip``, not ``on_conflict='skip'``).
    """
    text = str(err).strip()
    if isinstance(err, SQLAlchemyError):
        text = re.split(r"\n\[SQL: |\n\(Background on this error", text, maxsplit=1)[0]
        text = re.sub(r"\s*\n\s*", " ", text)
    if not isinstance(err, CommandError | JournalError | OSError | ValueError | SQLAlchemyError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return plain(cli_words(_hide_password(text or type(err).__name__, url)))


# -- inspect and verify -------------------------------------------------------------------------


def _open(path: str | Path, *, key: str | None, allow_dill: bool = False) -> Journal:
    """Open a journal for reading; anything but a regular file is refused first.

    Opening a FIFO, say, would wait for a writer forever.
    """
    with contextlib.suppress(FileNotFoundError):  # Journal says so in its own words
        _check_regular(path)
    return Journal(path, key=key, allow_dill=allow_dill)


def _check_regular(path: str | Path) -> None:
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path}: not a regular file, so not a journal")


def _verification(journal: Journal) -> tuple[bool, str, bool]:
    """Return whether ``journal`` verified, its status line, and whether to list operations."""
    try:
        journal.verify()
    except JournalSignatureError as err:
        return False, f"NOT VERIFIED: {err}", False
    except JournalIncompleteError as err:
        # Unsealed but intact: the acknowledged batches can be shown.
        return False, f"INVALID: {err}", True
    except JournalError as err:
        return False, f"INVALID: {err}", False
    checked = "signed, signature verified" if journal.signed else "unsigned, checksums verified"
    return True, checked, True


@dataclass
class _Summary:
    """Operations counted per (table, kind) in one streaming pass."""

    total: int = 0
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    other: int = 0

    def add(self, op: Any) -> None:
        self.total += 1
        if not isinstance(op, dict):
            group = ("(malformed)", "-")
        else:
            group = (_name(op.get("table")), _name(op.get("op")))
        if group in self.groups or len(self.groups) < _GROUPS:
            self.groups[group] += 1
        else:
            self.other += 1


def _summarise(journal: Journal) -> _Summary:
    summary = _Summary()
    for _, op in journal.operations(pickles="opaque"):
        summary.add(op)
    return summary


def _name(value: Any) -> str:
    return _clip(value, _VALUE) if isinstance(value, str) else _short(value)


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _row(target: Any) -> str:
    if type(target) is int:
        return f"#{target}"
    if isinstance(target, list):
        return _short(tuple(target[: _REPR.maxtuple + 1]))
    return _short(target)


def _rows(targets: Any) -> str:
    if not isinstance(targets, list):
        return _short(targets)
    shown = ", ".join(_row(t) for t in targets[:_PARTS])
    return shown + (f", ... {len(targets) - _PARTS} more" if len(targets) > _PARTS else "")


def _target(op: dict[str, Any]) -> str:
    if "ref" in op:
        return f"new #{_short(op['ref'])}"
    if "target" in op:
        return _row(op["target"])
    where = op.get("where")
    return "all rows" if where is None else f"where {_short(where)}"


def _change_parts(op: dict[str, Any]) -> Iterator[str]:
    old = _mapping(op.get("old"))
    if op.get("op") == "delete":
        for key, value in old.items():
            yield f"{_name(key)}={_short(value)}"
        return
    for key, value in _mapping(op.get("values")).items():
        if key in old:
            yield f"{_name(key)}: {_short(old[key])} → {_short(value)}"
        else:
            yield f"{_name(key)}={_short(value)}"
    for key, ref in _mapping(op.get("refs")).items():
        if isinstance(ref, list | tuple) and len(ref) == 2:
            yield f"{_name(key)}=#{_short(ref[0])}.{_name(ref[1])}"
        else:
            yield f"{_name(key)}={_short(ref)}"
    for key, target in _mapping(op.get("links")).items():
        yield f"{_name(key)} → {_row(target)}"
    for key, targets in _mapping(op.get("added")).items():
        yield f"{_name(key)} += {_rows(targets)}"
    for key, targets in _mapping(op.get("removed")).items():
        yield f"{_name(key)} -= {_rows(targets)}"
    version = op.get("version")
    if isinstance(version, list) and len(version) == 2:
        yield f"version: {_short(version[0])} → {_short(version[1])}"
    if isinstance(op.get("rows"), list):
        yield f"{len(op['rows'])} row(s)"


def _change_count(op: dict[str, Any]) -> int:
    if op.get("op") == "delete":
        return len(_mapping(op.get("old")))
    sections = ("values", "refs", "links", "added", "removed")
    count = sum(len(_mapping(op.get(s))) for s in sections)
    version = op.get("version")
    count += isinstance(version, list) and len(version) == 2
    return count + isinstance(op.get("rows"), list)


def _describe(sequence: int, op: Any) -> str:
    """One line of ``inspect`` for one operation, whatever the journal holds there."""
    if not isinstance(op, dict):
        return f"{sequence:>6}  malformed operation: {_short(op)}"
    kind = _name(op.get("op"))
    cls = op.get("class")
    cls = _clip(cls.rsplit(":", 1)[-1], _VALUE) if isinstance(cls, str) else _short(cls)
    changes = ", ".join(islice(_change_parts(op), _PARTS))
    more = _change_count(op) - _PARTS
    if more > 0:
        changes += f", ... {more} more"
    return f"{sequence:>6}  {kind:<7} {cls} / {_name(op.get('table'))}  {_target(op)}  {changes}"


def _header_fields(journal: Journal) -> list[tuple[str, str]]:
    """The header as (label, text) pairs, every text escaped and cut to a bounded length."""
    header = journal.header
    versions = ", ".join(
        f"{_clip(name, _VALUE)} {_clip(str(version), _VALUE)}"
        for name, version in islice(sorted(header.versions.items()), _PARTS)
    )
    schema = header.meta.get("schema")
    tables = sorted(str(name) for name in schema) if isinstance(schema, dict) else []
    shown = ", ".join(_clip(name, _VALUE) for name in tables[:_PARTS])
    if len(tables) > _PARTS:
        shown += f", ... {len(tables) - _PARTS} more"
    revision = header.meta.get("alembic_revision")
    return [
        ("id", _clip(header.journal_id)),
        ("state", journal.state),
        ("created", f"{_clip(header.created_at)} on {_clip(header.host)}"),
        ("sealed", _clip(header.sealed_at or "-")),
        ("operations", "-" if header.operation_count is None else str(header.operation_count)),
        ("versions", versions or "-"),
        ("alembic revision", _name(revision) if revision else "-"),
        ("tables", shown or "-"),
    ]


def _write_text(
    write: Callable[[str], object],
    journal: Journal,
    path: str,
    verified: bool,
    status: str,
    summary: _Summary | None,
    operations: Iterator[tuple[int, Any]],
    limit: int | None,
) -> None:
    marker = "" if verified else " (unverified)"
    write(f"{'journal':<18}{plain(path)}\n")
    write(f"{'signature':<18}{plain(status)}\n")
    for label, text in _header_fields(journal):
        write(f"{label:<18}{text}{marker}\n")
    if summary is None:
        write(f"{'summary':<18}operations not shown: the journal did not verify\n")
        return
    write(f"{'summary':<18}{summary.total} operation(s)\n")
    for table, groups in groupby(sorted(summary.groups.items()), key=lambda g: g[0][0]):
        write(f"  {table}: " + ", ".join(f"{count} {kind}" for (_, kind), count in groups) + "\n")
    if summary.other:
        write(f"  ... {summary.other} more in other tables\n")
    write("operations        seq  kind  class / table  row  changes\n")
    shown = 0
    for sequence, op in operations:
        if limit is not None and shown >= limit:
            break
        write(_describe(sequence, op) + "\n")
        shown += 1
    if shown < summary.total:
        write(f"  ... {summary.total - shown} more operation(s) not shown (--limit {limit})\n")


def _header_json(header: Any, *, operations: bool) -> Any:
    """A journal's or snapshot's header as ``inspect --json`` prints it (a snapshot has
    no operation count)."""
    fields = {
        "format_version": header.format_version,
        "created_at": header.created_at,
        "sealed_at": header.sealed_at,
        "host": header.host,
        "versions": header.versions,
    }
    if operations:
        fields["operation_count"] = header.operation_count
    fields["meta"] = header.meta
    return _json_value(fields)


def _json_value(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data: long str and bytes cut, with their length; see the CLI docs."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if value.bit_length() <= _INT_BITS else _short(value)
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if kind is str:
        if len(value) > _JSON_TEXT:
            return {"truncated": value[:_JSON_TEXT], "length": len(value)}
        return value
    if kind is bytes:
        if len(value) > _JSON_TEXT:
            return {"truncated": repr(value[:_JSON_TEXT]), "length": len(value)}
        return repr(value)
    if depth > 64:
        return _short(value)
    if kind is list or kind is tuple:
        return [_json_value(item, depth + 1) for item in value]
    if kind is dict:
        return {_json_key(k): _json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(
        value, date | clock_time | timedelta | Decimal | uuid.UUID | enum.Enum | EnumRef
    ) or kind in (Placeholder, OpaqueValue):
        return _json_value(str(value), depth + 1)
    return _short(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str) and len(key) <= _JSON_TEXT:
        return key
    return _short(key)


def _write_json(
    write: Callable[[str], object],
    journal: Journal,
    path: str,
    verified: bool,
    status: str,
    summary: _Summary | None,
    operations: Iterator[tuple[int, Any]],
    limit: int | None,
) -> None:
    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=True)

    header = journal.header
    head = {
        "path": path,
        "journal_id": header.journal_id,
        "state": journal.state,
        "signed": header.signed,
        "verified": verified,
        "status": status,
        "header": _header_json(header, operations=True),
        "summary": [],
    }
    if summary is not None:
        head["summary"] = [
            {"table": table, "kind": kind, "operations": count}
            for (table, kind), count in sorted(summary.groups.items())
        ]
        if summary.other:
            head["summary"].append({"table": None, "kind": None, "operations": summary.other})
    # The document is written piece by piece: the head, then one operation at a time.
    write(dump(head)[:-1] + ', "operations": [')
    shown = 0
    total = 0 if summary is None else summary.total
    for sequence, op in operations if summary is not None else ():
        if limit is not None and shown >= limit:
            break
        item: dict[str, Any] = {"sequence": sequence}
        if isinstance(op, dict):
            item.update((_json_key(k), _json_value(v)) for k, v in op.items() if k != "sequence")
        else:
            item["malformed"] = _json_value(op)
        write(("\n" if shown == 0 else ",\n") + dump(item))
        shown += 1
    write(f'\n], "operations_shown": {shown}, "operations_left_out": {total - shown}}}\n')


def inspect(
    path: str,
    *,
    as_json: bool = False,
    unsafe: bool = False,
    limit: int | None = None,
    key: str | None = None,
    console: Console | None = None,
) -> int:
    """Show a journal's header, state, signature status, a summary and its operations.

    Streams: a first pass over the operations counts them per table and kind, a second
    prints them one line (or one JSON object) at a time, so memory stays flat on any
    journal size. Everything read from the journal is printed as plain, escaped text,
    and long values are cut before they are formatted.

    :param unsafe: decode ``dill`` values (``--unsafe`` / ``--allow-dill``). This runs
        code from the file. Without it they show as opaque.
    :param limit: show at most this many operations, and say how many were left out.
    """
    out = console or Console()
    write = out.file.write
    with contextlib.suppress(OSError):  # _open says what is wrong with the path
        _check_regular(path)
        if is_snapshot(path):
            return _inspect_snapshot(path, as_json=as_json, limit=limit, key=key, out=out)
    with _open(path, key=key, allow_dill=unsafe) as journal:
        verified, status, readable = _verification(journal)
        summary: _Summary | None = None
        if readable:
            try:
                summary = _summarise(journal)
            except JournalError as err:
                verified, status = False, f"INVALID: {err}"
        operations = journal.operations(pickles="auto" if unsafe else "opaque")
        writer = _write_json if as_json else _write_text
        writer(write, journal, str(path), verified, status, summary, operations, limit)
    out.file.flush()
    return 0


def _inspect_snapshot(
    path: str, *, as_json: bool, limit: int | None, key: str | None, out: Console
) -> int:
    """``inspect`` of a query snapshot (SPEC §9.5): header, statements, row counts, ages.

    Entries are listed only once the whole file verified; their rows are never decoded.
    """
    write = out.file.write
    now = datetime.now(UTC)
    with Snapshot(path, key=key) as snapshot:
        try:
            entries = snapshot.entries()
        except JournalError as err:
            verified, status, entries = False, f"INVALID: {err}", []
        else:
            verified = True
            status = (
                "signed, signature verified" if snapshot.signed else "unsigned, checksums verified"
            )
        entries.sort(key=lambda e: e.read_at)
        shown = entries if limit is None else entries[:limit]
        header = snapshot.header
        if as_json:
            document = {
                "path": path,
                "kind": "query-snapshot",
                "snapshot_id": header.journal_id,
                "state": snapshot.state,
                "signed": header.signed,
                "verified": verified,
                "status": status,
                "header": _header_json(header, operations=False),
                "statements": [
                    {
                        "key": e.key,
                        "sql": _json_value(e.sql),
                        "tables": _json_value(list(e.tables)),
                        "read_at": e.read_at.isoformat(),
                        "age_seconds": round(e.age(now).total_seconds(), 3),
                        "rows": e.row_count,
                    }
                    for e in shown
                ],
                "statements_left_out": len(entries) - len(shown),
            }
            write(json.dumps(document, ensure_ascii=True) + "\n")
            out.file.flush()
            return 0
        marker = "" if verified else " (unverified)"
        write(f"{'query snapshot':<18}{plain(path)}\n")
        write(f"{'signature':<18}{plain(status)}\n")
        for label, text in _header_fields(snapshot):
            if label not in ("operations", "alembic revision"):
                write(f"{label:<18}{text}{marker}\n")
        if not verified:
            write(f"{'summary':<18}statements not shown: the snapshot did not verify\n")
            out.file.flush()
            return 0
        rows = sum(e.row_count for e in entries)
        ages = (
            f", read {_age(entries[-1].age(now))} to {_age(entries[0].age(now))} ago"
            if entries
            else ""
        )
        write(f"{'summary':<18}{len(entries)} statement(s), {rows} row(s){ages}\n")
        write("statements          rows  age       tables  sql\n")
        for entry in shown:
            tables = ",".join(entry.tables)
            sql = " ".join(entry.sql.split())
            write(
                f"{entry.row_count:>24}  {_age(entry.age(now)):<8}  {_clip(tables, _VALUE)}  "
                f"{_clip(sql)}\n"
            )
        if len(shown) < len(entries):
            write(
                f"  ... {len(entries) - len(shown)} more statement(s) not shown (--limit {limit})\n"
            )
    out.file.flush()
    return 0


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def verify(
    paths: str | Sequence[str],
    *,
    key: str | None = None,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Check journals completely; exit status 0 if every one can be replayed, 1 if not.

    Prints one line per journal (``valid: PATH: ...`` or ``invalid: REASON``), or with
    ``as_json`` one JSON object per line: ``path``, ``valid``, ``signed``,
    ``operations``, ``error``.
    """
    out = console or Console()
    invalid = False
    for path in [paths] if isinstance(paths, str) else paths:
        document: dict[str, Any] = {"path": str(path), "valid": False, "signed": None}
        document.update(operations=None, error=None)
        try:
            with _open(path, key=key) as journal:
                journal.verify()
                document.update(
                    valid=True,
                    signed=journal.signed,
                    operations=journal.header.operation_count,
                )
        except (JournalError, OSError) as err:
            invalid = True
            document["error"] = one_line(err)
        if as_json:
            out.file.write(json_line(document))
        elif document["valid"]:
            signed = "signed" if document["signed"] else "unsigned"
            count = document["operations"]
            _line(
                out,
                ("valid", "green"),
                f": {plain(str(path))}: sealed, {signed}, {count} operation(s)",
            )
        else:
            _line(out, ("invalid", "red"), f": {document['error']}")
    out.file.flush()
    return 1 if invalid else 0


# -- replay and init-db ---------------------------------------------------------------------


def _journals(paths: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix == ".dbm" and p.is_file()))
        elif not path.exists():
            raise CommandError(f"{raw}: no such journal file or directory")
        else:
            found.append(path)
    if not found:
        raise CommandError("no journals found (a directory is searched for *.dbm files)")
    return found


def _engine(url: str, **options: Any) -> Engine:
    try:
        parsed = make_url(url)
    except Exception:
        # Not chained: the parser's error could quote the URL, password and all.
        raise CommandError(
            "cannot parse the database URL; expected dialect+driver://user:password@host/database"
        ) from None
    try:
        return create_engine(parsed, **options)
    except Exception as err:
        raise CommandError(
            f"cannot use database URL {_safe_url(url)}: {one_line(err, url=url)}"
        ) from err


def import_models(modules: Sequence[str]) -> None:
    """Import each ``--models`` module, found from the current directory as ``python -m`` would.

    The installed ``orm-journal`` script's ``sys.path`` starts with its own directory, so
    the current directory goes first, as ``python -m`` puts it. Whatever goes wrong while
    importing (not found, a syntax error, an exception raised by the module's code) is
    one :class:`CommandError` naming the module and where it failed.
    """
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    for module in modules:
        try:
            importlib.import_module(module)
        except SyntaxError as err:
            raise CommandError(
                f"--models {module}: cannot import it: SyntaxError in {_near(err.filename)}, "
                f"line {err.lineno}: {err.msg}"
            ) from err
        except ModuleNotFoundError as err:
            if err.name is not None and (module == err.name or module.startswith(f"{err.name}.")):
                raise CommandError(
                    f"--models {module}: no module named {err.name!r} in the current "
                    f"directory ({here}) or the installed packages; run orm-journal from "
                    "the directory that holds the package, or install it"
                ) from err
            raise CommandError(f"--models {module}: {_raised_at(err)}") from err
        except Exception as err:
            raise CommandError(f"--models {module}: {_raised_at(err)}") from err


def _near(filename: str | None) -> str:
    """A file under the current directory by its relative path, as the user named it."""
    if not filename:
        return "(unknown file)"
    here = os.getcwd() + os.sep
    return filename[len(here) :] if filename.startswith(here) else filename


def _raised_at(err: Exception) -> str:
    """``importing it raised TYPE: MESSAGE (FILE, line N)``: the innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" ({_near(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    message = str(err).strip().replace("\n", " ")
    return f"importing it raised {type(err).__name__}: {message}{where}"


def replay(
    url: str,
    paths: Sequence[str],
    *,
    models: Sequence[str] = (),
    on_conflict: ConflictPolicy = "fail",
    allow_schema_drift: bool = False,
    allow_dill: bool = False,
    key: str | None = None,
    dry_run: bool = False,
    as_json: bool = False,
    show_traceback: bool = False,
    console: Console | None = None,
) -> int:
    """Replay journals (files, or directories of ``*.dbm``) in order, each exactly once.

    Prints one line per journal as it finishes: path, outcome, detail, and one line per
    conflict skipped or overwritten (or, with ``as_json``, one JSON object per journal).
    A journal that fails, for whatever reason, is reported with its one-line reason and
    the others still run. Several ``replay`` processes may share a directory and a
    database: a journal another process is applying right now is passed over and looked
    at again at the end. Exit status 0 when every journal is in the database (applied
    now or before; with ``dry_run``, would apply or is already applied), 1 if any failed.

    :param allow_dill: unpickle ``dill`` values of journals not verified with a key
        (``--allow-dill``). This runs code from the files.
    :param dry_run: apply each journal and roll back (``--dry-run``): nothing changes.
    :param show_traceback: print the traceback of each failure too (``--traceback``).
    """
    out = console or Console()
    import_models(models)
    journals = _journals(paths)
    engine = _engine(url)
    sessions = sessionmaker(engine, class_=JournalingSession, journal_key=key)
    failed = False
    try:
        columns = (
            *Progress.get_default_columns()[:2],
            MofNCompleteColumn(),
            TextColumn("operations"),
        )
        with Progress(
            *columns, console=out, transient=True, disable=not out.is_terminal
        ) as progress:
            # The bar counts operations; reading the counts costs a header per journal,
            # so only when there is a terminal to show it on.
            counts = {p: _operation_count(p, key) if out.is_terminal else 0 for p in journals}
            task = progress.add_task("replaying", total=sum(counts.values()) or None)
            done = 0
            pending = list(journals)
            for if_busy in ("skip", "wait"):
                busy: list[Path] = []
                for path in pending:

                    def advance(applied: int, _total: int, base: int = done) -> None:
                        progress.update(task, completed=base + applied)

                    options = _ReplayOptions(
                        key, on_conflict, allow_schema_drift, allow_dill, if_busy, dry_run
                    )
                    try:
                        outcome = _replay_one(sessions, path, options, advance)
                    except Exception as err:
                        if show_traceback:
                            traceback.print_exc()
                        outcome = ReplayOutcome(str(path), "failed", error=one_line(err, url=url))
                    if outcome is None:
                        busy.append(path)
                        continue
                    done += counts[path]
                    progress.update(task, completed=done)
                    failed = failed or outcome.outcome == "failed"
                    _report(out, outcome, as_json)
                pending = busy
    finally:
        engine.dispose()
    return 1 if failed else 0


@dataclass(frozen=True)
class _ReplayOptions:
    key: str | None
    on_conflict: ConflictPolicy
    allow_schema_drift: bool
    allow_dill: bool
    if_busy: Literal["wait", "skip"]
    dry_run: bool


def _operation_count(path: Path, key: str | None) -> int:
    """The operation count a journal's header states (0 if it cannot be read: it will fail)."""
    try:
        with _open(path, key=key) as journal:
            return journal.header.operation_count or 0
    except (JournalError, OSError):
        return 0


def _report(out: Console, outcome: ReplayOutcome, as_json: bool) -> None:
    if as_json:
        # Through the console, not its file: on a terminal the progress bar is redrawn
        # below what is printed, never over it.
        _line(out, json_line(outcome.as_json(_json_value)).rstrip("\n"))
        return
    word, detail = outcome_line(outcome)
    style = "red" if word == "failed" else "green"
    path = plain(outcome.path)
    _line(out, f"{path}: ", (word, style), f": {plain(detail)}")
    for line in conflict_lines(outcome, _short):
        _line(out, f"{path}: {plain(line)}")


def _replay_one(
    sessions: Any,
    path: Path,
    options: _ReplayOptions,
    progress: Callable[[int, int], None],
) -> ReplayOutcome | None:
    _check_regular(path)
    with sessions() as session:
        result = reconnect_and_commit(
            session,
            path,
            key=options.key,
            on_conflict=options.on_conflict,
            allow_schema_drift=options.allow_schema_drift,
            allow_dill=options.allow_dill,
            if_busy=options.if_busy,
            dry_run=options.dry_run,
            progress=progress,
        )
    if result.busy:
        return None
    if not result.applied:
        word = "already applied"
    else:
        word = "would apply" if options.dry_run else "applied"
    return ReplayOutcome(
        str(path),
        word,
        journal_id=result.journal_id,
        operations=result.operations,
        conflicts=list(result.conflicts),
        duration=result.duration,
        dry_run=options.dry_run,
    )


def watch(
    url: str,
    directory: str,
    *,
    models: Sequence[str] = (),
    on_conflict: ConflictPolicy = "fail",
    allow_schema_drift: bool = False,
    allow_dill: bool = False,
    key: str | None = None,
    once: bool = False,
    poll_interval: float = 1.0,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Run the replay service on the spool ``directory`` (``replay URL DIR --watch``).

    Applies each sealed journal exactly once, in the order they were sealed, and moves it
    to ``applied/`` or ``failed/`` (with ``NAME.json`` beside it); see
    :class:`orm_ext.ReplayService`. Prints one line per journal on a terminal (with
    ``as_json``, one JSON object per journal anywhere). SIGTERM and SIGINT let the journal
    in progress finish, then the command ends with status 0. With ``once`` it ends when
    the spool holds no sealed journal: status 1 if a journal failed on the way, else 0.
    """
    out = console or Console()
    import_models(models)
    if not Path(directory).is_dir():
        raise CommandError(
            f"{directory}: --watch needs one spool directory (the one recording workers "
            "drop journals into); create it or name it"
        )
    # Pre-ping: a database restarted under a long-running service leaves dead pooled
    # connections; each is replaced when it is next taken, not reported as a failure.
    engine = _engine(url, pool_pre_ping=True)
    # On a terminal, the journal being applied has a bar counting its operations, and
    # each journal done a line above it.
    bar = Progress(
        *Progress.get_default_columns()[:2],
        MofNCompleteColumn(),
        TextColumn("operations"),
        console=out,
        transient=True,
        disable=not out.is_terminal,
    )
    task = bar.add_task("replaying", total=None, visible=False)

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, visible=True)

    def report(event: ServiceEvent) -> None:
        bar.update(task, completed=0, total=None, visible=False)
        if not (as_json or out.is_terminal):
            return  # the orm_ext.service logger reports it
        outcome = ReplayOutcome(
            str(event.path),
            event.outcome,
            journal_id=event.journal_id,
            operations=event.operations,
            conflicts=event.conflicts,
            duration=event.duration,
            error=event.error,
        )
        _report(out, outcome, as_json)

    service = ReplayService(
        engine,
        directory,
        key=key,
        on_conflict=on_conflict,
        allow_schema_drift=allow_schema_drift,
        allow_dill=allow_dill,
        poll_interval=poll_interval,
        on_event=report,
        progress=advance,
    )
    previous = {
        signum: signal.signal(signum, lambda _signum, _frame: service.stop())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with bar:
            summary = service.run(once=once)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        engine.dispose()
    return 1 if once and summary.failed and not service.stopping else 0


def init_db(url: str, *, console: Console | None = None) -> int:
    """Create (or upgrade) orm-journal's ledger table with the packaged Alembic migration."""
    out = console or Console()
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            ledger.upgrade(connection)
    except SQLAlchemyError as err:
        raise CommandError(f"cannot migrate {_safe_url(url)}: {one_line(err, url=url)}") from err
    finally:
        engine.dispose()
    _line(out, f"ledger table {ledger.LEDGER_TABLE} is at the head of branch {ledger.BRANCH}")
    return 0


# -- demo -----------------------------------------------------------------------------------------


def _step(*argv: str) -> str:
    code = "import sys; from orm_ext.demo import main; main(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise CommandError(f"demo step {argv[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout.strip()


def demo(*, directory: str | None = None, console: Console | None = None) -> int:
    """Run the seed scenario end to end on an embedded SQLite database, in two processes."""
    out = console or Console()
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="orm-journal-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir / 'pipeline.db'}"
    journal = str(workdir / "recorded_operations.dbm")
    demo_models.setup(url)
    out.rule("1. a recording worker records instead of writing")
    count = _step("record", url, journal)
    _line(out, f"recorded {count} operation(s) into {plain(journal)}; the database is untouched")
    out.rule("2. orm-journal inspect")
    inspect(journal, console=out)
    out.rule("3. a replay process applies the journal")
    _line(out, f"applied: {_step('replay', url, journal)}")
    out.rule("4. replaying again changes nothing (exactly once)")
    _line(out, f"applied: {_step('replay', url, journal)}")
    out.rule("5. the database now")
    engine = create_engine(url)
    rows = [("asset", "version", "task", "published", "component", "location")]
    with sessionmaker(engine)() as session:
        for version in session.scalars(select(demo_models.AssetVersion)):
            for component in version.components:
                for location in component.locations:
                    rows.append(
                        (
                            version.asset.name,
                            str(version.version),
                            version.task.name if version.task else "-",
                            str(version.is_published),
                            component.name,
                            location.resource_identifier,
                        )
                    )
    # Plain columns, never a table whose cells a narrow terminal or a pipe would cut.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _line(
            out,
            "  ".join(
                plain(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip(),
        )
    engine.dispose()
    _line(out, f"files are in {plain(str(workdir))}")
    return 0
