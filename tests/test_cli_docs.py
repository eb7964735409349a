"""Every example in docs/reference/cli.md runs, through the installed command, and prints what it shows.

The ``console`` blocks are run in order, in one directory prepared as the page assumes
(the demo's ``pipeline.db``, ``ops.dbm``, a ``journals/`` directory, an application
package ``myapp``), each ``$ orm-journal ...`` line in a process of its own whose output
is a pipe; what it printed is compared as its standard output followed by its standard
error. What varies from run to run (journal ids, times, durations, host and version
numbers) is masked on both sides before the comparison.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from orm_ext import JournalingSession
from orm_ext import demo as demo_models

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "cli.md"
BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)
BIN = Path(sys.executable).parent
MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00"), "<time>"),
    (re.compile(r"(created +<time> on ).*"), r"\1<host>"),
    (re.compile(r"^(versions +).*", re.MULTILINE), r"\1<versions>"),
    (re.compile(r"\d+\.\d{2,3} s\b"), "<seconds> s"),
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE), "<log time> "),
    (re.compile(r'"duration": [0-9.e-]+'), '"duration": <seconds>'),
    (re.compile(r"^orm-journal \d+\.\d+\.\d+\S*$", re.MULTILINE), "orm-journal <version>"),
]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def examples() -> list[tuple[str, list[str]]]:
    """Each command of the page with the lines the page shows it printing, in page order."""
    found: list[tuple[str, list[str]]] = []
    for block in BLOCK.findall(PAGE.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                found[-1][1].append(line)
    return found


def prepare(workdir: Path) -> None:
    """The files and database the page's examples assume, made as a user would make them."""
    url = "sqlite:///pipeline.db"
    os.chdir(workdir)
    demo_models.setup(url)
    (workdir / "myapp").mkdir()
    (workdir / "myapp" / "__init__.py").write_text("")
    (workdir / "myapp" / "models.py").write_text(
        '"""The application\'s mapped classes: here, the demo\'s."""\n'
        "from orm_ext.demo import Asset, AssetVersion, Component, ComponentLocation, Task\n"
    )
    demo_models.record(url, "ops.dbm")  # version 2 of the asset
    journals = workdir / "journals"
    journals.mkdir()
    shutil.copy("ops.dbm", journals / "a.dbm")
    demo_models.replay(url, str(journals / "a.dbm"))  # so a.dbm is already applied
    demo_models.record(url, str(journals / "b.dbm"))  # version 3, not applied yet
    data = bytearray((journals / "b.dbm").read_bytes())
    data[data.index(b"/path/to/final/file")] ^= 1
    (journals / "c.dbm").write_bytes(bytes(data))
    tampered = bytearray(Path("ops.dbm").read_bytes())
    tampered[tampered.index(b"/path/to/final/file")] ^= 1
    Path("tampered.dbm").write_bytes(bytes(tampered))
    engine = create_engine(url)
    with JournalingSession(engine) as session:
        with session.deferred_operations("renamed.dbm"):
            session.scalars(select(demo_models.Task)).one().name = "comp"
        session.scalars(select(demo_models.Task)).one().name = "Compositing"  # meanwhile
        session.commit()
    engine.dispose()
    (workdir / "bad_models.py").write_text("import yaml_config_that_is_not_installed\n")


def run(command: str, workdir: Path) -> tuple[int, str]:
    """Run one example command as a shell would, with pipes; return status and output."""
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
        "COLUMNS": "80",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    done = subprocess.run(
        shlex.split(command),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_every_cli_example_prints_what_the_page_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `$ orm-journal ...` of cli.md prints the lines the page shows under it."""
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path)
    status = 0
    shown: list[str] = []
    for command, expected in examples():
        if command == "echo $?":
            output = f"{status}\n"
        else:
            assert command.startswith("orm-journal "), command
            status, output = run(command, tmp_path)
        shown.append(f"$ {command}\n{output}")
        assert mask(output).splitlines() == mask("\n".join(expected)).splitlines(), (
            f"$ {command} printed:\n{output}"
        )
    assert len(shown) >= 12, "the page's examples were not found"
