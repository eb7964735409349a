"""Peak RSS and wall time of the tools that read a journal back, against a plain session.

One journal is recorded first (``deferred_operations``, ``add_all`` + ``commit()`` every
10,000 objects, as ``replay_bench.py`` records its workload): ``--operations`` inserts of
``_common.Parent`` (default 300,000), or with ``--value-mib M`` a single insert of a
``Blob`` row whose ``data`` column holds M MiB of random bytes. Then each of these runs
in a process of its own, and its peak RSS and wall time are reported:

* ``orm-journal inspect PATH``, output to ``/dev/null``;
* ``orm-journal inspect --json PATH``, output to ``/dev/null``;
* ``orm-journal verify PATH``;
* replay: ``JournalingSession.reconnect_and_commit(PATH)`` into a fresh SQLite file, in a
  process that imports the models (``_common``, and this module for ``Blob``);
* the baseline: a plain ``sqlalchemy.orm.Session`` inserting the same rows into a fresh
  SQLite file (``add_all`` + ``commit()`` per 10,000 objects).

The ``orm-journal`` commands run as ``python -c "from orm_ext.cli import main; ..."``,
what the console script does, with the interpreter running this script: so they use the
same ``journal`` and ``orm_ext`` as it does (the header prints which). Each command runs
under a fresh wrapper process that imports only the standard library and reads
``RUSAGE_CHILDREN`` after waiting for it, so each figure is that command's peak alone (a
child inherits the memory high-water mark of the process it was forked from; the
wrapper's is about 10 MB). A command still running after ``--timeout`` seconds is killed
and reported as such, with its peak so far; ``--memory-limit-gib`` caps each command's
address space so that a runaway one fails with ``MemoryError`` instead of exhausting the
machine. Progress goes to stderr, the table to stdout.

Run: ``python bench/reader_memory_bench.py [--operations 300000] [--timeout 900]``
or ``python bench/reader_memory_bench.py --value-mib 256``
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import CHECKPOINT, Base, Parent, parent_values, record, sqlite_url, write_plain
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import journal
import orm_ext
from orm_ext import JournalingSession

BENCH_DIR = Path(__file__).resolve().parent
PROGRESS_EVERY = 30.0
# How a worker child runs this module: imported under its own name, so that a journal
# names the class ``reader_memory_bench:Blob``, which the replaying process can import.
WORKER = "import reader_memory_bench as bench; bench.main()"
# What the ``orm-journal`` console script runs.
CLI = "from orm_ext.cli import main; raise SystemExit(main())"
# The wrapper around each measured command, run with ``python -S``: standard library only,
# and a fresh one per command, so RUSAGE_CHILDREN after the wait is that command's peak
# alone. It prints "peak KiB, seconds, exit status, timed out" as its last line.
WRAPPER = """\
import resource, subprocess, sys, time
timeout, every, memory, label, errors = sys.argv[1:6]
limit = int(float(memory) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
started = time.monotonic()
deadline = started + float(timeout)
timed_out = False
with open(errors, "wb") as err:
    child = subprocess.Popen(sys.argv[6:], stdout=subprocess.DEVNULL, stderr=err)
    while True:
        try:
            child.wait(timeout=max(0.01, min(float(every), deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - started
            status = {}
            try:
                with open(f"/proc/{child.pid}/status") as lines:
                    status = dict(line.split(":", 1) for line in lines if ":" in line)
            except OSError:
                pass
            rss = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
            hwm = int(status.get("VmHWM", "0 kB").split()[0]) / 1024
            print(f"    {label}: {elapsed:.0f} s, RSS {rss:.0f} MB, peak {hwm:.0f} MB",
                  file=sys.stderr, flush=True)
            if time.monotonic() >= deadline:
                child.kill()
                child.wait()
                timed_out = True
                break
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(peak, seconds, child.returncode, int(timed_out))
"""


class BlobBase(DeclarativeBase):
    """The declarative base of the one-large-value model (apart from ``_common.Base``)."""


class Blob(BlobBase):
    __tablename__ = "blob"
    id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


# -- the journal's contents ----------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """``operations`` inserts of ``Parent``, or with ``value_mib`` one ``Blob`` of that size."""

    operations: int
    value_mib: int | None = None

    @property
    def expected_operations(self) -> int:
        return 1 if self.value_mib is not None else self.operations

    @property
    def metadata(self) -> sa.MetaData:
        return BlobBase.metadata if self.value_mib is not None else Base.metadata

    def arguments(self) -> list[str]:
        """The options that make a worker process build the same dataset."""
        if self.value_mib is not None:
            return ["--value-mib", str(self.value_mib)]
        return ["--operations", str(self.operations)]

    def chunks(self) -> Iterator[list[Any]]:
        """New objects, one checkpoint's worth at a time; nothing keeps a chunk once dropped."""
        if self.value_mib is not None:
            data = os.urandom(self.value_mib * 2**20)
            yield [Blob(data=data)]
            return
        for start in range(0, self.operations, CHECKPOINT):
            stop = min(start + CHECKPOINT, self.operations)
            yield [Parent(**parent_values(i)) for i in range(start, stop)]

    def check(self, engine: sa.Engine, side: str) -> None:
        """Fail loudly unless ``side`` wrote exactly the dataset's rows."""
        with engine.connect() as conn:
            if self.value_mib is not None:
                found = conn.scalars(sa.select(sa.func.length(Blob.data))).all()
                expected = [self.value_mib * 2**20]
            else:
                found = [conn.scalar(sa.select(sa.func.count()).select_from(Parent))]
                expected = [self.operations]
        if list(found) != expected:
            raise SystemExit(f"{side} wrote {found}; expected {expected}")

    def describe(self) -> str:
        if self.value_mib is not None:
            return f"1 insert of a Blob holding one {self.value_mib} MiB bytes value"
        return (
            f"{self.operations:,} inserts of Parent (5 columns), "
            f"a commit every {CHECKPOINT:,} objects"
        )


# -- the worker processes ------------------------------------------------------------------


def fresh_engine(path: Path, metadata: sa.MetaData) -> sa.Engine:
    """An engine on a new SQLite file at ``path`` with the dataset's tables."""
    path.unlink(missing_ok=True)
    engine = sa.create_engine(sqlite_url(path))
    metadata.create_all(engine)
    return engine


def worker(side: str, dataset: Dataset, journal_path: Path, database: Path) -> None:
    """Do one side's work in this process (the wrapper measures it from outside)."""
    engine = fresh_engine(database, dataset.metadata)
    if side == "record":
        operations = record(engine, journal_path, dataset.chunks())
        if operations != dataset.expected_operations:
            raise SystemExit(f"recorded {operations} operations, not {dataset.expected_operations}")
    elif side == "plain":
        write_plain(engine, dataset.chunks())
        dataset.check(engine, side)
    else:
        with JournalingSession(engine) as session:
            result = session.reconnect_and_commit(journal_path)
        if not result.applied or result.operations != dataset.expected_operations:
            raise SystemExit(f"replay applied={result.applied} operations={result.operations}")
        dataset.check(engine, side)
    engine.dispose()


# -- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One command's peak RSS (MB) and wall time; ``problem`` says if it did not finish."""

    tool: str
    peak_mb: float
    seconds: float
    problem: str | None = None


@dataclass(frozen=True)
class Limits:
    """Seconds before a command is killed; GiB of address space each command may use."""

    timeout: float
    memory_gib: float


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(tool: str, argv: Sequence[str], tmp: Path, limits: Limits) -> Measurement:
    """Run ``argv`` under a fresh wrapper process; return its peak RSS and wall time."""
    progress(f"{tool}: running")
    errors = tmp / "stderr.txt"
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            WRAPPER,
            str(limits.timeout),
            str(PROGRESS_EVERY),
            str(limits.memory_gib),
            tool,
            str(errors),
            *argv,
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "0"},
    )
    peak_kib, seconds, status, timed_out = done.stdout.split()
    problem = None
    if int(timed_out):
        problem = f"killed after {float(seconds):.0f} s (--timeout {limits.timeout:g})"
    elif int(status) != 0:
        stderr = errors.read_text(errors="replace").strip().splitlines()
        if any("MemoryError" in line for line in stderr):
            problem = f"MemoryError at the {limits.memory_gib:g} GiB address-space limit"
        else:
            problem = f"exit status {status}"
        progress(f"{tool}: failed: {' | '.join(stderr[-3:])}")
    result = Measurement(tool, int(peak_kib) / 1024, float(seconds), problem)
    outcome = f" ({problem})" if problem else ""
    progress(f"{tool}: peak {result.peak_mb:.1f} MB, {result.seconds:.1f} s{outcome}")
    return result


def worker_command(side: str, dataset: Dataset, path: Path, tmp: Path) -> list[str]:
    """The command that runs ``side`` of the dataset in a worker (its database in ``tmp``)."""
    database = tmp / f"{side}.sqlite"
    options = ["--worker", side, "--journal", str(path), "--database", str(database)]
    return [sys.executable, "-P", "-c", WORKER, *dataset.arguments(), *options]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-c", CLI, *args]


def run_all(dataset: Dataset, tmp: Path, limits: Limits) -> None:
    path = tmp / "bench.journal"
    recorded = measure(
        "record (deferred_operations)", worker_command("record", dataset, path, tmp), tmp, limits
    )
    if recorded.problem is not None:
        raise SystemExit(f"recording the journal failed: {recorded.problem}")
    size = path.stat().st_size
    progress(f"journal: {size:,} bytes")
    commands = [
        ("plain Session add_all + commit", worker_command("plain", dataset, path, tmp)),
        ("orm-journal inspect PATH", cli_command("inspect", str(path))),
        ("orm-journal inspect --json PATH", cli_command("inspect", "--json", str(path))),
        ("orm-journal verify PATH", cli_command("verify", str(path))),
        ("reconnect_and_commit(PATH)", worker_command("replay", dataset, path, tmp)),
    ]
    measured = [measure(tool, argv, tmp, limits) for tool, argv in commands]
    print(
        f"reader_memory_bench: {dataset.describe()}; journal {size / 2**20:,.1f} MB; "
        f"each command in a fresh process, time limit {limits.timeout:g} s, "
        f"address space limit {limits.memory_gib:g} GiB"
    )
    print(f"  journal: {journal.__file__}")
    print(f"  orm_ext: {orm_ext.__file__}")
    print(
        f"  Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__}, "
        f"SQLite {sqlite3.sqlite_version}"
    )
    table([*measured, recorded], baseline=measured[0])


def table(measured: Sequence[Measurement], *, baseline: Measurement) -> None:
    """Print tool, peak RSS, seconds and the ratio of RSS to the plain-session baseline."""
    width = max(len(m.tool) for m in measured)
    print(f"  {'tool':<{width}}  {'peak RSS':>13}  {'seconds':>8}  {'RSS / plain':>11}")
    for m in measured:
        # A command that did not finish used at least this much.
        at_least = ">= " if m.problem else ""
        rss = f"{at_least}{m.peak_mb:.1f} MB"
        ratio = f"{at_least}{m.peak_mb / baseline.peak_mb:.2f}"
        line = f"  {m.tool:<{width}}  {rss:>13}  {m.seconds:>8.1f}  {ratio:>11}"
        print(line + (f"  ({m.problem})" if m.problem else ""))
    print("  (the recording row is for reference: it made the journal the others read)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--operations", type=int, default=300_000, help="inserts recorded (default 300000)"
    )
    parser.add_argument(
        "--value-mib",
        type=int,
        default=None,
        metavar="M",
        help="record instead one row holding a single bytes value of M MiB",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds before a command is killed"
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=16.0,
        help="address-space limit of each command (default 16)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--worker", choices=["record", "plain", "replay"], help=argparse.SUPPRESS)
    parser.add_argument("--journal", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dataset = Dataset(args.operations, args.value_mib)
    if args.worker is not None:
        worker(args.worker, dataset, args.journal, args.database)
        return
    limits = Limits(args.timeout, args.memory_limit_gib)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run_all(dataset, Path(tmp), limits)


if __name__ == "__main__":
    main()
