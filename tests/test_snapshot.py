"""Offline reads: ``reusing_query_results(snapshot=PATH)`` and the snapshot file (SPEC §9)."""

from __future__ import annotations

import asyncio
import datetime as dt
import fractions
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import (
    Engine,
    Integer,
    TypeDecorator,
    create_engine,
    func,
    make_url,
    select,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    selectinload,
    subqueryload,
)

from journal import Journal, JournalWriter, Snapshot
from journal.storage import PREFIX_SIZE, SNAPSHOT_APPLICATION_ID
from orm_ext import (
    AsyncJournalingSession,
    JournalCorruptError,
    JournalIncompleteError,
    JournalingSession,
    JournalSignatureError,
    ReplayConflictError,
    SnapshotMissError,
)
from orm_ext.cli import main
from tests.conftest import Backend
from tests.models import Asset, AssetVersion, Component, Post, Tag, Task
from tests.offline_worker import ASSET, read, work
from tests.reliability.journal_mutations import rechain
from tests.scenario import make_sessions, replay, seed, table_rows, watch

REPO = Path(__file__).resolve().parent.parent


class OtherBase(DeclarativeBase):
    """Another program's registry in the same process (as ``orm_ext.demo`` is)."""


class OtherTask(OtherBase):
    """The test models' ``task`` table, mapped again with another column: snapshots must
    fingerprint the tables their statements read, not whichever mapping has the name."""

    __tablename__ = "task"
    id: Mapped[int] = mapped_column(primary_key=True)
    priority: Mapped[int] = mapped_column(default=0)


def unreachable(backend: Backend, tmp_path: Path) -> str:
    """A URL of the backend's dialect at which no database answers."""
    if backend.name == "sqlite":
        return f"sqlite:///{tmp_path / 'no-such-directory' / 'db.sqlite'}"
    return make_url(backend.url).set(port=1).render_as_string(hide_password=False)


def offline_session(backend: Backend, tmp_path: Path, **kw: Any) -> JournalingSession:
    return JournalingSession(create_engine(unreachable(backend, tmp_path)), **kw)


def take_snapshot(engine: Engine, path: Path, **kw: Any) -> None:
    """Run the worker's reads online inside a snapshot block."""
    with make_sessions(engine)(**kw) as session, session.reusing_query_results(snapshot=path):
        read(session)


def run_worker(url: str, snapshot: Path, journal: Path, *extra: str) -> dict[str, Any]:
    """Run the offline worker in a fresh process; return its JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.offline_worker", url, str(snapshot), str(journal), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 3), done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def online(backend: Backend) -> Engine:
    """Database A with the seed scenario."""
    engine = backend.engine()
    seed(engine)
    return engine


# -- the offline worker, end to end ---------------------------------------------------------


def test_an_offline_worker_records_what_a_direct_run_writes(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """A fresh process with an unreachable database reads from the snapshot, edits loaded
    objects and creates related ones; replaying its journal gives the direct run's rows."""
    snapshot, journal = tmp_path / "reads.snapshot", tmp_path / "ops.journal"
    take_snapshot(online, snapshot)
    direct = backend.engine("b")
    seed(direct)
    with make_sessions(direct)() as session:
        expected = work(session)
        session.commit()

    seen = run_worker(unreachable(backend, tmp_path), snapshot, journal)

    assert seen["versions"] == expected["versions"] and seen["task"] == expected["task"]
    assert seen["snapshot_hits"] >= 3 and seen["operations"] == 5
    result = replay(online, journal)
    assert result.applied and not result.conflicts
    assert table_rows(online) == table_rows(direct)


def test_a_row_changed_since_the_snapshot_is_a_conflict_at_replay(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """An object loaded from the snapshot carries the snapshot's values as old values: a row
    changed in the database since then is a ReplayConflictError, or listed by "skip"."""
    snapshot, journal = tmp_path / "reads.snapshot", tmp_path / "ops.journal"
    take_snapshot(online, snapshot)
    with Session(online) as other:
        other.execute(update(AssetVersion).values(comment="changed meanwhile"))
        other.commit()

    seen = run_worker(unreachable(backend, tmp_path), snapshot, journal)
    assert seen["operations"] == 5

    before = table_rows(online)
    with pytest.raises(ReplayConflictError) as caught:
        replay(online, journal)
    assert caught.value.table == "asset_version"
    # Every column the worker saw is checked (SPEC §9.4), the one it edited among them.
    assert caught.value.expected is not None and caught.value.expected["comment"] is None
    assert caught.value.columns == ("comment",)
    assert caught.value.actual is not None and caught.value.actual["comment"] == "changed meanwhile"
    assert table_rows(online) == before

    skipped = replay(online, journal, on_conflict="skip")
    assert skipped.applied and len(skipped.conflicts) == 1
    with Session(online) as check:
        comments = check.scalars(select(AssetVersion.comment).order_by(AssetVersion.id)).all()
    assert comments == ["changed meanwhile", None]


def test_a_change_since_the_snapshot_to_a_column_not_edited_is_a_conflict(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """The worker edits a version's comment; another writer published that version since
    the snapshot. The edit was made on what the snapshot showed: replay refuses it."""
    snapshot, journal = tmp_path / "reads.snapshot", tmp_path / "ops.journal"
    take_snapshot(online, snapshot)
    with Session(online) as other:
        other.execute(update(AssetVersion).values(is_published=True))
        other.commit()

    seen = run_worker(unreachable(backend, tmp_path), snapshot, journal)
    assert seen["operations"] == 5

    before = table_rows(online)
    with pytest.raises(ReplayConflictError) as caught:
        replay(online, journal)
    assert caught.value.table == "asset_version"
    assert caught.value.columns == ("is_published",)
    assert table_rows(online) == before


def test_a_statement_missing_from_the_snapshot_raises_offline_in_a_fresh_process(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """Offline, a statement the snapshot lacks raises SnapshotMissError naming its SQL."""
    snapshot, journal = tmp_path / "reads.snapshot", tmp_path / "ops.journal"
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(select(Asset).where(Asset.name == ASSET)).one()  # no eager load

    seen = run_worker(unreachable(backend, tmp_path), snapshot, journal)
    assert "asset" in seen["miss"].lower() and "SELECT" in seen["miss"]


# -- answering from the snapshot ------------------------------------------------------------


def test_offline_answers_load_the_identity_map_with_eager_relationships(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """Joined, selectin and subquery eager loads, lazy loads and column queries are answered
    offline with identity-mapped objects, as a plain load gives them."""
    snapshot = tmp_path / "reads.snapshot"
    statements = [
        select(Asset).options(joinedload(Asset.versions).joinedload(AssetVersion.task)),
        select(Asset).options(selectinload(Asset.versions).selectinload(AssetVersion.components)),
        select(AssetVersion).options(subqueryload(AssetVersion.components)),
        select(Asset.name, func.count(AssetVersion.id)).join(Asset.versions).group_by(Asset.name),
    ]

    def run(session: JournalingSession) -> list[Any]:
        joined = session.scalars(statements[0]).unique().one()
        selected = session.scalars(statements[1]).one()
        versions = session.scalars(statements[2]).all()
        counts = session.execute(statements[3]).all()
        assert joined is selected and versions[0] is joined.versions[0]
        return [
            joined.name,
            [(v.version, v.task.name if v.task else None) for v in joined.versions],
            [[c.name for c in v.components] for v in versions],
            [[loc.resource_identifier for loc in c.locations] for c in versions[0].components],
            [tuple(row) for row in counts],
        ]

    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        expected = run(session)

    log = watch(online)
    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot) as memo:
            assert run(session) == expected
            assert memo.snapshot_hits >= 5 and memo.misses == 0
            session.scalars(statements[0]).unique().one()
            assert memo.hits == 1  # later answers come from the in-memory memo
    assert log.statements == []


def test_an_object_already_in_the_session_keeps_its_values(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """As in a plain load, an answer from the snapshot does not overwrite an object the
    identity map already holds."""
    snapshot = tmp_path / "reads.snapshot"
    statement = select(Asset).where(Asset.name == ASSET)
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(statement).one()
        session.scalars(select(Task)).all()

    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot):
            asset = session.scalars(statement).one()
            asset.name = "renamed in memory"
            with session.no_autoflush:
                session.expire_all()  # drops the in-memory memo: the snapshot answers again
                assert session.scalars(select(Task)).all()[0].name == "compositing"


def test_a_snapshot_is_extended_and_a_rerun_online_replaces_rows(
    online: Engine, tmp_path: Path
) -> None:
    """An existing snapshot is opened and extended; refresh=True reads every statement again
    and replaces its rows."""
    snapshot = tmp_path / "reads.snapshot"
    by_name = select(Asset).where(Asset.name == ASSET)
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(by_name).one()
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(select(Task)).all()
    with Snapshot(snapshot) as snap:
        assert sorted(e.row_count for e in snap.entries()) == [1, 1]

    with Session(online) as other:
        other.execute(update(Task).values(name="renamed"))
        other.commit()
    log = watch(online)
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot) as memo:
            assert session.scalars(select(Task)).one().name == "compositing"  # from the file
            assert memo.snapshot_hits == 1 and log.selects() == []
        with session.reusing_query_results(snapshot=snapshot, refresh=True) as memo:
            session.expire_all()
            assert session.scalars(select(Task)).one().name == "renamed"
            assert memo.snapshot_hits == 0 and len(log.selects()) == 1
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot) as memo:
            assert session.scalars(select(Task)).one().name == "renamed"
            assert memo.snapshot_hits == 1


def test_invalidate_drops_entries_from_the_block_and_the_file(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """QueryMemo.invalidate(entity or table) drops what read it, in memory and in the file."""
    snapshot = tmp_path / "reads.snapshot"
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot) as memo:
            session.scalars(select(Asset)).all()
            session.scalars(select(Task)).all()
            session.scalars(select(Post).options(selectinload(Post.tags))).all()
            assert memo.invalidate(Asset, "POST") == 4  # two results, two snapshot entries
            assert len(memo) == 1
            with pytest.raises(TypeError, match="invalidate"):
                memo.invalidate(42)
    with Snapshot(snapshot) as snap:
        assert [e.tables for e in snap.entries()] == [("task",)]

    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot):
            assert session.scalars(select(Task)).one().name == "compositing"
            with pytest.raises(SnapshotMissError) as caught:
                session.scalars(select(Asset)).all()
    assert "asset" in caught.value.sql and caught.value.statement is not None
    assert str(snapshot) in str(caught.value)


def test_writes_through_the_session_drop_stale_entries_from_the_file(
    online: Engine, tmp_path: Path
) -> None:
    """A flush or DML statement online drops the entries reading its tables from the file;
    a rollback also drops what was read after its writes."""
    snapshot = tmp_path / "reads.snapshot"
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot):
            session.scalars(select(Task)).all()
            session.scalars(select(Asset)).all()
            session.add(Task(name="lighting"))
            session.flush()
            session.commit()
    with Snapshot(snapshot) as snap:
        assert [e.tables for e in snap.entries()] == [("asset",)]

    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot):
            session.execute(update(Task).values(name="uncommitted"))
            assert {t.name for t in session.scalars(select(Task))} == {"uncommitted"}
            session.rollback()
    with Snapshot(snapshot) as snap:
        assert [e.tables for e in snap.entries()] == [("asset",)]


def test_a_deferred_block_does_not_drop_snapshot_entries(online: Engine, tmp_path: Path) -> None:
    """Writes recorded in a deferred block have not reached the database: the entries stay."""
    snapshot = tmp_path / "reads.snapshot"
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot):
            with session.deferred_operations(tmp_path / "ops.journal"):
                read(session)
                session.add(Task(name="lighting"))
                session.flush()
    with Snapshot(snapshot) as snap:
        assert "task" in {t for e in snap.entries() for t in e.tables}


# -- refusals -------------------------------------------------------------------------------


def test_an_entry_older_than_max_age_is_refused_offline_and_reread_online(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """Offline, an entry older than max_age raises SnapshotMissError saying its age; online
    it is read again and replaced."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot)
    time.sleep(0.2)
    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot, max_age=0.1):
            with pytest.raises(SnapshotMissError, match="longer than max_age"):
                read(session)
        with session.reusing_query_results(snapshot=snapshot, max_age=dt.timedelta(hours=1)):
            assert read(session).name == ASSET

    with Snapshot(snapshot) as snap:
        before = min(e.read_at for e in snap.entries())
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot, max_age=0.1) as memo:
            read(session)
            assert memo.snapshot_hits == 0
    with Snapshot(snapshot) as snap:
        assert min(e.read_at for e in snap.entries()) > before


def test_a_snapshot_of_another_schema_is_refused_in_a_fresh_process(
    online: Engine, tmp_path: Path
) -> None:
    """A process whose mapping of a table differs from the snapshot's gets
    SchemaMismatchError when it enters the block, naming the difference."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot)
    child = f"""
import sys
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from orm_ext import JournalingSession, SchemaMismatchError

class Base(DeclarativeBase):
    pass

class Asset(Base):
    __tablename__ = "asset"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    archived: Mapped[bool] = mapped_column(default=False)

session = JournalingSession(create_engine("sqlite://"))
try:
    with session.reusing_query_results(snapshot={str(snapshot)!r}):
        pass
except SchemaMismatchError as err:
    print(err.differences)
    sys.exit(7)
"""
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7, done.stderr
    assert "table asset: column archived was added" in done.stdout


def test_signing_and_keys(online: Engine, tmp_path: Path) -> None:
    """A snapshot is signed with the session's key: a wrong or missing key, or an unsigned
    snapshot while a key is configured, is refused when the block is entered."""
    signed, unsigned = tmp_path / "signed.snapshot", tmp_path / "unsigned.snapshot"
    take_snapshot(online, signed, journal_key="k" * 32)
    take_snapshot(online, unsigned)
    with Snapshot(signed, key="k" * 32) as snap:
        assert snap.signed and len(snap.entries()) >= 2
    cases = [(signed, "w" * 32), (signed, None), (unsigned, "k" * 32)]
    for path, key in cases:
        with make_sessions(online)(journal_key=key) as session:
            with pytest.raises(JournalSignatureError, match=str(path)):
                with session.reusing_query_results(snapshot=path):
                    pass


def test_a_tampered_snapshot_is_refused_and_nothing_is_served(
    online: Engine, tmp_path: Path
) -> None:
    """An edited byte, a re-chained edit under a key, a truncated file: refused on entry."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot, journal_key="k" * 32)
    conn = sqlite3.connect(snapshot)
    key, value = conn.execute(
        "SELECT key, value FROM records ORDER BY key LIMIT 1 OFFSET 1"
    ).fetchone()
    edited = value[:-1] + bytes([value[-1] ^ 1])
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (edited, key))
    conn.commit()
    conn.close()
    with make_sessions(online)(journal_key="k" * 32) as session:
        with pytest.raises(JournalSignatureError):
            with session.reusing_query_results(snapshot=snapshot):
                pass

    plain = tmp_path / "plain.snapshot"
    take_snapshot(online, plain)
    conn = sqlite3.connect(plain)
    conn.execute("DELETE FROM records WHERE key = (SELECT max(key) FROM records)")
    conn.commit()
    conn.close()
    with make_sessions(online)() as session:
        with pytest.raises(JournalIncompleteError, match="query snapshot"):
            with session.reusing_query_results(snapshot=plain):
                pass


def crafted_snapshot(path: Path, entries: list[Any], *, pickles: bool = False) -> None:
    """Write a validly chained, unsigned snapshot holding ``entries`` as they are."""
    writer = JournalWriter.create(
        path,
        meta={"kind": "query-snapshot"},
        pickles=pickles,
        application_id=SNAPSHOT_APPLICATION_ID,
    )
    writer.append(entries)
    writer.seal()


@pytest.mark.parametrize(
    "entries",
    [
        [["not hex", "SELECT 1", [], "2026-01-01T00:00:00+00:00", 0, b"\x92\x90\x90"]],
        [["a" * 64, "SELECT 1", ["asset"], "yesterday", 0, b"\x92\x90\x90"]],
        [["a" * 64, "SELECT 1", ["asset"], "2026-01-01T00:00:00", 0, b"\x92\x90\x90"]],
        [["a" * 64, "SELECT 1", ["asset"], "2026-01-01T00:00:00+00:00", -1, b""]],
        [["a" * 64, "SELECT 1", ["asset"], "2026-01-01T00:00:00+00:00", 0, b"x"]] * 2,
        [{"op": "insert"}],
    ],
    ids=["key", "time", "naive-time", "count", "duplicate", "journal-operation"],
)
def test_a_crafted_snapshot_is_refused_with_an_error_naming_it(
    online: Engine, tmp_path: Path, entries: list[Any]
) -> None:
    """Malformed entries in a correctly chained file are refused with JournalCorruptError."""
    snapshot = tmp_path / "crafted.snapshot"
    crafted_snapshot(snapshot, entries)
    with make_sessions(online)() as session:
        with pytest.raises(JournalCorruptError, match=str(snapshot)):
            with session.reusing_query_results(snapshot=snapshot):
                pass


def test_rows_that_are_not_what_they_claim_are_refused_when_used(
    online: Engine, tmp_path: Path
) -> None:
    """A crafted entry under a real statement's key with malformed rows or a pickle is
    refused when the statement asks for it, naming the file; nothing is unpickled."""
    snapshot = tmp_path / "reads.snapshot"
    statement = select(Task)
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(statement).all()
    with Snapshot(snapshot) as snap:
        (entry,) = snap.entries()
    from journal import codec

    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    payloads = {
        "width": codec.encode([["id", "name"], [[1]]]),
        "pickle": codec.encode([["id", "name"], [[1, Boom()]]]),
    }
    for name, payload in payloads.items():
        crafted = tmp_path / f"{name}.snapshot"
        record = entry.record()
        record[5] = payload
        crafted_snapshot(crafted, [record], pickles=True)
        with make_sessions(online)() as session:
            with session.reusing_query_results(snapshot=crafted):
                with pytest.raises(JournalCorruptError, match=str(crafted)):
                    session.scalars(statement).all()
    assert not (tmp_path / "pwned").exists()


def test_journals_and_snapshots_are_never_taken_for_each_other(
    online: Engine, tmp_path: Path
) -> None:
    """A journal passed as a snapshot is refused, and a snapshot is never replayed."""
    snapshot, journal = tmp_path / "reads.snapshot", tmp_path / "ops.journal"
    take_snapshot(online, snapshot)
    with make_sessions(online)() as session:
        with session.deferred_operations(journal):
            session.add(Task(name="lighting"))
        with pytest.raises(JournalCorruptError, match="not a query snapshot"):
            with session.reusing_query_results(snapshot=journal):
                pass
        with pytest.raises(JournalCorruptError, match="query snapshot, not a journal"):
            session.reconnect_and_commit(snapshot)
    garbage = tmp_path / "garbage.snapshot"
    garbage.write_bytes(os.urandom(4096))
    with make_sessions(online)() as session:
        with pytest.raises(JournalCorruptError, match=str(garbage)):
            with session.reusing_query_results(snapshot=garbage):
                pass


# -- the file -------------------------------------------------------------------------------


def test_the_file_is_private_durable_and_readable_without_sqlalchemy(
    online: Engine, tmp_path: Path
) -> None:
    """Mode 0600, one self-contained file, and ``journal.Snapshot`` reads it in a process
    where SQLAlchemy cannot be imported."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot, journal_key="k" * 32)
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if "snapshot" in p.name) == [snapshot.name]
    child = f"""
import sys
sys.modules["sqlalchemy"] = None
from journal import Snapshot
with Snapshot({str(snapshot)!r}, key="k" * 32) as snap:
    for entry in snap.entries():
        columns, rows = entry.rows()
        print(entry.row_count, len(rows), entry.tables, entry.sql.split()[0])
    print(sorted(snap.header.meta["schema"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "1 1 ('asset',) SELECT" in done.stdout
    assert "'asset_version'" in done.stdout


def test_arguments_are_checked_at_once(online: Engine, tmp_path: Path) -> None:
    """Bad options raise one clear error before anything is read."""
    with make_sessions(online)() as session:
        with pytest.raises(ValueError, match="need a snapshot"):
            with session.reusing_query_results(refresh=True):
                pass
        with pytest.raises(ValueError, match="max_age must not be negative"):
            with session.reusing_query_results(snapshot=tmp_path / "s", max_age=-1):
                pass
        with pytest.raises(TypeError, match="max_age"):
            with session.reusing_query_results(snapshot=tmp_path / "s", max_age="1h"):  # type: ignore[arg-type]
                pass
        with session.reusing_query_results():
            with pytest.raises(ValueError, match="outermost"):
                with session.reusing_query_results(snapshot=tmp_path / "s"):
                    pass


def test_a_snapshot_block_answers_online_reads_like_a_plain_session(
    online: Engine, tmp_path: Path
) -> None:
    """Online, results through the snapshot path equal a plain session's, Core included."""
    snapshot = tmp_path / "reads.snapshot"
    statements = [
        select(Asset.id, Asset.name),
        select(AssetVersion.__table__),
        select(Component.id, Component.name).where(Component.name.in_(["main", "other"])),
        select(Tag).where(Tag.label == "none"),
    ]
    with Session(online) as plain:
        expected = [[tuple(r) for r in plain.execute(s)] for s in statements]
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=snapshot):
            got = [[tuple(r) for r in session.execute(s)] for s in statements]
    assert [[tuple(map(str, r)) for r in rows] for rows in got] == [
        [tuple(map(str, r)) for r in rows] for rows in expected
    ]
    with Snapshot(snapshot) as snap:
        assert sorted(e.row_count for e in snap.entries()) == [0, 1, 1, 1]


def test_a_signed_header_cannot_be_edited(online: Engine, tmp_path: Path) -> None:
    """An edit of a signed snapshot's header (its schema fingerprint), re-chained without
    the key, is refused; ``journal.Journal`` refuses to read a snapshot as a journal."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot, journal_key="k" * 32)
    conn = sqlite3.connect(snapshot)
    value = conn.execute("SELECT value FROM records WHERE key = ?", ("0" * 12,)).fetchone()[0]
    header = json.loads(value[PREFIX_SIZE:])
    header["meta"]["schema"] = {}
    conn.execute(
        "UPDATE records SET value = ? WHERE key = ?",
        (value[:PREFIX_SIZE] + json.dumps(header).encode(), "0" * 12),
    )
    conn.commit()
    conn.close()
    rechain(snapshot, None)
    with make_sessions(online)(journal_key="k" * 32) as session:
        with pytest.raises(JournalSignatureError):
            with session.reusing_query_results(snapshot=snapshot):
                pass
    with pytest.raises(JournalCorruptError, match="query snapshot, not a journal"):
        Journal(snapshot)


def test_reads_in_an_offline_deferred_block_see_the_blocks_writes(
    backend: Backend, online: Engine, tmp_path: Path
) -> None:
    """Offline, a query over a table the block wrote answers with the snapshot's rows and
    the block's own changes, as online (SPEC §3.11); the derived statements it needs are
    in the snapshot when the block ran online, and otherwise it is a SnapshotMissError."""
    snapshot = tmp_path / "reads.snapshot"
    # Not ordered by text: on PostgreSQL the block's reads ask the database for its
    # collation to sort text as it would, and offline there is none to ask.
    statement = select(Task).where(Task.name != "")

    def block(session: JournalingSession, journal: Path) -> list[list[str]]:
        with session.deferred_operations(journal):
            session.add(Task(name="animation"))
            session.flush()
            first = sorted(t.name for t in session.scalars(statement))
            session.scalars(select(Task).where(Task.name == "compositing")).one().name = "comp"
            return [first, sorted(t.name for t in session.scalars(statement))]

    # The block's reads over a table it wrote ask the database for derived statements:
    # the snapshot holds them when it is taken by running the same block online.
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        expected = block(session, tmp_path / "online.journal")
    assert expected == [["animation", "compositing"], ["animation", "comp"]]

    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot) as memo:
            assert block(session, tmp_path / "offline.journal") == expected
            assert memo.snapshot_hits >= 2
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=tmp_path / "plain.snapshot"):
            session.scalars(statement).all()
    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=tmp_path / "plain.snapshot"):
            with pytest.raises(SnapshotMissError, match="task"):
                block(session, tmp_path / "refused.journal")


def test_inspect_lists_a_snapshots_statements(online: Engine, tmp_path: Path) -> None:
    """``orm-journal inspect`` shows a snapshot's header, statements, row counts and ages, as
    text and JSON, and lists nothing from a snapshot that does not verify."""
    snapshot = tmp_path / "reads.snapshot"
    take_snapshot(online, snapshot, journal_key="k" * 32)

    def run(*argv: str) -> tuple[int, str]:
        buffer = io.StringIO()
        status = main(list(argv), console=Console(file=buffer, width=200, color_system=None))
        return status, buffer.getvalue()

    status, out = run("inspect", "--key", "k" * 32, str(snapshot))
    assert status == 0
    assert "query snapshot" in out and "signed, signature verified" in out
    with Snapshot(snapshot, key="k" * 32) as snap:
        entries = snap.entries()
    rows = sum(e.row_count for e in entries)
    assert f"{len(entries)} statement(s), {rows} row(s)" in out
    assert "SELECT asset.id, asset.name FROM asset WHERE asset.name = " in out

    status, out = run("inspect", "--json", "--limit", "1", "--key", "k" * 32, str(snapshot))
    document = json.loads(out)
    assert document["kind"] == "query-snapshot" and document["verified"]
    assert len(document["statements"]) == 1 and document["statements_left_out"] >= 2
    assert document["statements"][0]["rows"] == 1
    assert document["statements"][0]["age_seconds"] >= 0

    status, out = run("inspect", "--key", "w" * 32, str(snapshot))
    assert status == 0 and "NOT VERIFIED" not in out
    assert "INVALID" in out and "statements not shown" in out and "SELECT" not in out


def test_the_async_session_answers_from_a_snapshot_offline(online: Engine, tmp_path: Path) -> None:
    """``AsyncJournalingSession.reusing_query_results(snapshot=...)`` saves online (aiosqlite)
    and answers offline, eager loads included."""
    if online.dialect.name != "sqlite":
        pytest.skip("the async driver of these tests is aiosqlite")
    snapshot = tmp_path / "reads.snapshot"
    statement = select(Asset).options(selectinload(Asset.versions))

    async def versions(url: str) -> tuple[list[int], int]:
        engine = create_async_engine(url)
        try:
            async with AsyncJournalingSession(engine) as session:
                async with session.reusing_query_results(snapshot=snapshot) as memo:
                    asset = (await session.scalars(statement)).one()
                    return [v.version for v in asset.versions], memo.snapshot_hits
        finally:
            await engine.dispose()

    url = online.url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    assert asyncio.run(versions(url)) == ([1], 0)
    missing = f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'db.sqlite'}"
    assert asyncio.run(versions(missing)) == ([1], 2)


class Fraction(TypeDecorator[Any]):
    """A column read as ``fractions.Fraction``: not a standard SQL value."""

    impl = Integer
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else fractions.Fraction(value, 1)


def test_a_result_that_needs_a_pickle_is_left_out_of_the_snapshot(
    backend: Backend, online: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows holding a value that is not a standard SQL value are logged and left out (a
    snapshot never pickles); offline their statement is a SnapshotMissError."""
    snapshot = tmp_path / "reads.snapshot"
    statement = select(Task.name, type_coerce(Task.id, Fraction()))
    with caplog.at_level(logging.WARNING, logger="orm_ext.query"):
        with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
            assert session.execute(statement).one()[1] == fractions.Fraction(1)
            session.scalars(select(Task)).all()
    assert "Not saved in query snapshot" in caplog.text
    with Snapshot(snapshot) as snap:
        assert [e.row_count for e in snap.entries()] == [1]
    with offline_session(backend, tmp_path) as session:
        with session.reusing_query_results(snapshot=snapshot):
            assert session.scalars(select(Task)).one().name == "compositing"
            with pytest.raises(SnapshotMissError):
                session.execute(statement).all()


def test_a_snapshot_in_a_missing_directory_is_refused_on_entry(
    online: Engine, tmp_path: Path
) -> None:
    """A snapshot path whose directory does not exist fails when the block is entered,
    naming the path, not when the block exits."""
    path = tmp_path / "missing" / "reads.snapshot"
    with make_sessions(online)() as session:
        with pytest.raises(FileNotFoundError, match="snapshot="):
            with session.reusing_query_results(snapshot=path):
                pass


def test_rows_nested_beyond_reason_are_refused_not_crashed_on(
    online: Engine, tmp_path: Path
) -> None:
    """Rows whose bytes nest arrays deeper than the decoder allows are JournalCorruptError
    naming the file, not a decoder error."""
    snapshot = tmp_path / "reads.snapshot"
    statement = select(Task)
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.scalars(statement).all()
    with Snapshot(snapshot) as snap:
        (entry,) = snap.entries()
    record = entry.record()
    record[5] = b"\x92\x92" + b"\x91" * 200_000 + b"\xc0"
    crafted = tmp_path / "nested.snapshot"
    crafted_snapshot(crafted, [record])
    with make_sessions(online)() as session:
        with session.reusing_query_results(snapshot=crafted):
            with pytest.raises(JournalCorruptError, match=str(crafted)):
                session.scalars(statement).all()


def test_rows_read_after_a_rolled_back_write_are_not_kept(online: Engine, tmp_path: Path) -> None:
    """In a new snapshot too, what was read after a write that is then rolled back (rows the
    database never committed) is not saved."""
    snapshot = tmp_path / "reads.snapshot"
    with make_sessions(online)() as session, session.reusing_query_results(snapshot=snapshot):
        session.add(Task(name="uncommitted"))
        session.flush()
        assert len(session.scalars(select(Task)).all()) == 2
        session.scalars(select(Asset)).all()
        session.rollback()
    with Snapshot(snapshot) as snap:
        assert [e.tables for e in snap.entries()] == [("asset",)]
