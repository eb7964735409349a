"""What an adapter says about one example: its files, its tables and its phases."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.orm import Session

from tests.corpus.loader import load

__all__ = ["Case", "Example", "Phase", "Source"]

PhaseBody = Callable[[Session, Any], None]


@dataclasses.dataclass(frozen=True)
class Source:
    """One file under ``examples/`` to load (see :func:`tests.corpus.loader.load`)."""

    relative: str
    main_block: bool = False
    replacements: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Phase:
    """One unit of program run in a session: directly, or recorded and replayed.

    :ivar after: the phases run directly on both databases first; ``None`` means every
        phase listed before this one.
    :ivar recorded: ``False`` for a phase that only sets up later ones (it makes no case).
    """

    name: str
    body: PhaseBody
    after: tuple[str, ...] | None = None
    recorded: bool = True


def _base_metadata(module: Any) -> MetaData:
    metadata: MetaData = module.Base.metadata
    return metadata


@dataclasses.dataclass(frozen=True)
class Example:
    """An adapter: how to load an example, make its tables and exercise its models.

    :ivar name: the example's path under ``examples/`` without ``.py``.
    :ivar sources: files to load, in order; phases get the last one (or ``models``).
    :ivar models: a module of ours to import after the sources, for an example that ships
        a library but no models (``versioned_history``); phases get it.
    :ivar metadata: the example's tables, from the module phases get.
    :ivar session_setup: called on every session a phase runs in, direct or recorded
        (e.g. ``versioned_session``), never on the replaying session.
    :ivar prepare: called with the module and the phase's name before a phase runs and
        before its journal is replayed, for module state the demo sets (a clock).
    :ivar volatile: ``table.column`` patterns holding the wall-clock time of the run:
        compared as "NULL or not" only.
    :ivar arbitrary: ``table.column`` patterns whose values SQLAlchemy itself assigns in
        an arbitrary order (keys of rows flushed out of a Python ``set``): not compared.
    """

    name: str
    sources: tuple[Source, ...]
    phases: tuple[Phase, ...]
    models: str | None = None
    metadata: Callable[[Any], MetaData] = _base_metadata
    session_setup: Callable[[Session, Any], None] | None = None
    prepare: Callable[[Any, str], None] | None = None
    volatile: tuple[str, ...] = ()
    arbitrary: tuple[str, ...] = ()

    def load(self, root: Path) -> ModuleType:
        """Load the example's files (and our models module); return what phases get."""
        module: ModuleType | None = None
        for source in self.sources:
            module = load(
                root,
                source.relative,
                main_block=source.main_block,
                replacements=source.replacements,
            )
        if self.models is not None:
            module = importlib.import_module(self.models)
        assert module is not None, f"{self.name} loads nothing"
        return module

    def phase(self, name: str) -> Phase:
        """Return the phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"{self.name} has no phase {name!r}")

    def before(self, name: str) -> list[Phase]:
        """Return the phases run directly on both databases before phase ``name``."""
        phase = self.phase(name)
        if phase.after is not None:
            return [self.phase(n) for n in phase.after]
        return list(self.phases[: self.phases.index(phase)])

    def matches(self, patterns: tuple[str, ...], table: str, column: str) -> bool:
        """Whether ``table.column`` matches one of ``patterns``."""
        return any(fnmatch.fnmatchcase(f"{table}.{column}", p) for p in patterns)


@dataclasses.dataclass(frozen=True)
class Case:
    """One example and one of its phases (the backend comes from the test's fixture)."""

    example: Example
    phase: str

    def __str__(self) -> str:
        return f"{self.example.name}:{self.phase}"
