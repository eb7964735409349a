"""The built wheel, installed into a fresh virtual environment, works without the checkout.

The checkout has a top-level ``alembic/`` folder (our migration scripts); the wheel must
carry it as ``orm_ext/migrations`` and never as a top-level ``alembic`` that would shadow
the real Alembic package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
# Building plus fetching dependencies from the package index; generous, but bounded.
INSTALL_TIMEOUT = 900


def _clean_env() -> dict[str, str]:
    """Return this process's environment without anything that points Python at the repo."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(command: list[str], cwd: Path, timeout: float = 120) -> str:
    """Run ``command`` in ``cwd`` and return its stdout, failing the test with its output."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new virtual environment with orm-journal installed from the repo."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv)
    python = venv / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)],
        cwd=venv,
        timeout=INSTALL_TIMEOUT,
    )
    return python


@pytest.fixture
def probe(venv_python: Path, tmp_path: Path) -> Any:
    """Run a snippet in the installed venv, outside the repo, and return what it prints as JSON."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    def run(code: str) -> Any:
        out = _run([str(venv_python), "-c", textwrap.dedent(code)], cwd=workdir)
        return json.loads(out)

    return run


def test_import_alembic_is_the_real_alembic(probe: Any) -> None:
    """``import alembic`` in the installed venv gives the real Alembic from site-packages."""
    found = probe(
        """
        import json, sysconfig
        import alembic, alembic.command
        print(json.dumps({
            "file": alembic.__file__,
            "upgrade": callable(getattr(alembic.command, "upgrade", None)),
            "purelib": sysconfig.get_paths()["purelib"],
        }))
        """
    )
    assert Path(found["file"]).is_relative_to(found["purelib"])
    assert Path(found["file"]).name == "__init__.py"
    assert found["upgrade"]


def test_wheel_installs_no_top_level_alembic(probe: Any) -> None:
    """The installed RECORD has no path under a top-level ``alembic/`` and carries the scripts."""
    files = probe(
        """
        import json
        from importlib.metadata import distribution
        print(json.dumps([str(f) for f in distribution("orm-journal").files]))
        """
    )
    assert [f for f in files if f.split("/")[0] == "alembic"] == []
    assert "orm_ext/migrations/env.py" in files


def test_script_location_is_inside_installed_package(probe: Any) -> None:
    """``script_location()`` points at ``orm_ext/migrations`` of the installed package."""
    found = probe(
        """
        import json, os, sysconfig
        import orm_ext.ledger
        location = orm_ext.ledger.script_location()
        print(json.dumps({
            "location": location,
            "package": os.path.dirname(orm_ext.ledger.__file__),
            "purelib": sysconfig.get_paths()["purelib"],
            "entries": sorted(os.listdir(location)),
            "versions": sorted(os.listdir(os.path.join(location, "versions"))),
        }))
        """
    )
    assert Path(found["package"]).is_relative_to(found["purelib"])
    assert Path(found["location"]) == Path(found["package"]) / "migrations"
    assert "env.py" in found["entries"]
    assert any(name.endswith("_create_ledger.py") for name in found["versions"])


def test_upgrade_creates_ledger_tables_on_sqlite(probe: Any) -> None:
    """Upgrading a SQLite file (twice) creates the ledger and its version table at head."""
    found = probe(
        """
        import json
        import sqlalchemy as sa
        from alembic.script import ScriptDirectory
        import orm_ext.ledger as ledger

        engine = sa.create_engine("sqlite:///ledger.sqlite")
        for _ in range(2):
            with engine.begin() as connection:
                ledger.upgrade(connection)
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
            versions = connection.scalars(
                sa.text(f"SELECT version_num FROM {ledger.VERSION_TABLE}")
            ).all()
        engine.dispose()
        heads = ScriptDirectory.from_config(ledger.alembic_config()).get_heads()
        print(json.dumps({"tables": tables, "versions": versions, "heads": heads}))
        """
    )
    assert sorted(found["tables"]) == ["orm_journal_alembic_version", "orm_journal_ledger"]
    assert found["versions"] == found["heads"]
    assert len(found["heads"]) == 1
