"""Run one case: direct on A, recorded on B, replayed into B by another process, compared.

Two child processes per case, forked from a server that has imported SQLAlchemy and
orm-journal but no example (``multiprocessing``'s ``forkserver``, so a case costs
milliseconds instead of a fresh interpreter's seconds):

1. the *recording* process loads the example, creates its tables in A and B, runs the
   phases before the case's phase directly on both, runs the phase directly on A with a
   plain ``Session``, then runs it again on B inside ``deferred_operations``;
2. the *replaying* process loads the example's models (a replay service imports the
   application's models too) and applies the journal to B with ``reconnect_and_commit``.

Direct and recorded runs share the recording process on purpose: values an example fixes
at import time (``default=datetime.now()``) are then the same in both.

Outcomes: ``equal``; ``refused`` (recording raised ``DeferredOperationError``);
``crash`` (any other exception while recording or replaying, a process that died, or a
plain session failing inside orm_ext, which listens on every ``Session``); ``different``
(replayed without error into other rows); ``broken`` (the plain session failed by itself:
the adapter or the example is wrong, not the library); ``n/a`` (the example's tables
cannot be created on this backend).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session

import orm_ext
from orm_ext import DeferredOperationError, JournalingSession
from tests.corpus.adapters import EXAMPLES
from tests.corpus.compare import compare_databases
from tests.corpus.spec import Case, Example

__all__ = ["PASSING", "Outcome", "run_case"]

PASSING = ("equal", "refused")
# Generous: a phase takes well under a second; only a hang comes near this.
CHILD_TIMEOUT = 120
DETAIL_LINES = 3

MYSQL = ("mysql", "mariadb")  # the dialect names of MariaDB URLs
PRELOAD = ("sqlalchemy.orm", "orm_ext", "psycopg", "pymysql", "tests.corpus.runner")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one case came to; ``detail`` says why (for ``equal``: how many operations)."""

    kind: str
    detail: str = ""
    logs: Path | None = None


def run_case(case: Case, url_a: str, url_b: str, root: Path, work: Path) -> Outcome:
    """Run ``case`` on the empty databases A and B; logs and the journal go to ``work``."""
    example = case.example
    journal = work / "journal.sqlite"
    task = {
        "example": example.name,
        "phase": case.phase,
        "root": str(root),
        "url_a": url_a,
        "url_b": url_b,
        "journal": str(journal),
    }
    recorded = _in_child("record", task, work)
    if recorded["kind"] != "recorded":
        return Outcome(recorded["kind"], _relative(recorded["detail"], work), work)
    replayed = _in_child("replay", task, work)
    if replayed["kind"] != "replayed":
        return Outcome(replayed["kind"], _relative(replayed["detail"], work), work)
    differences = compare_databases(
        url_a,
        url_b,
        volatile=lambda t, c: example.matches(example.volatile, t, c),
        arbitrary=lambda t, c: example.matches(example.arbitrary, t, c),
    )
    if not differences:
        return Outcome("equal", f"{recorded['operations']} operation(s)", work)
    more = len(differences) - DETAIL_LINES
    shown = "; ".join(differences[:DETAIL_LINES]) + (f"; {more} more" if more > 0 else "")
    return Outcome("different", shown, work)


@functools.cache
def _forkserver() -> Any:
    """The process-wide forkserver context, told (once, on first use) what to preload."""
    context = multiprocessing.get_context("forkserver")
    # "__main__" (pytest's, or report.py) too: otherwise every child imports it again.
    context.set_forkserver_preload(["__main__", *PRELOAD])
    return context


def _relative(detail: str, work: Path) -> str:
    # Messages name the journal by its full path; the directory is in Outcome.logs.
    return detail.replace(f"{work}{os.sep}", "")


def _in_child(task: str, arguments: dict[str, str], work: Path) -> dict[str, Any]:
    result = work / f"{task}.json"
    log = work / f"{task}.log"
    process = _forkserver().Process(target=_child, args=(task, arguments, str(result), str(log)))
    process.start()
    process.join(CHILD_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join()
        return {"kind": "crash", "detail": f"{task}: no result within {CHILD_TIMEOUT} s"}
    if not result.is_file():
        return {
            "kind": "crash",
            "detail": f"{task}: the process died with exit code {process.exitcode}; see {log}",
        }
    answer: dict[str, Any] = json.loads(result.read_text())
    return answer


# -- in the child processes ----------------------------------------------------------------


def _child(task: str, arguments: dict[str, str], result: str, log: str) -> None:
    with open(log, "w") as out:
        # The examples print, and their engines echo: keep it out of the test's output.
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            answer = (_record if task == "record" else _replay)(**arguments)
        except BaseException as err:  # an error of ours, not of a phase: still a result
            traceback.print_exc()
            answer = {"kind": "crash", "detail": f"{task}: harness error {_describe(err)}"}
        sys.stdout.flush()
    Path(result).write_text(json.dumps(answer))


def _record(example: str, phase: str, root: str, url_a: str, url_b: str, journal: str) -> Any:
    adapter = EXAMPLES[example]
    module = adapter.load(Path(root))
    if sa.make_url(url_a).get_dialect().name in MYSQL:
        _bounded_varchar()
    # B first: the direct run of the phase on A then comes right before its recording.
    failure = _prepare(adapter, module, phase, url_b, "B") or _prepare(
        adapter, module, phase, url_a, "A"
    )
    if failure is not None:
        return failure
    with _engines(url_b) as (b,):
        session = JournalingSession(b)
        try:
            if adapter.session_setup is not None:
                adapter.session_setup(session, module)
            if adapter.prepare is not None:
                adapter.prepare(module, phase)
            with session.deferred_operations(journal) as handle:
                adapter.phase(phase).body(session, module)
        except DeferredOperationError as err:
            traceback.print_exc()
            return {"kind": "refused", "detail": _describe(err, name=False)}
        except Exception as err:
            traceback.print_exc()
            return {"kind": "crash", "detail": f"record: {_describe(err)}"}
        finally:
            session.close()
    return {"kind": "recorded", "operations": handle.operations}


def _prepare(
    adapter: Example, module: Any, phase: str, url: str, label: str
) -> dict[str, str] | None:
    """Create the tables in ``url`` and run the phases before ``phase`` there, directly;
    on A also ``phase`` itself. Return what went wrong, if anything."""
    with _engines(url) as (engine,):
        try:
            adapter.metadata(module).create_all(engine, checkfirst=False)
        except sa.exc.CompileError as err:
            return {"kind": "n/a", "detail": f"the example's tables: {_describe(err)}"}
        names = [p.name for p in adapter.before(phase)] + ([phase] if label == "A" else [])
        for name in names:
            try:
                _direct(adapter, module, name, engine)
            except Exception as err:
                traceback.print_exc()
                return _direct_failure(err, f"phase {name} on {label}")
    return None


def _direct_failure(err: Exception, where: str) -> dict[str, str]:
    if _raised_in_library(err):
        # orm_ext listens on every Session: a plain one can fail through it too.
        detail = f"direct: the plain Session failed inside orm_ext in {where}"
        return {"kind": "crash", "detail": f"{detail}: {_describe(err)}"}
    return {"kind": "broken", "detail": f"the plain Session failed in {where}: {_describe(err)}"}


def _bounded_varchar() -> None:
    """Create ``String()`` columns without a length as ``VARCHAR(255)`` on MariaDB.

    Most examples map ``Mapped[str]``, a VARCHAR without length, which SQLite and
    PostgreSQL accept and MariaDB cannot create; this is the length a user running them
    there would add. Only the DDL changes, not the mapping (nor the schema fingerprint),
    and only in this process.
    """

    @compiles(sa.String, *MYSQL)
    def _string(type_: sa.String, compiler: Any, **kw: Any) -> str:
        if type_.length is None:
            type_ = sa.String(255, collation=type_.collation)
        text: str = compiler.visit_string(type_, **kw)
        return text


def _direct(adapter: Example, module: Any, phase: str, engine: sa.Engine) -> None:
    with Session(engine) as session:
        if adapter.session_setup is not None:
            adapter.session_setup(session, module)
        if adapter.prepare is not None:
            adapter.prepare(module, phase)
        adapter.phase(phase).body(session, module)
        session.commit()


def _replay(example: str, phase: str, root: str, url_a: str, url_b: str, journal: str) -> Any:
    adapter = EXAMPLES[example]
    with _engines(url_b, durable=True) as (b,):
        module = adapter.load(Path(root))
        if adapter.prepare is not None:
            adapter.prepare(module, phase)
        try:
            with JournalingSession(b) as session:
                result = session.reconnect_and_commit(journal)
        except Exception as err:
            traceback.print_exc()
            return {"kind": "crash", "detail": f"replay: {_describe(err)}"}
        if not result.applied:
            return {"kind": "crash", "detail": "replay: the journal was not applied"}
        return {"kind": "replayed", "operations": result.operations}


@contextlib.contextmanager
def _engines(*urls: str, durable: bool = False) -> Iterator[tuple[sa.Engine, ...]]:
    """Engines on ``urls``; unless ``durable``, their commits skip waiting for the disk.

    A crash-safety setting only (``synchronous_commit`` on PostgreSQL, ``synchronous`` on
    SQLite): what commits and what other connections see are the same. The replaying
    engine stays as a user's would.
    """
    engines = tuple(_engine(url, durable=durable) for url in urls)
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


def _engine(url: str, *, durable: bool) -> sa.Engine:
    backend = sa.make_url(url).get_backend_name()
    if durable or backend not in ("postgresql", "sqlite"):
        return sa.create_engine(url, poolclass=sa.NullPool)
    if backend == "postgresql":
        options = {"options": "-c synchronous_commit=off"}
        return sa.create_engine(url, poolclass=sa.NullPool, connect_args=options)
    engine = sa.create_engine(url, poolclass=sa.NullPool)

    @event.listens_for(engine, "connect")
    def _unsynchronised(connection: Any, record: Any) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    return engine


def _raised_in_library(err: BaseException) -> bool:
    library = Path(orm_ext.__file__).parent
    frames = traceback.extract_tb(err.__traceback__)
    return any(Path(frame.filename).is_relative_to(library) for frame in frames)


def _describe(err: BaseException, *, name: bool = True) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " / ".join(lines[:DETAIL_LINES])
    if isinstance(err, AssertionError):
        # A phase's check of what it reads back: say which one.
        frame = traceback.extract_tb(err.__traceback__)[-1]
        text = f"{frame.line} ({Path(frame.filename).name}:{frame.lineno}) {text}".strip()
    text = text or "(no message)"
    return f"{type(err).__name__}: {text}" if name else text
