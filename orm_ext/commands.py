"""The ``orm-journal`` commands, one plain function each (the parser is in :mod:`orm_ext.cli`).

Every command prints to the :class:`rich.console.Console` it is given and returns the
process exit status; errors are raised as exceptions, which the command line turns into
one line of output.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from journal import Journal, JournalError, JournalSignatureError, Placeholder
from orm_ext import demo as demo_models
from orm_ext import ledger
from orm_ext.replay import ConflictPolicy, reconnect_and_commit
from orm_ext.session import JournalingSession

__all__ = ["CommandError", "demo", "init_db", "inspect", "replay", "verify"]


class CommandError(Exception):
    """A command could not do its job; the message is the one line the user sees."""


# -- inspect and verify -------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, Placeholder):
        return f"#{value.ref}.{value.attribute}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _row(target: Any) -> str:
    if isinstance(target, int):
        return f"#{target}"
    if isinstance(target, list):
        return repr(tuple(target))
    return repr(target)


def _target(op: dict[str, Any]) -> str:
    if "ref" in op:
        return f"new #{op['ref']}"
    target = op.get("target")
    if isinstance(target, int):
        return f"#{target}"
    if isinstance(target, list):
        return repr(tuple(target))
    where = op.get("where")
    return "where " + json.dumps(where, default=str) if where is not None else "all rows"


def _changes(op: dict[str, Any]) -> str:
    old = op.get("old", {})
    parts = []
    if op["op"] == "delete":
        return ", ".join(f"{k}={_format(v)}" for k, v in old.items())
    for key, value in op.get("values", {}).items():
        parts.append(
            f"{key}: {_format(old[key])} → {_format(value)}"
            if key in old
            else f"{key}={_format(value)}"
        )
    for key, (ref, attribute) in op.get("refs", {}).items():
        parts.append(f"{key}=#{ref}.{attribute}")
    for key, target in op.get("links", {}).items():
        parts.append(f"{key} → {_row(target)}")
    for key, targets in op.get("added", {}).items():
        parts.append(f"{key} += {', '.join(_row(t) for t in targets)}")
    for key, targets in op.get("removed", {}).items():
        parts.append(f"{key} -= {', '.join(_row(t) for t in targets)}")
    if "version" in op and isinstance(op["version"], list):
        parts.append(f"version: {op['version'][0]} → {op['version'][1]}")
    if "rows" in op:
        parts.append(f"{len(op['rows'])} row(s)")
    return ", ".join(parts)


def inspect(
    path: str,
    *,
    as_json: bool = False,
    unsafe: bool = False,
    key: str | None = None,
    console: Console | None = None,
) -> int:
    """Show a journal's header, state, signature status and operations.

    Never runs anything from the journal: ``dill`` values and enum classes stay opaque
    unless ``unsafe`` is set (and then only after the journal verified).
    """
    out = console or Console()
    with Journal(path, key=key, allow_dill=unsafe) as journal:
        header = journal.header
        operations: list[tuple[int, dict[str, Any]]] = []
        try:
            journal.verify()
            status = (
                "signed, signature verified" if journal.signed else "unsigned, checksums verified"
            )
            readable = True
        except JournalSignatureError as err:
            status, readable = f"NOT VERIFIED: {err}", False
        except JournalError as err:
            status, readable = f"INVALID: {err}", journal.state == "incomplete"
        if readable:
            operations = list(journal.operations(pickles="auto" if unsafe else "opaque"))
    if as_json:
        document = {
            "path": str(path),
            "journal_id": header.journal_id,
            "state": journal.state,
            "signed": header.signed,
            "status": status,
            "header": {
                "format_version": header.format_version,
                "created_at": header.created_at,
                "sealed_at": header.sealed_at,
                "host": header.host,
                "versions": header.versions,
                "operation_count": header.operation_count,
                "meta": header.meta,
            },
            "operations": [{"sequence": seq, **op} for seq, op in operations],
        }
        out.print_json(json.dumps(document, default=str))
        return 0
    summary = Table(show_header=False, box=None)
    summary.add_row("journal", str(path))
    summary.add_row("id", header.journal_id)
    summary.add_row("state", journal.state)
    summary.add_row("signature", status)
    summary.add_row("created", f"{header.created_at} on {header.host}")
    summary.add_row("sealed", header.sealed_at or "-")
    summary.add_row("versions", ", ".join(f"{k} {v}" for k, v in sorted(header.versions.items())))
    summary.add_row("alembic revision", str(header.meta.get("alembic_revision") or "-"))
    summary.add_row("tables", ", ".join(sorted(header.meta.get("schema", {}))) or "-")
    out.print(summary)
    table = Table(title=f"{len(operations)} operation(s)")
    for column in ("seq", "kind", "class / table", "row", "changes"):
        table.add_column(column)
    for sequence, op in operations:
        table.add_row(
            str(sequence),
            op["op"],
            f"{op['class'].rsplit(':', 1)[-1]} / {op['table']}",
            _target(op),
            _changes(op),
        )
    out.print(table)
    return 0


def verify(path: str, *, key: str | None = None, console: Console | None = None) -> int:
    """Check a journal completely; exit status 0 if it can be replayed, 1 if not."""
    out = console or Console()
    try:
        with Journal(path, key=key) as journal:
            journal.verify()
            count = journal.header.operation_count
            signed = "signed" if journal.signed else "unsigned"
    except (JournalError, FileNotFoundError) as err:
        out.print(f"[red]invalid[/red]: {err}", highlight=False)
        return 1
    out.print(
        f"[green]valid[/green]: {path}: sealed, {signed}, {count} operation(s)", highlight=False
    )
    return 0


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


def _engine(url: str) -> Any:
    try:
        return create_engine(make_url(url))
    except (ArgumentError, SQLAlchemyError, ImportError) as err:
        raise CommandError(f"cannot use database URL {url!r}: {err}") from err


def replay(
    url: str,
    paths: Sequence[str],
    *,
    models: Sequence[str] = (),
    on_conflict: ConflictPolicy = "fail",
    allow_schema_drift: bool = False,
    key: str | None = None,
    console: Console | None = None,
) -> int:
    """Replay journals (files, or directories of ``*.dbm``) in order, each exactly once.

    Several ``replay`` processes may share a directory and a database: a journal another
    process is applying right now is passed over and looked at again at the end.
    Exit status 0 when every journal is in the database (applied now or before), 1 if
    any failed.
    """
    out = console or Console()
    for module in models:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise CommandError(f"--models {module}: cannot import it ({err})") from err
    journals = _journals(paths)
    engine = _engine(url)
    outcomes: dict[Path, tuple[str, str]] = {}
    sessions = sessionmaker(engine, class_=JournalingSession, journal_key=key)
    try:
        with Progress(console=out, transient=True, disable=not out.is_terminal) as progress:
            task = progress.add_task("replaying", total=len(journals))
            pending = list(journals)
            for attempt in range(2):
                busy: list[Path] = []
                for path in pending:
                    outcome = _replay_one(
                        sessions,
                        path,
                        key,
                        on_conflict,
                        allow_schema_drift,
                        "skip" if attempt == 0 else "wait",
                    )
                    if outcome is None:
                        busy.append(path)
                        continue
                    outcomes[path] = outcome
                    progress.advance(task)
                pending = busy
    finally:
        engine.dispose()
    table = Table(title="replay")
    for column in ("journal", "outcome", "detail"):
        table.add_column(column)
    for path in journals:
        status, detail = outcomes[path]
        table.add_row(str(path), status, detail)
    out.print(table)
    return 0 if all(s in ("applied", "already applied") for s, _ in outcomes.values()) else 1


def _replay_one(
    sessions: Any,
    path: Path,
    key: str | None,
    on_conflict: ConflictPolicy,
    allow_schema_drift: bool,
    if_busy: Any,
) -> tuple[str, str] | None:
    started = time.monotonic()
    try:
        with sessions() as session:
            result = reconnect_and_commit(
                session,
                path,
                key=key,
                on_conflict=on_conflict,
                allow_schema_drift=allow_schema_drift,
                if_busy=if_busy,
            )
    except (JournalError, FileNotFoundError, SQLAlchemyError) as err:
        return "failed", str(err).splitlines()[0]
    if result.busy:
        return None
    elapsed = f"{time.monotonic() - started:.2f} s"
    if not result.applied:
        return "already applied", f"{result.journal_id}"
    skipped = f", {len(result.conflicts)} conflict(s)" if result.conflicts else ""
    return "applied", f"{result.operations} operation(s) in {elapsed}{skipped}"


def init_db(url: str, *, console: Console | None = None) -> int:
    """Create (or upgrade) orm-journal's ledger table with the packaged Alembic migration."""
    out = console or Console()
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            ledger.upgrade(connection)
    except SQLAlchemyError as err:
        raise CommandError(f"cannot migrate {url}: {str(err).splitlines()[0]}") from err
    finally:
        engine.dispose()
    out.print(f"ledger table {ledger.LEDGER_TABLE} is at the head of branch {ledger.BRANCH}")
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
    out.print(f"recorded {count} operation(s) into {journal}; the database is untouched")
    out.rule("2. orm-journal inspect")
    inspect(journal, console=out)
    out.rule("3. a replay process applies the journal")
    out.print(f"applied: {_step('replay', url, journal)}")
    out.rule("4. replaying again changes nothing (exactly once)")
    out.print(f"applied: {_step('replay', url, journal)}")
    out.rule("5. the database now")
    engine = create_engine(url)
    with sessionmaker(engine)() as session:
        rows = Table("asset", "version", "task", "published", "component", "location")
        for version in session.scalars(select(demo_models.AssetVersion)):
            for component in version.components:
                for location in component.locations:
                    rows.add_row(
                        version.asset.name,
                        str(version.version),
                        version.task.name if version.task else "-",
                        str(version.is_published),
                        component.name,
                        location.resource_identifier,
                    )
        out.print(rows)
    engine.dispose()
    out.print(f"files are in {workdir}")
    return 0
