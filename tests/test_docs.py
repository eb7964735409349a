"""The examples in README.md and docs/ run, and print what their comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRINT_WITH_EXPECTATION = re.compile(r"^\s*print\(.*\)\s+#\s*(.+)$")


def examples() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, block in enumerate(BLOCK.findall(document.read_text()), start=1):
            found.append((f"{document.relative_to(ROOT)}#{number}", block))
    return found


@pytest.mark.parametrize(("name", "code"), examples(), ids=[n for n, _ in examples()])
def test_example_runs_and_prints_what_it_says(name: str, code: str, tmp_path: Path) -> None:
    """A documentation example runs as a script and each commented print shows its comment."""
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
    expected = [
        m.group(1).split(":")[0].strip()
        for line in code.splitlines()
        if (m := PRINT_WITH_EXPECTATION.match(line))
    ]
    printed = done.stdout.splitlines()
    assert printed[: len(expected)] == expected, f"{name} printed {printed}"
