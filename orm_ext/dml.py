"""ORM-enabled ``update()``, ``delete()`` and ``insert()`` statements inside a deferred block.

A statement executed through the session is recorded, not executed; its WHERE clause is
evaluated at replay time. Only what can be replayed faithfully is accepted: criteria
built from comparisons of the entity's columns with values, combined with and/or/not.
Everything else raises :class:`~orm_ext.exc.DeferredOperationError` at the point of
recording, so nothing is silently executed or dropped.

Encoded criteria (JSON-like lists)::

    ["and", [c1, c2, ...]]   ["or", [...]]   ["not", c]
    ["cmp", operator name, attribute key, value]     value may be a Placeholder
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

from sqlalchemy import and_, not_, or_
from sqlalchemy.engine import IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseElement,
    ColumnElement,
    Grouping,
    Null,
    UnaryExpression,
)
from sqlalchemy.sql.schema import Column

from orm_ext.exc import DeferredOperationError
from orm_ext.references import Placeholder, class_path
from orm_ext.sa_private import (
    criteria_matcher,
    dml_extra_clauses,
    dml_returns,
    dml_values,
    evaluated_options,
    is_bulk_by_primary_key,
    subject_mapper,
    synchronize_bulk_update,
    synchronize_evaluated_delete,
    synchronize_session_mode,
    values_applier,
)

Refuse = Callable[[str], NoReturn]

__all__ = [
    "CRITERIA_OPERATORS",
    "RecordedResult",
    "describe",
    "empty_result",
    "rebuild_criteria",
    "refuse_placeholders",
    "synchronize",
]

_OPERATORS: Final[dict[Any, str]] = {
    operators.eq: "eq",
    operators.ne: "ne",
    operators.lt: "lt",
    operators.le: "le",
    operators.gt: "gt",
    operators.ge: "ge",
    operators.in_op: "in",
    operators.not_in_op: "not_in",
    operators.is_: "is",
    operators.is_not: "is_not",
    operators.like_op: "like",
    operators.not_like_op: "not_like",
}
_BUILDERS: Final[dict[str, Any]] = {
    "eq": lambda c, v: c == v,
    "ne": lambda c, v: c != v,
    "lt": lambda c, v: c < v,
    "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v,
    "ge": lambda c, v: c >= v,
    "in": lambda c, v: c.in_(v),
    "not_in": lambda c, v: c.not_in(v),
    "is": lambda c, v: c.is_(None),
    "is_not": lambda c, v: c.is_not(None),
    "like": lambda c, v: c.like(v),
    "not_like": lambda c, v: c.not_like(v),
}
# The comparison operators a recorded WHERE clause may use.
CRITERIA_OPERATORS: Final = frozenset(_BUILDERS)


class RecordedResult(IteratorResult[Any]):
    """What executing an ORM statement returns inside a deferred block: no rows yet."""

    @property
    def rowcount(self) -> int:
        raise DeferredOperationError(
            "the statement was recorded into a journal, not executed; how many rows it "
            "matches is only known when the journal is replayed"
        )


def empty_result() -> RecordedResult:
    return RecordedResult(SimpleResultMetaData([]), iter(()))


def describe(state: ORMExecuteState, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the journal operation for an ORM DML statement, or raise if it cannot be replayed."""
    statement: Any = state.statement
    mapper = state.bind_mapper

    def refuse(reason: str) -> NoReturn:
        raise DeferredOperationError(
            f"cannot record {statement.__visit_name__}() inside deferred_operations: "
            f"{reason}. Nothing was executed",
            path=path,
        )

    if mapper is None:
        refuse("it does not target a mapped class")
    if dml_returns(statement):
        refuse("RETURNING rows are only known at replay")
    # Dialect-specific clauses (ON CONFLICT, ON DUPLICATE KEY, prefixes such as OR IGNORE,
    # hints) would be lost in the recorded form, which keeps criteria and values only.
    if any(dml_extra_clauses(statement)):
        refuse("it carries dialect-specific clauses, prefixes or hints")
    operation: dict[str, Any] = {
        "class": class_path(mapper.class_),
        "table": str(mapper.local_table.description),
    }
    parameters = state.parameters
    rows = parameters if isinstance(parameters, list) else None
    if state.is_insert:
        operation["op"] = "bulk_insert"
        values = _statement_values(statement, mapper, refuse)
        if rows:
            operation["rows"] = [_row(r, mapper, refuse) for r in rows]
        elif values:
            operation["rows"] = [values]
        else:
            refuse("an insert() needs values() or a list of parameter dictionaries")
        return operation
    kind = "update" if state.is_update else "delete"
    operation["op"] = f"bulk_{kind}"
    if rows:
        if statement.whereclause is not None:
            refuse("a WHERE clause together with a list of parameter rows")
        operation["rows"] = [_row(r, mapper, refuse) for r in rows]
        return operation
    where = statement.whereclause
    operation["where"] = None if where is None else _encode(where, mapper, refuse)
    if kind == "update":
        values = _statement_values(statement, mapper, refuse)
        if isinstance(parameters, Mapping) and parameters:
            values.update(_row(parameters, mapper, refuse))
        if not values:
            refuse("update() without values()")
        operation["values"] = values
    return operation


def _statement_values(statement: Any, mapper: Mapper[Any], refuse: Refuse) -> dict[str, Any]:
    multi, ordered, raw = dml_values(statement)
    if multi:
        refuse("multi-row values() lists; pass a list of parameter dictionaries instead")
    if ordered:
        refuse("ordered_values()")
    return {_attribute_key(k, mapper, refuse): _value(v, refuse) for k, v in raw.items()}


def _row(row: Mapping[str, Any], mapper: Mapper[Any], refuse: Refuse) -> dict[str, Any]:
    return {_attribute_key(k, mapper, refuse): _value(v, refuse) for k, v in row.items()}


def _attribute_key(key: Any, mapper: Mapper[Any], refuse: Refuse) -> str:
    if isinstance(key, str):
        if key in mapper.attrs:
            return key
        column = mapper.local_table.c.get(key)
        if column is not None:
            return str(mapper.get_property_by_column(column).key)
        refuse(f"{key!r} is not an attribute of {mapper.class_.__name__}")
    prop = getattr(key, "property", None)
    if prop is not None and getattr(prop, "parent", None) is not None:
        return str(prop.key)
    if isinstance(key, Column):
        return str(mapper.get_property_by_column(key).key)
    refuse(f"the target {key!r} is not a mapped column")


def _value(value: Any, refuse: Refuse) -> Any:
    if isinstance(value, BindParameter):
        value = value.effective_value
    if isinstance(value, ClauseElement):
        refuse(f"the SQL expression {value} as a value is evaluated by the database")
    if isinstance(value, list | tuple):
        return [_value(v, refuse) for v in value]
    return value


def _encode(clause: Any, mapper: Mapper[Any], refuse: Refuse) -> list[Any]:
    if isinstance(clause, Grouping):
        return _encode(clause.element, mapper, refuse)
    if isinstance(clause, BooleanClauseList):
        name = {operators.and_: "and", operators.or_: "or"}.get(clause.operator)
        if name is None:
            refuse(f"the operator {clause.operator} in the WHERE clause")
        return [name, [_encode(c, mapper, refuse) for c in clause.clauses]]
    if isinstance(clause, UnaryExpression) and clause.operator is operators.inv:
        return ["not", _encode(clause.element, mapper, refuse)]
    if isinstance(clause, BinaryExpression):
        name = _OPERATORS.get(clause.operator)
        left: Any = clause.left
        right: Any = clause.right
        if name is None or not isinstance(left, Column):
            refuse(f"the condition {clause} (only column <op> value comparisons replay faithfully)")
        if left.table not in mapper.tables:
            refuse(f"the condition {clause} refers to another table")
        if clause.modifiers:
            refuse(f"the condition {clause} has modifiers ({', '.join(clause.modifiers)})")
        key = str(mapper.get_property_by_column(left).key)
        if isinstance(right, Null):
            return ["cmp", name, key, None]
        if isinstance(right, Grouping):
            right = right.element
        if not isinstance(right, BindParameter):
            refuse(f"the condition {clause} compares with an expression, not a value")
        return ["cmp", name, key, _value(right.effective_value, refuse)]
    refuse(f"the condition {clause}")


def rebuild_criteria(encoded: list[Any], mapper: Mapper[Any], resolve: Any) -> ColumnElement[bool]:
    """Turn encoded criteria back into a SQLAlchemy expression on ``mapper``'s columns.

    :param resolve: maps a recorded value (which may be a placeholder reference) to the
        value to compare with.
    """
    kind = encoded[0]
    if kind == "and":
        return and_(*(rebuild_criteria(c, mapper, resolve) for c in encoded[1]))
    if kind == "or":
        return or_(*(rebuild_criteria(c, mapper, resolve) for c in encoded[1]))
    if kind == "not":
        return not_(rebuild_criteria(encoded[1], mapper, resolve))
    _, name, key, value = encoded
    column = getattr(mapper.class_, key)
    return _BUILDERS[name](column, resolve(value))  # type: ignore[no-any-return]


def refuse_placeholders(state: ORMExecuteState, path: str | os.PathLike[str]) -> None:
    """Raise if a query would send a placeholder key to the database.

    Placeholders exist only in the journal; a query with one (a lazy load or refresh of
    an object created in the block, or a filter on its key) cannot mean anything to the
    database, so it is refused with an explanation instead of a driver error.
    """
    parameters: Any = state.parameters
    rows = parameters if isinstance(parameters, list) else [parameters or {}]
    values = [v for row in rows for v in row.values()]
    statement: Any = state.statement
    values.extend(
        node.value for node in visitors.iterate(statement) if isinstance(node, BindParameter)
    )
    for value in values:
        if isinstance(value, Placeholder) or (
            isinstance(value, list | tuple) and any(isinstance(v, Placeholder) for v in value)
        ):
            raise DeferredOperationError(
                f"a query needs the database key of an object created in this deferred block "
                f"({value!r}); the key only exists after replay. Keep references to the "
                "objects themselves instead of querying for them",
                path=path,
            )


def synchronize(state: ORMExecuteState) -> None:
    """Bring the session's loaded objects in line with a recorded statement, as executing it would.

    A plain session synchronizes after executing an ORM update() or delete(): with
    ``synchronize_session`` left at ``"auto"`` (or ``"evaluate"``), matching objects of
    the identity map take the new values, or leave the session when deleted. The recorder
    executes nothing, so it runs the same synchronization here with SQLAlchemy's own
    routines: the criteria are evaluated in Python on the objects as they are, exactly as
    the plain session's ``"evaluate"`` does. ``"fetch"`` asks the database which rows
    match; the database does not hold the block's writes, so the Python evaluation (which
    every recordable criterion supports) stands in for it. ``synchronize_session=False``
    leaves the objects alone, as it does in a plain session.

    Columns with an ``onupdate`` the statement does not set get their value at replay: a
    plain execution would fetch or expire them, so they are expired here and a read of
    them is refused, not answered with the old value.
    """
    if state.is_insert:
        return  # an ORM insert() without RETURNING leaves the session's objects alone
    if synchronize_session_mode(state) not in ("auto", "evaluate", "fetch"):
        return
    session = state.session
    statement: Any = state.statement
    if is_bulk_by_primary_key(state):
        if state.is_update:
            synchronize_bulk_update(state)
        return
    options = evaluated_options(state)
    if state.is_delete:
        synchronize_evaluated_delete(state, options)
        return
    matched = criteria_matcher(state, options)(session.identity_map.all_states())
    mapper = subject_mapper(options)
    set_keys = _set_keys(state, mapper)
    set_columns = {c for key in set_keys for c in getattr(mapper.attrs[key], "columns", ())}
    later = [
        c
        for c in statement.table.c
        if (c.onupdate is not None or c.server_onupdate is not None) and c not in set_columns
    ]
    values_applier(state, options)(
        [(obj, st, dict_) for obj, st, dict_, _ in matched],
        [],
        later,
    )


RowEffect = Callable[[InstanceState[Any]], "bool | None"]
"""What a recorded statement does to one loaded object's row: True if the row stays (its
new values, if any, now shown on the object), False if the statement deletes it, None if
that cannot be told in Python."""


def row_effect(state: ORMExecuteState) -> RowEffect:
    """What the recorded update() or delete() ``state`` does to a row loaded after it ran.

    SQLAlchemy's synchronization (see :func:`synchronize`) brings in line the objects
    loaded when the statement runs; an object expired then (by a commit or ``expire()``)
    shows, once reloaded, the row as the statement left it: this applies the statement
    to it, with the same evaluation, so a reload inside the block shows that too.
    """
    mapper = state.bind_mapper
    assert mapper is not None  # describe() refused the statement otherwise
    if is_bulk_by_primary_key(state):
        return _by_primary_key(mapper, state.parameters, deletes=state.is_delete)
    try:
        options = evaluated_options(state)
    except InvalidRequestError:
        return lambda _: None  # criteria SQLAlchemy cannot evaluate in Python
    subject = subject_mapper(options)
    set_keys = _set_keys(state, subject)
    match = criteria_matcher(state, options)
    apply_values = None if state.is_delete else values_applier(state, options)

    def effect(loaded: InstanceState[Any]) -> bool | None:
        matched = match([loaded])
        if not matched:
            return True
        obj, _, dict_, partly_expired = matched[0]
        if partly_expired:
            return None  # the criteria read an attribute the reload did not give
        if apply_values is None:
            return False  # a delete()
        apply_values([(obj, loaded, dict_)], [], [])
        return None if any(key not in dict_ for key in set_keys) else True

    return effect


def _by_primary_key(mapper: Mapper[Any], parameters: Any, *, deletes: bool) -> RowEffect:
    """The row effect of an executemany update()/delete() by primary key."""
    keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
    rows = {tuple(row[k] for k in keys): row for row in parameters}

    def effect(loaded: InstanceState[Any]) -> bool | None:
        identity = loaded.key
        row = None if identity is None else rows.get(tuple(identity[1]))
        if row is None:
            return True
        if deletes:
            return False
        obj = loaded.obj()
        for key, value in row.items():
            if key not in keys:
                set_committed_value(obj, key, value)
        return True

    return effect


def _set_keys(state: ORMExecuteState, mapper: Mapper[Any]) -> set[str]:
    """The attributes a recorded update() sets: its values() and its parameters."""
    keys = set(_statement_values(state.statement, mapper, _never))
    if isinstance(state.parameters, Mapping):
        keys.update(_row(state.parameters, mapper, _never))
    return keys


def _never(reason: str) -> NoReturn:
    raise AssertionError(reason)  # describe() refused the statement before synchronize()
