"""The journal file: create, lock, append, seal, read back, verify (SPEC §4)."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from journal import (
    Journal,
    JournalCorruptError,
    JournalError,
    JournalIncompleteError,
    JournalLockedError,
    JournalSignatureError,
    JournalWriter,
    OpaqueValue,
    Pickles,
    storage,
)

KEY = b"k" * 32


def operation(i: int) -> dict[str, object]:
    return {
        "op": "insert",
        "table": "asset",
        "ref": f"new:{i}",
        "values": {"id": i, "name": f"n{i}"},
    }


def write_journal(path: Path, batches: int = 3, size: int = 5, *, key: bytes | None = None) -> None:
    with JournalWriter.create(path, key=key) as writer:
        for b in range(batches):
            writer.append([operation(b * size + i) for i in range(size)])
        writer.seal(meta={"schema": {"asset": "abc"}})


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_round_trip_header_state_and_batches(tmp_path: Path) -> None:
    """A sealed journal reads back its header, sealed state and every batch in order."""
    path = tmp_path / "ops.dbm"
    write_journal(path)
    with Journal(path) as journal:
        assert journal.state == "sealed"
        assert not journal.signed
        header = journal.header
        assert header.format_version == 1
        assert header.operation_count == 15
        assert header.meta == {"schema": {"asset": "abc"}}
        assert {"orm_journal", "python", "sqlite"} <= set(header.versions)
        journal.verify()
        batches = list(journal.batches())
    assert [b.number for b in batches] == [1, 2, 3]
    assert [b.first_sequence for b in batches] == [1, 6, 11]
    assert [op["ref"] for b in batches for op in b.operations] == [f"new:{i}" for i in range(15)]


def test_large_batch_is_chunked_but_read_as_one(tmp_path: Path) -> None:
    """A batch larger than one record's chunk comes back as a single batch with gap-free numbers."""
    path = tmp_path / "big.dbm"
    with JournalWriter.create(path) as writer:
        writer.append([operation(i) for i in range(2500)])
        writer.append([operation(i) for i in range(3)])
        writer.seal()
    with Journal(path) as journal:
        batches = list(journal.batches())
        sequences = [seq for seq, _ in journal.operations()]
    assert [len(b.operations) for b in batches] == [2500, 3]
    assert sequences == list(range(1, 2504))


def test_batch_of_several_statements_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch too large for one INSERT is written by several inside one transaction."""
    monkeypatch.setattr(storage, "CHUNK_OPERATIONS", 1)
    monkeypatch.setattr(storage, "_ROWS_PER_STATEMENT", 2)
    path = tmp_path / "big.dbm"
    with JournalWriter.create(path) as writer:
        writer.append([operation(i) for i in range(5)])
        writer.seal()
    with Journal(path) as journal:
        journal.verify()
        assert [len(b.operations) for b in journal.batches()] == [5]
        assert [seq for seq, _ in journal.operations()] == [1, 2, 3, 4, 5]


def writer_after_one_batch(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, rows_per_statement: int = 10
) -> JournalWriter:
    """A writer of one record per operation that has written batch 1 (``new:0``)."""
    monkeypatch.setattr(storage, "CHUNK_OPERATIONS", 1)
    monkeypatch.setattr(storage, "_ROWS_PER_STATEMENT", rows_per_statement)
    writer = JournalWriter.create(path)
    writer.append([operation(0)])
    return writer


def on_insert_of(writer: JournalWriter, sequence: int, action: str) -> None:
    """Make SQLite run ``action`` (a statement) when record ``sequence`` is inserted."""
    writer._call(
        f"CREATE TEMP TRIGGER on_record_{sequence} AFTER INSERT ON main.records "
        f"WHEN NEW.key = '{storage.key_for(sequence)}' BEGIN {action}; END"
    )


def assert_only_first_batch(path: Path) -> None:
    with raw(path) as conn:
        keys = [key for (key,) in conn.execute("SELECT key FROM records ORDER BY key")]
    assert keys == [storage.key_for(0), storage.key_for(1)]
    with Journal(path) as journal:
        assert journal.state == "incomplete"
        assert [op["ref"] for _, op in journal.operations()] == ["new:0"]


@pytest.mark.parametrize(
    ("statements", "action", "message"),
    [
        ("one", "ABORT", "refused"),
        # The transaction is gone, and the COMMIT's error is all sqlitedict keeps.
        ("one", "ROLLBACK", "rolled the batch back"),
        ("several", "ABORT", "refused"),
        ("several", "ROLLBACK", "refused"),
    ],
)
def test_failed_insert_commits_none_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statements: str, action: str, message: str
) -> None:
    """A batch whose INSERT fails leaves none of its records, whether it takes one or several."""
    path = tmp_path / "ops.dbm"
    writer = writer_after_one_batch(
        path, monkeypatch, rows_per_statement=2 if statements == "several" else 10
    )
    # Records 2..6 are the next batch; with two per statement, record 4 opens the second
    # statement, and the worker still runs the third after the second failed.
    on_insert_of(writer, 4, f"SELECT RAISE({action}, 'refused')")
    with pytest.raises(JournalError, match=message):
        writer.append([operation(i) for i in range(1, 6)])
    with pytest.raises(JournalError, match="can no longer be written"):
        writer.append([operation(6)])
    writer.close()
    assert_only_first_batch(path)


@pytest.mark.parametrize(("statements", "interrupted_send"), [("one", 2), ("several", 3)])
def test_interrupted_batch_is_never_committed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statements: str, interrupted_send: int
) -> None:
    """A KeyboardInterrupt after part of a batch was sent leaves the writer refusing more."""
    path = tmp_path / "ops.dbm"
    writer = writer_after_one_batch(
        path, monkeypatch, rows_per_statement=2 if statements == "several" else 10
    )
    real_send = storage._send
    sends: list[str] = []

    def send(store: object, sql: str, args: object) -> object:
        sends.append(sql)
        if len(sends) == interrupted_send:  # before the COMMIT (one statement), or the
            raise KeyboardInterrupt  # second INSERT after BEGIN and the first (several)
        return real_send(store, sql, args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "_send", send)
    with pytest.raises(KeyboardInterrupt):
        writer.append([operation(i) for i in range(1, 6)])
    monkeypatch.setattr(storage, "_send", real_send)
    with pytest.raises(JournalError, match="interrupted by KeyboardInterrupt"):
        writer.append([operation(6)])
    writer.close()
    assert_only_first_batch(path)


def test_sealed_journal_is_one_self_contained_file(tmp_path: Path) -> None:
    """After seal no -wal/-shm file remains and a copy elsewhere verifies."""
    path = tmp_path / "ops.dbm"
    write_journal(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.dbm"]
    copy = tmp_path / "elsewhere" / "copy.dbm"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    with Journal(copy) as journal:
        journal.verify()


def test_durability_pragmas_are_set_and_read_back(tmp_path: Path) -> None:
    """The writer runs with WAL and synchronous=FULL, and the file is tagged as a journal."""
    path = tmp_path / "ops.dbm"
    writer = JournalWriter.create(path)
    try:
        conn = raw(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == int.from_bytes(b"ORMJ", "big")
        conn.close()
    finally:
        writer.close()


def test_reading_never_changes_the_file(tmp_path: Path) -> None:
    """Opening, verifying and reading a journal leaves its bytes identical."""
    path = tmp_path / "ops.dbm"
    write_journal(path)
    before = path.read_bytes()
    with Journal(path) as journal:
        journal.verify()
        list(journal.batches())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.dbm"]


def test_empty_journal_seals_with_zero_operations(tmp_path: Path) -> None:
    """A journal sealed without batches is valid and has no operations."""
    path = tmp_path / "empty.dbm"
    with JournalWriter.create(path) as writer:
        writer.seal()
    with Journal(path) as journal:
        journal.verify()
        assert journal.header.operation_count == 0
        assert list(journal.batches()) == []


def test_rewind_discards_the_tail(tmp_path: Path) -> None:
    """Rewinding to a position drops later batches and the chain still verifies."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path, key=KEY) as writer:
        writer.append([operation(0)])
        mark = writer.position()
        writer.append([operation(1), operation(2)])
        writer.rewind(mark)
        writer.append([operation(3)])
        writer.seal()
    with Journal(path, key=KEY) as journal:
        journal.verify()
        assert [op["ref"] for _, op in journal.operations()] == ["new:0", "new:3"]
        assert [b.number for b in journal.batches()] == [1, 2]


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    """An existing journal raises FileExistsError and stays intact unless overwrite=True."""
    path = tmp_path / "ops.dbm"
    write_journal(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        JournalWriter.create(path)
    assert path.read_bytes() == before
    with JournalWriter.create(path, overwrite=True) as writer:
        writer.seal()
    with Journal(path) as journal:
        assert journal.header.operation_count == 0


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    """A second writer on the same path gets JournalLockedError at once, even with overwrite."""
    path = tmp_path / "ops.dbm"
    script = textwrap.dedent(
        f"""
        import sys
        from journal import JournalWriter
        w = JournalWriter.create({str(path)!r})
        print("locked", flush=True)
        sys.stdin.readline()
        w.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLockedError, match="another process"):
            JournalWriter.create(path, overwrite=True)
    finally:
        proc.communicate("\n", timeout=30)
        proc.stdout.close()
    assert proc.returncode == 0
    with Journal(path) as journal:
        assert journal.state == "incomplete"


def test_failing_commit_raises_within_bounded_time(tmp_path: Path) -> None:
    """A COMMIT that SQLite rejects raises a JournalError instead of hanging, and the writer stops."""
    path = tmp_path / "ops.dbm"
    writer = JournalWriter.create(path)
    writer.append([operation(0)])
    # A deferred foreign key violation is only detected at COMMIT: a real failing commit.
    # Temporary tables: the journal file itself must keep exactly the format's schema.
    writer._call("PRAGMA foreign_keys = ON")
    writer._call("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
    writer._call(
        "CREATE TEMP TABLE child (id INTEGER PRIMARY KEY, "
        "parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    writer._call(
        "CREATE TEMP TRIGGER orphan AFTER INSERT ON main.records "
        "BEGIN INSERT INTO child (parent) VALUES (42); END"
    )
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            writer.append([operation(1)])
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the failing commit hung"
    assert isinstance(outcome[0], JournalError)
    assert "FOREIGN KEY" in str(outcome[0])
    with pytest.raises(JournalError, match="can no longer be written"):
        writer.append([operation(2)])
    writer.close()
    with Journal(path) as journal:
        assert journal.state == "incomplete"
        assert [op["ref"] for _, op in journal.operations()] == ["new:0"]


def test_seal_that_times_out_but_lands_is_reported_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal whose write times out but still reaches the file is reported as sealed."""
    path = tmp_path / "ops.dbm"
    writer = writer_after_one_batch(path, monkeypatch)
    # The seal record (sequence 2) takes SQLite far longer than the writer waits for it.
    on_insert_of(
        writer,
        2,
        "SELECT count(*) FROM (WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT x FROM c)",
    )
    monkeypatch.setattr(storage, "WRITE_TIMEOUT", 0.01)
    with pytest.raises(JournalError, match="the journal is sealed and complete"):
        writer.seal()
    with Journal(path) as journal:
        assert journal.state == "sealed"
        journal.verify()
        assert [op["ref"] for _, op in journal.operations()] == ["new:0"]


def test_seal_that_fails_is_reported_unsealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal record SQLite refuses leaves an unsealed journal and an error that says so."""
    path = tmp_path / "ops.dbm"
    writer = writer_after_one_batch(path, monkeypatch)
    on_insert_of(writer, 2, "SELECT RAISE(ABORT, 'refused')")
    with pytest.raises(JournalError, match="stays unsealed") as failure:
        writer.seal()
    assert "sealed and complete" not in str(failure.value)
    with Journal(path) as journal:
        assert journal.state == "incomplete"


# -- the tamper matrix ---------------------------------------------------------------------


def flip_byte_in_record(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    index = data.index(needle)
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("key", "error"), [(None, JournalCorruptError), (KEY, JournalSignatureError)]
)
def test_one_byte_flipped(tmp_path: Path, key: bytes | None, error: type[Exception]) -> None:
    """A single flipped byte inside a record is detected by the chain."""
    path = tmp_path / "ops.dbm"
    write_journal(path, key=key)
    flip_byte_in_record(path, b"new:7")
    with Journal(path, key=key) as journal, pytest.raises(error, match="record 2"):
        journal.verify()


@pytest.mark.parametrize(
    ("key", "error"), [(None, JournalCorruptError), (KEY, JournalCorruptError)]
)
def test_record_deleted(tmp_path: Path, key: bytes | None, error: type[Exception]) -> None:
    """A record removed from the middle is reported as missing."""
    path = tmp_path / "ops.dbm"
    write_journal(path, key=key)
    with raw(path) as conn:
        conn.execute("DELETE FROM records WHERE key = ?", (f"{2:012d}",))
    with Journal(path, key=key) as journal, pytest.raises(error, match="record 2 is missing"):
        journal.verify()


@pytest.mark.parametrize(
    ("key", "error"), [(None, JournalCorruptError), (KEY, JournalSignatureError)]
)
def test_two_records_swapped(tmp_path: Path, key: bytes | None, error: type[Exception]) -> None:
    """Swapping the contents of two records breaks the chain."""
    path = tmp_path / "ops.dbm"
    write_journal(path, key=key)
    conn = raw(path)
    one, two = (
        conn.execute("SELECT value FROM records WHERE key = ?", (f"{n:012d}",)).fetchone()[0]
        for n in (1, 2)
    )
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (two, f"{1:012d}"))
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (one, f"{2:012d}"))
    conn.close()
    with Journal(path, key=key) as journal, pytest.raises(error, match="record 1"):
        journal.verify()


def test_tail_records_removed_makes_it_incomplete(tmp_path: Path) -> None:
    """Removing the seal and the last batch leaves a journal that verify() calls incomplete."""
    path = tmp_path / "ops.dbm"
    write_journal(path, key=KEY)
    with raw(path) as conn:
        conn.execute("DELETE FROM records WHERE key >= ?", (f"{3:012d}",))
    with Journal(path, key=KEY) as journal:
        assert journal.state == "incomplete"
        with pytest.raises(JournalIncompleteError, match="never sealed"):
            journal.verify()


def test_tail_of_file_truncated(tmp_path: Path) -> None:
    """A file cut short is reported as corrupt, at open or at verification."""
    path = tmp_path / "ops.dbm"
    write_journal(path, batches=40, size=50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalCorruptError), Journal(path) as journal:
        journal.verify()


def test_wrong_key(tmp_path: Path) -> None:
    """A signed journal checked with another key fails on its first record."""
    path = tmp_path / "ops.dbm"
    write_journal(path, key=KEY)
    with Journal(path, key=b"another key") as journal:
        with pytest.raises(JournalSignatureError, match="record 0"):
            journal.verify()


def test_signed_journal_without_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed journal cannot be verified or read without its key."""
    monkeypatch.delenv("ORM_JOURNAL_KEY", raising=False)
    path = tmp_path / "ops.dbm"
    write_journal(path, key=KEY)
    with Journal(path) as journal:
        assert journal.signed
        with pytest.raises(JournalSignatureError, match="give its key"):
            journal.verify()
        with pytest.raises(JournalSignatureError):
            next(journal.batches())


def test_unsigned_journal_refused_when_a_key_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With $ORM_JOURNAL_KEY set, an unsigned journal is refused rather than trusted."""
    path = tmp_path / "ops.dbm"
    monkeypatch.delenv("ORM_JOURNAL_KEY", raising=False)
    write_journal(path)
    monkeypatch.setenv("ORM_JOURNAL_KEY", "secret from the environment")
    with Journal(path) as journal, pytest.raises(JournalSignatureError, match="not signed"):
        journal.verify()


def test_key_from_environment_signs_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$ORM_JOURNAL_KEY is used for signing and verification when no key is passed."""
    monkeypatch.setenv("ORM_JOURNAL_KEY", "secret from the environment")
    path = tmp_path / "ops.dbm"
    write_journal(path)
    with Journal(path) as journal:
        assert journal.signed
        journal.verify()
    with Journal(path, key=b"other") as journal, pytest.raises(JournalSignatureError):
        journal.verify()


def test_sqlite_file_that_is_not_a_journal(tmp_path: Path) -> None:
    """Another application's SQLite database is refused as not a journal."""
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE records (key TEXT PRIMARY KEY, value BLOB)")
    with pytest.raises(JournalCorruptError, match="not an orm-journal file"):
        Journal(path)


def test_unknown_format_version(tmp_path: Path) -> None:
    """A journal of a newer format version is refused with the version in the message."""
    path = tmp_path / "ops.dbm"
    write_journal(path)
    with raw(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalCorruptError, match="format version 99"):
        Journal(path)


def test_empty_file(tmp_path: Path) -> None:
    """An empty file is refused as not a journal."""
    path = tmp_path / "empty.dbm"
    path.write_bytes(b"")
    with pytest.raises(JournalCorruptError, match="not an orm-journal file"):
        Journal(path)
    assert path.read_bytes() == b""


def test_random_bytes(tmp_path: Path) -> None:
    """A file of random bytes is refused as not a journal."""
    path = tmp_path / "noise.dbm"
    path.write_bytes(random.Random(7).randbytes(8192))
    with pytest.raises(JournalCorruptError):
        Journal(path)


def test_directory(tmp_path: Path) -> None:
    """A directory is refused with a message saying so."""
    with pytest.raises(JournalCorruptError, match="is a directory"):
        Journal(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    """A missing path raises FileNotFoundError and creates nothing."""
    path = tmp_path / "missing.dbm"
    with pytest.raises(FileNotFoundError):
        Journal(path)
    assert not path.exists()


class _CreatesFile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


@pytest.mark.parametrize("pickles", ["auto", "opaque", "refuse"])
def test_tampered_dill_payload_never_runs(tmp_path: Path, pickles: Pickles) -> None:
    """A signed journal whose dill payload was swapped for a malicious one is refused unrun."""
    path = tmp_path / "ops.dbm"
    victim = tmp_path / "pwned"
    with JournalWriter.create(path, key=KEY) as writer:
        writer.append([{"op": "insert", "values": {"blob": {1, 2, 3}}}])
        writer.seal()
    # Re-sign nothing: re-encode the batch with an evil payload, keep the old tag.
    from journal import codec

    conn = raw(path)
    value = conn.execute("SELECT value FROM records WHERE key = ?", (f"{1:012d}",)).fetchone()[0]
    evil = codec.encode([1, [{"op": "insert", "values": {"blob": _CreatesFile(str(victim))}}]])
    conn.execute("UPDATE records SET value = ? WHERE key = ?", (value[:37] + evil, f"{1:012d}"))
    conn.close()
    with Journal(path, key=KEY) as journal:
        with pytest.raises(JournalSignatureError):
            journal.verify()
        with pytest.raises(JournalSignatureError):
            list(journal.batches(pickles=pickles))
    assert not victim.exists()


def test_untrusted_read_leaves_dill_opaque(tmp_path: Path) -> None:
    """An unsigned journal's dill values stay opaque unless the reader allows dill."""
    path = tmp_path / "ops.dbm"
    with JournalWriter.create(path) as writer:
        writer.append([{"value": {1, 2}}])
        writer.seal()
    with Journal(path) as journal:
        assert not journal.dill_allowed
        [(_, op)] = list(journal.operations())
        assert isinstance(op["value"], OpaqueValue)
    with Journal(path, allow_dill=True) as journal:
        [(_, op)] = list(journal.operations(pickles="opaque"))
        assert isinstance(op["value"], OpaqueValue)
        [(_, op)] = list(journal.operations())
        assert op["value"] == {1, 2}


# -- crash safety --------------------------------------------------------------------------

APPENDER = textwrap.dedent(
    """
    import sys
    from journal import JournalWriter
    writer = JournalWriter.create(sys.argv[1])
    number = 0
    while True:
        number = writer.append([{"batch": number + 1, "i": i, "pad": "x" * 200} for i in range(50)])
        print(number, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_while_appending_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    """SIGKILL at random moments: acknowledged batches are all there, whole, and the file is incomplete."""
    rng = random.Random(20261122)
    for attempt in range(20):
        path = tmp_path / f"crash{attempt}.dbm"
        proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        wanted = rng.randint(1, 30)
        acknowledged = 0
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= wanted:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:  # acknowledgements printed before the kill landed
            acknowledged = int(line)
        proc.stdout.close()
        with Journal(path) as journal:
            assert journal.state == "incomplete"
            batches = list(journal.batches())
            with pytest.raises(JournalIncompleteError):
                journal.verify()
        numbers = [b.number for b in batches]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(numbers) >= acknowledged
        for batch in batches:
            assert [op["batch"] for op in batch.operations] == [batch.number] * 50


HOT_JOURNAL_WRITER = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size = 1")  # spill changed pages into the file itself
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE records SET value = zeroblob(length(value))")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_writer_killed_mid_transaction_leaves_a_readable_journal(tmp_path: Path) -> None:
    """A hot rollback journal (a writer killed while sealing) is recovered on a copy.

    Regression: a writer killed while sealing switches the file out of WAL mode left a
    hot rollback journal; the read-only reader could not roll it back and called the
    journal "not an orm-journal file".
    """
    path = tmp_path / "ops.dbm"
    write_journal(path, batches=20, size=20)
    proc = subprocess.run([sys.executable, "-c", HOT_JOURNAL_WRITER, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    hot = Path(f"{path}-journal")
    assert hot.exists()
    files = {p: p.read_bytes() for p in (path, hot)}

    with Journal(path) as journal:
        assert journal.state == "sealed"
        journal.verify()
        assert [b.number for b in journal.batches()] == list(range(1, 21))
    assert {p: p.read_bytes() for p in (path, hot)} == files


def test_seal_with_a_reader_open_keeps_the_journal_sealed(tmp_path: Path) -> None:
    """A reader holding the write-ahead log cannot make the seal lose the journal.

    Regression: folding the log before writing the seal treated a busy log (an open
    reader) as a failed write, so the journal stayed unsealed and its writer broken.
    Now the seal is written, and only folding it into the file is reported.
    """
    path = tmp_path / "ops.dbm"
    writer = JournalWriter.create(path)
    for n in range(3):
        writer.append([operation(n)])
    with Journal(path) as reader:
        batches = reader.batches()
        next(batches)  # a read transaction stays open while the iteration is unfinished
        with pytest.raises(JournalError, match="sealed and complete"):
            writer.seal()
        batches.close()
    writer.close()
    with Journal(path) as journal:
        assert journal.state == "sealed"
        journal.verify()
        assert [b.number for b in journal.batches()] == [1, 2, 3]


def test_journal_of_a_live_writer_is_not_copied_for_recovery(tmp_path: Path) -> None:
    """Recovery from a private copy happens only once the writer is gone.

    A file that needs recovery while its writer still holds the lock is changing under
    the reader; a copy could be torn, so the reader says the journal is being written.
    """
    path = tmp_path / "ops.dbm"
    write_journal(path, batches=20, size=20)
    proc = subprocess.run([sys.executable, "-c", HOT_JOURNAL_WRITER, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{path}-journal").exists()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a live JournalWriter holds
        with pytest.raises(JournalLockedError, match="being written by another process"):
            Journal(path)
    finally:
        os.close(fd)
    with Journal(path) as journal:
        journal.verify()
