"""The rows of many-to-many link tables as the block leaves them, for its reads.

A link table is written by relationships, not by objects of its own: what the block did to
it is the history of each collection a flush wrote (members added and removed, and every
link of a deleted object). Kept here as events, in flush order, so that a query over a
link table can read it as the journal so far leaves it (orm_ext/block_overlay.py), and a
rollback can take back what it discards.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Mapper, attributes
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.schema import Table

from orm_ext.sa_private import column_properties

__all__ = ["LinkEvent", "LinkRows", "link_events"]


@dataclass(frozen=True)
class LinkEvent:
    """Rows of ``table`` whose ``columns`` hold ``values`` were linked (or unlinked).

    An unlink of a deleted object names only its own columns: all its links go.
    """

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    present: bool


class LinkRows:
    """Each link table's events, with the batch that recorded them."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[int, LinkEvent]]] = {}

    def note(self, batch: int, events: Iterable[LinkEvent]) -> None:
        for event in events:
            self.events.setdefault(event.table, []).append((batch, event))

    def rewind(self, batches: int) -> None:
        for table in list(self.events):
            kept = [(b, e) for b, e in self.events[table] if b <= batches]
            if kept:
                self.events[table] = kept
            else:
                del self.events[table]

    def state(
        self, table: str
    ) -> tuple[list[tuple[tuple[str, ...], tuple[Any, ...]]], list[dict[str, Any]]]:
        """What to leave out of the database's rows of ``table``, and the rows to add.

        Left out: every row an event names (a row the block linked again is added back).
        """
        present: dict[tuple[tuple[str, ...], tuple[Any, ...]], bool] = {}
        excluded: dict[tuple[tuple[str, ...], tuple[Any, ...]], None] = {}
        for _, event in self.events.get(table, ()):
            named = (event.columns, event.values)
            excluded[named] = None
            if event.present:
                present[named] = True
                continue
            for row in present:
                if _within(row, named):
                    present[row] = False
            present.pop(named, None)
        rows = [
            dict(zip(cols, vals, strict=True)) for (cols, vals), kept in present.items() if kept
        ]
        return list(excluded), rows


def _within(row: tuple[tuple[str, ...], tuple[Any, ...]], named: tuple[Any, ...]) -> bool:
    values = dict(zip(*row, strict=True))
    return all(values.get(c) == v for c, v in zip(*named, strict=True))


def link_events(
    new: Sequence[InstanceState[Any]],
    changed: Sequence[InstanceState[Any]],
    deleted: Sequence[InstanceState[Any]],
) -> Iterator[LinkEvent]:
    """The link rows one flush adds and removes, from its objects' collection histories."""
    gone = set(deleted)
    for state in (*new, *changed, *deleted):
        for rel, name in _link_relationships(state.mapper):
            own = [(s.name, _value(state, p)) for p, s in rel.synchronize_pairs]
            if state in gone:
                yield LinkEvent(name, *_split(own), present=False)
                continue
            history = state.attrs[rel.key].history
            for members, present in ((history.added, True), (history.deleted, False)):
                for member in members:
                    if member is None:
                        continue
                    other = attributes.instance_state(member)
                    theirs = [
                        (s.name, _value(other, p)) for p, s in rel.secondary_synchronize_pairs or ()
                    ]
                    yield LinkEvent(name, *_split(own + theirs), present=present)


@functools.cache
def _link_relationships(mapper: Mapper[Any]) -> tuple[tuple[Any, str], ...]:
    """The relationships of ``mapper`` that write a link table, with its name (once per
    mapper: this runs for every object of every flush)."""
    return tuple(
        (rel, str(rel.secondary.fullname))
        for rel in mapper.relationships
        if isinstance(rel.secondary, Table) and not rel.viewonly
    )


def _split(pairs: list[tuple[str, Any]]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    ordered = sorted(pairs)
    return tuple(c for c, _ in ordered), tuple(v for _, v in ordered)


def _value(state: InstanceState[Any], column: Any) -> Any:
    """The value of ``column`` on ``state``: its key where the column is a key column."""
    mapper = state.mapper
    properties = column_properties(mapper)
    key = state.key
    if key is not None:
        for position, pk in enumerate(mapper.primary_key):
            if pk is column or properties.get(pk) is properties.get(column):
                return key[1][position]
    prop = properties[column]
    return state.dict.get(prop.key)
