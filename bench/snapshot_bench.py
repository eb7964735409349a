"""Offline reads: answering from a query snapshot vs querying the database (issue 19).

On the database of ``--url`` (a local SQLite file by default; run it again with a
PostgreSQL URL), with 1-row and 500-row ``select(Parent)`` statements:

* ``first answer``: each of ``--n`` distinct statements (one per bound value) answered
  once, in a fresh process: from a snapshot whose engine is unreachable, and from the
  database by a plain session (connected before the clock starts, so the connection is
  not billed). Every answer is a first answer of its statement; the plain session runs
  each statement once, as the snapshot answers it once. Target: the snapshot no slower.
  Opening the snapshot (verifying the whole file) is timed apart, once per process.
* ``later answers``: the same statement again and again after its first answer from the
  snapshot, against the in-memory memo's hits (a ``reusing_query_results()`` block with
  no snapshot). Target: >= 0.9x the memo hit's rate.
* ``recording``: ``--n`` distinct statements, each a miss, inside a memo block with and
  without ``snapshot=``: what saving the rows adds to a miss. Writing the file when the
  block exits is timed apart, per statement. Target: <= 1.2x the memo's miss.
* the snapshot file's size per 1,000 rows.

Every figure is the best of ``--repeat`` runs (fresh processes for the first answers);
ratios are against a plain ``Session`` measured in the same run.

Run: ``python bench/snapshot_bench.py [--url URL] [--n 200] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    Parent,
    best,
    make_engine,
    parent_values,
    report,
    reset_tables,
    run_worker,
    settle,
    verdict,
)
from sqlalchemy.orm import Session, configure_mappers

from orm_ext import JournalingSession

ROWS = 1_000
SIZES = (1, 500)
FIRST_TARGET = 1.0
LATER_TARGET = 0.9
RECORD_TARGET = 1.2


def statement(size: int, start: int) -> sa.Select[Any]:
    """``size`` rows from the parent with id ``start`` on: one statement per ``start``."""
    return sa.select(Parent).where(Parent.id >= start, Parent.id < start + size).order_by(Parent.id)


def starts(size: int, n: int) -> list[int]:
    return [1 + (i % (ROWS - size + 1)) for i in range(n)]


def fill(engine: sa.Engine) -> None:
    reset_tables(engine)
    with Session(engine) as session:
        session.add_all([Parent(id=i, **parent_values(i)) for i in range(1, ROWS + 1)])
        session.commit()


def unreachable(url: str, directory: Path) -> str:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{directory / 'no-such-directory' / 'db.sqlite'}"
    return parsed.set(port=1).render_as_string(hide_password=False)


# -- the fresh-process side -------------------------------------------------------------------


def worker(side: str, url: str, snapshot: str, size: int, n: int) -> None:
    """Answer each distinct statement once; print the seconds per statement as JSON."""
    engine = sa.create_engine(url)
    configure_mappers()
    statements = [statement(size, s) for s in starts(size, n)]
    with JournalingSession(engine) as session:
        opened = 0.0
        if side in ("plain", "hook"):
            session.connection()
            if side == "hook":
                # The floor of any answer given on do_orm_execute (the memo's hook): a
                # listener that answers nothing, so each statement runs as plainly.
                sa.event.listen(session, "do_orm_execute", lambda _state: None)
        else:
            started = time.perf_counter()
            block = session.reusing_query_results(snapshot=snapshot)
            memo = block.__enter__()
            opened = time.perf_counter() - started
        started = time.perf_counter()
        for each in statements:
            assert len(session.scalars(each).all()) == size
        spent = time.perf_counter() - started
        if side == "snapshot":
            assert memo.snapshot_hits == n
            assert memo.misses == 0
            block.__exit__(None, None, None)
    print(json.dumps({"per_statement": spent / n, "open": opened}))


def fresh(side: str, url: str, snapshot: Path, size: int, n: int, repeat: int) -> dict[str, float]:
    runs = [
        json.loads(run_worker(__file__, ["--worker", side, url, str(snapshot), str(size), str(n)]))
        for _ in range(repeat)
    ]
    return {k: min(r[k] for r in runs) for k in runs[0]}


# -- the same-process sides -----------------------------------------------------------------


def take_snapshot(engine: sa.Engine, path: Path, size: int, n: int) -> float:
    """Save every distinct statement in a snapshot; return the seconds the save took."""
    path.unlink(missing_ok=True)
    with JournalingSession(engine) as session:
        block = session.reusing_query_results(snapshot=path)
        block.__enter__()
        for start in starts(size, n):
            session.scalars(statement(size, start)).all()
        started = time.perf_counter()
        block.__exit__(None, None, None)
        return time.perf_counter() - started


def later(engine: sa.Engine, path: Path | None, size: int, n: int) -> Callable[[], float]:
    """Time ``n`` answers of one statement after its first answer, which is not timed: memo
    hits, in a block with no snapshot or (offline) with one."""

    def run() -> float:
        bind = (
            engine if path is None else sa.create_engine(unreachable(str(engine.url), path.parent))
        )
        with (
            JournalingSession(bind) as session,
            session.reusing_query_results(snapshot=path) as memo,
        ):
            session.scalars(statement(size, 1)).all()
            started = time.perf_counter()
            for _ in range(n):
                session.scalars(statement(size, 1)).all()
            spent = time.perf_counter() - started
            assert memo.hits == n
        return spent

    return run


def misses(engine: sa.Engine, path: Path | None, size: int, n: int) -> Callable[[], float]:
    """Time ``n`` distinct statements, each a miss, in a block with or without a snapshot;
    writing the snapshot when the block exits is not timed."""

    def run() -> float:
        if path is not None:
            path.unlink(missing_ok=True)
        with JournalingSession(engine) as session:
            block = session.reusing_query_results(snapshot=path)
            memo = block.__enter__()
            started = time.perf_counter()
            for start in starts(size, n):
                session.scalars(statement(size, start)).all()
            spent = time.perf_counter() - started
            block.__exit__(None, None, None)
            assert memo.misses == n
        return spent

    return run


def alternate(repeat: int, *sides: Callable[[], float]) -> list[float]:
    """Run the sides in turn ``repeat`` times; return each side's best time."""
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(repeat):
        for side, into in zip(sides, times, strict=True):
            settle()
            into.append(side())
    return [best(t) for t in times]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        side, url, snapshot, size, n = argv[1:]
        worker(side, url, snapshot, int(size), int(n))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="database URL (default: a SQLite file)")
    parser.add_argument("--n", type=int, default=200, help="statements per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per side; the best counts")
    parser.add_argument("--dir", default=None, help="directory for the temporary files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        directory = Path(scratch)
        url = args.url or f"sqlite:///{directory / 'bench.sqlite'}"
        engine = make_engine(url)
        fill(engine)
        print(
            f"snapshot_bench on {engine.dialect.name}: {args.n} statements per run, "
            f"best of {args.repeat}, times per statement"
        )
        verdicts = []
        for size in SIZES:
            label = f"{size} row{'s' if size > 1 else ''}"
            path = directory / f"bench-{size}.snapshot"
            save = take_snapshot(engine, path, size, args.n)
            file_size = path.stat().st_size
            plain = fresh("plain", url, path, size, args.n, args.repeat)
            hook = fresh("hook", url, path, size, args.n, args.repeat)
            floor = hook["per_statement"] / plain["per_statement"]
            offline = fresh(
                "snapshot", unreachable(url, directory), path, size, args.n, args.repeat
            )
            first = offline["per_statement"] / plain["per_statement"]

            hit_memo, hit_snap = (
                t / args.n
                for t in alternate(
                    args.repeat,
                    later(engine, None, size, args.n),
                    later(engine, path, size, args.n),
                )
            )
            rate = hit_memo / hit_snap
            miss, saving = (
                t / args.n
                for t in alternate(
                    args.repeat,
                    misses(engine, None, size, args.n),
                    misses(engine, directory / "recorded.snapshot", size, args.n),
                )
            )
            recording = saving / miss

            us = 1e6
            report(
                [
                    (
                        f"{label}: plain session, first execution",
                        f"{plain['per_statement'] * us:9.1f} us",
                    ),
                    (
                        f"{label}: bound: a do_orm_execute listener that answers nothing",
                        f"{hook['per_statement'] * us:9.1f} us  {floor:.3f}x the plain session",
                    ),
                    (
                        f"{label}: first answer from the snapshot (offline)",
                        f"{offline['per_statement'] * us:9.1f} us  {first:.3f}x the plain session "
                        f"({verdict(first, FIRST_TARGET, at_most=True)})",
                    ),
                    (
                        f"{label}: opening the snapshot ({args.n} entries)",
                        f"{offline['open'] * 1e3:9.1f} ms once per process",
                    ),
                    (f"{label}: memo hit", f"{hit_memo * us:9.1f} us"),
                    (
                        f"{label}: later answers (memo hit after the snapshot)",
                        f"{hit_snap * us:9.1f} us  {rate:.3f}x the memo hit's rate "
                        f"({verdict(rate, LATER_TARGET, at_most=False)})",
                    ),
                    (f"{label}: memo miss", f"{miss * us:9.1f} us"),
                    (
                        f"{label}: memo miss saved to the snapshot",
                        f"{saving * us:9.1f} us  {recording:.3f}x the miss "
                        f"({verdict(recording, RECORD_TARGET, at_most=True)})",
                    ),
                    (
                        f"{label}: writing the snapshot at block exit",
                        f"{save / args.n * us:9.1f} us per statement",
                    ),
                    (
                        f"{label}: snapshot file size",
                        f"{file_size / (args.n * size) * 1000 / 1024:9.1f} KiB per 1,000 rows",
                    ),
                ]
            )
            verdicts.append(
                f"{label}: first {first:.2f}x ({'met' if first <= FIRST_TARGET else 'MISSED'}), "
                f"later {rate:.2f}x ({'met' if rate >= LATER_TARGET else 'MISSED'}), "
                f"recording {recording:.2f}x ({'met' if recording <= RECORD_TARGET else 'MISSED'})"
            )
        print("  " + "; ".join(verdicts))
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1:])
