"""Queries the block cannot evaluate in Python, answered by the database over the block's rows.

A join, an aggregate, an ``EXISTS`` or a function over a table the block has written has
no Python evaluation; but the database can evaluate it exactly, if it reads the table as
the journal so far leaves it. Each written table the query reads is laid over with a
common table expression of the same name, which shadows the table for this one SELECT:

    WITH item AS (
        SELECT ... FROM item WHERE id NOT IN (<rows the block changed or deleted>)
        UNION ALL SELECT <a row of the block> UNION ALL ...
    ) SELECT <the program's query, unchanged>

Nothing is written to the database. The answer is the database's own (its joins, its
collation, its time zones), on the rows a direct run would have there at this point.

Keys the database assigns only at replay have no value yet: each placeholder stands as an
integer above every key of the tables read, in the order the block created the rows, the
same wherever the key is copied (foreign keys, joined-inheritance rows), so joins,
equality and ORDER BY see what they would see after a replay that assigns keys in insert
order. Its value itself would be made up, so a query that compares it by order,
computes with it or passes it to a function (other than ``count()``) is refused.

Rows of new objects come back as the block's own objects: while the
SELECT runs, the session's identity map also knows each by its stand-in key; a stand-in
selected as a bare value comes back as the placeholder.

What cannot be laid over is refused: rows of ORM statements (their rows are only known at
replay), rows whose objects are gone, values only the database sets, tables in another
schema, and what the checks of :meth:`Overlay._refuse_unsupported` and
:func:`_misused` name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.orm import Mapper, ORMExecuteState, Session
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    ClauseList,
    ColumnClause,
    Grouping,
    Label,
    TextClause,
    Tuple,
    UnaryExpression,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.schema import Table
from sqlalchemy.sql.selectable import CTE, Select

from orm_ext.block_links import LinkRows
from orm_ext.block_query import Unanswerable, binds_placeholder
from orm_ext.object_history import REF
from orm_ext.references import Placeholder
from orm_ext.sa_private import (
    LABEL_REFERENCE,
    TEXTUAL_LABEL_REFERENCE,
    column_properties,
    compiled_core_statement,
    identity_entries,
    load_flags,
    locks_rows,
    requires_unique,
    select_clauses,
    source_supports_scalars,
    with_value,
)
from orm_ext.server_values import FROM_DATABASE

__all__ = ["Overlay", "without_strings"]

# Stand-in keys: above the keys of the tables read (checked on each query), in the order
# the block created the rows, inside a 32-bit INTEGER: where a database assigning keys in
# insert order puts them at replay, so ORDER BY a new row's key sorts as a direct run.
_FIRST_STAND_IN: Final = 2_000_000_000
_LAST_STAND_IN: Final = 2_147_483_647
# Bound values per query; beyond it the SELECT would pass the drivers' parameter limits.
_MAX_VALUES: Final = 30_000
# SQLite refuses a compound SELECT of more than 500 terms.
_UNION_CHUNK: Final = 400

# Comparisons under which a stand-in key behaves as the key will: equal to itself only.
_EQUALITY: Final = frozenset(
    {
        operators.eq,
        operators.ne,
        operators.in_op,
        operators.not_in_op,
        operators.is_,
        operators.is_not,
        operators.is_distinct_from,
        operators.is_not_distinct_from,
    }
)


class Overlay:
    """The block's rows of the tables one query reads, and that query answered over them."""

    def __init__(
        self,
        session: Session,
        dialect: Dialect,
        states: Iterable[InstanceState[Any]],
        changed: Mapping[type, Iterable[tuple[Any, ...]]],
        links: LinkRows,
        flushed: Callable[[InstanceState[Any]], Mapping[str, Any]],
    ) -> None:
        self.session = session
        self.links = links
        # The column values an object's row had at its last flush (the journal's): what
        # a column assigned while expired, and not flushed since, holds in the row.
        self.flushed = flushed
        self.dialect = dialect
        self.states = [s for s in states if not (s.deleted or s.was_deleted)]
        self.changed = changed
        self.stand_ins: dict[Placeholder, int] = {}
        # (table name, column name) of columns holding a stand-in in some row.
        self.keyed: set[tuple[str, str]] = set()
        # Tables with new rows whose keys the program gave (not the database).
        self.explicit: set[str] = set()
        self.values = 0

    def answer(
        self, orm_execute_state: ORMExecuteState, statement: Select[Any], tables: list[Table]
    ) -> Result[Any]:
        """Run ``statement`` with each of ``tables`` laid over with the block's rows."""
        self._refuse_unsupported(orm_execute_state, statement, tables)
        ctes = [self._cte(table) for table in tables]
        given: Any = orm_execute_state.parameters or {}
        parameters = {k: self._stand_in_value(v) for k, v in dict(given).items()}
        # Cloning the statement to rebind it could split one FROM into two (ORM-annotated
        # subqueries): only a statement that binds a placeholder is rebound.
        bound = (
            self._bind_stand_ins(statement)
            if binds_placeholder(statement, orm_execute_state.parameters)
            else statement
        )
        self._refuse_misused_keys(bound, tables)
        self._refuse_keys_above_stand_ins(orm_execute_state, tables)
        if self.stand_ins and load_flags(orm_execute_state).populate_existing:
            # It would write the stand-ins into the block's new objects as their keys.
            raise Unanswerable("it populates existing objects (populate_existing)")
        overlaid = bound.add_cte(*ctes)
        with self._known_by_stand_ins():
            result = orm_execute_state.invoke_statement(statement=overlaid, params=parameters)
            frozen = _frozen(result)
        back = {v: k for k, v in self.stand_ins.items()}
        if not back:
            answer: Result[Any] = frozen()
            return answer
        if source_supports_scalars(frozen):
            # with_new_rows() takes one-element rows and keeps their element.
            rows = [(back.get(v, v) if _is_int(v) else v,) for v in frozen.data]
        else:
            rows = [tuple(back.get(v, v) if _is_int(v) else v for v in row) for row in frozen.data]
        answer = frozen.with_new_rows(rows)()
        return answer

    def _refuse_unsupported(
        self, orm_execute_state: ORMExecuteState, statement: Select[Any], tables: list[Table]
    ) -> None:
        """Refuse what a same-named CTE cannot stand in for faithfully."""
        if locks_rows(statement):
            raise Unanswerable("it locks rows (FOR UPDATE), which a CTE does not have")
        names = {t.name.lower() for t in tables}
        for element in visitors.iterate(statement):
            if isinstance(element, CTE) and str(element.name).lower() in names:
                raise Unanswerable(f"it has a CTE of its own named {element.name!r}")
        if self.dialect.name in ("mysql", "mariadb"):
            for table in tables:
                for column in table.c:
                    if isinstance(column.type, sa.Enum) or (
                        isinstance(column.type, sa.Float) and not isinstance(column.type, sa.Double)
                    ):
                        # A UNION with bound values turns ENUM into text (its order lost) and
                        # FLOAT into DOUBLE (its values widened).
                        raise Unanswerable(
                            f"MySQL/MariaDB cannot carry column {table.name}.{column.name} "
                            f"({column.type}) through the UNION that lays the block's rows "
                            "over the table's",
                            str(table.fullname),
                        )
        for table in tables:
            for column in table.c:
                onupdate: Any = column.onupdate
                by_database = column.server_onupdate is not None or (
                    onupdate is not None and onupdate.is_clause_element
                )
                if by_database and any(_holds(state, table) for state in self.states):
                    raise Unanswerable(
                        f"column {table.name}.{column.name} is set by the database when "
                        "a row is updated, which only replay does",
                        str(table.fullname),
                    )
        for state in self.states:
            detached = state.session_id != self.session.hash_key and REF in state.info
            if detached and any(_holds(state, table) for table in tables):
                raise Unanswerable(
                    f"the program took a {state.class_.__name__} the block created out of "
                    "the session (expunge)"
                )

    # -- the rows ---------------------------------------------------------------------------

    def _cte(self, table: Table) -> Any:
        if table.schema is not None:
            raise Unanswerable(
                f"table {table.fullname!r} is in another schema", str(table.fullname)
            )
        schema = self.dialect.default_schema_name
        if schema is None:
            raise Unanswerable("the database's default schema is not known", str(table.fullname))
        inner = sa.table(
            table.name,
            *[sa.column(c.name, c.type) for c in table.c],
            # Schema-qualified, the name is the table and never the CTE: SQLite, and any
            # database once the statement is WITH RECURSIVE, would take it as the CTE.
            schema=schema,
        )
        kept = sa.select(*inner.c)
        if str(table.fullname) in self.links.events:
            named, links = self.links.state(str(table.fullname))
            excluded = self._unlinked(table, inner, named)
            rows = [self._link_row(table, row) for row in links]
        else:
            excluded = self._excluded(table, inner)
            rows = [self._row(table, state) for state in self.states if _holds(state, table)]
        if excluded is not None:
            kept = kept.where(excluded)
        self.values += len(rows) * len(table.c)
        if self.values > _MAX_VALUES:
            raise Unanswerable(
                "the block wrote too many rows to the tables it reads to lay them over the "
                "database's in one query",
                str(table.fullname),
            )
        selects = [
            sa.select(*[self._literal(row[c.name], c).label(c.name) for c in table.c])
            for row in rows
        ]
        if len(selects) >= _UNION_CHUNK:
            # Nested compounds, each within SQLite's limit on the terms of one.
            chunks = [
                sa.union_all(*selects[i : i + _UNION_CHUNK]).subquery()
                for i in range(0, len(selects), _UNION_CHUNK)
            ]
            selects = [sa.select(*chunk.c) for chunk in chunks]
        body = sa.union_all(kept, *selects) if selects else kept
        return body.cte(name=table.name)

    def _excluded(self, table: Table, inner: Any) -> Any:
        """The criterion leaving out the database rows of ``table`` the block changed."""
        keys: list[tuple[Any, ...]] = []
        columns: list[Any] = []
        for cls, changed in self.changed.items():
            if not changed:
                continue
            mapper: Mapper[Any] = sa_inspect(cls)
            holder = next((m for m in mapper.self_and_descendants if table in m.tables), None)
            if holder is None:
                continue
            properties = column_properties(holder)
            order = [properties[c] for c in holder.primary_key]
            pk = list(table.primary_key.columns)
            positions = [order.index(properties[c]) for c in pk]
            columns = [inner.c[c.name] for c in pk]
            keys.extend(tuple(key[i] for i in positions) for key in changed)
        if not keys:
            return None
        if len(columns) == 1:
            return columns[0].not_in([k[0] for k in keys])
        return sa.not_(sa.tuple_(*columns).in_(keys))

    def _unlinked(
        self, table: Table, inner: Any, named: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> Any:
        """The criterion leaving out the link rows the block's link events name."""
        terms = []
        for columns, values in named:
            if any(isinstance(v, Placeholder) for v in values):
                continue  # a new object's links: never a database row
            terms.append(sa.and_(*[inner.c[c] == v for c, v in zip(columns, values, strict=True)]))
        return sa.not_(sa.or_(*terms)) if terms else None

    def _link_row(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        """A link row the block added, with a stand-in for each new object's key."""
        row: dict[str, Any] = {}
        for column in table.c:
            if column.name not in values:
                row[column.name] = self._unmapped(None, column)
                continue
            value = values[column.name]
            if isinstance(value, Placeholder):
                value = self._stand_in(value, column)
                self.keyed.add((str(table.fullname), column.name))
            row[column.name] = value
        return row

    def _row(self, table: Table, state: InstanceState[Any]) -> dict[str, Any]:
        """The values ``state``'s row in ``table`` has in the journal so far."""
        mapper = state.mapper
        properties = column_properties(mapper)
        row: dict[str, Any] = {}
        name = str(table.fullname)
        for column in table.c:
            prop = properties.get(column)
            if prop is None:
                row[column.name] = self._unmapped(state, column)
                continue
            key = prop.key
            # As last flushed: a change not yet flushed is not in the database either.
            value = state.committed_state.get(key, state.dict.get(key, _MISSING))
            if value is NO_VALUE:  # assigned while expired: the journal has the row's value
                value = self.flushed(state).get(key, _MISSING)
            if value is _MISSING or value is NO_VALUE or value is FROM_DATABASE:
                raise Unanswerable(
                    f"{mapper.class_.__name__}.{key} of a row the block wrote is not loaded "
                    "(a value the database sets at replay, or a deferred column)",
                    name,
                )
            if isinstance(value, sa.sql.ClauseElement):
                raise Unanswerable(f"{mapper.class_.__name__}.{key} holds a SQL expression", name)
            if isinstance(value, Placeholder):
                value = self._stand_in(value, column)
                self.keyed.add((name, column.name))
            elif column.primary_key and REF in state.info:
                self.explicit.add(name)  # a new row whose key the program gave
            row[column.name] = value
        return row

    def _unmapped(self, state: InstanceState[Any] | None, column: sa.Column[Any]) -> Any:
        """A column of the table ``state``'s class does not map (single-table inheritance),
        or a column of a link table other than the keys it links."""
        default = column.default
        if default is None and column.server_default is None:
            return None
        if default is not None and default.is_scalar and column.server_default is None:
            return default.arg  # type: ignore[attr-defined]
        raise Unanswerable(
            f"column {column.table.name}.{column.name} gets a value the database decides for "
            f"{'new' if state is None else state.class_.__name__} rows",
            str(column.table.fullname),
        )

    def _stand_in(self, placeholder: Placeholder, column: sa.Column[Any]) -> int:
        if not isinstance(column.type, sa.Integer) or isinstance(column.type, sa.SmallInteger):
            raise Unanswerable(
                f"column {column.table.name}.{column.name} holds a key the database assigns at "
                "replay, and it is not an integer column",
                str(column.table.fullname),
            )
        return self._stand_in_value(placeholder)  # type: ignore[no-any-return]

    def _stand_in_value(self, value: Any) -> Any:
        if isinstance(value, Placeholder):
            found = self.stand_ins.get(value)
            if found is None:
                found = _FIRST_STAND_IN + value.ref
                if found > _LAST_STAND_IN:
                    raise Unanswerable("the block created too many rows to stand in for their keys")
                self.stand_ins[value] = found
            return found
        if isinstance(value, list | tuple) and any(isinstance(v, Placeholder) for v in value):
            return type(value)(self._stand_in_value(v) for v in value)
        return value

    def _literal(self, value: Any, column: sa.Column[Any]) -> Any:
        bound = sa.literal(value, column.type)
        if self.dialect.name == "postgresql":
            # A UNION takes its column types from all its terms: typed, so that a bound
            # datetime or enum is the column's type and not text.
            return sa.cast(bound, column.type)
        if self.dialect.name in ("mysql", "mariadb") and isinstance(
            column.type, sa.DateTime | sa.Date | sa.Time | sa.Numeric
        ):
            return sa.cast(bound, column.type)
        return bound

    # -- the statement ----------------------------------------------------------------------

    def _bind_stand_ins(self, statement: Select[Any]) -> Select[Any]:
        """``statement`` with each placeholder it binds replaced by its stand-in."""

        def bind(element: Any) -> Any:
            if isinstance(element, BindParameter):
                value = element.effective_value
                replaced = self._stand_in_value(value)
                if replaced is not value:
                    return with_value(element, replaced)
            return None

        traverse: Any = visitors.replacement_traverse
        return traverse(statement, {}, bind)  # type: ignore[no-any-return]

    def _refuse_misused_keys(self, statement: Select[Any], tables: list[Table]) -> None:
        """Refuse a query that compares, computes with or passes a stand-in key to a function.

        Equality (joins, lookups, ``IN``), grouping, sorting and selecting the key as it is
        hold for a stand-in as for the key; anything else would answer with a made-up value.
        """
        if not self.keyed and not self.stand_ins:
            return
        compiled: Any = statement.compile(dialect=self.dialect)
        core = compiled_core_statement(compiled, statement)
        # Keys a direct run would not have assigned in the order the block created the
        # rows: a table whose rows refer to each other (the flush inserts parents first),
        # and on PostgreSQL one with keys the program gave (its sequence may be below them).
        unordered = {
            (name, column)
            for name, column in self.keyed
            if any(
                str(t.fullname) == name
                and (
                    any(fk.column.table is t for fk in t.foreign_keys)
                    or (self.dialect.name == "postgresql" and name in self.explicit)
                )
                for t in tables
            )
        }
        misuse = _misused(core, self.keyed, unordered)
        if misuse is not None:
            table, column = misuse
            if not isinstance(table, Table):
                raise Unanswerable(
                    f"it has literal SQL ({column!r}) where the keys of new rows stand in"
                )
            raise Unanswerable(
                f"it compares by order, computes with or passes to a function "
                f"{table.name}.{column}, a key the database assigns at replay (or sorts by one "
                "whose order only replay decides)",
                str(table.fullname),
            )

    def _refuse_keys_above_stand_ins(
        self, orm_execute_state: ORMExecuteState, tables: list[Table]
    ) -> None:
        """Refuse where the database already holds a key as large as a stand-in."""
        by_name = {str(t.fullname): t for t in tables}
        largest = [
            sa.select(sa.func.max(by_name[name].c[column])).scalar_subquery()
            for name, column in sorted(self.keyed)
            if name in by_name
        ]
        if not largest:
            return
        connection = orm_execute_state.session.connection(
            bind_arguments={"mapper": orm_execute_state.bind_mapper}
        )
        found = connection.execute(sa.select(*largest)).one()
        if any(value is not None and value >= _FIRST_STAND_IN for value in found):
            raise Unanswerable(
                f"a table it reads holds keys of {_FIRST_STAND_IN:,} or more, which new rows' "
                "keys stand in as"
            )

    @contextmanager
    def _known_by_stand_ins(self) -> Iterator[None]:
        """Let the SELECT's rows of new objects load as the block's objects."""
        entries = identity_entries(self.session)
        added = []
        for state in self.states:
            key = state.key
            if key is None or not any(isinstance(v, Placeholder) for v in key[1]):
                continue
            alias = (key[0], tuple(self._stand_in_value(v) for v in key[1]), *key[2:])
            if alias not in entries:
                entries[alias] = state
                added.append(alias)
        try:
            yield
        finally:
            for alias in added:
                entries.pop(alias, None)


_MISSING: Final = object()


def _holds(state: InstanceState[Any], table: Table) -> bool:
    return table in state.mapper.tables and state.key is not None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _frozen(result: Result[Any]) -> Any:
    """All of ``result``, kept: the stand-ins must be gone before the program reads it."""
    if requires_unique(result):
        result = result.unique()
    try:
        return result.freeze()
    except sa.exc.InvalidRequestError:
        return result.unique().freeze()


def _misused(
    core: Any, keyed: set[tuple[str, str]], unordered: set[tuple[str, str]]
) -> tuple[Any, str] | None:
    """The first keyed column ``core`` uses other than by equality, as a selected value or
    (unless it is ``unordered``) in ORDER BY; any literal SQL column, while keys stand in."""
    stack: list[tuple[Any, Any]] = [(core, False)]
    seen: set[tuple[int, Any]] = set()
    while stack:
        element, allowed = stack.pop()
        marker = (id(element), allowed)
        if marker in seen:
            continue
        seen.add(marker)
        if isinstance(element, ColumnClause):
            if allowed is True:
                continue
            found = _keyed_base(element, keyed)
            if found is not None and (allowed is False or found[1] in unordered):
                return found[0]
            continue
        if isinstance(element, BinaryExpression) and element.operator in _EQUALITY:
            stack.extend((child, True) for child in element.get_children())
            continue
        if isinstance(element, Grouping | Tuple | ClauseList) and allowed:
            stack.extend((child, allowed) for child in element.get_children())
            continue
        if isinstance(element, FunctionElement) and element.name.lower() == "count":
            # count() asks only whether a value is there, which a stand-in answers rightly.
            stack.extend((child, True) for child in element.get_children())
            continue
        if isinstance(element, Label) and allowed:
            stack.append((element.element, allowed))
            continue
        if isinstance(element, Select):
            clauses = select_clauses(element)
            selected = {id(c) for c in clauses.columns}
            grouped = {id(c) for c in clauses.group_by}
            ordering = {id(c) for c in clauses.order_by}
            for child in element.get_children():
                if id(child) not in ordering:
                    stack.append((child, id(child) in selected or id(child) in grouped))
            for clause in clauses.order_by:
                # Sorting by a stand-in sorts as by the key (see _FIRST_STAND_IN), unless
                # only replay decides the order of those keys.
                target = _sort_target(element, clause)
                if target is None:
                    if unordered:
                        return clause, str(clause)
                    continue
                stack.append((target, "order"))
            continue
        stack.extend((child, False) for child in element.get_children())
    return None


def _sort_target(select: Select[Any], clause: Any) -> Any:
    """The expression an ORDER BY term sorts by, or None where it cannot be told (SQL
    text, a literal column, a label name that matches no selected column)."""
    while isinstance(clause, UnaryExpression):
        clause = clause.element
    if isinstance(clause, LABEL_REFERENCE):
        clause = clause.element
    elif isinstance(clause, TEXTUAL_LABEL_REFERENCE):
        name = clause.element
        clause = next(
            (c for c in select.selected_columns if getattr(c, "name", None) == name), None
        )
    if clause is None or isinstance(clause, TextClause):
        return None
    if isinstance(clause, ColumnClause) and (clause.is_literal or clause.table is None):
        return None if not _constant(clause.name) else clause
    return clause


def _keyed_base(
    column: ColumnClause[Any], keyed: set[tuple[str, str]]
) -> tuple[tuple[Any, str], tuple[str, str]] | None:
    """The keyed table column ``column`` is, or stands for (through subqueries, CTEs and
    labels); a literal SQL column counts as one, as what it names cannot be told."""
    if column.is_literal or column.table is None:
        if not keyed or _constant(column.name):
            return None
        return (column, column.name), ("", column.name)
    for base in column.base_columns:
        table = _base_table(getattr(base, "table", None))
        if table is not None and (str(table.fullname), base.name) in keyed:
            return (table, base.name), (str(table.fullname), base.name)
    return None


def _constant(sql: str) -> bool:
    """Whether literal SQL is only ``*``, a number or a quoted string (polymorphic unions'
    discriminators, ``exists()``), which name no column."""
    text = sql.strip()
    if text == "*" or text.replace(".", "", 1).lstrip("-").isdigit():
        return True
    return len(text) >= 2 and text[0] == text[-1] == "'" and "'" not in text[1:-1].replace("''", "")


def without_strings(sql: str) -> str:
    """``sql`` with its quoted string literals taken out: a name in one is no table."""
    return _STRING.sub("''", sql)


_STRING: Final = re.compile(r"'(?:[^']|'')*'")


def _base_table(selectable: Any) -> Table | None:
    while selectable is not None and not isinstance(selectable, Table):
        selectable = getattr(selectable, "element", None)
    return selectable
