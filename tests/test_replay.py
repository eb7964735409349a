"""Replaying a journal: ``reconnect_and_commit``, exactly once, all or nothing (SPEC §5)."""

from __future__ import annotations

import decimal
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.orm import Mapper, Session

from journal import JournalIncompleteError, JournalSignatureError, JournalWriter
from orm_ext import (
    DeferredOperationError,
    ReplayConflictError,
    SchemaMismatchError,
)
from tests.conftest import Backend
from tests.models import Account, AssetVersion, Component, Post, Tag, Task
from tests.scenario import (
    make_sessions,
    record_seed_scenario,
    replay,
    seed,
    table_rows,
    terminate,
)

REPO = Path(__file__).resolve().parent.parent


def record(engine: Any, path: Path, body: Any, **kw: Any) -> None:
    with make_sessions(engine)(**kw) as session, session.deferred_operations(path):
        body(session)


@pytest.fixture
def databases(backend: Backend) -> tuple[Any, Any]:
    """Databases A (recorded against, then changed directly) and B (replayed into), both seeded."""
    a, b = backend.engine("a"), backend.engine("b")
    seed(a)
    seed(b)
    return a, b


def test_replay_equals_direct_execution(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """The seed scenario replayed into B leaves B equal to A where it ran directly."""
    a, b = databases
    path = tmp_path / "ops.dbm"
    record(a, path, record_seed_scenario)
    with make_sessions(a)() as session:
        record_seed_scenario(session)
        session.commit()
    result = replay(b, path)
    assert result.applied and result.operations == 4
    assert table_rows(a) == table_rows(b)
    assert sorted(result.identities.values()) == [2, 2, 2]


def test_second_replay_changes_nothing(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """Replaying a journal twice applies it once; the second returns applied=False."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    record(b, path, record_seed_scenario)
    assert replay(b, path).applied
    once = table_rows(b)
    second = replay(b, path)
    assert second.applied is False
    assert table_rows(b) == once


def test_identities_map_placeholders_to_database_keys(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """ReplayResult.identities resolves the placeholders the recording session handed out."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    created: list[Any] = []

    def body(session: Any) -> None:
        created.append(record_seed_scenario(session))

    record(b, path, body)
    placeholder = created[0].id
    result = replay(b, path)
    with Session(b) as session:
        version = session.get(AssetVersion, result.identities[placeholder])
        assert version is not None and version.is_published and version.version == 2


def test_recorded_in_one_process_replayed_in_another(backend: Backend, tmp_path: Path) -> None:
    """A journal recorded by one process is applied by another, exactly once."""
    engine = backend.engine()
    seed(engine)
    path = tmp_path / "ops.dbm"
    script = textwrap.dedent(
        """
        import sys
        from sqlalchemy import create_engine
        from tests.scenario import make_sessions, record_seed_scenario
        engine = create_engine(sys.argv[1])
        if sys.argv[3] == "record":
            with make_sessions(engine)() as s, s.deferred_operations(sys.argv[2]):
                record_seed_scenario(s)
        else:
            with make_sessions(engine)() as s:
                print(s.reconnect_and_commit(sys.argv[2]).applied)
        """
    )

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, backend.url, str(path), mode],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    run("record")
    assert run("replay") == "True"
    assert run("replay") == "False"
    with Session(engine) as session:
        assert session.scalar(select(AssetVersion).where(AssetVersion.version == 2)) is not None
        assert len(session.scalars(select(Component)).all()) == 2


def test_concurrent_replayers_apply_exactly_once(backend: Backend, tmp_path: Path) -> None:
    """Four processes replaying one journal at once: exactly one applies it."""
    engine = backend.engine()
    seed(engine)
    path = tmp_path / "ops.dbm"
    record(engine, path, record_seed_scenario)
    script = textwrap.dedent(
        """
        import sys, time
        from sqlalchemy import create_engine
        from tests.scenario import make_sessions
        engine = create_engine(sys.argv[1], connect_args=eval(sys.argv[3]))
        while time.time() < float(sys.argv[4]):
            time.sleep(0.001)
        with make_sessions(engine)() as s:
            print(s.reconnect_and_commit(sys.argv[2]).applied)
        """
    )
    connect_args = "{'timeout': 60}" if backend.name == "sqlite" else "{}"
    start = time.time() + 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, backend.url, str(path), connect_args, str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["False", "False", "False", "True"]
    with Session(engine) as session:
        assert len(session.scalars(select(Component)).all()) == 2


def test_failure_leaves_database_and_journal_untouched(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """A journal whose last operation violates a constraint changes nothing, anywhere."""
    _, b = databases
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        record_seed_scenario(session)
        session.add(Tag(label="taken"))
        session.flush()
        session.add(Tag(label="taken"))  # unique violation, the last operation

    record(b, path, body)
    before_rows, before_bytes = table_rows(b), path.read_bytes()
    with pytest.raises(DeferredOperationError, match=r"operation \d+ .*Nothing was applied"):
        replay(b, path)
    assert table_rows(b) == before_rows
    assert path.read_bytes() == before_bytes
    with Session(b) as session:  # and the ledger does not claim it
        assert session.execute(text("SELECT COUNT(*) FROM orm_journal_ledger")).scalar() == 0


def test_nothing_visible_until_commit_and_one_connection(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """Another connection sees none of a replay before it commits; the replay uses one connection."""
    _, b = databases
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        for i in range(300):
            session.add(Task(name=f"t{i}"))
            if i % 30 == 0:
                session.flush()

    record(b, path, body)
    connections: set[int] = set()

    @event.listens_for(b, "before_cursor_execute")
    def _track(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        connections.add(id(conn.connection.dbapi_connection))

    observer = create_engine(str(b.url.render_as_string(hide_password=False)))
    counts: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                with observer.connect() as conn:
                    counts.append(conn.execute(text("SELECT COUNT(*) FROM task")).scalar_one())
            except Exception:
                pass
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        replay(b, path)
    finally:
        stop.set()
        poller.join()
        observer.dispose()
    assert len(connections) == 1
    assert set(counts) <= {1, 301}, "only the count before and after the commit is ever visible"
    with Session(b) as session:
        assert session.execute(text("SELECT COUNT(*) FROM task")).scalar() == 301


def conflict_setup(databases: tuple[Any, Any], tmp_path: Path) -> tuple[Any, Path]:
    """A journal updating account A-1 and deleting account A-2, both changed since."""
    _, b = databases
    with Session(b) as session:
        session.add_all([Account(code="A-1", balance=10), Account(code="A-2", balance=20)])
        session.commit()
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        one = session.scalars(select(Account).where(Account.code == "A-1")).one()
        two = session.scalars(select(Account).where(Account.code == "A-2")).one()
        one.balance = decimal.Decimal("11.00")
        session.delete(two)

    record(b, path, body)
    with Session(b) as session:  # someone else changes both rows meanwhile
        for account in session.scalars(select(Account)):
            account.balance += 100
        session.commit()
    return b, path


def balances(engine: Any) -> dict[str, Any]:
    with Session(engine) as session:
        return {a.code: a.balance for a in session.scalars(select(Account))}


def test_conflict_fails_by_default(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A changed row makes the replay raise ReplayConflictError and apply nothing."""
    b, path = conflict_setup(databases, tmp_path)
    before = balances(b)
    with pytest.raises(ReplayConflictError) as caught:
        replay(b, path)
    assert caught.value.table == "account"
    assert caught.value.sequence == 1
    assert caught.value.expected["balance"] == decimal.Decimal("10.00")
    assert caught.value.actual is not None
    assert caught.value.actual["balance"] == decimal.Decimal("110.00")
    assert balances(b) == before


def test_conflict_overwrite_applies_recorded_values(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """on_conflict='overwrite' applies the recorded update and delete anyway."""
    b, path = conflict_setup(databases, tmp_path)
    result = replay(b, path, on_conflict="overwrite")
    assert result.applied and len(result.conflicts) == 2
    assert balances(b) == {"A-1": decimal.Decimal("11.00")}


def test_conflict_skip_leaves_conflicting_operations_out(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """on_conflict='skip' applies nothing that conflicts and lists what it skipped."""
    b, path = conflict_setup(databases, tmp_path)
    before = balances(b)
    result = replay(b, path, on_conflict="skip")
    assert result.applied
    assert [c.sequence for c in result.conflicts] == [1, 2]
    assert balances(b) == before


@pytest.mark.parametrize("policy", ["fail", "overwrite"])
def test_missing_row_is_a_conflict(databases: tuple[Any, Any], tmp_path: Path, policy: str) -> None:
    """An update of a row deleted since is a conflict, even with overwrite."""
    b, path = conflict_setup(databases, tmp_path)
    with Session(b) as session:
        session.execute(text("DELETE FROM account WHERE code = 'A-1'"))
        session.commit()
    with pytest.raises(ReplayConflictError, match="is gone"):
        replay(b, path, on_conflict=policy)


def test_version_counter_conflict(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A row whose version counter moved is a conflict even if the old values still match."""
    b, path = conflict_setup(databases, tmp_path)
    with Session(b) as session:
        for account in session.scalars(select(Account)):
            account.balance -= 100  # values back as recorded, version moved on twice
        session.commit()
    with pytest.raises(ReplayConflictError, match="conflicts") as caught:
        replay(b, path)
    assert caught.value.expected["revision"] == 1
    assert caught.value.actual is not None
    assert caught.value.actual["revision"] == 3


INTEGER_KEY = {"type": "INTEGER", "nullable": False, "primary_key": True}


def task_journal(path: Path, columns: dict[str, Any]) -> None:
    """Write a sealed journal inserting one Task, recorded against ``columns`` of ``task``."""
    with JournalWriter.create(path) as writer:
        writer.append(
            [
                {
                    "op": "insert",
                    "class": "tests.models:Task",
                    "table": "task",
                    "ref": 1,
                    "values": {"name": "x"},
                }
            ]
        )
        writer.seal(
            meta={
                "classes": ["tests.models:Task"],
                "schema": {"task": {"columns": columns, "foreign_keys": []}},
            }
        )


def test_schema_drift_is_refused_before_any_write(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """A journal recorded against another table layout raises SchemaMismatchError, writing nothing."""
    _, b = databases
    task_journal(tmp_path / "drift.dbm", {"id": INTEGER_KEY})
    before = table_rows(b)
    with pytest.raises(SchemaMismatchError) as caught:
        replay(b, tmp_path / "drift.dbm")
    assert "table task: column name was added" in caught.value.differences
    assert table_rows(b) == before
    assert replay(b, tmp_path / "drift.dbm", allow_schema_drift=True).applied


@pytest.mark.parametrize(
    ("recorded_type", "difference"),
    [("VARCHAR(50)", "column name changed: type 'VARCHAR(50)' -> 'VARCHAR(100)'")],
)
def test_type_change_is_refused(
    databases: tuple[Any, Any], tmp_path: Path, recorded_type: str, difference: str
) -> None:
    """A column whose type differs from the recording's is a schema mismatch."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    name = {"type": recorded_type, "nullable": False, "primary_key": False}
    task_journal(path, {"id": INTEGER_KEY, "name": name})
    with pytest.raises(SchemaMismatchError) as caught:
        replay(b, path)
    assert difference in caught.value.differences[0]


def test_table_missing_in_database_is_refused(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A journal writing a table the database no longer has is refused before any write."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    record(b, path, lambda s: s.add(Post(title="x")))
    with b.begin() as conn:
        conn.execute(text("DROP TABLE post_tag"))
        conn.execute(text("DROP TABLE post"))
    with pytest.raises(SchemaMismatchError, match="table post: missing in the database"):
        replay(b, path)


def test_applied_journal_stays_applied_after_a_migration(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """A journal already in the ledger returns applied=False even if the schema moved on."""
    _, b = databases
    with b.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('rev1')"))
    path = tmp_path / "ops.dbm"
    record(b, path, record_seed_scenario)
    assert replay(b, path).applied
    with b.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'rev2'"))
    assert replay(b, path).applied is False


def test_alembic_revision_moved_is_refused(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A journal recorded at another Alembic revision than the database's is refused."""
    _, b = databases
    with b.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('rev1')"))
    path = tmp_path / "ops.dbm"
    record(b, path, record_seed_scenario)
    with b.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'rev2'"))
    with pytest.raises(SchemaMismatchError, match="recorded rev1, database has rev2"):
        replay(b, path)


def test_unmapped_class_is_refused(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A journal naming a class this process has not mapped is refused, not imported."""
    _, b = databases
    with JournalWriter.create(tmp_path / "ops.dbm") as writer:
        writer.append(
            [
                {
                    "op": "insert",
                    "class": "no.such.module:Thing",
                    "table": "thing",
                    "ref": 1,
                    "values": {},
                }
            ]
        )
        writer.seal(meta={"classes": ["no.such.module:Thing"], "schema": {}})
    with pytest.raises(SchemaMismatchError, match="not a mapped class"):
        replay(b, tmp_path / "ops.dbm")
    assert "no.such.module" not in sys.modules


def test_unsealed_tampered_and_unsigned_journals_are_refused(
    databases: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay refuses an unsealed journal, a tampered one, and an unsigned one when a key is set."""
    _, b = databases
    monkeypatch.delenv("ORM_JOURNAL_KEY", raising=False)
    before = table_rows(b)
    unsealed = tmp_path / "unsealed.dbm"
    JournalWriter.create(unsealed).close()
    with pytest.raises(JournalIncompleteError):
        replay(b, unsealed)
    signed = tmp_path / "signed.dbm"
    record(b, signed, record_seed_scenario, journal_key=b"secret key")
    data = bytearray(signed.read_bytes())
    index = data.index(b"/path/to/final/file")
    data[index] ^= 1
    signed.write_bytes(bytes(data))
    with pytest.raises(JournalSignatureError):
        replay(b, signed, journal_key=b"secret key")
    plain = tmp_path / "plain.dbm"
    record(b, plain, record_seed_scenario)
    with pytest.raises(JournalSignatureError, match="not signed"):
        replay(b, plain, journal_key=b"secret key")
    assert table_rows(b) == before


def test_refused_with_pending_changes_or_inside_a_block(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """reconnect_and_commit refuses pending changes and deferred blocks."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    record(b, path, record_seed_scenario)
    with make_sessions(b)() as session:
        session.add(Task(name="pending"))
        with pytest.raises(DeferredOperationError, match="pending or flushed"):
            session.reconnect_and_commit(path)
        session.flush()
        with pytest.raises(DeferredOperationError, match="pending or flushed"):
            session.reconnect_and_commit(path)
        session.rollback()
        with session.deferred_operations(tmp_path / "other.dbm"):
            with pytest.raises(DeferredOperationError, match="inside deferred_operations"):
                session.reconnect_and_commit(path)


def test_many_to_many_and_bulk_statements_replay(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """Link/unlink rows and recorded ORM statements replay to the same result as direct execution."""
    from sqlalchemy import delete, update

    a, b = databases

    def prepare(engine: Any) -> None:
        with Session(engine) as session:
            session.add(Post(title="p", tags=[Tag(label="a"), Tag(label="b")]))
            session.commit()

    def body(session: Any) -> None:
        post = session.scalars(select(Post)).one()
        post.tags.remove(next(t for t in post.tags if t.label == "a"))
        post.tags.append(Tag(label="c"))
        session.flush()
        session.execute(update(Task).where(Task.name == "compositing").values(name="comp"))
        session.execute(delete(Tag).where(Tag.label == "zzz"))

    prepare(a)
    prepare(b)
    path = tmp_path / "ops.dbm"
    record(b, path, body)
    with make_sessions(a)() as session:
        body(session)
        session.commit()
    replay(b, path)
    assert table_rows(a) == table_rows(b)


CRASH_REPLAYER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import create_engine, event
    from tests.scenario import make_sessions
    engine = create_engine(sys.argv[1])
    count = 0
    @event.listens_for(engine, "after_cursor_execute")
    def announce(conn, cursor, statement, *args):
        global count
        count += statement.startswith("INSERT INTO task")
        if count == 5:
            print("busy", flush=True)
            sys.stdin.readline()
    with make_sessions(engine)() as s:
        print(s.reconnect_and_commit(sys.argv[2]).applied, flush=True)
    """
)


def crash_journal(engine: Any, path: Path) -> None:
    def body(session: Any) -> None:
        for i in range(200):
            session.add(Task(name=f"crash {i}"))
            if i % 10 == 9:
                session.flush()

    record(engine, path, body)


@pytest.mark.slow
def test_sigkill_mid_replay_then_rerun(backend: Backend, tmp_path: Path) -> None:
    """A replayer killed mid-replay leaves nothing; the rerun applies the journal once."""
    engine = backend.engine()
    seed(engine)
    path = tmp_path / "ops.dbm"
    crash_journal(engine, path)
    before = table_rows(engine)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_REPLAYER, backend.url, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "busy"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.stdin is not None
    proc.stdin.close()
    time.sleep(0.2)
    assert table_rows(engine) == before
    assert replay(engine, path).applied
    assert replay(engine, path).applied is False
    assert len(table_rows(engine)["task"]) == len(before["task"]) + 200


def test_connection_terminated_mid_replay(backend: Backend, tmp_path: Path) -> None:
    """The server ending the replay's connection gives a clear error, nothing applied, rerun once."""
    if backend.name == "sqlite":
        pytest.skip("SQLite has no server connection to terminate")
    engine = backend.engine()
    seed(engine)
    path = tmp_path / "ops.dbm"
    crash_journal(engine, path)
    before = table_rows(engine)
    admin = backend.engine(isolation_level="AUTOCOMMIT")
    killed: list[bool] = []
    replayer = backend.engine()

    @event.listens_for(replayer, "before_cursor_execute")
    def kill_own_connection(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if killed or "INSERT INTO task" not in statement:
            return
        killed.append(True)
        terminate(admin, conn)

    with pytest.raises(DeferredOperationError, match=r"(?i)nothing was applied"):
        replay(replayer, path)
    assert table_rows(engine) == before
    event.remove(replayer, "before_cursor_execute", kill_own_connection)
    assert replay(engine, path).applied
    assert len(table_rows(engine)["task"]) == len(before["task"]) + 200


def test_ledger_created_by_migration(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """The first replay creates the ledger through the packaged migration and records the journal."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    record(b, path, record_seed_scenario)
    result = replay(b, path)
    with b.connect() as conn:
        rows = conn.execute(
            text("SELECT journal_id, operation_count FROM orm_journal_ledger")
        ).all()
        version = conn.execute(text("SELECT version_num FROM orm_journal_alembic_version")).all()
    assert rows == [(result.journal_id, 4)]
    assert len(version) == 1


def test_plain_inserts_take_the_bulk_path(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """A batch of plain inserts replays as multi-row INSERTs with the same result as a flush."""
    a, b = databases
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        asset = session.scalars(select(AssetVersion)).one().asset
        for i in range(50):
            version = AssetVersion(asset=asset, version=10 + i, comment=None if i % 2 else "c")
            Component(name=f"c{i}", version=version)
            session.add(version)
        session.flush()

    record(b, path, body)
    with make_sessions(a)() as session:
        body(session)
        session.commit()
    statements: list[str] = []
    event.listen(b, "before_cursor_execute", lambda c, cur, s, *a: statements.append(s))
    replay(b, path)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO COMPONENT")]
    assert 0 < len(inserts) < 10
    assert table_rows(a) == table_rows(b)


def test_mapper_events_do_not_fire_at_replay(databases: tuple[Any, Any], tmp_path: Path) -> None:
    """Mapper flush listeners ran while recording; replay fires none (SPEC §3.10, §4.2),
    while a plain flush on another connection of the same process still fires them."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    seen: list[str] = []

    def listener(mapper: Any, connection: Any, target: Task) -> None:
        seen.append(target.name)

    event.listen(Task, "before_insert", listener)
    event.listen(Mapper, "after_insert", listener)
    try:
        record(b, path, lambda s: s.add_all([Task(name="x"), Task(name="y")]))
        assert sorted(seen) == ["x", "x", "y", "y"]  # before and after insert, recording
        seen.clear()
        assert replay(b, path).applied
        assert seen == []
        with Session(b) as session:
            session.add(Task(name="plain"))
            session.commit()
        assert seen == ["plain", "plain"]
    finally:
        event.remove(Task, "before_insert", listener)
        event.remove(Mapper, "after_insert", listener)
    assert not event.contains(Task, "before_insert", listener)
    with Session(b) as session:
        session.add(Task(name="after removal"))
        session.commit()
    assert seen == ["plain", "plain"]
    with Session(b) as session:
        names = set(session.scalars(select(Task.name)))
    assert {"x", "y", "plain", "after removal"} <= names


def test_link_to_a_row_deleted_since_is_a_conflict(
    databases: tuple[Any, Any], tmp_path: Path
) -> None:
    """An insert linking to a row that is gone at replay raises ReplayConflictError."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    record(
        b, path, lambda s: s.add(Component(name="x", version=s.scalars(select(AssetVersion)).one()))
    )
    with b.begin() as conn:
        conn.execute(text("DELETE FROM component_location"))
        conn.execute(text("DELETE FROM component"))
        conn.execute(text("DELETE FROM asset_version"))
    with pytest.raises(ReplayConflictError, match="which is gone"):
        replay(b, path)
