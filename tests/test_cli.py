"""The ``orm-journal`` command line (SPEC §7), through its parser."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from journal import JournalWriter
from orm_ext.cli import main
from tests.conftest import Backend
from tests.models import Task
from tests.scenario import make_sessions, record_seed_scenario, seed, table_rows

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str) -> tuple[int, str]:
    """Run the command line in-process; return the exit status and what it printed."""
    buffer = io.StringIO()
    status = main(list(argv), console=Console(file=buffer, width=200, color_system=None))
    return status, buffer.getvalue()


def seeded_journal(tmp_path: Path, url: str, name: str = "ops.dbm", **kw: Any) -> Path:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    path = tmp_path / name
    with make_sessions(engine)(**kw) as session, session.deferred_operations(path):
        record_seed_scenario(session)
    engine.dispose()
    return path


@pytest.fixture
def seeded(backend: Backend) -> Backend:
    """Database A of the backend, seeded with the scenario's asset."""
    seed(backend.engine())
    return backend


def test_inspect_shows_header_and_operations(seeded: Backend, tmp_path: Path) -> None:
    """inspect prints the header, the state and one line per operation with old → new."""
    path = seeded_journal(tmp_path, seeded.url)
    status, out = run("inspect", str(path))
    assert status == 0
    assert "sealed" in out
    assert "unsigned, checksums verified" in out
    assert "AssetVersion / asset_version" in out
    assert "is_published: False → True" in out
    assert "asset → (1,)" in out


def test_inspect_json(seeded: Backend, tmp_path: Path) -> None:
    """inspect --json gives a machine-readable document of the same content."""
    path = seeded_journal(tmp_path, seeded.url)
    status, out = run("inspect", str(path), "--json")
    assert status == 0
    document = json.loads(out)
    assert document["state"] == "sealed"
    assert [op["op"] for op in document["operations"]] == ["insert"] * 3 + ["update"]
    assert document["operations"][0]["sequence"] == 1


def test_inspect_keeps_dill_values_opaque(tmp_path: Path) -> None:
    """inspect never unpickles: dill values show as opaque unless --unsafe."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.append(
            [
                {
                    "op": "insert",
                    "class": "m:C",
                    "table": "c",
                    "ref": 1,
                    "values": {"data": frozenset({1, 2})},
                }
            ]
        )
        writer.seal()
    status, out = run("inspect", str(path))
    assert status == 0
    assert "<opaque dill value" in out
    status, out = run("inspect", str(path), "--unsafe")
    assert "frozenset" in out


def test_verify_valid_and_invalid(seeded: Backend, tmp_path: Path) -> None:
    """verify exits 0 for a sealed journal and 1 for a tampered or unsealed one."""
    path = seeded_journal(tmp_path, seeded.url)
    assert run("verify", str(path))[0] == 0
    data = bytearray(path.read_bytes())
    data[data.index(b"/path/to/final/file")] ^= 1
    path.write_bytes(bytes(data))
    status, out = run("verify", str(path))
    assert status == 1
    assert "fails its checksum" in out
    unsealed = tmp_path / "unsealed.dbm"
    JournalWriter.create(unsealed).close()
    status, out = run("verify", str(unsealed))
    assert (status, "never sealed" in out) == (1, True)


def test_verify_signed_needs_the_key(seeded: Backend, tmp_path: Path) -> None:
    """verify of a signed journal needs --key (or $ORM_JOURNAL_KEY)."""
    path = seeded_journal(tmp_path, seeded.url, journal_key=b"k" * 16)
    assert run("verify", str(path))[0] == 1
    assert run("verify", str(path), "--key", "k" * 16)[0] == 0


def test_errors_are_one_line_with_nonzero_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, a corrupt file and a bad URL each give one error line and status 2."""
    garbage = tmp_path / "garbage.dbm"
    garbage.write_bytes(b"not a journal at all" * 100)
    cases = [
        ("inspect", str(tmp_path / "missing.dbm")),
        ("inspect", str(garbage)),
        ("init-db", "nosuchdialect://x"),
    ]
    for argv in cases:
        status, _ = run(*argv)
        err = capsys.readouterr().err
        assert status == 2, argv
        assert err.count("\n") == 1, err
        assert err.startswith(f"orm-journal {argv[0]}: error: ")
        assert "Traceback" not in err


def test_traceback_flag_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--traceback prints the full story of an error."""
    status, _ = run("--traceback", "inspect", str(tmp_path / "missing.dbm"))
    assert status == 2
    assert "Traceback" in capsys.readouterr().err


def test_replay_unreachable_database_fails(tmp_path: Path) -> None:
    """replay against an unreachable database reports the journal as failed, status 1."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.seal(meta={"classes": [], "schema": {}})
    status, out = run(
        "replay", "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1", str(path)
    )
    assert status == 1
    assert "failed" in out


def test_init_db_and_replay(seeded: Backend, tmp_path: Path) -> None:
    """init-db creates the ledger; replay applies a journal once and reports it."""
    path = seeded_journal(tmp_path, seeded.url)
    assert run("init-db", seeded.url)[0] == 0
    with seeded.engine().connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM orm_journal_ledger")).scalar() == 0
    status, out = run("replay", seeded.url, str(path), "--models", "tests.models")
    assert status == 0
    assert "applied" in out
    status, out = run("replay", seeded.url, str(path))
    assert (status, "already applied" in out) == (0, True)


def test_replay_bad_models_module(seeded: Backend, tmp_path: Path) -> None:
    """--models naming a module that does not import is a one-line error."""
    path = seeded_journal(tmp_path, seeded.url)
    assert run("replay", seeded.url, str(path), "--models", "no_such_models_module")[0] == 2


def test_demo_end_to_end(tmp_path: Path) -> None:
    """The demo records, inspects and replays twice in separate processes."""
    status, out = run("demo", "--directory", str(tmp_path))
    assert status == 0
    assert "recorded 4 operation(s)" in out
    assert out.count("applied: True") == 1
    assert out.count("applied: False") == 1
    assert "/path/to/final/file" in out


def test_console_script_is_installed_entry_point() -> None:
    """python -m orm_ext.cli behaves as the orm-journal console script."""
    done = subprocess.run(
        [sys.executable, "-m", "orm_ext.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    for command in ("demo", "inspect", "verify", "replay", "init-db"):
        assert command in done.stdout


def test_many_replay_processes_share_a_directory(seeded: Backend, tmp_path: Path) -> None:
    """Three replay processes on one directory of journals apply each journal exactly once."""
    from sqlalchemy import create_engine

    engine = create_engine(seeded.url)
    journals = tmp_path / "journals"
    journals.mkdir()
    for i in range(12):
        with make_sessions(engine)() as session:
            with session.deferred_operations(journals / f"{i:03d}.dbm"):
                for j in range(20):
                    session.add(Task(name=f"journal {i} task {j}"))
    engine.dispose()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orm_ext.cli",
                "replay",
                seeded.url,
                str(journals),
                "--models",
                "tests.models",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    rows = table_rows(seeded.engine())["task"]
    names = [row[1] for row in rows]
    assert len(names) == 1 + 12 * 20
    assert len(set(names)) == len(names)
    with Session(seeded.engine()) as session:
        ledger = session.execute(text("SELECT COUNT(*) FROM orm_journal_ledger")).scalar()
        assert ledger == 12
        assert session.scalar(select(Task).where(Task.name == "journal 11 task 19")) is not None
