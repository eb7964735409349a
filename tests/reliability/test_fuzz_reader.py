"""Fuzzing the journal reader: damaged files raise SPEC §2 errors, never anything else.

Every case opens a file with :class:`journal.Journal`, reads ``state`` and the header,
calls ``verify()`` and iterates ``batches()`` and ``operations()``. Each step either
succeeds or raises one of :data:`ALLOWED` (exactly those types). What succeeds must be
true: a journal that verifies holds exactly what was written, a readable one holds whole
batches of it in order, and the file is never changed by reading. The pristine journals
hold a dill value whose unpickling creates a marker file: with a key, it may only appear
after the journal verified unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import os
import pathlib
import signal
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal import (
    Journal,
    JournalCorruptError,
    JournalIncompleteError,
    JournalLockedError,
    JournalSignatureError,
    JournalWriter,
)
from tests.reliability.journal_mutations import (
    EditJson,
    FlipBytes,
    Mutation,
    SetField,
    SetKey,
    SetTextKeyBytes,
    batch_bodies,
    raw_mutations,
    rechain,
    record_indexes,
    record_mutations,
)

pytestmark = pytest.mark.reliability

KEY = b"fuzzing key of at least 16 bytes"
# Exactly these types, not subclasses of them: FileNotFoundError only for a missing path.
ALLOWED = frozenset(
    {
        JournalCorruptError,
        JournalSignatureError,
        JournalIncompleteError,
        JournalLockedError,
        FileNotFoundError,
    }
)
SETTINGS: dict[str, Any] = {
    "database": None,
    "deadline": None,
    # Inputs differ from run to run; a failure prints the blob that replays it exactly.
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


class TouchOnLoad:
    """Unpickling this creates ``target``: the stand-in for code hidden in a journal."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (pathlib.Path.touch, (self.target,))


@dataclasses.dataclass(frozen=True)
class Pristine:
    """A journal as written, and what reading it gives with ``trusted`` as used here."""

    name: str
    data: bytes
    key: bytes | None
    trusted: bool
    batches: list[tuple[int, int, list[Any]]]


def operations(marker: Path, batch: int) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = [
        {"op": "insert", "table": "t", "ref": batch, "values": {"n": batch, "pad": "p" * 300}},
        {
            "op": "update",
            "values": {
                "at": dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC),
                "price": decimal.Decimal("1.10"),
                "id": uuid.UUID(int=batch),
                "pair": (1, "two"),
                "signal": signal.Signals.SIGINT,
                "blob": b"\x00\xff" * 50,
            },
        },
    ]
    if batch == 2:
        values.append({"op": "insert", "values": {"obj": TouchOnLoad(marker)}})
        values.extend({"op": "insert", "values": {"i": i, "s": "s" * 80}} for i in range(60))
    return values


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pristine]:
    """Signed and unsigned journals, sealed and not, with the marker's dill value in batch 2."""
    folder = tmp_path_factory.mktemp("pristine")
    marker = folder.parent / "marker"
    found = {}
    for key in (KEY, None):
        for sealed in (True, False):
            name = f"{'signed' if key else 'unsigned'}-{'sealed' if sealed else 'incomplete'}"
            path = folder / f"{name}.dbm"
            with JournalWriter.create(path, key=key) as writer:
                for batch in (1, 2, 3):
                    writer.append(operations(marker, batch))
                if sealed:
                    writer.seal(meta={"schema": {"t": "abc"}})
            trusted = key is not None
            with Journal(path, key=key) as journal:
                batches = [
                    (b.number, b.first_sequence, b.operations)
                    for b in journal.batches(pickles="auto" if trusted else "opaque")
                ]
            marker.unlink(missing_ok=True)
            assert [b[0] for b in batches] == [1, 2, 3]
            found[name] = Pristine(name, path.read_bytes(), key, trusted, batches)
    return found


@dataclasses.dataclass
class Outcome:
    """What each reading step did: None for success, else the exception type's name."""

    steps: dict[str, str | None] = dataclasses.field(default_factory=dict)
    batches: list[tuple[int, int, list[Any]]] | None = None

    def attempt(self, step: str, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except Exception as err:
            if type(err) not in ALLOWED:
                raise AssertionError(f"{step} raised {type(err).__name__}: {err}") from err
            self.steps[step] = type(err).__name__
            return None
        self.steps[step] = None
        return result

    def ok(self, step: str) -> bool:
        return step in self.steps and self.steps[step] is None


def read_everything(path: Path, key: bytes | None, trusted: bool) -> Outcome:
    """Open, inspect, verify and iterate; check the file and its folder are left as they were."""
    before = path.read_bytes()
    neighbours = sorted(os.listdir(path.parent))
    outcome = Outcome()
    journal = outcome.attempt("open", lambda: Journal(path, key=key))
    if journal is not None:
        with journal:
            outcome.attempt("state", lambda: (journal.state, journal.header, repr(journal)))
            outcome.attempt("verify", journal.verify)
            outcome.batches = outcome.attempt(
                "batches",
                lambda: [
                    (b.number, b.first_sequence, b.operations)
                    for b in journal.batches(pickles="auto" if trusted else "opaque")
                ],
            )
            outcome.attempt(
                "operations",
                lambda: list(journal.operations(pickles="auto" if trusted else "opaque")),
            )
    assert path.read_bytes() == before, "reading changed the journal file"
    # SQLite itself creates empty -wal/-shm files when it opens a file whose header says
    # WAL mode, even read-only (a known limitation, reported); nothing else may appear.
    extra = set(os.listdir(path.parent)) - set(neighbours)
    assert extra <= {f"{path.name}-wal", f"{path.name}-shm"}, f"reading left {extra} behind"
    wal = path.parent / f"{path.name}-wal"
    assert wal.name not in extra or wal.stat().st_size == 0, "reading wrote a write-ahead log"
    return outcome


def check_content(outcome: Outcome, original: Pristine) -> None:
    """What reads back is the truth: all of it after verify, whole leading batches otherwise."""
    if outcome.ok("verify"):
        assert outcome.batches == original.batches, "verified, yet the content changed"
    if outcome.batches is not None:
        assert outcome.batches == original.batches[: len(outcome.batches)], "content changed"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


def mutated_case(
    workspace: Path, original: Pristine, mutations: list[Mutation], marker: Path
) -> Outcome:
    """Apply ``mutations`` to a copy of ``original``, read it all, and check the rules."""
    path = workspace / "journal.dbm"
    for leftover in workspace.iterdir():
        leftover.unlink(missing_ok=True)
    path.write_bytes(original.data)
    for mutation in mutations:
        try:
            mutation.apply(path)
        except Exception:  # the damage itself may make sqlite3 refuse a later edit
            break
    outcome = read_everything(path, original.key, original.trusted)
    check_content(outcome, original)
    if marker.exists():
        # Code ran: only allowed for a signed journal whose chain verified, up to and
        # including the unchanged batch that holds the value (checked above).
        assert original.key is not None, "an unsigned journal's content was run"
        assert outcome.batches is not None and len(outcome.batches) >= 2, "content was run"
        marker.unlink()
    return outcome


def marker_of(pristine: dict[str, Pristine], tmp: pytest.TempPathFactory) -> Path:
    return tmp.getbasetemp() / "marker"


def test_arbitrary_bytes(workspace: Path, soak: int) -> None:
    """Any bytes as a journal file (also behind a real SQLite header) raise only SPEC §2 errors."""
    sqlite_header = b"SQLite format 3\x00\x10\x00\x01\x01\x00\x40\x20\x20"

    @settings(max_examples=100 * soak, **SETTINGS)
    @given(
        data=st.binary(max_size=3 * 4096),
        prefixed=st.booleans(),
        key=st.sampled_from([None, KEY]),
    )
    def case(data: bytes, prefixed: bool, key: bytes | None) -> None:
        path = workspace / "noise.dbm"
        for leftover in workspace.iterdir():
            leftover.unlink(missing_ok=True)
        path.write_bytes(sqlite_header + data if prefixed else data)
        outcome = read_everything(path, key, trusted=False)
        assert not outcome.ok("verify"), "noise verified as a journal"

    case()


@pytest.mark.parametrize(
    ("mutations", "examples"),
    [
        pytest.param(raw_mutations, 200, id="raw_damage"),
        pytest.param(record_mutations, 300, id="record_damage"),
    ],
)
def test_damage(
    workspace: Path,
    pristine: dict[str, Pristine],
    tmp_path_factory: pytest.TempPathFactory,
    soak: int,
    mutations: st.SearchStrategy[Mutation],
    examples: int,
) -> None:
    """Damaged journals are refused, or read back exactly as they were written.

    Raw damage is to the file's bytes and pages; record damage goes through SQLite:
    values, kinds, counts, keys, header and seal rows edited, rows deleted or copied.
    """
    marker = marker_of(pristine, tmp_path_factory)

    @settings(max_examples=examples * soak, **SETTINGS)
    @given(
        name=st.sampled_from(sorted(pristine)),
        applied=st.lists(mutations, min_size=1, max_size=3),
    )
    def case(name: str, applied: list[Mutation]) -> None:
        mutated_case(workspace, pristine[name], applied, marker)

    case()


def test_forged_chain_with_the_wrong_key(
    workspace: Path,
    pristine: dict[str, Pristine],
    tmp_path_factory: pytest.TempPathFactory,
    soak: int,
) -> None:
    """A signed journal edited and re-chained without its key never verifies and never runs."""
    marker = marker_of(pristine, tmp_path_factory)
    signed = sorted(n for n in pristine if n.startswith("signed"))

    @settings(max_examples=100 * soak, **SETTINGS)
    @given(
        name=st.sampled_from(signed),
        mutations=st.lists(record_mutations, max_size=2),
        forger=st.sampled_from([None, b"another key of 16 bytes"]),
    )
    def case(name: str, mutations: list[Mutation], forger: bytes | None) -> None:
        outcome = mutated_case(workspace, pristine[name], [*mutations, Rechain(forger)], marker)
        assert not outcome.ok("verify") and not outcome.ok("batches")

    case()


def test_decoder_sees_arbitrary_bodies(
    workspace: Path,
    pristine: dict[str, Pristine],
    tmp_path_factory: pytest.TempPathFactory,
    soak: int,
) -> None:
    """Unsigned journals re-chained around hostile batch bodies decode (untrusted) or raise SPEC §2 errors."""
    marker = marker_of(pristine, tmp_path_factory)
    unsigned = sorted(n for n in pristine if n.startswith("unsigned"))

    @settings(max_examples=300 * soak, **SETTINGS)
    @given(
        name=st.sampled_from(unsigned),
        record=record_indexes,
        body=batch_bodies(),
        more=st.lists(record_mutations, max_size=1),
    )
    def case(name: str, record: int, body: tuple[int, bytes], more: list[Mutation]) -> None:
        count, data = body
        path = workspace / "journal.dbm"
        for leftover in workspace.iterdir():
            leftover.unlink(missing_ok=True)
        path.write_bytes(pristine[name].data)
        SetField(record, count=count, body=data).apply(path)
        for mutation in more:
            try:
                mutation.apply(path)
            except Exception:
                break
        with contextlib.suppress(sqlite3.Error):  # a key sqlite3 cannot decode stops the forger
            rechain(path, None)
        read_everything(path, None, trusted=False)
        assert not marker.exists(), "an untrusted read ran journal content"

    case()


@dataclasses.dataclass(frozen=True)
class Rechain:
    key: bytes | None

    def apply(self, path: Path) -> None:
        rechain(path, self.key)


def test_reading_a_pristine_copy_is_clean(
    workspace: Path, pristine: dict[str, Pristine], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The unmutated journals read back in full, verify when sealed, and are left unchanged."""
    marker = marker_of(pristine, tmp_path_factory)
    for original in pristine.values():
        path = workspace / f"{original.name}.dbm"
        path.write_bytes(original.data)
        outcome = read_everything(path, original.key, original.trusted)
        assert outcome.batches == original.batches
        expected = None if "sealed" in original.name else "JournalIncompleteError"
        assert outcome.steps["verify"] == expected
        # Trusted reads of the signed journals unpickle the marker's value: authentic content.
        assert marker.exists() == (original.key is not None)
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "mutation",
    [
        EditJson(last=False, field="format", text="1" * 5000),
        EditJson(last=False, field=None, text="[" * 50_000 + "]" * 50_000),
        EditJson(last=True, field="operations", text="1e400"),
        SetKey(record=1, key="00000000000²", copy=False),
        SetTextKeyBytes(record=1, key=b"00000000000\xf2"),
    ],
    ids=["long-integer", "deep-nesting", "infinite-count", "unicode-digit-key", "non-utf8-key"],
)
@pytest.mark.parametrize("name", ["signed-sealed", "unsigned-sealed"])
def test_found_by_fuzzing(
    workspace: Path,
    pristine: dict[str, Pristine],
    tmp_path_factory: pytest.TempPathFactory,
    mutation: Mutation,
    name: str,
) -> None:
    """Damage that once escaped as ValueError, RecursionError or OverflowError is a JournalCorruptError."""
    outcome = mutated_case(
        workspace, pristine[name], [mutation], marker_of(pristine, tmp_path_factory)
    )
    assert outcome.steps["open"] == "JournalCorruptError"


@pytest.mark.parametrize("name", ["signed-incomplete", "unsigned-sealed"])
def test_schema_text_that_is_not_utf8(
    workspace: Path,
    pristine: dict[str, Pristine],
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> None:
    """A schema whose SQL text is not UTF-8 (the sqlite3 module fails to decode SQLite's error) is a JournalCorruptError."""
    outcome = mutated_case(
        workspace,
        pristine[name],
        [FlipBytes(((3969, 128),))],
        marker_of(pristine, tmp_path_factory),
    )
    assert outcome.steps["open"] == "JournalCorruptError"
