"""Mapper flush events held back while a journal is replayed (SPEC §3.10, §4.2).

The listeners of ``before_insert``, ``after_update`` and the other flush events of a
mapper ran where the program ran, while recording; the journal holds what they did.
Replay writes through the ORM's unit of work, which would fire them again with the
replaying process's clock, queries and side effects. Each listener of those events is
wrapped, once, in a :class:`_HeldBack` that does nothing when the flush runs on a
replay's connection. Other connections (a web request flushing in another thread of
the same process) see every listener as before: nothing global is switched off.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper

from orm_ext.sa_private import listener_lists

__all__ = ["FLUSH_EVENTS", "held_back"]

FLUSH_EVENTS: Final = (
    "before_insert",
    "after_insert",
    "before_update",
    "after_update",
    "before_delete",
    "after_delete",
)

# Connections a replay is writing through; weak, so a dropped one needs no cleanup.
_replaying: weakref.WeakSet[Connection] = weakref.WeakSet()


class _HeldBack:
    """A mapper flush listener that does not run on a replay's connection."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, mapper: Any, connection: Any, target: Any, *rest: Any) -> Any:
        if connection in _replaying:
            return None
        return self.fn(mapper, connection, target, *rest)

    # event.remove() looks the listener up by equality in the collection: the wrapper
    # stands for the function it wraps.
    def __eq__(self, other: object) -> bool:
        return other is self or other == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)


def held_back(
    connection: Connection, mappers: Iterable[Mapper[Any]]
) -> contextlib.AbstractContextManager[None]:
    """Hold back the flush listeners of ``mappers`` for flushes on ``connection``."""
    for mapper in mappers:
        for name in FLUSH_EVENTS:
            _wrap(getattr(mapper.dispatch, name))
    return _on(connection)


@contextlib.contextmanager
def _on(connection: Connection) -> Iterator[None]:
    _replaying.add(connection)
    try:
        yield
    finally:
        _replaying.discard(connection)


def _wrap(collection: Any) -> None:
    # Replaced in place: item assignment does not disturb a dispatch iterating the deque
    # or list in another thread.
    for listeners in listener_lists(collection):
        for index, fn in enumerate(list(listeners)):
            if not isinstance(fn, _HeldBack):
                listeners[index] = _HeldBack(fn)
