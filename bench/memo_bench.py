"""Repeated queries: plain session vs the query memo vs a merging result cache (issue 5).

The same 1-row and 500-row ``select(Parent)`` run ``--n`` times on

* ``plain``: a plain ``Session``; every execution goes to the database (the baseline);
* ``memo``: a ``JournalingSession`` inside ``reusing_query_results()``; every execution
  after the first is a hit, served from the stored rows and instances as they are;
* ``merging cache``: a plain ``Session`` with the result cache of SQLAlchemy's
  ``dogpile_caching`` example, kept in a dict: it stores the frozen result and merges its
  rows back into the session (``merge_frozen_result(load=False)``) on every hit.

The miss overhead runs ``--n`` distinct 1-row queries in a memo (all misses) and on a
plain session. The same queries also run on a plain session whose only ``do_orm_execute``
listener returns ``orm_context.invoke_statement()``: the least any cache built on that
hook pays on a miss (SQLAlchemy prepares the statement again as soon as a listener exists,
and ``invoke_statement()`` enters the execution a second time), before keying or storing
anything. For a hit, the 500-row query also runs on a plain session whose listener keys the
statement and then answers with the rows of its first execution, whatever the key: the
least a hit of any memo on that hook costs, since the statement is built and the session
entered as on the plain session. Sides alternate; every figure is the best of ``--repeat``
runs. The memo's hits also run inside ``deferred_operations`` with another table written,
where each query is first checked against the block's writes (SPEC §3.11). Targets: a
500-row hit >= 50x faster than the plain session, a 1-row hit >= 2x, a miss <= 10% slower.

Run: ``python bench/memo_bench.py [--url URL] [--n 300] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    Child,
    Parent,
    best,
    make_engine,
    parent_values,
    report,
    reset_tables,
    settle,
    stopwatch,
    verdict,
)
from sqlalchemy.orm import ORMExecuteState, Session, loading

from orm_ext import JournalingSession

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

ROWS = 1_000
MANY = 500
HIT_TARGETS = {1: 2.0, MANY: 50.0}
MISS_TARGET = 1.10
Query = Callable[[Session], None]
ONE_ROW = sa.select(Parent).where(Parent.id == 7)
MANY_ROWS = sa.select(Parent).where(Parent.id <= MANY).order_by(Parent.id)


def one_row(session: Session, key: int = 7) -> None:
    assert len(session.scalars(sa.select(Parent).where(Parent.id == key)).all()) == 1


def many_rows_statement() -> sa.Select[Parent]:
    return sa.select(Parent).where(Parent.id <= MANY).order_by(Parent.id)


def many_rows(session: Session) -> None:
    assert len(session.scalars(many_rows_statement()).all()) == MANY


def one_row_reused(session: Session) -> None:
    assert len(session.scalars(ONE_ROW).all()) == 1


def many_rows_reused(session: Session) -> None:
    assert len(session.scalars(MANY_ROWS).all()) == MANY


def distinct_rows(n: int) -> Query:
    def run(session: Session) -> None:
        for key in range(1, n + 1):
            one_row(session, key)

    return run


def add_replaying(session: Session) -> None:
    """Give ``session`` a ``do_orm_execute`` listener that answers a SELECT with the rows of
    the first one of the same structure, whatever its parameters.

    Not a cache (it ignores parameter values): the least a hit of any memo built on that
    hook costs, since every memo must key the statement by its structure at least.
    """
    frozen: dict[Hashable, Any] = {}

    def execute(orm_context: ORMExecuteState) -> Any:
        if not orm_context.is_select:
            return None
        statement: Any = orm_context.statement
        structure = statement._generate_cache_key().key
        if structure not in frozen:
            frozen[structure] = orm_context.invoke_statement().freeze()
        return frozen[structure]()

    sa.event.listen(session, "do_orm_execute", execute, retval=True)


def add_pass_through(session: Session) -> None:
    """Give ``session`` a ``do_orm_execute`` listener that only runs the statement itself."""

    def execute(orm_context: ORMExecuteState) -> Any:
        return orm_context.invoke_statement()

    sa.event.listen(session, "do_orm_execute", execute, retval=True)


def add_merging_cache(session: Session) -> None:
    """Give ``session`` the result cache of SQLAlchemy's dogpile_caching example, in a dict."""
    frozen_results: dict[Hashable, Any] = {}
    sql_strings: dict[Any, str] = {}

    def execute(orm_context: ORMExecuteState) -> Any:
        if not orm_context.is_select:
            return None
        statement: Any = orm_context.statement
        key = statement._generate_cache_key().to_offline_string(
            sql_strings, statement, orm_context.parameters or {}
        )
        if key not in frozen_results:
            frozen_results[key] = orm_context.invoke_statement().freeze()
        merged = loading.merge_frozen_result(session, statement, frozen_results[key], load=False)
        return merged()

    sa.event.listen(session, "do_orm_execute", execute, retval=True)


@contextmanager
def open_side(engine: sa.Engine, side: str) -> Iterator[Session]:
    if side == "memo":
        with JournalingSession(engine) as session, session.reusing_query_results():
            yield session
    elif side == "memo in a block":
        # Inside deferred_operations, with another table written: each query is first
        # checked against what the block wrote (SPEC §3.11), then answered by the memo.
        with (
            tempfile.TemporaryDirectory() as tmp,
            JournalingSession(engine) as session,
            session.deferred_operations(Path(tmp) / "ops.journal"),
            session.reusing_query_results(),
        ):
            session.add(Child(parent_id=1, name="c", position=0, weight=0.0, created_at=NOW))
            session.flush()
            yield session
    else:
        with Session(engine) as session:
            if side == "merging cache":
                add_merging_cache(session)
            elif side == "pass-through listener":
                add_pass_through(session)
            elif side == "replaying listener":
                add_replaying(session)
            yield session


def measure(engine: sa.Engine, side: str, query: Query, n: int, *, warm: bool) -> float:
    """Seconds per execution of ``query``, run ``n`` times (after one untimed run if ``warm``)."""
    times: list[float] = []
    with open_side(engine, side) as session:
        # Both sides start in an open transaction with the mappers and connection ready.
        session.scalars(sa.select(Parent).where(Parent.id == ROWS)).all()
        if warm:
            query(session)
        settle()
        with stopwatch(times):
            for _ in range(n):
                query(session)
    return times[0] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=None, help="database URL (default: SQLite in a tmp dir)")
    parser.add_argument("--n", type=int, default=300, help="executions per run (default 300)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per side; the best counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.url or f"sqlite:///{Path(tmp) / 'memo_bench.sqlite'}")
        try:
            reset_tables(engine)
            with Session(engine) as session:
                session.add_all(Parent(id=i, **parent_values(i)) for i in range(1, ROWS + 1))
                session.commit()
            rows, figures = run(engine, args.n, args.repeat)
        finally:
            engine.dispose()
    print(
        f"memo_bench on {engine.dialect.name}: {args.n} executions per run, "
        f"best of {args.repeat}, times per execution"
    )
    report(rows)
    print("  " + "; ".join(figures))


def run(engine: sa.Engine, n: int, repeat: int) -> tuple[list[tuple[str, str]], list[str]]:
    sides = ("plain", "memo", "merging cache", "memo in a block")
    # Built anew for each execution, as code usually does, and one statement object reused:
    # that spares SQLAlchemy (and the memo) computing the statement's cache key again.
    queries: dict[tuple[str, int], Query] = {
        ("1 row", 1): one_row,
        (f"{MANY} rows", MANY): many_rows,
        ("1 row, statement reused", 1): one_row_reused,
        (f"{MANY} rows, statement reused", MANY): many_rows_reused,
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for (name, _rows), query in queries.items():
            for side in sides:
                times.setdefault((name, side), []).append(
                    measure(engine, side, query, n, warm=True)
                )
        times.setdefault((f"{MANY} rows", "replaying listener"), []).append(
            measure(engine, "replaying listener", many_rows, n, warm=True)
        )
        for side in ("plain", "memo", "pass-through listener"):
            times.setdefault(("distinct", side), []).append(
                measure(engine, side, distinct_rows(n), 1, warm=False) / n
            )
    rows: list[tuple[str, str]] = []
    figures: list[str] = []
    for name, count in queries:
        plain, memo, merging, in_block = (best(times[name, side]) for side in sides)
        rows += [
            (f"{name}: plain session", f"{plain * 1e6:10.1f} us"),
            (f"{name}: memo hit", f"{memo * 1e6:10.1f} us  {plain / memo:7.1f}x faster"),
            (
                f"{name}: merging cache hit",
                f"{merging * 1e6:10.1f} us  {plain / merging:7.1f}x faster",
            ),
            (
                f"{name}: memo hit in a deferred block",
                f"{in_block * 1e6:10.1f} us  {in_block / memo:7.3f}x the memo hit",
            ),
        ]
        if name == f"{MANY} rows":
            floor = best(times[name, "replaying listener"])
            rows.append(
                (
                    f"{name}: replaying listener",
                    f"{floor * 1e6:10.1f} us  {plain / floor:7.1f}x faster (the bound of a hit)",
                )
            )
        target = verdict(plain / memo, HIT_TARGETS[count], at_most=False)
        figures.append(f"{name} hit {plain / memo:.1f}x ({target})")
    plain, memo, floor = (
        best(times["distinct", side]) for side in ("plain", "memo", "pass-through listener")
    )
    rows += [
        ("distinct 1-row: plain session", f"{plain * 1e6:10.1f} us"),
        ("distinct 1-row: memo miss", f"{memo * 1e6:10.1f} us  {memo / plain:7.3f}x the time"),
        (
            "distinct 1-row: pass-through listener",
            f"{floor * 1e6:10.1f} us  {floor / plain:7.3f}x the time (the floor of a miss)",
        ),
    ]
    figures.append(f"miss {memo / plain:.3f}x ({verdict(memo / plain, MISS_TARGET, at_most=True)})")
    return rows, figures


if __name__ == "__main__":
    main()
