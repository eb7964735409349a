"""Hypothesis strategies that damage journal files, for the reader fuzzing campaign.

Each strategy draws a mutation: a small frozen dataclass whose ``apply(path)`` changes the
file and whose repr is what hypothesis prints for a failing example. Raw mutations work
on the bytes (SQLite pages are 4096 bytes); record mutations go through ``sqlite3`` and
change one row of the ``records`` table; :func:`rechain` then recomputes the unsigned
checksum chain so that the decoder, not the chain, meets the damage.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgpack
from hypothesis import strategies as st

from journal.signing import GENESIS, chain_tag

PAGE = 4096
TAG = 32


class Mutation(Protocol):
    def apply(self, path: Path) -> None: ...


# -- raw bytes -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlipBytes:
    flips: tuple[tuple[int, int], ...]  # (offset, xor mask); offsets wrap around the file

    def apply(self, path: Path) -> None:
        data = bytearray(path.read_bytes())
        for offset, mask in self.flips:
            if data:
                data[offset % len(data)] ^= mask
        path.write_bytes(bytes(data))


@dataclasses.dataclass(frozen=True)
class Truncate:
    length: int

    def apply(self, path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: self.length % (len(data) + 1)])


@dataclasses.dataclass(frozen=True)
class SpliceRun:
    offset: int
    run: bytes
    insert: bool  # insert (shifting the rest) or overwrite

    def apply(self, path: Path) -> None:
        data = path.read_bytes()
        at = self.offset % (len(data) + 1)
        end = at if self.insert else at + len(self.run)
        path.write_bytes(data[:at] + self.run + data[end:])


@dataclasses.dataclass(frozen=True)
class PageEdit:
    source: int
    target: int
    action: str  # "copy" source over target, "insert" a copy of source at target, "zero" target

    def apply(self, path: Path) -> None:
        data = path.read_bytes()
        pages = [data[i : i + PAGE] for i in range(0, len(data), PAGE)] or [b""]
        source, target = pages[self.source % len(pages)], self.target % len(pages)
        if self.action == "copy":
            pages[target] = source
        elif self.action == "insert":
            pages.insert(target, source)
        else:
            pages[target] = bytes(len(pages[target]))
        path.write_bytes(b"".join(pages))


raw_mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(
        FlipBytes,
        st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=8).map(
            tuple
        ),
    ),
    st.builds(Truncate, st.integers(0, 2**20)),
    st.builds(SpliceRun, st.integers(0, 2**20), st.binary(min_size=1, max_size=64), st.booleans()),
    st.builds(
        PageEdit,
        st.integers(0, 64),
        st.integers(0, 64),
        st.sampled_from(["copy", "insert", "zero"]),
    ),
)


# -- records -------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    """A connection for one edit: no fsync (the file is scratch), one transaction."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def rows(conn: sqlite3.Connection) -> list[tuple[Any, Any]]:
    return list(conn.execute("SELECT key, value FROM records ORDER BY key"))


def pick(conn: sqlite3.Connection, index: int) -> tuple[Any, Any]:
    found = rows(conn)
    return found[index % len(found)]


@dataclasses.dataclass(frozen=True)
class EditValue:
    """Flip, overwrite or cut bytes of one record's value (tag, kind, count or body)."""

    record: int
    offset: int
    run: bytes
    how: str  # "xor", "overwrite", "cut"

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, value = pick(conn, self.record)
            data = bytearray(value if isinstance(value, bytes) else b"")
            at = self.offset % (len(data) + 1)
            if self.how == "cut":
                data = data[:at]
            elif self.how == "overwrite":
                data[at : at + len(self.run)] = self.run
            else:
                for i, b in enumerate(self.run):
                    if at + i < len(data):
                        data[at + i] ^= b or 1
            conn.execute("UPDATE records SET value = ? WHERE key = ?", (bytes(data), key))
        conn.close()


@dataclasses.dataclass(frozen=True)
class SetField:
    """Replace the kind byte, the operation count or the whole body of one record."""

    record: int
    kind: bytes | None = None
    count: int | None = None
    body: bytes | None = None

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, value = pick(conn, self.record)
            data = bytes(value) if isinstance(value, bytes) else bytes(TAG + 5)
            data = data.ljust(TAG + 5, b"\0")
            if self.kind is not None:
                data = data[:TAG] + self.kind + data[TAG + 1 :]
            if self.count is not None:
                data = data[: TAG + 1] + self.count.to_bytes(4, "big") + data[TAG + 5 :]
            if self.body is not None:
                data = data[: TAG + 5] + self.body
            conn.execute("UPDATE records SET value = ? WHERE key = ?", (data, key))
        conn.close()


@dataclasses.dataclass(frozen=True)
class SetKey:
    """Give one record another key (any SQLite type), or copy it under that key too."""

    record: int
    key: object
    copy: bool

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, value = pick(conn, self.record)
            if self.copy:
                conn.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", (self.key, value))
            else:
                conn.execute("DELETE FROM records WHERE key = ?", (key,))
                conn.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", (self.key, value))
        conn.close()


@dataclasses.dataclass(frozen=True)
class SetTextKeyBytes:
    """Give one record a TEXT key made of arbitrary bytes (not necessarily UTF-8)."""

    record: int
    key: bytes

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, _ = pick(conn, self.record)
            conn.execute("UPDATE records SET key = CAST(? AS TEXT) WHERE key = ?", (self.key, key))
        conn.close()


@dataclasses.dataclass(frozen=True)
class SetValue:
    """Store another SQLite value (text, number, NULL) in place of one record's blob."""

    record: int
    value: object

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, _ = pick(conn, self.record)
            conn.execute("UPDATE records SET value = ? WHERE key = ?", (self.value, key))
        conn.close()


@dataclasses.dataclass(frozen=True)
class DeleteRows:
    records: tuple[int, ...]

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            doomed = {pick(conn, index)[0] for index in self.records}
            conn.executemany("DELETE FROM records WHERE key = ?", [(k,) for k in doomed])
        conn.close()


@dataclasses.dataclass(frozen=True)
class EditJson:
    """Replace one field of the header (record 0) or the seal (last record), or the whole body."""

    last: bool
    field: str | None
    text: str

    def __repr__(self) -> str:
        # Some texts are 100 kB of nesting; hypothesis warns (an error here) when it
        # has to print a falsifying example that long.
        text = (
            repr(self.text) if len(self.text) <= 40 else f"{self.text[:20]!r}...({len(self.text)})"
        )
        return f"EditJson(last={self.last}, field={self.field!r}, text={text})"

    def apply(self, path: Path) -> None:
        with connect(path) as conn:
            key, value = pick(conn, -1 if self.last else 0)
            body = self.text
            if self.field is not None:
                try:
                    document = json.loads(bytes(value)[TAG + 5 :])
                except ValueError:
                    document = {}
                if not isinstance(document, dict):
                    document = {}
                # Splice the text in raw, so that it need not be valid JSON.
                document[self.field] = "\0splice\0"
                body = json.dumps(document).replace('"\\u0000splice\\u0000"', self.text)
            data = bytes(value)[: TAG + 5] + body.encode("utf-8", "surrogatepass")
            conn.execute("UPDATE records SET value = ? WHERE key = ?", (data, key))
        conn.close()


def rechain(path: Path, key: bytes | None) -> None:
    """Recompute every tag in key order, and the seal's counts, as a forger would."""
    with connect(path) as conn:
        tag = GENESIS
        operations = 0
        for sequence, (row_key, value) in enumerate(rows(conn)):
            if not isinstance(value, bytes) or len(value) < TAG + 5:
                continue
            signed_part = value[TAG:]
            if signed_part[:1] == b"B":
                operations += int.from_bytes(signed_part[1:5], "big")
            elif signed_part[:1] == b"S":
                signed_part = signed_part[:5] + _reseal(signed_part[5:], sequence, operations, tag)
            tag = chain_tag(key, tag, sequence, signed_part)
            conn.execute("UPDATE records SET value = ? WHERE key = ?", (tag + signed_part, row_key))
    conn.close()


def _reseal(body: bytes, records: int, operations: int, digest: bytes) -> bytes:
    try:
        seal = json.loads(body)
    except ValueError:
        return body
    if not isinstance(seal, dict):
        return body
    seal.update(records=records, operations=operations, digest=digest.hex())
    return json.dumps(seal).encode()


record_indexes = st.integers(-8, 8)
sqlite_keys = st.one_of(
    st.integers(-2, 40).map(lambda n: f"{n:012d}"),
    st.integers(0, 40).map(str),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from(["", "000000000001 ", "00000000000²", "00000000000٣", "0x1", "1e3", "-1"]),
    st.text(max_size=14),
    st.binary(max_size=14),
)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_texts = st.one_of(
    st.sampled_from(
        [
            "null",
            "true",
            "1e400",
            "-1e400",
            "NaN",
            "Infinity",
            "1" * 5000,
            "[" * 50_000 + "]" * 50_000,
            '{"a":' * 50_000 + "1" + "}" * 50_000,
            '"\\ud800"',
            "[]",
            "{}",
            "[1, 2]",
            '"x"',
            "2",
            "1.0",
            "0",
            "-1",
            "2147483648",
            "{",
            "",
        ]
    ),
    st.one_of(
        json_leaves,
        st.lists(json_leaves, max_size=3),
        st.dictionaries(st.text(max_size=6), json_leaves, max_size=3),
    ).map(json.dumps),
    st.text(max_size=30),
)
header_fields = st.sampled_from(
    [
        "format",
        "journal_id",
        "created_at",
        "host",
        "signed",
        "versions",
        "meta",
        "records",
        "operations",
        "batches",
        "digest",
        "sealed_at",
    ]
)

record_mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(
        EditValue,
        record_indexes,
        st.integers(0, 4096),
        st.binary(min_size=1, max_size=16),
        st.sampled_from(["xor", "overwrite", "cut"]),
    ),
    st.builds(SetField, record_indexes, kind=st.binary(min_size=1, max_size=1)),
    st.builds(SetField, record_indexes, count=st.integers(0, 2**32 - 1)),
    st.builds(SetKey, record_indexes, sqlite_keys, st.booleans()),
    st.builds(SetTextKeyBytes, record_indexes, st.binary(min_size=1, max_size=14)),
    st.builds(
        SetValue,
        record_indexes,
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=50),
    ),
    st.builds(DeleteRows, st.lists(record_indexes, min_size=1, max_size=3).map(tuple)),
    st.builds(EditJson, st.booleans(), st.none() | header_fields, json_texts),
)


# -- bodies the decoder must survive --------------------------------------------------------


def ext_values(draw_codes: Sequence[int]) -> st.SearchStrategy[Any]:
    """msgpack ext values with the codec's codes (and some others) and arbitrary payloads."""
    return st.builds(
        msgpack.ExtType,
        st.sampled_from(list(draw_codes)) | st.integers(0, 127),
        st.binary(max_size=40),
    )


msgpack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    ext_values(range(1, 12)),
)
msgpack_trees = st.recursive(
    msgpack_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(-(2**63), 2**63 - 1), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def batch_bodies(draw: st.DrawFn) -> tuple[int, bytes]:
    """A chunk body and its operation count: well-formed batches with hostile values, or noise."""
    if draw(st.booleans()):
        operations = draw(st.lists(msgpack_trees, max_size=4))
        number = draw(st.integers(-2, 5) | st.booleans())
        body = msgpack.packb([number, operations], use_bin_type=True)
        return len(operations), body
    return draw(st.integers(0, 4)), draw(st.binary(max_size=200))
