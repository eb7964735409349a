"""The replay fast path: a recorded flush of plain inserts as bulk ``INSERT ... RETURNING``.

A per-object flush costs many times what one multi-row ``INSERT ... RETURNING`` of the
same rows costs. A batch qualifies only when the result cannot differ from what the
unit of work would do with the same objects:

* the batch holds only inserts (the unit of work orders updates of a table before its
  inserts, deletes after them; mixing in bulk inserts could change which unique value
  is free when);
* every class maps one table with no mapper-level insert events, no version counter,
  a single-column primary key, and no collection links recorded on the insert;
* no object links to another object of its own class in the batch (row-level order),
  the tables sort without cycles, and every foreign key points at the primary key of
  its target.

Tables are written in the order ``sort_tables`` gives (SQLAlchemy's own dependency sort
of foreign keys, the one the unit of work follows between mappers); within a table rows
keep their recorded order (``sort_by_parameter_order``) so keys map back to placeholders.
On PostgreSQL with psycopg the rows of a table go as one array per column through
``INSERT ... SELECT ... FROM unnest(...)`` (see :func:`_insert_unnest`). Everything else
replays through the unit of work.
"""

from __future__ import annotations

import datetime as dt
import decimal
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Dialect, Insert, insert, select
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.schema import sort_tables_and_constraints
from sqlalchemy.sql import sqltypes

from journal import Batch
from orm_ext.exc import DeferredOperationError, ReplayConflictError
from orm_ext.mapper_plan import plan_for
from orm_ext.sa_private import (
    bind_processor,
    dialect_impl,
    has_result_processor,
    insertmanyvalues,
    scalar_default,
)


class Replay(Protocol):
    """What a bulk insert needs of the replay running it (:class:`orm_ext.replay.Replay`).

    Declared here rather than imported, so that the replay module uses this one and not
    the other way round.
    """

    session: Session
    path: str

    def mapper(self, path: str) -> Mapper[Any]: ...

    def key_value(self, ref: int, attribute: str) -> Any: ...


__all__ = ["BulkInsert", "Run", "plan_batch"]


@dataclass
class Run:
    """Consecutive operations of a batch applied the same way."""

    operations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    bulk: BulkInsert | None = None


_eligible: dict[Mapper[Any], bool] = {}


def _mapper_eligible(mapper: Mapper[Any]) -> bool:
    # Mapper listeners play no part: replay fires none (see orm_ext.replay_events).
    found = _eligible.get(mapper)
    if found is None:
        plan = plan_for(mapper)
        found = _eligible[mapper] = (
            mapper.inherits is None
            and mapper.polymorphic_on is None
            and len(mapper.tables) == 1
            and len(mapper.primary_key) == 1
            and plan.version is None
            and all(
                remote == plan_for(mapper.relationships[key].mapper).primary_key[0]
                for key, pairs in plan.many_to_one_pairs.items()
                for _, remote in pairs
            )
        )
    return found


def plan_batch(replay: Replay, batch: Batch) -> Sequence[Run]:
    """Split a recorded batch into runs: one bulk run if it qualifies, else the unit of work."""
    numbered = list(enumerate(batch.operations, start=batch.first_sequence))
    bulk = _bulk_plan(replay, numbered)
    if bulk is None:
        return [Run(numbered)]
    return [Run(numbered, bulk)]


def _bulk_plan(replay: Replay, numbered: list[tuple[int, dict[str, Any]]]) -> BulkInsert | None:
    by_mapper: dict[Mapper[Any], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    refs_here: dict[int, Mapper[Any]] = {}
    classes: dict[str, Mapper[Any]] = {}
    for sequence, op in numbered:
        if op["op"] != "insert":
            return None
        mapper = classes.get(op["class"])
        if mapper is None:
            mapper = classes[op["class"]] = replay.mapper(op["class"])
            if not _mapper_eligible(mapper):
                return None
        by_mapper[mapper].append((sequence, op))
        refs_here[op["ref"]] = mapper
    # Rows that existed at recording time which links name: target mapper -> key -> first
    # operation naming it.
    existing: dict[Mapper[Any], dict[Any, tuple[int, dict[str, Any]]]] = defaultdict(dict)
    # Links to new objects of other classes: their table first, with or without a foreign
    # key constraint between the tables (a relationship with foreign() annotations).
    linked: set[tuple[Any, Any]] = set()
    for mapper, ops in by_mapper.items():
        for sequence, op in ops:
            if "added" in op:
                return None  # a collection recorded on this side
            links = op.get("links")
            if links:
                for key, target in links.items():
                    if type(target) is int:
                        parent = refs_here.get(target)
                        if parent is mapper:
                            return None  # row-level order within one table
                        if parent is not None:
                            linked.add((parent.local_table, mapper.local_table))
                    elif isinstance(target, list):
                        existing[mapper.relationships[key].mapper].setdefault(
                            target[0], (sequence, op)
                        )
            refs = op.get("refs")
            if refs and any(ref in refs_here for ref, _ in refs.values()):
                return None
    tables = {mapper.local_table: mapper for mapper in by_mapper}
    order: list[Mapper[Any]] = []
    # The last entry, (None, constraints), lists foreign keys that form cycles.
    for table, constraints in sort_tables_and_constraints(  # type: ignore[no-untyped-call]
        list(tables), extra_dependencies=linked
    ):
        if table is None:
            if constraints:
                return None
        else:
            order.append(tables[table])
    return BulkInsert([(m, by_mapper[m]) for m in order], existing)


@dataclass
class BulkInsert:
    """Inserts of one batch, grouped by class in foreign-key order."""

    groups: list[tuple[Mapper[Any], list[tuple[int, dict[str, Any]]]]]
    existing: dict[Mapper[Any], dict[Any, tuple[int, dict[str, Any]]]]

    def execute(self, replay: Replay) -> Iterator[tuple[Mapper[Any], list[int], list[Any]]]:
        """Insert the groups in order; yield each one's mapper, refs and the keys they got.

        The caller keeps each group's keys before asking for the next group, whose rows
        may link to them (through ``replay.key_of``).
        """
        self._check_targets(replay)
        for mapper, ops in self.groups:
            pk_attr = plan_for(mapper).primary_key[0]
            rows = _rows(replay, mapper, ops)
            if _sqlite_rowids(replay, mapper, pk_attr, rows):
                keys = _insert_with_rowids(replay, mapper, pk_attr, rows)
            else:
                keys = _insert_returning(replay, mapper, pk_attr, rows)
            del rows
            yield mapper, [op["ref"] for _, op in ops], keys

    def _check_targets(self, replay: Replay) -> None:
        # A link to a row that existed at recording time must still find it: the unit of
        # work path raises for a missing target, so the bulk path must too.
        for target_mapper, keys in self.existing.items():
            column = target_mapper.primary_key[0]
            found: set[Any] = set()
            values = list(keys)
            for start in range(0, len(values), 500):
                chunk = values[start : start + 500]
                found.update(
                    replay.session.execute(select(column).where(column.in_(chunk))).scalars()
                )
            for value, (sequence, op) in keys.items():
                if value not in found:
                    raise missing_target(replay, sequence, op, target_mapper, [value])


def _rows(
    replay: Replay, mapper: Mapper[Any], ops: list[tuple[int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The attribute values of each insert, with links and placeholders resolved to keys."""
    plan = plan_for(mapper)
    # key -> (foreign key attribute, primary key attribute of the target)
    foreign = {
        key: (pairs[0][0], plan_for(mapper.relationships[key].mapper).primary_key[0])
        for key, pairs in plan.many_to_one_pairs.items()
    }
    rows = []
    for _, op in ops:
        # Placeholders in an insert are always under "refs", never in "values".
        row = dict(op["values"])
        refs = op.get("refs")
        if refs:
            for key, (ref, attribute) in refs.items():
                row[key] = replay.key_value(ref, attribute)
        links = op.get("links")
        if links:
            for key, target in links.items():
                local, remote = foreign[key]
                if target is None:
                    row[local] = None
                elif type(target) is int:
                    row[local] = replay.key_value(target, remote)
                else:
                    row[local] = target[0]
        rows.append(row)
    return rows


def missing_target(
    replay: Replay, sequence: int, op: dict[str, Any], target: Mapper[Any], key: list[Any]
) -> ReplayConflictError:
    """The conflict of an operation linking to a row that is gone."""
    table = target.local_table.description
    return ReplayConflictError(
        f"journal {replay.path}: operation {sequence} ({op['op']} of {op['table']}) links "
        f"to {table} row {tuple(key)}, which is gone. Nothing was applied",
        sequence=sequence,
        table=str(table),
        key=key,
        expected={},
        actual=None,
        path=replay.path,
    )


def _runs(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows that set the same attributes, each run one executemany.

    An attribute a row leaves unset must take its column default, as in a flush, so rows
    with different keys cannot share a statement.
    """
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and rows[end].keys() == rows[start].keys():
            end += 1
        yield rows[start:end]
        start = end


def _core_rows(mapper: Mapper[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Core statements on the table skip the ORM bulk layer, which adds nothing for the
    # mappers this path accepts; they take column keys, which usually are the attribute keys.
    renamed = {
        prop.key: prop.columns[0].key
        for prop in mapper.column_attrs
        if prop.key != prop.columns[0].key
    }
    if not renamed:
        return rows
    return [{renamed.get(k, k): v for k, v in row.items()} for row in rows]


def _insert_returning(
    replay: Replay, mapper: Mapper[Any], pk_attr: str, rows: list[dict[str, Any]]
) -> list[Any]:
    table: Any = mapper.local_table  # a Table: _mapper_eligible admits single-table mappers
    pk = mapper.primary_key[0]
    statement = insert(table).returning(pk, sort_by_parameter_order=True)
    connection = replay.session.connection(bind_arguments={"mapper": mapper})
    keys: list[Any] = []
    for run in _runs(_core_rows(mapper, rows)):
        found = _insert_unnest(connection, statement, run, replay.path)
        keys.extend(connection.execute(statement, run).scalars() if found is None else found)
    return keys


# -- PostgreSQL: one short statement of arrays instead of a long multi-row VALUES ----------

# Rows per statement: a page of arrays is one short statement, parsed once and prepared
# by psycopg; larger pages only cost memory.
UNNEST_PAGE_SIZE = 5_000

_NONE = type(None)
# Per column type, the Python types psycopg dumps into an array exactly as it dumps each
# value alone (it adapts a list by its first non-null element, so one type per column).
_ARRAY_TYPES: tuple[tuple[type[Any], frozenset[type[Any]]], ...] = (
    (sqltypes.Boolean, frozenset({bool})),
    (sqltypes.Integer, frozenset({int})),
    (sqltypes.Numeric, frozenset({int, float, decimal.Decimal})),
    (sqltypes.Float, frozenset({int, float, decimal.Decimal})),
    (sqltypes.String, frozenset({str})),
    (sqltypes.DateTime, frozenset({dt.datetime})),
    (sqltypes.Date, frozenset({dt.date})),
    (sqltypes.Time, frozenset({dt.time})),
)


@dataclass(frozen=True)
class _ArrayColumn:
    key: str | None  # the row's key, or None for a scalar column default
    default: Any
    process: Callable[[Any], Any] | None
    accepts: frozenset[type[Any]]


@dataclass(frozen=True)
class _UnnestPlan:
    statement: str
    columns: tuple[_ArrayColumn, ...]

    def arrays(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
        """One list per column, or None if a column mixes types psycopg cannot put in one array."""
        arrays = {}
        for i, column in enumerate(self.columns):
            key = column.key
            values = [column.default] * len(rows) if key is None else [r[key] for r in rows]
            if column.process is not None:
                try:
                    values = [column.process(v) for v in values]
                except Exception:
                    return None  # SQLAlchemy's statement raises it as a StatementError
            kinds = set(map(type, values))
            kinds.discard(_NONE)
            if len(kinds) > 1 or not kinds <= column.accepts:
                return None
            # The first value decides between psycopg's dumpers with and without zone.
            if kinds & {dt.datetime, dt.time} and (
                len({v.tzinfo is None for v in values if v is not None}) > 1
            ):
                return None
            arrays[f"c{i}"] = values
        return arrays


# Per dialect (an engine's), per table and set of row keys; gone with the engine.
_unnest_plans: weakref.WeakKeyDictionary[Dialect, dict[tuple[Any, ...], _UnnestPlan | None]] = (
    weakref.WeakKeyDictionary()
)


def _insert_unnest(
    connection: Connection, statement: Insert, rows: list[dict[str, Any]], path: str
) -> list[Any] | None:
    """Insert ``rows`` as ``INSERT ... SELECT ... FROM unnest(arrays)``; their keys in order.

    SQLAlchemy's multi-row ``INSERT ... SELECT ... FROM (VALUES ...) ORDER BY`` names every
    value, so a page of 1,000 rows is a statement of thousands of parameters that psycopg
    parses anew each time (its cache stops at 50 parameters) and the server plans anew.
    With one array per column the statement is the same short text for any number of rows.
    Keys come back in row order the way SQLAlchemy itself takes them for this table: the
    rows are inserted in parameter order and the autoincrement keys sorted. Returns None
    where that does not apply; the caller then uses SQLAlchemy's statement.
    """
    dialect = connection.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return None
    plans = _unnest_plans.setdefault(dialect, {})
    signature = (statement.table, tuple(rows[0]))
    try:
        plan = plans[signature]
    except KeyError:
        plan = plans[signature] = _plan_unnest(dialect, statement, tuple(rows[0]))
    if plan is None:
        return None
    arrays = plan.arrays(rows)
    if arrays is None:
        return None
    keys: list[Any] = []
    for start in range(0, len(rows), UNNEST_PAGE_SIZE):
        page = {name: values[start : start + UNNEST_PAGE_SIZE] for name, values in arrays.items()}
        found = sorted(connection.exec_driver_sql(plan.statement, page).scalars().all())
        expected = min(UNNEST_PAGE_SIZE, len(rows) - start)
        if len(found) != expected:
            raise DeferredOperationError(
                f"journal {path}: an INSERT of {expected} rows into {statement.table.description} "
                f"returned {len(found)} keys; nothing was applied",
                path=path,
            )
        keys.extend(found)
    return keys


def _plan_unnest(dialect: Dialect, statement: Insert, keys: tuple[str, ...]) -> _UnnestPlan | None:
    # SQLAlchemy's own compilation of the statement decides the columns, their casts, bind
    # processors and scalar defaults, and whether it would sort returned keys (an
    # autoincrement "implicit sentinel"); anything unexpected falls back to the public path.
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    imv = insertmanyvalues(compiled)
    if imv is None or not (
        imv.sort_by_parameter_order and imv.implicit_sentinel and imv.num_sentinel_columns == 1
    ):
        return None
    prefetch = set(compiled.insert_prefetch)
    columns = []
    names = []
    casts = []
    used = set()
    for i, (column, _, _, binds) in enumerate(imv.insert_crud_params):
        if len(binds) != 1:
            return None
        impl = dialect_impl(column.type, dialect)
        accepts = next((ok for kind, ok in _ARRAY_TYPES if isinstance(impl, kind)), None)
        if accepts is None or isinstance(impl, sqltypes.Enum) or getattr(impl, "collation", None):
            return None
        if column.key in keys:
            key, default = column.key, None
            used.add(key)
        elif column in prefetch:
            arg, is_scalar = scalar_default(column)
            if not is_scalar:
                return None
            key, default = None, arg
        else:
            return None
        process = bind_processor(compiled, next(iter(binds)))
        columns.append(_ArrayColumn(key, default, process, accepts))
        names.append(dialect.identifier_preparer.format_column(column))
        cast = compiled.render_bind_cast(column.type, impl, "")
        if not cast.startswith("::"):
            return None
        casts.append(f"%(c{i})b::{cast[2:]}[]")
    if used != set(keys):
        return None
    table = dialect.identifier_preparer.format_table(statement.table)
    sentinel = imv.sentinel_columns[0]
    pk = dialect.identifier_preparer.format_column(sentinel)
    if "%" in "".join([table, pk, *names]):
        return None  # the driver would take it for a parameter
    if has_result_processor(sentinel.type, dialect):
        return None  # the driver's keys are what SQLAlchemy would return
    placeholders = ", ".join(f"p{i}" for i in range(len(columns)))
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {placeholders} "
        f"FROM unnest({', '.join(casts)}) WITH ORDINALITY AS imp_sen({placeholders}, sen_counter) "
        f"ORDER BY sen_counter RETURNING {pk}"
    )
    return _UnnestPlan(sql, tuple(columns))


def _sqlite_rowids(
    replay: Replay, mapper: Mapper[Any], pk_attr: str, rows: list[dict[str, Any]]
) -> bool:
    """Whether the keys of ``rows`` can be read back as the table's newest rowids.

    SQLite cannot promise the order of a multi-row RETURNING, so SQLAlchemy sends one
    statement per row when asked to keep it. For an INTEGER PRIMARY KEY (the rowid) that
    no row sets, SQLite assigns consecutive keys in insertion order while this
    transaction holds the write lock, so the newest ``len(rows)`` keys are these rows'.
    """
    bind = replay.session.get_bind(mapper)
    if bind.dialect.name != "sqlite" or any(pk_attr in row for row in rows):
        return False
    column = mapper.primary_key[0]
    return str(column.type.compile(bind.dialect)) == "INTEGER"


def _insert_with_rowids(
    replay: Replay, mapper: Mapper[Any], pk_attr: str, rows: list[dict[str, Any]]
) -> list[Any]:
    connection = replay.session.connection(bind_arguments={"mapper": mapper})
    table: Any = mapper.local_table
    statement = insert(table)
    for run in _runs(_core_rows(mapper, rows)):
        connection.execute(statement, run)
    pk = mapper.primary_key[0]
    keys = list(connection.execute(select(pk).order_by(pk.desc()).limit(len(rows))).scalars())
    keys.reverse()
    if len(keys) != len(rows) or keys[-1] - keys[0] != len(rows) - 1:
        raise DeferredOperationError(
            f"journal {replay.path}: SQLite did not assign consecutive keys to the "
            f"{len(rows)} new rows of {mapper.local_table.description}; nothing was applied",
            path=replay.path,
        )
    return keys
