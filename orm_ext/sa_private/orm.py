"""The private SQLAlchemy API orm-journal uses on sessions, instance states, mappers and
events (see :mod:`orm_ext.sa_private`).

SQLAlchemy gives no public way to do these; each function says what it reaches into and
the version it was checked on.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection
from sqlalchemy.orm import Mapper, MapperProperty, ORMExecuteState, Session, registry
from sqlalchemy.orm.state import InstanceState

CHECKED_ON = "2.1.9"


def loaded_states(session: Session) -> list[tuple[InstanceState[Any], dict[str, Any]]]:
    """The states of ``session``'s objects that have anything loaded since last expired,
    each with its object's dictionary.

    ``InstanceState.expired`` is set by a full expiry and cleared by any load or flush of
    the object (``_commit``, ``_commit_all_states``); ``modified`` is set by any
    assignment since. An expired, unmodified state therefore holds nothing to expire, and
    is passed over without looking at its dictionary (most of a long block's objects are
    such, at each checkpoint). Checked on SQLAlchemy 2.1.9.
    """
    found = []
    for state in session.identity_map.all_states():
        if state.expired and not state.modified:
            continue
        obj = state.obj()
        if obj is not None:  # else it is being freed: nothing to expire
            found.append((state, obj.__dict__))
    return found


def expire_states(
    session: Session, states: Iterable[tuple[InstanceState[Any], dict[str, Any]]]
) -> None:
    """Expire ``states`` (with their objects' dictionaries) as a commit does with
    ``expire_on_commit``.

    What ``SessionTransaction._remove_snapshot`` does to each state of the identity map:
    ``InstanceState._expire``. Checked on SQLAlchemy 2.1.9.
    """
    modified = session.identity_map._modified
    for state, data in states:
        state._expire(data, modified)


def mark_loaded(state: InstanceState[Any], keys: Iterable[str]) -> None:
    """Mark attributes just shown on an expired object as loaded, as the ORM's loader does.

    ``InstanceState._commit``: the object is no longer expired, so the synchronization of
    a later ORM update() or delete() (which passes over expired objects) reaches it.
    Checked on SQLAlchemy 2.1.9.
    """
    state._commit(state.dict, keys)


def existing_info(state: InstanceState[Any]) -> dict[Any, Any] | None:
    """``state.info`` if it was ever created, else None.

    ``InstanceState.info`` is memoized into the state's ``__dict__`` on first access;
    reading it from there does not create an info dictionary for every object looked at.
    Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    info: dict[Any, Any] | None = state.__dict__.get("info")
    return info


def is_orphan(state: InstanceState[Any]) -> bool:
    """``Mapper._is_orphan``: what ``Session.flush()`` uses to find delete-orphan
    candidates; there is no public equivalent. Checked on SQLAlchemy 2.0.x and 2.1.9."""
    return bool(state.mapper._is_orphan(state))


def new_orphans_outside_of_session(
    states: Iterable[InstanceState[Any]],
) -> list[InstanceState[Any]]:
    """The new ``states`` that ``Session._flush()`` expunges instead of inserting: orphans
    (``Mapper._is_orphan``) removed from their parent before any flush
    (``InstanceState._orphaned_outside_of_session``, tested first: it is rarely set).
    Checked on SQLAlchemy 2.1.9."""
    return [s for s in states if s._orphaned_outside_of_session and s.mapper._is_orphan(s)]


def pending_states(session: Session) -> list[InstanceState[Any]]:
    """The states of ``session.new``, in the order they were added.

    ``Session._new`` maps them to their objects; ``session.new`` builds a set of the
    objects, whose states a flush then looks up again. Checked on SQLAlchemy 2.1.9.
    """
    return list(session._new)


def session_is_clean(session: Session) -> bool:
    """``Session._is_clean()``: the constant-time test ``Session.flush()`` starts with (the
    public ``session.dirty`` walks the identity map). Checked on SQLAlchemy 2.1.9."""
    return bool(session._is_clean())


def session_is_flushing(session: Session) -> bool:
    """``Session._flushing``: what ``Session._autoflush()`` checks to skip an autoflush
    inside a flush (a statement run from a ``before_flush`` listener). Checked on
    SQLAlchemy 2.1.9."""
    return bool(session._flushing)


def open_connections(session: Session) -> list[Connection]:
    """The connections the session's current transaction already holds.

    ``SessionTransaction._connections``: there is no public listing, and asking for
    ``session.connection()`` would connect an offline recording session. Checked on
    SQLAlchemy 2.0.x and 2.1.9.
    """
    transaction = session.get_transaction()
    if transaction is None:
        return []
    return [entry[0] for entry in transaction._connections.values()]


def expunge_states(session: Session, states: list[InstanceState[Any]]) -> None:
    """Detach ``states`` from ``session``, keeping their values.

    ``Session._expunge_states`` detaches without the "expunge" cascade that
    ``Session.expunge()`` follows, which would also detach objects loaded from the
    database. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    session._expunge_states(states)


def all_registries() -> set[registry]:
    """Every mapper registry of this process.

    ``sqlalchemy.orm.mapper._all_registries()`` is what ``configure_mappers()`` walks;
    there is no public list. Imported as a module: ``sqlalchemy.orm`` exports ``mapper``
    as a name. Checked on SQLAlchemy 2.1.9.
    """
    mapperlib: Any = importlib.import_module("sqlalchemy.orm.mapper")
    found: set[registry] = mapperlib._all_registries()
    return found


def expire_attributes(state: InstanceState[Any], keys: Iterable[str]) -> None:
    """Expire ``keys`` of one object, as a flush expires what the database computed.

    ``InstanceState._expire_attributes``, what ``persistence._postfetch`` and
    ``_finalize_insert_update_commands`` call; ``Session.expire()`` would also tell the
    memo and cascade nothing else here. Checked on SQLAlchemy 2.1.9.
    """
    state._expire_attributes(state.dict, keys)


def hold_unloaded(
    state: InstanceState[Any], loaders: Iterable[tuple[str, Callable[..., Any]]]
) -> None:
    """Give attributes of one object loaders of their own instead of being expired.

    ``InstanceState.callables``: the per-object loaders SQLAlchemy itself installs for
    deferred columns (``LoadDeferredColumns``); an attribute reads through its loader
    only when not in ``expired_attributes``, whose loader loads every expired attribute
    at once (and cannot refuse one of them). ``InstanceState._expire`` drops the loaders
    of what it expires. Checked on SQLAlchemy 2.1.9.
    """
    if "callables" not in state.__dict__:
        state.callables = {}
    for key, loader in loaders:
        state.expired_attributes.discard(key)
        state.callables[key] = loader


def identity_entries(session: Session) -> dict[Any, InstanceState[Any]]:
    """The dictionary behind ``session.identity_map``, from identity key to state.

    ``IdentityMap._dict``: an entry added here makes a load find the state under a second
    key (an alias), where the public ``add()`` would re-key the state. Checked on
    SQLAlchemy 2.1.9.
    """
    identity: Any = session.identity_map
    entries: dict[Any, InstanceState[Any]] = identity._dict
    return entries


class LoadFlags(NamedTuple):
    """The flags of an ORM load that legacy ``Query`` methods and loaders set."""

    populate_existing: Any
    yield_per: Any
    lazy_loaded_from: Any
    autoflush: Any
    refresh_state: Any  # the state a refresh or a load of expired attributes is for


def load_flags(orm_execute_state: ORMExecuteState) -> LoadFlags:
    """Whether the load overwrites the objects it finds, its ``yield_per``, the object a
    lazy load starts from (None for any other load), whether it autoflushes first, and
    the object a refresh reloads (None for any other load).

    ``load_options._populate_existing``, ``_yield_per``, ``_lazy_loaded_from``,
    ``_autoflush`` and ``_refresh_state``: legacy ``Query`` and the loaders set these on
    the load options, not as execution options, and nothing public shows them. Checked on
    SQLAlchemy 2.1.9.
    """
    load: Any = orm_execute_state.load_options
    return LoadFlags(
        load._populate_existing,
        load._yield_per,
        load._lazy_loaded_from,
        load._autoflush,
        load._refresh_state,
    )


ORM_EXECUTION_OPTIONS: Final = frozenset(
    {
        "_sa_orm_load_options",
        "_sa_orm_update_options",
        "_result_disable_adapt_to_context",
        "sa_top_level_orm_context",
    }
)
"""The execution options the ORM sets on a statement for itself: its load and
update/delete options, and its bookkeeping of a nested execution. Named in no public
documentation. Checked on SQLAlchemy 2.1.9."""


def result_shaping_load_options(execution_options: Mapping[str, Any]) -> tuple[Any, ...]:
    """The load options that change what the ORM returns for the same rows: whether it
    returns tuples (legacy ``Query``), uniques them (legacy ``Query`` with joined eager
    loads), and the identity token of its objects (None each where not set).

    ``_only_return_tuples``, ``_legacy_uniquing`` and ``_identity_token`` of the load
    options kept in the ``_sa_orm_load_options`` execution option: legacy ``Query`` and
    the horizontal sharding extension set them there, and nothing public shows them. The
    others (autoflush, populate_existing, the object a lazy load starts from) change only
    how it gets them. Checked on SQLAlchemy 2.1.9.
    """
    load = execution_options.get("_sa_orm_load_options")
    return tuple(
        getattr(load, name, None)
        for name in ("_only_return_tuples", "_legacy_uniquing", "_identity_token")
    )


def autoflush_before_load(orm_execute_state: ORMExecuteState) -> None:
    """Autoflush the session as the ORM does before it runs the load, if the load asks.

    ``load_options._autoflush`` and ``Session._autoflush()``: the ORM's autoflush, which
    is skipped while a flush is running; it runs after ``do_orm_execute``, so a listener
    answering the load itself must run it, and ``Session.flush()`` would not skip.
    Checked on SQLAlchemy 2.1.9.
    """
    load: Any = orm_execute_state.load_options
    if load._autoflush:
        orm_execute_state.session._autoflush()


def column_properties(mapper: Mapper[Any]) -> Mapping[Any, MapperProperty[Any]]:
    """The property of ``mapper`` holding each of its table columns, by column.

    ``Mapper._columntoproperty``, the mapping ``Mapper.get_property_by_column()`` reads;
    that raises for a column the mapper does not map, where ``.get()`` on this answers
    None without building an exception. Taken once per mapper by callers that look up
    each column of a row. Checked on SQLAlchemy 2.1.9.
    """
    found: Mapping[Any, MapperProperty[Any]] = mapper._columntoproperty
    return found


def reverse_properties(relationship: Any) -> Iterable[Any]:
    """The relationships the ORM pairs with ``relationship`` (its ``back_populates`` or
    ``backref`` sides).

    ``RelationshipProperty._reverse_property``: how the ORM itself pairs them; there is
    no public listing. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    found: Iterable[Any] = relationship._reverse_property
    return found


def listener_lists(collection: Any) -> list[Any]:
    """The non-empty lists of listener functions of an event collection (the attribute
    of a ``dispatch`` named after one event), which a dispatch calls in order.

    An event collection keeps the target's own listeners in ``listeners`` and those
    registered for every target of its class (on the Mapper class, say) in
    ``parent_listeners``; an ``_EmptyListener`` has only the latter. There is no public
    way to reach a registered function. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    found = []
    for listeners in (
        getattr(collection, "listeners", None),
        getattr(collection, "parent_listeners", None),
    ):
        if listeners:
            found.append(listeners)
    return found


class _Silent:
    """A class no session listener is registered for (see without_session_listeners)."""


@contextlib.contextmanager
def without_session_listeners(session: Session) -> Iterator[None]:
    """Run ``session`` with no session event listeners, its class's nor its own.

    A session's events are dispatched through the ``dispatch`` attribute SQLAlchemy
    memoizes in the instance's ``__dict__``; one made (``_Dispatch._for_class``) for a
    class that no listener targets has none, and only this session is affected, for this
    block. There is no public way to run one session without the listeners of its class.
    Checked on SQLAlchemy 2.1.9.
    """
    saved = session.__dict__.get("dispatch")
    events: Any = Session.dispatch
    session.__dict__["dispatch"] = events._for_class(_Silent)
    try:
        yield
    finally:
        if saved is None:
            session.__dict__.pop("dispatch", None)
        else:
            session.__dict__["dispatch"] = saved


def sqlite_driver_connection(raw: Any) -> Any:
    """The driver connection that answers ``in_transaction`` for the DBAPI connection
    ``raw`` of a SQLite engine.

    SQLAlchemy's aiosqlite adapter keeps the aiosqlite connection, which answers for the
    sqlite3 one, as ``_connection``; sqlite3's own connection answers itself. Checked on
    SQLAlchemy 2.1.9, aiosqlite 0.20.
    """
    return raw if hasattr(raw, "in_transaction") else getattr(raw, "_connection", raw)


def register_flushed(
    session: Session, persistent: set[InstanceState[Any]], deleted: Sequence[InstanceState[Any]]
) -> None:
    """Move states to where a successful flush leaves them, without any SQL.

    ``Session._register_persistent`` and ``Session._remove_newly_deleted`` are exactly
    what ``Session.flush()`` calls once it has written the rows
    (``UOWTransaction.finalize_flush_changes``): the identity map, the transaction's
    record for ``rollback()`` and events such as ``pending_to_persistent`` then behave as
    after a real flush. Checked on SQLAlchemy 2.0.x and 2.1.9.
    """
    if persistent:
        session._register_persistent(persistent)
    if deleted:
        session._remove_newly_deleted(deleted)


def detach_committed_deletions(session: Session) -> list[InstanceState[Any]]:
    """Detach the objects the committing transaction deleted; return their states.

    What ``SessionTransaction._remove_snapshot`` does with ``expire_on_commit``:
    ``InstanceState._detach_states`` of the transaction's ``_deleted``, which it then
    clears. For an ``after_commit`` listener, whose transaction is still
    ``get_transaction()``. Checked on SQLAlchemy 2.1.9.
    """
    transaction: Any = session.get_transaction()
    if transaction is None or not transaction._deleted:
        return []
    deleted = list(transaction._deleted)
    InstanceState._detach_states(deleted, session)
    transaction._deleted.clear()
    return deleted


def held_by(state: InstanceState[Any], kind: type) -> list[str]:
    """The attributes of one object whose own loader (see :func:`hold_unloaded`) is a
    ``kind``. ``InstanceState.callables``. Checked on SQLAlchemy 2.1.9."""
    return [key for key, loader in state.callables.items() if isinstance(loader, kind)]
