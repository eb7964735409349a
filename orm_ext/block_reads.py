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

import os
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Select, not_, text, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, lazyload, undefer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.schema import Column, Table
from sqlalchemy.sql.util import find_tables

from orm_ext.block_inserted import InsertedRows
from orm_ext.block_links import LinkEvent, LinkRows
from orm_ext.block_overlay import Overlay, without_strings
from orm_ext.block_query import (
    Evaluator,
    Query,
    Unanswerable,
    binds_placeholder,
    expression_evaluator,
    objects_result,
)
from orm_ext.dml import RowEffect
from orm_ext.exc import DeferredOperationError
from orm_ext.mapper_plan import plan_for
from orm_ext.object_history import REF, STALE
from orm_ext.references import Placeholder
from orm_ext.sa_private import (
    existing_info,
    load_flags,
    mark_loaded,
    only_load_props,
    statement_cache_key,
    statement_options,
)

__all__ = ["KEPT_ROWS", "BlockReads"]

# How many of its new and changed objects a block keeps alive for its reads once the
# program has dropped them. Beyond it, objects are held weakly, as by a plain session,
# and a query over a table one of them belonged to is refused rather than answered
# without it: recording workers that stream millions of rows keep bounded memory.
KEPT_ROWS = 20_000

# Shows an object's expired attributes as the journal has them; returns the batch its
# values are as of (0: the database's row).
Restore = Callable[[InstanceState[Any]], int]

# Key in InstanceState.info: the journal ref an object the block created was noted with.
_NOTED_REF: Final = "orm_journal.noted_ref"


class BlockReads:
    """What one deferred block has written, and the queries answered from it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        restore: Restore,
        snapshot_batch: Callable[[InstanceState[Any]], int],
        flushed: Callable[[InstanceState[Any]], Mapping[str, Any]],
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
        # An object's column values as of its last recorded flush (see Overlay), and
        # that flush's batch (0: none).
        self.flushed = flushed
        self.snapshot_batch = snapshot_batch
        # table name -> batch that first wrote it (by a flush).
        self.tables: dict[str, int] = {}
        # table name -> batch of the first ORM update()/delete()/insert() statement on it:
        # which rows such a statement changes is only known at replay.
        self.statement_tables: dict[str, int] = {}
        # The update()/delete() statements, in order: (batch, tables, what each does to
        # a row), applied to an object reloaded after them.
        self.statements: list[tuple[int, frozenset[str], RowEffect]] = []
        # Rows ORM insert() statements added, in the order recorded.
        self.inserted: list[InsertedRows] = []
        # Objects the block created or changed -> (batch that first recorded them, the
        # object): strong, as the block's rows must outlive the program's references to
        # them, for the first ``kept_rows``; then a weak reference (see _lose).
        self.objects: dict[InstanceState[Any], tuple[int, Any]] = {}
        self.kept_rows = KEPT_ROWS
        self.kept = 0
        # Table -> earliest batch of a row written there whose object is gone.
        self.lost: dict[str, int] = {}
        # Table -> first batch after which a row the block inserted there has no object
        # (its object was made transient and became another row).
        self.orphaned: dict[str, int] = {}
        self._weak: dict[weakref.ref[Any], tuple[int, tuple[str, ...], InstanceState[Any]]] = {}
        # States of weakly held objects that are gone, to leave ``objects`` at the next
        # flush (not from the weak reference's callback, which may run while a read
        # iterates ``objects``): a state outlives its object while a dict holds it.
        self._dead: list[InstanceState[Any]] = []
        # Database rows the block changed or deleted: identity class -> key -> batch.
        self.changed: dict[type, dict[tuple[Any, ...], int]] = {}
        # Link table -> identity (class, key) of each row whose links the block changed
        # -> batch; and the classes with rows the block deleted (their links go too).
        self.link_rows: dict[str, dict[tuple[Any, ...], int]] = {}
        # The link rows themselves, as the block's flushes added and removed them.
        self.links = LinkRows()
        self.deleted_classes: dict[type, int] = {}
        self._pattern: re.Pattern[str] | None = None
        self._collation: str | None = None  # the PostgreSQL database's, once asked
        self._read_cache: dict[Any, frozenset[str]] = {}
        # (mapper, column_property key, dialect) -> its evaluator, or why there is none.
        self._expressions: dict[tuple[Mapper[Any], str, str], Evaluator | Unanswerable] = {}
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
        self._bury()
        # Once per object of every flush: names bound outside the loop.
        objects, weak, lose, note_key = self.objects, self._weak, self._lose, self._note_key
        for state in written:
            note_key(state, batch)
            if state in objects:
                continue
            obj = state.obj()
            if obj is None:
                continue
            if self.kept < self.kept_rows:
                objects[state] = (batch, obj)
                self.kept += 1
            else:
                held = weakref.ref(obj, lose)
                weak[held] = (batch, _table_names(state), state)
                objects[state] = (batch, held)
            self._note_row(state, batch)
        for state in deleted:
            self._forget(state)
            self._note_row(state, batch)
            if state.key is not None:
                self.deleted_classes.setdefault(state.key[0], batch)

    def close(self) -> None:
        """Let go of every object: the block is over.

        The weak references' callbacks hold this object (a cycle the garbage collector
        would have to find); dropping the references here means none of them fires for
        the objects that leaving the block frees.
        """
        self._weak.clear()
        self.objects.clear()
        self._dead.clear()

    def _bury(self) -> None:
        """Let go of the states of weakly held objects that are gone."""
        if self._dead:
            objects = self.objects
            for state in self._dead:
                entry = objects.get(state)
                if entry is not None and isinstance(entry[1], weakref.ref):
                    del objects[state]
            self._dead.clear()

    def _note_key(self, state: InstanceState[Any], batch: int) -> None:
        """Notice an object the block created that now stands for another row.

        ``make_transient()`` turns a recorded object into a new row (the versioned-rows
        pattern): its first row stays in the journal with no object left to show it, so
        its tables cannot be answered from the block's objects any more.
        """
        info = existing_info(state)  # no info dictionary for every changed database row
        ref = None if info is None else info.get(REF)
        if info is None or ref is None:
            return  # a database row, not one the block created
        before = info.get(_NOTED_REF)
        if before is not None and before != ref:
            for name in _table_names(state):
                self.orphaned.setdefault(name, batch)
        info[_NOTED_REF] = ref

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
            batch, tables, state = entry
            for name in tables:
                self.lost[name] = min(batch, self.lost.get(name, batch))
            self._dead.append(state)

    def note_links(self, batch: int, table: str, identities: Iterable[Any]) -> None:
        """Remember rows whose links in ``table`` the block changed (identity keys)."""
        rows = self.link_rows.setdefault(table, {})
        for key in identities:
            if key is not None:
                rows.setdefault(tuple(key[:2]), batch)

    def note_link_rows(self, batch: int, events: Iterable[LinkEvent]) -> None:
        """Remember the link rows one recorded flush added and removed."""
        self.links.note(batch, events)

    def note_statement(
        self, batch: int, tables: Iterable[str], effect: RowEffect | None = None
    ) -> None:
        """Remember an ORM DML statement recorded against ``tables``.

        ``effect`` (an update() or delete()) is applied to the rows of ``tables`` loaded
        after it, as the database would have them once it ran.
        """
        tables = list(tables)
        if effect is not None:
            self.statements.append((batch, frozenset(tables), effect))
        for name in tables:
            self.statement_tables.setdefault(name, batch)
            if name not in self.tables:
                self.tables[name] = batch
                self._pattern = None

    def note_inserted(
        self, batch: int, mapper: Mapper[Any], tables: Iterable[str], rows: list[dict[str, Any]]
    ) -> None:
        """Remember the rows an ORM insert() statement recorded into ``tables``."""
        self.inserted.append(InsertedRows(batch, mapper, rows))
        for name in tables:
            if name not in self.tables:
                self.tables[name] = batch
                self._pattern = None

    def _note_row(self, state: InstanceState[Any], batch: int) -> None:
        key = state.key
        if key is None:
            return
        for value in key[1]:
            if isinstance(value, Placeholder):
                return  # created in the block: never a database row
        self.changed.setdefault(key[0], {}).setdefault(key[1], batch)

    def rewind(self, batches: int) -> None:
        """Forget what was recorded after batch ``batches`` (a rollback discarded it)."""
        for table in (self.tables, self.statement_tables):
            for name in [n for n, b in table.items() if b > batches]:
                del table[name]
        self._pattern = None
        self.inserted = [entry for entry in self.inserted if entry.batch <= batches]
        self.statements = [entry for entry in self.statements if entry[0] <= batches]
        for state in [s for s, e in self.objects.items() if e[0] > batches]:
            self._forget(state)
        for name in [n for n, b in self.lost.items() if b > batches]:
            del self.lost[name]
        for name in [n for n, b in self.orphaned.items() if b > batches]:
            del self.orphaned[name]
        for rows in self.link_rows.values():
            for key in [k for k, b in rows.items() if b > batches]:
                del rows[key]
        self.links.rewind(batches)
        for cls in [c for c, b in self.deleted_classes.items() if b > batches]:
            del self.deleted_classes[cls]
        for keys in self.changed.values():
            for key in [k for k, b in keys.items() if b > batches]:
                del keys[key]

    # -- answering queries ----------------------------------------------------------------

    def answer(self, orm_execute_state: ORMExecuteState) -> Result[Any] | None:
        """The result of an ORM SELECT as the block sees it, or None to let it run."""
        flags = load_flags(orm_execute_state)
        if flags.autoflush:
            # The ORM autoflushes only after do_orm_execute listeners have run; what the
            # query must see includes what that flush records.
            self.autoflush()
        if not self.tables:
            return None
        self._bury()
        refresh_state = flags.refresh_state
        if refresh_state is not None:
            answered = self._reload(orm_execute_state, refresh_state)
            if answered is not None:
                return answered
        statement: Any = orm_execute_state.statement
        if orm_execute_state.is_relationship_load:
            link = _link_relationship(orm_execute_state)
            if link is not None and str(link.secondary.fullname) in self.tables:
                try:
                    return self._link_load(orm_execute_state, link)
                except Unanswerable as why:
                    hit = sorted(set(self._written_tables(statement, orm_execute_state)))
                    try:
                        return self._overlaid(orm_execute_state, statement, hit)
                    except Unanswerable as cannot:
                        raise self._refusal(
                            statement, [str(link.secondary.fullname)], f"{why}; {cannot}"
                        ) from None
        hit = self._written_tables(statement, orm_execute_state)
        if not hit:
            if not binds_placeholder(statement, orm_execute_state.parameters):
                return None
            # A key only this journal knows (the collection of an object the block
            # created): answered here, whatever the table.
            hit = sorted(self._names_read(statement))
        try:
            return self._answer(orm_execute_state, statement, hit)
        except Unanswerable as why:
            try:
                return self._overlaid(orm_execute_state, statement, hit)
            except Unanswerable as cannot:
                named = cannot.table or why.table
                tables = hit if named is None else [named]
                reason = str(why) if str(why) == str(cannot) else f"{why}; {cannot}"
                raise self._refusal(statement, tables, reason) from None

    def _overlaid(
        self, orm_execute_state: ORMExecuteState, statement: Any, hit: list[str]
    ) -> Result[Any]:
        """Have the database answer, with the block's rows laid over its tables."""
        if not isinstance(statement, Select):
            raise Unanswerable("it is not a SELECT")
        self._refuse_orphaned(hit)
        for name in hit:
            if name in self.lost:
                raise Unanswerable(f"the program dropped rows the block wrote to {name!r}")
            if name in self.statement_tables:
                raise Unanswerable(
                    f"an update()/delete()/insert() statement recorded on {name!r} changes "
                    "rows only known at replay"
                )
        if any(str(t.fullname) in hit for entry in self.inserted for t in entry.mapper.tables):
            raise Unanswerable("an insert() statement of the block added rows to a table it reads")
        dialect = orm_execute_state.session.get_bind(mapper=orm_execute_state.bind_mapper).dialect
        pattern = self._table_pattern(dialect)
        for element in visitors.iterate(statement):
            fragment = (
                element.text
                if isinstance(element, TextClause)
                else element.name
                if isinstance(element, ColumnClause) and element.is_literal
                else None
            )
            if fragment and pattern.search(without_strings(fragment)):
                # SQL text is not laid over; only the check at the cursor would see it.
                raise Unanswerable("SQL text in it names a table the block wrote")
        # One table may be found as several (annotated) copies: one CTE for each name.
        by_name = {str(t.fullname): t for t in _tables_read(statement)}
        tables = [by_name[name] for name in hit if name in by_name]
        session = orm_execute_state.session
        states = self.written_states()
        # Tables the block wrote rows of objects to are laid over; a table only read along
        # (written by no object) is the database's as it is.
        rows_of = {str(t.fullname) for s in states for t in s.mapper.tables}
        for cls in self.changed:
            rows_of.update(
                str(t.fullname) for m in _mapper(cls).self_and_descendants for t in m.tables
            )
        links = _link_tables([s.mapper for s in states] + [_mapper(c) for c in self.changed])
        for table in tables:
            name = str(table.fullname)
            if name in links and name in rows_of:
                # Rows of objects and links of relationships in one table: neither alone
                # says what it holds.
                raise Unanswerable(f"the block wrote links and objects in {table.name!r}", name)
        rows_of.update(self.links.events)
        tables = [t for t in tables if str(t.fullname) in rows_of]
        overlay = Overlay(session, dialect, states, self.changed, self.links, self.flushed)
        for state in overlay.states:
            if state.expired_attributes or state.unloaded:
                self.restore(state)
        self.reading += 1
        try:
            return overlay.answer(orm_execute_state, statement, tables)
        finally:
            self.reading -= 1

    def _refuse_orphaned(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.orphaned:
                raise Unanswerable(
                    f"an object the block inserted into {name!r} was made transient and "
                    "became another row; the first row has no object to answer with",
                    name,
                )

    def _reload(
        self, orm_execute_state: ORMExecuteState, state: InstanceState[Any]
    ) -> Result[Any] | None:
        """A refresh, or the load of expired attributes, of one object; None: the
        database's row is the answer.

        An object the block created or changed shows the journal's row; any other, the
        database's. Either then takes the update()/delete() statements recorded since.
        """
        written = state in self.objects
        statements = self._statements_since(state, self.snapshot_batch(state) if written else 0)
        if statements and any(c.key in state.dict for c in state.mapper.column_attrs):
            # Its loaded values may already show a statement (SQLAlchemy synchronized
            # them) or not (synchronize_session=False), and its criteria would be
            # evaluated on them, not on the row the statement saw.
            raise self._refusal(
                orm_execute_state.statement,
                sorted(_table_names(state)),
                "an update()/delete() statement recorded on it ran while the object was "
                "partly loaded; expire the whole object (session.expire(obj)) to reload it",
            )
        before = set(state.dict)
        if written:
            as_of = self.restore(state)
            # As the ORM's loader marks what it loaded: statements synchronize it now.
            mark_loaded(state, set(state.dict).difference(before))
        elif statements:
            as_of = 0
            self.reading += 1  # this module's own read, which the SQL check lets through
            try:
                found = orm_execute_state.invoke_statement().all()
            finally:
                self.reading -= 1
            if not found:
                return objects_result([])  # no such row in the database
        else:
            return None
        for _, _, effect in self._statements_since(state, as_of):
            try:
                kept = effect(state)
            except TypeError:
                kept = None  # its criteria compare a key only replay assigns, by order
            if kept is None:
                raise self._refusal(
                    orm_execute_state.statement,
                    sorted(_table_names(state)),
                    "an update()/delete() statement recorded on it changes rows only "
                    "known at replay",
                )
            if not kept:
                return objects_result([])  # the statement deleted the row
        # The database computes column_property() expressions from its row; here the
        # row is the journal's (or was changed by statements): computed from it.
        self._compute_expressions(orm_execute_state, state, again=bool(statements))
        if written:
            self._refuse_unknown(orm_execute_state, state, before)
        info = existing_info(state)
        stale = None if info is None else info.get(STALE)
        if info is not None and stale:
            # What was reloaded shows the journal's values again; what stayed loaded
            # still shows the values from before the unsynchronized statement.
            unreloaded = {key: batch for key, batch in stale.items() if key in before}
            if unreloaded:
                info[STALE] = unreloaded
            else:
                del info[STALE]
        return objects_result([state.obj()])

    def _compute_expressions(
        self, orm_execute_state: ORMExecuteState, state: InstanceState[Any], *, again: bool
    ) -> None:
        """Give a reloaded object its column_property() values, as a reload would.

        Those the load asks for (all not deferred, for a whole reload) that are not
        loaded, and with ``again`` (statements changed the row after the database
        computed them) the loaded ones too.
        """
        plan = plan_for(state.mapper)
        if not plan.expressions:
            return
        statement: Any = orm_execute_state.statement
        wanted = only_load_props(statement) or ()
        data = state.dict
        props = [
            p
            for p in plan.expressions
            if (again and p.key in data)
            or (p.key not in data and (p.key in wanted if wanted else not p.deferred))
        ]
        if not props:
            return
        dialect = orm_execute_state.session.get_bind(mapper=state.mapper).dialect.name
        obj = state.obj()
        for prop in props:
            try:
                value = self.expression(state.mapper, prop, dialect)(obj)
            except Unanswerable as why:
                raise self._refusal(
                    statement,
                    sorted(_table_names(state)),
                    f"{state.class_.__name__}.{prop.key} is a column_property() the "
                    f"database computes from the row the block changed, and {why}",
                ) from None
            set_committed_value(obj, prop.key, value)

    def expression(self, mapper: Mapper[Any], prop: Any, dialect: str) -> Evaluator:
        """The evaluator of the column_property() ``prop`` of ``mapper``; raises
        :class:`Unanswerable` for one the ORM's evaluator cannot compute (both kept)."""
        key = (mapper, prop.key, dialect)
        found = self._expressions.get(key)
        if found is None:
            try:
                found = expression_evaluator(mapper, prop.expression, dialect)
            except Unanswerable as why:
                found = why
            self._expressions[key] = found
        if isinstance(found, Unanswerable):
            raise found
        return found

    def _statements_since(
        self, state: InstanceState[Any], batch: int
    ) -> list[tuple[int, frozenset[str], RowEffect]]:
        """The recorded update()/delete() statements after ``batch`` on ``state``'s tables."""
        if not self.statements:
            return []
        tables = _table_names(state)
        return [e for e in self.statements if e[0] > batch and not e[1].isdisjoint(tables)]

    def _refuse_unknown(
        self,
        orm_execute_state: ORMExecuteState,
        state: InstanceState[Any],
        before: set[str],
    ) -> None:
        """Refuse the load of attributes that only replay can set (server defaults).

        A refresh of the whole object leaves them unloaded; the load of an attribute
        that the journal cannot give (nothing else was loaded with it) is the program
        reading one, which would otherwise fail deep inside SQLAlchemy.
        """
        statement: Any = orm_execute_state.statement
        wanted = only_load_props(statement)
        if not wanted:
            return
        left = sorted(k for k in wanted if k not in state.dict)
        if left and not any(k in state.dict for k in wanted if k not in before):
            names = ", ".join(f"{state.class_.__name__}.{k}" for k in left)
            raise DeferredOperationError(
                f"{names} of an object this deferred block wrote is set by the database "
                "when replay writes the row (a server default or onupdate, a sequence, a "
                "trigger or a SQL expression); it has no value while recording. Give it a "
                "value in the program, or read it after replay",
                path=self.path,
            )

    def _link_load(self, orm_execute_state: ORMExecuteState, rel: Any) -> Result[Any]:
        """Load a many-to-many collection from the database where the block changed none of
        the links involved (its answer is then the block's too); refuse otherwise."""
        table = str(rel.secondary.fullname)
        changed = self.link_rows.get(table, {})
        lazy_from = load_flags(orm_execute_state).lazy_loaded_from
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
                raise Unanswerable(f"the block changed the links of this object in {table!r}")
        target = rel.mapper.identity_key_from_primary_key((None,) * len(rel.mapper.primary_key))
        if target[0] in self.deleted_classes:
            raise Unanswerable(
                f"the block deleted {rel.mapper.class_.__name__} rows, whose links go with them"
            )
        if self.changed.get(target[0]) or any(
            str(t.fullname) in self.statement_tables for t in rel.mapper.tables
        ):
            # The database has them as they were: loading them would overwrite what an
            # expired object of the block shows.
            raise Unanswerable(f"the block changed {rel.mapper.class_.__name__} rows")
        self._refuse_orphaned([str(t.fullname) for t in rel.mapper.tables])
        lost = [str(t.fullname) for t in rel.mapper.tables if str(t.fullname) in self.lost]
        if lost:
            raise Unanswerable(f"the program dropped rows the block wrote to {lost[0]!r}")
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
        key = statement_cache_key(statement)
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
            raise Unanswerable("it is not a SELECT of mapped objects")
        self._refuse_orphaned(hit)
        lost = [n for n in hit if n in self.lost]
        if lost:
            raise Unanswerable(
                f"the program dropped rows the block wrote to {lost[0]!r} after the block "
                f"had kept {self.kept_rows:,} rows alive for its reads; keep references to "
                "the objects, or record fewer rows per block"
            )
        blocked = [n for n in hit if n in self.statement_tables]
        if blocked:
            raise Unanswerable(
                f"an update()/delete()/insert() statement recorded on {blocked[0]!r} "
                "changes rows only known at replay"
            )
        dialect = orm_execute_state.session.get_bind(
            mapper=orm_execute_state.bind_mapper
        ).dialect.name
        query = Query.of(statement, orm_execute_state.parameters, dialect)
        mapper = query.mapper
        own = {str(t.fullname) for t in mapper.tables}
        for prop in mapper.column_attrs:
            expression = prop.expression
            if isinstance(expression, Column):
                continue
            read = {str(t.fullname) for t in _tables_read(expression)}
            if (read - own) & set(self.tables):
                raise Unanswerable(
                    f"{mapper.class_.__name__}.{prop.key} is SQL over another table the block wrote"
                )
        session = orm_execute_state.session
        rows = self._rows_of(mapper, session)
        for obj in rows:
            state = sa_inspect(obj)
            if state.modified and not session.autoflush:
                # Changed since its last flush, under no_autoflush: the database would
                # match its flushed row, which the overlay lays over the table.
                raise Unanswerable("an object it reads has changes not flushed yet")
            if state.expired_attributes or state.unloaded:
                self.restore(state)
        try:
            mine = [obj for obj in rows if query.matches(obj)]
            self._refuse_inserted(query, hit)
        except TypeError as err:
            # A key the database assigns at replay compared by order, for instance.
            raise Unanswerable(
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

    def _refuse_inserted(self, query: Query, hit: list[str]) -> None:
        """Refuse a query that a row added by an insert() statement could match.

        Those rows exist only in the journal, not as objects: a query none of them can
        match (a lookup by an existing key, criteria on values they do not have) has the
        answer it would have without them.
        """
        for inserted in self.inserted:
            mapper = inserted.mapper
            if not any(str(t.fullname) in hit for t in mapper.tables if isinstance(t, Table)):
                continue
            if query.mapper.isa(mapper) and query.mapper is not mapper:
                continue  # rows of a base class are never rows of the subclass queried
            if not mapper.isa(query.mapper):
                raise Unanswerable(
                    f"an insert() statement of the block added {mapper.class_.__name__} rows "
                    "to a table it reads"
                )
            if any(query.matches(probe) for probe in inserted.probes):
                raise Unanswerable(
                    "a row an insert() statement of the block added matches it; such rows "
                    "exist only in the journal until replay"
                )

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
                self._weak[new_held] = (entry[0], entry[1], merged_state)
        else:
            new_held = merged
        self.objects[merged_state] = (batch, new_held)
        self.adopt(state, merged_state)
        return merged

    def _database_rows(
        self,
        orm_execute_state: ORMExecuteState,
        statement: Select[Any],
        query: Query,
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
        for option in statement_options(statement):
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
                    raise Unanswerable(
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
                    raise Unanswerable(
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
    for option in statement_options(statement):
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


def _mapper(cls: type) -> Mapper[Any]:
    mapper: Mapper[Any] = sa_inspect(cls)
    return mapper


def _link_tables(mappers: list[Mapper[Any]]) -> set[str]:
    """Tables that relationships of the registries of ``mappers`` write links to."""
    registries = {id(m.registry): m.registry for m in mappers}
    return {
        str(rel.secondary.fullname)
        for registry in registries.values()
        for mapper in registry.mappers
        for rel in mapper.relationships
        if isinstance(rel.secondary, Table) and not rel.viewonly
    }


def _relationship_tables(mapper: Mapper[Any], key: str) -> list[Any]:
    rel = mapper.relationships[key]
    tables = [t for t in rel.mapper.tables if isinstance(t, Table)]
    if isinstance(rel.secondary, Table):
        tables.append(rel.secondary)
    return tables


def _link_relationship(orm_execute_state: ORMExecuteState) -> Any:
    """The many-to-many relationship a relationship load is loading, if it is one."""
    registry: Any = orm_execute_state.loader_strategy_path
    path: list[Any] = list(registry or ())
    rel = path[-1] if path else None
    secondary = getattr(rel, "secondary", None)
    return rel if isinstance(secondary, Table) else None


def _table_names(state: InstanceState[Any]) -> tuple[str, ...]:
    mapper = state.mapper
    names = _TABLE_NAMES.get(mapper)
    if names is None:
        names = _TABLE_NAMES[mapper] = tuple(
            str(t.fullname) for t in mapper.tables if isinstance(t, Table)
        )
    return names


# Mapper -> the names of its tables: asked for every object a flush writes. Weak, as
# mappers come and go with their registries.
_TABLE_NAMES: weakref.WeakKeyDictionary[Mapper[Any], tuple[str, ...]] = weakref.WeakKeyDictionary()


def _tables_read(statement: Any) -> set[Any]:
    """Every table a statement may read, including what its entities load eagerly."""
    tables = set(find_tables(statement, include_joins=True, include_aliases=True))
    # Joins along relationships (``join(Post.tags)``) name their tables only once the ORM
    # compiles the statement: the link table of a many-to-many, a subclass's table.
    try:
        compiled: Any = statement.compile()
    except SQLAlchemyError:
        compiled = None  # one this default compiler cannot render: its own tables stand
    core = getattr(getattr(compiled, "compile_state", None), "statement", None)
    if core is not None and core is not statement:
        tables.update(find_tables(core, include_joins=True, include_aliases=True))
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
