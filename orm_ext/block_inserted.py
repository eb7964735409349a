"""Rows an ORM ``insert()`` statement of the block added, as probes for the block's reads.

Such a statement is recorded with its rows' values, but its rows are not objects of the
session, and some of their values (a key the database assigns, a server default) are
only known at replay. A query over the table can still be answered when no inserted row
can match it: each row becomes a probe object that the query's criteria are evaluated
on. A key the database assigns is a :data:`NEW_KEY`, equal to no existing key (what a
lookup by key asks); any other value the database decides is :data:`UNKNOWN`, which
cannot be compared at all, so a query that depends on it is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn

import sqlalchemy
from sqlalchemy.orm import Mapper

from orm_ext.server_values import server_defaults

__all__ = ["NEW_KEY", "UNKNOWN", "InsertedRows", "probes"]


class _NewKey:
    """A key the database assigns at replay: unequal to every key it already holds."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def __hash__(self) -> int:
        return id(self)

    def _unordered(self, other: object) -> NoReturn:
        raise TypeError("a key the database assigns at replay has no order yet")

    __lt__ = __le__ = __gt__ = __ge__ = _unordered

    def __repr__(self) -> str:
        return "<key assigned at replay>"


class _Unknown:
    """A value the database decides at replay: it cannot be compared with anything."""

    __slots__ = ()

    def _refuse(self, other: object) -> NoReturn:
        raise TypeError("a value the database sets at replay cannot be compared yet")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "<set by the database at replay>"


NEW_KEY: Final = _NewKey()
UNKNOWN: Final = _Unknown()


def probes(mapper: Mapper[Any], rows: Iterable[Mapping[str, Any]]) -> list[object]:
    """One detached ``mapper`` instance per inserted row, holding what it will hold."""
    literals = dict(server_defaults(mapper).literals)
    fills: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if not isinstance(column, sqlalchemy.Column):
            continue
        default: Any = column.default
        if column.primary_key:
            fills[prop.key] = NEW_KEY
        elif default is not None and default.is_scalar:
            fills[prop.key] = default.arg
        elif prop.key in literals:
            fills[prop.key] = literals[prop.key]
        elif default is None and column.server_default is None:
            fills[prop.key] = None  # inserted as NULL
        else:
            fills[prop.key] = UNKNOWN
    if mapper.polymorphic_on is not None and mapper.polymorphic_identity is not None:
        fills[mapper.get_property_by_column(mapper.polymorphic_on).key] = (
            mapper.polymorphic_identity
        )
    made = []
    for row in rows:
        obj = mapper.class_manager.new_instance()
        data = sqlalchemy.inspect(obj).dict
        data.update(fills)
        data.update(row)
        made.append(obj)
    return made


class InsertedRows:
    """The rows one recorded insert() statement added, with their probes once asked for."""

    def __init__(self, batch: int, mapper: Mapper[Any], rows: list[dict[str, Any]]) -> None:
        self.batch = batch
        self.mapper = mapper
        self.rows = rows

    @functools.cached_property
    def probes(self) -> list[object]:
        return probes(self.mapper, self.rows)
