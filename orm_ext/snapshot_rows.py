"""Rows of a statement, as the database sends them, turned into the session's result.

A query snapshot stores what the database returned for a statement (its column values,
before the ORM made objects of them), so that a later process can load them exactly as a
plain load would: through SQLAlchemy's own loading, into the identity map, with eager
loads run as the statements they are. Reading them online goes through the same loading,
so what a process sees online and what another sees offline come from one code path.

What takes raw rows from a cursor and feeds them to the ORM's loading reaches into
SQLAlchemy: it is in :mod:`orm_ext.sa_private.result`.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, attributes

from orm_ext.sa_private import raw_rows

__all__ = ["FROM_SNAPSHOT", "Fetched", "fetch", "marked"]


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
    return Fetched(columns, raw_rows(result), context.compiled)
