"""Recording a session's unit of work into a journal (``deferred_operations``, SPEC §3).

The recorder listens to ``before_flush``: it turns the session's new, dirty and deleted
objects into journal operations (as ``examples/versioned_history`` reads a unit of work),
appends them as one durable batch, and then moves the objects into the state a real
flush would have left them in, so SQLAlchemy finds nothing left to write and sends no
INSERT, UPDATE or DELETE. New objects get :class:`Placeholder` primary keys that replay
resolves to the keys the database assigns.

Operations are plain dictionaries (encoded by :mod:`journal.codec`)::

    {"op": "insert", "class": "app.models:Asset", "table": "asset", "ref": 1,
     "values": {...}, "refs": {attr: [ref, pk attr]}, "links": {many-to-one: target},
     "added": {collection: [target, ...]}}
    {"op": "update", ..., "target": target, "values": {...}, "old": {...},
     "version": [old, new], "links": {...}, "added": {...}, "removed": {...}}
    {"op": "delete", ..., "target": target, "old": {...}, "version": old}
    {"op": "bulk_update" | "bulk_delete" | "bulk_insert", ...}   (see :mod:`orm_ext.dml`)

A *target* is an ``int`` (the ref of an object created in this journal) or a ``list``
(the primary key of a row that existed in the database).
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
import weakref
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy
from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, attributes
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.collections import collection_adapter
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.elements import ClauseElement

from journal import JournalWriter, Position
from journal.codec import encode
from orm_ext import dml
from orm_ext.block_links import link_events
from orm_ext.block_query import Unanswerable
from orm_ext.block_reads import BlockReads
from orm_ext.exc import DeferredOperationError
from orm_ext.fingerprint import describe_table, read_alembic_revision
from orm_ext.gc_pause import paused_gc
from orm_ext.mapper_plan import MapperPlan, new_row_values, plan_for
from orm_ext.object_history import (
    REF,
    SHADOW,
    STALE,
    carried_over,
    kept_history,
    related_values,
    set_unknown,
    show_members,
    show_values,
    snapshot_history,
    unknown_keys,
    weak_members,
)
from orm_ext.references import Placeholder
from orm_ext.sa_private import (
    detach_committed_deletions,
    existing_info,
    expire_attributes,
    expire_states,
    expunge_states,
    held_by,
    hold_unloaded,
    is_orphan,
    loaded_states,
    mark_loaded,
    new_orphans_outside_of_session,
    open_connections,
    pending_states,
    register_flushed,
    session_is_clean,
    session_is_flushing,
)
from orm_ext.server_values import FROM_DATABASE, UnknownUntilReplay
from orm_ext.snapshot_rows import FROM_SNAPSHOT
from orm_ext.write_guard import guard_connection, release

__all__ = ["DeferredOperations", "Recorder", "install", "listen_last", "refuse_if_recorded"]

# Key in InstanceState.info: the path of the journal an object was recorded into; such an
# object must never be attached to another session (see refuse_if_recorded).
RECORDED: Final = "orm_journal.recorded"
# Key in InstanceState.info: what a deleted object relates to, kept alive for a rollback
# that brings the object back (see Recorder.pin_related).
PINNED: Final = "orm_journal.pinned"
# Key in an object's own __dict__ (not its state's info, which the identity map holds
# strongly): what it related to when a checkpoint expired it, kept alive as long as the
# object is. Those rows may be only in the journal, and loading the relationship again
# must find them, as a plain session finds them in the database.
LINKED: Final = "_orm_journal_linked"

_PLAIN_TYPES: Final = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        bytes,
        decimal.Decimal,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        uuid.UUID,
        dict,
        list,
    }
)


@dataclass
class DeferredOperations:
    """The handle yielded by ``deferred_operations``: where and what is being recorded."""

    path: Path
    journal_id: str
    operations: int = 0


class Recorder:
    """Records one session's flushes into one journal; lives for one deferred block."""

    def __init__(
        self,
        session: Session,
        writer: JournalWriter,
        revision: str | None,
        stopped: Callable[[], None],
    ) -> None:
        self.session = session
        # The session's own way of ending the block for itself (JournalingSession owns
        # what it carries): called first when the recorder lets go of it.
        self.stopped = stopped
        self.writer = writer
        self.path = writer.path
        self.handle = DeferredOperations(writer.path, writer.journal_id)
        self.alembic_revision = revision
        self.origin = writer.position()
        self.checkpoint = self.origin.batches
        # Weak: SQLAlchemy closes a transaction before it reports its rollback.
        self.marks: weakref.WeakKeyDictionary[SessionTransaction, Position] = (
            weakref.WeakKeyDictionary()
        )
        self.tables: dict[str, sqlalchemy.Table] = {}
        self.classes: set[str] = set()
        self.next_ref = 1
        self.guarded: list[sqlalchemy.Connection] = []
        self.pending: dict[InstanceState[Any], int] = {}  # refs of the flush being recorded
        # The new and changed objects of the flush being recorded, and (worked out only
        # when an update unlinks something) the foreign key attributes the flush sets on
        # changed objects that join a one-to-many collection (_joining).
        self.flushing: tuple[Sequence[InstanceState[Any]], Sequence[InstanceState[Any]]] = ((), ())
        self.joining: dict[InstanceState[Any], set[str]] | None = None
        # Python-side defaults computed for new objects of the flush being recorded.
        self.computed: dict[InstanceState[Any], dict[str, Any]] = {}
        # Attribute key -> the loader that refuses reading it where only replay knows it.
        self.unknown_loaders: dict[str, UnknownUntilReplay] = {}
        # Whether a snapshot marks a column unknown after an unsynchronized update()
        # (see STALE): then objects of any class can hold such columns, not only those
        # whose plan is ``unknowable``.
        self.stale_unknowns = False
        # Since the last checkpoint, a row was deleted or linked by a foreign key set
        # without its relationship: loaded collections may show what a reload would not.
        self.stale_collections = False
        # (batch, states) of objects created since the last checkpoint, one entry per
        # flush: a rollback may discard their insert (see _forget_discarded).
        self.created: list[tuple[int, list[weakref.ref[InstanceState[Any]]]]] = []
        # Related objects kept alive from a rollback's start to rolled_back (pin_related).
        # Should the rollback fail before rolled_back, the next rollback or the end of
        # the block releases them.
        self.pinned: list[Any] = []
        self.io: JournalIO = _call
        self.expire_on_checkpoint = True
        self.reads = BlockReads(
            writer.path, self._restore, _snapshot_batch, _flushed_values, self._autoflush, _adopt
        )

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start_recording(
        cls,
        session: Session,
        path: str | os.PathLike[str],
        *,
        overwrite: bool,
        key: bytes | str | None,
        stopped: Callable[[], None],
        allow_dill: bool = True,
        expire_on_checkpoint: bool = True,
    ) -> Recorder:
        """Check the session can start recording, then create the journal.

        ``stopped`` is called when the recorder lets go of the session (the block ended).
        ``expire_on_checkpoint`` is the session's own ``expire_on_commit``: a commit in
        the block expires the objects as a plain commit would (see checkpointed).
        """
        if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
            raise DeferredOperationError(
                "the session has pending changes; commit them (or roll them back) before "
                "entering deferred_operations, or they would be recorded as part of the "
                "journal",
                path=path,
            )
        if has_flushed_changes(session):
            raise DeferredOperationError(
                "the session's transaction holds flushed, uncommitted changes; commit or roll "
                "back before entering deferred_operations",
                path=path,
            )
        io = journal_io(session)
        writer = io(
            JournalWriter.create,
            path,
            overwrite=overwrite,
            key=key,
            versions={"sqlalchemy": sqlalchemy.__version__},
            pickles=allow_dill,
        )
        recorder = cls(session, writer, _alembic_revision(session), stopped)
        recorder.io = io
        recorder.expire_on_checkpoint = expire_on_checkpoint
        for transaction in (session.get_transaction(), session.get_nested_transaction()):
            if transaction is not None:
                recorder.marks[transaction] = recorder.origin
        for connection in open_connections(session):
            guard_connection(recorder, connection)
        # Attached only while recording: any do_orm_execute listener makes SQLAlchemy
        # prepare each statement twice, a cost a session outside a block should not pay.
        # First in line, ahead of a query memo's listener, as when it was permanent.
        event.listen(session, "do_orm_execute", _do_orm_execute, insert=True)
        return recorder

    def finish(self) -> None:
        """Flush what is pending, seal the journal and leave the session clean."""
        session = self.session
        try:
            session.flush()
            self.io(
                self.writer.seal,
                meta={
                    "alembic_revision": self.alembic_revision,
                    "classes": sorted(self.classes),
                    "schema": {name: describe_table(t) for name, t in sorted(self.tables.items())},
                },
            )
        except BaseException:
            self._detach()
            raise
        self._detach()

    def abandon(self) -> None:
        """Leave the journal unsealed and roll the session back (an exception left the block)."""
        self._detach()

    def _detach(self) -> None:
        session = self.session
        self.stopped()
        if event.contains(session, "do_orm_execute", _do_orm_execute):
            event.remove(session, "do_orm_execute", _do_orm_execute)
        release(self)
        self.pinned = []
        self.reads.close()
        self.reads = BlockReads(
            self.path, self._restore, _snapshot_batch, _flushed_values, self._autoflush, _adopt
        )
        self.io(self.writer.close)
        states = session.identity_map.all_states()
        recorded = []
        # Let go of the pins only once the objects are out of the session: what only a
        # pin held is freed then, with no identity map left to take it out of.
        pins = []
        for state in states:
            info = existing_info(state)
            if info:
                info.pop(SHADOW, None)
                info.pop(PINNED, None)
                if REF in info:
                    recorded.append(state)
            pinned = state.dict.pop(LINKED, None)
            if pinned is not None:
                pins.append(pinned)
        if len(recorded) == len(states) and not session.new and not session.deleted:
            # Everything the session holds was created in the block (the usual case):
            # detaching it all at once is what expunging each object amounts to. The
            # base class's method: leaving the block is not an expiry the memo must see.
            Session.expunge_all(session)
        elif recorded:
            expunge_states(session, recorded)
        del pins
        session.rollback()
        # Deletions of objects created in the block are reverted by the rollback above,
        # which puts them back into the identity map; they are recorded, not persistent.
        _forget_recorded_objects(session)

    # -- transactions ---------------------------------------------------------------------

    def transaction_created(self, transaction: SessionTransaction) -> None:
        position = self.marks[transaction] = self.writer.position()
        if transaction.parent is None:
            # A new outermost transaction starts after commit() or rollback(): the
            # earliest point any later rollback can return to.
            self.checkpoint = position.batches
            self.created = [e for e in self.created if e[0] > self.checkpoint]

    def pin_related(self) -> None:
        """Keep every related object alive until :meth:`rolled_back` has run.

        SQLAlchemy reports a rollback (``after_rollback``) just before it expires the
        session's objects. An object that only an expired relationship kept (a link's
        target, a collection's member) would be freed then, before rolled_back could show
        it again from a snapshot, which holds it weakly. Objects deleted by a flush are not
        in the identity map any more: they keep their related objects pinned themselves
        (see :meth:`_record`).
        """
        self.pinned = [
            value
            for state in self.session.identity_map.all_states()
            for value in related_values(state)
        ]

    def rolled_back(self, transaction: SessionTransaction) -> None:
        try:
            target = self.marks.get(transaction, self.origin)
            _forget_stale(self.session, target.batches)
            self._rewind_journal(target)
            self.reads.rewind(target.batches)
            self._show_as_of(target)
            self._forget_discarded(target.batches)
        finally:
            self.pinned = []

    def _rewind_journal(self, target: Position) -> None:
        self.io(self.writer.rewind, target)
        self.handle.operations = self.writer.operations

    def _show_as_of(self, target: Position) -> None:
        """Show each object with a snapshot as the journal has it at ``target``.

        SQLAlchemy has just expired the objects, as after a database rollback; this is
        what a reload would show.
        """
        collections: list[tuple[Any, InstanceState[Any], MapperPlan, dict[str, Any]]] = []
        for state in self.session.identity_map.all_states():
            # A deleted object that the rollback brought back needs its pins no more.
            state.info.pop(PINNED, None)
            kept = kept_history(state, target)
            obj = state.obj()
            if kept is None or obj is None:
                continue
            plan = plan_for(state.mapper)
            show_values(obj, state, plan, kept[-1], only_missing=False)
            # As a reload marks what it loaded: statements synchronize the object now.
            mark_loaded(state, state.dict)
            if plan.unknowable or self.stale_unknowns:
                self._hold(state, unknown_keys(kept[-1], plan))
                self._hold_expressions(state, plan)
            collections.append((obj, state, plan, kept[-1][3]))
        # Only once every object has its values again: filling a collection can read its
        # members (a dict collection reads their key attribute).
        for obj, state, plan, members in collections:
            show_members(obj, state, plan, members)

    def _restore(self, state: InstanceState[Any]) -> int:
        """Show the expired attributes of an object the block wrote as the journal has them.

        What a reload would show were the journal applied; the database itself still has
        the row as it was before the block (or no row at all). Returns the batch the
        values are as of (0: the database's).
        """
        obj = state.obj()
        if obj is None:
            return 0
        as_of = 0
        unknown: frozenset[str] = frozenset()
        history = state.info.get(SHADOW)
        if history:
            plan = plan_for(state.mapper)
            snapshot = snapshot_history(history, plan)[-1]
            as_of = snapshot[0]
            unknown = unknown_keys(snapshot, plan)
            # Collections stay unloaded: they load through the block's reads, which find
            # rows linked since the snapshot by foreign key or link row.
            show_values(obj, state, plan, snapshot, only_missing=True)
        # Table columns only: column_property() expressions are computed from the values
        # shown (BlockReads), where the database would compute them from its row. Nor
        # those only replay knows: the database's value is the one before the block.
        missing = [
            k for k in plan_for(state.mapper).columns if k not in state.dict and k not in unknown
        ]
        if missing and state.key is not None and REF not in state.info:
            # Never loaded while the block changed the row, so never changed by it: the
            # database has the value.
            for key, value in self._database_values(state, missing).items():
                set_committed_value(obj, key, value)
        return as_of

    def checkpointed(self) -> None:
        """A commit in the block: expire the objects as a plain commit would.

        The session commits with ``expire_on_commit`` off (SQLAlchemy's expiry does not
        keep alive what the objects related to, see _expire_checkpointed); this expires
        them here instead, and detaches the objects the transaction deleted, as that
        commit would. Loading an expired attribute of an object the block wrote shows the
        journal's value (BlockReads.answer), so what the program reads is what a plain
        session reloads, and assigning an attribute before reading it is a change, as it
        is after a plain commit: the value it replaces is unknown.
        """
        if self.expire_on_checkpoint:
            with paused_gc():  # a container per object, none cyclic: see gc_pause
                self._expire_checkpointed()
            for state in detach_committed_deletions(self.session):
                # No rollback can bring it back past this commit: nor its pins.
                info = existing_info(state)
                if info is not None:
                    info.pop(PINNED, None)
            self.stale_collections = False
            return
        if not self.stale_collections:
            return
        self.stale_collections = False
        self._refresh_collections()

    def _expire_checkpointed(self) -> None:
        """Expire what a plain commit would, keeping alive what the objects related to.

        Only objects with something loaded since they were last expired: the others
        are as a commit would leave them.
        """
        states = loaded_states(self.session)
        plans: dict[Any, MapperPlan] = {}
        unknowable = []
        for state, data in states:
            mapper = state.mapper
            plan = plans.get(mapper)
            if plan is None:
                plan = plans[mapper] = plan_for(mapper)
            keys = plan.related
            if keys:
                related = [data[k] for k in keys if k in data]
                if related:
                    data[LINKED] = related
            if plan.unknowable or self.stale_unknowns:
                unknowable.append(state)
        expire_states(self.session, states)
        self.hold_unknown(unknowable)

    def hold_unknown(self, states: Iterable[InstanceState[Any]]) -> None:
        """Give the columns of these objects that only replay knows their refusing loader
        again, after an expiry dropped it (see _hold)."""
        for state in states:
            plan = plan_for(state.mapper)
            info = existing_info(state)
            history = None if info is None else info.get(SHADOW)
            if history and (plan.unknowable or self.stale_unknowns):
                keys = unknown_keys(snapshot_history(history, plan)[-1], plan)
                if keys:
                    self._hold(state, keys)
                self._hold_expressions(state, plan)

    def _hold_expressions(self, state: InstanceState[Any], plan: MapperPlan) -> None:
        """Leave the unloaded column_property() expressions of an object the block wrote
        that the block cannot compute with a loader that refuses reading them.

        Those the ORM's evaluator cannot compute, that read another table, or that read
        a column only replay knows (or one an unsynchronized statement may have changed).
        Left expired, a reload of any other attribute would load them too, and have to
        refuse it all.
        """
        if not plan.expression_reads:
            return
        data = state.dict
        unknown = set(held_by(state, UnknownUntilReplay))
        info = existing_info(state)
        if info is not None:
            unknown.update(info.get(STALE, ()))
        held = [
            key
            for key, reads in plan.expression_reads
            if key not in data
            and (reads is None or not reads.isdisjoint(unknown) or not self._evaluable(state, key))
        ]
        if held:
            self._hold(state, held)

    def _evaluable(self, state: InstanceState[Any], key: str) -> bool:
        mapper = state.mapper
        dialect = self.session.get_bind(mapper=mapper).dialect.name
        try:
            self.reads.expression(mapper, mapper.attrs[key], dialect)
        except Unanswerable:
            return False
        return True

    def _hold(self, state: InstanceState[Any], keys: Iterable[str]) -> None:
        """Leave ``keys`` unloaded with a loader that refuses reading them.

        Expired instead, a read of any other attribute would load them with the rest,
        where the block has no value to give: SQLAlchemy then fails ("failed to populate")
        or a later read answers None.
        """
        loaders = self.unknown_loaders
        held = []
        for key in keys:
            if key not in state.dict:
                loader = loaders.get(key)
                if loader is None:
                    loader = loaders[key] = UnknownUntilReplay(str(self.path), key)
                held.append((key, loader))
        hold_unloaded(state, held)

    def _refresh_collections(self) -> None:
        """What a commit's expiry would change in what loaded collections show.

        A commit inside the block expires nothing (the values are the journal's, see
        start_recording), but a plain commit reloads collections, which then leave out
        members deleted since and take in rows linked by foreign key. One-to-many
        collections are unloaded, to load again through the block's reads; link-table
        ones, which those reads cannot query, drop their deleted members.
        """
        for state in self.session.identity_map.all_states():
            obj = state.obj()
            if obj is None:
                continue
            plan = plan_for(state.mapper)
            data = state.dict
            expire = [k for k in plan.one_to_many_pairs if k in data and k in plan.collections]
            if expire:
                # The base class's method: this is no expiry the memo needs to know of.
                Session.expire(self.session, obj, expire)
            for key in plan.link_collections:
                members = data.get(key)
                if members is None:
                    continue
                kept = [m for m in collection_adapter(members) if not _gone(m)]
                if len(kept) != len(list(collection_adapter(members))):
                    set_committed_value(obj, key, kept)

    def _forget_discarded(self, batches: int) -> None:
        """Objects whose insert a rollback discarded become new objects again.

        SQLAlchemy has expunged them; without their placeholder key and journal marks they
        can be added and recorded afresh, as they could be inserted again after a rollback.
        """
        kept = [entry for entry in self.created if entry[0] <= batches]
        for batch, refs in self.created:
            if batch <= batches:
                continue
            for ref in refs:
                state = ref()
                if state is not None:
                    _forget_insert(state)
        self.created = kept

    def discard_uncommitted(self) -> None:
        """What ``close()`` inside the block means: drop what was recorded since the
        last checkpoint, as closing a session rolls its transaction back.

        Closing expires nothing: the objects keep showing what they show, as after
        closing a plain session; only the journal and their snapshots go back.
        """
        transaction = self.session.get_transaction()
        if transaction is None:
            return
        target = self.marks.get(transaction, self.origin)
        self._rewind_journal(target)
        self.reads.rewind(target.batches)
        for state in self.session.identity_map.all_states():
            kept_history(state, target)
        self._forget_discarded(target.batches)

    # -- recording a flush ----------------------------------------------------------------

    def record_flush(self) -> None:
        """Turn the pending unit of work into one journal batch and mark it flushed.

        Once the batch is on disk, the objects' ``state.dict`` is written directly (keys,
        synchronised foreign keys, defaults): ``register_flushed`` commits every attribute
        of these states right after, which is all ``set_committed_value`` would add.
        """
        session = self.session
        if not session.in_transaction():
            # The transaction records which objects this flush made persistent, so that
            # a later rollback() discards them exactly as it would after a real flush.
            session.begin()
        new = pending_states(session)
        deleted = list(map(attributes.instance_state, session.deleted))
        dirty = list(map(attributes.instance_state, session.dirty))
        for state in dirty:
            if is_orphan(state):
                deleted.append(state)
        # Members removed from a delete-orphan collection that nothing else holds: a
        # flush deletes them although nothing changed on them (they need not be dirty).
        seen = set(deleted)
        for state in dirty:
            for member in _removed_orphans(state):
                if member not in seen:
                    seen.add(member)
                    deleted.append(member)
        deleted_set = set(deleted)
        dirty = [s for s in dirty if s not in deleted_set]
        # As Session.flush() treats new orphans: one removed from its parent's collection
        # before any flush is expunged; any other is inserted (the database's foreign key
        # decides, at replay, as it would at a plain flush).
        outside = new_orphans_outside_of_session(new)
        if outside:
            expunge_states(session, outside)
            expunged = set(outside)
            new = [s for s in new if s not in expunged]
        # Nothing about the objects changes until the batch is on disk: a construct that
        # cannot be recorded raises with the session as it was, ready for another try.
        first_ref = self.next_ref
        self.pending = {state: first_ref + n for n, state in enumerate(new)}
        # Several containers per recorded object, none of them cyclic: see gc_pause.
        try:
            with paused_gc():
                self._record(session, new, dirty, deleted)
        except BaseException:
            # Nothing of this flush was recorded: neither is anything it was to write.
            self.reads.rewind(self.writer.batches)
            raise
        finally:
            self.pending = {}
            self.computed = {}

    def _record(
        self,
        session: Session,
        new: Sequence[InstanceState[Any]],
        dirty: list[InstanceState[Any]],
        deleted: list[InstanceState[Any]],
    ) -> None:
        # The mappers of each kind of state, for the listeners each kind fires.
        of_new = {state.mapper for state in new}
        of_dirty = {state.mapper for state in dirty}
        of_deleted = {state.mapper for state in deleted}
        for mapper in of_new | of_deleted:
            self._note_tables(plan_for(mapper))
        mark = self.writer.batches + 1
        first_ref = self.next_ref
        # Mapper listeners run here, where the program runs, as a flush runs them around
        # its statements (SPEC §3.10): what they change is what gets recorded. A flush
        # runs them between its own statements, so what they read of the tables this
        # flush writes would be the pre-flush rows here: such reads are refused.
        tables = {
            str(t.fullname)
            for m in of_new | of_dirty | of_deleted
            for t in plan_for(m).written_tables
        }
        self.reads.note_batch(mark, tables, (), ())
        self._fire("before_insert", new, of_new)
        self._fire("before_update", dirty, of_dirty)
        self._fire("before_delete", deleted, of_deleted)
        # Each new object's plan and dictionary, looked up once for the steps below.
        plans = [plan_for(state.mapper) for state in new]
        datas = [state.dict for state in new]
        operations = [
            self._insert(state, first_ref + n, plan, data)
            for n, (state, plan, data) in enumerate(zip(new, plans, datas, strict=True))
        ]
        versions: list[tuple[InstanceState[Any], str, Any]] = []
        relinked: list[tuple[InstanceState[Any], dict[str, Any]]] = []
        changed: list[InstanceState[Any]] = []
        # Updated objects -> their columns the database sets as it updates the row.
        by_database: dict[InstanceState[Any], list[str]] = {}
        # Objects an unsynchronized statement may have changed -> what this flush writes.
        over_stale: dict[InstanceState[Any], set[str]] = {}
        self.flushing, self.joining = (new, dirty), None
        for state in dirty:
            operation = self._update(state, versions)
            info = existing_info(state)
            if info is not None and STALE in info:
                over_stale[state] = set() if operation is None else set(operation["values"])
            if operation is not None:
                operations.append(operation)
                changed.append(state)
                updated = plan_for(state.mapper).updated_by_database
                if updated:
                    given = {*operation["values"], *operation.get("refs", ())}
                    keys = [k for k in updated if k not in given]
                    if keys:
                        by_database[state] = keys
                if "links" in operation:
                    relinked.append((state, operation["links"]))
        self.flushing, self.joining = ((), ()), None  # not to keep the objects alive
        for state in deleted:
            operations.append(self._delete(state))
            # A rollback may bring the object back, after SQLAlchemy expired what it
            # relates to (see pin_related). Held by the object itself: once the program
            # drops it, no rollback can bring it back.
            state.info[PINNED] = tuple(related_values(state))
        self._fill_old_values(operations)

        if operations:
            try:
                self.io(self.writer.append, operations)
            except TypeError as err:
                # The codec refused a value (dill cannot store it, or this journal refuses
                # dill): nothing was written, and the program must learn which value.
                raise DeferredOperationError(
                    f"{_unstorable(operations, self.writer.pickles)}: {err}", path=self.path
                ) from err
            self.handle.operations = self.writer.operations
        self.next_ref += len(new)
        self._assign_keys(new, plans, datas)
        # Before new objects are snapshot: their foreign keys as members of collections.
        moved = _sync_members(new, plans, datas, changed, deleted, self.pending)
        self._settle_new(new, plans, datas, mark)
        for state, links in relinked:
            self._sync_foreign_keys(state, plan_for(state.mapper), links)
        for table, keys in _link_changes(new, changed, deleted):
            self.reads.note_links(mark, table, keys)
        self.reads.note_link_rows(mark, link_events(new, dirty, deleted))
        self._fire("after_insert", new, of_new)
        self._fire("after_update", dirty, of_dirty)
        self._fire("after_delete", deleted, of_deleted)
        if operations:
            # Before register_flushed: once no change is pending, the identity map holds
            # the objects weakly, and those the program no longer refers to are gone.
            self.reads.note_batch(self.writer.batches, (), (*new, *changed, *moved), deleted)
        else:
            self.reads.rewind(self.writer.batches)  # a flush with nothing to write
        register_flushed(session, {*new, *dirty}, deleted)
        _expire_expressions(new, dirty, of_new | of_dirty)
        for state, keys in by_database.items():
            # As a flush expires them (persistence._postfetch): only replay knows them.
            expire_attributes(state, keys)
            self._hold(state, keys)
        if any(plan_for(m).expression_reads for m in of_new | of_dirty):
            for state in (*new, *dirty):
                if state.obj() is not None:
                    self._hold_expressions(state, plan_for(state.mapper))
        for state, key, value in versions:
            obj = state.obj()
            if obj is not None:
                set_committed_value(obj, key, value)
        # Members a collection moved without a change of their own: their rows change too.
        remembered: Sequence[InstanceState[Any]] = dirty
        if moved:  # none of them new (see _sync_members)
            changing = set(dirty)
            remembered = [*dirty, *(s for s in moved if s not in changing)]
        self._remember(remembered, by_database, over_stale)

    def _fire(
        self, name: str, states: Sequence[InstanceState[Any]], mappers: Iterable[Mapper[Any]]
    ) -> None:
        """Run the mapper listeners ``name`` for ``states`` with the flush's connection.

        SQL they run goes through the recording connection: reads reach the database,
        writes are refused (see orm_ext.write_guard), as in the rest of the block.
        """
        listening = {
            mapper: listeners for mapper in mappers if (listeners := getattr(mapper.dispatch, name))
        }
        if not listening:
            return
        # Replay still flushes through the ORM, where these listeners run again: on the
        # object being written they recompute what they computed here, but a change to
        # any other object (a counter on a parent) would be applied twice. Refused.
        session = self.session
        before = {id(o) for o in _pending_objects(session)}
        connections: dict[Any, sqlalchemy.Connection] = {}
        for state in states:
            mapper = state.mapper
            listeners = listening.get(mapper)
            if listeners is None or state.obj() is None:
                continue
            connection = connections.get(mapper)
            if connection is None:
                try:
                    connection = self.session.connection(bind_arguments={"mapper": mapper})
                except SQLAlchemyError as err:
                    raise DeferredOperationError(
                        f"{_describe(state)}: its class has a {name} listener, which a flush "
                        f"runs with its database connection, and the database cannot be "
                        f"reached ({type(err).__name__})",
                        path=self.path,
                    ) from err
                connections[mapper] = connection
            # The state, as the flush passes it: the event machinery hands listeners
            # the object unless they were registered with raw=True.
            listeners(mapper, connection, state)
        flushed = {id(state.obj()) for state in states}
        others = [
            o for o in _pending_objects(session) if id(o) not in flushed and id(o) not in before
        ]
        if others:
            raise DeferredOperationError(
                f"a {name} listener of {', '.join(sorted({m.class_.__name__ for m in listening}))} "
                f"changed {_describe(attributes.instance_state(others[0]))}, another object than "
                "the one being written; replay runs the listener again and would apply that "
                "change twice. Make the change in a before_flush listener instead",
                path=self.path,
            )

    def _remember(
        self,
        dirty: Sequence[InstanceState[Any]],
        by_database: Mapping[InstanceState[Any], Sequence[str]],
        written: Mapping[InstanceState[Any], set[str]],
    ) -> None:
        """Snapshot changed objects for a later rollback (new ones: see :meth:`_snapshot`).

        ``by_database``: columns of these objects the database set as it updated the row;
        ``written``: what this flush wrote of those an unsynchronized update() statement
        may have changed (see STALE). The snapshot marks the columns of either kind that
        this flush did not write as known only at replay.
        """
        mark = self.writer.batches
        for state in dirty:
            if state.obj() is not None:  # else the program dropped it: nothing to show
                plan = plan_for(state.mapper)
                data = state.dict
                values: dict[str, Any] | tuple[Any, ...] = (
                    new_row_values(plan, data)
                    if REF in state.info
                    else {k: data[k] for k in plan.columns if k in data}
                )
                history = state.info.get(SHADOW)
                if history:
                    # Attributes still expired since a checkpoint keep the values of the
                    # snapshot before.
                    values = carried_over(values, snapshot_history(history, plan)[-1], plan)
                unknown = list(by_database.get(state, ()))
                if state in written:
                    stale = state.info.pop(STALE)
                    unknown += [k for k in stale if k not in written[state]]
                    self.stale_unknowns = self.stale_unknowns or bool(unknown)
                if unknown:
                    values = set_unknown(values, unknown, plan)
                self._snapshot(state, mark, values, data, plan)

    def _snapshot(
        self,
        state: InstanceState[Any],
        mark: int,
        values: dict[str, Any] | tuple[Any, ...],
        data: dict[str, Any],
        plan: MapperPlan,
    ) -> None:
        """Remember what the database would hold for an object after batch ``mark``.

        A later rollback shows the object "as reloaded" from it instead of expiring it:
        reloading would query the real database, which has none of what was recorded.
        Related objects (many-to-one targets, members of loaded collections) are held
        weakly: the identity map holds every state strongly, so a strong reference from
        one recorded object's state to another would keep every recorded object alive
        until the block ends. A rollback pins them before SQLAlchemy expires the objects
        (see :meth:`pin_related`).
        """
        links = {
            k: None if data[k] is None else weakref.ref(data[k])
            for k in plan.many_to_one
            if k in data
        }
        members = {k: weak_members(data[k]) for k in plan.collections if k in data}
        history = state.info.get(SHADOW)
        if history is None:
            state.info[SHADOW] = [(mark, values, links, members)]
            return
        if not isinstance(history, list):
            history = state.info[SHADOW] = snapshot_history(history, plan)
        history.append((mark, values, links, members))
        # A rollback never goes back beyond the last checkpoint (commit), so of the
        # entries up to it only the newest can still be needed.
        while len(history) > 1 and history[1][0] <= self.checkpoint:
            del history[0]

    def _note_tables(self, plan: MapperPlan) -> None:
        self.classes.add(plan.class_path)
        for tbl in (*plan.tables, *plan.secondary):
            self.tables.setdefault(str(tbl.fullname), tbl)

    def _insert(
        self, state: InstanceState[Any], ref: int, plan: MapperPlan, data: dict[str, Any]
    ) -> dict[str, Any]:
        """The insert operation of a new object (reads it, changes nothing)."""
        values, refs = self._column_values(state, data, plan.columns)
        for key, value in plan.scalar_defaults:
            if key not in data:
                values[key] = value
        if plan.callable_defaults:
            # Computed here, once, as the flush computes them where the program runs: the
            # journal holds their values, and the block reads them.
            context = _DefaultContext(values)
            computed = self.computed.setdefault(state, {})
            for key, default in plan.callable_defaults:
                if key not in data:
                    try:
                        value = default.arg(context)
                    except AttributeError:
                        # It needs more of the execution context than the row's parameters
                        # (its connection, to query): computed at replay, where it has one.
                        continue
                    values[key] = computed[key] = value
        for key in plan.primary_key:
            if values.get(key, 0) is None:
                del values[key]  # the database assigns it
        links: dict[str, Any] = {}
        added: dict[str, list[Any]] = {}
        # Most targets are new objects of this very flush: their ref is in ``pending``
        # (such a state never has a REF yet), and _target handles the rest.
        pending = self.pending
        for key, many_to_one in plan.relationships:
            if key in plan.query_loaded:
                members = state.attrs[key].history.added
                if members:
                    added[key] = [
                        pending.get(t) or self._target(t, state, key)
                        for t in map(attributes.instance_state, members)
                    ]
                continue
            value = data.get(key)
            if value is None:
                continue
            if many_to_one:
                target = attributes.instance_state(value)
                links[key] = pending.get(target) or self._target(target, state, key)
            elif value:
                targets = [attributes.instance_state(v) for v in collection_adapter(value)]
                added[key] = [pending.get(t) or self._target(t, state, key) for t in targets]
        if not self.stale_collections:
            self._note_foreign_keys(plan, links, (*values, *refs))
        # As _operation builds it, without its keyword arguments: one insert per new object.
        operation: dict[str, Any] = {
            "op": "insert",
            "class": plan.class_path,
            "table": plan.table,
            "ref": ref,
            "values": values,
        }
        if refs:
            operation["refs"] = refs
        if links:
            operation["links"] = links
        if added:
            operation["added"] = added
        return operation

    def _assign_keys(
        self,
        new: Sequence[InstanceState[Any]],
        plans: Sequence[MapperPlan],
        datas: Sequence[dict[str, Any]],
    ) -> None:
        """Give recorded new objects their journal ref and, where the database assigns
        it, a placeholder key, once their batch is on disk."""
        pending = self.pending
        path = str(self.path)
        for state, plan, data in zip(new, plans, datas, strict=True):
            info = state.info
            ref = info[REF] = pending[state]
            info[RECORDED] = path
            for key in plan.primary_key:
                if data.get(key) is None:
                    data[key] = Placeholder(ref, key)

    def _settle_new(
        self,
        new: Sequence[InstanceState[Any]],
        plans: Sequence[MapperPlan],
        datas: Sequence[dict[str, Any]],
        mark: int,
    ) -> None:
        """Leave recorded new objects as a flush would, once their batch is on disk.

        Keys (placeholders until replay), scalar defaults, the first version, foreign keys
        synchronised from many-to-one targets, collections known to hold only what this
        block added, and a first snapshot for a later rollback (see :meth:`_snapshot`).
        """
        if not new:
            return
        self.created.append((mark, list(map(weakref.ref, new))))
        # Every new object has its key (_assign_keys): foreign keys can be synchronised.
        for state, plan, data in zip(new, plans, datas, strict=True):
            computed = self.computed.get(state)
            if computed:
                data.update(computed)
            for key, value in plan.scalar_defaults:
                if key not in data:
                    data[key] = value
            for key, value in plan.server_literals:
                if key not in data:
                    data[key] = value
            if plan.version is not None and data.get(plan.version) is None:
                generator: Any = state.mapper.version_id_generator
                data[plan.version] = generator(None)
            # A column never set reads as NULL afterwards, as after a reload; one the
            # database fills in (a server default, or a Python default that needs the
            # database) is only known at replay: left unloaded, and reading it refused.
            unknown = []
            for key in plan.columns:
                if key not in data:
                    if key in plan.from_database or key in plan.callable_keys:
                        unknown.append(key)
                        data[key] = FROM_DATABASE
                    else:
                        data[key] = None
            weak: list[weakref.ref[Any] | None] = []
            for key in plan.many_to_one:
                target = data.get(key)
                if target is None:
                    weak.append(None)
                    continue
                weak.append(weakref.ref(target))
                # As _sync_foreign_keys does for a relinked object.
                for local, remote in plan.many_to_one_pairs[key]:
                    data[local] = _remote_value(target, remote)
            # A link-table collection not loaded holds what the block put in it, nothing:
            # set it empty. A one-to-many one stays unloaded: loading it finds, through
            # the block's reads, the rows linked to the object by their foreign key.
            for key in plan.link_collections:
                if key not in data:
                    set_committed_value(state.obj(), key, ())
            # The first snapshot in its compact form (see _history): one flat tuple, as
            # most recorded objects are never changed again and the garbage collector
            # walks every container they keep.
            state.info[SHADOW] = (
                mark,
                *plan.column_values(data),
                *weak,
                *[weak_members(data[key]) if key in data else () for key in plan.collections],
            )
            if unknown:
                # As a plain flush expires what the database generated (persistence's
                # _postfetch); reading them is refused (see _hold).
                expire_attributes(state, unknown)
                self._hold(state, unknown)

    def _update(
        self, state: InstanceState[Any], versions: list[tuple[InstanceState[Any], str, Any]]
    ) -> dict[str, Any] | None:
        plan = plan_for(state.mapper)
        attrs = state.attrs
        changed: list[str] = []
        old: dict[str, Any] = {}
        for key in plan.columns:
            history = attrs[key].history
            if history.has_changes():
                changed.append(key)
                if history.deleted:
                    old[key] = _plain(history.deleted[0], state, key, self)
        links: dict[str, Any] = {}
        added: dict[str, list[Any]] = {}
        removed: dict[str, list[Any]] = {}
        for key, many_to_one in plan.relationships:
            history = attrs[key].history
            if not history.has_changes():
                continue
            if many_to_one:
                target = history.added[0] if history.added else None
                links[key] = (
                    None
                    if target is None
                    else self._target(attributes.instance_state(target), state, key)
                )
                # The foreign key columns change with the link: their old values are what
                # replay checks for a conflict, as for any changed column.
                for local, _ in plan.many_to_one_pairs[key]:
                    if local not in old and local in state.dict:
                        old[local] = _plain(state.dict[local], state, local, self)
            else:
                if history.added:
                    added[key] = [
                        self._target(attributes.instance_state(v), state, key)
                        for v in history.added
                    ]
                if history.deleted:
                    removed[key] = [
                        self._target(attributes.instance_state(v), state, key)
                        for v in history.deleted
                    ]
        if any(target is None for target in links.values()):
            self._refuse_clear_and_set(state, plan, links)
        if not (changed or links or added or removed):
            return None
        if state.info.get(FROM_SNAPSHOT):
            # Loaded from a query snapshot, maybe long ago and offline: what the program
            # saw of every column is what replay checks, so a row changed since the
            # snapshot in any column conflicts (SPEC §9.4).
            data = state.dict
            for key in plan.columns:
                if key not in old and key not in changed and key in data:
                    old[key] = _plain(data[key], state, key, self)
        if not self.stale_collections:
            self._note_foreign_keys(plan, links, changed)
        self._note_tables(plan)
        values, refs = self._column_values(state, state.dict, changed)
        if plan.on_update and (changed or links):
            context = _DefaultContext(values)
            for key, update in plan.on_update:
                if key not in changed:
                    value = update.arg(context) if update.is_callable else update.arg
                    values[key] = value
                    if key in state.dict:
                        old[key] = _plain(state.dict[key], state, key, self)
                    versions.append((state, key, value))
        operation = _operation(
            "update",
            plan,
            {"target": self._target(state, None, None), "values": values, "old": old},
            refs=refs,
            links=links,
            added=added,
            removed=removed,
        )
        if plan.version is not None and (changed or links) and plan.version not in changed:
            self._load_version(state, plan)
            current = state.dict.get(plan.version)
            generator: Any = state.mapper.version_id_generator
            new_version = generator(current)
            operation["version"] = [current, new_version]
            versions.append((state, plan.version, new_version))
        missing = [k for k in changed if k not in old]
        if missing and not isinstance(operation["target"], int):
            operation["missing_old"] = (state, missing)
        return operation

    def _refuse_clear_and_set(
        self, state: InstanceState[Any], plan: MapperPlan, links: dict[str, Any]
    ) -> None:
        """Refuse a flush that clears a foreign key through one relationship and sets it
        through another (two relationships owning one column, as in the generic-foreign-key
        pattern, where an object moves between them).

        A plain flush runs both and the row ends with whichever of its dependency steps
        SQLAlchemy happens to order last (NULL or the new parent's key, depending on the
        mapping); recording does not run those steps, so it cannot know which.
        """
        if self.joining is None:
            self.joining = _joining(*self.flushing)
        written = set(self.joining.get(state, ()))
        for key, target in links.items():
            if target is not None:
                written.update(local for local, _ in plan.many_to_one_pairs[key])
        for key, target in links.items():
            if target is not None:
                continue
            both = sorted(local for local, _ in plan.many_to_one_pairs[key] if local in written)
            if both:
                name = state.class_.__name__
                raise DeferredOperationError(
                    f"one flush both clears {name}.{both[0]} (through {name}.{key}) and sets "
                    "it through another relationship that owns the same column; a plain "
                    "flush keeps whichever SQLAlchemy processes last, which recording cannot "
                    "know. Flush (session.flush()) after taking the object out of the first "
                    "relationship and before putting it into the second",
                    path=self.path,
                )

    def _note_foreign_keys(
        self, plan: MapperPlan, links: dict[str, Any], columns: Iterable[str]
    ) -> None:
        """Note a foreign key set without its relationship: collections may be stale."""
        written = set(columns)
        for key, pairs in plan.many_to_one_pairs.items():
            if key not in links and any(local in written for local, _ in pairs):
                self.stale_collections = True
                return

    def _delete(self, state: InstanceState[Any]) -> dict[str, Any]:
        self.stale_collections = True  # the row leaves the collections it was in
        plan = plan_for(state.mapper)
        data = state.dict
        self._load_version(state, plan)
        old = {}
        for key in plan.columns:
            if key in plan.primary_key:
                continue
            if state.modified:
                # A change not flushed yet is not in the row: the row has the old value.
                history = state.attrs[key].history
                if history.deleted:
                    old[key] = _plain(history.deleted[0], state, key, self)
                    continue
                if history.added:
                    continue  # set without being loaded: the row's value is unknown
            if key in data:
                old[key] = _plain(data[key], state, key, self)
        operation = _operation(
            "delete", plan, {"target": self._target(state, None, None), "old": old}
        )
        if plan.version is not None:
            operation["version"] = data.get(plan.version)
        return operation

    def _load_version(self, state: InstanceState[Any], plan: MapperPlan) -> None:
        """Load an expired version counter, as a flush does before its UPDATE or DELETE."""
        if plan.version is None or plan.version in state.dict or state.key is None:
            return
        if REF in state.info:
            return  # created in this block: its counter is in the dict unless dropped
        try:
            getattr(state.obj(), plan.version)
        except SQLAlchemyError as err:
            raise DeferredOperationError(
                f"cannot record the change of {_describe(state)}: its version counter was "
                f"expired and the database cannot be read ({type(err).__name__}); load the "
                "object before changing it",
                path=self.path,
            ) from err

    def _column_values(
        self, state: InstanceState[Any], data: dict[str, Any], keys: Iterable[str]
    ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        values: dict[str, Any] = {}
        refs: dict[str, list[Any]] = {}
        for key in keys:
            if key not in data:
                continue
            value = data[key]
            if type(value) in _PLAIN_TYPES:
                values[key] = value
            elif isinstance(value, Placeholder):
                refs[key] = [value.ref, value.attribute]
            else:
                values[key] = _plain(value, state, key, self)
        return values, refs

    def _target(
        self, state: InstanceState[Any], owner: InstanceState[Any] | None, key: str | None
    ) -> Any:
        ref = state.info.get(REF) or self.pending.get(state)
        if ref is not None:
            return ref
        if state.key is None:
            where = f" (referenced by {_describe(owner)}.{key})" if owner is not None else ""
            raise DeferredOperationError(
                f"{_describe(state)}{where} is not part of the session; add it to the session "
                "so it is recorded too",
                path=self.path,
            )
        return list(state.key[1])

    def _sync_foreign_keys(
        self, state: InstanceState[Any], plan: MapperPlan, links: dict[str, Any]
    ) -> None:
        data = state.dict
        for key, pairs in plan.many_to_one_pairs.items():
            if key not in links:
                continue
            target = data.get(key)
            for local, remote in pairs:
                data[local] = None if target is None else _remote_value(target, remote)

    def _fill_old_values(self, operations: list[dict[str, Any]]) -> None:
        """Load from the database the old values a flush would overwrite but that were never loaded.

        Needed for conflict detection at replay; one SELECT per affected row, only for
        attributes set without having been loaded (expired or deferred ones).
        """
        for operation in operations:
            if "missing_old" not in operation:
                continue
            state, missing = operation.pop("missing_old")
            # A row this block already changed has the block's values as old values:
            # the journal's own earlier write is what replay will find there.
            history = state.info.get(SHADOW)
            if history:
                values = snapshot_history(history, plan_for(state.mapper))[-1][1]
                if isinstance(values, dict):
                    for key in [k for k in missing if k in values]:
                        if values[key] is not FROM_DATABASE:
                            operation["old"][key] = values[key]
                        # else only replay's earlier write knows it: nothing to compare
                        missing.remove(key)
            if not missing:
                continue
            try:
                found = self._database_values(state, missing)
            except SQLAlchemyError as err:
                raise DeferredOperationError(
                    f"cannot record the update of {_describe(state)}: its old values of "
                    f"{', '.join(missing)} were never loaded and the database cannot be read "
                    f"({type(err).__name__}); load the object before changing it",
                    path=self.path,
                ) from err
            operation["old"].update(found)

    def _database_values(self, state: InstanceState[Any], keys: Sequence[str]) -> dict[str, Any]:
        """Read columns of a database row the program has not loaded (one SELECT)."""
        mapper = state.mapper
        # Through the mapped attributes, not the bare columns: for joined inheritance the
        # ORM joins the subclass table to the base table holding the primary key, where
        # bare columns would give a cartesian product and another row's value.
        columns = [mapper.attrs[k].class_attribute for k in keys]
        assert state.key is not None
        criteria = [
            mapper.get_property_by_column(c).class_attribute == v
            for c, v in zip(mapper.primary_key, state.key[1], strict=True)
        ]
        self.reads.reading += 1
        try:
            row = (
                self.session.connection(bind_arguments={"mapper": mapper})
                .execute(select(*columns).where(*criteria))
                .first()
            )
        finally:
            self.reads.reading -= 1
        return {} if row is None else dict(zip(keys, row, strict=True))

    # -- ORM statements -------------------------------------------------------------------

    def _autoflush(self) -> None:
        # As the ORM autoflushes before executing a statement (not under no_autoflush,
        # nor from a before_flush listener, while the session is already flushing).
        session = self.session
        if session.autoflush and not session_is_flushing(session) and not session_is_clean(session):
            session.flush()

    def record_statement(self, orm_execute_state: ORMExecuteState) -> Any:
        """Record an ORM update()/delete()/insert() instead of executing it."""
        operation = dml.describe(orm_execute_state, self.path)
        mapper = orm_execute_state.bind_mapper
        if mapper is not None:
            self._note_tables(plan_for(mapper))
        if not self.session.in_transaction():
            # As for a flush: the transaction is what a later rollback() rewinds to.
            self.session.begin()
        self._autoflush()
        before = self.writer.position()
        self.io(self.writer.append, [operation])
        self.handle.operations = self.writer.operations
        unsynchronized = orm_execute_state.execution_options.get("synchronize_session") is False
        if orm_execute_state.is_update and mapper is not None and unsynchronized:
            _mark_stale(self.session, mapper, operation, self.writer.batches)
        try:
            dml.synchronize(orm_execute_state)
        except TypeError as err:
            # Its criteria compare a key the database assigns at replay by order (the
            # ORM's evaluation of them on the session's objects): which of the block's
            # new rows it changes is only known at replay. Not recorded after all.
            self._rewind_journal(before)
            raise DeferredOperationError(
                f"cannot record {'update' if orm_execute_state.is_update else 'delete'}() "
                f"of {mapper.class_.__name__ if mapper else 'rows'}: its criteria "
                f"cannot be evaluated on the objects the block created ({err}), so the "
                "session could not show its effect. Execute it with "
                "execution_options(synchronize_session=False) and expire the objects, or "
                "before adding them",
                path=self.path,
            ) from None
        if mapper is not None and operation["op"] == "bulk_insert":
            # Its rows are known: queries none of them can match are still answered.
            plan = plan_for(mapper)
            self.reads.note_inserted(
                self.writer.batches,
                mapper,
                [str(t.fullname) for t in plan.tables],
                operation["rows"],
            )
        elif mapper is not None:
            self.reads.note_statement(
                self.writer.batches,
                [str(t.fullname) for t in plan_for(mapper).written_tables],
                dml.row_effect(orm_execute_state),
            )
        return dml.empty_result()


# -- helpers --------------------------------------------------------------------------------

JournalIO = Callable[..., Any]
"""Runs a blocking journal call: ``io(function, *args, **kwargs)`` returns its result."""


def _call(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


def journal_io(session: Session) -> JournalIO:
    """How ``session`` runs blocking journal file I/O (fsync): directly, unless the async
    session installed a runner that keeps the event loop free (``_journal_io``)."""
    runner: JournalIO | None = getattr(session, "_journal_io", None)
    return runner or _call


def _operation(
    kind: str, plan: MapperPlan, fields: dict[str, Any], **optional: Any
) -> dict[str, Any]:
    """An operation dictionary; optional parts are left out when empty."""
    operation = {"op": kind, "class": plan.class_path, "table": plan.table, **fields}
    for key, value in optional.items():
        if value:
            operation[key] = value
    return operation


def _unstorable(operations: Sequence[dict[str, Any]], pickles: bool) -> str:
    """Name the first recorded value the journal's codec cannot store."""
    for operation in operations:
        for part in ("values", "old"):
            for key, value in operation.get(part, {}).items():
                try:
                    encode(value, pickles=pickles)
                except TypeError:
                    return f"{operation['class']}.{key} ({operation['table']})"
    return "a recorded value"


def has_flushed_changes(session: Session) -> bool:
    """Whether the session's transaction holds writes flushed but not yet committed
    (a JournalingSession keeps track; any other session is taken at its word: none)."""
    return bool(getattr(session, "_flushed_changes", False))


def _describe(state: InstanceState[Any] | None) -> str:
    if state is None:
        return "an object"
    return f"{state.class_.__name__} object at {id(state.obj()):#x}"


def _plain(value: Any, state: InstanceState[Any], key: str, recorder: Recorder) -> Any:
    if isinstance(value, ClauseElement):
        raise DeferredOperationError(
            f"{_describe(state)}.{key} is set to a SQL expression ({value}); a deferred block "
            "records values, and the expression's result is only known to the database. "
            "Assign a Python value instead",
            path=recorder.path,
        )
    if value is FROM_DATABASE or isinstance(value, UnknownUntilReplay):
        # Never into the journal: the marker of a value only replay knows would be stored
        # as a pickle, and compared or written as if it were the value.
        raise DeferredOperationError(
            f"{_describe(state)}.{key}: its value is set by the database when replay writes "
            "the row, and cannot be recorded; give it a value in the program",
            path=recorder.path,
        )
    return value


def _alembic_revision(session: Session) -> str | None:
    # A separate, short-lived connection: the session's own transaction must not depend
    # on whether the database is reachable (offline recording) or has Alembic tables.
    try:
        bind = session.get_bind()
        engine = bind.engine if isinstance(bind, sqlalchemy.Connection) else bind
        with engine.connect() as conn:
            return read_alembic_revision(conn)
    except (SQLAlchemyError, OSError):
        return None


def _forget_insert(state: InstanceState[Any]) -> None:
    """Take the journal's marks and placeholder key off an object whose insert was discarded."""
    info = state.info
    info.pop(RECORDED, None)
    info.pop(SHADOW, None)
    number = info.pop(REF, None)
    if state.obj() is not None:
        data = state.dict
        for key in plan_for(state.mapper).primary_key:
            value = data.get(key)
            if isinstance(value, Placeholder) and value.ref == number:
                del data[key]


def _pending_objects(session: Session) -> list[Any]:
    """The objects a flush would write now: new, deleted and changed ones."""
    return [*session.new, *session.deleted, *(o for o in session.dirty if session.is_modified(o))]


class _DefaultContext:
    """What a context-sensitive Python default reads: the row's parameters so far (and
    nothing else: one that needs more raises AttributeError, see Recorder._insert)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.current_parameters = values

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


def _remote_value(target: object, key: str) -> Any:
    """The key value a foreign key takes from ``target``, loaded if it was expired.

    A primary key comes from the identity key, with no load: the row may be one whose
    other columns an ORM statement of the block changed, which the block cannot read.
    """
    state = attributes.instance_state(target)
    data = state.dict
    if key in data:
        return data[key]
    plan = plan_for(state.mapper)
    if state.key is not None and key in plan.primary_key:
        return state.key[1][plan.primary_key.index(key)]
    return getattr(target, key)


def _gone(obj: object) -> bool:
    state = attributes.instance_state(obj)
    return bool(state.was_deleted or state.deleted)


def _snapshot_batch(state: InstanceState[Any]) -> int:
    """The batch of an object's last recorded snapshot (0: none)."""
    history = state.info.get(SHADOW)
    if not history:
        return 0
    return int(snapshot_history(history, plan_for(state.mapper))[-1][0])


def _flushed_values(state: InstanceState[Any]) -> dict[str, Any]:
    """An object's column values as of its last recorded flush (its last snapshot)."""
    history = state.info.get(SHADOW)
    if not history:
        return {}
    plan = plan_for(state.mapper)
    values = snapshot_history(history, plan)[-1][1]
    return values if isinstance(values, dict) else dict(zip(plan.columns, values, strict=True))


def _adopt(old: InstanceState[Any], new: InstanceState[Any]) -> None:
    """Move the journal's marks of an object to the copy that replaces it in the session."""
    for key in (REF, RECORDED, SHADOW, PINNED):
        if key in old.info:
            new.info[key] = old.info.pop(key)


def _removed_orphans(state: InstanceState[Any]) -> Iterator[InstanceState[Any]]:
    """Persistent members removed from ``state``'s delete-orphan collections, now orphans."""
    for rel in state.mapper.relationships:
        if not rel.cascade.delete_orphan or not rel.uselist:
            continue
        for member in state.attrs[rel.key].history.deleted:
            member_state = attributes.instance_state(member)
            if member_state.key is not None and is_orphan(member_state):
                yield member_state


def _link_changes(
    new: Sequence[InstanceState[Any]],
    changed: Sequence[InstanceState[Any]],
    deleted: Sequence[InstanceState[Any]],
) -> Iterator[tuple[str, list[Any]]]:
    """Per link table, the identity keys of the rows whose links this flush changes."""
    gone = set(deleted)
    for state in (*new, *changed, *deleted):
        mapper = state.mapper
        for key in plan_for(mapper).link_collections:
            history = state.attrs[key].history
            members = [*history.added, *history.deleted]
            if members or state in gone:
                table = str(mapper.relationships[key].secondary.fullname)  # type: ignore[union-attr]
                yield table, [state.key, *(attributes.instance_state(m).key for m in members)]


def _joining(
    new: Sequence[InstanceState[Any]], dirty: Sequence[InstanceState[Any]]
) -> dict[InstanceState[Any], set[str]]:
    """Changed objects that join a one-to-many collection in this flush, with the foreign
    key attributes the flush sets on them from their new parent."""
    members = set(dirty)
    joining: dict[InstanceState[Any], set[str]] = {}
    for state in (*new, *dirty):
        pairs_of = plan_for(state.mapper).one_to_many_pairs
        if not pairs_of:
            continue
        for key, pairs in pairs_of.items():
            for member in state.attrs[key].history.added:
                if member is None:
                    continue
                member_state = attributes.instance_state(member)
                if member_state in members:
                    joining.setdefault(member_state, set()).update(r for _, r in pairs)
    return joining


def _sync_members(
    new: Sequence[InstanceState[Any]],
    plans: Sequence[MapperPlan],
    datas: Sequence[dict[str, Any]],
    changed: Sequence[InstanceState[Any]],
    deleted: Sequence[InstanceState[Any]],
    created: Container[InstanceState[Any]],
) -> list[InstanceState[Any]]:
    """Set the foreign keys of one-to-many members as a flush does; return the members
    not ``created`` in this flush (their rows change without a change of their own).

    The members' own rows are written at replay from the parent's recorded collection;
    this makes the program see the keys a direct flush would have set on them.
    """
    gone = set(deleted)
    removals: list[tuple[InstanceState[Any], tuple[tuple[str, str], ...]]] = []
    additions: list[tuple[InstanceState[Any], InstanceState[Any], tuple[tuple[str, str], ...]]] = []
    for state, plan, data in zip(new, plans, datas, strict=True):
        for key, pairs in plan.one_to_many_pairs.items():
            value = data.get(key)
            if key in plan.collections and value is not None:
                # A new object's loaded collection: every member is an addition.
                additions.extend(
                    (attributes.instance_state(m), state, pairs) for m in collection_adapter(value)
                )
                continue
            for member in state.attrs[key].history.added:
                if member is not None:
                    additions.append((attributes.instance_state(member), state, pairs))
    for state in changed:
        pairs_of = plan_for(state.mapper).one_to_many_pairs
        if not pairs_of:
            continue
        attrs = state.attrs
        for key, pairs in pairs_of.items():
            # The history, not the value: it is the same for a list, a set, a keyed dict,
            # a one-to-one scalar or a dynamic relationship (all added, for a new object).
            history = attrs[key].history
            for member in history.deleted:
                if member is not None:
                    removals.append((attributes.instance_state(member), pairs))
            for member in history.added:
                if member is not None:
                    additions.append((attributes.instance_state(member), state, pairs))
    moved: list[InstanceState[Any]] = []
    for member, pairs in removals:
        if member not in gone and member.obj() is not None:
            for _, remote in pairs:
                member.dict[remote] = None
            moved.append(member)
    for member, parent, pairs in additions:
        if member not in gone:
            for local, remote in pairs:
                member.dict[remote] = parent.dict.get(local)
            if member not in created:
                moved.append(member)
    return moved


def _mark_stale(
    session: Session, mapper: Mapper[Any], operation: dict[str, Any], batch: int
) -> None:
    """Note, on the loaded objects of ``mapper``, the attributes an unsynchronized
    update() statement (recorded as ``batch``) may have changed (see STALE)."""
    keys = set(operation.get("values", ()))
    for row in operation.get("rows", ()):
        keys.update(row)
    for state in session.identity_map.all_states():
        if state.mapper.isa(mapper):
            loaded = keys.intersection(state.dict)
            if loaded:
                info = state.info
                info[STALE] = {**dict.fromkeys(loaded, batch), **info.get(STALE, {})}


def _forget_stale(session: Session, batches: int) -> None:
    """Forget what unsynchronized statements after batch ``batches`` may have changed: a
    rollback discarded them."""
    for state in session.identity_map.all_states():
        info = existing_info(state)
        stale = None if info is None else info.get(STALE)
        if info is not None and stale:
            kept = {k: b for k, b in stale.items() if b <= batches}
            if kept:
                info[STALE] = kept
            else:
                del info[STALE]


def _expire_expressions(
    new: Sequence[InstanceState[Any]],
    dirty: Sequence[InstanceState[Any]],
    mappers: Iterable[Mapper[Any]],
) -> None:
    """Expire the column_property() expressions of the objects a flush wrote, as
    SQLAlchemy's flush does (persistence._finalize_insert_update_commands, with its rule
    for expire_on_flush and deferred ones): loading one computes it again from what the
    journal holds (BlockReads.answer)."""
    if not any(plan_for(m).expressions for m in mappers):
        return
    for state in (*new, *dirty):
        expressions = plan_for(state.mapper).expressions
        if not expressions or state.obj() is None:
            continue
        data = state.dict
        keys = state.unmodified_intersection(
            p.key
            for p in expressions
            if (p.expire_on_flush and (not p.deferred or p.key in data))
            or (not p.expire_on_flush and not p.deferred and p.key not in data)
        )
        if keys:
            expire_attributes(state, keys)


def _forget_recorded_objects(session: Session) -> None:
    """Take every object created in the block out of the session, keeping its values."""
    states = [s for s in session.identity_map.all_states() if REF in s.info]
    if states:
        expunge_states(session, states)


def refuse_if_recorded(session: Session, instance: object) -> None:
    """Raise if ``instance`` was recorded into a journal and is being added to ``session``.

    Adding it back to the session that is still recording that journal is fine.
    """
    # attributes.instance_state looked up at each call, here and throughout this module:
    # sqlalchemy.ext.instrumentation replaces it once a class uses custom instrumentation
    # (its state is not in _sa_instance_state), so a name bound at import would miss it.
    state = attributes.instance_state(instance)  # before_attach only sees mapped instances
    info = existing_info(state)  # no info dictionary for every object attached
    path = None if info is None else info.get(RECORDED)
    if path is None:
        return
    recorder = getattr(session, "_recorder", None)
    if recorder is not None and str(recorder.path) == path:
        return
    raise DeferredOperationError(
        f"{_describe(state)} was recorded into journal {path}; adding it to a session would "
        "write it a second time. Replay the journal instead, or create a new object",
        path=path,
    )


# -- event wiring ---------------------------------------------------------------------------


def install(session: Session) -> None:
    """Register the recorder's listeners on ``session`` (a JournalingSession)."""
    event.listen(session, "after_begin", _after_begin)
    event.listen(session, "before_flush", _before_flush)
    event.listen(session, "after_transaction_create", _after_transaction_create)
    event.listen(session, "after_rollback", _after_rollback)
    event.listen(session, "after_commit", _after_commit)
    event.listen(session, "after_soft_rollback", _after_soft_rollback)


def listen_last(session: Session) -> None:
    """Move the recorder's before_flush listener behind any added since it was."""
    if session_is_clean(session):
        return  # nothing to flush: no listener runs (every autoflush comes through here)
    event.remove(session, "before_flush", _before_flush)
    event.listen(session, "before_flush", _before_flush)


def _recorder(session: Session) -> Recorder | None:
    return getattr(session, "_recorder", None)


def _after_begin(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        guard_connection(recorder, connection)


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        recorder.record_flush()


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        recorder.transaction_created(transaction)


def _after_rollback(session: Session) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        recorder.pin_related()


def _after_commit(session: Session) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        recorder.checkpointed()


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    recorder = _recorder(session)
    if recorder is not None:
        recorder.rolled_back(previous_transaction)


def _do_orm_execute(orm_execute_state: ORMExecuteState) -> Any:
    recorder = _recorder(orm_execute_state.session)
    if recorder is None:
        return None
    if orm_execute_state.is_update or orm_execute_state.is_delete or orm_execute_state.is_insert:
        return recorder.record_statement(orm_execute_state)
    if orm_execute_state.is_select:
        # Answered with the block's writes, or None: the database's answer is the block's
        # (a placeholder key in it is answered here too).
        return recorder.reads.answer(orm_execute_state)
    dml.refuse_placeholders(orm_execute_state, recorder.path)
    return None
