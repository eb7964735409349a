"""Damage to a journal's SQLite structure, malformed operations, and a child that reads them.

For ``tests/reliability/test_fuzz_structure.py``:

* :data:`STRUCTURES`: edits of a valid journal's schema, each a :class:`Structure` whose
  ``apply(path, donor)`` runs SQL on the file: a view named ``records`` over the renamed
  table (serving all, some or another valid journal's rows, or never ending), a trigger,
  another table, view or index, or ``records`` declared another way. The format allows
  none of them. :class:`RotatedIndex` keeps the schema text and points the table's index
  at other entries, which only the records' chain can tell.
* :func:`programs` and :func:`malformed_programs`: hypothesis strategies for batches of
  valid recorded operations on :mod:`tests.models` (docs/concepts/operations.md gives
  the shape), and for the same with one operation made malformed (:class:`Corruption`).
* The child process, ``python -m tests.reliability.structure_mutations CASE`` where
  ``CASE`` is a JSON file: for each of its jobs it reads the journal through
  :class:`journal.Journal`, runs ``orm-journal inspect``, ``inspect --json`` and
  ``verify`` (``orm_ext.cli.main``, output captured as a pipe would take it) and
  ``reconnect_and_commit`` into the job's SQLite database, then writes what each step
  did to the case's result file. It announces every step on stderr first, so that a
  parent that kills it for hanging can say which step hung.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# -- the container ------------------------------------------------------------------------

RENAME = "ALTER TABLE records RENAME TO real_records"
# A recursive CTE without end: each row it makes is consumed at once, so it runs
# forever in constant memory (a hang, not an out-of-memory kill).
ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
BATCH_KIND = "substr(value, 33, 1)"  # tag (32 bytes), then the kind byte


@dataclasses.dataclass(frozen=True)
class Structure:
    """SQL statements run on a journal file, in one transaction.

    With ``donor_rows`` the donor journal's records are first copied into a table
    ``donor_records`` of the file (a view cannot read another database file).
    """

    name: str
    statements: tuple[str, ...]
    donor_rows: bool = False

    def __str__(self) -> str:
        return self.name

    def apply(self, path: Path, donor: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")
            if self.donor_rows:
                conn.execute("ATTACH DATABASE ? AS donor", (os.fspath(donor),))
                conn.execute("CREATE TABLE donor_records AS SELECT key, value FROM donor.records")
                conn.execute("DETACH DATABASE donor")
            conn.execute("BEGIN")
            for statement in self.statements:
                conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            conn.close()


def view(name: str, select: str, *, donor_rows: bool = False) -> Structure:
    """``records`` renamed, and a view of that name serving ``select``."""
    return Structure(name, (RENAME, f"CREATE VIEW records AS {select}"), donor_rows)


def redeclared(name: str, declaration: str, columns: str = "key, value") -> Structure:
    """``records`` re-created as ``declaration`` (a table or virtual table) with the same rows."""
    return Structure(
        name,
        (
            RENAME,
            declaration,
            f"INSERT INTO records ({columns}) SELECT key, value FROM real_records",
            "DROP TABLE real_records",
        ),
    )


@dataclasses.dataclass(frozen=True)
class RotatedIndex:
    """Point the table's own index at another index's entries; the schema text is unchanged.

    The other index pairs each batch record's key with the next batch record's row (the
    header and seal keep theirs), so a read in key order sees the batches rotated. The
    index it came from is then removed from the schema (``writable_schema``), leaving
    exactly the format's two schema entries.
    """

    name: str = "autoindex-rotated"

    def __str__(self) -> str:
        return self.name

    def apply(self, path: Path, donor: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")
            rows = conn.execute(
                f"SELECT rowid, key, {BATCH_KIND} = X'42' FROM records ORDER BY key"
            ).fetchall()
            batches = [(rowid, key) for rowid, key, is_batch in rows if is_batch]
            entries = [(rowid, key) for rowid, key, is_batch in rows if not is_batch]
            entries += [
                (batches[(i + 1) % len(batches)][0], key) for i, (_, key) in enumerate(batches)
            ]
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE decoy (key TEXT PRIMARY KEY, value BLOB)")
            conn.executemany("INSERT INTO decoy (rowid, key) VALUES (?, ?)", entries)
            (root,) = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_decoy_1'"
            ).fetchone()
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute(
                "UPDATE sqlite_master SET rootpage = ? WHERE name = 'sqlite_autoindex_records_1'",
                (root,),
            )
            conn.execute("DELETE FROM sqlite_master WHERE tbl_name = 'decoy'")
            conn.execute("PRAGMA writable_schema = OFF")
            conn.execute("COMMIT")
        finally:
            conn.close()


REAL = "SELECT key, value FROM real_records"
# Every one of these leaves a file that is not the format's container: Journal() refuses it.
STRUCTURES: tuple[Structure, ...] = (
    view("view-identity", REAL),
    view("view-of-donor", "SELECT key, value FROM donor_records", donor_rows=True),
    view(
        "view-picks-a-journal-per-query",
        "WITH pick(p) AS MATERIALIZED (SELECT abs(random()) % 2) "
        "SELECT key, value FROM real_records, pick WHERE p = 0 "
        "UNION ALL SELECT key, value FROM donor_records, pick WHERE p = 1",
        donor_rows=True,
    ),
    view(
        "view-drops-last-batch",
        f"{REAL} WHERE key <> (SELECT max(key) FROM real_records WHERE {BATCH_KIND} = X'42')",
    ),
    view(
        "view-drops-batches-at-random",
        f"{REAL} WHERE {BATCH_KIND} <> X'42' OR abs(random()) % 3 <> 0",
    ),
    view("view-endless-count", f"{ENDLESS}{REAL} WHERE (SELECT count(*) FROM r) > 0"),
    view("view-endless-join", f"{ENDLESS}SELECT key, value FROM real_records, r WHERE n = 0"),
    Structure(
        "trigger",
        (
            "CREATE TRIGGER records_rewrite AFTER UPDATE ON records "
            "BEGIN DELETE FROM records WHERE key = old.key; END",
        ),
    ),
    Structure(
        "trigger-on-view",
        (
            RENAME,
            f"CREATE VIEW records AS {REAL}",
            "CREATE TRIGGER records_insert INSTEAD OF INSERT ON records "
            "BEGIN INSERT INTO real_records VALUES (new.key, new.value); END",
        ),
    ),
    Structure("extra-table", ("CREATE TABLE notes (note TEXT)",)),
    Structure("extra-table-of-donor-rows", (), donor_rows=True),
    Structure("extra-view", ("CREATE VIEW recent AS SELECT key FROM records",)),
    Structure("analyze", ("ANALYZE",)),
    Structure("index-on-value", ("CREATE INDEX records_value ON records (value)",)),
    Structure(
        "index-partial",
        ("CREATE INDEX records_tail ON records (key) WHERE key > '000000000001'",),
    ),
    Structure(
        "index-on-expression",
        (f"CREATE INDEX records_kind ON records ({BATCH_KIND}, key)",),
    ),
    Structure("index-unique-desc", ("CREATE UNIQUE INDEX records_desc ON records (key DESC)",)),
    redeclared(
        "without-rowid",
        'CREATE TABLE "records" (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID',
    ),
    redeclared("integer-key", 'CREATE TABLE "records" (key INTEGER PRIMARY KEY, value BLOB)'),
    redeclared("text-value", 'CREATE TABLE "records" (key TEXT PRIMARY KEY, value TEXT)'),
    redeclared(
        "extra-column",
        "CREATE TABLE \"records\" (key TEXT PRIMARY KEY, value BLOB, note TEXT DEFAULT 'x')",
    ),
    redeclared("no-primary-key", 'CREATE TABLE "records" (key TEXT, value BLOB)'),
    redeclared("key-desc", 'CREATE TABLE "records" (key TEXT PRIMARY KEY DESC, value BLOB)'),
    redeclared(
        "key-nocase", 'CREATE TABLE "records" (key TEXT PRIMARY KEY COLLATE NOCASE, value BLOB)'
    ),
    redeclared("strict", 'CREATE TABLE "records" (key TEXT PRIMARY KEY, value BLOB) STRICT'),
    redeclared(
        "generated-value",
        'CREATE TABLE "records" (key TEXT PRIMARY KEY, raw BLOB, value BLOB AS (raw))',
        columns="key, raw",
    ),
    redeclared("fts5", "CREATE VIRTUAL TABLE records USING fts5(key, value)"),
)


# -- operations ---------------------------------------------------------------------------

TASK = "tests.models:Task"
VERSION = "tests.models:AssetVersion"
POST = "tests.models:Post"
ACCOUNT = "tests.models:Account"
TABLES = {TASK: "task", VERSION: "asset_version", POST: "post", ACCOUNT: "account"}
# A column attribute of each class, for corruptions that need one to be found wrong later.
COLUMNS = {TASK: "name", VERSION: "task_id", POST: "title", ACCOUNT: "code"}
# What the seeded database holds (see test_fuzz_structure.seed_rows): the rows that the
# operations below name by primary key.
EXISTING_TASK, EXISTING_ASSET, EXISTING_POST, FREE_TAG, EXISTING_ACCOUNT = 1, 1, 1, 2, 1

STEP_KINDS = (
    "insert_task",
    "insert_version",
    "update_task",
    "delete_task",
    "bulk_insert",
    "bulk_update",
    "bulk_update_rows",
    "bulk_delete",
    "link_tag",
    "update_account",
)


def operation(kind: str, cls: str, **fields: Any) -> dict[str, Any]:
    return {"op": kind, "class": cls, "table": TABLES[cls], **fields}


def build_program(steps: list[str], cuts: set[int]) -> list[list[dict[str, Any]]]:
    """Valid batches of operations: one per step, a new batch before each index in ``cuts``.

    Updates and deletes of new objects name objects of earlier batches (as a recording
    does); steps that cannot apply (nothing to update yet, the account already changed)
    become inserts.
    """
    batches: list[list[dict[str, Any]]] = [[]]
    live: dict[int, str] = {}  # refs of new tasks from earlier batches -> their name
    fresh: dict[int, str] = {}
    ref = 0
    account_changed = False
    for index, step in enumerate(steps):
        if index in cuts and batches[-1]:
            batches.append([])
            live.update(fresh)
            fresh = {}
        if step in ("update_task", "delete_task") and not live:
            step = "insert_task"
        if step == "update_account" and account_changed:
            step = "link_tag"
        if step == "insert_task":
            ref += 1
            fresh[ref] = f"new-{ref}"
            op = operation("insert", TASK, ref=ref, values={"name": fresh[ref]})
        elif step == "insert_version":
            ref += 1
            op = operation(
                "insert",
                VERSION,
                ref=ref,
                values={"version": 100 + ref, "is_published": False},
                links={"asset": [EXISTING_ASSET]},
            )
            if live:
                op["refs"] = {"task_id": [min(live), "id"]}
            else:
                op["links"]["task"] = [EXISTING_TASK]
        elif step == "update_task":
            target = min(live)
            op = operation(
                "update",
                TASK,
                target=target,
                values={"name": f"renamed-{target}"},
                old={"name": live[target]},
            )
            live[target] = f"renamed-{target}"
        elif step == "delete_task":
            target = max(live)
            op = operation("delete", TASK, target=target, old={"name": live.pop(target)})
        elif step == "bulk_insert":
            op = operation("bulk_insert", TASK, rows=[{"name": "bulk-a"}, {"name": "bulk-b"}])
        elif step == "bulk_update":
            op = operation(
                "bulk_update",
                TASK,
                where=["and", [["cmp", "like", "name", "bulk-%"], ["cmp", "gt", "id", 0]]],
                values={"name": "bulk-z"},
            )
        elif step == "bulk_update_rows":
            op = operation("bulk_update", TASK, rows=[{"id": 2, "name": "t2-bulk"}])
        elif step == "bulk_delete":
            op = operation(
                "bulk_delete",
                TASK,
                where=["or", [["cmp", "eq", "name", "none"], ["cmp", "in", "name", ["bulk-z"]]]],
            )
        elif step == "link_tag":
            op = operation(
                "update",
                POST,
                target=[EXISTING_POST],
                values={},
                old={},
                added={"tags": [[FREE_TAG]]},
            )
        else:
            account_changed = True
            op = operation(
                "update",
                ACCOUNT,
                target=[EXISTING_ACCOUNT],
                values={"code": "c2"},
                old={"code": "c1"},
                version=[1, 2],
            )
        batches[-1].append(op)
    return batches


@st.composite
def programs(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Batches of valid operations on the seeded database of :mod:`tests.models`."""
    steps = draw(st.lists(st.sampled_from(STEP_KINDS), min_size=1, max_size=8))
    cuts = draw(st.sets(st.integers(1, max(1, len(steps) - 1)), max_size=3))
    return build_program(steps, cuts)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """One way to make an operation malformed.

    ``shape``: the operation no longer has the documented shape (a field of the wrong
    type, a required field missing, an unknown kind, a target that cannot name a row), so
    replay must refuse it as a JournalCorruptError naming the operation. The others keep
    the shape but name something that does not exist (a class, an attribute, a
    relationship, a ref, a row): replay must refuse them with some SPEC §2 error.
    """

    action: str  # "replace" the whole operation, "drop" a field, "set" a field, "merge" into one
    field: str | None = None
    value: Any = None
    shape: bool = True

    def apply(self, op: dict[str, Any]) -> Any:
        if self.action == "replace":
            return self.value
        changed = dict(op)
        assert self.field is not None
        if self.action == "drop":
            del changed[self.field]
        elif self.action == "merge":
            changed[self.field] = {**changed[self.field], **self.value}
        else:
            changed[self.field] = self.value
        return changed


NOT_STR = (None, 7, 1.5, True, b"insert", ["insert"], {"op": "insert"})
NOT_DICT = (None, 7, "name", b"name", True, [], [["name", "x"]])
NOT_LIST = (None, 7, "ab", b"ab", True, {"name": "x"})
NOT_REF = (None, "1", 1.5, True, b"\x01", [1], {"ref": 1})
# Neither an int (a ref) nor a list of primary key values of the mapper's key length.
BAD_TARGETS = ("1", 1.5, True, b"\x01", {"id": 1}, [], [1, 2], [[1]], [{"id": 1}])
BAD_PAIRS = ([1], "ab", [1, "id", 3], ["1", "id"], [1, 2], None, 5, [True, "id"], [None, "id"])
NON_STR_KEYS = ({1: "x"}, {b"name": "x"}, {None: "x"}, {(1,): "x"}, {True: "x"})
UNKNOWN_KINDS = ("upsert", "", "INSERT", "insert ", "bulk_", "bulk_merge", "bulk_upsert", "Delete")
NOT_CLASSES = (
    "nosuch.module:Thing",
    "tests.models:Nope",
    "tests.models",
    "tests.models:",
    ":",
    "tests.models:Base",
    "os:system",
    "builtins:int",
    "tests.models:Task.name",
    "tests.models:Task.__init__",
)
BAD_WHERE = (
    "x",
    5,
    True,
    [],
    ["cmp"],
    ["cmp", "eq", "name"],
    ["cmp", "eq", "name", "x", "y"],
    ["cmp", "zz", "name", "x"],
    ["cmp", 1, "name", "x"],
    ["cmp", "eq", 5, "x"],
    ["cmp", "in", "name", "not a list"],
    ["and", "x"],
    ["and", [5]],
    ["and", [["cmp"]]],
    ["or", None],
    ["not"],
    ["not", "x"],
    ["xor", []],
    {"cmp": 1},
)
# Well-shaped comparisons of attributes that are no columns: evaluated as Python, some of
# them are simply True (``Task.__tablename__ == "task"``), which would match every row.
WHERE_ON_NO_COLUMN = (
    ["cmp", "eq", "nosuch", "x"],
    ["cmp", "eq", "__tablename__", "task"],
    ["cmp", "ne", "__tablename__", "x"],
    ["cmp", "eq", "metadata", "x"],
    ["cmp", "eq", "__class__", "x"],
)


def _choices(values: tuple[Any, ...], action: str, field: str, *, shape: bool = True) -> list[Any]:
    return [Corruption(action, field, value, shape) for value in values]


def corruptions(op: dict[str, Any], earlier_refs: list[int]) -> list[Corruption]:
    """Every corruption that applies to ``op`` (refs of earlier inserts allow a duplicate)."""
    kind = op["op"]
    found = [Corruption("replace", None, v) for v in (None, 7, "insert", b"op", [], [kind], True)]
    found += [Corruption("drop", f) for f in ("op", "class", "table")]
    found += _choices(NOT_STR + UNKNOWN_KINDS, "set", "op")
    found += _choices(NOT_STR, "set", "class")
    found += _choices(NOT_CLASSES, "set", "class", shape=False)
    found += _choices(NOT_STR, "set", "table")
    if kind == "insert":
        found += [Corruption("drop", "ref"), Corruption("drop", "values")]
        found += _choices(NOT_REF, "set", "ref")
        found += _choices(tuple(earlier_refs[-1:]), "set", "ref", shape=False)
    if kind in ("update", "delete"):
        found += [Corruption("drop", "target"), Corruption("drop", "old")]
        found += _choices(BAD_TARGETS, "set", "target")
        # A ref nothing created, a row that is not there, a key that cannot exist.
        found += _choices((999, [999], [None]), "set", "target", shape=False)
        found += _choices(NOT_DICT, "set", "old")
        if isinstance(op["target"], list):
            found += _choices(({"nosuch": 1},), "merge", "old", shape=False)
    if kind in ("insert", "update") or (kind == "bulk_update" and "values" in op):
        if kind != "insert":
            found.append(Corruption("drop", "values"))
        found += _choices(NOT_DICT, "set", "values")
        found += _choices(NON_STR_KEYS, "merge", "values")
        found += _choices(({"nosuch": 1}, {"metadata": 1}), "merge", "values", shape=False)
    if kind in ("insert", "update"):
        column = COLUMNS[op["class"]]
        found += _choices(NOT_DICT, "set", "refs")
        found += [Corruption("set", "refs", {column: pair}) for pair in BAD_PAIRS]
        found += _choices(
            ({column: [999, "id"]}, {"nosuch": [999, "id"]}), "set", "refs", shape=False
        )
        found += _choices(NOT_DICT, "set", "links")
        found += _choices(({"nosuch": [1]},), "set", "links", shape=False)
        found += _choices(NOT_DICT, "set", "added")
        found += _choices(({"nosuch": [[1]]},), "set", "added", shape=False)
    if op["class"] == VERSION:
        found += [Corruption("set", "links", {"asset": t}) for t in BAD_TARGETS]
        found += _choices(({"asset": [999]},), "set", "links", shape=False)
    if op["class"] == POST and kind == "update":
        for field in ("added", "removed"):
            found += _choices(NOT_DICT, "set", field)
            found += [
                Corruption("set", field, {"tags": v})
                for v in (5, "ab", b"ab", None, [None], *([t] for t in BAD_TARGETS))
            ]
    if op["class"] == ACCOUNT and kind == "update":
        found += _choices(("x", [1], [1, 2, 3], {"old": 1}, True, [True, 2]), "set", "version")
    if "rows" in op:
        found.append(Corruption("drop", "rows"))
        found += _choices(NOT_LIST, "set", "rows")
        found += _choices(
            ([1], ["x"], [None], [[["name", "x"]]], *([k] for k in NON_STR_KEYS)), "set", "rows"
        )
        found += _choices(([{"nosuch": 1}],), "set", "rows", shape=False)
    if kind in ("bulk_update", "bulk_delete") and "rows" not in op:
        # Without "where" the statement would touch every row of the table.
        found.append(Corruption("drop", "where"))
        found += _choices(BAD_WHERE, "set", "where")
        found += _choices(WHERE_ON_NO_COLUMN, "set", "where", shape=False)
    return found


@dataclasses.dataclass(frozen=True)
class Malformed:
    """Batches of operations in which the one at ``sequence`` (in record ``record``) is bad."""

    batches: list[list[Any]]
    sequence: int
    record: int
    corruption: Corruption


@st.composite
def malformed_programs(draw: st.DrawFn) -> Malformed:
    """A valid program with one of its operations corrupted."""
    batches = draw(programs())
    flat = [(b, i) for b, batch in enumerate(batches) for i in range(len(batch))]
    number, index = draw(st.sampled_from(flat))
    op = batches[number][index]
    earlier_refs = [
        batches[b][i]["ref"]
        for b, i in flat[: flat.index((number, index))]
        if batches[b][i]["op"] == "insert"
    ]
    corruption = draw(st.sampled_from(corruptions(op, earlier_refs)))
    changed = [list(batch) for batch in batches]
    changed[number][index] = corruption.apply(op)
    sequence = 1 + sum(len(batch) for batch in batches[:number]) + index
    # Record 0 is the header; each batch here is one record (fewer than 1,000 operations).
    return Malformed(changed, sequence, number + 1, corruption)


def corrupt_last(steps: list[str], corruption: Corruption, cuts: tuple[int, ...] = ()) -> Malformed:
    """The program of ``steps`` (see :func:`build_program`) with its last operation corrupted."""
    batches = build_program(steps, set(cuts))
    changed = [list(batch) for batch in batches]
    changed[-1][-1] = corruption.apply(batches[-1][-1])
    return Malformed(changed, sum(map(len, batches)), len(batches), corruption)


def nested_criteria(depth: int) -> list[Any]:
    """``name = 'none'`` inside ``depth`` alternating ``and``/``or`` levels (matches no row)."""
    criteria: list[Any] = ["cmp", "eq", "name", "none"]
    for level in range(depth):
        criteria = ["and" if level % 2 else "or", [["cmp", "eq", "name", "none"], criteria]]
    return criteria


# -- the child process --------------------------------------------------------------------


def _announce(job: str, step: str) -> None:
    print(f"{job}: {step}", file=sys.__stderr__, flush=True)


def _attempt(report: dict[str, Any], job: str, step: str, action: Callable[[], Any]) -> Any:
    """Run one step; record None for success, else the exception's type, message and traceback."""
    _announce(job, step)
    try:
        result = action()
    except BaseException as err:  # the parent judges which errors were allowed
        kind = type(err)
        report[step] = {
            "error": f"{kind.__module__}.{kind.__qualname__}",
            "message": str(err),
            "traceback": traceback.format_exc(),
        }
        return None
    report[step] = {"error": None}
    return result


def run_command(argv: list[str]) -> dict[str, Any]:
    """Run ``orm-journal ARGV`` in this process, its output captured as a pipe would take it.

    Returns the exit status, the output, and the traceback of an exception that escaped
    ``main()`` (the console script would have printed it).
    """
    from orm_ext.cli import main

    out, err = io.StringIO(), io.StringIO()
    status: int | None = None
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except BaseException:  # the console script would print a traceback
            escaped = traceback.format_exc()
    return {
        "status": status,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "escaped": escaped,
    }


def _read(report: dict[str, Any], job: str, path: str, key: str | None) -> None:
    from journal import Journal

    journal = _attempt(report, job, "open", lambda: Journal(path, key=key))
    if journal is None:
        return
    with journal:
        _attempt(report, job, "state", lambda: (journal.state, journal.header, repr(journal)))
        _attempt(report, job, "verify", journal.verify)
        batches = _attempt(
            report,
            job,
            "batches",
            lambda: [(b.number, b.first_sequence, b.operations) for b in journal.batches()],
        )
        if batches is not None:
            report["batches"]["content"] = repr(batches)
        _attempt(report, job, "operations", lambda: list(journal.operations()))


def _replay(report: dict[str, Any], job: str, path: str, key: str | None, database: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    import tests.models  # noqa: F401 - the journal's classes must be mapped in this process
    from orm_ext import JournalingSession

    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        sessions = sessionmaker(engine, class_=JournalingSession, journal_key=key)

        def run() -> bool:
            with sessions() as session:
                return session.reconnect_and_commit(path).applied

        applied = _attempt(report, job, "replay", run)
        report["replay"]["applied"] = applied
    finally:
        engine.dispose()


def run_case(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Read every journal of ``case`` every way; return what each step did, per job."""
    reports: dict[str, dict[str, Any]] = {}
    for job in case["jobs"]:
        name, path, key = job["name"], job["path"], job["key"]
        report = reports[name] = {}
        _read(report, name, path, key)
        keyed = [] if key is None else ["--key", key]
        for step, argv in (
            ("inspect", ["inspect", *keyed, path]),
            ("inspect --json", ["inspect", "--json", *keyed, path]),
            ("verify --cli", ["verify", *keyed, path]),
        ):
            _announce(name, step)
            report[step] = run_command(argv)
        _replay(report, name, path, key, job["database"])
    return reports


def main(argv: list[str]) -> int:
    case = json.loads(Path(argv[0]).read_text())
    reports = run_case(case)
    Path(case["result"]).write_text(json.dumps(reports))
    _announce("case", "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
