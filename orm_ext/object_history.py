"""What an object showed at each checkpoint of a block: the rollback view.

A rollback inside a deferred block must show objects as they were at the checkpoint or
savepoint it returns to, without a reload (the database does not have the block's
writes). Each recorded object carries, in ``state.info[SHADOW]``, one snapshot per batch
that changed it: its column values, its many-to-one links and the members of its loaded
collections, held weakly. This module reads and shows those snapshots.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Final

from sqlalchemy.orm import attributes
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.collections import collection_adapter
from sqlalchemy.orm.state import InstanceState

from journal import Position
from orm_ext.mapper_plan import MapperPlan, plan_for
from orm_ext.server_values import FROM_DATABASE

__all__ = [
    "REF",
    "SHADOW",
    "STALE",
    "Snapshot",
    "carried_over",
    "kept_history",
    "related_values",
    "set_unknown",
    "show_members",
    "show_values",
    "snapshot_history",
    "unknown_keys",
    "weak_members",
]

# Key in InstanceState.info: the journal-local number of an object created in a block.
REF: Final = "orm_journal.ref"
# Key in InstanceState.info: [(journal position, values after that batch)], see
# Recorder._remember (orm_ext.recording);
# a new object's first entry is kept in a compact form until needed, see snapshot_history.
SHADOW: Final = "orm_journal.shadow"
# Key in InstanceState.info: attributes an update() recorded with
# synchronize_session=False may have changed in the journal while the object still shows
# the values from before it, as a plain session leaves them until a reload. A snapshot
# taken before such a reload cannot know them (see Recorder._remember).
STALE: Final = "orm_journal.stale"


Snapshot = tuple[
    int,
    "dict[str, Any] | tuple[Any, ...]",
    dict[str, "weakref.ref[Any] | None"],
    dict[str, tuple["weakref.ref[Any]", ...]],
]
"""One entry of an object's SHADOW history: (batch, column values, many-to-one links,
members of each loaded collection)."""


def snapshot_history(shadow: list[Snapshot] | tuple[Any, ...], plan: MapperPlan) -> list[Snapshot]:
    """The SHADOW history of an object, expanded from the compact first snapshot if needed.

    A new object's first snapshot is stored as one flat tuple: its batch, its values in
    ``plan.columns`` order, a weak reference (or ``None``: no link) per
    ``plan.many_to_one`` key, then the members of each ``plan.collections`` collection.
    """
    if isinstance(shadow, list):
        return shadow
    columns = len(plan.columns)
    links_end = 1 + columns + len(plan.many_to_one)
    values = shadow[1 : 1 + columns]
    refs = shadow[1 + columns : links_end]
    links = {k: ref for k, ref in zip(plan.many_to_one, refs, strict=True) if ref is not None}
    members = dict(zip(plan.collections, shadow[links_end:], strict=True))
    return [(shadow[0], values, links, members)]


def carried_over(
    values: dict[str, Any] | tuple[Any, ...], before: Snapshot, plan: MapperPlan
) -> dict[str, Any] | tuple[Any, ...]:
    """A new snapshot's column values, with those it lacks (expired, not loaded again
    since) taken from the snapshot ``before`` it: the row still has them."""
    old = before[1]
    if isinstance(values, dict):
        if len(values) == len(plan.columns):
            return values
        previous = old if isinstance(old, dict) else dict(zip(plan.columns, old, strict=True))
        return {**previous, **values}
    if not any(v is FROM_DATABASE for v in values):
        return values
    previous_values = (
        tuple(old.get(k, FROM_DATABASE) for k in plan.columns) if isinstance(old, dict) else old
    )
    return tuple(
        p if v is FROM_DATABASE else v for v, p in zip(values, previous_values, strict=True)
    )


def set_unknown(
    values: dict[str, Any] | tuple[Any, ...], keys: Iterable[str], plan: MapperPlan
) -> dict[str, Any] | tuple[Any, ...]:
    """A snapshot's column values with ``keys`` marked as known only at replay."""
    if isinstance(values, dict):
        return {**values, **dict.fromkeys(keys, FROM_DATABASE)}
    unknown = set(keys)
    return tuple(
        FROM_DATABASE if k in unknown else v for k, v in zip(plan.columns, values, strict=True)
    )


def unknown_keys(snapshot: Snapshot, plan: MapperPlan) -> frozenset[str]:
    """The columns a snapshot marks as known only at replay."""
    values = snapshot[1]
    pairs = values.items() if isinstance(values, dict) else zip(plan.columns, values, strict=True)
    return frozenset(k for k, v in pairs if v is FROM_DATABASE)


def show_values(
    obj: object,
    state: InstanceState[Any],
    plan: MapperPlan,
    snapshot: Snapshot,
    *,
    only_missing: bool,
) -> None:
    """Show a snapshot's column values and many-to-one links on ``obj``."""
    _, values, links, _ = snapshot
    data = state.dict
    pairs = values.items() if isinstance(values, dict) else zip(plan.columns, values, strict=True)
    for key, value in pairs:
        if value is FROM_DATABASE:
            continue  # left unloaded: only replay knows it
        if not (only_missing and key in data):
            set_committed_value(obj, key, value)
    for key, ref in links.items():
        if only_missing and key in data:
            continue
        related = None if ref is None else ref()
        if ref is None or related is not None:
            set_committed_value(obj, key, related)


def show_members(
    obj: object,
    state: InstanceState[Any],
    plan: MapperPlan,
    members: dict[str, tuple[weakref.ref[Any], ...]],
) -> None:
    """Show a snapshot's collections on ``obj`` where they are not loaded."""
    for key, refs in members.items():
        if key in state.dict:
            continue  # not expired: the session shows it as it is, as it would
        members_now = [ref() for ref in refs]
        if None in members_now:
            # A member the program dropped since: left unloaded, the collection loads
            # through the block's reads, which find it by its foreign key or link rows.
            continue
        # A member that a flush deleted and the rollback keeps deleted is not shown, as a
        # reload would not.
        alive = [
            member
            for member in members_now
            if member is not None and not attributes.instance_state(member).was_deleted
        ]
        set_committed_value(obj, key, alive)
    if REF in state.info:
        # Only this journal knows the link rows of an object created in it. Its one-to-many
        # collections stay unloaded: loading one finds the rows linked by foreign key.
        for key in plan.link_collections:
            if key not in state.dict:
                set_committed_value(obj, key, ())


def kept_history(state: InstanceState[Any], target: Position) -> list[Snapshot] | None:
    """Drop the snapshots of ``state`` taken after ``target``; return what is left."""
    history = state.info.get(SHADOW)
    if not history:
        return None
    kept = [
        entry
        for entry in snapshot_history(history, plan_for(state.mapper))
        if entry[0] <= target.batches
    ]
    if not kept or state.obj() is None:
        del state.info[SHADOW]
        return None
    state.info[SHADOW] = kept
    return kept


def related_values(state: InstanceState[Any]) -> Iterator[Any]:
    """The loaded values of ``state``'s relationships: objects and collections."""
    data = state.dict
    for key in plan_for(state.mapper).related:
        value = data.get(key)
        if value is not None:
            yield value


def weak_members(collection: Any) -> tuple[weakref.ref[Any], ...]:
    """Weak references to the objects in a loaded collection of any class.

    Through the collection's adapter: iterating a dict collection itself gives its keys.
    """
    return tuple(map(weakref.ref, collection_adapter(collection)))
