"""One ORM SELECT of one mapped class, answered in Python over given objects.

The query side of the block's reads (:mod:`orm_ext.block_reads`): what a statement asks
(its entity, columns, criteria, order, slice) in the form SQLAlchemy's
``synchronize_session="evaluate"`` evaluator can apply to objects, and the result built
from the objects that match. What cannot be evaluated raises :class:`Unanswerable`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import IteratorResult, Result
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import ColumnProperty, Mapper, ORMExecuteState
from sqlalchemy.orm.evaluator import UnevaluatableError
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, Label, UnaryExpression
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import Concatenable, Integer, Numeric

from orm_ext.references import Placeholder
from orm_ext.sa_private import (
    EXPIRED_OBJECT,
    EvaluatorCompiler,
    annotated,
    annotations_of,
    loader_criteria,
    result_of,
    select_clauses,
    statement_cache_key,
    type_affinity,
    with_value,
)

__all__ = ["Query", "Unanswerable", "binds_placeholder", "objects_result"]

Evaluator = Callable[[object], Any]


class Unanswerable(Exception):
    """A query over a written table that cannot be answered with the block's writes."""

    def __init__(self, why: str, table: str | None = None) -> None:
        super().__init__(why)
        self.table = table


class Query:
    """One ORM SELECT of one entity, evaluable in Python."""

    def __init__(
        self,
        mapper: Mapper[Any],
        columns: list[tuple[str, Evaluator | None]],
        where: Evaluator | None,
        order: list[tuple[Evaluator, bool, bool | None, str | None]],
        limit: int | None,
        offset: int | None,
        distinct: bool,
        placeholder_key: bool,
    ) -> None:
        self.mapper = mapper
        self.columns = columns
        self.where = where
        self.order = order
        self.limit = limit
        self.offset = offset
        self.distinct = distinct
        self.placeholder_key = placeholder_key

    @classmethod
    def of(cls, statement: Select[Any], parameters: Any, dialect: str) -> Query:
        descriptions = statement.column_descriptions
        entities = {d.get("entity") for d in descriptions} - {None}
        if len(entities) != 1:
            raise Unanswerable(
                "it selects no mapped class (an aggregate, a function or a bare column)"
                if not entities
                else "it selects from more than one mapped class"
            )
        entity = next(iter(entities))
        inspected = sa_inspect(entity)
        mapper: Mapper[Any] = inspected.mapper
        clauses = select_clauses(statement)
        own = {*mapper.tables, inspected.selectable}
        if clauses.joins or any(f not in own for f in clauses.froms):
            raise Unanswerable("it joins or selects from other tables")
        if clauses.group_by or clauses.having:
            raise Unanswerable("it groups rows (GROUP BY / HAVING)")
        if clauses.fetch is not None:
            raise Unanswerable("it has a FETCH clause")

        # Subclasses whose columns the query may name: those it loads with the entity
        # (with_polymorphic) and single-table ones, which share the entity's table.
        loaded = {
            *(getattr(inspected, "with_polymorphic_mappers", None) or ()),
            *(m for m in mapper.self_and_descendants if m.single),
        }
        compiler = _evaluator_compiler(mapper, loaded, dialect)
        columns: list[tuple[str, Evaluator | None]] = []
        for description in descriptions:
            expr = description["expr"]
            if expr is entity:
                columns.append((description["name"], None))
                continue
            try:
                clause = _mapped_columns(expr.__clause_element__(), mapper)
                columns.append((description["name"], compiler.process(clause)))
            except (UnevaluatableError, AttributeError) as err:
                raise Unanswerable(f"its column {description['name']!r}: {err}") from None
        where = statement.whereclause
        criteria = loader_criteria(statement, mapper)
        if criteria:
            where = and_(*criteria) if where is None else and_(where, *criteria)
        placeholder_key = False
        evaluate = None
        if where is not None:
            if isinstance(parameters, Mapping) and parameters:
                where = _with_values(where, parameters)
            placeholder_key = _requires_placeholder(where)
            try:
                evaluate = compiler.process(_mapped_columns(where, mapper))
            except UnevaluatableError as err:
                raise Unanswerable(f"its WHERE clause: {err}") from None
        order = []
        for clause in clauses.order_by:
            order.append(_order_term(compiler, mapper, clause))
        return cls(
            mapper,
            columns,
            evaluate,
            order,
            _as_int(clauses.limit, "LIMIT"),
            _as_int(clauses.offset, "OFFSET"),
            clauses.distinct,
            placeholder_key,
        )

    @property
    def evaluates_rows(self) -> bool:
        """Whether database rows are evaluated here too (projected or sorted)."""
        return bool(self.order) or any(e is not None for _, e in self.columns)

    def matches(self, obj: object) -> bool:
        return self.where is None or _evaluated(self.where, obj) is True

    def entity_statement(self, statement: Select[Any]) -> Select[Any]:
        """The statement to ask the database for its part: whole objects, no slicing."""
        if self.columns != [(self.columns[0][0], None)]:
            entity = select(self.mapper)
            if statement.whereclause is not None:
                entity = entity.where(statement.whereclause)
            return entity
        return statement.limit(None).offset(None)

    def result(
        self,
        found: list[object],
        orm_execute_state: ORMExecuteState,
        binary_collation: Callable[[ORMExecuteState], bool],
    ) -> Result[Any]:
        rows = _unique(found)
        if self.order:
            dialect = orm_execute_state.session.get_bind(mapper=self.mapper).dialect.name
            if (
                dialect == "postgresql"
                and any(
                    collation is None and any(isinstance(evaluate(o), str) for o in rows)
                    for evaluate, _, _, collation in self.order
                )
                and not binary_collation(orm_execute_state)
            ):
                raise Unanswerable(
                    "it sorts text, and the database's collation orders text by rules "
                    'Python does not know (only "C" sorts by code point)'
                )
            # One stable sort per term, the last term first: ORDER BY a, b.
            for evaluate, descending, nulls_first, collation in reversed(self.order):
                if nulls_first is None:
                    # SQL's default: PostgreSQL sorts NULL as larger than any value,
                    # SQLite and MySQL/MariaDB as smaller.
                    nulls_first = descending if dialect == "postgresql" else not descending
                null_rank = int(nulls_first == descending)
                # MySQL/MariaDB's default collations sort text without regard to case,
                # unless the column names a binary or case-sensitive one.
                fold = dialect in ("mysql", "mariadb") and not (
                    collation is not None and (collation.endswith("_bin") or "_cs" in collation)
                )
                key = functools.partial(_sort_key, evaluate, null_rank, fold)
                try:
                    rows.sort(key=key, reverse=descending)
                except TypeError as err:
                    # Values of the block's rows are the program's, the database's come
                    # back through the column type (a time zone SQLite drops, say).
                    raise Unanswerable(
                        f"its ORDER BY compares values of the block's rows with the "
                        f"database's that Python cannot order ({err})"
                    ) from None
        start = self.offset or 0
        rows = rows[start : None if self.limit is None else start + self.limit]
        if all(evaluate is None for _, evaluate in self.columns) and len(self.columns) == 1:
            return objects_result(rows)
        values = [
            tuple(
                obj if evaluate is None else _evaluated(evaluate, obj)
                for _, evaluate in self.columns
            )
            for obj in rows
        ]
        if self.distinct:
            values = list(dict.fromkeys(values))
        return IteratorResult(SimpleResultMetaData([n for n, _ in self.columns]), iter(values))


def objects_result(objects: Sequence[object]) -> Result[Any]:
    """A result of whole objects, as the ORM returns for a single-entity SELECT."""
    name = type(objects[0]).__name__ if objects else "entity"
    return result_of(
        SimpleResultMetaData([name]),
        iter(objects),
        scalars=True,
        # What legacy Query reads to return objects rather than rows (loading.instances).
        added_attributes={"filtered": True, "is_single_entity": True},
    )


def _evaluated(evaluate: Evaluator, obj: object) -> Any:
    """``evaluate(obj)``, or :class:`Unanswerable` where the database would give NULL or an
    error that Python does not (a division by zero) or the value is not loaded."""
    try:
        value = evaluate(obj)
    except ArithmeticError as err:
        raise Unanswerable(
            f"it computes what the database answers with NULL or an error ({err})"
        ) from None
    return _known(value)


def _known(value: Any) -> Any:
    """``value``, unless the evaluator found an attribute not loaded on the object."""
    if value is EXPIRED_OBJECT:
        raise Unanswerable(
            "it reads a column whose value is not loaded on an object: one the database "
            "sets when replay inserts the row (a server default, a sequence), or a "
            "deferred column"
        )
    return value


def _unique(objects: list[object]) -> list[object]:
    seen: set[int] = set()
    kept = []
    for obj in objects:
        if id(obj) not in seen:
            seen.add(id(obj))
            kept.append(obj)
    return kept


def _sort_key(evaluate: Evaluator, null_rank: int, fold: bool, obj: object) -> tuple[int, int, Any]:
    value = _evaluated(evaluate, obj)
    if fold and isinstance(value, str):
        value = value.casefold()
    if value is None:
        return (null_rank, 0, 0)
    if isinstance(value, Placeholder):
        # A key the database assigns at replay: after every key it holds, in the order
        # the block created the rows, as an autoincrementing key would be.
        return (1 - null_rank, 1, value.ref)
    return (1 - null_rank, 0, value)


def _order_term(
    compiler: Any, mapper: Mapper[Any], clause: Any
) -> tuple[Evaluator, bool, bool | None, str | None]:
    descending = False
    nulls_first: bool | None = None
    while isinstance(clause, UnaryExpression) and clause.modifier in (
        operators.desc_op,
        operators.asc_op,
        operators.nulls_first_op,
        operators.nulls_last_op,
    ):
        if clause.modifier is operators.desc_op:
            descending = True
        elif clause.modifier is operators.nulls_first_op:
            nulls_first = True
        elif clause.modifier is operators.nulls_last_op:
            nulls_first = False
        clause = clause.element
    collation = getattr(clause.type, "collation", None)
    try:
        evaluate = compiler.process(_mapped_columns(clause, mapper))
    except UnevaluatableError as err:
        raise Unanswerable(f"its ORDER BY: {err}") from None
    return evaluate, descending, nulls_first, collation


def _as_int(clause: Any, what: str) -> int | None:
    if clause is None:
        return None
    value = getattr(clause, "value", None)
    if isinstance(value, int):
        return value
    raise Unanswerable(f"its {what} is not a plain number")


def _requires_placeholder(where: Any) -> bool:
    """Whether ``where`` only matches rows whose key is a placeholder of this journal.

    True when one of its AND-ed terms is an equality with a placeholder; raises when a
    placeholder appears anywhere else, as the database could not be asked for the rest.
    """
    terms = where.clauses if getattr(where, "operator", None) is operators.and_ else [where]
    for term in terms:
        if isinstance(term, BinaryExpression) and term.operator is operators.eq:
            for side in (term.left, term.right):
                if isinstance(side, BindParameter) and isinstance(
                    side.effective_value, Placeholder
                ):
                    return True
    for node in visitors.iterate(where):
        if isinstance(node, BindParameter) and _holds_placeholder(node.effective_value):
            raise Unanswerable(
                "its criteria compare a key only this journal knows in a way that needs the "
                "database's rows too"
            )
    return False


def _with_values(clause: Any, parameters: Mapping[str, Any]) -> Any:
    """``clause`` with the values given at execution (a lazy load's) in its parameters."""

    def bind(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in parameters:
            return with_value(element, parameters[element.key])
        return None

    traverse: Any = visitors.replacement_traverse
    return traverse(clause, {}, bind)


def _mapped_columns(clause: Any, mapper: Mapper[Any]) -> Any:
    """``clause`` with the bare table columns of ``mapper`` marked as its attributes.

    Session.get() and relationship loads build their criteria from table columns, which
    the evaluator only accepts once they say which mapper they belong to.
    """
    tables = set(mapper.tables)

    def mark(element: Any) -> Any:
        if (
            isinstance(element, Column)
            and element.table in tables
            and "parentmapper" not in annotations_of(element)
        ):
            return annotated(element, {"parentmapper": mapper})
        return None

    traverse: Any = visitors.replacement_traverse
    return traverse(clause, {}, mark)


def binds_placeholder(statement: Any, parameters: Any) -> bool:
    """Whether executing ``statement`` would send a placeholder key to the database."""
    rows = parameters if isinstance(parameters, list) else [parameters or {}]
    if any(_holds_placeholder(v) for row in rows for v in row.values()):
        return True
    # The statement's cache key lists its bound parameters (computed once per statement
    # and kept: the execution needs it too); walking the statement would find the same.
    key = statement_cache_key(statement)
    binds = key.bindparams if key is not None else visitors.iterate(statement)
    return any(
        isinstance(node, BindParameter) and _holds_placeholder(node.effective_value)
        for node in binds
    )


def _holds_placeholder(value: Any) -> bool:
    if isinstance(value, Placeholder):
        return True
    return isinstance(value, list | tuple) and any(isinstance(v, Placeholder) for v in value)


def _evaluator_compiler(mapper: Mapper[Any], loaded: set[Mapper[Any]], dialect: str) -> Any:
    class Compiler(EvaluatorCompiler):
        """The ORM's evaluator, plus LIKE as the dialect matches it, and the columns of
        subclasses the query loads (NULL for rows of other classes, as SQL gives)."""

        def visit_column(self, clause: Any) -> Any:
            parent = annotations_of(clause).get("parentmapper")
            if parent is None or parent is mapper or not parent.isa(mapper):
                return _attribute(clause, parent) or super().visit_column(clause)
            if parent not in loaded:
                raise UnevaluatableError(
                    f"{clause} belongs to {parent.class_.__name__}, which the query does "
                    "not load with its entity"
                )
            value = _attribute(clause, parent) or EvaluatorCompiler(parent.class_).visit_column(
                clause
            )
            cls = parent.class_
            return lambda obj: value(obj) if isinstance(obj, cls) else None

        # SQL flattens ``a + b + c`` (a full name, a total) into one list of operands, of
        # which the ORM's evaluator only takes the two-operand form.
        def visit_concat_op_clauselist_op(
            self, operator: Any, evaluators: list[Any], clause: Any
        ) -> Any:
            _operands_of(clause, lambda t: issubclass(t, Concatenable), "concatenate")
            return self._fold(evaluators, clause)

        def visit_add_clauselist_op(self, operator: Any, evaluators: list[Any], clause: Any) -> Any:
            _operands_of(clause, lambda t: t in (Integer, Numeric), "add")
            return self._fold(evaluators, clause)

        def _fold(self, evaluators: list[Any], clause: Any) -> Any:
            evaluate = evaluators[0]
            for right in evaluators[1:]:
                evaluate = self.straight_evaluate(lambda a, b: a + b, evaluate, right, clause)
            return evaluate

        def visit_mod_binary_op(self, operator: Any, left: Any, right: Any, clause: Any) -> Any:
            # SQL's remainder takes the sign of the dividend, Python's that of the divisor.
            _operands_of(clause, lambda t: t in (Integer, Numeric), "take the remainder of")
            return self.straight_evaluate(_sql_remainder, left, right, clause)

        def visit_startswith_op_binary_op(
            self, operator: Any, left: Any, right: Any, clause: Any
        ) -> Any:
            return self._affix(clause, left, right, prefix=True)

        def visit_endswith_op_binary_op(
            self, operator: Any, left: Any, right: Any, clause: Any
        ) -> Any:
            return self._affix(clause, left, right, prefix=False)

        def _affix(self, clause: Any, left: Any, right: Any, *, prefix: bool) -> Any:
            # SQL renders startswith()/endswith() as LIKE: without regard to case where
            # LIKE is (SQLite, MySQL/MariaDB), and with % and _ as wildcards unless
            # autoescape escaped them.
            fold = dialect != "postgresql"
            escape = clause.modifiers.get("escape")
            autoescape = clause.modifiers.get("autoescape")

            def matches(value: str, affix: str) -> bool:
                if autoescape:
                    affix = re.sub(r"[%_/]", lambda m: "/" + m.group(0), affix)
                pattern = f"{affix}%" if prefix else f"%{affix}"
                found = _like_regex(pattern, "/" if autoescape else escape, fold)
                return found.fullmatch(value) is not None

            return self.straight_evaluate(matches, left, right, clause)

        def _like(self, clause: Any, left: Any, right: Any, *, fold: bool, negate: bool) -> Any:
            escape = clause.modifiers.get("escape")

            def matches(value: str, pattern: str) -> bool:
                return _like_regex(pattern, escape, fold).fullmatch(value) is not None

            compare = (lambda a, b: not matches(a, b)) if negate else matches
            return self.straight_evaluate(compare, left, right, clause)

        def visit_like_op_binary_op(self, operator: Any, left: Any, right: Any, clause: Any) -> Any:
            # SQLite and MySQL/MariaDB (with their default collations) match LIKE without
            # regard to case; PostgreSQL does not.
            fold = dialect != "postgresql"
            return self._like(clause, left, right, fold=fold, negate=False)

        def visit_not_like_op_binary_op(
            self, operator: Any, left: Any, right: Any, clause: Any
        ) -> Any:
            fold = dialect != "postgresql"
            return self._like(clause, left, right, fold=fold, negate=True)

        def visit_ilike_op_binary_op(
            self, operator: Any, left: Any, right: Any, clause: Any
        ) -> Any:
            return self._like(clause, left, right, fold=True, negate=False)

        def visit_not_ilike_op_binary_op(
            self, operator: Any, left: Any, right: Any, clause: Any
        ) -> Any:
            return self._like(clause, left, right, fold=True, negate=True)

    return Compiler(mapper.class_)


def _sql_remainder(a: Any, b: Any) -> Any:
    """``a % b`` as SQL computes it (truncating division); zero divisors raise."""
    if b == 0:
        raise ZeroDivisionError("a remainder by zero")
    if isinstance(a, float) or isinstance(b, float):
        return math.fmod(a, b)
    if isinstance(a, int) and isinstance(b, int):
        remainder = abs(a) % abs(b)
        return -remainder if a < 0 else remainder
    return a % b  # Decimal's remainder already truncates


def _operands_of(clause: Any, accepted: Callable[[type], bool], what: str) -> None:
    items = clause.clauses if hasattr(clause, "clauses") else (clause.left, clause.right)
    for item in items:
        if not accepted(type_affinity(item.type)):
            raise UnevaluatableError(f"Cannot {what} {item.type}")


def _attribute(clause: Any, parent: Mapper[Any] | None) -> Evaluator | None:
    """The value of the attribute an aliased entity's column stands for (with_polymorphic
    and aliased() select from anonymous aliases of the tables, which the mapper does not
    map itself), or None for a column the evaluator can take as it is."""
    key = annotations_of(clause).get("proxy_key")
    if parent is None or key is None or clause.table in set(parent.tables):
        return None
    prop = parent.attrs.get(key)
    if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1:
        return None
    if not clause.shares_lineage(prop.columns[0]):
        return None
    return lambda obj: getattr(obj, key, None)


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str, escape: str | None, fold: bool) -> re.Pattern[str]:
    """SQL LIKE ``pattern`` as a regular expression: ``%`` any run, ``_`` one character."""
    parts = []
    chars = iter(pattern)
    for char in chars:
        if escape is not None and char == escape:
            parts.append(re.escape(next(chars, "")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if fold else 0))


def expression_evaluator(mapper: Mapper[Any], expression: Any, dialect: str) -> Evaluator:
    """Evaluate a mapped SQL expression (a ``column_property()``) on ``mapper``'s objects.

    Raises :class:`Unanswerable` for an expression the ORM's evaluator cannot compute in
    Python (a subquery, most SQL functions); the evaluator it returns raises it for an
    object without a value the expression reads.
    """
    while isinstance(expression, Label):  # column_property() labels its expression
        expression = expression.element
    compiler = _evaluator_compiler(mapper, set(), dialect)
    try:
        evaluate: Evaluator = compiler.process(_mapped_columns(expression, mapper))
    except (UnevaluatableError, AttributeError) as err:
        raise Unanswerable(f"the ORM cannot evaluate it in Python ({err})") from None

    try:
        python_type = expression.type.python_type
    except NotImplementedError:
        python_type = None
    if python_type not in (str, int, bool):
        # A number the database returns through a Numeric or Float type (a division, a
        # Decimal sum of its own scale), or a date it computes: not what Python gives.
        raise Unanswerable(f"its value comes back through the type {expression.type}")

    def value(obj: object) -> Any:
        found = _evaluated(evaluate, obj)
        if found is not None and not isinstance(found, python_type):
            # The database's value comes back through the expression's type (a division
            # as a Decimal of its scale): Python's own result is another value.
            raise Unanswerable(
                f"Python computes a {type(found).__name__} where the database gives a "
                f"{python_type.__name__} ({expression.type})"
            )
        return found

    return value
