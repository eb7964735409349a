"""What recording needs to know about each mapper, worked out once (the mapper plan).

Recording reads the same facts about a class on every flush: its columns and their
defaults, its key, which relationships it records and from which side, the tables a
change of it can write. :func:`plan_for` computes them once per mapper.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy
from sqlalchemy.orm import ColumnProperty, Mapper
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY
from sqlalchemy.sql import visitors

from orm_ext.references import class_path
from orm_ext.sa_private import reverse_properties
from orm_ext.server_values import FROM_DATABASE, server_defaults

__all__ = ["QUERY_LOADED", "MapperPlan", "new_row_values", "plan_for"]


@dataclass(frozen=True)
class MapperPlan:
    """What recording needs to know about one mapper, computed once."""

    class_path: str
    table: str
    columns: tuple[str, ...]
    scalar_defaults: tuple[tuple[str, Any], ...]
    primary_key: tuple[str, ...]
    relationships: tuple[tuple[str, bool], ...]  # recorded here: (key, is many-to-one)
    collections: tuple[str, ...]  # every writable collection, recorded here or not
    many_to_one_pairs: dict[str, tuple[tuple[str, str], ...]]  # key -> (local, remote attr)
    version: str | None
    tables: tuple[sqlalchemy.Table, ...]
    column_values: Callable[[dict[str, Any]], tuple[Any, ...]]  # in ``columns`` order
    many_to_one: tuple[str, ...]
    related: tuple[str, ...]  # every relationship: what a rollback pins
    secondary: tuple[sqlalchemy.Table, ...] = field(default=())
    # One-to-many collection -> (parent attr, member attr) pairs: the member's foreign key
    # a flush sets from the parent.
    one_to_many_pairs: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Every table a change of such an object can write: its own, link tables, and those
    # of the members of its one-to-many collections.
    written_tables: tuple[sqlalchemy.Table, ...] = field(default=())
    # dynamic and write-only relationships: no collection in the object, only a history.
    query_loaded: frozenset[str] = field(default=frozenset())
    # Collections through a link table (many-to-many).
    link_collections: tuple[str, ...] = field(default=())
    # Python-side defaults a flush computes in the program's process: (key, ColumnDefault).
    callable_defaults: tuple[tuple[str, Any], ...] = field(default=())
    on_update: tuple[tuple[str, Any], ...] = field(default=())
    # Literal server defaults: (key, the value the database stores).
    server_literals: tuple[tuple[str, Any], ...] = field(default=())
    # Columns whose insert value only the database knows (see orm_ext.server_values).
    from_database: frozenset[str] = field(default=frozenset())
    callable_keys: frozenset[str] = field(default=frozenset())
    # Columns the database sets when it updates a row (server_onupdate, or an onupdate
    # SQL expression), unless the update gives them a value.
    updated_by_database: frozenset[str] = field(default=frozenset())
    # Whether a reload of such an object can leave attributes only replay knows: columns
    # of the kinds above, or column_property() expressions (see expression_reads).
    unknowable: bool = False
    # column_property() SQL expressions: read-only attributes the database computes.
    expressions: tuple[ColumnProperty[Any], ...] = field(default=())
    # Each expression's key and the keys of the columns of this mapper it reads; None if
    # it reads any other column (a subquery over another table): only the database can
    # compute it.
    expression_reads: tuple[tuple[str, frozenset[str] | None], ...] = field(default=())


_plans: dict[Mapper[Any], MapperPlan] = {}
# Relationship strategies that hold no collection in the object: what the program added
# or removed is in the attribute's history only.
QUERY_LOADED: Final = frozenset({"dynamic", "write_only"})


def plan_for(mapper: Mapper[Any]) -> MapperPlan:
    """Return the (cached) recording plan of ``mapper``."""
    plan = _plans.get(mapper)
    if plan is None:
        plan = _plans[mapper] = _make_plan(mapper)
    return plan


def _make_plan(mapper: Mapper[Any]) -> MapperPlan:
    columns: list[str] = []
    defaults: list[tuple[str, Any]] = []
    computed: list[tuple[str, Any]] = []
    on_update: list[tuple[str, Any]] = []
    expressions: list[ColumnProperty[Any]] = []
    updated_by_database: list[str] = []
    for prop in mapper.column_attrs:
        if not all(isinstance(c, sqlalchemy.Column) for c in prop.columns):
            expressions.append(prop)  # read-only: nothing to record
            continue
        # Several columns: one attribute written to each (a joined-inheritance key that
        # the subclass table repeats), as a flush writes it.
        columns.append(str(prop.key))
        default = prop.columns[0].default
        if default is not None and getattr(default, "is_scalar", False):
            defaults.append((prop.key, default.arg))
        elif default is not None and getattr(default, "is_callable", False):
            computed.append((prop.key, default))
        update = prop.columns[0].onupdate
        if update is not None and (update.is_scalar or update.is_callable):
            on_update.append((prop.key, update))
        elif prop.columns[0].server_onupdate is not None or (
            update is not None and update.is_clause_element
        ):
            updated_by_database.append(prop.key)
    relationships = []
    pairs: dict[str, tuple[tuple[str, str], ...]] = {}
    for rel in mapper.relationships:
        if rel.viewonly or _recorded_from_other_side(rel):
            continue
        many_to_one = rel.direction is MANYTOONE
        relationships.append((rel.key, many_to_one))
        if many_to_one:
            pairs[rel.key] = tuple(
                (
                    mapper.get_property_by_column(local).key,
                    rel.mapper.get_property_by_column(remote).key,
                )
                for local, remote in rel.local_remote_pairs
            )
    members: dict[str, tuple[tuple[str, str], ...]] = {}
    for rel in mapper.relationships:
        if rel.direction is ONETOMANY and rel.secondary is None and not rel.viewonly:
            members[rel.key] = tuple(
                (
                    mapper.get_property_by_column(local).key,
                    rel.mapper.get_property_by_column(remote).key,
                )
                for local, remote in rel.local_remote_pairs
            )
    tables = tuple(t for t in mapper.tables if isinstance(t, sqlalchemy.Table))
    secondary = tuple(
        r.secondary
        for r in mapper.relationships
        if isinstance(r.secondary, sqlalchemy.Table) and not r.viewonly
    )
    member_tables = tuple(
        t
        for r in mapper.relationships
        if r.key in members
        for t in r.mapper.tables
        if isinstance(t, sqlalchemy.Table)
    )
    database = server_defaults(mapper)
    version = None
    if mapper.version_id_col is not None and mapper.version_id_generator is not False:
        version = mapper.get_property_by_column(mapper.version_id_col).key
    return MapperPlan(
        class_path=class_path(mapper.class_),
        # str(): SQLAlchemy names are quoted_name, a str subclass the codec would not
        # store as plain text.
        table=str(mapper.local_table.description),
        columns=tuple(columns),
        scalar_defaults=tuple(defaults),
        callable_defaults=tuple(computed),
        on_update=tuple(on_update),
        server_literals=database.literals,
        callable_keys=frozenset(k for k, _ in computed),
        from_database=database.from_database,
        primary_key=tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key),
        relationships=tuple(relationships),
        collections=tuple(
            r.key
            for r in mapper.relationships
            if r.uselist and not r.viewonly and r.lazy not in QUERY_LOADED
        ),
        many_to_one_pairs=pairs,
        version=version,
        tables=tables,
        column_values=_tuple_getter(columns),
        many_to_one=tuple(k for k, m2o in relationships if m2o),
        related=tuple(r.key for r in mapper.relationships if r.lazy not in QUERY_LOADED),
        query_loaded=frozenset(r.key for r in mapper.relationships if r.lazy in QUERY_LOADED),
        link_collections=tuple(
            r.key
            for r in mapper.relationships
            if r.uselist
            and not r.viewonly
            and r.lazy not in QUERY_LOADED
            and r.secondary is not None
        ),
        secondary=secondary,
        one_to_many_pairs=members,
        written_tables=tuple(dict.fromkeys((*tables, *secondary, *member_tables))),
        expressions=tuple(expressions),
        updated_by_database=frozenset(updated_by_database),
        unknowable=bool(database.from_database or computed or updated_by_database or expressions),
        expression_reads=tuple((p.key, _columns_read(mapper, p)) for p in expressions),
    )


def _columns_read(mapper: Mapper[Any], prop: ColumnProperty[Any]) -> frozenset[str] | None:
    """The keys of ``mapper``'s columns ``prop``'s expression reads; None if it reads any
    column ``mapper`` does not map."""
    keys = set()
    expression: Any = prop.expression
    for column in visitors.iterate(expression):
        if not isinstance(column, sqlalchemy.Column):
            continue
        try:
            keys.add(mapper.get_property_by_column(column).key)
        except UnmappedColumnError:
            return None
    return frozenset(keys)


def new_row_values(plan: MapperPlan, data: dict[str, Any]) -> tuple[Any, ...]:
    """The column values of an object the block created, in ``plan.columns`` order."""
    try:
        return plan.column_values(data)
    except KeyError:
        # Only what the database sets at replay is ever missing: still unknown.
        return tuple(data.get(k, FROM_DATABASE) for k in plan.columns)


def _tuple_getter(keys: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(keys) == 1:
        key = keys[0]
        return lambda data: (data[key],)
    if not keys:
        return lambda data: ()
    return operator.itemgetter(*keys)


def _recorded_from_other_side(rel: Any) -> bool:
    """Whether the change of ``rel`` is recorded through its reverse relationship instead.

    SQLAlchemy sets the many-to-one side of a one-to-many pair whenever the collection
    changes, so that side alone is recorded.
    """
    reverses = [r for r in reverse_properties(rel) if not r.viewonly]
    if not reverses:
        return False
    # Many-to-many sides are both recorded: a change made through one side shows up in
    # the other's history only if that collection was loaded. Replay adds and removes
    # idempotently, so a change seen from both sides is applied once.
    return rel.direction is ONETOMANY and any(r.direction is MANYTOONE for r in reverses)
