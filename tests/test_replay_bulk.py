"""Replay's bulk insert path gives what a flush of the same objects gives (SPEC §5)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import DateTime, ForeignKey, Numeric, String, Text, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orm_ext import DeferredOperationError, bulk
from tests.conftest import Backend
from tests.scenario import make_sessions

UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


class Base(DeclarativeBase):
    """Models of this module only: every column type the bulk path handles."""


class Sample(Base):
    __tablename__ = "bulk_sample"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(40), unique=True)
    amount: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 2))
    ratio: Mapped[float | None]
    flag: Mapped[bool] = mapped_column(default=True)
    count: Mapped[int] = mapped_column(default=7)
    at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    day: Mapped[dt.date | None]
    note: Mapped[str | None] = mapped_column(Text)
    items: Mapped[list[Item]] = relationship(back_populates="sample")


class Item(Base):
    __tablename__ = "bulk_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("bulk_sample.id"))
    position: Mapped[int]
    sample: Mapped[Sample] = relationship(back_populates="items")


@pytest.fixture
def databases(backend: Backend) -> tuple[Engine, Engine]:
    """Databases A (written by a flush) and B (replayed into), with this module's tables."""
    a, b = backend.engine("a"), backend.engine("b")
    for engine in (a, b):
        Base.metadata.create_all(engine)
    return a, b


def rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(t.c.id))]
            for t in Base.metadata.sorted_tables
        }


def flush_and_replay(
    a: Engine, b: Engine, path: Path, build: Any
) -> tuple[dict[str, Any], list[str]]:
    """Write ``build()``'s objects to A with a flush and to B by replaying their journal.

    Returns the replay's result and the SQL statements it ran.
    """
    with make_sessions(a)() as session:
        session.add_all(build())
        session.commit()
    with make_sessions(b)() as session, session.deferred_operations(path):
        session.add_all(build())
    statements: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(b, "before_cursor_execute", log)
    try:
        with make_sessions(b)() as session:
            result = session.reconnect_and_commit(path)
    finally:
        event.remove(b, "before_cursor_execute", log)
    assert result.applied
    return {"result": result}, statements


def varied(count: int) -> list[Sample]:
    """Samples with NULLs, awkward text, unset defaulted columns, and a few items each."""
    built = []
    for i in range(count):
        sample = Sample(
            label=f"s{i:03d}",
            amount=None if i % 4 == 0 else decimal.Decimal(i) / 8,
            ratio=None if i % 5 == 0 else i / 3,
            at=dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=i),
            day=dt.date(2026, 1, 1) + dt.timedelta(days=i),
            note=[None, "", 'a "quoted", {braced} \\ text', "NULL", "é ü"][i % 5],
        )
        if i % 3 == 0:
            sample.flag, sample.count = False, i
        sample.items = [Item(position=j) for j in range(i % 3)]
        built.append(sample)
    return built


def test_bulk_replay_writes_what_a_flush_writes(
    databases: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """Plain inserts of many column types, NULLs and column defaults replay as a flush wrote them."""
    a, b = databases
    flush_and_replay(a, b, tmp_path / "ops.dbm", lambda: varied(40))
    assert rows(b) == rows(a)


def test_mixed_value_types_in_a_column_replay_as_a_flush(
    databases: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """A column given values of several Python types (int and Decimal, naive and aware) replays as a flush."""
    a, b = databases

    def build() -> list[Sample]:
        return [
            Sample(label="int", amount=3, ratio=2, at=dt.datetime(2026, 1, 1, 12, tzinfo=UTC)),
            Sample(
                label="decimal",
                amount=decimal.Decimal("1.25"),
                ratio=0.5,
                at=dt.datetime(2026, 1, 1, 12, tzinfo=PLUS_TWO),
            ),
            Sample(label="naive", at=dt.datetime(2026, 1, 1, 12)),
            Sample(label="aware", at=dt.datetime(2026, 1, 1, 12, tzinfo=PLUS_TWO)),
        ]

    flush_and_replay(a, b, tmp_path / "ops.dbm", build)
    assert rows(b) == rows(a)


def test_keys_map_to_their_placeholders_across_pages(
    databases: tuple[Engine, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several statements per table, every placeholder gets its own row's key."""
    a, b = databases
    monkeypatch.setattr(bulk, "UNNEST_PAGE_SIZE", 4)
    done, _ = flush_and_replay(a, b, tmp_path / "ops.dbm", lambda: varied(30))
    assert rows(b) == rows(a)
    # Equal rows include equal keys and foreign keys: each item names its own sample.
    table = rows(b)
    keys = [row[0] for row in table["bulk_sample"]] + [row[0] for row in table["bulk_item"]]
    assert sorted(done["result"].identities.values()) == sorted(keys)


def test_postgresql_sends_one_short_insert_per_table(
    backend: Backend, databases: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """On PostgreSQL a batch of plain inserts is one array statement per table, not a row list."""
    if backend.name != "postgresql":
        pytest.skip("the array statement is PostgreSQL's")
    a, b = databases
    _, statements = flush_and_replay(a, b, tmp_path / "ops.dbm", lambda: varied(60))
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO BULK_")]
    assert len(inserts) == 2
    assert all("unnest(" in s and len(s) < 1000 for s in inserts)
    assert rows(b) == rows(a)


def test_a_value_the_column_type_refuses_fails_the_replay_cleanly(
    databases: tuple[Engine, Engine], tmp_path: Path
) -> None:
    """A recorded value the column's type refuses makes the replay fail with nothing applied."""
    _, b = databases
    path = tmp_path / "ops.dbm"
    with make_sessions(b)() as session, session.deferred_operations(path):
        session.add_all([Sample(label="fine"), Sample(label="odd", flag="yes")])  # type: ignore[arg-type]
    with make_sessions(b)() as session, pytest.raises(DeferredOperationError, match="failed"):
        session.reconnect_and_commit(path)
    assert rows(b) == {"bulk_sample": [], "bulk_item": []}
