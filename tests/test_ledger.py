"""The exactly-once ledger: its migrations and ``ensure_ledger`` (SPEC §4 "Files", §5.3)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from orm_ext import ledger
from tests.conftest import Backend
from tests.scenario import watch

REPO = Path(__file__).resolve().parent.parent
FIRST_REVISION = ledger.FIRST_REVISION
JOURNAL_ID = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"
PROCESSES = 4


@pytest.fixture
def engine(backend: Backend) -> Iterator[Engine]:
    """Database A of the backend; the ledger and its version table are dropped afterwards."""
    engine = backend.engine()
    yield engine
    with engine.begin() as conn:
        for name in (ledger.LEDGER_TABLE, ledger.VERSION_TABLE):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


def insert(conn: Connection, journal_id: str) -> None:
    """Write a ledger row for ``journal_id`` through ``ledger_table``, as a replay does."""
    conn.execute(
        sa.insert(ledger.ledger_table).values(
            journal_id=journal_id,
            applied_at=dt.datetime.now(dt.UTC),
            operation_count=1,
            digest="0" * 64,
            host="test",
        )
    )


def ledger_ids(engine: Engine, where: str | None = None) -> list[str]:
    """The ledger's journal ids, sorted; only those equal to ``where`` if given."""
    column = ledger.ledger_table.c.journal_id
    query = sa.select(column).order_by(column)
    if where is not None:
        query = query.where(column == where)
    with engine.connect() as conn:
        return list(conn.scalars(query))


def version(engine: Engine) -> list[str]:
    """The revisions in orm-journal's version table."""
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(f"SELECT version_num FROM {ledger.VERSION_TABLE}")))


def test_ids_differing_only_in_case_are_distinct_rows(engine: Engine) -> None:
    """Two journal ids that differ only in case are two ledger rows, each found only by itself."""
    ledger.ensure_ledger(engine)
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID)
        insert(conn, JOURNAL_ID.upper())
    assert ledger_ids(engine) == [JOURNAL_ID.upper(), JOURNAL_ID]
    assert ledger_ids(engine, where=JOURNAL_ID.upper()) == [JOURNAL_ID.upper()]


def test_journal_id_stays_the_primary_key(engine: Engine) -> None:
    """The same journal id cannot enter the ledger twice."""
    ledger.ensure_ledger(engine)
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        insert(conn, JOURNAL_ID)


def test_ledger_at_first_revision_is_upgraded(engine: Engine) -> None:
    """A ledger created at the first revision is upgraded to head, keeps its rows and compares exactly."""
    with engine.begin() as conn:
        alembic.command.upgrade(ledger.alembic_config(connection=conn), FIRST_REVISION)
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID)
    ledger.ensure_ledger(engine)
    assert version(engine) == [ledger.HEAD_REVISION]
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID.upper())
    assert ledger_ids(engine) == [JOURNAL_ID.upper(), JOURNAL_ID]
    assert ledger_ids(engine, where=JOURNAL_ID) == [JOURNAL_ID]


def test_ledger_whose_creation_was_cut_short_is_completed(engine: Engine) -> None:
    """A ledger table left without its version row (a replayer killed mid-migration) is brought to head."""
    with engine.begin() as conn:
        alembic.command.upgrade(ledger.alembic_config(connection=conn), FIRST_REVISION)
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID)
        conn.execute(sa.text(f"DELETE FROM {ledger.VERSION_TABLE}"))
    ledger.ensure_ledger(engine)
    assert version(engine) == [ledger.HEAD_REVISION]
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID.upper())
    assert ledger_ids(engine) == [JOURNAL_ID.upper(), JOURNAL_ID]


def test_replayers_starting_together_upgrade_once(backend: Backend, engine: Engine) -> None:
    """Processes upgrading a first-revision ledger at once all succeed and then claim ids in it."""
    with engine.begin() as conn:
        alembic.command.upgrade(ledger.alembic_config(connection=conn), FIRST_REVISION)
    script = textwrap.dedent(
        """
        import sys, time
        import sqlalchemy as sa
        from orm_ext import ledger
        from tests.test_ledger import insert
        engine = sa.create_engine(sys.argv[1], connect_args=eval(sys.argv[2]))
        engine.connect().close()
        print("ready", flush=True)
        sys.stdin.readline()
        ledger.ensure_ledger(engine)
        with engine.begin() as conn:  # as a replay claims its journal id, with work between
            conn.execute(sa.select(ledger.ledger_table.c.journal_id)).all()
            time.sleep(0.2)
            insert(conn, sys.argv[3])
        """
    )
    connect_args = "{'timeout': 60}" if backend.name == "sqlite" else "{}"
    ids = [f"{JOURNAL_ID[:-1]}{n}" for n in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, backend.url, connect_args, journal_id],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for journal_id in ids
    ]
    # Released together only once all have started, however long their imports took.
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert version(engine) == [ledger.HEAD_REVISION]
    assert ledger_ids(engine) == ids


def test_ensure_ledger_is_idempotent(backend: Backend, engine: Engine) -> None:
    """Calling ensure_ledger again, on the same engine or a new one, changes nothing."""
    ledger.ensure_ledger(engine)
    with engine.begin() as conn:
        insert(conn, JOURNAL_ID)
    ledger.ensure_ledger(engine)
    ledger.ensure_ledger(backend.engine())
    assert version(engine) == [ledger.HEAD_REVISION]
    assert ledger_ids(engine) == [JOURNAL_ID]


def test_second_call_on_an_engine_sends_no_statement(engine: Engine) -> None:
    """Once an engine's ledger is at head, ensure_ledger returns without asking the database."""
    ledger.ensure_ledger(engine)
    log = watch(engine)
    ledger.ensure_ledger(engine)
    assert log.statements == []


def test_ledger_in_the_application_history_is_left_alone(engine: Engine) -> None:
    """A ledger without orm-journal's version table (the application migrates it) is not migrated."""
    with engine.begin() as conn:
        ledger.ledger_table.create(conn)
    ledger.ensure_ledger(engine)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table(ledger.VERSION_TABLE)


def test_downgrade_returns_to_first_revision(engine: Engine) -> None:
    """The head revision downgrades to the first one and upgrades again."""
    ledger.ensure_ledger(engine)
    with engine.begin() as conn:
        alembic.command.downgrade(ledger.alembic_config(connection=conn), FIRST_REVISION)
    assert version(engine) == [FIRST_REVISION]
    with engine.begin() as conn:
        ledger.upgrade(conn)
    assert version(engine) == [ledger.HEAD_REVISION]


def test_head_revision_is_the_scripts_head() -> None:
    """HEAD_REVISION names the single head of the packaged migration scripts."""
    heads = ScriptDirectory.from_config(ledger.alembic_config()).get_heads()
    assert heads == [ledger.HEAD_REVISION]
