"""The ``orm-journal`` command line (SPEC §7), through its parser."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from journal import JournalWriter
from journal.storage import PREFIX_SIZE
from orm_ext import commands
from orm_ext.cli import main
from tests.conftest import Backend
from tests.models import Task
from tests.reliability.journal_mutations import rechain
from tests.scenario import make_sessions, record_seed_scenario, seed, table_rows

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
FORGED_HOSTS = ["[/]", "\x1b[2J[green]signature verified[/green]"]


class Label(str):
    """A str subclass: the codec stores it with dill, so a journal holding one needs dill."""


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


def written_journal(path: Path, batches: list[list[Any]], **kw: Any) -> Path:
    """Write a sealed journal with JournalWriter, one append per batch."""
    with JournalWriter.create(path, **kw) as writer:
        for operations in batches:
            writer.append(operations)
        writer.seal()
    return path


def insert(ref: int, table: str = "item", **values: Any) -> dict[str, Any]:
    return {
        "op": "insert",
        "class": f"m:{table.title()}",
        "table": table,
        "ref": ref,
        "values": values,
    }


def forge_header(path: Path, **fields: Any) -> None:
    """Change header fields and recompute the unsigned chain, as a forger without the key would."""
    conn = sqlite3.connect(path)
    row_key, value = conn.execute("SELECT key, value FROM records ORDER BY key LIMIT 1").fetchone()
    header = json.loads(value[PREFIX_SIZE:])
    header.update(fields)
    edited = value[:PREFIX_SIZE] + json.dumps(header).encode()
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (edited, row_key))
    conn.commit()
    conn.close()
    rechain(path, None)


def run_piped(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the console script in a process whose output is a pipe and COLUMNS=80."""
    return subprocess.run(
        [sys.executable, "-m", "orm_ext.cli", *argv],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def peak_mib(*argv: str) -> tuple[float, str]:
    """Run the command line in-process; return its peak of traced allocations and its output."""
    tracemalloc.start()
    try:
        status, out = run(*argv)
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    assert status == 0, out
    return peak, out


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
    for flag in ("--unsafe", "--allow-dill"):
        status, out = run("inspect", str(path), flag)
        assert (status, "frozenset" in out) == (0, True)


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


@pytest.mark.parametrize("host", FORGED_HOSTS, ids=["closing-tag", "escape-and-markup"])
def test_inspect_prints_a_forged_header_literally(tmp_path: Path, host: str) -> None:
    """Header text from the file is printed as escaped plain text, never as markup or escapes."""
    path = written_journal(tmp_path / "forged.dbm", [[insert(1, name="x")]])
    forge_header(path, host=host, versions={"orm_journal": "[bold]9.9[/bold]\x07"})
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=80)
    assert main(["inspect", str(path)], console=console) == 0
    text_out = out.getvalue()
    assert "\x1b" not in text_out and "\x07" not in text_out
    assert host.replace("\x1b", "\\x1b") in text_out
    assert "[bold]9.9[/bold]\\x07" in text_out
    signature = [line for line in text_out.splitlines() if line.startswith("signature")]
    assert signature == ["signature         unsigned, checksums verified"]
    status, document = run("inspect", str(path), "--json")
    assert (status, json.loads(document)["header"]["host"]) == (0, host)


def test_inspect_labels_the_header_of_a_journal_that_does_not_verify(tmp_path: Path) -> None:
    """A journal that fails verification has every header field marked (unverified)."""
    key = "k" * 32
    path = written_journal(tmp_path / "signed.dbm", [[insert(1, name="x")]], key=key)
    forge_header(path, host="\x1b[32msigned by ops\r")
    status, out = run("inspect", str(path), "--key", key)
    assert status == 0
    lines = out.splitlines()
    assert any(line.startswith("signature         NOT VERIFIED: ") for line in lines)
    labels = ("id", "state", "created", "sealed", "operations", "versions", "tables")
    for label in labels:
        (line,) = [line for line in lines if line.startswith(f"{label:<18}")]
        assert line.endswith(" (unverified)"), line
    assert "on \\x1b[32msigned by ops\\r (unverified)" in out
    assert "\x1b" not in out and "\r" not in out
    assert "operations not shown" in out
    document = json.loads(run("inspect", str(path), "--key", key, "--json")[1])
    assert (document["verified"], document["operations"]) == (False, [])


def test_errors_quoting_the_file_escape_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error message quoting a forged header field is one escaped line (inspect, verify)."""
    path = written_journal(tmp_path / "format.dbm", [[insert(1, name="x")]])
    forge_header(path, format="\x1b]0;pwned\x07\n2")
    status, _ = run("inspect", str(path))
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err
    assert "format version \\x1b]0;pwned\\x07\\n2;" in err
    status, out = run("verify", str(path))
    assert (status, out.count("\n"), "\x1b" in out) == (1, 1, False)
    assert out.startswith("invalid: ") and "\\x1b]0;pwned" in out


def test_paths_with_control_characters_are_escaped(tmp_path: Path) -> None:
    """A journal file name holding terminal escapes is printed escaped by verify and replay."""
    spool = tmp_path / "spool"
    spool.mkdir()
    evil = spool / "evil\x1b[2J\r.dbm"
    evil.write_bytes(b"not a journal" * 100)
    status, out = run("verify", str(evil))
    assert (status, "\x1b" in out, "evil\\x1b[2J\\r.dbm" in out) == (1, False, True)
    status, out = run("replay", f"sqlite:///{tmp_path / 'db.sqlite'}", str(spool))
    assert status == 1
    assert "\x1b" not in out and "\r" not in out
    assert f"{spool}/evil\\x1b[2J\\r.dbm: failed: " in out


def test_inspect_streams_a_large_journal_with_a_limit(tmp_path: Path) -> None:
    """inspect counts 20,000 operations per table and kind, then shows --limit 5 of them."""
    batches = [[insert(i + 1, n=i) for i in range(b, b + 1000)] for b in range(0, 20_000, 1000)]
    batches.append(
        [{"op": "delete", "class": "m:Item", "table": "item", "target": [1], "old": {"n": 0}}]
    )
    path = written_journal(tmp_path / "large.dbm", batches)
    status, out = run("inspect", str(path), "--limit", "5")
    assert status == 0
    assert "summary           20001 operation(s)" in out
    assert "  item: 1 delete, 20000 insert" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("     ")] == [
        str(n) for n in range(1, 6)
    ]
    assert "  ... 19996 more operation(s) not shown (--limit 5)" in out
    document = json.loads(run("inspect", str(path), "--limit", "5", "--json")[1])
    assert [op["sequence"] for op in document["operations"]] == [1, 2, 3, 4, 5]
    assert (document["operations_shown"], document["operations_left_out"]) == (5, 19996)
    assert document["summary"] == [
        {"table": "item", "kind": "delete", "operations": 1},
        {"table": "item", "kind": "insert", "operations": 20000},
    ]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_inspect_memory_does_not_grow_with_the_journal(tmp_path: Path, as_json: bool) -> None:
    """Showing every one of 20,000 operations allocates a few MiB at a time, not all of them."""
    batches = [
        [insert(i + 1, name=f"item {i}") for i in range(b, b + 1000)]
        for b in range(0, 20_000, 1000)
    ]
    path = written_journal(tmp_path / "large.dbm", batches)
    peak, out = peak_mib("inspect", str(path), *(["--json"] if as_json else []))
    if as_json:
        assert len(json.loads(out)["operations"]) == 20_000
    assert out.count("item 19999") == 1
    # The captured output itself is most of it: 1.3 MiB of text, 2.6 MiB of JSON.
    assert peak < 16, f"{peak:.1f} MiB"


def test_inspect_cuts_long_values_before_formatting_them(tmp_path: Path) -> None:
    """A 16 MiB bytes value and a long str are cut, with their length, in text and in JSON."""
    size = 16 * MIB
    path = written_journal(
        tmp_path / "blob.dbm", [[insert(1, "blob", data=b"\0" * size, note="é" * 5000)]]
    )
    peak, out = peak_mib("inspect", str(path))
    assert f"...({size} bytes)" in out and "...(5000 chars)" in out
    assert len(out) < 4000
    # The stored record and the decoded value are 16 MiB each; its repr would be 64 MiB.
    assert peak < 3 * size / MIB, f"{peak:.1f} MiB"
    peak, out = peak_mib("inspect", str(path), "--json")
    values = json.loads(out)["operations"][0]["values"]
    assert values["data"]["length"] == size and values["data"]["truncated"].startswith("b'\\x00")
    assert values["note"] == {"truncated": "é" * 1024, "length": 5000}
    assert len(out) < 20_000
    assert peak < 3 * size / MIB, f"{peak:.1f} MiB"


def test_inspect_shows_malformed_operations_without_failing(tmp_path: Path) -> None:
    """Operations of the wrong shape are shown for what they are, never a traceback."""
    ops = [7, {"op": ["x"], "table": None, "values": "v", "refs": {"a": 3}}, {"rows": [1, 2]}]
    path = written_journal(tmp_path / "odd.dbm", [ops])
    status, out = run("inspect", str(path))
    assert status == 0
    assert "     1  malformed operation: 7" in out
    assert "a=3" in out and "2 row(s)" in out
    document = json.loads(run("inspect", str(path), "--json")[1])
    assert document["operations"][0] == {"sequence": 1, "malformed": 7}


def test_output_lines_are_not_wrapped_when_piped(tmp_path: Path) -> None:
    """With COLUMNS=80 and a pipe, each message about a long path stays one whole line."""
    deep = tmp_path / ("a-directory-with-a-long-name-" * 6)
    deep.mkdir()
    bad = deep / "damaged-journal.dbm"
    bad.write_bytes(b"damaged" * 200)
    done = run_piped("verify", str(bad))
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1 and str(bad) in done.stdout
    done = run_piped("replay", f"sqlite:///{tmp_path / 'db.sqlite'}", str(deep))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{bad}: failed: {bad} is not an orm-journal file")
    assert done.stdout.count("\n") == 1 and "…" not in done.stdout
    done = run_piped("inspect", str(deep / "missing.dbm"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(deep / "missing.dbm") in done.stderr


def test_inspect_piped_into_a_reader_that_stops_ends_quietly(tmp_path: Path) -> None:
    """inspect | head: when the reader goes away the command ends without a traceback."""
    batches = [[insert(i + 1, n=i) for i in range(b, b + 1000)] for b in range(0, 20_000, 1000)]
    path = written_journal(tmp_path / "large.dbm", batches)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orm_ext.cli", "inspect", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"journal")
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=120) == 2
    assert err == b""


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret@127.0.0.1:1/x?connect_timeout=1",
        "postgresql+psycopg://u:s3cret@127.0.0.1:notaport/x",
        "postgresql+psycopg://u:s3%63ret@127.0.0.1:1/x?connect_timeout=1",
    ],
    ids=["refused", "unparsable", "quoted"],
)
def test_database_passwords_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """init-db and replay report a failed connection without the URL's password."""
    path = written_journal(tmp_path / "ops.dbm", [])
    status, out = run("init-db", url)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "s3cret" not in out + err and "s3%63ret" not in out + err
    status, out = run("--traceback", "replay", url, str(path))
    err = capsys.readouterr().err
    assert status in (1, 2)
    assert "s3cret" not in out + err and "s3%63ret" not in out + err


def test_database_error_text_is_scrubbed_of_the_password() -> None:
    """A driver message that quotes the password shows *** instead."""
    url = "mysql+pymysql://app:hunter2@db/app"
    err = OperationalError("SELECT 1", None, Exception("login hunter2 refused\nmore"))
    line = commands.one_line(err, url=url)
    assert "hunter2" not in line and "login *** refused" in line and "\n" not in line


def test_replay_reports_a_corrupt_journal_and_applies_the_next(
    seeded: Backend, tmp_path: Path
) -> None:
    """The first journal is corrupt, the second applies: one line each, exit status 1."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "a.dbm").write_bytes(b"corrupt" * 500)
    seeded_journal(spool, seeded.url, name="b.dbm")
    status, out = run("replay", seeded.url, str(spool), "--models", "tests.models")
    assert status == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{spool / 'a.dbm'}: failed: {spool / 'a.dbm'} is not an orm-journal"
    )
    assert lines[1].startswith(f"{spool / 'b.dbm'}: applied: 4 operation(s) in ")
    assert len(table_rows(seeded.engine())["asset_version"]) == 2


def test_replay_goes_on_after_an_unexpected_error(
    seeded: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any exception from one journal is its one-line failure; --traceback adds the story."""
    first = seeded_journal(tmp_path, seeded.url, name="a.dbm")
    second = seeded_journal(tmp_path, seeded.url, name="b.dbm")
    real = commands.reconnect_and_commit

    def flaky(session: Any, path: Any, **kw: Any) -> Any:
        if Path(path) == first:
            raise RuntimeError("boom\nsecond line")
        return real(session, path, **kw)

    monkeypatch.setattr(commands, "reconnect_and_commit", flaky)
    status, out = run("replay", seeded.url, str(first), str(second))
    assert status == 1
    assert f"{first}: failed: RuntimeError: boom\\nsecond line\n" in out
    assert f"{second}: applied: " in out
    assert "Traceback" not in capsys.readouterr().err
    status, out = run("--traceback", "replay", seeded.url, str(first))
    assert status == 1
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_non_regular_files_are_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO named as a journal fails at once in replay, verify and inspect."""
    fifo = tmp_path / "fifo.dbm"
    os.mkfifo(fifo)
    good = written_journal(tmp_path / "good.dbm", [], meta={"classes": [], "schema": {}})
    done = run_piped(
        "replay", f"sqlite:///{tmp_path / 'db.sqlite'}", str(fifo), str(good), timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert f"{fifo}: failed: {fifo}: not a regular file" in done.stdout
    assert f"{good}: applied: 0 operation(s)" in done.stdout
    assert run_piped("verify", str(fifo), timeout=60).returncode == 1
    done = run_piped("inspect", str(fifo), timeout=60)
    assert (done.returncode, "not a regular file" in done.stderr) == (2, True)


def test_replay_decodes_dill_only_with_allow_dill(seeded: Backend, tmp_path: Path) -> None:
    """An unsigned journal holding a dill value fails replay unless --allow-dill is given."""
    engine = seeded.engine()
    path = tmp_path / "dill.dbm"
    with make_sessions(engine)() as session, session.deferred_operations(path):
        session.add(Task(name=Label("from dill")))
    status, out = run("replay", seeded.url, str(path))
    assert status == 1
    assert f"{path}: failed: journal {path} holds pickled (dill) values in 1 record(s)" in out
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
    status, out = run("replay", seeded.url, str(path), "--allow-dill")
    assert status == 0, out
    with Session(engine) as session:
        assert session.scalar(select(Task.name).where(Task.name == "from dill")) == "from dill"
