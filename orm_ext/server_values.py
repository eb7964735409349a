"""What a new row's columns hold when the program gives them no value and the database does.

A plain flush inserts the row and the database fills in ``server_default`` columns,
``Computed`` and ``Identity`` columns, sequences and SQL-expression defaults; the session
then reads them back on first access. Inside a deferred block there is no row yet. A
default that is a plain literal (a string on a text column, a whole number on an integer
one) reads as the value the database would store; any other value exists only after
replay, and reading it is refused (:data:`FROM_DATABASE` marks it), never answered with
``None``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import sqlalchemy
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.base import LoaderCallableStatus, PassiveFlag
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.schema import Computed, DefaultClause, Identity
from sqlalchemy.sql.elements import TextClause

from orm_ext.exc import DeferredOperationError

__all__ = ["FROM_DATABASE", "ServerDefaults", "UnknownUntilReplay", "server_defaults"]


class _FromDatabase:
    """The value of a column the database sets when replay inserts the row."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<set by the database at replay>"


FROM_DATABASE: Final = _FromDatabase()


class UnknownUntilReplay:
    """The loader of a column only the database can set, on an object a block wrote.

    A plain session reloads such a column (a server default, a server ``onupdate``, a
    trigger's value) from the row its flush wrote. Inside a deferred block that row exists
    only once the journal is replayed: reading the column raises, naming it, instead of
    answering with the value before the block or with ``None``. The same for a column an
    ``update()`` recorded with ``synchronize_session=False`` may have changed, once the
    object was flushed before a reload. One instance per journal
    and attribute key, not a closure: objects holding it stay picklable, as a deferred
    column's loader leaves them.
    """

    __slots__ = ("key", "path")

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        if not passive & PassiveFlag.SQL_OK:
            return LoaderCallableStatus.PASSIVE_NO_RESULT  # a peek, not a read: no value
        raise DeferredOperationError(
            f"{state.class_.__name__}.{self.key} of an object this deferred block wrote is "
            "set by the database when replay writes the row (a server default or onupdate, "
            "a sequence, a trigger or a SQL expression), or may have been changed by an "
            "update() recorded with synchronize_session=False; it has no value while "
            "recording. Give it a value in the program, or read it after replay",
            path=self.path,
        )

    def __reduce__(self) -> tuple[type[UnknownUntilReplay], tuple[str, str]]:
        return (UnknownUntilReplay, (self.path, self.key))


_INTEGER: Final = re.compile(r"[+-]?\d+")
_QUOTED: Final = re.compile(r"'((?:[^']|'')*)'")


class ServerDefaults:
    """The columns of one mapper whose insert value the database decides."""

    __slots__ = ("from_database", "literals")

    def __init__(self, literals: tuple[tuple[str, Any], ...], from_database: frozenset[str]):
        self.literals = literals  # (attribute key, the value the database stores)
        self.from_database = from_database  # attribute keys known only after replay


def server_defaults(mapper: Mapper[Any]) -> ServerDefaults:
    """Classify the non-key columns of ``mapper`` that the database fills in on insert."""
    literals: list[tuple[str, Any]] = []
    unknown: set[str] = set()
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if not isinstance(column, sqlalchemy.Column) or column.primary_key:
            continue  # keys are placeholders until replay (see orm_ext.references)
        default = column.default
        if default is not None:
            if not (default.is_scalar or default.is_callable):
                unknown.add(prop.key)  # a Sequence or a SQL expression: run by the database
            continue  # Python-side defaults are computed by the recording flush
        server = column.server_default
        if server is None:
            continue
        value = _literal(column, server)
        if value is FROM_DATABASE:
            unknown.add(prop.key)
        else:
            literals.append((prop.key, value))
    return ServerDefaults(tuple(literals), frozenset(unknown))


def _literal(column: sqlalchemy.Column[Any], server: Any) -> Any:
    """The value a literal server default stores, or FROM_DATABASE if not plainly known."""
    if isinstance(server, Computed | Identity) or not isinstance(server, DefaultClause):
        return FROM_DATABASE  # FetchedValue: a trigger or the like
    arg = server.arg
    text: str | None = None
    if isinstance(arg, str):
        text = arg  # rendered as a quoted string literal
    elif isinstance(arg, TextClause):
        quoted = _QUOTED.fullmatch(arg.text.strip())
        if quoted is not None:
            text = quoted.group(1).replace("''", "'")
        elif _INTEGER.fullmatch(arg.text.strip()):
            text = arg.text.strip()
    if text is None:
        return FROM_DATABASE
    kind = column.type
    # SQLAlchemy's own types only: a TypeDecorator or an Enum may turn the stored text
    # into something else on the way back.
    if not type(kind).__module__.startswith("sqlalchemy."):
        return FROM_DATABASE
    if isinstance(kind, sqlalchemy.String) and not isinstance(kind, sqlalchemy.Enum):
        return text
    if isinstance(kind, sqlalchemy.Integer) and _INTEGER.fullmatch(text):
        return int(text)
    return FROM_DATABASE
