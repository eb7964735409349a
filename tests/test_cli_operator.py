"""The installed ``orm-journal`` command in scripts, logs and terminals (SPEC §7).

Each test runs the console script in a process of its own, its output a pipe and
``COLUMNS=80``, as a cron job or a CI log would run it, unless it says otherwise.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from orm_ext.cli import main
from tests.conftest import Backend
from tests.models import Account, Tag, Task
from tests.scenario import make_sessions, record_seed_scenario, seed, table_rows
from tests.test_replay import INTEGER_KEY, task_journal

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "orm-journal"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def orm_journal(*argv: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script with pipes for its output and COLUMNS=80."""
    return subprocess.run(
        [str(SCRIPT), *argv],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def lines(output: str) -> list[str]:
    return output.splitlines()


def record(engine: Any, path: Path, body: Any) -> Path:
    with make_sessions(engine)() as session, session.deferred_operations(path):
        body(session)
    return path


def ledger_rows(engine: Any) -> int:
    with engine.connect() as conn:
        if not inspect(conn).has_table("orm_journal_ledger"):
            return 0
        return int(conn.execute(text("SELECT COUNT(*) FROM orm_journal_ledger")).scalar_one())


@pytest.fixture
def db(backend: Backend) -> Any:
    """Database A of the backend, seeded, with accounts A-1 and A-2."""
    engine = backend.engine()
    seed(engine)
    with Session(engine) as session:
        session.add_all([Account(code="A-1", balance=10), Account(code="A-2", balance=20)])
        session.commit()
    return engine


def conflicting_journal(engine: Any, path: Path) -> Path:
    """A journal changing A-1's balance and A-2's code; then A-1's balance changes behind it."""

    def body(session: Any) -> None:
        one, two = session.scalars(select(Account).order_by(Account.code)).all()
        one.balance += 1
        two.code = "B-2"
        session.add(Tag(label="new"))

    record(engine, path, body)
    with Session(engine) as session:
        session.scalars(select(Account).where(Account.code == "A-1")).one().balance += 100
        session.commit()
    return path


def test_version() -> None:
    """--version prints the installed version on one line."""
    done = orm_journal("--version")
    assert (done.returncode, done.stdout) == (0, "orm-journal 0.1.0\n")


def test_models_are_found_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--models myapp.models imports the project's own package, as python -m would."""
    project = tmp_path / "project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "models.py").write_text(
        textwrap.dedent(
            """
            from sqlalchemy import String
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

            class Base(DeclarativeBase):
                pass

            class Shot(Base):
                __tablename__ = "shot"
                id: Mapped[int] = mapped_column(primary_key=True)
                name: Mapped[str] = mapped_column(String(50))
            """
        )
    )
    monkeypatch.syspath_prepend(str(project))
    from myapp.models import Base, Shot  # type: ignore[import-not-found]

    url = f"sqlite:///{project / 'app.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    record(engine, project / "ops.dbm", lambda s: s.add(Shot(name="sh010")))
    elsewhere = orm_journal("replay", url, "ops.dbm", "--models", "myapp.models", cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert lines(elsewhere.stderr) == [
        "orm-journal replay: error: --models myapp.models: no module named 'myapp' in the "
        f"current directory ({tmp_path}) or the installed packages; run orm-journal from the "
        "directory that holds the package, or install it"
    ]
    done = orm_journal("replay", url, "ops.dbm", "--models", "myapp.models", cwd=project)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"ops\.dbm: applied: 1 operation\(s\) in \d+\.\d\d s\n", done.stdout)
    with Session(engine) as session:
        assert session.scalars(select(Shot.name)).all() == ["sh010"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "raise RuntimeError('no config')",
            r"importing it raised RuntimeError: no config \(.*bad\.py, line 1\)",
        ),
        ("def broken(:\n", r"cannot import it: SyntaxError in .*bad\.py, line 1: invalid syntax"),
        (
            "import not_installed_anywhere",
            r"importing it raised ModuleNotFoundError: No module named 'not_installed_anywhere' \(.*bad\.py, line 1\)",
        ),
    ],
    ids=["raises", "syntax-error", "missing-dependency"],
)
def test_models_that_fail_to_import_are_one_line(
    tmp_path: Path, source: str, expected: str
) -> None:
    """A --models module that raises, has a syntax error or lacks a dependency: one line, status 2."""
    (tmp_path / "bad.py").write_text(source)
    journal = tmp_path / "ops.dbm"
    journal.write_bytes(b"")
    done = orm_journal("replay", "sqlite:///x.db", "ops.dbm", "--models", "bad", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = lines(done.stderr)
    assert re.fullmatch(rf"orm-journal replay: error: --models bad: {expected}", line), line
    assert not (tmp_path / "x.db").exists()


def test_demo_runs_twice_in_one_directory(tmp_path: Path) -> None:
    """demo --directory D, twice: both succeed, and no table cell or line is cut."""
    for _ in range(2):
        done = orm_journal("demo", "--directory", str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.count("applied: True") == 1
        assert done.stdout.count("applied: False") == 1
        assert "…" not in done.stdout
    rows = [line for line in lines(done.stdout) if line.startswith("bc0040_comp")]
    assert [row.split()[1] for row in rows] == ["1", "2", "3"]
    assert rows[-1].split()[-1] == "/path/to/final/file"
    assert "/renders/bc0040_comp/v001/main.exr" in rows[0]


def test_verify_prints_one_line_per_journal_whatever_its_length(db: Any, tmp_path: Path) -> None:
    """verify of a long path is one line in a pipe; several paths, one line each, status 1 if any fails."""
    deep = tmp_path / ("a-very-long-directory-name-" * 4) / ("and-another-one-" * 4)
    deep.mkdir(parents=True)
    path = record(db, deep / "ops.dbm", record_seed_scenario)
    done = orm_journal("verify", str(path))
    assert (done.returncode, lines(done.stdout)) == (
        0,
        [f"valid: {path}: sealed, unsigned, 4 operation(s)"],
    )
    missing = tmp_path / "missing.dbm"
    done = orm_journal("verify", str(path), str(missing))
    assert done.returncode == 1
    assert len(lines(done.stdout)) == 2
    assert lines(done.stdout)[1].startswith(
        f"invalid: [Errno 2] no journal file at this path: '{missing}'"
    )


def test_verify_json(db: Any, tmp_path: Path) -> None:
    """verify --json: one JSON object per journal, per line."""
    path = record(db, tmp_path / "ops.dbm", record_seed_scenario)
    done = orm_journal("verify", "--json", str(path), str(tmp_path / "missing.dbm"))
    assert done.returncode == 1
    first, second = (json.loads(line) for line in lines(done.stdout))
    assert first == {
        "path": str(path),
        "valid": True,
        "signed": False,
        "operations": 4,
        "error": None,
    }
    assert second["valid"] is False and "no journal file" in second["error"]


def test_replay_lists_each_skipped_conflict_with_the_columns_that_differ(
    db: Any, tmp_path: Path
) -> None:
    """--on-conflict skip prints the journal's line, then one line per conflict, differing columns only."""
    path = conflicting_journal(db, tmp_path / "ops.dbm")
    with Session(db) as session:
        session.add(Tag(label="new"))
        session.commit()
    done = orm_journal(
        "replay", "--models", "tests.models", backend_url(db), str(path), "--on-conflict", "skip"
    )
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert len(out) == 3, out
    assert re.fullmatch(
        rf"{re.escape(str(path))}: applied: 3 operation\(s\) in \d+\.\d\d s, "
        r"2 conflict\(s\): 2 skipped",
        out[0],
    )
    data = [line for line in out if ": data, " in line]
    assert data == [
        f"{path}: conflict: operation {data[0].split()[3]} (update of account row (1,)): data, "
        "skipped: balance: journal Decimal('10.00'), database Decimal('110.00'); "
        "revision: journal 1, database 2"
    ]
    [constraint] = [line for line in out if ": constraint, " in line]
    assert (
        "(insert of tag row (#1.id,)): constraint, skipped: the database refuses it (" in constraint
    )
    assert "code" not in data[0]


def test_replay_messages_name_the_options(db: Any, tmp_path: Path) -> None:
    """A conflict or a schema difference advises --on-conflict and --allow-schema-drift."""
    path = conflicting_journal(db, tmp_path / "ops.dbm")
    done = orm_journal("replay", "--models", "tests.models", backend_url(db), str(path))
    assert done.returncode == 1
    [line] = lines(done.stdout)
    assert line.endswith(
        "Nothing was applied; use --on-conflict overwrite or --on-conflict skip to go on anyway"
    )
    assert "on_conflict=" not in line
    drift = tmp_path / "drift.dbm"
    task_journal(drift, {"id": INTEGER_KEY, "name": {"type": "TEXT", "nullable": True}})
    done = orm_journal("replay", "--models", "tests.models", backend_url(db), str(drift))
    [line] = lines(done.stdout)
    assert line.endswith("or pass --allow-schema-drift"), line
    assert "allow_schema_drift" not in line


def test_replay_json_and_dry_run(db: Any, tmp_path: Path) -> None:
    """--dry-run --json: one valid JSON object per journal; nothing changes, the ledger stays empty."""
    good = record(db, tmp_path / "a.dbm", record_seed_scenario)
    bad = conflicting_journal(db, tmp_path / "b.dbm")
    before = table_rows(db)
    done = orm_journal(
        "replay",
        "--models",
        "tests.models",
        backend_url(db),
        str(good),
        str(bad),
        "--dry-run",
        "--json",
        "--on-conflict",
        "skip",
    )
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in lines(done.stdout))
    assert (first["outcome"], first["dry_run"], first["operations"], first["conflicts"]) == (
        "would apply",
        True,
        4,
        [],
    )
    assert isinstance(first["duration"], float) and first["error"] is None
    [conflict] = second["conflicts"]
    assert {k: conflict[k] for k in ("kind", "decision", "table", "key")} == {
        "kind": "data",
        "decision": "skipped",
        "table": "account",
        "key": [1],
    }
    assert set(conflict["columns"]) == {"balance", "revision"}
    assert table_rows(db) == before and ledger_rows(db) == 0
    done = orm_journal("replay", "--models", "tests.models", backend_url(db), str(good), "--json")
    assert json.loads(done.stdout)["outcome"] == "applied"
    done = orm_journal(
        "replay", "--models", "tests.models", backend_url(db), str(good), "--json", "--dry-run"
    )
    assert json.loads(done.stdout)["outcome"] == "already applied"


def test_replay_json_never_prints_the_password(tmp_path: Path) -> None:
    """A failed replay's JSON and text carry the URL's password nowhere."""
    path = tmp_path / "ops.dbm"
    with make_sessions(create_engine(f"sqlite:///{tmp_path / 'x.db'}"))() as session:
        seed(session.get_bind())  # type: ignore[arg-type]
        with session.deferred_operations(path):
            session.add(Task(name="x"))
    url = "postgresql+psycopg://app:pw-Zq81%40x@127.0.0.1:9/none?connect_timeout=1"
    for extra in ((), ("--json",)):
        done = orm_journal("replay", url, str(path), *extra)
        assert done.returncode == 1
        assert len(lines(done.stdout)) == 1
        for secret in ("pw-Zq81", "Zq81@x", "Zq81%40x"):
            assert secret not in done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] == "failed"


def test_progress_bar_counts_operations_on_a_terminal_only(db: Any, tmp_path: Path) -> None:
    """On a terminal the bar counts operations of all journals; in a pipe nothing but the lines."""
    for name in ("a", "b"):
        record(db, tmp_path / f"{name}.dbm", lambda s: s.add_all([Task(name="t")] * 1))
    record(db, tmp_path / "c.dbm", lambda s: s.add_all([Task(name=f"t{i}") for i in range(5)]))
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=100)
    assert (
        main(
            ["replay", "--models", "tests.models", backend_url(db), str(tmp_path)], console=terminal
        )
        == 0
    )
    shown = ANSI.sub("", buffer.getvalue())
    assert "7/7 operations" in shown
    piped = orm_journal("replay", "--models", "tests.models", backend_url(db), str(tmp_path))
    assert len(lines(piped.stdout)) == 3 and "operations" not in piped.stdout
    assert all(": already applied: " in line for line in lines(piped.stdout))


def backend_url(engine: Any) -> str:
    return str(engine.url.render_as_string(hide_password=False))


def test_log_level_reports_each_journal_on_stderr(db: Any, tmp_path: Path) -> None:
    """--log-level INFO adds one log line per journal on stderr; without it stderr stays empty."""
    record(db, tmp_path / "a.dbm", record_seed_scenario)
    record(db, tmp_path / "b.dbm", lambda s: s.add(Task(name="t")))
    url = backend_url(db)
    done = orm_journal(
        "--log-level", "INFO", "replay", "--models", "tests.models", url, str(tmp_path)
    )
    assert done.returncode == 0
    assert len(lines(done.stdout)) == 2
    logged = lines(done.stderr)
    assert len(logged) == 2, logged
    assert all(" INFO orm_ext.replay: journal " in line for line in logged)
    assert ": applied, 4 operation(s) in " in logged[0] and str(tmp_path / "a.dbm") in logged[0]
    quiet = orm_journal("replay", "--models", "tests.models", url, str(tmp_path))
    assert quiet.stderr == "" and len(lines(quiet.stdout)) == 2


def test_every_python_phrase_the_cli_rewrites_is_one_the_library_writes() -> None:
    """Each advice phrase cli_words rewrites occurs in a library message, so none goes stale."""
    from orm_ext.reporting import CLI_WORDS, cli_words

    sources = "".join(
        path.read_text()
        for package in ("orm_ext", "journal")
        for path in sorted((REPO / package).glob("*.py"))
        if path.name != "reporting.py"
    )
    for python, cli in CLI_WORDS:
        assert python in sources, python
        assert cli_words(f"x {python} y") == f"x {cli} y"
        assert "=" not in cli and "--" in cli


def test_json_lines_stay_whole_under_the_progress_bar(db: Any, tmp_path: Path) -> None:
    """replay --json on a terminal: each journal's JSON line is whole, the bar drawn apart."""
    for name in ("a", "b"):
        record(db, tmp_path / f"{name}.dbm", lambda s: s.add(Task(name="t")))
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=100)
    argv = ["replay", "--models", "tests.models", "--json", backend_url(db), str(tmp_path)]
    assert main(argv, console=terminal) == 0
    shown = [line.split("\r")[-1] for line in ANSI.sub("", buffer.getvalue()).split("\n")]
    documents = [json.loads(line) for line in shown if line.startswith("{")]
    assert [d["outcome"] for d in documents] == ["applied", "applied"]
    assert "2/2 operations" in ANSI.sub("", buffer.getvalue())
