"""Replaying a journal against a plain session and Core ``executemany`` (issue 4).

The journal is the one ``record_bench.py`` records (``--n`` children, ten per parent, a
commit checkpoint about every 10,000 objects), recorded before any clock starts. Each
side then writes the same rows into empty tables of ``--url`` (default: a SQLite file):

* replay: ``JournalingSession.reconnect_and_commit(journal)``: verify, schema check,
  ledger claim and every operation in one transaction. The ledger table is created
  beforehand by replaying an empty journal, so the one-off migration is not timed;
* plain: a ``sqlalchemy.orm.Session`` doing ``add_all`` + ``commit()`` per checkpoint
  chunk of the same objects (built before the clock starts), what the recording worker
  would have done with a database at hand;
* Core: ``executemany`` inserts in one transaction, the floor: per chunk, the parents
  with ``RETURNING id`` (their keys are assigned by the database) and then the children.

``--rss`` replays a journal of ``--n`` (default 1,000,000) children in a fresh process
and reports its peak RSS, next to a fresh process writing the same objects with a plain
session.

Run: ``python bench/replay_bench.py [--n 100000] [--url URL] [--repeat 1]`` or ``--rss``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    Base,
    Child,
    Parent,
    Workload,
    best,
    check_rows,
    child_values,
    make_engine,
    parent_values,
    peak_rss_mb,
    record,
    report,
    report_rss,
    reset_tables,
    run_worker,
    settle,
    sqlite_url,
    stopwatch,
    verdict,
    write_plain,
)

from orm_ext import JournalingSession

TARGET_PLAIN = 0.35
TARGET_CORE = 3.0
TARGET_RSS_MB = 500.0
# Peak RSS of a replay against the plain session writing the same rows (issue 18).
TARGET_RSS_RATIO = 1.5

Rows = list[tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]]


def record_journal(workload: Workload, path: Path, tmp: Path) -> None:
    """Record the workload's journal (untimed) with a session on a scratch SQLite file."""
    engine = sa.create_engine(sqlite_url(tmp / "recording.sqlite"))
    Base.metadata.create_all(engine)
    operations = record(engine, path, workload.object_chunks())
    engine.dispose()
    if operations != workload.objects:
        raise SystemExit(f"recorded {operations} operations, expected {workload.objects}")


def create_ledger(engine: sa.Engine, tmp: Path) -> None:
    """Replay an empty journal, so the ledger's one-off migration is not in any figure."""
    path = tmp / "empty.journal"
    with JournalingSession(engine) as session:
        with session.deferred_operations(path, overwrite=True):
            pass
        session.reconnect_and_commit(path)


def replay(engine: sa.Engine, path: Path, workload: Workload) -> None:
    with JournalingSession(engine) as session:
        result = session.reconnect_and_commit(path)
    if not result.applied or result.operations != workload.objects:
        raise SystemExit(f"replay applied={result.applied} operations={result.operations}")


def core_rows(workload: Workload) -> Rows:
    """Per chunk: the parents' rows and, per parent, its children's rows (no foreign key)."""
    return [
        (
            [parent_values(i) for i in parents],
            [[child_values(i, j) for j in range(workload.children)] for i in parents],
        )
        for parents in workload.chunk_ranges()
    ]


def write_core(engine: sa.Engine, rows: Rows) -> None:
    parent_table = Base.metadata.tables[Parent.__tablename__]
    child_table = Base.metadata.tables[Child.__tablename__]
    insert_parents = sa.insert(parent_table).returning(
        parent_table.c.id, sort_by_parameter_order=True
    )
    with engine.begin() as conn:
        for parent_rows, families in rows:
            ids = conn.execute(insert_parents, parent_rows).scalars().all()
            children = []
            for parent_id, family in zip(ids, families, strict=True):
                for row in family:
                    row["parent_id"] = parent_id
                children.extend(family)
            conn.execute(sa.insert(child_table), children)


def timed(workload: Workload, url: str | None, repeat: int, tmp: Path) -> None:
    engine = make_engine(url or sqlite_url(tmp / "target.sqlite"))
    create_ledger(engine, tmp)
    times: dict[str, list[float]] = {"replay": [], "plain": [], "core": []}
    for attempt in range(repeat):
        journal = tmp / f"bench-{attempt}.journal"
        record_journal(workload, journal, tmp)

        reset_tables(engine)
        rows = core_rows(workload)
        settle()
        with stopwatch(times["core"]):
            write_core(engine, rows)
        del rows
        check_rows(engine, workload, "Core executemany")

        reset_tables(engine)
        chunks = list(workload.object_chunks())
        settle()
        with stopwatch(times["plain"]):
            write_plain(engine, chunks)
        del chunks
        check_rows(engine, workload, "the plain session")

        reset_tables(engine)
        settle()
        with stopwatch(times["replay"]):
            replay(engine, journal, workload)
        check_rows(engine, workload, "replay")
    replay_time, plain_time, core_time = (best(times[k]) for k in ("replay", "plain", "core"))
    to_plain, to_core = replay_time / plain_time, replay_time / core_time
    print(
        f"replay_bench: {workload.describe()}, {engine.url.get_backend_name()} "
        f"({engine.url.render_as_string(hide_password=True)}), best of {repeat}"
    )
    report(
        [
            (
                "Core executemany (floor)",
                f"{core_time:7.3f} s  ({workload.objects / core_time:,.0f} rows/s)",
            ),
            (
                "plain Session add_all + commit",
                f"{plain_time:7.3f} s  ({workload.objects / plain_time:,.0f} rows/s)",
            ),
            (
                "reconnect_and_commit",
                f"{replay_time:7.3f} s  ({workload.objects / replay_time:,.0f} rows/s)",
            ),
            (
                "ratio replay / plain",
                f"{to_plain:.2f}  ({verdict(to_plain, TARGET_PLAIN, at_most=True)})",
            ),
            (
                "ratio replay / Core",
                f"{to_core:.2f}  ({verdict(to_core, TARGET_CORE, at_most=True)})",
            ),
        ]
    )
    engine.dispose()


def rss_worker(side: str, workload: Workload, url: str, journal: Path, tmp: Path) -> None:
    """Run one side in this fresh process; print its peak RSS in MB."""
    if side == "record":
        record_journal(workload, journal, tmp)
        print(f"{peak_rss_mb():.1f}")
        return
    if side == "idle":
        print(f"{peak_rss_mb():.1f}")
        return
    engine = make_engine(url)
    reset_tables(engine)
    if side == "plain":
        write_plain(engine, workload.object_chunks())
    else:
        create_ledger(engine, tmp)
        replay(engine, journal, workload)
    check_rows(engine, workload, side)
    print(f"{peak_rss_mb():.1f}")


def rss(workload: Workload, url: str | None, tmp: Path) -> None:
    script = str(Path(__file__).resolve())
    target = url or sqlite_url(tmp / "rss-target.sqlite")
    common = ["--n", str(workload.parents * workload.children), "--dir", str(tmp), "--url", target]
    run_worker(script, ["--rss-worker", "record", *common])
    idle = float(run_worker(script, ["--rss-worker", "idle", *common]))
    plain = float(run_worker(script, ["--rss-worker", "plain", *common]))
    replayed = float(run_worker(script, ["--rss-worker", "replay", *common]))
    print(
        f"replay_bench --rss: {workload.describe()}, "
        f"{sa.make_url(target).get_backend_name()}, peak RSS of a fresh process each"
    )
    report_rss(
        idle,
        plain,
        replayed,
        label="reconnect_and_commit",
        ratio="ratio replay / plain",
        target=TARGET_RSS_MB,
        ratio_target=TARGET_RSS_RATIO,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="children, ten per parent (default 100000; 1000000 with --rss)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="target database (default: a SQLite file in a temporary directory)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--rss", action="store_true", help="report peak RSS instead of time")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument(
        "--rss-worker", choices=["record", "idle", "plain", "replay"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    n = args.n if args.n is not None else 1_000_000 if args.rss else 100_000
    workload = Workload.for_children(n)
    if args.rss_worker is not None:
        rss_worker(args.rss_worker, workload, args.url, args.dir / "rss.journal", args.dir)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.rss:
            rss(workload, args.url, Path(tmp))
        else:
            timed(workload, args.url, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
