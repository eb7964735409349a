"""Rows of a statement, as the database sends them, turned into the session's result.

A query snapshot stores what the database returned for a statement (its column values,
before the ORM made objects of them), so that a later process can load them exactly as a
plain load would: through SQLAlchemy's own loading, into the identity map, with eager
loads run as the statements they are. Reading them online goes through the same loading,
so what a process sees online and what another sees offline come from one code path.

Every use of SQLAlchemy internals for snapshots is in this module; nothing public feeds
stored rows to the ORM's loading (checked on SQLAlchemy 2.1.9).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from sqlalchemy.engine import IteratorResult, Result
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import ORMExecuteState, attributes, loading
from sqlalchemy.orm.context import QueryContext

__all__ = ["FROM_SNAPSHOT", "Fetched", "fetch", "load", "marked"]


class Fetched(NamedTuple):
    """What the database returned for a statement: its column names and value rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    compiled: Any


# state.info key of an object a query snapshot answered (loaded from it, not the database):
# a deferred block records its loaded values as old values, so that replay catches a row
# changed since the snapshot in any column (SPEC §9.4).
FROM_SNAPSHOT: Final = "orm_journal.from_snapshot"


def marked(result: Result[Any]) -> Result[Any]:
    """``result``, each ORM object in it marked as answered from a snapshot."""
    frozen = result.freeze()
    for row in frozen.data:
        # A single-entity result keeps the objects themselves, others keep rows.
        values = (row,) if _state_of(row) is not None else row
        for value in values:
            state = _state_of(value)
            if state is not None:
                state.info[FROM_SNAPSHOT] = True
    return frozen()


def _state_of(value: Any) -> Any:
    try:
        return attributes.instance_state(value)
    except AttributeError:  # not a mapped instance: a column's value
        return None


def fetch(orm_context: ORMExecuteState) -> Fetched:
    """Execute ``orm_context``'s statement on the session's connection; keep the raw rows.

    The statement goes through the connection the session would use, with the execution
    options the ORM prepared for it (the ORM compiles it the same way), but the rows are
    kept as values instead of being loaded, so they can be stored and loaded again.
    """
    session = orm_context.session
    connection = session.connection(bind_arguments=orm_context.bind_arguments)
    parameters: Any = orm_context.parameters or {}
    result = connection.execute(
        orm_context.statement, parameters, execution_options=orm_context.execution_options
    )
    context: Any = result.context
    columns = list(map(str, result.keys()))
    # Processed values, as the ORM's loading reads them (Row objects where the result
    # must make them, such as with row logging, which are turned into tuples).
    raw: Any = result
    rows = [row if type(row) is tuple else tuple(row) for row in raw._raw_all_tuples()]
    return Fetched(columns, rows, context.compiled)


def compile_for(orm_context: ORMExecuteState) -> Any:
    """Compile ``orm_context``'s statement for the session's bind, without a connection.

    Through the engine's compiled cache, as an execution compiles it: a statement of a
    known structure is not compiled again (``ClauseElement._compile_w_cache``).
    """
    bind: Any = orm_context.session.get_bind(**orm_context.bind_arguments)
    options = orm_context.execution_options
    engine = getattr(bind, "engine", bind)
    cache = options.get("compiled_cache", getattr(engine, "_compiled_cache", None))
    statement: Any = orm_context.statement
    compiled, _, _, _ = statement._compile_w_cache(
        bind.dialect,
        compiled_cache=cache,
        column_keys=[],
        schema_translate_map=options.get("schema_translate_map"),
    )
    return compiled


def load(orm_context: ORMExecuteState, compiled: Any, rows: list[tuple[Any, ...]]) -> Result[Any]:
    """Return the result a plain execution of the statement gives for ``rows``.

    ORM statements go through ``loading.instances`` as ``orm_setup_cursor_result`` sends
    them (objects into the identity map, joined eager loads from the rows, selectin and
    subquery loads as statements of their own); Core statements get their rows as they
    are. ``compiled`` must be the compilation ``rows`` belong to: its result columns say
    which value is which column.
    """
    columns = compiled._result_columns
    cursor = _StoredCursor(
        SimpleResultMetaData([c.keyname for c in columns], extra=[c.objects for c in columns]),
        rows,
        compiled,
    )
    compile_state = getattr(compiled, "compile_state", None)
    statement: Any = orm_context.statement
    if (
        statement._propagate_attrs.get("compile_state_plugin") != "orm"
        or compile_state is None
        or compile_state.compile_options._is_star
    ):
        return cursor
    options = orm_context.execution_options
    # A SELECT has one set of parameters (executemany never reaches here).
    parameters: Any = orm_context.parameters
    context = QueryContext(
        compile_state,
        statement,
        statement,
        parameters,
        orm_context.session,
        options.get("_sa_orm_load_options", QueryContext.default_load_options),
        options,
        orm_context.bind_arguments,
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
