"""The private SQLAlchemy API orm-journal uses, in one place.

SQLAlchemy gives no public way to do these; each function says what it reaches into and
the version it was checked on. A new SQLAlchemy release is checked by reading this
module against its source (and by the test suite, which covers every use).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session
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
