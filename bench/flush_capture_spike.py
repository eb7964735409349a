"""Spike: could SQLAlchemy's own flush be the recorder? (measure, do not build)

The alternative design to ``orm_ext/recording.py`` lets SQLAlchemy's real flush run in
the recording process against a connection that records the statements it would send,
with stand-in keys where the database would assign them. This script measures the floor
of that design and probes how much of a flush depends on answers only a database gives.

Timing (default): the same objects as ``bench/record_bench.py`` (``--n`` children in
families of one parent and ten children, built before each clock starts), ``add_all`` +
``commit()`` once per checkpoint chunk, best of ``--repeat``, ``gc.collect()`` between
runs:

  a. a plain ``Session`` writing into an empty SQLite file (the bench's baseline);
  b. a plain ``Session`` whose engine runs on :func:`capture_dbapi`, a fake PEP 249
     module that records every (statement, parameters) and answers stand-in keys: the
     whole real flush with no database and no journal encoding, i.e. the capture
     design's floor. It reports the real ``sqlite3`` library version, so the dialect
     takes the same path as (a): one ``INSERT ... RETURNING id`` per row through
     insertmanyvalues (SQLite offers no insert sentinel, so rows are not batched);
     RETURNING rows are answered with stand-in keys 2_000_000_000 + n. The fake's own
     share of (b) is measured by replaying its calls on a fresh cursor (b' = b minus it);
  b2. the same with the fake module reporting SQLite 3.34 (no RETURNING), so the
     dialect uses ``cursor.lastrowid`` per row instead: the other path a capture could
     take, for comparison;
  b3. the same as (b) but with the dialect told autoincrement keys come back in order
     (as for MySQL), so the ORM batches rows into multi-row ``INSERT ... RETURNING``
     statements: the cheapest flush SQLAlchemy offers, the most favourable floor;
  c. the current recorder, ``JournalingSession`` inside ``deferred_operations``.

``--probe`` runs small mapped patterns (joined inheritance, version_id_col, server
defaults, a listener's SELECT, plus a delete with an unloaded collection and a read after
commit) through the real flush on the capture DBAPI, lists what SQLAlchemy read back from
the "database" (SELECT rows, RETURNING rows, lastrowid, rowcounts) - what a journal
recorder would have to answer without one - and runs each on a real SQLite to compare.

Run (from the repository root)::

    python bench/flush_capture_spike.py --n 100000 --repeat 3
    python bench/flush_capture_spike.py --probe
"""

from __future__ import annotations

import argparse
import itertools
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import sqlalchemy as sa
from _common import (
    Base,
    Workload,
    best,
    check_rows,
    record,
    report,
    settle,
    sqlite_url,
    stopwatch,
    write_plain,
)
from sqlalchemy import event
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    make_transient_to_detached,
    mapped_column,
    relationship,
)
from sqlalchemy.sql.compiler import InsertmanyvaluesSentinelOpts

TARGET_RATIO = 0.5
STAND_IN_BASE = 2_000_000_000

# -- the capturing DBAPI ---------------------------------------------------------------------


@dataclass
class Answer:
    """What the fake database answered to one execute, for the probe's listing."""

    statement: str
    parameters: Any
    many: bool
    rows: list[tuple[Any, ...]] | None  # rows handed back (None: statement returns none)
    rowcount: int
    lastrowid: int | None
    read: set[str] = field(default_factory=set)  # what SQLAlchemy looked at: rows, rowcount...


_RETURNING = re.compile(r"\sRETURNING\s+(.*)$", re.IGNORECASE | re.DOTALL)
_SELECT_COLS = re.compile(r"^\s*SELECT\s+(.*?)(?:\s+FROM\s+|$)", re.IGNORECASE | re.DOTALL)

Description = list[tuple[Any, ...]] | None


def _columns(columns: str) -> list[tuple[str, str]]:
    """(source column, result name) of a comma-separated select/returning list (naively)."""
    found = []
    depth = 0
    part = ""
    for ch in columns + ",":
        if ch == "," and depth == 0:
            alias = re.split(r"\s+AS\s+", part.strip(), flags=re.IGNORECASE)
            source, name = (a.rsplit(".", 1)[-1].strip('"') for a in (alias[0], alias[-1]))
            found.append((source, name))
            part = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        part += ch
    return found


def _column_names(columns: str) -> list[str]:
    return [name for _, name in _columns(columns)]


def _values_rows(statement: str) -> int:
    """Rows of an ``INSERT ... VALUES (...), (...)`` (insertmanyvalues batches several)."""
    values = re.split(r"\sVALUES\s", statement, maxsplit=1, flags=re.IGNORECASE)
    if len(values) < 2:
        return 1
    rows = depth = 0
    for ch in _RETURNING.sub("", values[1]):
        if ch == "(":
            rows += depth == 0
            depth += 1
        elif ch == ")":
            depth -= 1
    return max(rows, 1)


def _described(names: Sequence[str]) -> Description:
    return [(n, None, None, None, None, None, None) for n in names]


@dataclass(frozen=True)
class Shape:
    """How the fake answers one statement text (worked out once per distinct statement).

    ``kind`` is ``"returning"`` (a row per inserted row: ``id`` columns, and the
    sentinel ``id AS id__1``, get the row's stand-in key, other columns a ``"<db:name>"``
    placeholder), ``"rows"`` (the fixed ``rows``: empty
    for every SELECT but the dialect's start-up reads), ``"insert"`` (``lastrowid`` is the
    next key) or ``"write"`` (``rowcount`` = parameter sets).
    """

    kind: str
    description: Description = None
    key_columns: tuple[bool, ...] = ()
    names: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    is_insert: bool = False
    rows_per_set: int = 1  # rows one parameter set inserts (a multi-VALUES batch: many)


def shape_of(statement: str) -> Shape:
    """Classify ``statement`` and work out the answer's columns."""
    head = statement.lstrip()[:6].upper()
    lowered = statement.lower()
    if head != "SELECT" and (returning := _RETURNING.search(statement)) is not None:
        columns = _columns(returning.group(1))
        names = [name for _, name in columns]
        return Shape(
            "returning",
            _described(names),
            tuple(source == "id" for source, _ in columns),  # the key, or a sentinel of it
            tuple(names),
            is_insert=head == "INSERT",
            rows_per_set=_values_rows(statement) if head == "INSERT" else 1,
        )
    if lowered.startswith("pragma read_uncommitted"):  # the dialect's isolation level read
        return Shape("rows", _described(["read_uncommitted"]), rows=((0,),))
    if lowered.startswith("pragma"):
        return Shape("write")
    if head == "SELECT":
        if "sqlite_version()" in lowered:
            return Shape("rows", _described(["v"]), rows=((sqlite3.sqlite_version,),))
        match = _SELECT_COLS.match(statement)
        return Shape("rows", _described(_column_names(match.group(1)) if match else ["?"]))
    if head == "INSERT":
        return Shape("insert", is_insert=True)
    return Shape("write")


@dataclass
class CaptureLog:
    """Everything the capture connections were given (and, in the probe, answered)."""

    calls: list[tuple[str, Any, bool]] = field(default_factory=list)  # statement, params, many
    answers: list[Answer] | None = None  # kept only by the probe
    keys: Iterator[int] = field(default_factory=lambda: itertools.count(STAND_IN_BASE + 1))
    shapes: dict[str, Shape] = field(default_factory=dict)

    def parameter_sets(self) -> int:
        return sum(len(params) if many else 1 for _, params, many in self.calls)

    def insert_parameter_sets(self) -> int:
        shapes = self.shapes
        return sum(
            (len(params) if many else 1) * shapes[stmt].rows_per_set
            for stmt, params, many in self.calls
            if shapes[stmt].is_insert
        )

    def selects(self) -> int:
        return sum(1 for stmt, _, _ in self.calls if self.shapes[stmt].kind == "rows")


class CaptureCursor:
    """A PEP 249 cursor that records what it is given and answers like an empty database."""

    arraysize = 1

    def __init__(self, log: CaptureLog) -> None:
        self._log = log
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, statement: str, parameters: Any = ()) -> CaptureCursor:
        self._run(statement, parameters, False, 1)
        return self

    def executemany(self, statement: str, seq_of_parameters: Sequence[Any]) -> CaptureCursor:
        self._run(statement, seq_of_parameters, True, len(seq_of_parameters))
        return self

    def _run(self, statement: str, parameters: Any, many: bool, sets: int) -> None:
        log = self._log
        log.calls.append((statement, parameters, many))
        shape = log.shapes.get(statement)
        if shape is None:
            shape = log.shapes[statement] = shape_of(statement)
        kind = shape.kind
        self.description = shape.description
        rowcount = sets  # every UPDATE/DELETE "matched" its rows: version checks pass
        lastrowid = None
        rows: list[tuple[Any, ...]] | None = None
        if kind == "insert":
            if not many:
                lastrowid = next(log.keys)
        elif kind == "returning":
            keys = log.keys
            pairs = tuple(zip(shape.key_columns, shape.names, strict=True))
            rows = []
            for _ in range(sets * shape.rows_per_set):
                key = next(keys)
                rows.append(tuple(key if is_key else f"<db:{name}>" for is_key, name in pairs))
        elif kind == "rows":
            rows = list(shape.rows)
            rowcount = -1
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self._rows = rows if rows is not None else []
        if log.answers is not None:
            log.answers.append(Answer(statement, parameters, many, rows, rowcount, lastrowid))

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        size = size or self.arraysize
        out, self._rows = self._rows[:size], self._rows[size:]
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out, self._rows = self._rows, []
        return out

    def close(self) -> None:
        self._rows = []


class TrackingCursor(CaptureCursor):
    """The probe's cursor: also notes which answers SQLAlchemy actually looked at."""

    def _note(self, what: str) -> None:
        answers = self._log.answers
        if answers:
            answers[-1].read.add(what)

    @property
    def rowcount(self) -> int:
        self._note("rowcount")
        return self._rowcount

    @rowcount.setter
    def rowcount(self, value: int) -> None:
        self._rowcount = value

    @property
    def lastrowid(self) -> int | None:
        self._note("lastrowid")
        return self._lastrowid

    @lastrowid.setter
    def lastrowid(self, value: int | None) -> None:
        self._lastrowid = value

    def fetchone(self) -> tuple[Any, ...] | None:
        self._note("rows")
        return super().fetchone()

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._note("rows")
        return super().fetchmany(size)

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._note("rows")
        return super().fetchall()


class CaptureConnection:
    """A PEP 249 connection whose cursors all record into one :class:`CaptureLog`."""

    def __init__(self, log: CaptureLog) -> None:
        self.log = log
        self.isolation_level: str | None = ""  # pysqlite's attribute; "" = not autocommit
        self.commits = 0

    def cursor(self) -> CaptureCursor:
        if self.log.answers is not None:
            return TrackingCursor(self.log)
        return CaptureCursor(self.log)

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def create_function(self, *args: Any, **kw: Any) -> None:
        """pysqlite's hook; the dialect registers regexp() and floor() at connect."""


class _DBAPIError(Exception):
    pass


def capture_dbapi(version: tuple[int, int, int]) -> SimpleNamespace:
    """A module-like PEP 249 object for the SQLite dialect reporting SQLite ``version``."""
    names = [
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ]
    errors = {name: type(name, (_DBAPIError,), {}) for name in names}
    return SimpleNamespace(
        paramstyle="qmark",
        apilevel="2.0",
        threadsafety=1,
        sqlite_version_info=version,
        sqlite_version=".".join(map(str, version)),
        connect=lambda *a, **kw: None,  # never used: the engine has a creator
        **errors,
    )


def capture_engine(
    log: CaptureLog,
    version: tuple[int, int, int] = sqlite3.sqlite_version_info,
    *,
    batched: bool = False,
) -> sa.Engine:
    """A SQLite-dialect engine whose every connection is a :class:`CaptureConnection`.

    ``batched`` lets insertmanyvalues trust autoincrement keys to come back in order (as
    the MySQL dialect does), so the ORM sends multi-row ``INSERT ... VALUES (...), (...)
    RETURNING`` batches instead of one statement per row: the cheapest flush SQLAlchemy
    can do, which a capture (answering keys in order itself) could afford to claim.
    """
    engine = sa.create_engine(
        "sqlite://",
        module=capture_dbapi(version),
        creator=lambda: CaptureConnection(log),
        poolclass=sa.pool.StaticPool,
    )
    if batched:
        engine.dialect.insertmanyvalues_implicit_sentinel = (
            InsertmanyvaluesSentinelOpts.ANY_AUTOINCREMENT
        )
    return engine


# -- timing ----------------------------------------------------------------------------------


def fake_dbapi_seconds(log: CaptureLog) -> float:
    """The fake DBAPI's own share of a capture run: replay its calls on a fresh cursor."""
    replay = CaptureLog(shapes=log.shapes)
    cursor = CaptureCursor(replay)
    calls = list(log.calls)
    settle()
    elapsed: list[float] = []
    with stopwatch(elapsed):
        for statement, parameters, many in calls:
            if many:
                cursor.executemany(statement, parameters)
            else:
                cursor.execute(statement, parameters)
            if cursor.description is not None:
                cursor.fetchall()
    return elapsed[0]


def timed(workload: Workload, repeat: int, tmp: Path) -> None:
    plain_engine = sa.create_engine(sqlite_url(tmp / "plain.sqlite"))
    record_engine = sa.create_engine(sqlite_url(tmp / "record.sqlite"))
    Base.metadata.create_all(record_engine)
    times: dict[str, list[float]] = {k: [] for k in ("a", "b", "b2", "b3", "c", "fake")}
    logs: dict[str, CaptureLog] = {}
    old_sqlite = (3, 34, 0)
    for _ in range(repeat):
        Base.metadata.drop_all(plain_engine)
        Base.metadata.create_all(plain_engine)
        chunks = list(workload.object_chunks())
        settle()
        with stopwatch(times["a"]):
            write_plain(plain_engine, chunks)
        del chunks
        check_rows(plain_engine, workload, "the plain session")

        sides = (
            ("b", sqlite3.sqlite_version_info, False),
            ("b2", old_sqlite, False),
            ("b3", sqlite3.sqlite_version_info, True),
        )
        for side, version, batched in sides:
            log = CaptureLog()
            engine = capture_engine(log, version, batched=batched)
            with engine.connect():  # first connect: dialect initialisation, off the clock
                pass
            log.calls.clear()
            chunks = list(workload.object_chunks())
            settle()
            with stopwatch(times[side]):
                write_plain(engine, chunks)
            del chunks
            engine.dispose()
            inserted = log.insert_parameter_sets()
            if inserted != workload.objects:
                raise SystemExit(f"{side} captured {inserted} INSERT rows, not {workload.objects}")
            if side == "b":
                times["fake"].append(fake_dbapi_seconds(log))
            logs[side] = log
            del log, engine

        chunks = list(workload.object_chunks())
        settle()
        with stopwatch(times["c"]):
            operations = record(record_engine, tmp / "spike.journal", chunks)
        del chunks
        if operations != workload.objects:
            raise SystemExit(f"recorded {operations} operations, expected {workload.objects}")

    a, b, b2, b3, c, fake = (best(times[k]) for k in ("a", "b", "b2", "b3", "c", "fake"))
    print(f"flush_capture_spike: {workload.describe()}, best of {repeat}")
    print(f"  SQLite library {sqlite3.sqlite_version}, SQLAlchemy {sa.__version__}")

    def line(seconds: float) -> str:
        return f"{seconds:7.3f} s  ({workload.objects / seconds:,.0f} objects/s)"

    report(
        [
            ("a  plain Session -> SQLite file", line(a)),
            ("b  plain Session -> capture DBAPI (RETURNING)", line(b)),
            ("   of which the fake DBAPI itself (replayed)", f"{fake:7.3f} s"),
            ("b' b minus the fake DBAPI: SQLAlchemy alone", line(b - fake)),
            ("b2 plain Session -> capture DBAPI (lastrowid)", line(b2)),
            ("b3 plain Session -> capture DBAPI (batched)", line(b3)),
            ("c  JournalingSession deferred_operations", line(c)),
            ("b / a   capture floor vs plain (bar <= 0.5)", f"{b / a:.2f}"),
            ("b' / a  same, fake DBAPI cost removed", f"{(b - fake) / a:.2f}"),
            ("b2 / a  lastrowid path", f"{b2 / a:.2f}"),
            ("b3 / a  batched multi-row RETURNING", f"{b3 / a:.2f}"),
            ("c / a   current recorder vs plain", f"{c / a:.2f}"),
            ("b / c   capture floor vs current recorder", f"{b / c:.2f}"),
        ]
    )
    for side in ("b", "b2", "b3"):
        log = logs[side]
        print(
            f"  {side} captured (last run): {len(log.calls):,} executes, "
            f"{log.parameter_sets():,} parameter sets, {log.insert_parameter_sets():,} INSERT "
            f"rows (objects: {workload.objects:,}), {log.selects()} SELECTs, "
            f"{len({call[0] for call in log.calls})} distinct statements"
        )


# -- the fidelity probe ---------------------------------------------------------------------


class ProbeBase(DeclarativeBase):
    """Models of the probe only (not the bench's)."""


class Employee(ProbeBase):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class Engineer(Employee):
    __tablename__ = "engineer"
    id: Mapped[int] = mapped_column(sa.ForeignKey("employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "engineer"}


class Versioned(ProbeBase):
    __tablename__ = "versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version}


TOKEN = sa.text("(lower(hex(randomblob(8))))")


class Ticket(ProbeBase):
    __tablename__ = "ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))
    token: Mapped[str] = mapped_column(sa.String(16), server_default=TOKEN)
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}


class LazyTicket(ProbeBase):
    __tablename__ = "lazy_ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))
    token: Mapped[str] = mapped_column(sa.String(16), server_default=TOKEN)
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": False}


class Invoice(ProbeBase):
    __tablename__ = "invoice"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(sa.String(20))


@event.listens_for(Invoice, "before_insert")
def _number_invoice(mapper: Any, connection: sa.Connection, target: Invoice) -> None:
    highest = connection.execute(sa.select(sa.func.max(Invoice.id))).scalar()
    target.number = f"INV-{(highest or 0) + 1:05d}"


class Folder(ProbeBase):
    __tablename__ = "folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    files: Mapped[list[File]] = relationship(back_populates="folder")


class File(ProbeBase):
    __tablename__ = "file"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(sa.ForeignKey("folder.id"))
    folder: Mapped[Folder | None] = relationship(back_populates="files")


def existing(obj: Any) -> Any:
    """``obj`` as if loaded from the database earlier: made persistent with no SELECT."""
    make_transient_to_detached(obj)
    return obj


def probe_joined_inheritance(session: Session, sent: list[str]) -> str:
    engineers = [Engineer(name="ada", language="py"), Engineer(name="bob", language="c")]
    session.add_all(engineers)
    session.flush()
    return f"engineer ids after flush: {[e.id for e in engineers]}"


def probe_version_update(session: Session, sent: list[str]) -> str:
    row = existing(Versioned(id=7, name="old", version=3))
    session.add(row)
    row.name = "new"
    session.flush()
    return f"flush passed, version now {row.version}"


def probe_server_default(session: Session, sent: list[str]) -> str:
    eager = Ticket(title="eager")
    lazy = LazyTicket(title="lazy")
    session.add_all([eager, lazy])
    session.flush()
    got = f"eager_defaults token = {eager.token!r}"
    try:
        got += f"; non-eager token (expired, SELECT on access) = {lazy.token!r}"
    except sa.exc.SQLAlchemyError as exc:
        got += f"; non-eager token -> {type(exc).__name__} (its refresh SELECT found no row)"
    return got


def probe_listener_select(session: Session, sent: list[str]) -> str:
    first, second = Invoice(), Invoice()
    session.add(first)
    session.flush()
    session.add(second)
    session.flush()
    return f"listener-assigned numbers: {first.number!r}, {second.number!r}"


def probe_delete_unloaded_collection(session: Session, sent: list[str]) -> str:
    folder = existing(Folder(id=5, name="docs"))
    session.add(folder)
    session.delete(folder)
    session.flush()
    nulled = sum(1 for stmt in sent if stmt.startswith("UPDATE file SET folder_id"))
    return f"UPDATE file SET folder_id=NULL statements sent: {nulled}"


def probe_read_after_commit(session: Session, sent: list[str]) -> str:
    folder = Folder(name="docs")
    session.add(folder)
    session.commit()  # expire_on_commit: the next attribute read SELECTs the row
    try:
        return f"folder.name after commit = {folder.name!r}"
    except sa.exc.SQLAlchemyError as exc:
        return f"folder.name after commit -> {type(exc).__name__} (refresh found no row)"


@dataclass(frozen=True)
class Probe:
    title: str
    run: Callable[[Session, list[str]], str]
    seed: tuple[str, ...] = ()  # rows the real SQLite database holds before the flush


PROBES: list[Probe] = [
    Probe("(a) joined-table inheritance insert (2 engineers)", probe_joined_inheritance),
    Probe(
        "(b) version_id_col update of a row loaded at version 3 "
        "(the database has since moved to version 4)",
        probe_version_update,
        ("INSERT INTO versioned (id, name, version) VALUES (7, 'other', 4)",),
    ),
    Probe("(c) server_default read back (eager_defaults / not eager)", probe_server_default),
    Probe(
        "(d) before_insert listener runs SELECT max(id) on the flush connection",
        probe_listener_select,
    ),
    Probe(
        "(e) extra: delete a folder whose one-to-many files are not loaded (2 files in the DB)",
        probe_delete_unloaded_collection,
        (
            "INSERT INTO folder (id, name) VALUES (5, 'docs')",
            "INSERT INTO file (id, folder_id) VALUES (1, 5), (2, 5)",
        ),
    ),
    Probe(
        "(f) extra: read an attribute after commit (the default expire_on_commit=True)",
        probe_read_after_commit,
    ),
]


def describe(answer: Answer) -> str:
    stmt = " ".join(answer.statement.split())
    if len(stmt) > 100:
        stmt = stmt[:97] + "..."
    if answer.rows is not None and "rows" in answer.read:
        what = "RETURNING rows" if stmt[:6].upper() != "SELECT" else "result rows"
        need = f"needed {what} -> fake gave {answer.rows}"
    elif "lastrowid" in answer.read:
        need = f"needed lastrowid -> fake gave {answer.lastrowid}"
    elif "rowcount" in answer.read:
        need = f"checked rowcount -> fake said {answer.rowcount}"
    else:
        need = "nothing read back"
    return f"{stmt}\n        params {answer.parameters!r}; {need}"


def run_probe(probe: Probe, engine: sa.Engine) -> tuple[str, list[str]]:
    """Run ``probe`` on ``engine``; return its outcome and the statements sent."""
    sent: list[str] = []

    def collect(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", collect)
    try:
        with Session(engine) as session:
            try:
                outcome = probe.run(session, sent)
            except sa.exc.SQLAlchemyError as exc:
                outcome = f"flush failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        event.remove(engine, "before_cursor_execute", collect)
    return outcome, sent


def probe() -> None:
    print(
        f"flush_capture_spike --probe: SQLAlchemy {sa.__version__}, capture DBAPI reporting "
        f"SQLite {sqlite3.sqlite_version} (RETURNING on); each pattern then runs on a real "
        "in-memory SQLite for comparison"
    )
    for item in PROBES:
        log = CaptureLog()
        engine = capture_engine(log)
        with engine.connect():  # dialect initialisation, not listed
            pass
        log.answers = []
        outcome, _ = run_probe(item, engine)
        engine.dispose()
        answers = log.answers
        needed = sum(1 for a in answers if a.read)
        print(f"\n{item.title}")
        for answer in answers:
            print(f"    {describe(answer)}")
        print(f"  capture: {needed} of {len(answers)} statements read an answer back; {outcome}")

        real = sa.create_engine("sqlite://")
        ProbeBase.metadata.create_all(real)
        with real.begin() as conn:
            for sql in item.seed:
                conn.exec_driver_sql(sql)
        real_outcome, real_sent = run_probe(item, real)
        real.dispose()
        print(f"  real   : {real_outcome}")
        captured = [" ".join(a.statement.split()) for a in answers]
        if real_sent != captured:
            print(f"  real SQLite sent {len(real_sent)} statements, the capture {len(captured)}:")
            for stmt in real_sent:
                mark = " " if stmt in captured else "+"
                print(f"    {mark} {stmt[:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000, help="children, ten per parent")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--probe", action="store_true", help="run the fidelity probe instead")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    if args.probe:
        probe()
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        timed(Workload.for_children(args.n), args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
