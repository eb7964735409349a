"""The query memo behind ``JournalingSession.reusing_query_results()`` (SPEC §6).

A SELECT is keyed by the statement's structural cache key, the typed effective values of
its bound parameters, its execution options and its bind. The first execution's rows are
kept as ``Result.freeze()`` keeps them; identical ones are served from the same rows: no
round trip, and the very same ORM instances, not re-merged.

Nothing this session changes is served stale: pending changes are autoflushed before a
lookup; a flush or DML statement drops the entries reading the tables it writes; raw SQL
writes, a rollback and the end of a transaction drop everything, and so does an entry
whose instances were deleted or expunged. Statements that must see the database pass
through: row locks, ``populate_existing``, streaming, refresh and relationship loads,
statements without a cache key or reading no table.

With a snapshot (SPEC §9) the memo also answers from, and saves to, a query snapshot file
(:mod:`orm_ext.snapshot`): a statement it has not memoized is looked up there before it
goes to the database, and a statement the database answers is saved there, relationship
loads and refreshes included, so that another process can read offline. Writes through
the session drop the entries they make stale from the file too, except inside a deferred
block, whose writes have not reached the database.

The listeners are attached only while the outermost block runs, so outside a block the
session pays nothing for the memo. The flush and state listeners go first, to see the unit
of work before the recorder empties it; the execute listener goes last, so that it keys the
statement as the other listeners leave it and a miss re-enters no other listener.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Table, event, exc, inspect
from sqlalchemy.engine import Result
from sqlalchemy.engine.result import ResultMetaData
from sqlalchemy.orm import ORMExecuteState, RelationshipDirection, Session, SessionTransaction
from sqlalchemy.sql import visitors
from sqlalchemy.sql.expression import (
    ColumnClause,
    Select,
    TableClause,
    TextClause,
    TextualSelect,
)

from orm_ext import snapshot_rows
from orm_ext.exc import SnapshotMissError
from orm_ext.sa_private import (
    autoflush_before_load,
    captured,
    compile_cached,
    keyed_for,
    load_flags,
    loaded,
    locks_rows,
    result_columns,
    result_of,
    statement_cache_key,
)
from orm_ext.snapshot import QuerySnapshot
from orm_ext.snapshot_key import Unkeyable, snapshot_key, structure_text

__all__ = ["QueryMemo", "invalidate", "reusing_query_results"]

log = logging.getLogger("orm_ext.query")

# Stands for "tables the memo cannot name": an entry that read through a textual fragment is
# dropped by every write, and a write that cannot be analysed drops every entry.
_ANY = "*"
# Execution options that cannot change what a SELECT returns; bind arguments that restate
# the statement or the bind, both of which the key holds already.
_IGNORED_OPTIONS = frozenset({"compiled_cache", "logging_token"})
_IGNORED_BIND_ARGUMENTS = frozenset({"bind", "clause", "mapper"})
_PASS_THROUGH_OPTIONS = ("stream_results", "yield_per", "populate_existing")
_SELECT = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/|\()*select\b", re.DOTALL | re.IGNORECASE)
# What the memo learns about a statement structure (the tables it reads, whether it must
# pass through) never changes and costs a compilation or several look-ups, so it is kept
# per structure, bounded like SQLAlchemy's compiled cache.
_SHAPES_LIMIT = 1000
_shapes: dict[Hashable, _Shape] = {}


class QueryMemo:
    """The memoized results of a ``reusing_query_results()`` block, with its counters.

    :ivar hits: executions answered from the memo.
    :ivar misses: executions sent to the database and memoized.
    :ivar invalidations: memoized results dropped because something they read changed.
    :ivar snapshot_hits: statements answered from the block's query snapshot file.
    :ivar snapshot: the query snapshot file, or None without one.
    """

    __slots__ = (
        "_entries",
        "_layouts",
        "_readers",
        "_snapshot",
        "hits",
        "invalidations",
        "misses",
        "snapshot_hits",
    )

    def __init__(self, snapshot: QuerySnapshot | None = None) -> None:
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.snapshot_hits = 0
        self._snapshot = snapshot
        self._entries: dict[_Key, _Entry] = {}
        self._readers: dict[str, set[_Key]] = {}
        # The first result's metadata per statement variant (a key without its bound
        # values), shared by later results laid out the same way: each result's own would
        # keep its whole query context alive, and the garbage collector busy. Not its rows:
        # they would keep its instances alive after its entry was dropped; for the same
        # reason layouts are forgotten whenever entries are dropped.
        self._layouts: dict[Hashable, _Layout] = {}

    def __len__(self) -> int:
        """Return how many results are memoized."""
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"<QueryMemo results={len(self)} hits={self.hits} misses={self.misses} "
            f"invalidations={self.invalidations}>"
        )

    @property
    def snapshot(self) -> Path | None:
        """The path of the block's query snapshot, or None without one."""
        return None if self._snapshot is None else self._snapshot.path

    def clear(self) -> None:
        """Forget every memoized result; the counters are kept. The snapshot file is kept."""
        self._entries.clear()
        self._readers.clear()
        self._layouts.clear()

    def invalidate(self, *entities_or_tables: Any) -> int:
        """Drop what was read from the given tables, in memory and in the snapshot file.

        For changes this session cannot see (another process wrote the rows): the next
        identical statement goes to the database again, and its answer replaces the
        snapshot's. With no argument, everything is dropped.

        >>> memo.invalidate(Asset, "asset_version")   # doctest: +SKIP

        :param entities_or_tables: mapped classes, mappers, ``Table`` objects or table
            names.
        :returns: how many memoized results and snapshot entries were dropped.
        :raises TypeError: something that names no table.
        """
        names = None if not entities_or_tables else _named_tables(entities_or_tables)
        before = self.invalidations
        self._invalidate(names)
        dropped = self.invalidations - before
        if self._snapshot is not None:
            dropped += self._snapshot.drop_tables(names)
        return dropped

    def _store(self, key: _Key, entry: _Entry) -> None:
        self._entries[key] = entry
        for name in entry.reads:
            self._readers.setdefault(name, set()).add(key)

    def _invalidate(self, names: Iterable[str] | None) -> None:
        """Drop the entries reading any of ``names``, or every entry for ``None``."""
        if not self._entries:
            return
        if names is None:
            self.invalidations += len(self._entries)
            self.clear()
            return
        doomed: set[_Key] = self._readers.pop(_ANY, set())
        for name in names:
            doomed.update(self._readers.pop(name, ()))
        for key in doomed:
            self.invalidations += 1
            for name in self._entries.pop(key).reads:
                self._readers.get(name, set()).discard(key)
        if doomed:
            # A layout's metadata can hold its first result's query context (the unique
            # filters of a subquery load keep the loaded instances): none outlives its entry.
            self._layouts.clear()


class _Shape:
    """What holds for every statement of one structure (one cache key tuple).

    Memo keys hold the shape, hashed and compared by identity, instead of the structure,
    which is hashed once per execution, to find the shape. A structure seen again after the
    shapes were emptied gets a new shape, so older keys only miss.
    """

    __slots__ = ("compiled", "named", "passes", "reads", "tables")

    def __init__(self, *, passes: bool) -> None:
        self.passes = passes  # a row lock, a relationship load or a refresh
        self.reads: frozenset[str] | None = None  # found on the first miss
        # For snapshots: the structure as other processes can name it ("" if it cannot
        # be), and the Table objects it reads; found on first use.
        self.named: str | None = None
        self.tables: list[Table] | None = None
        # The dialect and compilation that snapshot rows of this structure are loaded
        # with: what the engine's compiled cache holds, without hashing the structure again.
        self.compiled: tuple[Any, Any] | None = None


class _Layout(NamedTuple):
    """What results of one statement variant share: metadata and the ORM's attributes."""

    metadata: ResultMetaData
    attributes: Mapping[Any, Any]


class _Rows(NamedTuple):
    """A result's rows and what serving them again needs, as ``Result.freeze()`` keeps them."""

    metadata: ResultMetaData
    data: list[Any]
    attributes: Mapping[Any, Any]
    scalars: bool
    unique: bool


# The shape, the bound values, the execution options, the bind arguments and the bind.
_Key = tuple[_Shape, Hashable, Hashable, Hashable, Any]


class _Entry(NamedTuple):
    rows: _Rows
    reads: frozenset[str]
    sql: str | None


class _Unkeyable(Exception):
    """A value the memo cannot key exactly: the statement passes through."""


def invalidate(session: Session) -> None:
    """Drop every result memoized in ``session``'s active block, if there is one.

    For the session methods that fire no event (``expire_all``, ``expire``,
    ``expunge_all``): ``JournalingSession`` calls this after them.
    """
    memo: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if memo is not None:
        memo._invalidate(None)


@contextmanager
def reusing_query_results(
    session: Session,
    snapshot: str | os.PathLike[str] | None = None,
    *,
    key: bytes | str | None = None,
    max_age: timedelta | None = None,
    refresh: bool = False,
    attach: Callable[[QueryMemo | None], None],
) -> Iterator[QueryMemo]:
    """Memoize ``session``'s SELECTs for the block; a nested block shares the outer memo.

    ``attach`` is the session's own way of holding the block's memo (``None`` when it
    ends), where this module's listeners find it as ``session._query_memo``.

    The memo is cleared when the outermost block exits, also on an exception. With
    ``snapshot``, the snapshot file is opened (and verified with ``key``) here, and written
    back when the outermost block exits, also on an exception (what it holds is what the
    database answered).
    """
    outer: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if outer is not None:
        if snapshot is not None and (
            outer.snapshot is None or Path(snapshot).absolute() != outer.snapshot.absolute()
        ):
            raise ValueError(
                f"reusing_query_results(snapshot={os.fspath(snapshot)!r}) is nested in a block "
                f"with {'no snapshot' if outer.snapshot is None else outer.snapshot}; nested "
                "blocks share the outer memo: pass snapshot= to the outermost block"
            )
        yield outer
        return
    store = (
        None
        if snapshot is None
        else QuerySnapshot.open(snapshot, key=key, max_age=max_age, refresh=refresh)
    )
    memo = QueryMemo(store)
    event.listen(session, "do_orm_execute", _on_execute, retval=True)
    for name, listener in _LISTENERS:
        event.listen(session, name, listener, insert=True)
    attach(memo)
    failed = True
    try:
        yield memo
        failed = False
    finally:
        attach(None)
        memo.clear()
        event.remove(session, "do_orm_execute", _on_execute)
        for name, listener in _LISTENERS:
            event.remove(session, name, listener)
        if store is not None:
            _save(store, quietly=failed)


def _save(store: QuerySnapshot, *, quietly: bool) -> None:
    """Write the snapshot back; while another exception propagates, only log a failure."""
    if not quietly:
        store.save()
        return
    try:
        store.save()
    except Exception:
        log.exception("Query snapshot %s could not be saved", store.path)


def _on_execute(orm_context: ORMExecuteState) -> Result[Any] | None:
    """Answer a memoizable SELECT from the memo, or drop what a write invalidates."""
    memo: QueryMemo | None = orm_context.session._query_memo  # type: ignore[attr-defined]
    if memo is None:
        return None
    statement: Any = orm_context.statement
    if statement.is_dml:
        written = _tables_written(orm_context)
        memo._invalidate(written)
        _drop_from_snapshot(memo, orm_context.session, written)
        return None
    if not isinstance(statement, Select):
        text = _root_text(statement)
        if text is not None or not statement.is_select:
            # Raw SQL is sent as it is; unless it is a plain SELECT it may write anywhere.
            if text is not None and _SELECT.match(text):
                _log_query(orm_context)
            else:
                memo._invalidate(None)
                _drop_from_snapshot(memo, orm_context.session, None)
            return None
    key = _memo_key(orm_context, statement)
    if key is None:
        if memo._snapshot is not None:
            return _through_snapshot(orm_context, statement, memo._snapshot, memo)
        _log_query(orm_context)
        return None
    entry = memo._entries.get(key)
    if entry is not None:
        memo.hits += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Reusing query results: %s", entry.sql or _render(orm_context))
        return _serve(entry.rows, statement)
    reads = key[0].reads or _tables_read(key[0], statement)
    if not reads:
        _log_query(orm_context)
        return None  # a sequence, a clock or a constant: cheap to ask and maybe volatile
    store = memo._snapshot
    skey = (
        None if store is None else _persistent_key(orm_context, statement, key[1], key[4], key[0])
    )
    if store is None or skey is None:
        sql = _log_query(orm_context) if log.isEnabledFor(logging.INFO) else None
        answer, stored = orm_context.invoke_statement(), False
    else:
        answer, sql, stored = _answer(orm_context, store, memo, skey, reads, key[0])
    variant = (key[0], *key[2:])
    like = memo._layouts.get(variant)
    rows = _capture(answer, like)
    if like is None:
        memo._layouts[variant] = _Layout(rows.metadata, rows.attributes)
    memo._store(key, _Entry(rows, reads, sql))
    if not stored:
        memo.misses += 1
    return _serve(rows, statement)


def _persistent_key(
    orm_context: ORMExecuteState,
    statement: Any,
    values: Hashable | None,
    bind: Any,
    shape: _Shape,
) -> str | None:
    """Return the snapshot key of a SELECT, or None if snapshots must not hold it.

    Relationship loads and refreshes are held (an offline process needs them as much as
    the statements that led to them); row locks, streamed results and executemany are
    not.
    """
    if bind is None or locks_rows(statement):
        return None
    cache_key = statement_cache_key(statement)
    given: Any = orm_context.parameters
    if cache_key is None or isinstance(given, list):
        return None
    options = orm_context.execution_options
    if (
        options.get("stream_results")
        or options.get("yield_per")
        or load_flags(orm_context).yield_per
    ):
        return None
    named = shape.named
    if named is None:
        try:
            named = shape.named = structure_text(cache_key.key)
        except Unkeyable:
            named = shape.named = ""
    if not named:
        return None
    try:
        if values is None:
            collected = getattr(cache_key, "params", None)
            params = {**collected, **given} if collected and given else collected or given or {}
            values = tuple(
                [
                    _frozen(params[b.key]) if b.key in params else _frozen(b.effective_value)
                    for b in cache_key.bindparams
                ]
            )
        return snapshot_key(named, values, options, bind.dialect.name)
    except (_Unkeyable, Unkeyable):
        return None


def _through_snapshot(
    orm_context: ORMExecuteState, statement: Any, store: QuerySnapshot, memo: QueryMemo
) -> Result[Any] | None:
    """Answer a statement the memo passes through (a relationship load, a refresh) from
    the snapshot, or from the database while saving it there; None if it cannot be held."""
    if locks_rows(statement):
        _log_query(orm_context)
        return None
    # Answered here, the statement never reaches the ORM's own autoflush.
    autoflush_before_load(orm_context)
    cache_key = statement_cache_key(statement)
    shape = None if cache_key is None else _shapes.get(cache_key.key)
    if shape is None:
        shape = _Shape(passes=True)
    skey = _persistent_key(orm_context, statement, None, _bind(orm_context), shape)
    if skey is None:
        _log_query(orm_context)
        return None
    return _answer(orm_context, store, memo, skey, _tables_read(shape, statement), shape)[0]


def _answer(
    orm_context: ORMExecuteState,
    store: QuerySnapshot,
    memo: QueryMemo,
    skey: str,
    reads: frozenset[str],
    shape: _Shape,
) -> tuple[Result[Any], str | None, bool]:
    """Return the result of a statement from the snapshot, or read it and save it there;
    with its SQL, if known, and whether the snapshot answered it.

    :raises SnapshotMissError: the snapshot cannot answer and the database cannot be
        reached.
    """
    entry, why = store.lookup(skey)
    if entry is not None:
        columns, rows = entry.rows(store.path)
        compiled = _compiled(orm_context, shape)
        if columns == [str(c.keyname) for c in result_columns(compiled)]:
            memo.snapshot_hits += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("Answering from query snapshot %s: %s", store.path, entry.sql)
            result = snapshot_rows.marked(loaded(orm_context, compiled, rows))
            return result, entry.sql, True
        # The statement selects other columns now (a mapping option the schema
        # fingerprint does not cover): its rows would land in the wrong attributes.
        why = "its entry was taken with other columns than the statement selects now"
    sql = _log_query(orm_context)
    try:
        fetched = snapshot_rows.fetch(orm_context)
    except exc.DBAPIError as err:
        if not _unreachable(err):
            raise
        text = sql or _render(orm_context)
        raise SnapshotMissError(
            f"query snapshot {store.path} cannot answer a statement ({why}) and the "
            f"database cannot be reached ({type(err.orig).__name__ if err.orig else err}): "
            f"{text} -- run it once online inside reusing_query_results(snapshot=...) to "
            "add it to the snapshot",
            statement=orm_context.statement,
            sql=text,
            path=str(store.path),
        ) from err
    if shape.tables is None:
        shape.tables = _tables_in(orm_context.statement)
    store.put(skey, str(fetched.compiled), reads, fetched.columns, fetched.rows, shape.tables)
    return loaded(orm_context, fetched.compiled, fetched.rows), sql, False


def _compiled(orm_context: ORMExecuteState, shape: _Shape) -> Any:
    """Return the compilation of ``orm_context``'s statement, kept on its shape."""
    dialect = key_dialect = _bind(orm_context).dialect
    if orm_context.execution_options.get("schema_translate_map"):
        key_dialect = None  # compiled differently per map: never kept
    kept = shape.compiled
    if kept is not None and kept[0] is key_dialect:
        return kept[1]
    compiled = compile_cached(orm_context)
    if key_dialect is dialect:
        shape.compiled = (dialect, compiled)
    return compiled


def _unreachable(err: exc.DBAPIError) -> bool:
    """Whether a driver error means the database cannot be reached at all.

    A connection that could not be made, or one lost mid-statement; not a statement the
    database refused (those propagate as they are).
    """
    if err.connection_invalidated:
        return True
    # Raised while connecting: no statement had been sent yet.
    return isinstance(err, exc.OperationalError | exc.InterfaceError) and not err.statement


def _drop_from_snapshot(memo: QueryMemo, session: Session, names: Iterable[str] | None) -> None:
    """Drop the snapshot entries a write through ``session`` makes stale.

    Not inside a deferred block: its writes are recorded, not applied, so the database,
    which the snapshot holds answers of, has not changed.
    """
    store = memo._snapshot
    if store is not None and getattr(session, "_recorder", None) is None:
        store.drop_tables(names)


def _named_tables(items: Iterable[Any]) -> set[str]:
    """Return the lower-cased table names of mapped classes, mappers, tables and names."""
    names: set[str] = set()
    for item in items:
        if isinstance(item, str):
            names.add(item.lower())
        elif isinstance(item, TableClause):
            names.add(item.name.lower())
        else:
            mapper = inspect(item, raiseerr=False)
            tables = getattr(mapper, "tables", None)
            if not tables:
                raise TypeError(
                    f"QueryMemo.invalidate() takes mapped classes, mappers, tables or table "
                    f"names, not {item!r}"
                )
            names.update(t.name.lower() for t in tables)
    return names


def _serve(rows: _Rows, statement: Any) -> Result[Any]:
    """Return a new result over ``rows`` for ``statement``: what calling a ``FrozenResult``
    returns, keyed by ``statement``'s own column objects (see ``_keyed_for``).

    """
    metadata = keyed_for(rows.metadata, statement)
    result = result_of(metadata, iter(rows.data), scalars=rows.scalars, attributes=rows.attributes)
    # A joined eager load of a collection repeats parent rows and SQLAlchemy insists on
    # unique() for it, which freeze() forgets: such a result is served uniqued.
    return result.unique() if rows.unique else result


def _memo_key(orm_context: ORMExecuteState, statement: Any) -> _Key | None:
    """Autoflush, then return the memo key of a SELECT, or None if it must pass through.

    The ORM's autoflush must run here because ``do_orm_execute`` comes before
    SQLAlchemy's own. The cache key is memoized on the statement, so the execution that
    follows a miss does not compute it again.
    """
    cache_key = statement_cache_key(statement)
    if cache_key is None:
        return None
    shape = _shape(cache_key.key, orm_context, statement)
    given: Any = orm_context.parameters
    if shape.passes or isinstance(given, list):  # a list of parameter sets: executemany
        return None
    options = orm_context.execution_options
    for name in _PASS_THROUGH_OPTIONS:
        if options.get(name):
            return None
    load = load_flags(orm_context)
    if load.populate_existing or load.yield_per or load.lazy_loaded_from is not None:
        return None
    autoflush_before_load(orm_context)
    bind_arguments = orm_context.bind_arguments
    try:
        bind = orm_context.session.get_bind(**bind_arguments)
    except exc.UnboundExecutionError:
        return None
    # SQLAlchemy 2.1 keeps Select.params() values in the cache key; 2.0 has no such field.
    collected = getattr(cache_key, "params", None)
    params = {**collected, **given} if collected and given else collected or given or {}
    try:
        # Resolved as the compiler resolves them (and only after the autoflush, which may
        # give a pending object the key a callable value reads): a value given to execute()
        # or params() wins; otherwise the bound value, a callable one called.
        values = tuple(
            [
                _frozen(params[b.key]) if b.key in params else _frozen(b.effective_value)
                for b in cache_key.bindparams
            ]
        )
        frozen_options = _frozen_items(options, _IGNORED_OPTIONS)
        # Usually only the arguments that restate the statement: nothing to freeze.
        binding = (
            ()
            if bind_arguments.keys() <= _IGNORED_BIND_ARGUMENTS
            else _frozen_items(bind_arguments, _IGNORED_BIND_ARGUMENTS)
        )
    except _Unkeyable:
        return None
    return (shape, values, frozen_options, binding, bind)


def _shape(structure: Hashable, orm_context: ORMExecuteState, statement: Any) -> _Shape:
    """Return the shape of the statements of ``structure``, made on first sight."""
    shape = _shapes.get(structure)
    if shape is None:
        # A row lock, the path of a relationship load and a refresh are all in the cache key.
        path = orm_context.loader_strategy_path
        passes = (
            locks_rows(statement)
            or (path is not None and not path.is_root)
            or orm_context.is_column_load
        )
        if len(_shapes) >= _SHAPES_LIMIT:
            _shapes.clear()
        shape = _shapes[structure] = _Shape(passes=passes)
    return shape


def _capture(result: Result[Any], like: _Layout | None) -> _Rows:
    """Consume ``result`` into rows that can be served again, as ``Result.freeze()`` does.

    ``like``'s metadata and attributes are kept instead of the result's own if they name
    the same keys with the very same entity objects: other executions of a statement
    variant share them (see :func:`~orm_ext.sa_private.result.captured`). The ORM marks
    results of joined eager loads of collections as requiring ``unique()`` and shows it
    no other way.
    """
    return _Rows(*captured(result, like))


def _frozen_items(mapping: Mapping[str, Any], ignored: frozenset[str]) -> Hashable:
    # In the mapping's order: options merged in another order only make a miss.
    return tuple([(k, _frozen(v)) for k, v in mapping.items() if k not in ignored])


# Equal values the database can tell apart (0.0 and -0.0, Decimal("1.0") and
# Decimal("1.00"), one instant in two time zones) are keyed by repr.
_BY_REPR = (float, Decimal, datetime, time)
_BY_VALUE = (type(None), bool, int, str, bytes, date, timedelta, uuid.UUID, enum.Enum, type)
_EXACT_BY_VALUE = frozenset({type(None), bool, int, str, bytes})


def _frozen(value: Any) -> Hashable:
    """Return a hashable, typed snapshot of ``value`` (True, 1 and 1.0 stay apart)."""
    kind = type(value)
    if kind in _EXACT_BY_VALUE:
        return (kind, value)
    if isinstance(value, _BY_REPR):
        return (kind, repr(value))
    if isinstance(value, _BY_VALUE):
        return (kind, value)
    if isinstance(value, list | tuple):
        return (kind, tuple(_frozen(v) for v in value))
    if isinstance(value, set | frozenset):
        return (kind, frozenset(_frozen(v) for v in value))
    if isinstance(value, Mapping):
        return (kind, tuple((_frozen(k), _frozen(v)) for k, v in value.items()))
    # An unhashable object, such as the ORM's load options, is keyed by its attributes; a
    # hashable object of another type may be mutable behind its hash, so it is not keyed.
    if kind.__hash__ is None and hasattr(value, "__dict__"):
        return (kind, _frozen(vars(value)))
    raise _Unkeyable(kind.__name__)


def _bind(orm_context: ORMExecuteState) -> Any:
    try:
        return orm_context.session.get_bind(**orm_context.bind_arguments)
    except exc.UnboundExecutionError:
        return None


def _log_query(orm_context: ORMExecuteState) -> str | None:
    """Log a statement about to be sent at INFO; return its SQL if it was rendered."""
    if not log.isEnabledFor(logging.INFO):
        return None
    sql = _render(orm_context)
    log.info("Performing query: %s", sql)
    return sql


def _render(orm_context: ORMExecuteState) -> str:
    bind = _bind(orm_context)
    statement: Any = orm_context.statement
    try:
        return str(statement.compile(dialect=None if bind is None else bind.dialect))
    except exc.SQLAlchemyError as err:
        return f"<{type(statement).__name__} that cannot be rendered: {err}>"


def _root_text(statement: Any) -> str | None:
    """Return the SQL of a textual statement (``text()``, also wrapped), else None."""
    while isinstance(statement, TextualSelect) or getattr(statement, "is_from_statement", False):
        statement = statement.element
    return statement.text if isinstance(statement, TextClause) else None


def _tables_read(shape: _Shape, statement: Any) -> frozenset[str]:
    names = shape.reads
    if names is None:
        try:
            names = frozenset(_table_names(statement, final_froms=True))
        except exc.SQLAlchemyError:
            names = frozenset({_ANY})
        shape.reads = names
    return names


def _table_names(statement: Any, *, final_froms: bool) -> set[str]:
    """Return the lower-cased names of the tables ``statement`` mentions.

    Names without schemas: ``table("users")`` and ``Table("users", schema="app")`` may be
    one table, so they count as one. With ``final_froms`` the FROM list of every SELECT as
    the ORM builds it is added: it holds what the statement does not, the secondary table
    of a relationship join and the joins of joined eager loads (an INNER JOIN filters rows).
    """
    names: set[str] = set()
    todo = [statement]
    seen: dict[int, Select[Any]] = {}  # holds the SELECTs, so that no id is reused
    while todo:
        for element in visitors.iterate(todo.pop()):
            if isinstance(element, TableClause):
                names.add(element.name.lower())
            elif isinstance(element, TextClause) or (
                isinstance(element, ColumnClause)
                and element.is_literal
                and "select" in element.name.lower()
            ):
                names.add(_ANY)
            elif final_froms and isinstance(element, Select) and id(element) not in seen:
                seen[id(element)] = element
                todo.extend(element.get_final_froms())
    return names


def _tables_in(statement: Any) -> list[Table]:
    """Return the ``Table`` objects ``statement`` reads (those of ``_table_names``)."""
    found: dict[Table, None] = {}
    todo = [statement]
    seen: dict[int, Select[Any]] = {}
    while todo:
        for element in visitors.iterate(todo.pop()):
            if isinstance(element, Table):
                found[element] = None
            elif isinstance(element, Select) and id(element) not in seen:
                seen[id(element)] = element
                todo.extend(element.get_final_froms())
    return list(found)


def _tables_written(orm_context: ORMExecuteState) -> set[str] | None:
    """Return the tables an INSERT, UPDATE or DELETE may change; None for "any"."""
    statement: Any = orm_context.statement
    tables = [e for e in visitors.iterate(statement) if isinstance(e, TableClause)]
    mapper = orm_context.bind_mapper
    tables += mapper.tables if mapper is not None else ()
    if not orm_context.is_delete:
        return {t.name.lower() for t in tables}
    if not all(isinstance(t, Table) for t in tables):
        return None  # a lightweight table() has no foreign keys to follow
    return _referencing([t for t in tables if isinstance(t, Table)])


def _referencing(tables: Iterable[Table]) -> set[str]:
    """Return ``tables`` and every table whose foreign keys lead to them, transitively.

    A delete reaches those through ON DELETE CASCADE or SET NULL in the database, and
    through the ORM's cascades and secondary tables in a flush.
    """
    names = {t.name.lower() for t in tables}
    metadatas = {t.metadata for t in tables}
    grown = True
    while grown:
        grown = False
        for table in (t for metadata in metadatas for t in metadata.tables.values()):
            name = table.name.lower()
            if name not in names and any(
                fk.target_fullname.split(".")[-2].lower() in names for fk in table.foreign_keys
            ):
                names.add(name)
                grown = True
    return names


def _on_before_flush(session: Session, flush_context: object, instances: object) -> None:
    """Drop the entries reading a table this flush is about to write.

    Not ``after_flush``: inside a deferred block the recorder empties the unit of work in
    ``before_flush`` and the flush that follows writes nothing and fires no more events.
    """
    memo: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if memo is None or (not memo._entries and memo._snapshot is None):
        return
    names: set[str] = set()
    removed: list[Table] = []
    for obj in session.new:
        _add_flush_writes(obj, names, removed, changed=None)
    for obj in session.dirty:
        changed = session.is_modified(obj, include_collections=False)
        _add_flush_writes(obj, names, removed, changed=changed)
    for obj in session.deleted:
        removed.extend(inspect(obj).mapper.tables)
    written = names | _referencing(removed)
    memo._invalidate(written)
    _drop_from_snapshot(memo, session, written)


def _add_flush_writes(
    obj: object, names: set[str], removed: list[Table], *, changed: bool | None
) -> None:
    """Add the tables a flush writes for a new (``changed=None``) or dirty object."""
    state = inspect(obj)
    mapper = state.mapper
    if changed is not False:
        names.update(t.name.lower() for t in mapper.tables)
    if changed and any(
        state.attrs[mapper.get_property_by_column(c).key].history.has_changes()
        for c in mapper.primary_key
    ):
        removed.extend(mapper.tables)  # a changed key cascades like a delete
    for rel in mapper.relationships:
        if rel.viewonly or rel.direction is RelationshipDirection.MANYTOONE:
            continue  # a many-to-one writes the object's own foreign key
        if state.attrs[rel.key].history.has_changes():
            target = rel.secondary if rel.secondary is not None else rel.mapper.persist_selectable
            names.update(_table_names(target, final_froms=False))


def _on_state_gone(session: Session, instance: object) -> None:
    """Drop the entries that may hold an instance now deleted, expunged or discarded."""
    memo: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if memo is not None and memo._entries and instance is not None:
        memo._invalidate(t.name.lower() for t in inspect(instance).mapper.tables)


def _on_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    """Drop everything on any rollback, a savepoint's included.

    From the snapshot, the entries read since this transaction wrote their tables: they
    may hold rows that the rollback just undid.
    """
    invalidate(session)
    memo: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if memo is not None and memo._snapshot is not None:
        memo._snapshot.undo_writes()


def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """Drop everything when the session's transaction ends (commit, rollback, close)."""
    if transaction.parent is None:
        invalidate(session)


def _on_commit(session: Session) -> None:
    """The session's writes are the database's state now: no rollback can undo them."""
    memo: QueryMemo | None = session._query_memo  # type: ignore[attr-defined]
    if memo is not None and memo._snapshot is not None:
        memo._snapshot.settle_writes()


_LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("before_flush", _on_before_flush),
    ("after_soft_rollback", _on_rollback),
    ("after_transaction_end", _on_transaction_end),
    ("after_commit", _on_commit),
    ("persistent_to_deleted", _on_state_gone),
    ("persistent_to_detached", _on_state_gone),
    ("persistent_to_transient", _on_state_gone),
    ("deleted_to_detached", _on_state_gone),
)
