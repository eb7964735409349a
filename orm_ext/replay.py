"""Replaying a journal: ``reconnect_and_commit`` (SPEC §5).

The journal is verified, its schema checked and its id claimed in the ledger, then each
recorded batch is applied to ORM objects and flushed, so SQLAlchemy's unit of work orders
the rows and synchronises foreign keys exactly as it did for the recording flush; runs
of plain inserts go through bulk ``INSERT ... RETURNING`` instead (see
:mod:`orm_ext.bulk`). Everything happens in one transaction on one connection.

Replay streams (SPEC §5.9): the whole journal is verified first, then decoded and
applied one batch at a time; what outlives a batch is the key of each new object, kept
compactly (:mod:`orm_ext.replay_keys`), since later operations name it by its ref.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

# attributes.instance_state is looked up at each call, not imported by name:
# sqlalchemy.ext.instrumentation replaces it once a class uses custom instrumentation.
from sqlalchemy.orm import (
    Mapper,
    Session,
    attributes,
    class_mapper,
    configure_mappers,
    registry,
)
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.collections import collection_adapter
from sqlalchemy.orm.exc import UnmappedClassError

from journal import Batch, Journal, JournalCorruptError, JournalError, JournalSignatureError
from orm_ext import bulk, dml, replay_claim, replay_events
from orm_ext.conflicts import (
    ConflictHandler,
    ConflictPolicy,
    Conflicts,
    check_policy,
    conflict,
    differences,
)
from orm_ext.exc import (
    ConflictKind,
    DeferredOperationError,
    ReplayConflictError,
    SchemaMismatchError,
)
from orm_ext.fingerprint import describe_table, diff_schemas, read_alembic_revision
from orm_ext.mapper_plan import plan_for
from orm_ext.operations import OperationChecker, check_meta
from orm_ext.recording import has_flushed_changes
from orm_ext.references import Placeholder
from orm_ext.replay_keys import Identities, NewKeys, pk_attributes
from orm_ext.sa_private import (
    all_registries,
    sqlite_driver_connection,
    without_session_listeners,
)

__all__ = ["ConflictHandler", "ConflictPolicy", "ProgressCallback", "Replay", "ReplayResult"]

ProgressCallback = Callable[[int, int], object]

_log = logging.getLogger("orm_ext.replay")


@dataclass
class ReplayResult:
    """What ``reconnect_and_commit`` did.

    :ivar journal_id: the journal's id (the ledger's key).
    :ivar applied: False when the database already had this journal (nothing changed).
    :ivar operations: number of operations in the journal.
    :ivar identities: each placeholder of the journal → the value the database assigned.
    :ivar conflicts: the conflicts skipped or overwritten (each a
        :class:`ReplayConflictError` saying its kind and what became of it).
    :ivar duration: seconds spent.
    :ivar busy: with ``if_busy="skip"``, another replayer was applying this journal at
        that moment, so this call left it alone (``applied`` is False).
    :ivar dry_run: the result of ``dry_run=True``: everything was applied and then rolled
        back, and ``applied`` says whether a replay would apply the journal (False: the
        database already has it).
    """

    journal_id: str
    applied: bool
    operations: int
    identities: Mapping[Placeholder, Any] = field(default_factory=dict)
    conflicts: list[ReplayConflictError] = field(default_factory=list)
    duration: float = 0.0
    busy: bool = False
    dry_run: bool = False


class Replay:
    """Applies one verified journal through one session; see :func:`reconnect_and_commit`."""

    def __init__(
        self,
        session: Session,
        journal: Journal,
        on_conflict: ConflictPolicy | ConflictHandler,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.session = session
        self.journal = journal
        self.path = str(journal.path)
        self.conflicts = Conflicts(on_conflict)
        self.progress = progress
        # Every new object's key, kept to the end: later operations name it by its ref.
        self.identities = NewKeys(journal.header.operation_count or 0)
        self.batch_objects: dict[int, object] = {}
        # New objects whose insert a conflict left out: what refers to them conflicts too.
        self.left_out: set[int] = set()
        self._mappers: dict[str, Mapper[Any]] = {}
        self._pending_links: list[tuple[int, object, Mapper[Any], dict[str, Any]]] = []
        self._sequence: int = 0
        self.deleted_here: set[Any] = set()  # identity keys this replay deleted
        self._op: dict[str, Any] = {}
        self._checker = OperationChecker(self.path, self.mapper)

    # -- resolving what the journal names -------------------------------------------------

    def mapper(self, path: str) -> Mapper[Any]:
        """Return the mapper of a class named ``module:QualName`` in the journal.

        Only classes of modules this process has already imported are considered: a
        journal never makes the replaying process import (run) anything.
        """
        found = self._mappers.get(path)
        if found is not None:
            return found
        module_name, _, qualname = path.partition(":")
        module = sys.modules.get(module_name)
        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, None)
        try:
            if isinstance(target, type):
                found = class_mapper(target)
            else:
                found = self._registered_mapper(path, module, module_name, qualname)
        except UnmappedClassError:
            raise SchemaMismatchError(
                f"journal {self.path} records {path}, which is not a mapped class in this "
                "process; import the application's models before replaying (CLI: --models)",
                differences=[
                    f"class {path} is not a mapped class in this process (import the "
                    "application's models before replaying; CLI: --models)"
                ],
                path=self.path,
            ) from None
        self._mappers[path] = found
        return found

    def _registered_mapper(
        self, path: str, module: Any, module_name: str, qualname: str
    ) -> Mapper[Any]:
        """Find a class that is no module attribute through the registries of the module.

        Classes made while mapping (``type()`` inside a ``declared_attr``) are reachable
        only through their registry: look through the registries of the mapped classes
        and declarative bases the (already imported) module holds.
        """
        # Classes a mapping hook makes (a versioned-history table's class, created when
        # mappers are configured) exist only once the mappers are configured.
        configure_mappers()
        registries: list[registry] = []
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, registry):
                candidate: Any = value
            elif isinstance(value, type):
                mapped: Any = sa_inspect(value, raiseerr=False)
                candidate = (
                    mapped.registry
                    if isinstance(mapped, Mapper)
                    else getattr(value, "registry", None)
                )
            else:
                continue
            if isinstance(candidate, registry) and all(candidate is not r for r in registries):
                registries.append(candidate)
        matches = _named_mappers(registries, module_name, qualname)
        if not matches:
            # Made by a helper module (``type()`` in a mixin's hook), whose own namespace
            # holds no registry: any registry of this process.
            matches = _named_mappers(all_registries(), module_name, qualname)
        if not matches:
            raise UnmappedClassError(type(None))
        if len(matches) > 1:
            names = " and ".join(
                sorted(f"one mapped to {m.local_table.description}" for m in matches)
            )
            raise SchemaMismatchError(
                f"journal {self.path} records {path}, which names more than one mapped class "
                f"in this process ({names}); give them distinct names",
                differences=[f"class {path} is ambiguous: {names}"],
                path=self.path,
            )
        return matches.pop()

    def resolve_value(self, value: Any) -> Any:
        """Replace placeholders (also inside an IN list) by the keys the database assigned."""
        if isinstance(value, Placeholder):
            return self.key_value(value.ref, value.attribute)
        if isinstance(value, list) and any(isinstance(v, Placeholder) for v in value):
            return [self.resolve_value(v) for v in value]
        return value

    def key_of(self, ref: int) -> dict[str, Any]:
        """``{attribute: value}`` of the key new object ``ref`` got (flushing it if need be)."""
        key = self.identities.key(ref)
        if key is None:
            if ref in self.left_out:
                raise _LeftOut(ref)
            obj = self.batch_objects.get(ref)
            if obj is None:
                raise DeferredOperationError(
                    f"journal {self.path} refers to new object #{ref} before it was recorded; "
                    "the journal is inconsistent",
                    path=self.path,
                )
            self.session.flush()
            self._keep_key(ref, obj)
            key = self.identities.key(ref)
            assert key is not None
        return key

    def key_value(self, ref: int, attribute: str) -> Any:
        """``key_of(ref)[attribute]``, without building the key's dict when it is kept."""
        try:
            return self.identities.value(ref, attribute)
        except KeyError:
            return self.key_of(ref)[attribute]

    def _keep_key(self, ref: int, obj: object) -> None:
        state = attributes.instance_state(obj)
        mapper = state.mapper
        values = tuple(state.dict.get(k) for k in pk_attributes(mapper))
        self.identities.add(ref, mapper, values)

    def target(self, target: Any, mapper: Mapper[Any], *, lock: bool) -> object | None:
        """Return the object a recorded target names (None if its row is gone)."""
        exact = lock  # an update/delete names the row's own class; a link its base
        if isinstance(target, int):
            obj = self.batch_objects.get(target)
            if obj is not None:
                return obj
            self.key_of(target)
            mapper = self.identities.mapper(target)
            pk = self.identities.values(target)
            exact = True
        else:
            pk = tuple(target)
        if lock and not self._lock_row(mapper, pk):
            return None
        if exact and any(m.concrete for m in mapper.self_and_descendants):
            return self._own_table_row(mapper, pk)
        return self.session.get(mapper.class_, pk)

    def _lock_row(self, mapper: Mapper[Any], pk: tuple[Any, ...]) -> bool:
        """Lock the row of ``pk`` (FOR UPDATE) through Core; False if it is gone.

        Not through ``Session.get(..., with_for_update=True)``: PostgreSQL refuses FOR
        UPDATE on the outer joins of ``lazy="joined"`` relationships and on the UNION of
        a concrete hierarchy. The mapped table(s) of the class alone (a joined subclass's
        inner join) hold exactly the rows the update or delete writes.
        """
        connection = self.session.connection()
        if connection.dialect.name == "sqlite":
            return True  # no row locks: SQLite already serialises writers
        statement = (
            select(*mapper.primary_key)
            .select_from(mapper.persist_selectable)
            .where(*[column == value for column, value in zip(mapper.primary_key, pk, strict=True)])
            .with_for_update()
        )
        return connection.execute(statement).first() is not None

    def _own_table_row(self, mapper: Mapper[Any], pk: tuple[Any, ...]) -> object | None:
        """Load the row of ``pk`` from the class's own table in a concrete hierarchy.

        ``Session.get`` would read the hierarchy's polymorphic UNION, where each concrete
        table repeats the keys of the others.
        """
        table = mapper.local_table
        columns: list[Any] = [table]
        on = mapper.polymorphic_on
        if on is not None and table.corresponding_column(on) is None:
            columns.append(literal(mapper.polymorphic_identity).label(on.key))
        statement = select(*columns).where(
            *[column == value for column, value in zip(mapper.primary_key, pk, strict=True)]
        )
        return self.session.scalars(select(mapper.class_).from_statement(statement)).first()

    # -- applying operations --------------------------------------------------------------

    def apply(self) -> None:
        """Apply every batch: one unit of work per recorded flush, in order.

        Every operation is checked before its batch is applied, and the journal must end
        where its seal says: a journal that streams other operations than were verified is
        refused before the transaction commits.
        """
        applied = 0
        expected = self.journal.header.operation_count
        total = expected or 0
        # Asked once: a disabled logger costs the loop nothing (SPEC §7, logging).
        debug = _log.isEnabledFor(logging.DEBUG)
        isolate = self.conflicts.may_skip_constraints
        # "refuse": a pickled value is decoded only from a journal verified with the key
        # (or with allow_dill); reconnect_and_commit refuses such a journal up front when
        # its seal admits to pickles, and this catches one whose seal does not.
        for batch in self.journal.batches(pickles="refuse"):
            for sequence, operation in enumerate(batch.operations, start=batch.first_sequence):
                self._checker.check(sequence, operation)
            if isolate:
                self._apply_batch_or_each(batch)
            else:
                self._apply_batch(batch)
            applied += len(batch.operations)
            if debug:
                _log.debug(
                    "journal %s: batch %d applied, %d operation(s), %d of %d",
                    self.path,
                    batch.number,
                    len(batch.operations),
                    applied,
                    total,
                )
            if self.progress is not None:
                self.progress(min(applied, total), total)
        if self.progress is not None and applied == 0:
            self.progress(0, total)  # a journal of no operations: still told where it ends
        if applied != expected:
            raise JournalCorruptError(
                f"journal {self.path}: replay applied {applied} operation(s) but the seal "
                f"says {expected}; the file was altered: nothing was applied",
                path=self.path,
            )

    def _apply_batch(self, batch: Batch) -> None:
        first, last = batch.first_sequence, batch.first_sequence + len(batch.operations) - 1
        where = (
            f"operation {first} (batch {batch.number})"
            if first == last
            else f"batch {batch.number} (operations {first}-{last})"
        )
        try:
            self._run_batch(batch)
        except JournalError:
            raise
        except (TypeError, ValueError, LookupError, AttributeError) as err:
            # Every operation passed OperationChecker, but a value can still be unusable
            # where it is applied (a key of the wrong arity, a link to a row of another
            # class): still the journal's content, never a traceback.
            if self._op:
                where = f"operation {self._sequence} ({self._op['op']} of {self._op['table']})"
            raise JournalCorruptError(
                f"journal {self.path}: {where} cannot be applied ({type(err).__name__}: "
                f"{err}); nothing was applied. The journal is malformed (if orm-journal "
                "recorded it as it is, report this as a bug)",
                path=self.path,
            ) from err
        except SQLAlchemyError as err:
            if isinstance(err, DBAPIError) and err.connection_invalidated:
                raise
            if self._op and len(batch.operations) > 1 and not self.session.new:
                where = f"operation {self._sequence} ({self._op['op']} of {self._op['table']})"
            raise _failed(self.path, where, err) from err
        self._keep_batch_keys()

    def _run_batch(self, batch: Batch) -> None:
        for run in bulk.plan_batch(self, batch):
            if run.bulk is not None:
                # Kept group by group: a later group's rows link to an earlier group's keys.
                for mapper, refs, keys in run.bulk.execute(self):
                    self.identities.add_ints(refs, mapper, keys)
            else:
                for sequence, operation in run.operations:
                    self._apply_one(sequence, operation)
        self._link_pending()
        self.session.flush()

    def _keep_batch_keys(self) -> None:
        for ref, obj in self.batch_objects.items():
            self._keep_key(ref, obj)
        # Objects of earlier batches are only needed again by key: let them go.
        self.batch_objects.clear()
        self._op = {}

    def _apply_batch_or_each(self, batch: Batch) -> None:
        """Apply a batch in a savepoint; on a constraint conflict, one operation at a time.

        Used when constraint conflicts may be left out (``on_conflict="skip"`` or a
        callable): the batch runs as usual inside a SAVEPOINT, so the fast path keeps its
        bulk statements. Only a batch the database refuses is rolled back to the
        savepoint and applied again operation by operation, each in a savepoint of its
        own, so that the operation that hits the constraint is the one decided about.
        """
        mark = self.conflicts.mark()
        nested = self.session.begin_nested()
        try:
            self._apply_batch(batch)
        except DeferredOperationError as err:
            if not isinstance(err.__cause__, IntegrityError | _LeftOut):
                raise
            nested.rollback()
            self.conflicts.undo(mark)
            self._forget_batch(batch)
            self._apply_each(batch, err)
            return
        except _LeftOut:
            nested.rollback()
            self.conflicts.undo(mark)
            self._forget_batch(batch)
            self._apply_each(batch, None)
            return
        nested.commit()

    def _forget_batch(self, batch: Batch) -> None:
        """Drop what a batch rolled back to its savepoint had noted of its new objects."""
        for op in batch.operations:
            if op["op"] == "insert":
                self.identities.forget(op["ref"])
        self.batch_objects.clear()
        self._pending_links.clear()
        self._op = {}

    def _apply_each(self, batch: Batch, failure: Exception | None) -> None:
        for sequence, op in enumerate(batch.operations, start=batch.first_sequence):
            nested = self.session.begin_nested()
            try:
                self._apply_one(sequence, op)
                self._link_pending()
                self.session.flush()
            except (IntegrityError, _LeftOut) as err:
                nested.rollback()
                self._constraint_conflict(sequence, op, err)
                continue
            except (JournalError, SQLAlchemyError, TypeError, ValueError, LookupError) as err:
                # The operations of this batch refer to each other (links to objects
                # inserted later in it): they can only be applied together.
                raise DeferredOperationError(
                    f"journal {self.path}: batch {batch.number} hits a constraint "
                    f"({failure or err}) and its operations cannot be applied one at a "
                    "time, so the operation to leave out cannot be told apart. Nothing was "
                    "applied",
                    path=self.path,
                ) from err
            nested.commit()
            self._keep_batch_keys()

    def _constraint_conflict(self, sequence: int, op: dict[str, Any], err: Exception) -> None:
        """Decide an operation the database refused, or one naming a row left out before."""
        self.batch_objects.pop(op.get("ref", -1), None)
        self._pending_links.clear()
        self._op = {}
        target = op.get("target")
        key: list[Any]
        kind: ConflictKind
        if isinstance(err, _LeftOut):
            kind = "constraint" if op["op"] == "insert" else "notfound"
            what = f"it refers to new row #{err.ref}, whose insert was left out"
        else:
            kind = "constraint"
            detail = getattr(err, "orig", None) or err
            lines = str(detail).strip().splitlines()
            what = f"the database refuses it ({type(detail).__name__}: {lines[0] if lines else ''})"
        if isinstance(target, list):
            key = target
        else:
            # A row new in this journal is named by its placeholder: it has no key yet.
            ref = target if isinstance(target, int) else op["ref"]
            key = [Placeholder(ref, a) for a in pk_attributes(self.mapper(op["class"]))]
        error = conflict(self.path, sequence, op, key, kind, what)
        self.conflicts.resolve(error)  # raises unless skipped: a constraint cannot be overwritten
        if op["op"] == "insert":
            self.left_out.add(op["ref"])

    def _apply_one(self, sequence: int, op: dict[str, Any]) -> None:
        self._sequence, self._op = sequence, op
        kind = op["op"]
        mapper = self.mapper(op["class"])
        if kind == "insert":
            obj = mapper.class_manager.new_instance()
            # Recorded values already went through the application's attribute events
            # (validators) when they were set; a pending object's dict is what its INSERT
            # reads, so writing it directly keeps those events from running twice.
            data = attributes.instance_state(obj).dict
            for key, value in op["values"].items():
                data[key] = self.resolve_value(value)
            for key, (ref, attribute) in op.get("refs", {}).items():
                data[key] = self.key_value(ref, attribute)
            self.batch_objects[op["ref"]] = obj
            self.session.add(obj)
            self._pending_links.append((sequence, obj, mapper, op))
            return
        self._link_pending()
        if kind == "update":
            self._update(sequence, mapper, op)
        elif kind == "delete":
            self._delete(sequence, mapper, op)
        elif kind.startswith("bulk_"):
            self.session.flush()
            self._statement(sequence, mapper, op)
        else:
            raise DeferredOperationError(
                f"journal {self.path}: operation {sequence} has an unknown kind {kind!r}; "
                "it was written by a newer orm-journal",
                path=self.path,
            )

    def _link_pending(self) -> None:
        # Links are set once every object of the batch exists, since objects of one
        # flush refer to each other in any order.
        pending, self._pending_links = self._pending_links, []
        for sequence, obj, mapper, op in pending:
            self._sequence, self._op = sequence, op
            self._set_links(obj, mapper, op.get("links", {}), op.get("added", {}), {})

    def _set_links(
        self,
        obj: object,
        mapper: Mapper[Any],
        links: Mapping[str, Any],
        added: Mapping[str, list[Any]],
        removed: Mapping[str, list[Any]],
    ) -> None:
        for key, target in links.items():
            prop = mapper.relationships[key]
            value = None if target is None else self.target(target, prop.mapper, lock=False)
            if value is None and target is not None:
                raise bulk.missing_target(self, self._sequence, self._op, prop.mapper, target)
            if attributes.instance_state(obj).key is not None:
                # Load the old target first, so the backref takes the object out of the
                # old target's collection: a delete cascading through that collection
                # later in the batch must not take an object the journal moved away.
                getattr(obj, key)
            setattr(obj, key, value)
        # Through the collection's adapter, so that any collection class works (lists,
        # sets, attribute_keyed_dict, custom ones): iterating the adapter yields the
        # members (a dict's values, not its keys).
        for key, targets in added.items():
            prop = mapper.relationships[key]
            if prop.lazy in ("dynamic", "write_only"):
                self._add_through_query(obj, prop, targets)
                continue
            adapter = collection_adapter(getattr(obj, key))
            for target in targets:
                value = self.target(target, prop.mapper, lock=False)
                if value is None:
                    raise bulk.missing_target(self, self._sequence, self._op, prop.mapper, target)
                if adapter is not None and not any(m is value for m in adapter):
                    adapter.append_with_event(value)
        for key, targets in removed.items():
            prop = mapper.relationships[key]
            if prop.lazy in ("dynamic", "write_only"):
                collection: Any = getattr(obj, key)
                for target in targets:
                    value = self.target(target, prop.mapper, lock=False)
                    if value is not None:
                        collection.remove(value)
                continue
            adapter = collection_adapter(getattr(obj, key))
            for target in targets:
                value = self.target(target, prop.mapper, lock=False)
                if value is not None and adapter is not None and any(m is value for m in adapter):
                    adapter.remove_with_event(value)

    def _add_through_query(self, obj: object, prop: Any, targets: list[Any]) -> None:
        """Add members to a dynamic or write-only relationship, which holds no collection."""
        collection: Any = getattr(obj, prop.key)
        add = collection.add if hasattr(collection, "add") else collection.append
        for target in targets:
            value = self.target(target, prop.mapper, lock=False)
            if value is None:
                raise bulk.missing_target(self, self._sequence, self._op, prop.mapper, target)
            add(value)

    def _update(self, sequence: int, mapper: Mapper[Any], op: dict[str, Any]) -> None:
        obj = self.target(op["target"], mapper, lock=True)
        if not self._matches(sequence, mapper, op, obj):
            return
        # As for inserts: the values were validated when recorded. flag_modified makes
        # the unit of work write a value set without attribute events.
        data = attributes.instance_state(obj).dict
        changes = {k: self.resolve_value(v) for k, v in op["values"].items()}
        changes.update({k: self.key_of(r)[a] for k, (r, a) in op.get("refs", {}).items()})
        for key, value in changes.items():
            if key in _keyed_attributes(mapper):
                # A primary key or version counter changed by the program (a row-versioning
                # listener): set as it set it, so the ORM has the old value for its WHERE.
                setattr(obj, key, value)
                continue
            data[key] = value
            flag_modified(obj, key)
        self._set_links(
            obj, mapper, op.get("links", {}), op.get("added", {}), op.get("removed", {})
        )

    def _delete(self, sequence: int, mapper: Mapper[Any], op: dict[str, Any]) -> None:
        self.deleted_here.update(attributes.instance_state(o).key for o in self.session.deleted)
        obj = self.target(op["target"], mapper, lock=True)
        if obj is None:
            # The recording session listed the rows its cascades deleted one by one; a
            # row this replay's cascade already deleted is the same outcome, not a conflict.
            key = self._identity(op["target"], mapper)
            if key not in self.deleted_here:
                self._conflict(sequence, mapper, op, None, missing=True)
            return
        if self._matches(sequence, mapper, op, obj):
            self.session.delete(obj)

    def _identity(self, target: Any, mapper: Mapper[Any]) -> Any:
        if isinstance(target, int):
            self.key_of(target)
            mapper = self.identities.mapper(target)
            target = self.identities.values(target)
        return mapper.identity_key_from_primary_key(tuple(target))

    def _matches(
        self, sequence: int, mapper: Mapper[Any], op: dict[str, Any], obj: object | None
    ) -> bool:
        """Check a recorded update/delete against the row; apply the policy on a conflict."""
        if obj is None:
            return self._conflict(sequence, mapper, op, None, missing=True)
        if isinstance(op["target"], int):
            return True  # a row this replay inserted: nothing else can have changed it
        expected = {k: self.resolve_value(v) for k, v in op.get("old", {}).items()}
        version = op.get("version")
        if version is not None:
            version_key = mapper.get_property_by_column(mapper.version_id_col).key  # type: ignore[arg-type]
            expected[version_key] = version[0] if isinstance(version, list) else version
        actual = {k: getattr(obj, k) for k in expected}
        if actual == expected:
            return True
        return self._conflict(sequence, mapper, op, actual, missing=False, expected=expected)

    def _conflict(
        self,
        sequence: int,
        mapper: Mapper[Any],
        op: dict[str, Any],
        actual: dict[str, Any] | None,
        *,
        missing: bool,
        expected: dict[str, Any] | None = None,
    ) -> bool:
        """Decide a conflict of a recorded update/delete; True to apply it anyway."""
        expected = dict(op.get("old", {})) if expected is None else expected
        target = op["target"]
        if isinstance(target, list):
            key: list[Any] = target
        else:  # a row new in this journal: named by its placeholder, as the journal does
            key = [Placeholder(target, a) for a in pk_attributes(mapper)]
        if missing:
            error = conflict(
                self.path, sequence, op, key, "notfound", "the row is gone", expected=expected
            )
        else:
            what = f"the row differs in {differences(expected, actual or {})}"
            error = conflict(
                self.path, sequence, op, key, "data", what, expected=expected, actual=actual
            )
        return self.conflicts.resolve(error)

    def _statement(self, sequence: int, mapper: Mapper[Any], op: dict[str, Any]) -> None:
        cls = mapper.class_
        kind = op["op"]
        rows = [{k: self.resolve_value(v) for k, v in r.items()} for r in op.get("rows", ())]
        options = {"synchronize_session": False}
        if kind == "bulk_insert":
            self.session.execute(insert(cls), rows)
            return
        if rows:
            statement: Any = update(cls) if kind == "bulk_update" else delete(cls)
            self.session.execute(statement.execution_options(**options), rows)
            return
        where = op.get("where")
        statement = update(cls) if kind == "bulk_update" else delete(cls)
        if where is not None:
            statement = statement.where(dml.rebuild_criteria(where, mapper, self.resolve_value))
        if kind == "bulk_update":
            statement = statement.values(
                {k: self.resolve_value(v) for k, v in op["values"].items()}
            )
        self.session.execute(statement.execution_options(**options))

    def placeholders(self) -> Identities:
        return Identities(self.identities)


class _LeftOut(Exception):  # a signal inside a replay, never raised out of it
    """An operation refers to a new object whose insert a conflict left out."""

    def __init__(self, ref: int) -> None:
        super().__init__(f"new object #{ref} was left out")
        self.ref = ref


@functools.cache
def _keyed_attributes(mapper: Mapper[Any]) -> frozenset[str]:
    """The attributes an UPDATE's WHERE clause names: primary key and version counter."""
    columns = [*mapper.primary_key, mapper.version_id_col]
    return frozenset(mapper.get_property_by_column(c).key for c in columns if c is not None)


def _named_mappers(
    registries: Iterable[registry], module_name: str, qualname: str
) -> set[Mapper[Any]]:
    return {
        m
        for r in registries
        for m in r.mappers
        if m.class_.__module__ == module_name and m.class_.__qualname__ == qualname
    }


def _failed(path: str, where: str, err: Exception) -> Exception:
    detail = getattr(err, "orig", None) or err
    first_line = str(detail).strip().splitlines()[0] if str(detail).strip() else ""
    return DeferredOperationError(
        f"journal {path}: {where} failed: {type(detail).__name__}: {first_line}. Nothing "
        "was applied; the database and the journal are unchanged",
        path=path,
    )


# -- the public entry point -------------------------------------------------------------------


def reconnect_and_commit(
    session: Session,
    path: str | os.PathLike[str],
    *,
    key: bytes | str | None,
    on_conflict: ConflictPolicy | ConflictHandler = "fail",
    allow_schema_drift: bool = False,
    allow_dill: bool = False,
    if_busy: Literal["wait", "skip"] = "wait",
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
) -> ReplayResult:
    """Apply the journal at ``path`` through ``session`` in one transaction, exactly once.

    :param on_conflict: ``"fail"``, ``"overwrite"``, ``"skip"``, or a callable given each
        :class:`ReplayConflictError` that returns one of them for that operation.
    :param allow_dill: unpickle ``dill`` values of a journal that did not verify with a
        key (unpickling runs code). Without it such a journal is refused with
        :class:`JournalSignatureError` before anything is claimed, decoded or applied.
    :param if_busy: what to do when another replayer is applying the same journal right
        now: ``"wait"`` for it (then ``applied=False``), or ``"skip"`` at once with
        ``busy=True`` (PostgreSQL and MariaDB; SQLite serialises writers and waits).
    :param dry_run: do everything, then roll back instead of committing; the ledger is
        not written (nor created when it is missing).
    :param progress: called as ``progress(done, total)`` after each batch of operations.
    """
    started = time.monotonic()
    outcome = "failed"
    # Filled in as soon as the journal's header is read, for the log line of a failure.
    seen: dict[str, Any] = {"journal_id": "(unread)", "operations": 0}
    try:
        result = _reconnect_and_commit(
            session,
            path,
            key=key,
            on_conflict=on_conflict,
            allow_schema_drift=allow_schema_drift,
            allow_dill=allow_dill,
            if_busy=if_busy,
            dry_run=dry_run,
            progress=progress,
            started=started,
            seen=seen,
        )
        outcome = _outcome(result)
        return result
    except BaseException as err:
        outcome = f"failed ({type(err).__name__})"
        raise
    finally:
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "journal %s (%s): %s, %d operation(s) in %.3f s",
                seen["journal_id"],
                os.fspath(path),
                outcome,
                seen["operations"],
                time.monotonic() - started,
            )


def _outcome(result: ReplayResult) -> str:
    if result.busy:
        return "busy (another replayer is applying it)"
    if not result.applied:
        return "already applied"
    done = "would apply (dry run, rolled back)" if result.dry_run else "applied"
    return f"{done}, {len(result.conflicts)} conflict(s)" if result.conflicts else done


def _reconnect_and_commit(
    session: Session,
    path: str | os.PathLike[str],
    *,
    key: bytes | str | None,
    on_conflict: ConflictPolicy | ConflictHandler,
    allow_schema_drift: bool,
    allow_dill: bool,
    if_busy: Literal["wait", "skip"],
    dry_run: bool,
    progress: ProgressCallback | None,
    started: float,
    seen: dict[str, Any],
) -> ReplayResult:
    check_policy(on_conflict)
    if getattr(session, "_recorder", None) is not None:
        raise DeferredOperationError(
            "reconnect_and_commit() inside deferred_operations would replay into the journal "
            "being recorded; leave the block first",
            path=path,
        )
    if (
        session.new
        or session.deleted
        or any(session.is_modified(o) for o in session.dirty)
        or has_flushed_changes(session)
    ):
        raise DeferredOperationError(
            "the session has pending or flushed, uncommitted changes; commit or roll back "
            "before replaying a journal, so that only the journal's operations are committed",
            path=path,
        )
    with Journal(path, key=key, allow_dill=allow_dill) as journal:
        journal.verify()
        header = journal.header
        check_meta(os.fspath(path), header.meta)
        _refuse_untrusted_pickles(journal)
        journal_id = header.journal_id
        count = header.operation_count or 0
        seen.update(journal_id=journal_id, operations=count)
        session.rollback()
        replay = Replay(session, journal, on_conflict, progress)
        # SPEC §3.10: the recording process ran the program's session listeners; replay
        # applies what they produced and runs none of them again.
        with without_session_listeners(session):
            locked = committing = False
            try:
                has_ledger = replay_claim.ensure_ledger(session, path, create=not dry_run)
                connection = session.connection()
                # Already applied means nothing to do, even if the schema moved on since.
                if has_ledger and replay_claim.applied(connection, journal_id):
                    session.rollback()
                    return ReplayResult(
                        journal_id,
                        False,
                        count,
                        duration=time.monotonic() - started,
                        dry_run=dry_run,
                    )
                _check_schema(replay, connection, header.meta, allow_schema_drift)
                if if_busy == "skip" and not dry_run:
                    if not replay_claim.try_lock(connection, journal_id):
                        session.rollback()
                        return ReplayResult(
                            journal_id, False, count, duration=time.monotonic() - started, busy=True
                        )
                    locked = True
                if not dry_run and not replay_claim.claim(
                    connection, journal_id, count, header.digest or ""
                ):
                    if locked:
                        replay_claim.unlock(connection, journal_id)
                    session.rollback()
                    return ReplayResult(
                        journal_id, False, count, duration=time.monotonic() - started
                    )
                if dry_run:
                    _begin(connection)
                # Links are set while objects of the batch are still incomplete; an autoflush
                # in between (a lookup of a target) would insert them half-built. Mapper
                # listeners ran while recording: the journal holds what they did.
                mappers = [m for r in all_registries() for m in r.mappers]
                with session.no_autoflush, replay_events.held_back(connection, mappers):
                    replay.apply()
                if locked:
                    replay_claim.unlock(connection, journal_id)
                if dry_run:
                    session.rollback()
                else:
                    committing = True
                    session.commit()
            except BaseException as err:
                if locked and not committing:
                    # The connection taken above: after a failed flush the session would
                    # refuse to hand it out, and MariaDB's lock outlives the transaction.
                    with contextlib.suppress(SQLAlchemyError):
                        replay_claim.unlock(connection, journal_id)
                with contextlib.suppress(SQLAlchemyError):
                    session.rollback()
                if committing and isinstance(err, DBAPIError):
                    if err.connection_invalidated:
                        raise replay_claim.commit_failed(session, path, journal_id, err) from err
                    # The server answered and refused the commit (a deferred constraint, a
                    # serialization failure): it rolled back, so nothing was applied.
                    raise _failed(os.fspath(path), "the commit", err) from err
                if isinstance(err, DBAPIError) and not isinstance(err, IntegrityError):
                    raise DeferredOperationError(
                        f"journal {path}: the database failed during replay "
                        f"({type(err.orig).__name__}: {str(err.orig).strip().splitlines()[0]}); "
                        "nothing was applied and the journal is unchanged: replay it again",
                        path=path,
                    ) from err
                raise
    return ReplayResult(
        journal_id,
        True,
        count,
        identities=replay.placeholders(),
        conflicts=replay.conflicts.found,
        duration=time.monotonic() - started,
        dry_run=dry_run,
    )


def _begin(connection: Any) -> None:
    """Make sure the database transaction has begun before any savepoint is taken.

    pysqlite (Python's ``sqlite3`` in its default, legacy transaction control) sends
    BEGIN only before an INSERT, UPDATE or DELETE; a SAVEPOINT sent before that is the
    outermost one, and releasing it commits. A replay's ledger row is its first write, so
    this matters only for a dry run, which writes no ledger row.
    """
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if not sqlite_driver_connection(raw).in_transaction:
        connection.exec_driver_sql("BEGIN")


def _refuse_untrusted_pickles(journal: Journal) -> None:
    # The seal counts the records holding pickles. One that says none while a record holds
    # one (an edited unsigned journal) is refused when that record is decoded: later,
    # but still before anything is committed and without unpickling anything.
    pickled = journal.header.pickled_records
    if pickled and not journal.dill_allowed:
        raise JournalSignatureError(
            f"journal {journal.path} holds pickled (dill) values in {pickled} record(s) and "
            "did not verify with a key: unpickling them would run code from the file. "
            "Record and replay with a key (journal_key / $ORM_JOURNAL_KEY), or allow dill "
            "(allow_dill=True, CLI --allow-dill) only for files nobody else can write",
            path=journal.path,
        )


def _check_schema(
    replay: Replay, connection: Any, meta: Mapping[str, Any], allow_drift: bool
) -> None:
    recorded = meta.get("schema") or {}
    differences: list[str] = []
    current: dict[str, Any] = {}
    for path in _recorded_classes(replay):
        try:
            mapper = replay.mapper(path)
        except SchemaMismatchError as err:
            differences.extend(err.differences)
            continue
        plan = plan_for(mapper)
        for table in (*plan.tables, *plan.secondary):
            current[str(table.fullname)] = describe_table(table)
    differences.extend(diff_schemas(recorded, current))
    differences.extend(_missing_in_database(connection, recorded))
    revision = meta.get("alembic_revision")
    if revision is not None:
        now = read_alembic_revision(connection)
        if now != revision:
            differences.append(f"Alembic revision: recorded {revision}, database has {now}")
    if differences and not allow_drift:
        raise SchemaMismatchError(
            f"journal {replay.path} was recorded against another schema: "
            + "; ".join(differences)
            + ". Migrate the database/models to match, or pass allow_schema_drift=True",
            differences=differences,
            path=replay.path,
        )


def _missing_in_database(connection: Any, recorded: Mapping[str, Any]) -> list[str]:
    """Tables and columns the journal writes that the database does not have.

    Only presence is compared: reflected types differ between dialects in spelling, and
    the mapping comparison above already covers what the journal assumes of types.
    """
    inspector = sa_inspect(connection)
    lines = []
    for name, description in sorted(recorded.items()):
        schema, _, table = name.rpartition(".")
        if not inspector.has_table(table, schema=schema or None):
            lines.append(f"table {name}: missing in the database")
            continue
        present = {c["name"] for c in inspector.get_columns(table, schema=schema or None)}
        for column in sorted(set(description.get("columns", {})) - present):
            lines.append(f"table {name}: column {column} missing in the database")
    return lines


def _recorded_classes(replay: Replay) -> Iterator[str]:
    yield from replay.journal.header.meta.get("classes", ())
