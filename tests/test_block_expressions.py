"""column_property() expressions inside a deferred block read as a plain session reads them.

A flush expires the expressions of the objects it wrote (SQLAlchemy's own rule), and a
reload has the database compute them from its row. Inside the block the row is the
journal's: an expression the ORM's evaluator can compute in Python is computed from the
object's values; any other is refused on reload, never answered from a stale value.
Each body runs directly on database A and recorded-then-replayed on B (test_block_reads'
harness); what it reads and the rows it leaves must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, column_property, mapped_column

from orm_ext import DeferredOperationError
from tests.conftest import Backend
from tests.test_block_reads import Run
from tests.test_block_reads import assert_same_as_direct as same_as_direct


class Base(DeclarativeBase):
    pass


class Person(Base):
    """A full name and a total computed by SQL from the row's own columns."""

    __tablename__ = "expr_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    first: Mapped[str] = mapped_column(String(50))
    last: Mapped[str] = mapped_column(String(50))
    a: Mapped[int] = mapped_column(default=0)
    b: Mapped[int] = mapped_column(default=0)


Person.full = column_property(Person.first + " " + Person.last)
Person.total = column_property(Person.a + Person.b + 1)


class Pet(Base):
    __tablename__ = "expr_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("expr_owner.id"))


class Owner(Base):
    """A count of rows of another table: computed by the database only."""

    __tablename__ = "expr_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


Owner.pets = column_property(
    select(func.count(Pet.id))
    .where(Pet.owner_id == Owner.id)
    .correlate_except(Pet)
    .scalar_subquery()
)


class Gauge(Base):
    """Expressions whose SQL rules differ from Python's, and one over a column the
    database sets when it updates the row."""

    __tablename__ = "expr_gauge"
    id: Mapped[int] = mapped_column(primary_key=True)
    a: Mapped[int] = mapped_column()
    b: Mapped[int] = mapped_column()
    s: Mapped[str] = mapped_column(String(20))
    touched: Mapped[str] = mapped_column(String(20), default="new", onupdate=func.lower("SET"))


Gauge.rem = column_property(Gauge.a % 3)  # SQL: the sign of the dividend
Gauge.head = column_property(Gauge.s.startswith("A"))  # LIKE: case folded but on PostgreSQL
Gauge.ratio = column_property(Gauge.a / Gauge.b)  # a Numeric the database computes
Gauge.total = column_property(Gauge.a + Gauge.b, deferred=True)
Gauge.rem0 = column_property(Gauge.a % (Gauge.b - Gauge.b), deferred=True)  # by zero
Gauge.mark = column_property(Gauge.touched + "!")  # over a column set at replay


def seed(engine: sa.Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Person(id=1, first="ada", last="lovelace", a=1, b=2))
        session.add(Owner(id=1, name="o1"))
        session.add(Gauge(id=1, a=-7, b=2, s="abc"))
        session.flush()
        session.add(Pet(id=1, owner_id=1))
        session.commit()


def contents(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: sorted(conn.execute(select(t)).all(), key=repr)
            for t in Base.metadata.sorted_tables
        }


def test_expressions_of_written_objects_are_computed_again(
    backend: Backend, tmp_path: Path
) -> None:
    """After a flush, a commit and a rollback, an expression over the object's own columns
    reads what the database would compute from the row the block wrote (it read the old
    value, or crashed on a new object, before)."""

    def body(run: Run) -> list[Any]:
        session = run.session
        seen: list[Any] = []
        person = session.get(Person, 1)
        assert person is not None
        seen += [person.full, person.total]
        person.first, person.a = "grace", 10
        session.flush()
        seen += [person.full, person.total]
        session.commit()
        seen += [person.full, person.total]
        new = Person(id=2, first="alan", last="turing", a=5)
        session.add(new)
        session.commit()
        seen += [new.full, new.total]
        new.last = "kay"
        session.flush()
        session.rollback()
        seen += [new.full, new.total, person.full]
        return seen

    seen = same_as_direct(backend, tmp_path, body, seed=seed, rows=contents)
    assert seen[:6] == ["ada lovelace", 4, "grace lovelace", 13, "grace lovelace", 13]


def test_expression_the_database_alone_computes_is_refused_on_reload(
    backend: Backend, tmp_path: Path
) -> None:
    """A count over another table, on an object the block changed, is refused when read
    after a reload (the database's count misses the block's rows); the object's other
    attributes read."""

    def body(run: Run) -> list[Any]:
        session = run.session
        owner = session.get(Owner, 1)
        assert owner is not None
        before = owner.pets
        session.add(Pet(id=2, owner_id=1))
        owner.name = "renamed"
        session.commit()
        if run.recording:
            with pytest.raises(DeferredOperationError, match=r"Owner\.pets .* SQL expression"):
                _ = owner.pets
        return [before, owner.name]

    assert same_as_direct(backend, tmp_path, body, seed=seed, rows=contents) == [1, "renamed"]


def test_expressions_follow_sql_rules_or_are_refused(backend: Backend, tmp_path: Path) -> None:
    """After a flush and a commit, expressions read as the database computes them: a
    remainder with the dividend's sign, startswith() folding case as LIKE does on SQLite
    and MySQL/MariaDB; a Numeric division, a remainder by zero and an expression over a
    column the database sets on update are refused, each only when read (the others
    read, and so does the whole object)."""
    is_postgresql = backend.name == "postgresql"

    def body(run: Run) -> list[Any]:
        session = run.session
        gauge = session.get(Gauge, 1)
        assert gauge is not None
        gauge.a = -8
        session.flush()
        seen = [gauge.rem, gauge.head, gauge.total]
        run.answered(lambda s: s.scalars(select(Gauge.id).where(Gauge.a % 3 == -2)).all())
        run.answered(lambda s: s.scalars(select(Gauge.id).where(Gauge.s.startswith("A"))).all())
        session.commit()
        seen += [gauge.a, gauge.rem, gauge.head, gauge.total]
        if run.recording:
            for read in ("ratio", "rem0", "mark"):
                with pytest.raises(DeferredOperationError, match=rf"Gauge\.{read} "):
                    getattr(gauge, read)
        return seen

    seen = same_as_direct(backend, tmp_path, body, seed=seed, rows=contents)
    assert seen == [-2, not is_postgresql, -6, -8, -2, not is_postgresql, -6]


def test_unsynchronized_statement_rolled_back_leaves_nothing_unknown(
    backend: Backend, tmp_path: Path
) -> None:
    """An update() with synchronize_session=False that a rollback discarded leaves the
    object's columns readable after a later flush and reload (they were refused)."""

    def body(run: Run) -> list[Any]:
        session = run.session
        person = session.get(Person, 1)
        assert person is not None
        session.execute(
            update(Person).where(Person.id == 1).values(a=50),
            execution_options={"synchronize_session": False},
        )
        session.rollback()
        person.b = 9
        session.flush()
        session.expire(person)
        return [person.a, person.b, person.total]

    assert same_as_direct(backend, tmp_path, body, seed=seed, rows=contents) == [1, 9, 11]
