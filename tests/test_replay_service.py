"""The replay service (SPEC §10): ``orm-journal replay URL DIR --watch`` in real processes.

Every test runs the command as its own process and talks to it only through the spool
directory, the database and signals. Waits are bounded polls that fail with a message;
nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from orm_ext import JournalingSession, ReplayService, cli
from orm_ext import ledger as ledger_module
from tests.conftest import Backend
from tests.models import Base, Task

REPO = Path(__file__).resolve().parents[1]
# The longest any wait below may take before the test fails saying what it waited for.
PATIENCE = 30.0


# -- helpers ------------------------------------------------------------------------------------


class Recorder:
    """Records journals against a local SQLite database of the test schema."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'recording.sqlite'}"
        self.engine = sa.create_engine(self.url)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, class_=JournalingSession)
        self.staging = tmp_path / "staging"
        self.staging.mkdir()

    def record(self, name: str, *task_names: str, batches: int = 1) -> Path:
        """Record a journal inserting a task per name (repeated over ``batches`` flushes)."""
        path = self.staging / name
        with self.sessions() as session, session.deferred_operations(path):
            for batch in range(batches):
                for task in task_names:
                    session.add(Task(name=task if batches == 1 else f"{task}/{batch}"))
                session.flush()
        return path


def drop(path: Path, spool: Path, name: str | None = None) -> Path:
    """Drop a sealed journal into the spool the way a worker should: one rename."""
    target = spool / (name or path.name)
    os.rename(path, target)
    return target


def replayer(
    url: str, spool: Path, log: Path, *extra: str, top: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``orm-journal replay URL SPOOL --watch`` with its output going to ``log``.*."""
    argv = [sys.executable, "-m", "orm_ext.cli", *top]
    argv += ["replay", url, str(spool), "--models", "tests.models", "--poll-interval", "0.1"]
    argv += ["--watch", *extra]
    with open(f"{log}.out", "ab") as out, open(f"{log}.err", "ab") as err:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err)


def wait_for(condition: Callable[[], bool], what: str, *procs: subprocess.Popen[Any]) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` was awaited if it never does."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a replayer ended (status {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {PATIENCE:.0f} s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any], log: Path) -> int:
    """SIGTERM a replayer and return its exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=PATIENCE)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the replayer did not stop on SIGTERM; stderr: {read(log, 'err')}")


def read(log: Path, stream: str) -> str:
    path = Path(f"{log}.{stream}")
    return path.read_text() if path.exists() else ""


def journals_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.dbm"))


def ledger_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        table = ledger_module.ledger_table
        return list(connection.scalars(sa.select(table.c.journal_id)))


def task_names(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(Task.name).order_by(Task.id)))


@pytest.fixture
def target(backend: Backend) -> sa.Engine:
    """Database A of the backend, with the test schema."""
    engine = backend.engine("a")
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    made = Recorder(tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


# -- one replayer -----------------------------------------------------------------------------


def test_once_applies_in_seal_order_and_moves_to_applied(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """--once applies every sealed journal in seal order (not name order), then exits 0."""
    for i, name in enumerate(["c.dbm", "a.dbm", "b.dbm"]):
        drop(recorder.record(name, f"task {i}"), spool)
    proc = replayer(backend.url, spool, tmp_path / "r", "--once", "--json")
    assert proc.wait(timeout=PATIENCE) == 0, read(tmp_path / "r", "err")
    lines = [json.loads(line) for line in read(tmp_path / "r", "out").splitlines()]
    assert [Path(d["path"]).name for d in lines] == ["c.dbm", "a.dbm", "b.dbm"]
    assert {d["outcome"] for d in lines} == {"applied"}
    assert task_names(target) == ["task 0", "task 1", "task 2"]
    assert journals_in(spool / "applied") == ["a.dbm", "b.dbm", "c.dbm"]
    assert journals_in(spool) == [] and list((spool / "failed").iterdir()) == []
    assert len(ledger_ids(target)) == 3


def test_journal_applied_but_not_moved_is_moved_on_restart(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """A journal the ledger has but the spool still holds (its replayer died before moving
    it) goes to applied/ as already applied, and is not applied twice."""
    path = drop(recorder.record("done.dbm", "only once"), spool)
    with sessionmaker(target, class_=JournalingSession)() as session:
        assert session.reconnect_and_commit(path).applied
    proc = replayer(backend.url, spool, tmp_path / "r", "--once", "--json")
    assert proc.wait(timeout=PATIENCE) == 0, read(tmp_path / "r", "err")
    (line,) = read(tmp_path / "r", "out").splitlines()
    assert json.loads(line)["outcome"] == "already applied"
    assert journals_in(spool / "applied") == ["done.dbm"]
    assert task_names(target) == ["only once"]


def test_journal_dropped_while_watching_is_applied_and_sigterm_exits_zero(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """A journal dropped into the spool of a running service is applied; SIGTERM ends it, 0."""
    log = tmp_path / "r"
    proc = replayer(backend.url, spool, log)
    try:
        drop(recorder.record("late.dbm", "late"), spool)
        wait_for(lambda: journals_in(spool / "applied") == ["late.dbm"], "late.dbm applied", proc)
    finally:
        status = stop(proc, log)
    assert status == 0, read(log, "err")
    assert task_names(target) == ["late"]
    # Without a terminal the service reports through its loggers.
    assert "orm_ext.service" in read(log, "err")


_WRITER = """
import sys
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from orm_ext import JournalingSession
from tests.models import Task

engine = sa.create_engine(sys.argv[1])
with sessionmaker(engine, class_=JournalingSession)() as session:
    with session.deferred_operations(sys.argv[2]):
        session.add(Task(name=sys.argv[3]))
        session.flush()
        print("recording", flush=True)
        sys.stdin.readline()
print("sealed", flush=True)
"""


def writer(recorder: Recorder, path: Path, task: str) -> subprocess.Popen[str]:
    """A process recording into ``path`` that holds it open until told to go on."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, recorder.url, str(path), task],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "recording\n"
    return proc


def test_journal_being_written_is_left_alone_until_sealed(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """A journal whose writer (another process) holds it is passed over until it is sealed;
    one whose writer died unsealed stays in the spool, never in failed/."""
    held = writer(recorder, spool / "held.dbm", "held")
    dead = writer(recorder, spool / "dead.dbm", "dead")
    log = tmp_path / "r"
    proc = replayer(backend.url, spool, log)
    try:
        # A sealed journal dropped after them is applied while they are still held: the
        # service has looked at the spool and passed them over.
        drop(recorder.record("sealed.dbm", "sealed"), spool)
        wait_for(lambda: journals_in(spool / "applied") == ["sealed.dbm"], "sealed.dbm", proc)
        assert journals_in(spool) == ["dead.dbm", "held.dbm"]
        dead.kill()  # the writer dies without sealing: the journal will never be complete
        dead.wait()
        assert held.stdin is not None
        held.stdin.write("\n")
        held.stdin.flush()
        assert held.stdout is not None and held.stdout.readline() == "sealed\n"
        held.wait()
        wait_for(lambda: "held.dbm" in journals_in(spool / "applied"), "held.dbm", proc)
        # One more pass over the spool sees the unsealed journal again and leaves it.
        drop(recorder.record("last.dbm", "last"), spool)
        wait_for(lambda: "last.dbm" in journals_in(spool / "applied"), "last.dbm", proc)
    finally:
        for child in (held, dead):
            child.kill()
            child.communicate()  # reaps it and closes its pipes
        status = stop(proc, log)
    assert status == 0, read(log, "err")
    assert journals_in(spool) == ["dead.dbm"]
    assert list((spool / "failed").iterdir()) == []
    assert task_names(target) == ["sealed", "held", "last"]


def test_conflicting_journal_goes_to_failed_with_json(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """A conflict with --on-conflict fail moves the journal to failed/ with a JSON file
    giving the conflict's kind, table, key and columns; the next journal still runs."""
    for engine in (recorder.engine, target):
        with engine.begin() as connection:
            connection.execute(sa.insert(Task).values(name="as recorded"))
    with recorder.sessions() as session, session.deferred_operations(recorder.staging / "edit.dbm"):
        session.get(Task, 1).name = "edited offline"  # type: ignore[union-attr]
    with target.begin() as connection:  # someone else changes the row meanwhile
        connection.execute(sa.update(Task).values(name="changed online"))
    drop(recorder.staging / "edit.dbm", spool)
    drop(recorder.record("fine.dbm", "fine"), spool)
    proc = replayer(backend.url, spool, tmp_path / "r", "--once")
    assert proc.wait(timeout=PATIENCE) == 1, read(tmp_path / "r", "err")
    assert journals_in(spool / "failed") == ["edit.dbm"]
    assert journals_in(spool / "applied") == ["fine.dbm"]
    document = json.loads((spool / "failed" / "edit.dbm.json").read_text())
    assert document["error_type"] == "ReplayConflictError"
    assert document["operation"] == {"sequence": 1, "kind": "update", "table": "task"}
    assert document["conflict"]["kind"] == "data"
    assert document["conflict"]["table"] == "task"
    assert document["conflict"]["key"] == [1]
    assert document["conflict"]["columns"] == {
        "name": {"journal": "as recorded", "database": "changed online"}
    }
    assert "--on-conflict" in document["advice"]
    assert task_names(target) == ["changed online", "fine"]
    assert "failed" in read(tmp_path / "r", "err")


def test_on_conflict_skip_applies_the_rest_of_the_journal(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """--on-conflict skip leaves the conflicting operation out and moves the journal to
    applied/, reporting the conflict."""
    for engine in (recorder.engine, target):
        with engine.begin() as connection:
            connection.execute(sa.insert(Task).values(name="as recorded"))
    with recorder.sessions() as session, session.deferred_operations(recorder.staging / "edit.dbm"):
        session.get(Task, 1).name = "edited offline"  # type: ignore[union-attr]
        session.add(Task(name="new"))
    with target.begin() as connection:
        connection.execute(sa.update(Task).values(name="changed online"))
    drop(recorder.staging / "edit.dbm", spool)
    log = tmp_path / "r"
    proc = replayer(backend.url, spool, log, "--once", "--json", "--on-conflict", "skip")
    assert proc.wait(timeout=PATIENCE) == 0, read(log, "err")
    (line,) = read(log, "out").splitlines()
    assert [c["kind"] for c in json.loads(line)["conflicts"]] == ["data"]
    assert journals_in(spool / "applied") == ["edit.dbm"]
    assert task_names(target) == ["changed online", "new"]


def test_sigterm_mid_journal_finishes_it_then_stops(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """SIGTERM while a journal is being applied lets it finish (applied, moved), then the
    service exits 0 without starting the next one."""
    for engine in (recorder.engine, target):
        with engine.begin() as connection:
            connection.execute(sa.insert(Task).values(name="held"))
    with recorder.sessions() as session, session.deferred_operations(recorder.staging / "long.dbm"):
        session.add_all(Task(name=f"long {i}") for i in range(20))
        session.flush()
        session.get(Task, 1).name = "updated"  # type: ignore[union-attr]
    drop(recorder.staging / "long.dbm", spool)
    drop(recorder.record("next.dbm", "next"), spool)
    log = tmp_path / "r"
    # The test holds the replay up mid-journal: on a server, a lock on the row its second
    # batch updates; on SQLite, a read transaction that its COMMIT must wait for.
    ledger_module.ensure_ledger(target)  # created beforehand: DDL would wait on the holder
    holder = target.connect()
    holder.begin()
    if backend.name == "sqlite":
        # pysqlite begins a transaction only for a write: BEGIN by hand, then read.
        holder.exec_driver_sql("BEGIN")
        holder.execute(sa.select(Task.id)).all()
        reached = "batch 2 applied"
    else:
        holder.execute(sa.select(Task.id).where(Task.id == 1).with_for_update()).all()
        reached = "batch 1 applied"
    proc = replayer(backend.url, spool, log, top=("--log-level", "DEBUG"))
    try:
        wait_for(lambda: reached in read(log, "err"), reached, proc)
        proc.send_signal(signal.SIGTERM)
    finally:
        holder.rollback()
        holder.close()
        status = stop(proc, log)
    assert status == 0, read(log, "err")
    assert journals_in(spool / "applied") == ["long.dbm"]
    assert journals_in(spool) == ["next.dbm"]
    assert len(task_names(target)) == 21 and "updated" in task_names(target)


def test_on_a_terminal_each_journal_gets_a_line(
    sqlite_url: str, recorder: Recorder, spool: Path
) -> None:
    """On a terminal (a pseudo-terminal here) the service prints one line per journal."""
    Base.metadata.create_all(sa.create_engine(sqlite_url))
    drop(recorder.record("one.dbm", "one"), spool)
    drop(recorder.record("two.dbm", "two"), spool)
    argv = [sys.executable, "-m", "orm_ext.cli", "replay", sqlite_url, str(spool)]
    argv += ["--watch", "--once", "--models", "tests.models"]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, cwd=REPO, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the command has closed the terminal
        while chunk := os.read(primary, 4096):
            chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=PATIENCE) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())
    lines = [line.strip("\r") for line in text.split("\n") if "dbm:" in line]
    assert [line.split(": ")[:2] for line in lines] == [
        [f"{spool}/one.dbm", "applied"],
        [f"{spool}/two.dbm", "applied"],
    ]


# -- the database goes away -----------------------------------------------------------------


class Outage:
    """Make database B refuse connections and end those it has, then let it back."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.admin = sa.create_engine(backend.url, isolation_level="AUTOCOMMIT")
        self.database = sa.make_url(backend.url_b).database

    def url(self) -> str:
        """The URL the replayer is given: database B, through an account we can cut off."""
        if self.backend.name == "postgresql":
            return self.backend.url_b
        with self.admin.connect() as c:
            c.execute(sa.text("DROP USER IF EXISTS 'svc_replayer'@'%'"))
            c.execute(sa.text("CREATE USER 'svc_replayer'@'%'"))
            c.execute(sa.text(f"GRANT ALL ON `{self.database}`.* TO 'svc_replayer'@'%'"))
        return (
            sa.make_url(self.backend.url_b)
            .set(username="svc_replayer", password=None)
            .render_as_string(hide_password=False)
        )

    def begin(self) -> None:
        with self.admin.connect() as c:
            if self.backend.name == "postgresql":
                c.exec_driver_sql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
                c.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": self.database},
                )
            else:
                c.execute(sa.text("ALTER USER 'svc_replayer'@'%' ACCOUNT LOCK"))
                for (pid,) in c.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE user = 'svc_replayer'"
                ):
                    c.exec_driver_sql(f"KILL CONNECTION {int(pid)}")

    def end(self) -> None:
        with self.admin.connect() as c:
            if self.backend.name == "postgresql":
                c.exec_driver_sql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
            else:
                c.execute(sa.text("ALTER USER 'svc_replayer'@'%' ACCOUNT UNLOCK"))

    def close(self) -> None:
        self.end()
        if self.backend.name != "postgresql":
            with self.admin.connect() as c:
                c.execute(sa.text("DROP USER IF EXISTS 'svc_replayer'@'%'"))
        self.admin.dispose()


def test_database_unavailable_is_waited_for_never_failed(
    backend: Backend, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """While the database refuses connections the service retries with backoff and marks
    nothing failed; once it is back, the waiting journal is applied."""
    if backend.name == "sqlite":
        pytest.skip("an SQLite database is a file, not a server that can go away")
    target = backend.engine("b", poolclass=sa.NullPool)
    Base.metadata.create_all(target)
    outage = Outage(backend)
    log = tmp_path / "r"
    try:
        proc = replayer(outage.url(), spool, log)
        try:
            drop(recorder.record("before.dbm", "before"), spool)
            wait_for(lambda: journals_in(spool / "applied") == ["before.dbm"], "before.dbm", proc)
            outage.begin()
            drop(recorder.record("during.dbm", "during"), spool)
            wait_for(lambda: "cannot be reached" in read(log, "err"), "the retry warning", proc)
            wait_for(lambda: read(log, "err").count("cannot be reached") >= 2, "retries", proc)
            assert journals_in(spool) == ["during.dbm"]
            assert list((spool / "failed").iterdir()) == []
            outage.end()
            wait_for(lambda: "during.dbm" in journals_in(spool / "applied"), "during.dbm", proc)
        finally:
            status = stop(proc, log)
    finally:
        outage.close()
    assert status == 0, read(log, "err")
    assert task_names(target) == ["before", "during"]
    assert list((spool / "failed").iterdir()) == []


def test_connection_cut_mid_journal_is_retried_not_failed(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path, tmp_path: Path
) -> None:
    """A replay whose connection the server kills mid-journal (the database still up)
    is rolled back and tried again: the journal is applied once, never failed."""
    if backend.name == "sqlite":
        pytest.skip("an SQLite connection cannot be killed from outside")
    for engine in (recorder.engine, target):
        with engine.begin() as connection:
            connection.execute(sa.insert(Task).values(name="held"))
    with recorder.sessions() as session, session.deferred_operations(recorder.staging / "cut.dbm"):
        session.add(Task(name="cut"))
        session.flush()
        session.get(Task, 1).name = "updated"  # type: ignore[union-attr]
    drop(recorder.staging / "cut.dbm", spool)
    ledger_module.ensure_ledger(target)
    holder = target.connect()
    holder.begin()
    holder.execute(sa.select(Task.id).where(Task.id == 1).with_for_update()).all()
    admin = sa.create_engine(backend.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    log = tmp_path / "r"
    proc = replayer(backend.url, spool, log, top=("--log-level", "DEBUG"))
    try:
        wait_for(lambda: "batch 1 applied" in read(log, "err"), "the blocked replay", proc)
        with admin.connect() as c:  # the replay's connection is the one waiting on the lock
            if backend.name == "postgresql":
                killed = c.scalar(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            else:
                rows = c.execute(
                    sa.text(
                        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() "
                        "AND id <> CONNECTION_ID() AND info LIKE '%FOR UPDATE%'"
                    )
                ).all()
                for (pid,) in rows:
                    c.execute(sa.text(f"KILL CONNECTION {int(pid)}"))
                killed = len(rows)
        assert killed == 1
        wait_for(lambda: "will try again" in read(log, "err"), "the retry", proc)
        holder.rollback()
        wait_for(lambda: journals_in(spool / "applied") == ["cut.dbm"], "cut.dbm", proc)
    finally:
        holder.close()
        admin.dispose()
        status = stop(proc, log)
    assert status == 0, read(log, "err")
    assert list((spool / "failed").iterdir()) == []
    assert task_names(target) == ["updated", "cut"]
    assert len(ledger_ids(target)) == 1


# -- many replayers ---------------------------------------------------------------------------

REPLAYERS = 8
JOURNALS = 200


@pytest.fixture(scope="module")
def many_journals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """JOURNALS sealed journals of two inserts each, recorded once for every backend."""
    # Recording is durable (an fsync per batch and per seal); on a memory file system
    # those cost nothing, and the copies made from it are the same journals.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("many")
    recorder = Recorder(base)
    try:
        for i in range(JOURNALS):
            recorder.record(f"{i:04d}.dbm", f"journal {i}", f"journal {i} second")
        yield recorder.staging
    finally:
        recorder.engine.dispose()
        shutil.rmtree(base, ignore_errors=True)


def started(proc: subprocess.Popen[Any], log: Path) -> bool:
    """Whether the replayer has set up (its signal handlers too) and begun watching."""
    return "replaying the journals of" in read(log, "err")


def test_many_replayers_killed_and_restarted_apply_each_journal_once(
    backend: Backend, target: sa.Engine, many_journals: Path, tmp_path: Path
) -> None:
    """8 replayers, half sharing one spool and half another holding copies of the same
    journals, some SIGKILLed and restarted mid-run: every journal applied exactly once,
    none lost, none in failed/, both spools emptied into applied/."""
    if backend.name == "sqlite":
        pytest.skip("SQLite serialises writers; many replayers are a server's case")
    spools = [tmp_path / "spool1", tmp_path / "spool2"]
    for folder in spools:
        folder.mkdir()
    for path in sorted(many_journals.iterdir()):
        for folder in spools:
            shutil.copy2(path, tmp_path / path.name)
            drop(tmp_path / path.name, folder)
    logs: list[Path] = []

    def start(n: int) -> subprocess.Popen[bytes]:
        log = tmp_path / f"r{n}-{len(logs)}"
        logs.append(log)
        return replayer(backend.url, spools[n % 2], log)

    procs = {n: start(n) for n in range(REPLAYERS)}
    applied = lambda: sum(len(journals_in(s / "applied")) for s in spools)  # noqa: E731
    try:
        for threshold, victims in ((JOURNALS // 4, (0, 3, 5)), (JOURNALS, (1, 6))):
            wait_for(lambda t=threshold: applied() >= t, f"{threshold} moved", *procs.values())
            for n in victims:
                procs[n].kill()
                procs[n].wait()
                procs[n] = start(n)
        wait_for(lambda: applied() == 2 * JOURNALS, "both spools drained", *procs.values())
        # A SIGTERM that comes while Python is still starting ends it before it can
        # catch signals: stop the restarted ones only once they run.
        for n, proc in procs.items():
            log = next(log for log in reversed(logs) if log.name.startswith(f"r{n}-"))
            wait_for(lambda p=proc, lg=log: started(p, lg), f"replayer {n} started", proc)
    finally:
        statuses = [stop(proc, logs[0]) for proc in procs.values()]
    errors = "\n".join(read(log, "err")[-2000:] for log in logs)
    assert statuses == [0] * REPLAYERS, errors
    ids = ledger_ids(target)
    assert len(ids) == len(set(ids)) == JOURNALS
    names = task_names(target)
    assert len(names) == 2 * JOURNALS
    assert sorted(names) == sorted(
        f"journal {i}{suffix}" for i in range(JOURNALS) for suffix in ("", " second")
    )
    for folder in spools:
        assert journals_in(folder) == []
        assert journals_in(folder / "applied") == [f"{i:04d}.dbm" for i in range(JOURNALS)]
        assert list((folder / "failed").iterdir()) == []
        assert [p.name for p in folder.iterdir() if p.is_file()] == []


# -- the API --------------------------------------------------------------------------------


def test_service_api_once_returns_a_summary(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path
) -> None:
    """ReplayService(engine, directory).run(once=True) drains the spool and says what it did."""
    drop(recorder.record("one.dbm", "one"), spool)
    drop(recorder.record("two.dbm", "two"), spool)
    seen: list[str] = []
    service = ReplayService(target, spool, on_event=lambda e: seen.append(e.outcome))
    summary = service.run(once=True)
    assert (summary.applied, summary.already_applied, summary.failed) == (2, 0, 0)
    assert seen == ["applied", "applied"]
    assert journals_in(spool / "applied") == ["one.dbm", "two.dbm"]


def test_side_files_travel_with_their_journal(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path
) -> None:
    """SQLite side files beside a journal move with it, and side files left behind by a
    replayer that died mid-move follow their journal on the next run."""
    path = drop(recorder.record("side.dbm", "side"), spool)
    Path(f"{path}-shm").write_bytes(b"\0" * 32)  # as a writer killed mid-seal can leave
    orphan = drop(recorder.record("orphan.dbm", "orphan"), spool)
    (spool / "applied").mkdir()
    os.link(orphan, spool / "applied" / "orphan.dbm")  # moved, then the replayer died:
    Path(f"{orphan}-wal").write_bytes(b"")  # ... the journal's name is still in the spool,
    with sessionmaker(target, class_=JournalingSession)() as session:
        assert session.reconnect_and_commit(orphan).applied  # and it had been applied
    os.unlink(orphan)  # the next step of the dead replayer's move; only its -wal is left
    summary = ReplayService(target, spool).run(once=True)
    assert (summary.applied, summary.already_applied) == (1, 0)
    assert sorted(p.name for p in spool.iterdir() if p.is_file()) == []
    assert sorted(p.name for p in (spool / "applied").iterdir()) == [
        "orphan.dbm",
        "orphan.dbm-wal",
        "side.dbm",
        "side.dbm-shm",
    ]
    assert task_names(target) == ["orphan", "side"]


def test_a_journal_half_moved_to_failed_and_then_applied_is_only_in_applied(
    backend: Backend, target: sa.Engine, recorder: Recorder, spool: Path
) -> None:
    """A journal a dead replayer had linked into failed/ (with its JSON) but not yet
    removed from the spool, applied on the next run, ends in applied/ only."""
    path = drop(recorder.record("retry.dbm", "retry"), spool)
    (spool / "failed").mkdir()
    os.link(path, spool / "failed" / "retry.dbm")
    (spool / "failed" / "retry.dbm.json").write_text("{}")
    summary = ReplayService(target, spool).run(once=True)
    assert (summary.applied, summary.failed) == (1, 0)
    assert journals_in(spool / "applied") == ["retry.dbm"]
    assert list((spool / "failed").iterdir()) == []


def test_service_refuses_a_missing_spool_and_bad_settings(tmp_path: Path, sqlite_url: str) -> None:
    """A spool that is not a directory, or a setting out of range, is refused at once."""
    with pytest.raises(NotADirectoryError, match="spool"):
        ReplayService(sqlite_url, tmp_path / "missing")
    with pytest.raises(ValueError, match="on_conflict"):
        ReplayService(sqlite_url, tmp_path, on_conflict="merge")  # type: ignore[arg-type]


def test_cli_watch_options_are_checked(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once without --watch, --watch with --dry-run or several paths: one-line errors."""
    cases = [
        (["replay", sqlite_url, str(tmp_path), "--once"], "--once goes with --watch"),
        (["replay", sqlite_url, str(tmp_path), "--watch", "--dry-run"], "--dry-run cannot"),
        (["replay", sqlite_url, str(tmp_path), str(tmp_path), "--watch"], "one spool"),
        (["replay", sqlite_url, str(tmp_path / "nope"), "--watch"], "--watch needs one spool"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
