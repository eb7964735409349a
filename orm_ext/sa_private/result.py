"""The private SQLAlchemy API orm-journal uses on results.

The result side of :mod:`orm_ext.sa_private` (beside :mod:`.orm` and :mod:`.sql`): a result
built over rows already known, with what the ORM notes about them; a result's rows taken
and served again as ``Result.freeze()`` does; and stored rows of a statement fed to the
ORM's own loading as a cursor's would be. SQLAlchemy shows none of it publicly.
Each function says what it reaches into and the version it was checked on. A new
SQLAlchemy release is checked by reading this module against its source (and by the
test suite, which covers every use).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy.engine import IteratorResult, Result
from sqlalchemy.engine.result import ResultMetaData, SimpleResultMetaData
from sqlalchemy.orm import ORMExecuteState, loading
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.sql.expression import ColumnElement


def result_of(
    metadata: ResultMetaData,
    rows: Iterator[Any],
    *,
    scalars: bool,
    attributes: Mapping[Any, Any] | None = None,
    added_attributes: Mapping[Any, Any] | None = None,
) -> IteratorResult[Any]:
    """A result over ``rows`` laid out by ``metadata``, as ``FrozenResult`` makes one.

    ``_source_supports_scalars`` (rows of one element each, which ``scalars()`` takes
    without a copy) and ``Result._attributes`` (what legacy ``Query`` and the ORM read
    about the rows, such as ``is_single_entity``): ``FrozenResult`` sets them; a result
    has no public setter. ``attributes`` replace the result's own, where given;
    ``added_attributes`` are added to them. Checked on SQLAlchemy 2.1.9.
    """
    result: IteratorResult[Any] = IteratorResult(metadata, rows, _source_supports_scalars=scalars)
    if attributes is not None:
        result._attributes = attributes  # type: ignore[assignment]
    if added_attributes is not None:
        result._attributes = result._attributes.union(added_attributes)
    return result


def requires_unique(result: Result[Any]) -> bool:
    """Whether ``result`` must be uniqued before it is frozen, and is not yet.

    The ORM marks results of joined eager loads of collections as requiring ``unique()``
    (``_attributes["_requires_unique"]``) and shows it no other way; one uniqued already
    has a ``_unique_filter_state``. Checked on SQLAlchemy 2.1.9.
    """
    return getattr(result, "_unique_filter_state", None) is None and bool(
        result._attributes.get("_requires_unique", False)
    )


def source_supports_scalars(frozen: Any) -> bool:
    """Whether the rows of the ``FrozenResult`` ``frozen`` are single elements, kept
    without their one-element tuples.

    ``FrozenResult._source_supports_scalars``: ``with_new_rows()`` takes rows in the same
    form. Checked on SQLAlchemy 2.1.9.
    """
    return bool(frozen._source_supports_scalars)


def captured(
    result: Result[Any], like: tuple[ResultMetaData, Mapping[Any, Any]] | None
) -> tuple[ResultMetaData, list[Any], Mapping[Any, Any], bool, bool]:
    """All of ``result``, consumed, as ``Result.freeze()`` keeps it: (metadata, rows, the
    ORM's attributes, whether rows are single elements, whether they are served uniqued).

    ``Result._metadata``, ``_attributes``, ``_source_supports_scalars``,
    ``_raw_row_iterator()``, ``_allrows()``, ``_unique_filter_state`` and the metadata's
    ``_processors``, ``_tuplefilter``, ``_translated_indexes`` and ``_for_freeze()``:
    those ``Result.freeze()`` uses. ``freeze()`` copies the result's metadata without its
    row processors; an ORM result has none, so its metadata is kept as it is, which
    spares building a copy on every miss. ``like``'s (metadata, attributes) are kept
    instead if they name the same keys with the very same entity objects (see
    :func:`_same_layout`). Checked on SQLAlchemy 2.1.9.
    """
    source: Any = result
    metadata: Any = source._metadata
    attributes = source._attributes
    finished = (
        type(metadata) is SimpleResultMetaData
        and metadata._processors is None
        and metadata._tuplefilter is None
        and metadata._translated_indexes is None
    )
    if not finished:
        metadata = metadata._for_freeze()
    elif like is not None and _same_layout(metadata, attributes, like):
        metadata, attributes = like
    scalars: bool = source._source_supports_scalars
    # An ORM result's raw rows are its finished rows, read without the unique() check a
    # joined eager load of a collection makes _allrows() raise (the rows are served
    # uniqued). A Core result's raw rows are the driver's: _allrows() processes them, and,
    # as freeze() does, consumes a result of the asyncio extension inside its greenlet.
    data = list(source._raw_row_iterator()) if scalars or finished else source._allrows()
    unique = source._unique_filter_state is not None
    return metadata, data, attributes, scalars, unique


def _same_layout(
    metadata: Any,
    attributes: Mapping[Any, Any],
    like: tuple[ResultMetaData, Mapping[Any, Any]],
) -> bool:
    """Say whether an ORM result is laid out as ``like``: the very same keys and entities.

    An ORM result's entities come from the cached compiled statement, so other
    executions of it share them, while a column object built anew with each statement
    does not. Reads ``SimpleResultMetaData._keys`` and ``_keymap``. Checked on SQLAlchemy
    2.1.9.
    """
    other: Any = like[0]
    like_attributes = like[1]
    if type(other) is not SimpleResultMetaData or metadata._keys != other._keys:
        return False
    if attributes.keys() != like_attributes.keys():
        return False
    if any(value is not like_attributes[name] for name, value in attributes.items()):
        return False
    mine, theirs = metadata._keymap, other._keymap
    for key in metadata._keys:
        # Identity first: comparing two SQL expressions with == builds a third one.
        if mine[key][2] is not theirs[key][2] or mine[key][:2] != theirs[key][:2]:
            return False
    return True


def keyed_for(metadata: ResultMetaData, statement: Any) -> ResultMetaData:
    """Return ``metadata`` with the column objects of ``statement`` among its keys.

    Rows captured from one statement object are served for another of the same structure,
    or for a Core statement whose metadata :func:`captured` copied; a plain session keys a
    result by the objects of the statement it executed (``row._mapping[label]``). Objects
    the same in every statement (entities, mapped attributes, table columns) are known
    already, so most results are served with their metadata as it is. As SQLAlchemy does
    for each execution, the statement's column joins the record of its position, so that
    ``freeze()`` and ``columns()`` keep it.

    Reads ``Select._raw_columns``, one per result column when their numbers match (a
    table or subquery selected whole makes them differ: such a result stays keyed by the
    first statement's objects), and ``SimpleResultMetaData._keys``, ``_keymap``,
    ``_create_unique_filters`` and ``_ambiguous_keys``. Checked on SQLAlchemy 2.1.9.
    """
    raw = getattr(statement, "_raw_columns", None)
    source: Any = metadata
    if raw is None or len(raw) != len(source._keys):
        return metadata
    keymap = source._keymap
    added = [c if isinstance(c, ColumnElement) and c not in keymap else None for c in raw]
    if not any(c is not None for c in added):
        return metadata
    # Every key of a column maps to the same record: (index, name, objects).
    records = {record[0]: record for record in keymap.values()}
    return SimpleResultMetaData(
        source._keys,
        extra=[records[i][2] + (() if c is None else (c,)) for i, c in enumerate(added)],
        _create_unique_filters=source._create_unique_filters,
        _ambiguous_keys=source._ambiguous_keys,
    )


def raw_rows(result: Result[Any]) -> list[tuple[Any, ...]]:
    """All rows of the cursor ``result`` as tuples of processed values, as the ORM's
    loading reads them (a ``Row`` where the result must make one, such as with row
    logging, turned into a tuple).

    ``CursorResult._raw_all_tuples()``: what ``loading.instances`` reads; there is no
    public way to take rows without making ``Row`` objects. Checked on SQLAlchemy 2.1.9.
    """
    raw: Any = result
    return [row if type(row) is tuple else tuple(row) for row in raw._raw_all_tuples()]


def compile_cached(orm_execute_state: ORMExecuteState) -> Any:
    """Compile the statement of ``orm_execute_state`` for the session's bind, without a
    connection.

    ``ClauseElement._compile_w_cache`` through the engine's ``_compiled_cache``, as an
    execution compiles it: a statement of a known structure is not compiled again. There
    is no public way to compile through the cache. Checked on SQLAlchemy 2.1.9.
    """
    bind: Any = orm_execute_state.session.get_bind(**orm_execute_state.bind_arguments)
    options = orm_execute_state.execution_options
    engine = getattr(bind, "engine", bind)
    cache = options.get("compiled_cache", getattr(engine, "_compiled_cache", None))
    statement: Any = orm_execute_state.statement
    compiled, _, _, _ = statement._compile_w_cache(
        bind.dialect,
        compiled_cache=cache,
        column_keys=[],
        schema_translate_map=options.get("schema_translate_map"),
    )
    return compiled


def loaded(
    orm_execute_state: ORMExecuteState, compiled: Any, rows: list[tuple[Any, ...]]
) -> Result[Any]:
    """The result a plain execution of the statement gives for ``rows``.

    ORM statements go through ``loading.instances`` as ``orm_setup_cursor_result`` sends
    them (objects into the identity map, joined eager loads from the rows, selectin and
    subquery loads as statements of their own); Core statements get their rows as they
    are. ``compiled`` must be the compilation ``rows`` belong to: its result columns say
    which value is which column.

    Reads ``SQLCompiler._result_columns``, ``_propagate_attrs``,
    ``compile_options._is_star`` and the ``_sa_orm_load_options`` execution option, and
    builds the ``QueryContext`` and cursor stand-in ``loading.instances`` takes: nothing
    public feeds stored rows to the ORM's loading. Checked on SQLAlchemy 2.1.9.
    """
    columns = compiled._result_columns
    cursor = _StoredCursor(
        SimpleResultMetaData([c.keyname for c in columns], extra=[c.objects for c in columns]),
        rows,
        compiled,
    )
    compile_state = getattr(compiled, "compile_state", None)
    statement: Any = orm_execute_state.statement
    if (
        statement._propagate_attrs.get("compile_state_plugin") != "orm"
        or compile_state is None
        or compile_state.compile_options._is_star
    ):
        return cursor
    options = orm_execute_state.execution_options
    # A SELECT has one set of parameters (executemany never reaches here).
    parameters: Any = orm_execute_state.parameters
    context = QueryContext(
        compile_state,
        statement,
        statement,
        parameters,
        orm_execute_state.session,
        options.get("_sa_orm_load_options", QueryContext.default_load_options),
        options,
        orm_execute_state.bind_arguments,
    )
    return loading.instances(cursor, context)  # type: ignore[arg-type]


class _StoredContext:
    """What ``loading.instances`` and the eager loaders ask of a cursor's context."""

    _is_server_side = False
    requires_uniquing = False

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled


class _StoredCursor(IteratorResult[Any]):
    """A result over stored rows that the ORM's loading accepts as a cursor."""

    def __init__(
        self, metadata: SimpleResultMetaData, rows: list[tuple[Any, ...]], compiled: Any
    ) -> None:
        super().__init__(metadata, iter(rows))
        self._stored = rows
        self.context = _StoredContext(compiled)

    def _raw_all_tuples(self) -> list[tuple[Any, ...]]:
        # The ORM reads every row at once (no yield_per: such statements pass through).
        self._soft_close()
        return self._stored
