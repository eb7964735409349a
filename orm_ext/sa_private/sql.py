"""The private SQLAlchemy API orm-journal uses on statements, compilers and results.

The statement side of :mod:`orm_ext.sa_private` (:mod:`.orm` holds the session, state
and mapper side): the parts of a statement SQLAlchemy keeps no public accessor for, the
ORM's own evaluation and synchronization of update() and delete(), and the compiler's
plan for an executemany INSERT. Each function says what it reaches into and the version
it was checked on. A new SQLAlchemy release is checked by reading this module against
its source (and by the test suite, which covers every use).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper, ORMExecuteState, evaluator
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.sql.elements import _label_reference, _textual_label_reference

# -- statements ------------------------------------------------------------------------------


class SelectClauses(NamedTuple):
    """The parts of a ``Select`` it keeps no public accessor for."""

    columns: Sequence[Any]
    joins: Sequence[Any]
    froms: Sequence[Any]
    group_by: Sequence[Any]
    having: Sequence[Any]
    order_by: Sequence[Any]
    limit: Any
    offset: Any
    fetch: Any
    distinct: bool
    options: Sequence[Any]


def select_clauses(statement: Any) -> SelectClauses:
    """The parts of the SELECT ``statement``: what it selects, joins, groups, orders and
    slices, and its options.

    ``Select._raw_columns``, ``_setup_joins``, ``_from_obj``, ``_group_by_clauses``,
    ``_having_criteria``, ``_order_by_clauses``, ``_limit_clause``, ``_offset_clause``,
    ``_fetch_clause``, ``_distinct`` and ``_with_options``: there is no public way to ask
    a statement for its joins, grouping or fetch clause. Checked on SQLAlchemy 2.0.x and
    2.1.9.
    """
    return SelectClauses(
        statement._raw_columns,
        statement._setup_joins,
        statement._from_obj,
        statement._group_by_clauses,
        statement._having_criteria,
        statement._order_by_clauses,
        statement._limit_clause,
        statement._offset_clause,
        statement._fetch_clause,
        bool(statement._distinct),
        statement._with_options,
    )


def locks_rows(statement: Any) -> bool:
    """Whether ``statement`` locks the rows it reads (``with_for_update()``).

    ``GenerativeSelect._for_update_arg``: there is no public way to ask. Checked on
    SQLAlchemy 2.1.9.
    """
    return getattr(statement, "_for_update_arg", None) is not None


def loader_criteria(statement: Any, mapper: Mapper[Any]) -> list[Any]:
    """The criteria the ``with_loader_criteria()`` options of ``statement`` add for
    ``mapper``'s rows.

    ``Select._with_options``, ``LoaderCriteriaOption._all_mappers()`` and
    ``_resolve_where_criteria()``: what the ORM uses to add the criteria when it compiles
    the query; there is no public way to ask an option for them. Checked on SQLAlchemy
    2.1.9.
    """
    found = []
    for option in statement._with_options:
        if isinstance(option, LoaderCriteriaOption) and mapper in set(option._all_mappers()):
            found.append(option._resolve_where_criteria(sa_inspect(mapper)))
    return found


def with_value(bind: Any, value: Any) -> Any:
    """A copy of the bound parameter ``bind`` holding ``value``, under the same key.

    ``BindParameter._with_value(maintain_key=True)``: how the ORM rebinds a cached
    statement's parameters; the public ``bindparam()`` would make a new key. Checked on
    SQLAlchemy 2.1.9.
    """
    return bind._with_value(value, maintain_key=True)


def annotations_of(element: Any) -> Mapping[str, Any]:
    """The ORM's annotations on a SQL element (``parentmapper``, ``proxy_key``, ...).

    ``SupportsAnnotations._annotations``: what the ORM's own evaluator reads to tell the
    attribute a column stands for. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    found: Mapping[str, Any] = element._annotations
    return found


def annotated(element: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``element`` carrying ``values`` among its annotations.

    ``SupportsAnnotations._annotate``: how the ORM marks a table column as a mapped
    attribute's. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    return element._annotate(values)


def statement_cache_key(statement: Any) -> Any:
    """The cache key of ``statement`` (None if it cannot be cached).

    ``HasCacheKey._generate_cache_key()``: the key the compiled cache uses, memoized on
    the statement, so that its execution does not compute it again; there is no public
    accessor. Checked on SQLAlchemy 2.1.9.
    """
    return statement._generate_cache_key()


LABEL_REFERENCE: Final[type[Any]] = _label_reference
"""``sqlalchemy.sql.elements._label_reference``: an ORDER BY term naming a selected
column's label. Checked on SQLAlchemy 2.1.9."""

TEXTUAL_LABEL_REFERENCE: Final[type[Any]] = _textual_label_reference
"""``sqlalchemy.sql.elements._textual_label_reference``: an ORDER BY term given as a
string, the label's name. Checked on SQLAlchemy 2.1.9."""


def result_columns(compiled: Any) -> Sequence[Any]:
    """The columns ``compiled`` returns, in order, each with its key name and the objects
    that name it (``keyname``, ``objects``).

    ``SQLCompiler._result_columns``: what a cursor result's metadata is built from; there
    is no public accessor. Checked on SQLAlchemy 2.1.9.
    """
    found: Sequence[Any] = compiled._result_columns
    return found


def compiled_core_statement(compiled: Any, statement: Any) -> Any:
    """The Core statement ``compiled`` was compiled from: for an ORM ``statement``, the
    one the ORM turned it into; ``statement`` itself where there is none.

    ``SQLCompiler.compile_state.statement``: there is no public way to see what the ORM
    compiles. Checked on SQLAlchemy 2.1.9.
    """
    return compiled.compile_state.statement if compiled.compile_state else statement


# -- the ORM's update() and delete() ---------------------------------------------------------


def dml_returns(statement: Any) -> bool:
    """Whether the DML ``statement`` has a RETURNING clause.

    ``UpdateBase._returning``: there is no public accessor. Checked on SQLAlchemy 2.0.x
    and 2.1.9.
    """
    return bool(getattr(statement, "_returning", ()))


def dml_extra_clauses(statement: Any) -> list[Any]:
    """The dialect-specific clauses, prefixes and hints of the DML ``statement`` (empty
    or None each where it has none).

    ``ValuesBase._post_values_clause`` (ON CONFLICT, ON DUPLICATE KEY), ``_prefixes``,
    ``_hints``, ``_statement_hints`` and the dialect options' ``_non_defaults``: there is
    no public way to ask a statement for its extra clauses. Checked on SQLAlchemy 2.0.x
    and 2.1.9.
    """
    return [
        getattr(statement, "_post_values_clause", None),
        getattr(statement, "_prefixes", None),
        getattr(statement, "_hints", None),
        getattr(statement, "_statement_hints", None),
        *(statement.dialect_options[d]._non_defaults for d in statement.dialect_options),
    ]


def dml_values(statement: Any) -> tuple[Any, Any, Mapping[Any, Any]]:
    """What ``.values()`` was given on the DML ``statement``: its multi-row lists, its
    ``ordered_values()`` and its single row of values (empty where none).

    ``ValuesBase._multi_values``, ``_ordered_values`` and ``_values``: there is no public
    accessor. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    return (
        getattr(statement, "_multi_values", ()),
        getattr(statement, "_ordered_values", None),
        getattr(statement, "_values", None) or {},
    )


# The ORM's bulk UPDATE/DELETE compile state classes (_BulkORMUpdate, _BulkORMDelete) hold
# the steps a session runs to synchronize its objects after an ORM update() or delete();
# the execute state keeps the class chosen for its statement. Nothing public runs them.


def synchronize_session_mode(state: ORMExecuteState) -> Any:
    """The statement's ``synchronize_session`` as the ORM resolved it ("auto",
    "evaluate", "fetch" or False).

    ``update_delete_options._synchronize_session``: the execution option is merged into
    the options, which keep no public field. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    options: Any = state.update_delete_options
    return options._synchronize_session


def is_bulk_by_primary_key(state: ORMExecuteState) -> bool:
    """Whether the statement is an executemany update()/delete() by primary key.

    ``update_delete_options._dml_strategy == "bulk"``: the strategy the ORM chose, which
    it shows no other way. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    options: Any = state.update_delete_options
    return bool(options._dml_strategy == "bulk")


def synchronize_bulk_update(state: ORMExecuteState) -> None:
    """Bring the loaded objects in line with an executemany update() by primary key, as
    the ORM does after executing it.

    ``ORMExecuteState._compile_state_cls._do_post_synchronize_bulk_evaluate``. Checked on
    SQLAlchemy 2.0.x and 2.1.9.
    """
    compile_state: Any = state._compile_state_cls
    rows: Any = state.parameters
    compile_state._do_post_synchronize_bulk_evaluate(
        state.session, rows, None, state.update_delete_options
    )


def evaluated_options(state: ORMExecuteState) -> Any:
    """The statement's update/delete options with its criteria compiled for evaluation
    on objects in Python, as the ORM's ``synchronize_session="evaluate"`` compiles them.

    ``ORMExecuteState._compile_state_cls._do_pre_synchronize_evaluate``. Checked on
    SQLAlchemy 2.0.x and 2.1.9.

    :raises sqlalchemy.exc.InvalidRequestError: the criteria cannot be evaluated in
        Python.
    """
    compile_state: Any = state._compile_state_cls
    return compile_state._do_pre_synchronize_evaluate(
        state.session,
        state.statement,
        state.parameters,
        state.execution_options,
        {},
        state.update_delete_options,
    )


def synchronize_evaluated_delete(state: ORMExecuteState, options: Any) -> None:
    """Take the loaded objects a delete() matches out of the session, as the ORM does
    after executing it; ``options`` from :func:`evaluated_options`.

    ``ORMExecuteState._compile_state_cls._do_post_synchronize_evaluate``. Checked on
    SQLAlchemy 2.0.x and 2.1.9.
    """
    compile_state: Any = state._compile_state_cls
    compile_state._do_post_synchronize_evaluate(state.session, state.statement, None, options)


def subject_mapper(options: Any) -> Mapper[Any]:
    """The mapper the update()/delete() with ``options`` targets.

    ``update_delete_options._subject_mapper``: for a statement on an aliased class or a
    subclass, the one whose objects it matches. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    mapper: Mapper[Any] = options._subject_mapper
    return mapper


def criteria_matcher(
    state: ORMExecuteState, options: Any
) -> Callable[[Iterable[InstanceState[Any]]], list[tuple[Any, InstanceState[Any], Any, bool]]]:
    """The function giving the states the criteria match, each as (object, state,
    dictionary, partly expired); ``options`` from :func:`evaluated_options`.

    ``ORMExecuteState._compile_state_cls._get_matched_objects_on_criteria``. A partial,
    not a wrapper: it is called once per reloaded object, and adds no Python call to the
    ORM's own. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    compile_state: Any = state._compile_state_cls
    return functools.partial(compile_state._get_matched_objects_on_criteria, options)


def values_applier(state: ORMExecuteState, options: Any) -> Callable[[Any, Any, Any], None]:
    """The function setting an update()'s values on matched (object, state, dictionary)
    triples, called with them, the columns to prefetch and those to expire; ``options``
    from :func:`evaluated_options`.

    ``ORMExecuteState._compile_state_cls._apply_update_set_values_to_objects``. A
    partial, not a wrapper: it is called once per reloaded object, and adds no Python
    call to the ORM's own. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    compile_state: Any = state._compile_state_cls
    return functools.partial(
        compile_state._apply_update_set_values_to_objects,
        state.session,
        options,
        state.statement,
        {},
    )


# -- evaluation in Python --------------------------------------------------------------------

EXPIRED_OBJECT: Final[Any] = evaluator._EXPIRED_OBJECT
"""``sqlalchemy.orm.evaluator._EXPIRED_OBJECT``: what the evaluator returns for an
attribute not loaded on an object (the ORM's ``synchronize_session="evaluate"`` expires
such objects). Checked on SQLAlchemy 2.0.x and 2.1.9."""

_EvaluatorBase: Any = evaluator._EvaluatorCompiler


class EvaluatorCompiler(_EvaluatorBase):  # type: ignore[misc]
    """The ORM's evaluator of criteria on objects in Python, to subclass.

    ``sqlalchemy.orm.evaluator._EvaluatorCompiler``: what
    ``Query.update(synchronize_session="evaluate")`` uses; SPEC §3.11 asks for exactly its
    semantics and there is no public equivalent. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """

    def straight_evaluate(self, operator: Any, left: Any, right: Any, clause: Any) -> Any:
        """The evaluation of a binary ``operator``, None if either side is None.

        ``_EvaluatorCompiler._straight_evaluate``: how the evaluator applies the
        operators it knows. Checked on SQLAlchemy 2.0.x and 2.1.9.
        """
        return self._straight_evaluate(operator, left, right, clause)


# -- the compiler's executemany INSERT ------------------------------------------------------
# SQLAlchemy's own compilation of an INSERT decides its columns, their casts, bind
# processors and scalar defaults, and whether it would sort returned keys (an autoincrement
# "implicit sentinel"); the compiler shows none of it publicly.


def insertmanyvalues(compiled: Any) -> Any:
    """The plan of the compiled INSERT ``compiled`` for "insertmanyvalues" (its columns
    with their bind parameters, its sentinel columns), or None.

    ``SQLCompiler._insertmanyvalues``. Checked on SQLAlchemy 2.1.9.
    """
    return compiled._insertmanyvalues


def dialect_impl(type_: Any, dialect: Dialect) -> Any:
    """The type ``dialect`` uses for ``type_``, with any ``TypeDecorator`` unwrapped.

    ``TypeEngine._unwrapped_dialect_impl``. Checked on SQLAlchemy 2.1.9.
    """
    return type_._unwrapped_dialect_impl(dialect)


def scalar_default(column: Any) -> tuple[Any, bool]:
    """The Python-side default of ``column`` and whether it is a plain value.

    ``Column._default_description_tuple``. Checked on SQLAlchemy 2.1.9.
    """
    arg, is_scalar, _, _ = column._default_description_tuple
    return arg, bool(is_scalar)


def bind_processor(compiled: Any, bind: Any) -> Any:
    """The function that turns a value for the bound parameter ``bind`` of ``compiled``
    into the driver's, or None.

    ``SQLCompiler._bind_processors``. Checked on SQLAlchemy 2.1.9.
    """
    return compiled._bind_processors.get(bind)


def has_result_processor(type_: Any, dialect: Dialect) -> bool:
    """Whether ``dialect`` processes the values of ``type_`` it returns.

    ``TypeEngine._cached_result_processor``. Checked on SQLAlchemy 2.1.9.
    """
    return type_._cached_result_processor(dialect, None) is not None


def only_load_props(statement: Any) -> Any:
    """The attributes a load of expired or deferred attributes asks for (None: all).

    ``compile_options._only_load_props``: what ``load_scalar_attributes`` sets on the
    SELECT it runs; nothing public shows it to a ``do_orm_execute`` listener. Checked on
    SQLAlchemy 2.1.9.
    """
    return statement._compile_options._only_load_props


def statement_options(statement: Any) -> Sequence[Any]:
    """The loader options given to ``statement`` (``Select._with_options``). Checked on
    SQLAlchemy 2.0.x and 2.1.9."""
    options: Sequence[Any] = statement._with_options
    return options


def type_affinity(type_: Any) -> Any:
    """The generic type class ``type_`` behaves as (``TypeEngine._type_affinity``), the
    check the ORM's evaluator makes before it applies an operator. Checked on SQLAlchemy
    2.1.9."""
    return type_._type_affinity
