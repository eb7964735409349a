"""The journal's trust boundary (SPEC §4): what is verified is what is used, no code runs
from an untrusted journal, and journal files are private and never written through a link.

Each test is a regression test for a way a file in a shared directory, edited by someone
without the key, got replayed as other content, ran code, hung a reader or exposed data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import PickleType, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from journal import (
    Journal,
    JournalCorruptError,
    JournalSignatureError,
    JournalWriter,
    OpaqueValue,
    storage,
)
from orm_ext import DeferredOperationError, JournalingSession, SchemaMismatchError
from orm_ext.ledger import LEDGER_TABLE
from tests.conftest import Backend
from tests.reliability.journal_mutations import rechain

KEY = b"trust boundary key, 32 bytes...."


class Base(DeclarativeBase):
    pass


class Shot(Base):
    __tablename__ = "trust_shot"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40))
    extra: Mapped[Any] = mapped_column(PickleType, nullable=True)


class CreatesFile:
    """Unpickling this creates ``target``: the stand-in for code hidden in a journal."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


def sessions(engine: sa.Engine, key: bytes | None = None) -> sessionmaker[JournalingSession]:
    Base.metadata.create_all(engine)
    return sessionmaker(engine, class_=JournalingSession, journal_key=key)


def record(
    factory: sessionmaker[JournalingSession], path: Path, *shots: Shot, **options: Any
) -> None:
    with factory() as session, session.deferred_operations(path, **options):
        session.add_all(shots)


def shots_in(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        return [(s.id, s.code) for s in session.query(Shot).order_by(Shot.id)]


def ledger_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(LEDGER_TABLE):
            return 0
        return int(conn.scalar(sa.text(f"SELECT count(*) FROM {LEDGER_TABLE}")) or 0)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def edit_record(path: Path, sequence: int, edit: Any) -> None:
    """Rewrite record ``sequence``'s body with ``edit(body) -> body``, tag left stale."""
    conn = raw(path)
    key = f"{sequence:012d}"
    value = conn.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()[0]
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (value[:37] + edit(value[37:]), key))
    conn.close()


def alter(path: Path, statements: list[str]) -> None:
    """Run SQL on the journal file itself, as someone with write access to it would."""
    conn = raw(path)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def sealed_empty_journal(directory: Path) -> Path:
    path = directory / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.seal()
    return path


def last_sequence(path: Path) -> int:
    conn = raw(path)
    try:
        return int(conn.execute("SELECT max(key) FROM records").fetchone()[0])
    finally:
        conn.close()


# -- the container ----------------------------------------------------------------------------

CONTAINER_EDITS = {
    "view over the records": [
        "ALTER TABLE records RENAME TO real_records",
        "CREATE VIEW records AS SELECT key, value FROM real_records",
    ],
    "view dropping the tail": [
        "ALTER TABLE records RENAME TO real_records",
        "CREATE VIEW records AS SELECT key, value FROM real_records WHERE key < '000000000002'",
    ],
    "trigger": [
        "CREATE TRIGGER t AFTER UPDATE ON records BEGIN SELECT 1; END",
    ],
    "extra table": ["CREATE TABLE notes (x)"],
    "extra index": ["CREATE INDEX by_value ON records (value)"],
}


@pytest.mark.parametrize("edit", sorted(CONTAINER_EDITS))
def test_container_with_other_objects_is_refused(tmp_path: Path, edit: str) -> None:
    """A journal file holding anything besides the records table is refused when opened."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path, key=KEY) as writer:
        writer.append([{"n": 1}])
        writer.append([{"n": 2}])
        writer.seal()
    alter(path, CONTAINER_EDITS[edit])
    with pytest.raises(JournalCorruptError, match="altered"):
        Journal(path, key=KEY)


def test_replay_of_a_journal_behind_a_view_applies_nothing(
    tmp_path: Path, backend: Backend
) -> None:
    """A signed journal served through a view is refused by replay: no row, no ledger entry."""
    engine = backend.engine()
    factory = sessions(engine, KEY)
    path = tmp_path / "ops.dbm"
    record(factory, path, Shot(code="a"), Shot(code="b"))
    alter(path, CONTAINER_EDITS["view over the records"])
    with factory() as session, pytest.raises(JournalCorruptError):
        session.reconnect_and_commit(path)
    assert shots_in(engine) == []
    assert ledger_rows(engine) == 0


RECURSIVE_VIEW = [
    "ALTER TABLE records RENAME TO real_records",
    "CREATE VIEW records AS WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n) "
    "SELECT printf('%012d', i) AS key, zeroblob(40) AS value FROM n WHERE i < 0",
]


def test_recursive_view_is_refused_without_hanging(tmp_path: Path) -> None:
    """Opening a journal whose records are an endless recursive view fails at once, in every tool."""
    path = sealed_empty_journal(tmp_path)
    alter(path, RECURSIVE_VIEW)
    for argv in (["verify", str(path)], ["inspect", str(path)], ["inspect", "--json", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "orm_ext.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert "altered" in done.stdout + done.stderr


def test_every_reading_step_is_bounded_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement that never yields a row is interrupted by the progress handler, as corrupt."""
    monkeypatch.setattr(storage, "READ_STEP_SECONDS", 0.5)
    path = sealed_empty_journal(tmp_path)
    alter(path, RECURSIVE_VIEW)
    # The reader's own connection class, without the schema check that would refuse the
    # view first: this is the defence for whatever else could make SQLite work forever.
    reader = sqlite3.connect(path, factory=storage.ReadConnection)
    try:
        with pytest.raises(JournalCorruptError, match="took over"):
            list(storage.iter_raw_records(reader, path))
    finally:
        reader.close()


@pytest.mark.parametrize("change", ["another journal", "truncated"])
def test_content_changed_after_verification_is_never_decoded(tmp_path: Path, change: str) -> None:
    """Bytes that change under an open reader after verify() are refused, not decoded as the journal."""
    path, other = tmp_path / "ops.dbm", tmp_path / "other.dbm"
    for target, n in ((path, 1), (other, 2)):
        with JournalWriter.create(target, key=KEY) as writer:
            writer.append([{"journal": n, "i": i, "pad": "x" * 2000} for i in range(50)])
            writer.seal()
    with Journal(path, key=KEY) as journal:
        journal.verify()
        replacement = other.read_bytes() if change == "another journal" else b""
        with open(path, "r+b") as file:  # in place, beneath SQLite's lock
            file.write(replacement)
            file.truncate(len(replacement) or 4096)
        seen: list[Any] = []
        try:
            for _, op in journal.operations():
                seen.append(op)
        except (JournalCorruptError, JournalSignatureError):
            pass
        # Either the snapshot still held the verified content, or reading stopped.
        assert all(op["journal"] == 1 for op in seen)


def test_header_read_at_open_is_the_one_verified(tmp_path: Path) -> None:
    """Verification vouches only for the header the reader opened with, not another one."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path, key=KEY) as writer:
        writer.seal()
    journal = Journal(path, key=KEY)
    try:
        # As if the file had served another header to the open than to the verification.
        journal._header_tag = bytes(32)
        with pytest.raises(JournalCorruptError, match="read differently"):
            journal.verify()
    finally:
        journal.close()


# -- journal ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spell", [str.upper, lambda i: "{" + i + "}", lambda i: i.replace("-", ""), lambda i: "x"]
)
def test_non_canonical_journal_id_is_refused(tmp_path: Path, spell: Any) -> None:
    """A journal id that is not a canonical lower-case UUID is refused, never normalised."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.seal()

    def respell(body: bytes) -> bytes:
        header = json.loads(body)
        header["journal_id"] = spell(header["journal_id"])
        return json.dumps(header).encode()

    edit_record(path, 0, respell)
    rechain(path, None)
    with pytest.raises(JournalCorruptError, match="canonical lower-case UUID"):
        Journal(path)


# -- pickles ----------------------------------------------------------------------------------


def test_unsigned_journal_with_dill_is_refused_before_the_ledger(
    tmp_path: Path, backend: Backend
) -> None:
    """Replaying an unsigned journal that holds a dill value refuses it unrun, claiming nothing."""
    engine = backend.engine()
    factory = sessions(engine)
    marker = tmp_path / "ran"
    path = tmp_path / "ops.dbm"
    record(factory, path, Shot(code="a", extra=CreatesFile(str(marker))))
    with Journal(path) as journal:
        assert journal.header.pickled_records == 1
        [(_, op)] = journal.operations()
        assert isinstance(op["values"]["extra"], OpaqueValue)
    with factory() as session, pytest.raises(JournalSignatureError, match="allow_dill"):
        session.reconnect_and_commit(path)
    assert not marker.exists()
    assert shots_in(engine) == []
    assert ledger_rows(engine) == 0


def test_dill_is_refused_before_a_schema_refusal(tmp_path: Path) -> None:
    """The dill refusal comes first, even for a journal recorded against another schema."""
    marker = tmp_path / "ran"
    path = tmp_path / "ops.dbm"
    record(
        sessions(sa.create_engine(f"sqlite:///{tmp_path / 'rec.sqlite'}")),
        path,
        Shot(code="a", extra=CreatesFile(str(marker))),
    )
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with JournalingSession(empty) as session, pytest.raises(JournalSignatureError):
        session.reconnect_and_commit(path)
    assert not marker.exists()
    assert not sa.inspect(empty).has_table(Shot.__tablename__)


def test_seal_that_hides_a_pickle_is_refused_when_decoded(tmp_path: Path, backend: Backend) -> None:
    """An unsigned journal whose seal denies its pickles is still refused unrun, and nothing is applied."""
    engine = backend.engine()
    factory = sessions(engine)
    marker = tmp_path / "ran"
    path = tmp_path / "ops.dbm"
    record(factory, path, Shot(code="a", extra=CreatesFile(str(marker))))

    def deny(body: bytes) -> bytes:
        seal = json.loads(body)
        seal["pickled"] = 0
        return json.dumps(seal).encode()

    edit_record(path, last_sequence(path), deny)
    rechain(path, None)
    with factory() as session, pytest.raises(JournalSignatureError, match="record 1"):
        session.reconnect_and_commit(path)
    assert not marker.exists()
    assert shots_in(engine) == []
    assert ledger_rows(engine) == 0


def test_dill_values_replay_when_signed_or_allowed(tmp_path: Path, backend: Backend) -> None:
    """A dill value is decoded from a journal verified with the key, or with allow_dill=True."""
    engine = backend.engine()
    signed, unsigned = tmp_path / "signed.dbm", tmp_path / "unsigned.dbm"
    record(sessions(engine, KEY), signed, Shot(code="signed", extra=Fraction(16, 9)))
    record(sessions(engine), unsigned, Shot(code="allowed", extra=Fraction(4, 3)))
    with sessions(engine, KEY)() as session:
        assert session.reconnect_and_commit(signed).applied
    with sessions(engine)() as session:
        assert session.reconnect_and_commit(unsigned, allow_dill=True).applied
    with Session(engine) as session:
        extras = {code: extra for code, extra in session.execute(sa.select(Shot.code, Shot.extra))}
    assert extras == {"signed": Fraction(16, 9), "allowed": Fraction(4, 3)}


def test_recording_can_refuse_dill(tmp_path: Path) -> None:
    """With allow_dill=False, recording a value that needs dill fails at the flush, naming it."""
    factory = sessions(sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    path = tmp_path / "ops.dbm"
    with factory() as session:
        with pytest.raises(DeferredOperationError, match=r"Shot\.extra"):
            with session.deferred_operations(path, allow_dill=False):
                session.add(Shot(code="a", extra=Fraction(1, 3)))
                session.flush()
    with factory() as session, session.deferred_operations(path, overwrite=True, allow_dill=False):
        session.add(Shot(code="plain", extra=[1, "two", None]))
    with Journal(path) as journal:
        assert journal.header.pickled_records == 0


# -- malformed operations ---------------------------------------------------------------------

GOOD = {
    "op": "insert",
    "class": f"{__name__}:Shot",
    "table": "trust_shot",
    "ref": 1,
    "values": {"code": "a"},
}
# The second insert of the journal, as a recorder would write it.
NEXT = {**GOOD, "ref": 2}
MALFORMED: dict[str, tuple[type[Exception], list[Any]]] = {
    "not a mapping": (JournalCorruptError, [[1, 2]]),
    "unknown kind": (JournalCorruptError, [{**NEXT, "op": "upsert"}]),
    "values not a mapping": (JournalCorruptError, [{**NEXT, "values": ["code", "a"]}]),
    "ref not an int": (JournalCorruptError, [{**NEXT, "ref": "2"}]),
    "ref used twice": (JournalCorruptError, [{**NEXT, "ref": 1}]),
    "missing values": (JournalCorruptError, [{k: v for k, v in NEXT.items() if k != "values"}]),
    "unmapped attribute": (SchemaMismatchError, [{**NEXT, "values": {"__class__": 1}}]),
    "target of the wrong arity": (
        JournalCorruptError,
        [
            {
                "op": "update",
                "class": GOOD["class"],
                "table": "trust_shot",
                "target": [1, 2],
                "values": {"code": "b"},
                "old": {"code": "a"},
            }
        ],
    ),
    "malformed where": (
        JournalCorruptError,
        [
            {
                "op": "bulk_delete",
                "class": GOOD["class"],
                "table": "trust_shot",
                "where": ["cmp", "eq"],
            }
        ],
    ),
    "link to an unknown relationship": (SchemaMismatchError, [{**NEXT, "links": {"owner": [1]}}]),
    "refs entry malformed": (JournalCorruptError, [{**NEXT, "refs": {"code": [1]}}]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_operation_is_a_clear_refusal(
    tmp_path: Path, backend: Backend, case: str
) -> None:
    """A well-chained journal with a malformed operation is refused by name, applying nothing."""
    engine = backend.engine()
    factory = sessions(engine)
    path = tmp_path / "ops.dbm"
    error, operations = MALFORMED[case]
    with JournalWriter.create(path) as writer:
        writer.append([GOOD])
        writer.append(operations)
        writer.seal()
    with factory() as session, pytest.raises(error, match="operation 2"):
        session.reconnect_and_commit(path, allow_schema_drift=True)
    assert shots_in(engine) == []
    assert ledger_rows(engine) == 0


# -- files ----------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_journal_and_side_files_are_private(tmp_path: Path) -> None:
    """A new journal and its write-ahead files are readable by their owner only."""
    factory = sessions(sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    path = tmp_path / "ops.dbm"
    old_umask = os.umask(0o022)
    try:
        with factory() as session, session.deferred_operations(path):
            session.add(Shot(code="a"))
            session.flush()
            side = [Path(f"{path}{s}") for s in ("", "-wal", "-shm")]
            assert {p.name: mode(p) for p in side} == {p.name: 0o600 for p in side}
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlink_at_the_path_is_never_followed(tmp_path: Path, overwrite: bool) -> None:
    """A symbolic link at a journal's path is refused or replaced; its target is never written."""
    factory = sessions(sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "ops.dbm"
    path.symlink_to(victim)
    with factory() as session:
        if overwrite:
            with session.deferred_operations(path, overwrite=True):
                session.add(Shot(code="a"))
        else:
            with pytest.raises(FileExistsError):
                with session.deferred_operations(path):
                    session.add(Shot(code="a"))
    assert victim.read_text() == "precious"
    assert path.is_symlink() is not overwrite
    if overwrite:
        assert mode(path) == 0o600
        with Journal(path) as journal:
            journal.verify()
            assert journal.header.operation_count == 1


def test_dangling_symlink_is_not_created_through(tmp_path: Path) -> None:
    """A link to a file that does not exist yet does not make recording create that file."""
    target = tmp_path / "elsewhere.dbm"
    path = tmp_path / "ops.dbm"
    path.symlink_to(target)
    with pytest.raises(FileExistsError):
        JournalWriter.create(path)
    assert not target.exists()


def test_overwrite_replaces_the_old_file_by_rename(tmp_path: Path) -> None:
    """overwrite=True puts a new file in place; a reader of the old one keeps reading the old one."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.append([{"n": "old"}])
        writer.seal()
    old_inode = os.stat(path).st_ino
    with Journal(path) as old:
        with JournalWriter.create(path, overwrite=True) as writer:
            writer.append([{"n": "new"}])
            writer.seal()
        assert [op["n"] for _, op in old.operations()] == ["old"]
    assert os.stat(path).st_ino != old_inode
    with Journal(path) as new:
        assert [op["n"] for _, op in new.operations()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["ops.dbm"]


def test_planted_write_ahead_link_is_removed_not_followed(tmp_path: Path) -> None:
    """A -wal link planted beside a new journal's path is removed, and its target left alone."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "ops.dbm"
    Path(f"{path}-wal").symlink_to(victim)
    with JournalWriter.create(path) as writer:
        writer.append([{"n": 1}])
        writer.seal()
    assert victim.read_text() == "precious"
    with Journal(path) as journal:
        journal.verify()


def test_cli_never_echoes_a_pickle_run(tmp_path: Path) -> None:
    """CLI inspect and verify of an unsigned journal with a hostile dill value run nothing."""
    marker = tmp_path / "ran"
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.append([{**GOOD, "values": {"code": "a", "extra": CreatesFile(str(marker))}}])
        writer.seal()
    script = textwrap.dedent(
        """
        import sys
        from orm_ext.cli import main
        raise SystemExit(main(sys.argv[1:]))
        """
    )
    for argv in (["inspect", str(path)], ["inspect", "--json", str(path)], ["verify", str(path)]):
        done = subprocess.run(
            [sys.executable, "-c", script, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_pipe_at_the_path_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO named like a journal is refused at once instead of blocking the reader."""
    path = tmp_path / "ops.dbm"
    os.mkfifo(path)
    script = f"from journal import Journal\nJournal({str(path)!r})"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert "JournalCorruptError" in done.stderr
    assert "not a regular file" in done.stderr


@pytest.mark.parametrize("key", [None, KEY])
def test_large_record_is_verified_in_pieces(tmp_path: Path, key: bytes | None) -> None:
    """A batch record larger than a piece verifies and decodes intact, and one flipped byte in it is caught."""
    path = tmp_path / "ops.dbm"
    value = os.urandom(3 * storage.PIECE_SIZE + 17)
    with JournalWriter.create(path, key=key) as writer:
        writer.append([{"blob": value}])
        writer.seal()
    with Journal(path, key=key) as journal:
        journal.verify()
        [(_, op)] = journal.operations()
        assert op["blob"] == value
    conn = raw(path)
    stored = conn.execute("SELECT value FROM records WHERE key = ?", (f"{1:012d}",)).fetchone()[0]
    middle = len(stored) // 2
    flipped = stored[:middle] + bytes([stored[middle] ^ 1]) + stored[middle + 1 :]
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (flipped, f"{1:012d}"))
    conn.close()
    with Journal(path, key=key) as journal:
        with pytest.raises(JournalSignatureError if key else JournalCorruptError):
            journal.verify()
