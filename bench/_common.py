"""What the benchmarks share: the models, the workload, databases, timing and peak RSS.

The models live here rather than in ``tests/`` so the benchmarks depend only on the
installed packages. Every script imports this module as ``_common`` (``python
bench/<name>.py`` puts ``bench/`` on ``sys.path``), so journals name the classes
``_common:Parent`` and ``_common:Child`` in the recording and the replaying process alike.
"""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from orm_ext import JournalingSession

# pysqlite stores Decimal as float; the benchmarks know, and the warning would only add noise.
warnings.filterwarnings("ignore", message=r"Dialect sqlite\+pysqlite does \*not\* support Decimal")

CHILDREN_PER_PARENT = 10
CHECKPOINT = 10_000
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Base(DeclarativeBase):
    """The declarative base of the benchmark models."""


class Parent(Base):
    __tablename__ = "parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    budget: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(12, 2))
    active: Mapped[bool]
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("parent.id"))
    name: Mapped[str] = mapped_column(sa.String(50))
    position: Mapped[int]
    weight: Mapped[float]
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    parent: Mapped[Parent] = relationship(back_populates="children")


# -- the workload --------------------------------------------------------------------------


def parent_values(i: int) -> dict[str, Any]:
    """Column values of parent number ``i``."""
    return {
        "name": f"parent-{i:07d}",
        "created_at": EPOCH + dt.timedelta(seconds=i),
        "budget": decimal.Decimal(i % 100_000) / 100,
        "active": i % 3 != 0,
    }


def child_values(i: int, j: int) -> dict[str, Any]:
    """Column values of child ``j`` of parent number ``i`` (without its foreign key)."""
    return {
        "name": f"child-{i:07d}-{j:02d}",
        "position": j,
        "weight": i + j / 16,
        "created_at": EPOCH + dt.timedelta(seconds=i, milliseconds=j),
    }


@dataclass(frozen=True)
class Workload:
    """``parents`` families of one parent and ``children`` children, in checkpoint chunks."""

    parents: int
    children: int = CHILDREN_PER_PARENT
    checkpoint: int = CHECKPOINT

    @classmethod
    def for_children(cls, n: int) -> Workload:
        """The workload with ``n`` children in families of :data:`CHILDREN_PER_PARENT`."""
        return cls(parents=max(1, n // CHILDREN_PER_PARENT))

    @property
    def objects(self) -> int:
        return self.parents * (1 + self.children)

    @property
    def families_per_chunk(self) -> int:
        # Whole families only, so no object refers across a checkpoint.
        return max(1, self.checkpoint // (1 + self.children))

    def chunk_ranges(self) -> Iterator[range]:
        """The parent numbers of each checkpoint chunk, in order."""
        step = self.families_per_chunk
        for start in range(0, self.parents, step):
            yield range(start, min(start + step, self.parents))

    def objects_of(self, parents: range) -> list[Parent]:
        """New ORM objects for ``parents``: each parent with its children attached."""
        built = []
        for i in parents:
            parent = Parent(**parent_values(i))
            parent.children = [Child(**child_values(i, j)) for j in range(self.children)]
            built.append(parent)
        return built

    def object_chunks(self) -> Iterator[list[Parent]]:
        """Build the objects chunk by chunk; nothing keeps a chunk once the caller drops it."""
        for parents in self.chunk_ranges():
            yield self.objects_of(parents)

    def describe(self) -> str:
        return (
            f"{self.objects:,} objects ({self.parents:,} parents x {self.children} children), "
            f"a checkpoint every {self.families_per_chunk * (1 + self.children):,} objects"
        )


def write_plain(
    engine: sa.Engine, chunks: Iterable[list[Parent]], *, expire_on_commit: bool = True
) -> None:
    """The baseline: a plain ``Session`` doing ``add_all`` + ``commit()`` per chunk."""
    with Session(engine, expire_on_commit=expire_on_commit) as session:
        for chunk in chunks:
            session.add_all(chunk)
            session.commit()
            del chunk  # with a generator of chunks, nothing here keeps one past its commit


def record(
    engine: sa.Engine, path: Path, chunks: Iterable[list[Parent]], *, expire_on_commit: bool = True
) -> int:
    """Record ``chunks`` (``add_all`` + ``commit()`` each) into a new journal at ``path``.

    Returns the number of operations recorded.
    """
    with JournalingSession(engine, expire_on_commit=expire_on_commit) as session:
        with session.deferred_operations(path, overwrite=True) as ops:
            for chunk in chunks:
                session.add_all(chunk)
                session.commit()
                del chunk
        return ops.operations


# -- databases -----------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> sa.Engine:
    """An engine on ``url``; a PostgreSQL database that does not exist yet is created."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        _create_postgresql_database(parsed)
    return sa.create_engine(parsed)


def _create_postgresql_database(url: sa.URL) -> None:
    name = url.database
    if not name:
        raise SystemExit(f"the URL {url!r} names no database")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


def reset_tables(engine: sa.Engine) -> None:
    """Drop and recreate the benchmark tables, so each side starts from empty tables."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)


def count_rows(engine: sa.Engine) -> tuple[int, int, int]:
    """Parents, children, and children whose foreign key names a parent of their name."""
    with engine.connect() as conn:
        parents = conn.scalar(sa.select(sa.func.count()).select_from(Parent))
        children = conn.scalar(sa.select(sa.func.count()).select_from(Child))
        linked = conn.scalar(
            sa.select(sa.func.count())
            .select_from(Child)
            .join(Parent, Child.parent_id == Parent.id)
            .where(sa.func.substr(Child.name, 7, 7) == sa.func.substr(Parent.name, 8, 7))
        )
    return int(parents or 0), int(children or 0), int(linked or 0)


def check_rows(engine: sa.Engine, workload: Workload, side: str) -> None:
    """Fail loudly unless ``side`` wrote exactly the workload's rows, correctly linked."""
    expected = (workload.parents, workload.parents * workload.children)
    parents, children, linked = count_rows(engine)
    if (parents, children, linked) != (*expected, expected[1]):
        raise SystemExit(
            f"{side} wrote {parents} parents and {children} children ({linked} correctly "
            f"linked); expected {expected[0]} and {expected[1]}"
        )


# -- measuring -----------------------------------------------------------------------------


@contextmanager
def stopwatch(into: list[float]) -> Iterator[None]:
    """Append the seconds the block took to ``into``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into.append(time.perf_counter() - started)


def settle() -> None:
    """Collect garbage left by the previous side so it is not billed to the next one."""
    gc.collect()


def best(times: Sequence[float]) -> float:
    return min(times)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss`` is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def run_worker(script: str, args: Sequence[str]) -> str:
    """Run ``script`` in a fresh interpreter with ``args``; return its last output line."""
    done = subprocess.run(
        [sys.executable, script, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"{script} {' '.join(args)} printed nothing:\n{done.stderr}")
    return lines[-1]


def report(rows: Sequence[tuple[str, str]]) -> None:
    """Print ``label: value`` lines with the values aligned."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def report_rss(
    idle: float,
    plain: float,
    ours: float,
    *,
    label: str,
    ratio: str,
    target: float,
    ratio_target: float | None = None,
) -> None:
    """Print the peak RSS of the idle, plain and orm-journal sides against ``target`` MB.

    With ``ratio_target``, the ratio to the plain side is also held against it.
    """
    to_plain = ours / plain
    report(
        [
            ("after imports only", f"{idle:7.1f} MB"),
            ("plain Session add_all + commit", f"{plain:7.1f} MB"),
            (label, f"{ours:7.1f} MB  ({verdict(ours, target, at_most=True)})"),
            (
                ratio,
                f"{to_plain:.2f}"
                if ratio_target is None
                else f"{to_plain:.2f}  ({verdict(to_plain, ratio_target, at_most=True)})",
            ),
        ]
    )


def verdict(value: float, target: float, *, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return f"target {sign} {target:g}: {'met' if met else 'MISSED'}"
