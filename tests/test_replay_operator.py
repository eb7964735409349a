"""Replay for operators (SPEC §5.8): dry run, progress, conflicts decided per operation, logs."""

from __future__ import annotations

import asyncio
import decimal
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from orm_ext import (
    AsyncJournalingSession,
    DeferredOperationError,
    ReplayConflictError,
)
from orm_ext.conflicts import key_text
from tests.conftest import Backend
from tests.models import Account, Post, Tag, Task
from tests.scenario import make_sessions, record_seed_scenario, replay, seed, table_rows


def record(engine: Any, path: Path, body: Any) -> None:
    with make_sessions(engine)() as session, session.deferred_operations(path):
        body(session)


def ledger_rows(engine: Any) -> int:
    """The ledger's row count, 0 when the table does not exist."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("orm_journal_ledger"):
            return 0
        return int(conn.execute(text("SELECT COUNT(*) FROM orm_journal_ledger")).scalar_one())


@pytest.fixture
def db(backend: Backend) -> Any:
    """Database B of the backend, seeded, with accounts A-1, A-2 and A-3."""
    engine = backend.engine("b")
    seed(engine)
    with Session(engine) as session:
        session.add_all([Account(code=f"A-{i}", balance=10 * i) for i in (1, 2, 3)])
        session.commit()
    return engine


def record_mixed(engine: Any, path: Path) -> None:
    """Updates of A-1..A-3; inserts of tags 'taken' and 'free'; a post tagged 'taken'."""

    def body(session: Any) -> None:
        accounts = session.scalars(select(Account).order_by(Account.code)).all()
        for account in accounts:
            account.balance += 1
        session.flush()
        taken, free = Tag(label="taken"), Tag(label="free")
        session.add_all([taken, free])
        session.flush()
        session.add(Post(title="news", tags=[taken]))

    record(engine, path, body)


def change_behind_the_journal(engine: Any) -> None:
    """A-1's balance changed, A-2 deleted, tag 'taken' inserted: one conflict of each kind."""
    with Session(engine) as session:
        session.scalars(
            select(Account).where(Account.code == "A-1")
        ).one().balance = decimal.Decimal(100)
        session.delete(session.scalars(select(Account).where(Account.code == "A-2")).one())
        session.add(Tag(label="taken"))
        session.commit()


# The conflicts of record_mixed after change_behind_the_journal: A-1 changed, A-2 gone, the
# insert of tag 'taken' refused, and the post (#3) and the tag's link to it referring to it.
EACH_KIND = [
    ("constraint", "post", "(#3.id,)"),
    ("constraint", "tag", "(#1.id,)"),
    ("data", "account", "(1,)"),
    ("notfound", "account", "(2,)"),
    ("notfound", "tag", "(#1.id,)"),
]


def balances(engine: Any) -> dict[str, decimal.Decimal]:
    with Session(engine) as session:
        return {a.code: a.balance for a in session.scalars(select(Account))}


def labels(engine: Any) -> list[str]:
    with Session(engine) as session:
        return sorted(session.scalars(select(Tag.label)))


def test_dry_run_changes_nothing_and_says_it_would_apply(db: Any, tmp_path: Path) -> None:
    """A dry run applies everything and rolls back: database and ledger unchanged, verdict True."""
    path = tmp_path / "ops.dbm"
    record(db, path, record_seed_scenario)
    before, ledger_before = table_rows(db), ledger_rows(db)
    result = replay(db, path, dry_run=True)
    assert (result.applied, result.dry_run, result.operations) == (True, True, 4)
    assert table_rows(db) == before
    assert ledger_rows(db) == ledger_before == 0
    assert replay(db, path).applied  # the dry run claimed nothing
    after = table_rows(db)
    again = replay(db, path, dry_run=True)
    assert (again.applied, again.dry_run) == (False, True)
    assert table_rows(db) == after and ledger_rows(db) == 1


def test_dry_run_reports_a_conflict_as_the_replay_would(db: Any, tmp_path: Path) -> None:
    """A dry run meets the same conflicts: fail raises, skip lists them; nothing changes."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    change_behind_the_journal(db)
    before = table_rows(db)
    with pytest.raises(ReplayConflictError) as caught:
        replay(db, path, dry_run=True)
    assert caught.value.kind in ("data", "notfound") and caught.value.table == "account"
    result = replay(db, path, dry_run=True, on_conflict="skip")
    assert result.applied and result.dry_run
    assert sorted((c.kind, c.table, key_text(c.key)) for c in result.conflicts) == EACH_KIND
    assert table_rows(db) == before
    assert ledger_rows(db) == 0


def test_progress_is_monotonic_and_ends_at_the_operation_count(db: Any, tmp_path: Path) -> None:
    """progress(done, total) rises batch by batch to the journal's operation count."""
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        for i in range(120):
            session.add(Task(name=f"t{i}"))
            if i % 25 == 24:
                session.flush()

    record(db, path, body)
    for dry_run in (True, False):
        calls: list[tuple[int, int]] = []
        result = replay(db, path, dry_run=dry_run, progress=lambda d, t, c=calls: c.append((d, t)))
        assert result.operations == 120
        assert len(calls) == 5, calls
        assert {t for _, t in calls} == {120}
        done = [d for d, _ in calls]
        assert done == sorted(done) and done[-1] == 120 and done[0] > 0


def test_conflict_callable_sees_each_kind_and_is_obeyed(db: Any, tmp_path: Path) -> None:
    """The callable is asked once per conflict, with its kind; each decision is honoured."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    change_behind_the_journal(db)
    asked: list[ReplayConflictError] = []

    def decide(conflict: ReplayConflictError) -> Any:
        asked.append(conflict)
        return {"data": "overwrite", "notfound": "skip", "constraint": "skip"}[conflict.kind]

    result = replay(db, path, on_conflict=decide)
    assert result.applied
    assert sorted((c.kind, c.table, key_text(c.key)) for c in asked) == EACH_KIND
    sequences = [c.sequence for c in asked]
    assert sequences == sorted(set(sequences)), "asked once per operation, in journal order"
    assert [c.sequence for c in result.conflicts] == sequences
    [data] = [c for c in asked if c.kind == "data"]
    assert data.columns == ("balance", "revision")
    assert "The recorded values were applied anyway" in str(data)
    assert balances(db) == {"A-1": decimal.Decimal("11.00"), "A-3": decimal.Decimal("31.00")}
    assert labels(db) == ["free", "taken"]
    with Session(db) as session:
        assert session.scalars(select(Post)).all() == []


def test_conflict_callable_decides_per_operation(db: Any, tmp_path: Path) -> None:
    """Two data conflicts of one batch: the callable overwrites one and skips the other."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    with Session(db) as session:
        for account in session.scalars(select(Account)):
            account.balance += 100
        session.commit()
    result = replay(
        db,
        path,
        on_conflict=lambda conflict: "overwrite" if conflict.key == (3,) else "skip",
    )
    assert sorted((c.key, "was skipped" in str(c)) for c in result.conflicts) == [
        ((1,), True),
        ((2,), True),
        ((3,), False),
    ]
    assert balances(db) == {
        "A-1": decimal.Decimal("110.00"),
        "A-2": decimal.Decimal("120.00"),
        "A-3": decimal.Decimal("31.00"),
    }


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        ("fail", ReplayConflictError, "the on_conflict callable chose 'fail'"),
        ("overwrite", ReplayConflictError, "a row that is gone cannot be overwritten"),
        ("maybe", DeferredOperationError, "returned 'maybe'"),
    ],
)
def test_conflict_callable_that_fails_applies_nothing(
    db: Any, tmp_path: Path, answer: str, error: type[Exception], match: str
) -> None:
    """'fail', overwriting a missing row, or an answer that is no policy: nothing is applied."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    change_behind_the_journal(db)
    before = table_rows(db)

    def decide(conflict: ReplayConflictError) -> Any:
        return answer if conflict.kind == "notfound" else "skip"

    with pytest.raises(error, match=match):
        replay(db, path, on_conflict=decide)
    assert table_rows(db) == before
    assert ledger_rows(db) == 0


def test_skip_leaves_out_an_insert_that_hits_a_unique_constraint(db: Any, tmp_path: Path) -> None:
    """on_conflict='skip': a duplicate insert and what refers to it are listed and left out."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    with Session(db) as session:
        session.add(Tag(label="taken"))
        session.commit()
    result = replay(db, path, on_conflict="skip")
    assert [(c.kind, c.table, c.operation) for c in result.conflicts] == [
        ("constraint", "tag", "insert"),
        ("constraint", "post", "insert"),
        ("notfound", "tag", "update"),
    ]
    assert "refers to new row #1, whose insert was left out" in str(result.conflicts[1])
    assert "UNIQUE" in str(result.conflicts[0]).upper() or "Duplicate" in str(result.conflicts[0])
    assert all("was skipped" in str(c) for c in result.conflicts)
    assert labels(db) == ["free", "taken"]
    assert balances(db) == {f"A-{i}": decimal.Decimal(10 * i + 1) for i in (1, 2, 3)}


def test_conflict_message_lists_only_the_columns_that_differ(db: Any, tmp_path: Path) -> None:
    """The message of a data conflict names the differing columns, not every old value."""
    path = tmp_path / "ops.dbm"

    def body(session: Any) -> None:
        account = session.scalars(select(Account).where(Account.code == "A-1")).one()
        account.balance = decimal.Decimal(5)
        account.code = "B-1"

    record(db, path, body)
    with Session(db) as session:
        account = session.scalars(select(Account).where(Account.code == "A-1")).one()
        account.balance = decimal.Decimal(7)
        session.commit()
    with pytest.raises(ReplayConflictError) as caught:
        replay(db, path)
    message = str(caught.value)
    assert caught.value.columns == ("balance", "revision")
    assert (
        "balance: the journal expected Decimal('10.00'), the row holds Decimal('7.00')" in message
    )
    assert "code" not in message.split("conflicts:")[1]
    assert "on_conflict='overwrite' or 'skip'" in message


def test_loggers_report_each_journal_and_batch(
    db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """orm_ext.record and orm_ext.replay log each journal at INFO, each batch at DEBUG, no warning."""
    path = tmp_path / "ops.dbm"
    caplog.set_level(logging.DEBUG, logger="orm_ext")
    record(db, path, record_seed_scenario)
    result = replay(db, path)
    replay(db, path)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert all(level < logging.WARNING for _, level, _ in records), records
    info = [(name, message) for name, level, message in records if level == logging.INFO]
    assert [name for name, _ in info if name.startswith("orm_ext.re")] == [
        "orm_ext.record",
        "orm_ext.replay",
        "orm_ext.replay",
    ]
    recorded, applied, again = (m for n, m in info if n.startswith("orm_ext.re"))
    for message in (recorded, applied, again):
        assert result.journal_id in message and str(path) in message
        assert "4 operation(s) in" in message
    assert ": sealed," in recorded
    assert ": applied," in applied
    assert ": already applied," in again
    debug = [(n, m) for n, level, m in records if level == logging.DEBUG]
    assert any(n == "orm_ext.record" and "batch of" in m for n, m in debug)
    assert any(n == "orm_ext.replay" and "batch 1 applied" in m for n, m in debug)


def test_failed_replay_is_logged_at_info(
    db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay that raises is logged as failed, at INFO: the caller gets the exception."""
    path = tmp_path / "ops.dbm"
    record_mixed(db, path)
    change_behind_the_journal(db)
    caplog.set_level(logging.INFO, logger="orm_ext.replay")
    with pytest.raises(ReplayConflictError):
        replay(db, path)
    [logged] = [r for r in caplog.records if r.name == "orm_ext.replay"]
    assert logged.levelno == logging.INFO
    assert "failed (ReplayConflictError)" in logged.getMessage()


def test_async_session_takes_every_replay_parameter(backend: Backend, tmp_path: Path) -> None:
    """AsyncJournalingSession.reconnect_and_commit: dry run, progress, callable, if_busy."""
    if backend.name == "mariadb":
        pytest.skip("the async tests run on aiosqlite and an async PostgreSQL driver (SPEC §8)")
    engine = create_engine(backend.url_b)
    seed(engine)
    path = tmp_path / "ops.dbm"
    record(engine, path, record_seed_scenario)
    before = table_rows(engine)
    url = backend.url_b.replace("sqlite://", "sqlite+aiosqlite://").replace(
        "+psycopg://", "+psycopg_async://"
    )
    calls: list[tuple[int, int]] = []

    async def run(**kw: Any) -> Any:
        async_engine = create_async_engine(url)
        try:
            async with AsyncJournalingSession(async_engine) as session:
                return await session.reconnect_and_commit(path, **kw)
        finally:
            await async_engine.dispose()

    dry = asyncio.run(
        run(dry_run=True, progress=lambda d, t: calls.append((d, t)), on_conflict=lambda c: "skip")
    )
    assert (dry.applied, dry.dry_run, calls[-1]) == (True, True, (4, 4))
    assert table_rows(engine) == before
    applied = asyncio.run(run(if_busy="skip", on_conflict=lambda c: "fail"))
    assert applied.applied and not applied.busy
    engine.dispose()


def test_progress_of_a_journal_without_operations(db: Any, tmp_path: Path) -> None:
    """A journal of no operations still reports where it ends: progress(0, 0)."""
    path = tmp_path / "empty.dbm"
    record(db, path, lambda session: None)
    calls: list[tuple[int, int]] = []
    assert replay(db, path, progress=lambda d, t: calls.append((d, t))).applied
    assert calls == [(0, 0)]


def test_on_conflict_that_is_neither_policy_nor_plain_callable_is_refused(
    db: Any, tmp_path: Path
) -> None:
    """An unknown policy is ValueError, an async callable TypeError, before anything is claimed."""
    path = tmp_path / "ops.dbm"
    record(db, path, record_seed_scenario)

    async def decide(conflict: ReplayConflictError) -> str:
        return "skip"

    with pytest.raises(ValueError, match="on_conflict must be one of fail, overwrite, skip"):
        replay(db, path, on_conflict="ignore")
    with pytest.raises(TypeError, match="plain \\(not async\\) callable"):
        replay(db, path, on_conflict=decide)
    assert ledger_rows(db) == 0
