"""The private SQLAlchemy API orm-journal uses, in one place.

SQLAlchemy gives no public way to do these; each function says what it reaches into and
the version it was checked on. A new SQLAlchemy release is checked by reading this
module against its source (and by the test suite, which covers every use).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, registry
from sqlalchemy.orm.state import InstanceState

CHECKED_ON = "2.1.9"


def loaded_states(session: Session) -> list[InstanceState[Any]]:
    """The states of ``session``'s objects that have anything loaded since last expired.

    ``InstanceState.expired`` is set by an expiry and cleared by any load or flush of the
    object; an expired state's dictionary then holds no mapped attribute unless one was
    assigned or shown since. Checked on SQLAlchemy 2.1.9.
    """
    found = []
    for state in session.identity_map.all_states():
        if state.expired and state.manager._all_key_set.isdisjoint(state.dict):
            continue
        found.append(state)
    return found


def expire_states(session: Session, states: Iterable[InstanceState[Any]]) -> None:
    """Expire ``states`` as a commit does with ``expire_on_commit``.

    What ``SessionTransaction._remove_snapshot`` does to each state of the identity map:
    ``InstanceState._expire``. Checked on SQLAlchemy 2.1.9.
    """
    modified = session.identity_map._modified
    for state in states:
        state._expire(state.dict, modified)


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


def orphaned_outside_of_session(state: InstanceState[Any]) -> bool:
    """``InstanceState._orphaned_outside_of_session``: what ``Session._flush()`` checks to
    expunge a new orphan instead of inserting it. Checked on SQLAlchemy 2.1.9."""
    return bool(state._orphaned_outside_of_session)


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
