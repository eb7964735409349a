"""Recording a unit of work against writing it to SQLite with a plain session (issue 3).

Both sides take the same new objects (``--n`` children in families of one parent and ten
children, built before the clock starts) and do ``add_all`` + ``commit()`` once per
checkpoint of about 10,000 objects. The plain side is a ``sqlalchemy.orm.Session``
writing into an empty SQLite file; the recording side is a ``JournalingSession`` inside
``deferred_operations``, where each commit is a journal checkpoint and nothing reaches
the database (its clock includes creating and sealing the journal).

``--rss`` runs the recording of ``--n`` (default 1,000,000) children in a fresh process
that builds each chunk just before adding it and keeps no reference to it after its
checkpoint, and reports that process's peak RSS (a plain session doing the same runs in
another process, as the baseline).

Run: ``python bench/record_bench.py [--n 100000] [--repeat 1] [--no-expire-on-commit]`` or
``--rss``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    Base,
    Workload,
    best,
    check_rows,
    peak_rss_mb,
    record,
    report,
    report_rss,
    run_worker,
    settle,
    sqlite_url,
    stopwatch,
    verdict,
    write_plain,
)
from sqlalchemy.orm import SessionTransaction

from orm_ext.recording import Recorder

TARGET_RATIO = 0.5
TARGET_RSS_MB = 300.0


@contextmanager
def time_spent(owner: Any, name: str, spent: list[float]) -> Iterator[None]:
    """Add the time spent in ``owner.name`` calls to ``spent[0]`` within the block."""
    original = getattr(owner, name)

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, name, timed_call)
    try:
        yield
    finally:
        setattr(owner, name, original)


def timed(workload: Workload, repeat: int, tmp: Path, *, expire_on_commit: bool) -> None:
    plain_engine = sa.create_engine(sqlite_url(tmp / "plain.sqlite"))
    record_engine = sa.create_engine(sqlite_url(tmp / "record.sqlite"))
    Base.metadata.create_all(record_engine)
    plain_times: list[float] = []
    record_times: list[float] = []
    build_times: list[float] = []
    # Time each side spends expiring objects at commits (a plain commit's
    # expire_on_commit; the recorder's own at checkpoints), per run.
    plain_expiry: list[float] = []
    record_expiry: list[float] = []
    operations = 0
    for _ in range(repeat):
        Base.metadata.drop_all(plain_engine)
        Base.metadata.create_all(plain_engine)
        with stopwatch(build_times):
            chunks = list(workload.object_chunks())
        settle()
        spent = [0.0]
        with (
            time_spent(SessionTransaction, "_remove_snapshot", spent),
            stopwatch(plain_times),
        ):
            write_plain(plain_engine, chunks, expire_on_commit=expire_on_commit)
        plain_expiry.append(spent[0])
        del chunks
        check_rows(plain_engine, workload, "the plain session")

        chunks = list(workload.object_chunks())
        settle()
        spent = [0.0]
        with time_spent(Recorder, "_expire_checkpointed", spent), stopwatch(record_times):
            operations = record(
                record_engine, tmp / "bench.journal", chunks, expire_on_commit=expire_on_commit
            )
        record_expiry.append(spent[0])
        del chunks
        if operations != workload.objects:
            raise SystemExit(f"recorded {operations} operations, expected {workload.objects}")
        if sum(count_rows_any(record_engine)) != 0:
            raise SystemExit("the recording session wrote to its database")
    ratio = best(record_times) / best(plain_times)
    # The expiry of the run that was best, for each side.
    plain_spent = plain_expiry[plain_times.index(best(plain_times))]
    record_spent = record_expiry[record_times.index(best(record_times))]
    sessions = "" if expire_on_commit else ", both sessions with expire_on_commit=False"
    print(f"record_bench: {workload.describe()}, SQLite file, best of {repeat}{sessions}")
    report(
        [
            ("building the objects", f"{best(build_times):7.3f} s  (not in either figure)"),
            (
                "plain Session add_all + commit",
                f"{best(plain_times):7.3f} s  "
                f"({workload.objects / best(plain_times):,.0f} objects/s)",
            ),
            (
                "deferred_operations recording",
                f"{best(record_times):7.3f} s  "
                f"({workload.objects / best(record_times):,.0f} objects/s)",
            ),
            (
                "ratio recording / plain",
                f"{ratio:.2f}  ({verdict(ratio, TARGET_RATIO, at_most=True)})",
            ),
            (
                "  of which expiring at commits",
                f"plain {plain_spent:.3f} s, recording {record_spent:.3f} s (SQLAlchemy's "
                "InstanceState._expire, as expire_on_commit asks)",
            ),
            (
                "  ratio without that expiry",
                f"{(best(record_times) - record_spent) / (best(plain_times) - plain_spent):.2f}",
            ),
        ]
    )


def count_rows_any(engine: sa.Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            int(conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        )


def rss_worker(side: str, workload: Workload, tmp: Path) -> None:
    """Record (or write plainly) chunk by chunk, keeping nothing; print peak RSS in MB."""
    engine = sa.create_engine(sqlite_url(tmp / f"{side}.sqlite"))
    Base.metadata.create_all(engine)
    if side == "plain":
        write_plain(engine, workload.object_chunks())
    else:
        record(engine, tmp / "rss.journal", workload.object_chunks())
    print(f"{peak_rss_mb():.1f}")


def rss(workload: Workload, tmp: Path) -> None:
    script = str(Path(__file__).resolve())
    common = ["--n", str(workload.parents * workload.children), "--dir", str(tmp)]
    idle = float(run_worker(script, ["--rss-worker", "idle", *common]))
    plain = float(run_worker(script, ["--rss-worker", "plain", *common]))
    recording = float(run_worker(script, ["--rss-worker", "record", *common]))
    print(f"record_bench --rss: {workload.describe()}, peak RSS of a fresh process each")
    report_rss(
        idle,
        plain,
        recording,
        label="deferred_operations recording",
        ratio="ratio recording / plain",
        target=TARGET_RSS_MB,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="children, ten per parent (default 100000; 1000000 with --rss)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--rss", action="store_true", help="report peak RSS instead of time")
    parser.add_argument(
        "--no-expire-on-commit",
        action="store_true",
        help="both sessions with expire_on_commit=False: commits expire nothing",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--rss-worker", choices=["idle", "plain", "record"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n if args.n is not None else 1_000_000 if args.rss else 100_000
    workload = Workload.for_children(n)
    if args.rss_worker is not None:
        if args.rss_worker == "idle":
            print(f"{peak_rss_mb():.1f}")
        else:
            rss_worker(args.rss_worker, workload, args.dir)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.rss:
            rss(workload, Path(tmp))
        else:
            timed(workload, args.repeat, Path(tmp), expire_on_commit=not args.no_expire_on_commit)


if __name__ == "__main__":
    main()
