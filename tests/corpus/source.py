"""SQLAlchemy's ``examples/`` for the installed version: downloaded once, cached, reused.

The examples ship in SQLAlchemy's source distribution on PyPI, not in its wheels, so the
sdist of exactly the installed version is fetched with ``pip download`` and only its
``examples/`` directory is kept, under ``$XDG_CACHE_HOME/orm-journal-corpus/<version>/``
(``~/.cache/...`` without the variable). The directory returned by :func:`examples_root`
holds the package ``examples``; put it on ``sys.path`` to import them.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["CorpusUnavailableError", "cache_root", "examples_root", "sqlalchemy_version"]

# Written last, so a directory without it is an interrupted extraction, never a corpus.
COMPLETE = ".complete"
# pip needs PyPI; a stalled download should fail the run, not hang it.
DOWNLOAD_TIMEOUT = 600


class CorpusUnavailableError(RuntimeError):
    """SQLAlchemy's examples could not be obtained (no network, no such release, ...)."""


def sqlalchemy_version() -> str:
    """Return the version of the installed SQLAlchemy distribution."""
    return importlib.metadata.version("sqlalchemy")


def cache_root() -> Path:
    """Return the directory that holds one extracted ``examples/`` per SQLAlchemy version."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orm-journal-corpus"


def examples_root(version: str | None = None) -> Path:
    """Return the cached directory holding ``examples/`` of ``version``, fetching it first.

    :param version: a SQLAlchemy version; the installed one by default.
    :raises CorpusUnavailableError: the download or the extraction failed.
    """
    version = version or sqlalchemy_version()
    target = cache_root() / version
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=target.parent) as tmp:
        staging = Path(tmp)
        sdist = _download(version, staging / "download")
        extracted = staging / "extracted"
        _extract_examples(sdist, extracted)
        (extracted / COMPLETE).write_text(f"SQLAlchemy {version} examples from {sdist.name}\n")
        try:
            # A rename is atomic: a concurrent run sees either nothing or the whole corpus.
            extracted.rename(target)
        except OSError:
            if not (target / COMPLETE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                extracted.rename(target)
    return target


def _download(version: str, into: Path) -> Path:
    # "--no-binary sqlalchemy" rather than ":all:": both fetch the same sdist, but ":all:"
    # would also build pip's build requirements (setuptools, Cython) from source just to
    # read the sdist's metadata, which takes many minutes.
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        "sqlalchemy",
        f"sqlalchemy=={version}",
        "--dest",
        str(into),
    ]
    shown = "pip " + " ".join(command[3:-2])  # without the temporary --dest
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise CorpusUnavailableError(
            f"cannot obtain SQLAlchemy {version}'s examples: `{shown}` did not finish within "
            f"{DOWNLOAD_TIMEOUT} s. It needs network access to PyPI (once; the result is "
            f"cached in {cache_root()})"
        ) from None
    found = sorted(into.glob("*.tar.gz")) if into.is_dir() else []
    if done.returncode != 0 or not found:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise CorpusUnavailableError(
            f"cannot obtain SQLAlchemy {version}'s examples: `{shown}` failed ({reason}). "
            f"It needs network access to PyPI (once; the result is cached in {cache_root()})"
        )
    return found[0]


def _extract_examples(sdist: Path, into: Path) -> None:
    """Extract only the sdist's ``examples/`` directory, as ``into/examples``."""
    into.mkdir()
    try:
        with tarfile.open(sdist) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.partition("/")[2].split("/", 1)[0] == "examples"
            ]
            if not members:
                raise CorpusUnavailableError(f"{sdist.name} holds no examples/ directory")
            # The "data" filter refuses links, absolute paths and "..": archive content
            # never lands outside the staging directory.
            archive.extractall(into, members=members, filter="data")
    except (OSError, tarfile.TarError) as err:
        raise CorpusUnavailableError(f"cannot extract examples/ from {sdist}: {err}") from err
    (top,) = {m.name.split("/", 1)[0] for m in members}
    (into / top / "examples").rename(into / "examples")
    (into / top).rmdir()
