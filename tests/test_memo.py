"""The query memo: ``JournalingSession.reusing_query_results()`` (SPEC §6)."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Date,
    ForeignKey,
    String,
    Table,
    bindparam,
    delete,
    event,
    func,
    insert,
    lambda_stmt,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    defer,
    joinedload,
    mapped_column,
    relationship,
    subqueryload,
    with_parent,
)

from orm_ext import JournalingSession, QueryMemo
from tests.conftest import Backend
from tests.scenario import enforce_foreign_keys


class Base(DeclarativeBase):
    """The declarative base of the memo's test models."""


book_genre = Table(
    "book_genre",
    Base.metadata,
    Column("book_id", ForeignKey("book.id", ondelete="CASCADE"), primary_key=True),
    Column("genre_id", ForeignKey("genre.id", ondelete="CASCADE"), primary_key=True),
)


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20), default="author")
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": kind,
        "polymorphic_identity": "author",
    }


class Editor(Author):
    """Joined-table inheritance: an editor row in ``editor`` and ``author``."""

    __tablename__ = "editor"
    id: Mapped[int] = mapped_column(ForeignKey("author.id"), primary_key=True)
    desk: Mapped[str] = mapped_column(String(50), default="news")
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "editor"}


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    genres: Mapped[list[Genre]] = relationship(secondary=book_genre, order_by="Genre.id")


class Genre(Base):
    __tablename__ = "genre"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(50))


class always_true(ColumnElement[bool]):
    """A SQL construct that opts out of SQLAlchemy's statement caching."""

    inherit_cache = False
    type = Boolean()


@compiles(always_true)
def _render_always_true(element: always_true, compiler: Any, **kw: Any) -> str:
    return "1 = 1"


@dataclass
class Db:
    """A seeded database, the statements sent to it, and sessions on it."""

    backend: Backend
    engine: Engine
    statements: list[str]

    def selects(self) -> int:
        """Return how many SELECTs were sent since the last call."""
        count = sum(1 for s in self.statements if s.lstrip().upper().startswith("SELECT"))
        self.statements.clear()
        return count

    def session(self, **kw: Any) -> JournalingSession:
        """Return a new JournalingSession on the database."""
        return JournalingSession(self.engine, **kw)


def _seed(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with JournalingSession(engine) as session:
        fantasy, crime = Genre(id=1, label="fantasy"), Genre(id=2, label="crime")
        ann = Author(id=1, name="ann")
        session.add_all([ann, Author(id=2, name="bob"), Editor(id=3, name="eve")])
        session.add_all(
            [
                Book(id=1, title="one", author=ann, genres=[fantasy]),
                Book(id=2, title="two", author=ann, genres=[fantasy, crime]),
            ]
        )
        session.commit()


@pytest.fixture
def db(backend: Backend) -> Db:
    """The seeded database A of ``backend``, with a SELECT counter on it."""
    engine = backend.engine("a")
    enforce_foreign_keys(engine)
    _seed(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return Db(backend, engine, statements)


@pytest.fixture
def session(db: Db) -> Iterator[JournalingSession]:
    """A JournalingSession on ``db``, closed after the test."""
    with db.session() as session:
        yield session


def authors(session: JournalingSession) -> list[Author]:
    return list(session.scalars(select(Author).where(Author.id < 10).order_by(Author.id)))


# -- hits ------------------------------------------------------------------------------------


def test_identical_queries_send_one_select_and_return_the_same_instances(
    db: Db, session: JournalingSession
) -> None:
    """Two identical SELECTs in the block send one query and return the same objects."""
    with session.reusing_query_results() as memo:
        first = authors(session)
        second = authors(session)
    assert db.selects() == 1
    assert len(first) == 3
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert (memo.hits, memo.misses) == (1, 1)
    assert isinstance(memo, QueryMemo)


def test_a_hit_can_be_consumed_in_every_way(db: Db, session: JournalingSession) -> None:
    """A hit is a fresh result each time: all, first, one, scalars, scalar, iteration."""
    stmt = select(Author).where(Author.id == 1)
    with session.reusing_query_results() as memo:
        ann = session.scalars(stmt).one()
        db.selects()
        assert session.execute(stmt).all()[0][0] is ann
        assert session.execute(stmt).first() == (ann,)
        assert session.execute(stmt).one()[0] is ann
        assert session.execute(stmt).scalar_one() is ann
        assert session.scalar(stmt) is ann
        assert [row.Author for row in session.execute(stmt)] == [ann]
        assert session.scalars(stmt).all() == [ann]
        assert session.query(Author).filter(Author.id == 1).one() is ann
        assert session.query(Author).filter(Author.id == 1).one() is ann
    assert db.selects() == 1  # the legacy Query form's first execution
    assert memo.hits == 8


def test_core_and_column_selects_are_memoized(db: Db, session: JournalingSession) -> None:
    """SELECTs of columns and of plain tables are answered from the memo too."""
    names = select(Author.name).order_by(Author.name)
    rows = select(Author.__table__).order_by(Author.__table__.c.id)
    with session.reusing_query_results():
        assert session.scalars(names).all() == ["ann", "bob", "eve"]
        assert len(session.execute(rows).all()) == 3
        db.selects()
        assert session.scalars(names).all() == ["ann", "bob", "eve"]
        assert len(session.execute(rows).all()) == 3
        assert session.scalar(select(func.count()).select_from(Author)) == 3
        assert session.scalar(select(func.count()).select_from(Author)) == 3
    assert db.selects() == 1


@pytest.mark.parametrize("form", ["orm", "core"])
def test_a_hit_serves_rows_as_the_database_did(
    db: Db, session: JournalingSession, form: str
) -> None:
    """Hit rows equal the database's: values converted once, keyed by name and by column."""
    day = literal(dt.date(2024, 1, 2), Date).label("day")
    author = Author.__table__.c if form == "core" else Author
    book = Book.__table__.c if form == "core" else Book

    def stmt() -> Any:
        return (
            select(author.id, book.title, day)
            .join_from(Author.__table__, Book.__table__)
            .order_by(book.id)
        )

    plain = session.execute(stmt()).all()  # outside the block: straight from the database
    with session.reusing_query_results() as memo:
        first = session.execute(stmt()).all()
        second = session.execute(stmt()).all()
        mapped = [(r._mapping[author.id], r.title, r.day) for r in session.execute(stmt())]
    assert first == second == mapped == plain
    assert [(r.id, r.title) for r in first] == [(1, "one"), (1, "two")]
    assert (memo.hits, memo.misses) == (2, 1)


def test_each_miss_keys_its_rows_by_its_own_columns(db: Db, session: JournalingSession) -> None:
    """A miss's rows are keyed by the column objects of the statement that was executed."""
    with session.reusing_query_results() as memo:
        for wanted in (1, 2, 3):
            books = func.count(Book.id).label("books")
            stmt = select(Author.id, books).outerjoin(Author.books).where(Author.id == wanted)
            row = session.execute(stmt.group_by(Author.id)).one()
            assert (row._mapping[Author.id], row._mapping[books]) == (wanted, [2, 0, 0][wanted - 1])
    assert memo.misses == 3


def test_entity_tuples_are_served_with_the_same_instances(
    db: Db, session: JournalingSession
) -> None:
    """A SELECT of two entities is served as rows of the very same instances."""
    stmt = select(Book, Author).join(Book.author).order_by(Book.id)
    with session.reusing_query_results() as memo:
        first = session.execute(stmt).all()
        second = session.execute(stmt).all()
        assert session.execute(stmt).unique().all() == first
    assert [(b.title, a.name) for b, a in first] == [("one", "ann"), ("two", "ann")]
    assert all(
        x is y for r1, r2 in zip(first, second, strict=True) for x, y in zip(r1, r2, strict=True)
    )
    assert second[0].Book is first[0].Book
    assert memo.hits == 2


def test_a_result_is_keyed_by_the_columns_of_its_own_statement(
    db: Db, session: JournalingSession
) -> None:
    """Rows, missed or hit, are found by the labels and literal columns of the statement run."""

    def statement() -> tuple[Any, Any, Any]:
        lower = func.lower(Author.name).label("lower")
        x = literal_column("'x'")
        return select(Author, Author.name, lower, x).where(Author.id == 1), lower, x

    with session.reusing_query_results() as memo:
        for _ in range(2):
            stmt, lower, x = statement()
            row = session.execute(stmt).one()
            assert (row._mapping[lower], row._mapping[x], row.lower) == ("ann", "x", "ann")
            assert row._mapping[Author].name == row._mapping[Author.name] == "ann"
            assert session.execute(stmt).freeze()().one()._mapping[lower] == "ann"
            assert session.execute(stmt).columns("lower").one()._mapping[lower] == "ann"
    assert (memo.misses, memo.hits) == (1, 5)


def test_a_core_result_is_keyed_by_the_columns_of_its_own_statement(
    db: Db, session: JournalingSession
) -> None:
    """A Core SELECT's rows are found by its own labels when another object compiled it first."""
    table = Author.__table__

    def statement() -> tuple[Any, Any]:
        upper = func.upper(table.c.name).label("upper")
        return select(table.c.id, upper).where(table.c.id == 1), upper

    session.execute(statement()[0]).all()
    with session.reusing_query_results() as memo:
        for _ in range(2):
            stmt, upper = statement()
            assert session.execute(stmt).one()._mapping[upper] == "ANN"
    assert (memo.misses, memo.hits) == (1, 1)


def test_a_joined_eager_load_with_a_column_is_served_like_a_plain_session(
    db: Db, session: JournalingSession
) -> None:
    """Entities with a joined eager collection and a column are memoized and read uniqued."""
    stmt = (
        select(Author, func.lower(Author.name).label("lower"))
        .options(joinedload(Author.books))
        .where(Author.id < 3)
        .order_by(Author.id)
    )
    with session.reusing_query_results() as memo:
        first = [(a.id, lower, len(a.books)) for a, lower in session.execute(stmt).unique()]
        second = [(a.id, lower, len(a.books)) for a, lower in session.execute(stmt).unique()]
    assert first == second == [(1, "ann", 2), (2, "bob", 0)]
    assert (memo.misses, memo.hits) == (1, 1)


def test_joined_eager_collections_are_served_uniqued(db: Db, session: JournalingSession) -> None:
    """A joined eager load of a collection is memoized and still works with unique()."""
    stmt = select(Author).options(joinedload(Author.books)).order_by(Author.id)
    with session.reusing_query_results() as memo:
        first = session.scalars(stmt).unique().all()
        second = session.scalars(stmt).unique().all()
    assert [a.name for a in first] == ["ann", "bob", "eve"]
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert memo.hits == 1


@pytest.mark.parametrize(
    "variant",
    [
        select(Author).where(Author.id < 10).where(Author.name != "x").order_by(Author.id),
        select(Author).where(Author.id < 10).order_by(Author.id).limit(2),
        select(Author).where(Author.id < 9).order_by(Author.id),
        select(Author).where(Author.id < 10.0).order_by(Author.id),
        select(Author).where(Author.id < 10).order_by(Author.id).options(defer(Author.name)),
        select(Author).where(Author.id < 10).order_by(Author.id).execution_options(x=1),
    ],
    ids=["filter", "limit", "parameter", "parameter type", "loader option", "execution option"],
)
def test_a_different_statement_is_sent(db: Db, session: JournalingSession, variant: Any) -> None:
    """A statement differing in structure, a bound value or an option is not a hit."""
    with session.reusing_query_results() as memo:
        authors(session)
        session.scalars(variant).all()
        session.scalars(variant).all()
    assert db.selects() == 2
    assert (memo.hits, memo.misses) == (1, 2)


def test_parameters_given_at_execution_are_part_of_the_key(
    db: Db, session: JournalingSession
) -> None:
    """Named, expanding and callable parameters are keyed by their effective values."""
    named = select(Author).where(Author.id == bindparam("wanted"))
    with session.reusing_query_results() as memo:
        assert session.scalars(named, {"wanted": 1}).one().name == "ann"
        assert session.scalars(named, {"wanted": 2}).one().name == "bob"
        assert session.scalars(named, {"wanted": 1}).one().name == "ann"
        for ids in ([1, 2], [1, 3], [1, 2]):
            session.scalars(select(Author).where(Author.id.in_(ids))).all()
        ann, bob = session.get(Author, 1), session.get(Author, 2)
        for parent in (ann, bob, ann):
            session.scalars(select(Book).where(with_parent(parent, Author.books))).all()
    assert (memo.hits, memo.misses) == (3, 6)


def test_lambda_statements_are_keyed_by_their_closure_values(
    db: Db, session: JournalingSession
) -> None:
    """A lambda statement is a hit only for the same values of the variables it closes over."""

    def by_id(wanted: int) -> Any:
        return lambda_stmt(lambda: select(Author).where(Author.id == wanted))

    with session.reusing_query_results() as memo:
        names = [session.scalars(by_id(i)).one().name for i in (1, 2, 1)]
    assert names == ["ann", "bob", "ann"]
    assert (memo.hits, memo.misses) == (1, 2)


def test_a_different_bind_is_sent(db: Db) -> None:
    """The same statement against another database is not a hit."""
    other = db.backend.engine("b")
    _seed(other)
    with db.session() as session, session.reusing_query_results() as memo:
        authors(session)
        session.scalars(
            select(Author).where(Author.id < 10).order_by(Author.id), bind_arguments={"bind": other}
        ).all()
    assert (memo.hits, memo.misses) == (0, 2)


def test_a_different_schema_translate_map_is_sent(db: Db, session: JournalingSession) -> None:
    """A schema_translate_map is part of the key."""
    schema = {"sqlite": "main", "postgresql": "public"}.get(db.backend.name)
    schema = schema or db.engine.url.database
    with session.reusing_query_results() as memo:
        authors(session)
        for _ in range(2):
            translated = {"schema_translate_map": {None: schema}}
            session.scalars(
                select(Author).where(Author.id < 10), execution_options=translated
            ).all()
    assert (memo.hits, memo.misses) == (1, 2)


# -- freshness -------------------------------------------------------------------------------


def test_a_pending_object_is_autoflushed_before_a_hit(db: Db, session: JournalingSession) -> None:
    """An object added after the first query is in the result of the second."""
    with session.reusing_query_results():
        authors(session)
        session.add(Author(id=4, name="dan"))
        assert [a.name for a in authors(session)] == ["ann", "bob", "eve", "dan"]


def test_without_autoflush_the_memo_answers_like_the_database(db: Db) -> None:
    """With autoflush off a pending object is in neither the database nor the hit."""
    with db.session(autoflush=False) as session, session.reusing_query_results() as memo:
        authors(session)
        session.add(Author(id=4, name="dan"))
        assert len(authors(session)) == 3
        session.flush()
        assert len(authors(session)) == 4
    assert (memo.hits, memo.misses) == (1, 2)


@pytest.mark.parametrize("change", ["insert", "update", "delete"])
def test_a_flush_drops_the_results_reading_its_tables(
    db: Db, session: JournalingSession, change: str
) -> None:
    """Flushing an insert, update or delete drops the results that read the table."""
    with session.reusing_query_results() as memo:
        bob = authors(session)[1]
        if change == "insert":
            session.add(Author(id=4, name="dan"))
        elif change == "update":
            bob.name = "rob"
        else:
            session.delete(bob)
        session.flush()
        names = [a.name for a in authors(session)]
    assert (
        names
        == {
            "insert": ["ann", "bob", "eve", "dan"],
            "update": ["ann", "rob", "eve"],
            "delete": ["ann", "eve"],
        }[change]
    )
    assert (memo.misses, memo.invalidations) == (2, 1)


@pytest.mark.parametrize("loader", [None, subqueryload], ids=["lazy", "subqueryload"])
def test_a_dropped_result_keeps_no_instance_alive(
    db: Db, session: JournalingSession, loader: Any
) -> None:
    """Once the memoized result holding an instance is dropped, the memo no longer holds it."""
    stmt = select(Author).where(Author.id < 10).order_by(Author.id)
    if loader is not None:
        stmt = stmt.options(loader(Author.books))
    with session.reusing_query_results() as memo:
        found = session.scalars(stmt).all()
        ann, book = weakref.ref(found[0]), weakref.ref(found[0].books[0])
        del found
        session.add(Author(id=4, name="dan"))
        session.flush()  # drops the result, which held the only references
        gc.collect()
        assert (ann(), book()) == (None, None)
        assert memo.invalidations == 1


def test_a_flush_keeps_results_of_other_tables(db: Db, session: JournalingSession) -> None:
    """Writing one table leaves memoized results of unrelated tables in place."""
    with session.reusing_query_results() as memo:
        authors(session)
        session.add(Genre(id=3, label="poetry"))
        session.flush()
        authors(session)
    assert (memo.hits, memo.invalidations) == (1, 0)


def test_a_many_to_many_change_drops_results_joining_the_secondary_table(
    db: Db, session: JournalingSession
) -> None:
    """Linking a book to a genre drops a result joined through the secondary table."""
    crime = select(Book.title).join(Book.genres).where(Genre.label == "crime")
    with session.reusing_query_results() as memo:
        assert session.scalars(crime).all() == ["two"]
        one = session.get(Book, 1)
        assert one is not None
        one.genres.append(session.get_one(Genre, 2))
        assert sorted(session.scalars(crime).all()) == ["one", "two"]
    assert memo.invalidations == 1


def test_an_inheritance_table_change_drops_results_reading_it(
    db: Db, session: JournalingSession
) -> None:
    """Changing only the subclass table of a joined inheritance drops its results."""
    desks = select(Editor.desk)
    eve = session.get_one(Editor, 3)
    with session.reusing_query_results() as memo:
        assert session.scalars(desks).all() == ["news"]
        eve.desk = "sport"
        assert session.scalars(desks).all() == ["sport"]
    assert memo.invalidations == 1


def test_orm_update_and_delete_statements_drop_their_tables(
    db: Db, session: JournalingSession
) -> None:
    """update() and delete() statements drop the results of the tables they change."""
    books = select(Book.title).order_by(Book.id)
    with session.reusing_query_results() as memo:
        authors(session)
        session.scalars(books).all()
        session.execute(update(Book).where(Book.id == 1).values(title="uno"))
        assert session.scalars(books).all() == ["uno", "two"]
        session.execute(delete(Book).where(Book.id == 2))
        assert session.scalars(books).all() == ["uno"]
        session.execute(insert(Genre).values(id=3, label="poetry"))
        authors(session)
    assert (memo.invalidations, memo.hits) == (2, 1)


def test_a_delete_statement_drops_tables_referencing_it(db: Db, session: JournalingSession) -> None:
    """Deleting rows drops the results of tables whose foreign keys cascade from them."""
    links = select(book_genre.c.genre_id).order_by(book_genre.c.genre_id)
    with session.reusing_query_results() as memo:
        assert session.scalars(links).all() == [1, 1, 2]
        session.execute(delete(Genre).where(Genre.id == 2))
        assert session.scalars(links).all() == [1, 1]
    assert (memo.misses, memo.invalidations) == (2, 1)


def test_a_text_write_drops_everything(db: Db, session: JournalingSession) -> None:
    """A textual statement that is not a SELECT drops every memoized result."""
    with session.reusing_query_results() as memo:
        session.scalars(select(Genre)).all()
        session.execute(text("SELECT 1")).all()
        session.scalars(select(Genre)).all()
        session.execute(text("UPDATE author SET name = 'ann' WHERE id = 1"))
        session.scalars(select(Genre)).all()
    assert (memo.hits, memo.misses, memo.invalidations) == (1, 2, 1)


@pytest.mark.parametrize(
    "end", ["commit", "rollback", "savepoint rollback", "expire_all", "expunge_all", "close"]
)
def test_ending_the_transaction_or_forgetting_objects_drops_everything(
    db: Db, session: JournalingSession, end: str
) -> None:
    """Commit, rollback, a savepoint rollback, expire_all, expunge_all and close drop all."""
    with session.reusing_query_results() as memo:
        session.scalars(select(Genre)).all()
        if end == "savepoint rollback":
            session.begin_nested().rollback()
        else:
            getattr(session, end)()
        assert len(memo) == 0
        session.scalars(select(Genre)).all()
    assert (memo.hits, memo.misses, memo.invalidations) == (0, 2, 1)


def test_expire_drops_everything(db: Db, session: JournalingSession) -> None:
    """Expiring one object drops every memoized result."""
    with session.reusing_query_results() as memo:
        ann = authors(session)[0]
        session.expire(ann)
        assert authors(session)[0] is ann
    assert (memo.hits, memo.invalidations) == (0, 1)


def test_an_expunged_instance_is_not_served(db: Db, session: JournalingSession) -> None:
    """After an instance is expunged, the query returns a new instance from the database."""
    with session.reusing_query_results():
        bob = authors(session)[1]
        session.expunge(bob)
        again = authors(session)[1]
    assert again is not bob
    assert again.name == "bob"


def test_a_deleted_instance_is_not_served(db: Db) -> None:
    """An instance deleted by a flush never comes back from the memo."""
    with db.session(autoflush=False) as session, session.reusing_query_results():
        bob = authors(session)[1]
        session.delete(bob)
        assert bob in authors(session)
        session.flush()
        assert bob not in authors(session)


# -- pass-through ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stmt",
    [
        select(Genre).with_for_update(),
        select(Genre).execution_options(populate_existing=True),
        select(Genre).execution_options(yield_per=10),
        select(Genre).where(always_true()),
    ],
    ids=["with_for_update", "populate_existing", "yield_per", "no cache key"],
)
def test_statements_that_must_see_the_database_pass_through(
    db: Db, session: JournalingSession, stmt: Any
) -> None:
    """Locking, refreshing, streaming and uncacheable statements are always sent."""
    with session.reusing_query_results() as memo:
        for _ in range(2):
            assert len(session.scalars(stmt).all()) == 2
    assert db.selects() == 2
    assert (memo.hits, memo.misses) == (0, 0)


def test_a_select_reading_no_table_passes_through(db: Db, session: JournalingSession) -> None:
    """A SELECT of no table (a clock, a sequence's next value) is sent every time."""
    with session.reusing_query_results() as memo:
        for _ in range(2):
            session.scalar(select(func.current_timestamp()))
    assert db.selects() == 2
    assert memo.misses == 0


def test_legacy_query_flags_pass_through(db: Db, session: JournalingSession) -> None:
    """Query.populate_existing() and Query.yield_per() are sent every time."""
    with session.reusing_query_results() as memo:
        for _ in range(2):
            session.query(Genre).populate_existing().all()
            list(session.query(Genre).yield_per(5))
    assert db.selects() == 4
    assert memo.misses == 0


def test_lazy_loads_and_refreshes_pass_through(db: Db, session: JournalingSession) -> None:
    """Relationship loads and attribute refreshes are not memoized."""
    with session.reusing_query_results() as memo:
        ann = authors(session)[0]
        assert [b.title for b in ann.books] == ["one", "two"]
        session.refresh(ann)
    assert memo.misses == 1


# -- the block -------------------------------------------------------------------------------


def test_queries_are_logged(db: Db, session: JournalingSession, caplog: Any) -> None:
    """A query sent is logged at INFO with its SQL, a reuse at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="orm_ext.query")
    with session.reusing_query_results():
        session.scalars(select(Genre.label)).all()
        session.scalars(select(Genre.label)).all()
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "orm_ext.query"]
    assert [level for level, _ in records] == [logging.INFO, logging.DEBUG]
    assert records[0][1].startswith("Performing query: SELECT genre.label")
    assert records[1][1].startswith("Reusing query results: SELECT genre.label")


def test_nothing_is_memoized_outside_the_block(db: Db, session: JournalingSession) -> None:
    """Results from before the block are not reused, nor memoized ones after it."""
    authors(session)
    with session.reusing_query_results() as memo:
        authors(session)
    authors(session)
    assert db.selects() == 3
    assert memo.misses == 1
    assert len(memo) == 0


def test_an_exception_clears_the_memo(db: Db, session: JournalingSession) -> None:
    """An exception leaving the block propagates and clears the memo."""
    memo = None
    with pytest.raises(KeyError, match="boom"):
        with session.reusing_query_results() as memo:
            authors(session)
            raise KeyError("boom")
    assert memo is not None
    assert len(memo) == 0
    authors(session)
    assert db.selects() == 2


def test_nested_blocks_share_the_outer_memo(db: Db, session: JournalingSession) -> None:
    """An inner block yields the outer memo and leaves it filled on exit."""
    with session.reusing_query_results() as outer:
        authors(session)
        with session.reusing_query_results() as inner:
            authors(session)
        assert inner is outer
        authors(session)
    assert (outer.hits, outer.misses) == (2, 1)


def test_clear_forgets_results_but_keeps_counters(db: Db, session: JournalingSession) -> None:
    """QueryMemo.clear() makes the next query a miss."""
    with session.reusing_query_results() as memo:
        authors(session)
        memo.clear()
        authors(session)
    assert (memo.hits, memo.misses, memo.invalidations) == (0, 2, 0)


def test_memoized_reads_work_inside_a_deferred_block(
    db: Db, session: JournalingSession, tmp_path: Path
) -> None:
    """Inside deferred_operations reads are memoized and a recorded flush invalidates."""
    with (
        session.deferred_operations(tmp_path / "ops.dbm") as ops,
        session.reusing_query_results() as memo,
    ):
        first = session.scalars(select(Genre).order_by(Genre.id)).all()
        assert session.scalars(select(Genre).order_by(Genre.id)).all() == first
        first[0].label = "epic"
        session.flush()
        assert [g.label for g in session.scalars(select(Genre).order_by(Genre.id))] == [
            "epic",
            "crime",
        ]
    assert ops.operations == 1
    assert (memo.hits, memo.misses, memo.invalidations) == (1, 2, 1)
