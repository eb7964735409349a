"""Fuzzing what the reader trusts: the SQLite container, the operations, and dill values.

Beyond test_fuzz_reader.py (damaged bytes and records), three campaigns:

1. Structure. Valid journals, signed and unsigned, whose SQLite schema was edited
   (:data:`tests.reliability.structure_mutations.STRUCTURES`: a view named ``records``,
   some serving another journal's rows or never ending, a trigger, another table, view or
   index, ``records`` declared another way). Each is read in a child process killed after
   :data:`CHILD_TIMEOUT` seconds (a hang is a failure) through ``Journal()``, ``verify()``,
   ``batches()``, ``operations()``, ``orm-journal inspect`` (also ``--json``),
   ``orm-journal verify`` and ``reconnect_and_commit`` into a SQLite database. The format
   allows none of them (SPEC §4): ``Journal()`` and replay refuse each with
   JournalCorruptError, the command line exits non-zero with one line, and the database
   is unchanged. A file rewritten in place after verification is refused or read as it
   was verified, never as rewritten.
2. Operations. Well-chained unsigned journals written directly with ``JournalWriter``
   whose batches hold one malformed operation among valid ones. Replay raises only SPEC
   §2 errors, a JournalCorruptError naming the operation when its shape is wrong, and
   leaves the database unchanged; ``inspect`` exits 0 or with one error line.
3. Code. An unsigned journal holding a dill value whose unpickling creates a marker file:
   no replay (API or command line), ``inspect`` or ``Journal.operations()`` creates it,
   replay refuses the journal with JournalSignatureError before a schema refusal, and the
   database, ledger included, is unchanged.

What the campaign found is pinned by ``test_found_by_replay`` and ``test_found_by_inspect``
(and run first by the fuzz tests); cases the library still fails are marked xfail with
the reason. Counts are those of the default run; ``--soak`` multiplies the hypothesis
examples by 10.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from journal import (
    Journal,
    JournalCorruptError,
    JournalSignatureError,
    JournalWriter,
    OpaqueValue,
)
from orm_ext import (
    DeferredOperationError,
    JournalingSession,
    ReplayConflictError,
    ReplayResult,
    SchemaMismatchError,
)
from orm_ext.fingerprint import describe_table
from orm_ext.ledger import LEDGER_TABLE
from tests.models import Account, Asset, AssetVersion, Base, Post, Tag, Task, post_tag
from tests.reliability.journal_mutations import EditJson, SetField, rechain
from tests.reliability.structure_mutations import (
    ACCOUNT,
    POST,
    STRUCTURES,
    TASK,
    VERSION,
    Corruption,
    Malformed,
    RotatedIndex,
    Structure,
    corrupt_last,
    malformed_programs,
    nested_criteria,
    operation,
    programs,
    run_command,
)
from tests.reliability.test_fuzz_reader import ALLOWED, KEY, SETTINGS, TouchOnLoad

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
# A child reads a journal of five records; anything still running after this long hangs.
CHILD_TIMEOUT = 30
# Exactly these types, as in test_fuzz_reader; replay may also say these where they apply.
REPLAY_ALLOWED = ALLOWED | {DeferredOperationError, SchemaMismatchError, ReplayConflictError}
Dump = dict[str, list[str]]


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


ALLOWED_NAMES = frozenset(map(qualified, ALLOWED))
REPLAY_NAMES = frozenset(map(qualified, REPLAY_ALLOWED))
CORRUPT = qualified(JournalCorruptError)
PROGRAM_META = {
    "classes": sorted([TASK, VERSION, POST, ACCOUNT]),
    "schema": {
        str(table.name): describe_table(table)
        for table in (
            Task.__table__,
            AssetVersion.__table__,
            Post.__table__,
            post_tag,
            Account.__table__,
        )
    },
}


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned journals are read without a key, whatever the shell running the tests sets."""
    monkeypatch.delenv("ORM_JOURNAL_KEY", raising=False)


# -- the world: a seeded database and recorded journals --------------------------------------


def dump(database: Path, *, ledger_ids_only: bool = False) -> Dump:
    """Every row of every table of a SQLite database, and its schema.

    With ``ledger_ids_only`` the ledger shows only which journals it holds, not when or
    where they were applied.
    """
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        found = {
            "sqlite_master": sorted(
                repr(row) for row in conn.execute("SELECT type, name, sql FROM sqlite_master")
            )
        }
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (name,) in tables:
            columns = "journal_id" if ledger_ids_only and name == LEDGER_TABLE else "*"
            found[name] = sorted(
                repr(row) for row in conn.execute(f'SELECT {columns} FROM "{name}"')
            )
    finally:
        conn.close()
    return found


def replay_into(
    database: Path, path: Path, key: bytes | None = None
) -> tuple[Exception | None, ReplayResult | None]:
    """Replay ``path`` into the SQLite file ``database``; return the error or the result."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        # The test configuration turns warnings into errors; SQLAlchemy's warnings about
        # what a crafted journal asks for are not the exceptions this campaign judges.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sessionmaker(engine, class_=JournalingSession, journal_key=key)() as session:
                try:
                    return None, session.reconnect_and_commit(path)
                except Exception as err:
                    return err, None
    finally:
        engine.dispose()


def seed_rows(database: Path, folder: Path) -> None:
    """The rows the operations of structure_mutations name, and the ledger (by a first replay)."""
    engine = sa.create_engine(f"sqlite:///{database}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                Task(id=1, name="t1"),
                Task(id=2, name="t2"),
                Asset(id=1, name="a1"),
                AssetVersion(id=1, asset_id=1, task_id=1, version=1),
                Tag(id=2, label="g2"),
                Post(id=1, title="p1", tags=[Tag(id=1, label="g1")]),
                Account(id=1, code="c1"),
            ]
        )
        session.commit()
    engine.dispose()
    empty = folder / "empty.dbm"
    with JournalWriter.create(empty) as writer:
        writer.seal()
    error, result = replay_into(database, empty)
    assert error is None and result is not None and result.applied, error


def record(template: Path, path: Path, key: bytes | None, tag: str) -> None:
    """Record three flushes against the seeded database: inserts, an update, a linked insert."""
    engine = sa.create_engine(f"sqlite:///{template}")
    sessions = sessionmaker(engine, class_=JournalingSession, journal_key=key)
    with sessions() as session, session.deferred_operations(path):
        session.add_all([Task(name=f"{tag}-task"), Asset(name=f"{tag}-asset")])
        session.flush()
        task = session.get(Task, 1)
        assert task is not None
        task.name = f"{tag}-renamed"
        session.flush()
        session.add(AssetVersion(asset=session.get(Asset, 1), version=2, comment=tag))
    engine.dispose()


def content(path: Path, key: bytes | None) -> str:
    with Journal(path, key=key) as journal:
        journal.verify()
        return repr([(b.number, b.first_sequence, b.operations) for b in journal.batches()])


@dataclasses.dataclass(frozen=True)
class Recorded:
    """A pristine journal, another one recorded with the same key, and what replaying gives."""

    path: Path
    key: bytes | None
    donor: Path
    content: str
    applied: Dump


@dataclasses.dataclass(frozen=True)
class World:
    template: Path
    before: Dump
    journals: dict[str, Recorded]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A seeded SQLite database with its ledger, and signed and unsigned recorded journals."""
    folder = tmp_path_factory.mktemp("world")
    template = folder / "template.sqlite"
    seed_rows(template, folder)
    journals = {}
    for kind, key in (("signed", KEY), ("unsigned", None)):
        path, donor = folder / f"{kind}.dbm", folder / f"{kind}-donor.dbm"
        record(template, path, key, "recorded")
        record(template, donor, key, "donor")
        applied = folder / f"{kind}-applied.sqlite"
        shutil.copyfile(template, applied)
        error, _ = replay_into(applied, path, key)
        assert error is None, error
        journals[kind] = Recorded(
            path, key, donor, content(path, key), dump(applied, ledger_ids_only=True)
        )
    return World(template, dump(template), journals)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


def fresh(workspace: Path, world: World) -> tuple[Path, Path]:
    """An empty workspace with a copy of the seeded database; the journal path to write."""
    for leftover in workspace.iterdir():
        leftover.unlink()
    database = workspace / "db.sqlite"
    shutil.copyfile(world.template, database)
    return workspace / "journal.dbm", database


# -- judging what happened -------------------------------------------------------------------


def told(step: dict[str, Any]) -> str:
    if step["error"] is None:
        return "succeeded"
    return f"raised {step['error']}: {step['message']}\n{step['traceback']}"


def command_problems(step: str, ran: dict[str, Any], *, must_fail: bool) -> list[str]:
    """An ``orm-journal`` run exits 0 (JSON with ``--json``) or non-zero with one line, no traceback."""
    if ran["escaped"]:
        return [f"orm-journal {step}: an exception escaped main():\n{ran['escaped']}"]
    problems = []
    output = ran["stdout"] + ran["stderr"]
    if "Traceback" in output:
        problems.append(f"orm-journal {step} printed a traceback:\n{output}")
    if ran["status"] == 0:
        if must_fail:
            problems.append(f"orm-journal {step} exited 0 on a file it must refuse")
        elif "--json" in step:
            try:
                json.loads(ran["stdout"])
            except ValueError:
                problems.append(f"orm-journal {step} printed no JSON document:\n{ran['stdout']}")
        return problems
    if step.startswith("verify"):
        # verify says "invalid: ..." on stdout: see verify_line_problems.
        if not output.strip():
            problems.append(f"orm-journal {step} exited {ran['status']} without a word")
        return problems
    lines = ran["stderr"].splitlines()
    if lines and not lines[0].startswith(f"orm-journal {step.split()[0]}: error: "):
        problems.append(f"orm-journal {step}: not an error line: {lines[0]!r}")
    if len(lines) != 1:
        problems.append(
            f"orm-journal {step} exited {ran['status']} with {len(lines)} lines of error, "
            f"not one:\n{output}"
        )
    return problems


def verify_line_problems(ran: dict[str, Any]) -> list[str]:
    """A refusing ``orm-journal verify`` says so in one line, unwrapped in a pipe (SPEC §7)."""
    lines = [line for line in (ran["stdout"] + ran["stderr"]).splitlines() if line.strip()]
    if ran["status"] != 0 and len(lines) != 1:
        return [f"orm-journal verify exited {ran['status']} with {len(lines)} lines:\n{lines}"]
    return []


def all_commands(report: dict[str, Any], *, must_fail: bool) -> list[str]:
    problems = []
    for step in ("inspect", "inspect --json", "verify --cli"):
        problems += command_problems(step, report[step], must_fail=must_fail)
    return problems


def names_operation(message: str, sequence: int, record: int) -> bool:
    return f"operation {sequence}" in message or f"record {record}" in message


# -- 1. structure ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """What the child reported per journal, or how it ended without reporting."""

    reports: dict[str, dict[str, Any]] | None
    databases: dict[str, Path]
    failure: str | None = None
    unsupported: str | None = None  # this SQLite library cannot build the structure


class Children:
    """Runs the child of each structure once, as many at a time as there are CPUs."""

    def __init__(self, world: World, folder: Path) -> None:
        self.world = world
        self.folder = folder
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1))
        self.runs: dict[str, Future[ChildRun]] = {}
        self.lock = threading.Lock()

    def start(self, structure: Structure | RotatedIndex) -> Future[ChildRun]:
        with self.lock:
            if structure.name not in self.runs:
                self.runs[structure.name] = self.pool.submit(self._run, structure)
            return self.runs[structure.name]

    def _run(self, structure: Structure | RotatedIndex) -> ChildRun:
        folder = self.folder / structure.name
        jobs, databases = [], {}
        for kind, original in self.world.journals.items():
            (folder / kind).mkdir(parents=True)
            path = folder / kind / "journal.dbm"
            shutil.copyfile(original.path, path)
            try:
                structure.apply(path, original.donor)
            except sqlite3.OperationalError as err:
                if "no such module" not in str(err):
                    raise
                return ChildRun(None, databases, unsupported=f"{structure}: {err}")
            databases[kind] = folder / kind / "db.sqlite"
            shutil.copyfile(self.world.template, databases[kind])
            key = None if original.key is None else original.key.decode()
            jobs.append(
                {"name": kind, "path": str(path), "key": key, "database": str(databases[kind])}
            )
        result = folder / "result.json"
        case = folder / "case.json"
        case.write_text(json.dumps({"jobs": jobs, "result": str(result)}))
        env = {k: v for k, v in os.environ.items() if k not in ("ORM_JOURNAL_KEY", "COLUMNS")}
        argv = [sys.executable, "-m", "tests.reliability.structure_mutations", str(case)]
        try:
            done = subprocess.run(
                argv, cwd=REPO, env=env, capture_output=True, timeout=CHILD_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as timeout:
            said = (timeout.stderr or b"").decode(errors="replace").strip().splitlines()
            last = said[-1] if said else "before its first step"
            return ChildRun(
                None, databases, f"hung: killed after {CHILD_TIMEOUT} s; last step started: {last}"
            )
        if done.returncode != 0 or not result.exists():
            stderr = done.stderr.decode(errors="replace")
            return ChildRun(None, databases, f"the child died ({done.returncode}):\n{stderr}")
        return ChildRun(json.loads(result.read_text()), databases)


@pytest.fixture(scope="module")
def children(
    request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Children]:
    """The child runs, all those this session selected started at once."""
    runner = Children(world, tmp_path_factory.mktemp("structure"))
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and "structure" in params:
            runner.start(params["structure"])
    yield runner
    runner.pool.shutdown(wait=True)


def child_report(
    children: Children, structure: Structure | RotatedIndex, kind: str
) -> tuple[dict[str, Any] | None, list[str], Path]:
    """What the child said about the journal ``kind``, the problems so far, its database."""
    run = children.start(structure).result()
    if run.unsupported is not None:
        pytest.skip(run.unsupported)
    problems = []
    report = None
    if run.failure is not None:
        problems.append(run.failure)
    elif run.reports is not None:
        report = run.reports[kind]
    if dump(run.databases[kind]) != children.world.before and report is None:
        problems.append("the database changed")
    return report, problems, run.databases[kind]


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
def test_container_other_than_the_format_is_refused(
    children: Children, world: World, structure: Structure, kind: str
) -> None:
    """A journal whose SQLite schema is not exactly the format's is refused by every reader at once, in one line, with the database unchanged."""
    report, problems, database = child_report(children, structure, kind)
    if report is not None:
        if report["open"]["error"] != CORRUPT:
            problems.append(f"Journal() {told(report['open'])}; expected JournalCorruptError")
        for step in ("state", "verify", "batches", "operations"):
            if step in report and report[step]["error"] not in ALLOWED_NAMES | {None}:
                problems.append(f"{step} {told(report[step])}")
        problems += all_commands(report, must_fail=True)
        if report["replay"]["error"] != CORRUPT:
            problems.append(
                f"reconnect_and_commit {told(report['replay'])}; expected JournalCorruptError"
            )
        if dump(database) != world.before:
            problems.append("reconnect_and_commit changed the database")
    assert not problems, "\n".join(problems)


def test_verify_command_refuses_in_one_line(children: Children) -> None:
    """orm-journal verify, its output a pipe, says that each altered container is invalid in one unwrapped line."""
    runs = [(structure, children.start(structure)) for structure in STRUCTURES]
    problems = []
    for structure, run in runs:
        reports = run.result().reports or {}
        for kind, report in sorted(reports.items()):
            for problem in verify_line_problems(report["verify --cli"]):
                problems.append(f"{structure} ({kind}): {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
@pytest.mark.parametrize("structure", [RotatedIndex()], ids=str)
def test_index_over_other_rows_is_refused_or_read_as_written(
    children: Children, world: World, structure: RotatedIndex, kind: str
) -> None:
    """An index that pairs keys with other rows under the format's own schema gives SPEC §2 errors or the journal as written, never another content."""
    report, problems, database = child_report(children, structure, kind)
    original = world.journals[kind]
    if report is not None:
        for step in ("open", "state", "verify", "batches", "operations"):
            if step in report and report[step]["error"] not in ALLOWED_NAMES | {None}:
                problems.append(f"{step} {told(report[step])}")
        batches = report.get("batches", {})
        if batches.get("error", "") is None and batches["content"] != original.content:
            problems.append(f"batches() read another content: {batches['content']}")
        problems += all_commands(report, must_fail=False)
        replay = report["replay"]
        if replay["error"] is None:
            if dump(database, ledger_ids_only=True) != original.applied:
                problems.append("reconnect_and_commit applied something else than the journal")
        elif replay["error"] not in REPLAY_NAMES:
            problems.append(f"reconnect_and_commit {told(replay)}")
        elif dump(database) != world.before:
            problems.append("a refused replay changed the database")
    assert not problems, "\n".join(problems)


def rewritten(world: World, kind: str, workspace: Path) -> bytes:
    """Another valid journal for the same reader: same header and id when unsigned, re-chained.

    Without the key nobody can re-sign, so the signed one is the donor: another journal
    signed with the same key.
    """
    original = world.journals[kind]
    if original.key is not None:
        return original.donor.read_bytes()
    forged = workspace / "forged.dbm"
    shutil.copyfile(original.path, forged)
    conn = sqlite3.connect(f"file:{original.donor}?mode=ro", uri=True)
    try:
        (value,) = conn.execute("SELECT value FROM records WHERE key = '000000000002'").fetchone()
    finally:
        conn.close()
    SetField(2, count=int.from_bytes(value[33:37], "big"), body=value[37:]).apply(forged)
    rechain(forged, None)
    data = forged.read_bytes()
    forged.unlink()
    return data


def overwrite(path: Path, data: bytes) -> None:
    """Write ``data`` over the file in place (same inode), as another process could."""
    with open(path, "r+b") as file:
        file.write(data)
        file.truncate()


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_file_rewritten_after_verify_is_read_as_verified(
    world: World, workspace: Path, kind: str
) -> None:
    """A journal rewritten in place between verify() and batches() is read as verified or refused, never as rewritten."""
    original = world.journals[kind]
    forged = rewritten(world, kind, workspace)
    path = workspace / "journal.dbm"
    shutil.copyfile(original.path, path)
    with Journal(path, key=original.key) as journal:
        journal.verify()
        overwrite(path, forged)
        error: Exception | None = None
        try:
            batches = [(b.number, b.first_sequence, b.operations) for b in journal.batches()]
        except Exception as err:
            error = err
    if error is not None:
        assert type(error) in ALLOWED, f"batches() raised {type(error).__name__}: {error}"
    else:
        assert repr(batches) == original.content, "batches() read the rewritten file"


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_file_rewritten_during_replay_is_applied_as_verified(
    world: World, workspace: Path, kind: str
) -> None:
    """A journal rewritten in place when replay claims it in the ledger is applied as verified or refused with the database unchanged."""
    original = world.journals[kind]
    forged = rewritten(world, kind, workspace)
    path, database = fresh(workspace, world)
    shutil.copyfile(original.path, path)
    engine = sa.create_engine(f"sqlite:///{database}")
    claimed = []

    # The ledger row is written after verification (SPEC §5.6: verified before anything
    # is written) and before the operations are applied.
    @event.listens_for(engine, "before_cursor_execute")
    def rewrite_on_claim(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not claimed and statement.lstrip().upper().startswith(
            f"INSERT INTO {LEDGER_TABLE.upper()}"
        ):
            claimed.append(statement)
            overwrite(path, forged)

    error: Exception | None = None
    try:
        with sessionmaker(engine, class_=JournalingSession, journal_key=original.key)() as s:
            try:
                s.reconnect_and_commit(path)
            except Exception as err:
                error = err
    finally:
        engine.dispose()
    assert claimed, "replay never claimed the journal, so the file was never rewritten"
    if error is not None:
        assert type(error) in REPLAY_ALLOWED, f"{type(error).__name__}: {error}"
        assert dump(database) == world.before, "a refused replay changed the database"
    else:
        assert dump(database, ledger_ids_only=True) == original.applied, (
            "replay applied the rewritten file"
        )


# -- 2. operations -----------------------------------------------------------------------------


def write_journal(path: Path, batches: list[list[Any]], **meta: Any) -> None:
    with JournalWriter.create(path) as writer:
        for batch in batches:
            writer.append(batch)
        writer.seal(meta={**PROGRAM_META, **meta})


def inspect_problems(path: Path) -> list[str]:
    problems = []
    for step, argv in (("inspect", ["inspect"]), ("inspect --json", ["inspect", "--json"])):
        problems += command_problems(step, run_command([*argv, str(path)]), must_fail=False)
    return problems


def replay_problems(workspace: Path, world: World, malformed: Malformed) -> list[str]:
    """Replay ``malformed`` into a copy of the seeded database; say what went wrong."""
    path, database = fresh(workspace, world)
    write_journal(path, malformed.batches)
    error, _ = replay_into(database, path)
    problems = []
    said = "" if error is None else f"{type(error).__name__}: {error}"
    if error is None:
        problems.append("replay applied the journal")
    elif malformed.corruption.shape:
        if type(error) is not JournalCorruptError:
            problems.append(f"replay raised {said}; expected JournalCorruptError")
        elif not names_operation(str(error), malformed.sequence, malformed.record):
            problems.append(f"the error does not name operation {malformed.sequence}: {said}")
    elif type(error) not in REPLAY_ALLOWED:
        problems.append(f"replay raised {said}")
    if dump(database) != world.before:
        problems.append("the database changed")
    return problems


def found(
    name: str,
    steps: list[str],
    corruption: Corruption,
    cuts: tuple[int, ...] = (),
    *,
    still: str | None = None,
) -> Any:
    """A case the campaign found; ``still`` says why it still fails, marking it xfail."""
    marks = [] if still is None else [pytest.mark.xfail(strict=True, reason=still)]
    return pytest.param(corrupt_last(steps, corruption, cuts), id=name, marks=marks)


INSERTS = ["insert_task", "insert_version"]
# Found by the campaign. Before the trust-boundary fix the first five escaped as TypeError
# (not-a-mapping), ran a bulk_update as a DELETE (unknown-bulk-kind), deleted every task
# (where-on-tablename: ``Task.__tablename__ == "task"`` is True), dropped a value silently
# (unknown-attribute) or took True for ref 1 (bool-target). The others still fail as said.
FOUND_BY_REPLAY = [
    found("not-a-mapping", ["insert_task"], Corruption("replace", None, None)),
    found(
        "unknown-bulk-kind-ran-as-delete",
        ["bulk_insert", "bulk_update"],
        Corruption("set", "op", "bulk_merge"),
        (1,),
    ),
    found(
        "where-on-tablename-matched-every-row",
        ["bulk_delete"],
        Corruption("set", "where", ["cmp", "eq", "__tablename__", "task"], shape=False),
    ),
    found(
        "unknown-attribute-was-dropped",
        ["insert_task"],
        Corruption("merge", "values", {"nosuch": 1}, shape=False),
    ),
    found(
        "bool-target-was-ref-1",
        ["insert_task", "update_task"],
        Corruption("set", "target", True),
        (1,),
    ),
    found(
        "update-without-old",
        ["update_account"],
        Corruption("drop", "old"),
    ),
    found(
        "delete-without-old",
        ["insert_task", "delete_task"],
        Corruption("drop", "old"),
        (1,),
    ),
    found(
        "bulk-delete-without-where",
        ["bulk_delete"],
        Corruption("drop", "where"),
    ),
    found(
        "bulk-update-without-where",
        ["bulk_update"],
        Corruption("drop", "where"),
    ),
    found(
        "link-target-of-two-values",
        ["insert_version"],
        Corruption("set", "links", {"asset": [1, 2]}),
    ),
    found(
        "duplicate-ref",
        INSERTS,
        Corruption("set", "ref", 1, shape=False),
        (1,),
    ),
    found(
        "version-true",
        ["update_account"],
        Corruption("set", "version", True),
    ),
    found(
        "version-not-a-pair",
        ["update_account"],
        Corruption("set", "version", "x"),
    ),
    found(
        "attribute-name-not-text",
        ["insert_task"],
        Corruption("merge", "values", {1: "x"}),
    ),
    found(
        "target-holding-a-list",
        ["update_account"],
        Corruption("set", "target", [[1]]),
    ),
    found(
        "collection-target-without-values",
        ["link_tag"],
        Corruption("set", "added", {"tags": [[]]}),
    ),
    found(
        "in-without-a-list",
        ["bulk_delete"],
        Corruption("set", "where", ["cmp", "in", "name", "not a list"]),
    ),
]
FOUND_BY_INSPECT = [
    found(name, steps, corruption)
    for name, steps, corruption in [
        ("operation-not-a-mapping", ["insert_task"], Corruption("replace", None, None)),
        ("kind-not-text", ["insert_task"], Corruption("set", "op", 7)),
        ("class-not-text", ["insert_task"], Corruption("set", "class", None)),
        ("values-not-a-mapping", ["insert_task"], Corruption("set", "values", None)),
        ("old-not-a-mapping", ["update_account"], Corruption("set", "old", 7)),
        ("refs-entry-not-a-pair", ["insert_task"], Corruption("set", "refs", {"name": None})),
        ("version-of-one-value", ["update_account"], Corruption("set", "version", [1])),
        ("bytes-attribute-name", ["insert_task"], Corruption("merge", "values", {b"name": "x"})),
    ]
]


def test_valid_programs_replay(workspace: Path, world: World, soak: int) -> None:
    """The operations that the malformed-operation campaign corrupts replay cleanly as written."""

    @settings(max_examples=15 * soak, **SETTINGS)
    @given(batches=programs())
    def case(batches: list[list[dict[str, Any]]]) -> None:
        path, database = fresh(workspace, world)
        write_journal(path, batches)
        error, result = replay_into(database, path)
        assert error is None, f"{type(error).__name__}: {error}"
        assert result is not None and result.applied
        assert dump(database) != world.before
        assert not inspect_problems(path)

    case()


def examples(params: list[Any]) -> Any:
    """Run the found cases first, as explicit examples of ``malformed``."""

    def decorate(test: Any) -> Any:
        for param in params:
            test = example(malformed=param.values[0])(test)
        return test

    return decorate


def test_malformed_operations_are_refused_by_replay(
    workspace: Path, world: World, soak: int
) -> None:
    """A well-chained journal with one malformed operation is refused by replay with a SPEC §2 error (JournalCorruptError naming it when its shape is wrong), the database unchanged."""

    @settings(max_examples=100 * soak, **SETTINGS)
    @given(malformed=malformed_programs())
    @examples(FOUND_BY_REPLAY)
    def case(malformed: Malformed) -> None:
        problems = replay_problems(workspace, world, malformed)
        assert not problems, "\n".join(problems)

    case()


def test_inspect_shows_malformed_operations_without_a_traceback(
    workspace: Path, world: World, soak: int
) -> None:
    """orm-journal inspect (also --json) of a journal with a malformed operation exits 0 or with one error line, never a traceback."""

    @settings(max_examples=50 * soak, **SETTINGS)
    @given(malformed=malformed_programs())
    @examples(FOUND_BY_INSPECT)
    def case(malformed: Malformed) -> None:
        path, _ = fresh(workspace, world)
        write_journal(path, malformed.batches)
        problems = inspect_problems(path)
        assert not problems, "\n".join(problems)

    case()


@pytest.mark.parametrize("malformed", FOUND_BY_REPLAY)
def test_found_by_replay(workspace: Path, world: World, malformed: Malformed) -> None:
    """Each malformed operation the campaign found is refused by replay, the database unchanged."""
    problems = replay_problems(workspace, world, malformed)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("malformed", FOUND_BY_INSPECT)
def test_found_by_inspect(workspace: Path, world: World, malformed: Malformed) -> None:
    """Each malformed operation the campaign found is shown by inspect without a traceback."""
    path, _ = fresh(workspace, world)
    write_journal(path, malformed.batches)
    problems = inspect_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("depth", [60, 240])
@pytest.mark.parametrize("kind", ["bulk_update", "bulk_delete"])
def test_deeply_nested_criteria(workspace: Path, world: World, kind: str, depth: int) -> None:
    """A WHERE clause nested hundreds of levels deep replays faithfully (it matches no row) or is refused with a SPEC §2 error."""
    path, database = fresh(workspace, world)
    fields: dict[str, Any] = {"where": nested_criteria(depth)}
    if kind == "bulk_update":
        fields["values"] = {"name": "matched"}
    write_journal(path, [[operation(kind, TASK, **fields)]])
    error, _ = replay_into(database, path)
    after = dump(database)
    if error is None:
        assert {k: v for k, v in after.items() if k != LEDGER_TABLE} == {
            k: v for k, v in world.before.items() if k != LEDGER_TABLE
        }, "the statement changed rows it does not match"
    else:
        assert type(error) in REPLAY_ALLOWED, f"{type(error).__name__}: {error}"
        assert after == world.before
    assert not inspect_problems(path)


# -- 3. code -----------------------------------------------------------------------------------


def dill_journal(path: Path, marker: Path, variant: str) -> None:
    """Three batches of inserts into ``task``; the last one's name is a TouchOnLoad value.

    ``schema-drift`` also says the journal was recorded for a table the database lacks;
    ``seal-denies-pickles`` edits the seal to say no record holds a dill value and
    re-chains the journal (anyone can, without a key).
    """
    meta: dict[str, Any] = {
        "classes": [TASK],
        "schema": {"task": describe_table(Task.__table__)},
    }
    if variant == "schema-drift":
        meta["schema"]["gone"] = describe_table(sa.Table("gone", sa.MetaData(), sa.Column("id")))
    with JournalWriter.create(path) as writer:
        writer.append([operation("insert", TASK, ref=1, values={"name": "d1"})])
        writer.append([operation("insert", TASK, ref=2, values={"name": "d2"})])
        writer.append([operation("insert", TASK, ref=3, values={"name": TouchOnLoad(marker)})])
        writer.seal(meta=meta)
    if variant == "seal-denies-pickles":
        EditJson(last=True, field="pickled", text="0").apply(path)
        rechain(path, None)


DILL_VARIANTS = ["plain", "schema-drift", "seal-denies-pickles"]


@pytest.mark.parametrize("variant", DILL_VARIANTS)
def test_untrusted_dill_is_refused_by_replay(
    workspace: Path, world: World, tmp_path: Path, variant: str
) -> None:
    """reconnect_and_commit refuses an unsigned journal holding a dill value with JournalSignatureError, before the schema check, unpickling nothing and claiming nothing."""
    marker = tmp_path / "marker"
    path, database = fresh(workspace, world)
    dill_journal(path, marker, variant)
    error, _ = replay_into(database, path)
    assert not marker.exists(), "replay unpickled a value of an unsigned journal"
    expected = (
        {JournalSignatureError, JournalCorruptError}
        if variant == "seal-denies-pickles"
        else {JournalSignatureError}
    )
    assert type(error) in expected, f"{type(error).__name__}: {error}"
    assert dump(database) == world.before, "the database (or its ledger) changed"


@pytest.mark.parametrize("variant", DILL_VARIANTS)
def test_untrusted_dill_is_refused_by_the_replay_command(
    workspace: Path, world: World, tmp_path: Path, variant: str
) -> None:
    """orm-journal replay reports an unsigned journal holding a dill value as failed, unpickling nothing and changing nothing."""
    marker = tmp_path / "marker"
    path, database = fresh(workspace, world)
    dill_journal(path, marker, variant)
    ran = run_command(["replay", f"sqlite:///{database}", str(path), "--models", "tests.models"])
    assert not marker.exists(), "orm-journal replay unpickled a value of an unsigned journal"
    assert ran["escaped"] is None, ran["escaped"]
    assert "Traceback" not in ran["stdout"] + ran["stderr"]
    assert ran["status"] == 1 and "failed" in ran["stdout"], ran
    assert dump(database) == world.before, "the database (or its ledger) changed"


@pytest.mark.parametrize("variant", DILL_VARIANTS)
@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_untrusted_dill_stays_opaque_in_inspect(
    workspace: Path, world: World, tmp_path: Path, variant: str, json_output: bool
) -> None:
    """orm-journal inspect without --unsafe shows an unsigned journal's dill value as opaque, or refuses in one line, and never unpickles it."""
    marker = tmp_path / "marker"
    path, _ = fresh(workspace, world)
    dill_journal(path, marker, variant)
    step = "inspect --json" if json_output else "inspect"
    ran = run_command([*step.split(), str(path)])
    assert not marker.exists(), "inspect unpickled a value of an unsigned journal"
    assert not command_problems(step, ran, must_fail=False)
    if ran["status"] == 0:
        assert "opaque" in ran["stdout"]


@pytest.mark.parametrize("variant", DILL_VARIANTS)
def test_untrusted_dill_stays_opaque_in_journal(
    workspace: Path, world: World, tmp_path: Path, variant: str
) -> None:
    """Journal.operations() gives an unsigned journal's dill value as OpaqueValue by default and with pickles="opaque", and refuses it with pickles="refuse"."""
    marker = tmp_path / "marker"
    path, _ = fresh(workspace, world)
    dill_journal(path, marker, variant)
    with Journal(path) as journal:
        found = [op for _, op in journal.operations()]
    assert not marker.exists(), "operations() unpickled the value"
    assert isinstance(found[-1]["values"]["name"], OpaqueValue)
    with Journal(path) as journal:
        found = [op for _, op in journal.operations(pickles="opaque")]
    assert not marker.exists(), 'operations(pickles="opaque") unpickled the value'
    assert isinstance(found[-1]["values"]["name"], OpaqueValue)
    with Journal(path) as journal, pytest.raises(JournalSignatureError):
        list(journal.operations(pickles="refuse"))
    assert not marker.exists(), 'operations(pickles="refuse") unpickled the value'


def test_trusted_dill_is_unpickled(workspace: Path, world: World, tmp_path: Path) -> None:
    """The marker works: allow_dill=True, or a signature verified with the key, unpickles the value."""
    marker = tmp_path / "marker"
    path, _ = fresh(workspace, world)
    dill_journal(path, marker, "plain")
    with Journal(path, allow_dill=True) as journal:
        list(journal.operations())
    assert marker.exists()
    marker.unlink()
    signed = workspace / "signed.dbm"
    with JournalWriter.create(signed, key=KEY) as writer:
        writer.append([operation("insert", TASK, ref=1, values={"name": TouchOnLoad(marker)})])
        writer.seal()
    with Journal(signed, key=KEY) as journal:
        journal.verify()
        list(journal.operations())
    assert marker.exists()
