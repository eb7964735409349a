"""Reads inside a deferred block see the block's own writes (SPEC §3.11).

Nothing the block records reaches the database, so a query over a table the block has
written is answered here, as the database would answer it with the journal so far
applied: the rows the database returns, less those the block changed or deleted, plus
the block's own new and changed rows that match, with the criteria evaluated in Python
the way SQLAlchemy's ``synchronize_session="evaluate"`` evaluates them. A query that
cannot be answered that way (a join, an aggregate, a function SQLAlchemy cannot
evaluate, raw SQL) raises :class:`~orm_ext.exc.DeferredOperationError` naming the query
and the table, never a stale answer. Queries over tables the block has not written go to
the database untouched.

The objects the block created or changed are kept alive here until the block ends: they
are the block's rows, and a query must find them even after the program dropped its own
references (the session's identity map holds them weakly).
"""

from __future__ import annotations

import functools
import os
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Select, and_, not_, select, text, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect, IteratorResult, Result
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import ColumnProperty, Mapper, ORMExecuteState, Session, lazyload, undefer
from sqlalchemy.orm.evaluator import UnevaluatableError
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, UnaryExpression
from sqlalchemy.sql.schema import Column, Table
from sqlalchemy.sql.util import find_tables

from orm_ext.exc import DeferredOperationError
from orm_ext.references import Placeholder

__all__ = ["KEPT_ROWS", "BlockReads"]

# How many of its new and changed objects a block keeps alive for its reads once the
# program has dropped them. Beyond it, objects are held weakly, as by a plain session,
# and a query over a table one of them belonged to is refused rather than answered
# without it: recording workers that stream millions of rows keep bounded memory.
KEPT_ROWS = 50_000

Evaluator = Callable[[object], Any]
Restore = Callable[[InstanceState[Any]], None]


class _Unanswerable(Exception):
    """A query over a written table that cannot be answered with the block's writes."""

    def __init__(self, why: str, table: str | None = None) -> None:
        super().__init__(why)
        self.table = table


class BlockReads:
    """What one deferred block has written, and the queries answered from it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        restore: Restore,
        autoflush: Callable[[], None],
        adopt: Callable[[InstanceState[Any], InstanceState[Any]], None],
    ) -> None:
        self.path = path
        self.autoflush = autoflush
        # Carries the journal's marks from an expunged object to its reloaded copy.
        self.adopt = adopt
        # Shows an object's expired attributes as the journal has them (the recorder's
        # snapshots): reloading them from the database would bring back the old row.
        self.restore = restore
        # table name -> batch that first wrote it (by a flush).
        self.tables: dict[str, int] = {}
        # table name -> batch of the first ORM update()/delete()/insert() statement on it:
        # which rows such a statement changes is only known at replay.
        self.statement_tables: dict[str, int] = {}
        # Objects the block created or changed -> (batch that first recorded them, the
        # object): strong, as the block's rows must outlive the program's references to
        # them, for the first ``kept_rows``; then a weak reference (see _lose).
        self.objects: dict[InstanceState[Any], tuple[int, Any]] = {}
        self.kept_rows = KEPT_ROWS
        self.kept = 0
        # Table -> earliest batch of a row written there whose object is gone.
        self.lost: dict[str, int] = {}
        self._weak: dict[weakref.ref[Any], tuple[int, tuple[str, ...]]] = {}
        # Database rows the block changed or deleted: identity class -> key -> batch.
        self.changed: dict[type, dict[tuple[Any, ...], int]] = {}
        # Link table -> identity (class, key) of each row whose links the block changed
        # -> batch; and the classes with rows the block deleted (their links go too).
        self.link_rows: dict[str, dict[tuple[Any, ...], int]] = {}
        self.deleted_classes: dict[type, int] = {}
        self._pattern: re.Pattern[str] | None = None
        self._collation: str | None = None  # the PostgreSQL database's, once asked
        self._read_cache: dict[Any, frozenset[str]] = {}
        # Depth of this module's own database reads, which the SQL check lets through.
        self.reading = 0

    # -- what the block wrote -------------------------------------------------------------

    def note_batch(
        self,
        batch: int,
        tables: Iterable[str],
        written: Iterable[InstanceState[Any]],
        deleted: Iterable[InstanceState[Any]],
    ) -> None:
        """Remember one recorded flush: its tables, new and changed objects, deletions."""
        for name in tables:
            if name not in self.tables:
                self.tables[name] = batch
                self._pattern = None
        objects = self.objects
        for state in written:
            obj = state.obj()
            if obj is not None and state not in objects:
                if self.kept < self.kept_rows:
                    objects[state] = (batch, obj)
                    self.kept += 1
                else:
                    held = weakref.ref(obj, self._lose)
                    self._weak[held] = (batch, _table_names(state))
                    objects[state] = (batch, held)
                self._note_row(state, batch)
        for state in deleted:
            self._forget(state)
            self._note_row(state, batch)
            if state.key is not None:
                self.deleted_classes.setdefault(state.key[0], batch)

    def written_states(self) -> list[InstanceState[Any]]:
        """The states of the live objects the block created or changed."""
        return [s for s, (_, held) in self.objects.items() if s.obj() is not None]

    def _forget(self, state: InstanceState[Any]) -> None:
        entry = self.objects.pop(state, None)
        if entry is None:
            return
        if isinstance(entry[1], weakref.ref):
            self._weak.pop(entry[1], None)
        else:
            self.kept -= 1

    def _lose(self, held: weakref.ref[Any]) -> None:
        """A weakly held row's object is gone: its tables cannot be answered any more."""
        entry = self._weak.pop(held, None)
        if entry is not None:
            batch, tables = entry
            for name in tables:
                self.lost[name] = min(batch, self.lost.get(name, batch))

    def note_links(self, batch: int, table: str, identities: Iterable[Any]) -> None:
        """Remember rows whose links in ``table`` the block changed (identity keys)."""
        rows = self.link_rows.setdefault(table, {})
        for key in identities:
            if key is not None:
                rows.setdefault(tuple(key[:2]), batch)

    def note_statement(self, batch: int, tables: Iterable[str]) -> None:
        """Remember an ORM DML statement recorded against ``tables``."""
        for name in tables:
            self.statement_tables.setdefault(name, batch)
            if name not in self.tables:
                self.tables[name] = batch
                self._pattern = None

    def _note_row(self, state: InstanceState[Any], batch: int) -> None:
        key = state.key
        if key is None or any(isinstance(v, Placeholder) for v in key[1]):
            return  # created in the block: never a database row
        self.changed.setdefault(key[0], {}).setdefault(key[1], batch)

    def rewind(self, batches: int) -> None:
        """Forget what was recorded after batch ``batches`` (a rollback discarded it)."""
        for table in (self.tables, self.statement_tables):
            for name in [n for n, b in table.items() if b > batches]:
                del table[name]
        self._pattern = None
        for state in [s for s, e in self.objects.items() if e[0] > batches]:
            self._forget(state)
        for name in [n for n, b in self.lost.items() if b > batches]:
            del self.lost[name]
        for rows in self.link_rows.values():
            for key in [k for k, b in rows.items() if b > batches]:
                del rows[key]
        for cls in [c for c, b in self.deleted_classes.items() if b > batches]:
            del self.deleted_classes[cls]
        for keys in self.changed.values():
            for key in [k for k, b in keys.items() if b > batches]:
                del keys[key]

    # -- answering queries ----------------------------------------------------------------

    def answer(self, orm_execute_state: ORMExecuteState) -> Result[Any] | None:
        """The result of an ORM SELECT as the block sees it, or None to let it run."""
        if orm_execute_state.load_options._autoflush:
            # The ORM autoflushes only after do_orm_execute listeners have run; what the
            # query must see includes what that flush records.
            self.autoflush()
        if not self.tables:
            return None
        refresh_state = orm_execute_state.load_options._refresh_state
        if refresh_state is not None and refresh_state in self.objects:
            # A refresh, or the load of an expired attribute, of an object the block
            # created or changed: the journal has its row.
            self.restore(refresh_state)
            return _objects_result([refresh_state.obj()])
        statement: Any = orm_execute_state.statement
        if orm_execute_state.is_relationship_load:
            link = _link_relationship(orm_execute_state)
            if link is not None and str(link.secondary.fullname) in self.tables:
                try:
                    return self._link_load(orm_execute_state, link)
                except _Unanswerable as why:
                    raise self._refusal(
                        statement, [str(link.secondary.fullname)], str(why)
                    ) from None
        hit = self._written_tables(statement, orm_execute_state)
        if not hit:
            if not _binds_placeholder(statement, orm_execute_state.parameters):
                return None
            # A key only this journal knows (the collection of an object the block
            # created): answered here, whatever the table.
            hit = sorted(self._names_read(statement))
        try:
            return self._answer(orm_execute_state, statement, hit)
        except _Unanswerable as why:
            tables = hit if why.table is None else [why.table]
            raise self._refusal(statement, tables, str(why)) from None

    def _link_load(self, orm_execute_state: ORMExecuteState, rel: Any) -> Result[Any]:
        """Load a many-to-many collection from the database where the block changed none of
        the links involved (its answer is then the block's too); refuse otherwise."""
        table = str(rel.secondary.fullname)
        changed = self.link_rows.get(table, {})
        lazy_from = orm_execute_state.load_options._lazy_loaded_from
        if lazy_from is not None:
            parents = [lazy_from.key]
        else:
            parameters: Any = orm_execute_state.parameters or {}
            parents = [
                rel.parent.identity_key_from_primary_key(k if isinstance(k, tuple) else (k,))
                for k in parameters.get("primary_keys", ())
            ]
        for key in parents:
            if (
                key is None
                or any(isinstance(v, Placeholder) for v in key[1])
                or tuple(key[:2]) in changed
            ):
                raise _Unanswerable(f"the block changed the links of this object in {table!r}")
        target = rel.mapper.identity_key_from_primary_key((None,) * len(rel.mapper.primary_key))
        if target[0] in self.deleted_classes:
            raise _Unanswerable(
                f"the block deleted {rel.mapper.class_.__name__} rows, whose links go with them"
            )
        lost = [str(t.fullname) for t in rel.mapper.tables if str(t.fullname) in self.lost]
        if lost:
            raise _Unanswerable(f"the program dropped rows the block wrote to {lost[0]!r}")
        self.reading += 1
        try:
            return orm_execute_state.invoke_statement()
        finally:
            self.reading -= 1

    def check_sql(self, statement: str, dialect: Dialect) -> None:
        """Refuse SQL that reads a written table outside an answered ORM query."""
        if self.reading or not self.tables:
            return
        found = self._table_pattern(dialect).search(statement)
        if found is not None:
            name = next(n for n in self.tables if found.group(0).strip('"`[]').lower() in n.lower())
            raise self._refusal(statement, [name], "it is SQL the ORM cannot evaluate")

    def _refusal(self, statement: Any, tables: Sequence[str], why: str) -> DeferredOperationError:
        text = " ".join(str(statement).split())
        if len(text) > 200:
            text = text[:197] + "..."
        return DeferredOperationError(
            f"a query reads table {tables[0]!r}, which this deferred block has written, and "
            f"cannot be answered with the block's writes: {why} (query: {text}). The database "
            "does not have them yet; query the objects the block holds, or run the query "
            "before the block writes that table",
            path=self.path,
        )

    def _table_pattern(self, dialect: Dialect) -> re.Pattern[str]:
        if self._pattern is None:
            quote = dialect.identifier_preparer.quote
            forms = []
            for name in sorted(self.tables):
                table = name.split(".")[-1]
                rendered = quote(table)
                # A name that needs quoting ("order", "user") only ever appears quoted;
                # the bare word is SQL (ORDER BY).
                forms.append(
                    re.escape(rendered) if rendered != table else rf"\b{re.escape(table)}\b"
                )
            self._pattern = re.compile("|".join(forms), re.IGNORECASE)
        return self._pattern

    def _written_tables(self, statement: Any, orm_execute_state: ORMExecuteState) -> list[str]:
        names = self._names_read(statement)
        return sorted(n for n in names if n in self.tables)

    def _names_read(self, statement: Any) -> frozenset[str]:
        """The tables ``statement`` may read, by name; the same for every statement of one
        shape, found by its cache key (which the execution computes and keeps anyway)."""
        key = statement._generate_cache_key()
        if key is None:
            return frozenset(str(t.fullname) for t in _tables_read(statement))
        names = self._read_cache.get(key.key)
        if names is None:
            names = frozenset(str(t.fullname) for t in _tables_read(statement))
            if len(self._read_cache) < 4096:
                self._read_cache[key.key] = names
        return names

    def _answer(
        self, orm_execute_state: ORMExecuteState, statement: Any, hit: list[str]
    ) -> Result[Any]:
        if not isinstance(statement, Select):
            raise _Unanswerable("it is not a SELECT of mapped objects")
        lost = [n for n in hit if n in self.lost]
        if lost:
            raise _Unanswerable(
                f"the program dropped rows the block wrote to {lost[0]!r} after the block "
                f"had kept {self.kept_rows:,} rows alive for its reads; keep references to "
                "the objects, or record fewer rows per block"
            )
        blocked = [n for n in hit if n in self.statement_tables]
        if blocked:
            raise _Unanswerable(
                f"an update()/delete()/insert() statement recorded on {blocked[0]!r} "
                "changes rows only known at replay"
            )
        dialect = orm_execute_state.session.get_bind(
            mapper=orm_execute_state.bind_mapper
        ).dialect.name
        query = _Query.of(statement, orm_execute_state.parameters, dialect)
        mapper = query.mapper
        rows = self._rows_of(mapper, orm_execute_state.session)
        for obj in rows:
            state = sa_inspect(obj)
            if state.expired_attributes or state.unloaded:
                self.restore(state)
        try:
            mine = [obj for obj in rows if query.matches(obj)]
        except TypeError as err:
            # A key the database assigns at replay compared by order, for instance.
            raise _Unanswerable(
                f"its criteria cannot be evaluated on the block's rows: {err}"
            ) from None
        # The block's rows are not loaded by this statement, so its eager loaders do not
        # reach them: their relationships are loaded here instead, lazily.
        _load_eagerly(statement, mapper, mine)
        if query.placeholder_key:
            found = mine  # a key only this journal knows: no database row can match
        else:
            found = self._database_rows(orm_execute_state, statement, query, mapper)
            found.extend(mine)
        return query.result(found, orm_execute_state, self._binary_collation)

    def _binary_collation(self, orm_execute_state: ORMExecuteState) -> bool:
        """Whether the PostgreSQL database sorts text by code point ("C"), as Python does."""
        if self._collation is None:
            self.reading += 1
            try:
                connection = orm_execute_state.session.connection(
                    bind_arguments={"mapper": orm_execute_state.bind_mapper}
                )
                self._collation = str(
                    connection.scalar(
                        text(
                            "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                        )
                    )
                )
            finally:
                self.reading -= 1
        return self._collation.split(".")[0] in ("C", "POSIX")

    def _rows_of(self, mapper: Mapper[Any], session: Session) -> list[object]:
        """The block's live new and changed objects that ``mapper`` loads."""
        cls = mapper.class_
        rows = []
        for state, (batch, held) in list(self.objects.items()):
            obj = held() if isinstance(held, weakref.ref) else held
            if not isinstance(obj, cls) or state.key is None or state.deleted or state.was_deleted:
                continue
            if state.session_id is None:
                # Expunged by the program: the row is still the block's, and a load
                # gives a new object with its values, as a reload from the database
                # holding the journal would.
                obj = self._reattach(session, state, batch, held, obj)
            rows.append(obj)
        return rows

    def _reattach(
        self, session: Session, state: InstanceState[Any], batch: int, held: Any, obj: object
    ) -> object:
        merged = session.merge(obj, load=False)
        merged_state: InstanceState[Any] = sa_inspect(merged)
        del self.objects[state]
        if isinstance(held, weakref.ref):
            entry = self._weak.pop(held, None)
            new_held: Any = weakref.ref(merged, self._lose)
            if entry is not None:
                self._weak[new_held] = entry
        else:
            new_held = merged
        self.objects[merged_state] = (batch, new_held)
        self.adopt(state, merged_state)
        return merged

    def _database_rows(
        self,
        orm_execute_state: ORMExecuteState,
        statement: Select[Any],
        query: _Query,
        mapper: Mapper[Any],
    ) -> list[object]:
        """The database's matching rows, less those the block changed or deleted."""
        primary_key = mapper.primary_key
        identity_class = mapper.identity_key_from_primary_key((None,) * len(primary_key))[0]
        keys = list(self.changed.get(identity_class, {}))
        entity = query.entity_statement(statement)
        # Collections of written tables load lazily, through the block's reads, rather
        # than with the rows of a JOIN from the database alone.
        lazy = [
            lazyload(getattr(mapper.class_, key)) for key in self._joined_written(statement, mapper)
        ]
        if lazy:
            entity = entity.options(*lazy)
        if query.evaluates_rows:
            # Deferred columns the query selects or sorts by: loaded with the rows.
            entity = entity.options(undefer("*"))
        if keys:
            columns = [mapper.get_property_by_column(c).class_attribute for c in primary_key]
            if len(columns) == 1:
                entity = entity.where(columns[0].not_in([k[0] for k in keys]))
            else:
                entity = entity.where(not_(tuple_(*columns).in_(keys)))
        self.reading += 1
        try:
            result = orm_execute_state.invoke_statement(statement=entity)
            found = list(result.unique().scalars())
        finally:
            self.reading -= 1
        # Rows of other identity classes (concrete subclasses loaded through the base)
        # the block changed: left out here too, as the block's objects answer for them.
        changed = self.changed
        return [
            obj
            for obj in found
            if (key := sa_inspect(obj).key) is None or key[1] not in changed.get(key[0], ())
        ]

    def _joined_written(self, statement: Select[Any], mapper: Mapper[Any]) -> list[str]:
        """Relationships of ``mapper`` configured to load with a JOIN that reach a written
        table; a joinedload() option that does is refused (no option can replace it)."""
        written = self.tables
        joined = {rel.key for rel in mapper.relationships if rel.lazy == "joined"}
        for option in statement._with_options:
            for element in getattr(option, "context", ()):
                strategy = dict(getattr(element, "strategy", None) or ())
                path = list(getattr(element, "path", ()))
                if strategy.get("lazy") != "joined" or len(path) < 2:
                    continue
                if len(path) > 3 and any(
                    str(t.fullname) in written
                    for item in path[3:]
                    if isinstance(item, Mapper)
                    for t in item.tables
                ):
                    raise _Unanswerable(
                        "a nested joinedload() reaches a written table; use selectinload()"
                    )
                key = path[1].key
                if key not in mapper.relationships:
                    continue
                reached = [
                    str(t.fullname)
                    for t in _relationship_tables(mapper, key)
                    if str(t.fullname) in written
                ]
                if reached:
                    raise _Unanswerable(
                        f"its joinedload() of {key!r} reads it through a JOIN; use "
                        "selectinload() or a lazy load, which the block answers",
                        reached[0],
                    )
        return sorted(
            key
            for key in joined
            if key in mapper.relationships
            and any(str(t.fullname) in written for t in _relationship_tables(mapper, key))
        )


_EAGER: Final = frozenset({"selectin", "joined", "subquery", "immediate"})


def _load_eagerly(statement: Select[Any], mapper: Mapper[Any], objects: list[object]) -> None:
    """Load the relationships ``statement`` loads eagerly on ``objects`` (first level)."""
    keys = {rel.key for rel in mapper.relationships if rel.lazy in _EAGER}
    for option in statement._with_options:
        for element in getattr(option, "context", ()):
            strategy = dict(getattr(element, "strategy", None) or ())
            path = list(getattr(element, "path", ()))
            if strategy.get("lazy") in _EAGER and len(path) >= 2:
                key = getattr(path[1], "key", None)
                if isinstance(key, str) and key in mapper.relationships:
                    keys.add(key)
    for obj in objects:
        state: InstanceState[Any] = sa_inspect(obj)
        for key in keys:
            if key in state.mapper.relationships and key not in state.dict:
                getattr(obj, key)


def _relationship_tables(mapper: Mapper[Any], key: str) -> list[Any]:
    rel = mapper.relationships[key]
    tables = [t for t in rel.mapper.tables if isinstance(t, Table)]
    if isinstance(rel.secondary, Table):
        tables.append(rel.secondary)
    return tables


class _Query:
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
    def of(cls, statement: Select[Any], parameters: Any, dialect: str) -> _Query:
        descriptions = statement.column_descriptions
        entities = {d.get("entity") for d in descriptions} - {None}
        if len(entities) != 1:
            raise _Unanswerable(
                "it selects no mapped class (an aggregate, a function or a bare column)"
                if not entities
                else "it selects from more than one mapped class"
            )
        entity = next(iter(entities))
        inspected = sa_inspect(entity)
        mapper: Mapper[Any] = inspected.mapper
        # Private parts of Select: there is no public way to ask a statement for its joins,
        # grouping or fetch clause. Checked on SQLAlchemy 2.0.x and 2.1.9.
        own = {*mapper.tables, inspected.selectable}
        if statement._setup_joins or any(f not in own for f in statement._from_obj):
            raise _Unanswerable("it joins or selects from other tables")
        if statement._group_by_clauses or statement._having_criteria:
            raise _Unanswerable("it groups rows (GROUP BY / HAVING)")
        if statement._fetch_clause is not None:
            raise _Unanswerable("it has a FETCH clause")

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
                raise _Unanswerable(f"its column {description['name']!r}: {err}") from None
        where = statement.whereclause
        criteria = _loader_criteria(statement, mapper)
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
                raise _Unanswerable(f"its WHERE clause: {err}") from None
        order = []
        for clause in statement._order_by_clauses:
            order.append(_order_term(compiler, mapper, clause))
        return cls(
            mapper,
            columns,
            evaluate,
            order,
            _as_int(statement._limit_clause, "LIMIT"),
            _as_int(statement._offset_clause, "OFFSET"),
            bool(statement._distinct),
            placeholder_key,
        )

    @property
    def evaluates_rows(self) -> bool:
        """Whether database rows are evaluated here too (projected or sorted)."""
        return bool(self.order) or any(e is not None for _, e in self.columns)

    def matches(self, obj: object) -> bool:
        return self.where is None or self.where(obj) is True

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
                raise _Unanswerable(
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
                    raise _Unanswerable(
                        f"its ORDER BY compares values of the block's rows with the "
                        f"database's that Python cannot order ({err})"
                    ) from None
        start = self.offset or 0
        rows = rows[start : None if self.limit is None else start + self.limit]
        if all(evaluate is None for _, evaluate in self.columns) and len(self.columns) == 1:
            return _objects_result(rows)
        values = [
            tuple(obj if evaluate is None else evaluate(obj) for _, evaluate in self.columns)
            for obj in rows
        ]
        if self.distinct:
            values = list(dict.fromkeys(values))
        return IteratorResult(SimpleResultMetaData([n for n, _ in self.columns]), iter(values))


def _link_relationship(orm_execute_state: ORMExecuteState) -> Any:
    """The many-to-many relationship a relationship load is loading, if it is one."""
    registry: Any = orm_execute_state.loader_strategy_path
    path: list[Any] = list(registry or ())
    rel = path[-1] if path else None
    secondary = getattr(rel, "secondary", None)
    return rel if isinstance(secondary, Table) else None


def _table_names(state: InstanceState[Any]) -> tuple[str, ...]:
    return tuple(str(t.fullname) for t in state.mapper.tables if isinstance(t, Table))


def _objects_result(objects: Sequence[object]) -> Result[Any]:
    """A result of whole objects, as the ORM returns for a single-entity SELECT."""
    name = type(objects[0]).__name__ if objects else "entity"
    result: IteratorResult[Any] = IteratorResult(
        SimpleResultMetaData([name]), iter(objects), _source_supports_scalars=True
    )
    # What legacy Query reads to return objects rather than rows (loading.instances).
    result._attributes = result._attributes.union({"filtered": True, "is_single_entity": True})
    return result


def _unique(objects: list[object]) -> list[object]:
    seen: set[int] = set()
    kept = []
    for obj in objects:
        if id(obj) not in seen:
            seen.add(id(obj))
            kept.append(obj)
    return kept


def _sort_key(evaluate: Evaluator, null_rank: int, fold: bool, obj: object) -> tuple[int, int, Any]:
    value = evaluate(obj)
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
        raise _Unanswerable(f"its ORDER BY: {err}") from None
    return evaluate, descending, nulls_first, collation


def _as_int(clause: Any, what: str) -> int | None:
    if clause is None:
        return None
    value = getattr(clause, "value", None)
    if isinstance(value, int):
        return value
    raise _Unanswerable(f"its {what} is not a plain number")


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
            raise _Unanswerable(
                "its criteria compare a key only this journal knows in a way that needs the "
                "database's rows too"
            )
    return False


def _loader_criteria(statement: Select[Any], mapper: Mapper[Any]) -> list[Any]:
    """The criteria ``with_loader_criteria()`` options add for ``mapper``'s rows.

    Private: LoaderCriteriaOption._all_mappers() and _resolve_where_criteria() are what
    the ORM uses to add the criteria when it compiles the query; there is no public way
    to ask an option for them. Checked on SQLAlchemy 2.1.9.
    """
    found = []
    for option in statement._with_options:
        if isinstance(option, LoaderCriteriaOption) and mapper in set(option._all_mappers()):
            found.append(option._resolve_where_criteria(sa_inspect(mapper)))
    return found


def _with_values(clause: Any, parameters: Mapping[str, Any]) -> Any:
    """``clause`` with the values given at execution (a lazy load's) in its parameters."""

    def bind(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in parameters:
            bound: Any = element
            return bound._with_value(parameters[element.key], maintain_key=True)
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
            and "parentmapper" not in element._annotations
        ):
            return element._annotate({"parentmapper": mapper})
        return None

    traverse: Any = visitors.replacement_traverse
    return traverse(clause, {}, mark)


def _binds_placeholder(statement: Any, parameters: Any) -> bool:
    """Whether executing ``statement`` would send a placeholder key to the database."""
    rows = parameters if isinstance(parameters, list) else [parameters or {}]
    if any(_holds_placeholder(v) for row in rows for v in row.values()):
        return True
    # The statement's cache key lists its bound parameters (computed once per statement
    # and kept: the execution needs it too); walking the statement would find the same.
    key = statement._generate_cache_key()
    binds = key.bindparams if key is not None else visitors.iterate(statement)
    return any(
        isinstance(node, BindParameter) and _holds_placeholder(node.effective_value)
        for node in binds
    )


def _holds_placeholder(value: Any) -> bool:
    if isinstance(value, Placeholder):
        return True
    return isinstance(value, list | tuple) and any(isinstance(v, Placeholder) for v in value)


def _tables_read(statement: Any) -> set[Any]:
    """Every table a statement may read, including what its entities load eagerly."""
    tables = set(find_tables(statement, include_joins=True, include_aliases=True))
    for description in getattr(statement, "column_descriptions", ()):
        entity = description.get("entity")
        if entity is None:
            continue
        mapper = sa_inspect(entity).mapper
        for sub in mapper.self_and_descendants:
            tables.update(sub.tables)
            for rel in sub.relationships:
                if rel.lazy == "joined":
                    tables.update(rel.mapper.tables)
                    if rel.secondary is not None:
                        tables.update(find_tables(rel.secondary))
    for option in getattr(statement, "_with_options", ()):
        # A joinedload() reads the tables along its path in this very statement; other
        # loader options (selectinload, and those a lazy load inherits from the query
        # that loaded its parent) run statements of their own.
        for element in getattr(option, "context", ()):
            if dict(getattr(element, "strategy", None) or ()).get("lazy") != "joined":
                continue
            for item in getattr(element, "path", ()):
                mapper = getattr(item, "mapper", None)
                if isinstance(mapper, Mapper):
                    tables.update(mapper.tables)
    # Joins and aliases are found with their tables; only the tables name what was written.
    return {t for t in tables if isinstance(t, Table)}


def _evaluator_compiler(mapper: Mapper[Any], loaded: set[Mapper[Any]], dialect: str) -> Any:
    # Private: _EvaluatorCompiler is what Query.update(synchronize_session="evaluate")
    # uses to evaluate criteria on objects; SPEC §3.11 asks for exactly its semantics and
    # there is no public equivalent. Checked on SQLAlchemy 2.0.x and 2.1.9.
    from sqlalchemy.orm import evaluator

    base: Any = evaluator._EvaluatorCompiler

    class Compiler(base):  # type: ignore[misc]
        """The ORM's evaluator, plus LIKE as the dialect matches it, and the columns of
        subclasses the query loads (NULL for rows of other classes, as SQL gives)."""

        def visit_column(self, clause: Any) -> Any:
            parent = clause._annotations.get("parentmapper")
            if parent is None or parent is mapper or not parent.isa(mapper):
                return _attribute(clause, parent) or super().visit_column(clause)
            if parent not in loaded:
                raise UnevaluatableError(
                    f"{clause} belongs to {parent.class_.__name__}, which the query does "
                    "not load with its entity"
                )
            value = _attribute(clause, parent) or base(parent.class_).visit_column(clause)
            cls = parent.class_
            return lambda obj: value(obj) if isinstance(obj, cls) else None

        def _like(self, clause: Any, left: Any, right: Any, *, fold: bool, negate: bool) -> Any:
            escape = clause.modifiers.get("escape")

            def matches(value: str, pattern: str) -> bool:
                return _like_regex(pattern, escape, fold).fullmatch(value) is not None

            compare = (lambda a, b: not matches(a, b)) if negate else matches
            return self._straight_evaluate(compare, left, right, clause)

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


def _attribute(clause: Any, parent: Mapper[Any] | None) -> Evaluator | None:
    """The value of the attribute an aliased entity's column stands for (with_polymorphic
    and aliased() select from anonymous aliases of the tables, which the mapper does not
    map itself), or None for a column the evaluator can take as it is."""
    key = clause._annotations.get("proxy_key")
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
