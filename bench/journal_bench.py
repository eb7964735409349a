"""Append rate of the journal file against raw ``sqlite3`` writing the same bytes (issue 2).

Both sides write ``--n`` insert operations, as recording the ``_common`` workload produces
them (checked against a small real recording before any clock starts), in batches of
``--batch`` into a fresh file with the same durability: WAL, ``synchronous=FULL``, one
commit per batch, the write-ahead log folded into the file at the end. The journal side
is ``JournalWriter.create(...)``, ``append(batch)`` per batch, ``seal()``: it encodes,
chains and signs on the way. The raw side stores bytes encoded before its clock starts
(one row per batch, ``key TEXT PRIMARY KEY, value BLOB``, as the journal lays out a
1,000-operation chunk), so it is the floor: what SQLite alone costs. The script also prints
the ratio the journal would reach if its own writing cost no more than the raw side's, so
that only encoding is left between them.

Run: ``python bench/journal_bench.py [--n 100000] [--batch 1000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    CHILDREN_PER_PARENT,
    Workload,
    best,
    child_values,
    make_engine,
    parent_values,
    record,
    report,
    reset_tables,
    settle,
    sqlite_url,
    stopwatch,
    verdict,
)

from journal import Journal, JournalWriter, codec

TARGET = 0.5
# tag (32 bytes) + kind (1) + operation count (4): the journal's per-record prefix.
RECORD_PREFIX = bytes(37)


def operations(n: int) -> list[dict[str, Any]]:
    """``n`` inserts as recording the workload writes them: each parent, then its children.

    Family ``i`` is parent ``i`` (ref ``11 i + 1``) and its ten children, with the values of
    :func:`_common.parent_values` and :func:`_common.child_values`, keys in column order.
    """
    ops = []
    family_size = 1 + CHILDREN_PER_PARENT
    for ref in range(1, n + 1):
        family, position = divmod(ref - 1, family_size)
        if position == 0:
            ops.append(
                {
                    "op": "insert",
                    "class": "_common:Parent",
                    "table": "parent",
                    "ref": ref,
                    "values": parent_values(family),
                }
            )
            continue
        ops.append(
            {
                "op": "insert",
                "class": "_common:Child",
                "table": "child",
                "ref": ref,
                "values": child_values(family, position - 1),
                "links": {"parent": ref - position},
            }
        )
    return ops


def check_operations(directory: Path) -> None:
    """Fail unless :func:`operations` equals what recording two families writes, key order too."""
    workload = Workload(parents=2)
    engine = make_engine(sqlite_url(directory / "check.sqlite"))
    try:
        reset_tables(engine)
        record(engine, directory / "check.journal", workload.object_chunks())
    finally:
        engine.dispose()
    with Journal(directory / "check.journal") as journal:
        recorded = [op for _, op in journal.operations()]
    expected = operations(workload.objects)
    if _ordered(recorded) != _ordered(expected):
        raise SystemExit(
            "journal_bench: the benchmark's operations differ from what recording writes;"
            f"\nrecorded: {recorded[:2]}\nbench:    {expected[:2]}"
        )


def _ordered(value: Any) -> Any:
    # Equal is not enough: dictionaries compare equal in any order and Decimal("1.0")
    # equals Decimal("1"), but the encoded bytes (and their size) differ.
    if isinstance(value, dict):
        return [(key, _ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return (type(value), repr(value))


def batches_of(ops: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [ops[i : i + size] for i in range(0, len(ops), size)]


def write_journal(path: Path, batches: list[list[dict[str, Any]]]) -> None:
    writer = JournalWriter.create(path, overwrite=True, key=None)
    for batch in batches:
        writer.append(batch)
    writer.seal()


def write_raw(path: Path, blobs: list[bytes]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE records (key TEXT PRIMARY KEY, value BLOB)")
        for number, blob in enumerate(blobs, start=1):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO records VALUES (?, ?)", [(f"{number:012d}", blob)])
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000, help="operations (default 100000)")
    parser.add_argument("--batch", type=int, default=1_000, help="operations per batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best counts")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        check_operations(Path(tmp))
    batches = batches_of(operations(args.n), args.batch)
    encode_times: list[float] = []
    for _ in range(args.repeat):
        with stopwatch(encode_times):
            blobs = [RECORD_PREFIX + codec.encode([i, b]) for i, b in enumerate(batches, start=1)]

    journal_times: list[float] = []
    raw_times: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.repeat):
            settle()
            with stopwatch(raw_times):
                write_raw(Path(tmp) / "raw.sqlite", blobs)
            settle()
            with stopwatch(journal_times):
                write_journal(Path(tmp) / "bench.journal", batches)
        size = (Path(tmp) / "bench.journal").stat().st_size

    journal_rate = args.n / best(journal_times)
    raw_rate = args.n / best(raw_times)
    ratio = journal_rate / raw_rate
    print(
        f"journal_bench: {args.n:,} insert operations in batches of {args.batch:,}, "
        f"best of {args.repeat}; journal file {size / 2**20:.1f} MB"
    )
    report(
        [
            ("raw sqlite3 executemany", f"{raw_rate:>12,.0f} ops/s  ({best(raw_times):.3f} s)"),
            ("JournalWriter", f"{journal_rate:>12,.0f} ops/s  ({best(journal_times):.3f} s)"),
            (
                "codec.encode alone",
                f"{args.n / best(encode_times):>12,.0f} ops/s  "
                f"({best(encode_times):.3f} s, not in either figure)",
            ),
            ("ratio journal / raw", f"{ratio:.2f}  ({verdict(ratio, TARGET, at_most=False)})"),
            (
                "bound with free storage",
                f"{best(raw_times) / (best(raw_times) + best(encode_times)):.2f}  (raw / (raw + "
                "encode alone): the ratio if writing cost no more than the raw side)",
            ),
        ]
    )


if __name__ == "__main__":
    main()
