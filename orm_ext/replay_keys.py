"""The keys a replay gave the journal's new objects, kept compactly (SPEC §5.9).

Later operations name an object created earlier in the journal by its placeholder ref, so
a replay keeps every new object's mapper and primary key until it ends, and
``ReplayResult.identities`` shows them afterwards. A dict of dicts costs about 250 bytes
per object; a journal of a million new rows would make that the bulk of a replay's
memory. Recorded refs are consecutive from 1 and each insert's ref is larger than the
last (``OperationChecker``), so they index arrays: 4 bytes for the class and 8 for a key
that is one 64-bit integer (the common autoincrement key). Other keys, and refs too far
beyond the journal's operation count to index an array (a crafted journal), go in a dict.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy.orm import Mapper

from orm_ext.references import Placeholder

__all__ = ["Identities", "NewKeys"]

_INT64 = (-(2**63), 2**63 - 1)
# The arrays' smallest growth, and the slack they allow beyond twice the operation count.
_GROWTH = 4096


class NewKeys:
    """Placeholder ref → (mapper, primary key values) of each new object of a replay.

    :param operations: the journal's operation count; refs up to about twice it are
        held in arrays, any beyond in a dict.
    """

    def __init__(self, operations: int) -> None:
        self._limit = 2 * operations + _GROWTH
        self._mappers: list[Mapper[Any]] = []
        self._attributes: list[tuple[str, ...]] = []
        self._index: dict[Mapper[Any], int] = {}
        # Per ref: 1 + the index of its mapper, 0 for a ref with no key (yet).
        self._classes = array("I")
        # Per ref whose key is one 64-bit int: the key.
        self._ints = array("q")
        # Refs whose key is anything else (or lies beyond the arrays): class index, values.
        self._other: dict[int, tuple[int, tuple[Any, ...]]] = {}
        self._count = 0

    def add(self, ref: int, mapper: Mapper[Any], values: tuple[Any, ...]) -> None:
        """Note that new object ``ref`` of ``mapper`` has the primary key ``values``."""
        index = self._mapper_index(mapper)
        self.forget(ref)
        self._count += 1
        if 0 < ref <= self._limit and len(values) == 1 and _is_int64(values[0]):
            self._grow(ref)
            self._classes[ref] = index + 1
            self._ints[ref] = values[0]
            return
        self._other[ref] = (index, values)

    def add_ints(self, refs: list[int], mapper: Mapper[Any], keys: list[Any]) -> None:
        """:meth:`add` for objects of a one-column key: ``refs[i]`` got ``keys[i]``.

        The bulk path's way in, once per row of a million-row replay: the common case
        (a ref in the arrays' range, an int key) goes straight to the arrays.
        """
        if len(refs) != len(keys):
            raise ValueError(f"{len(refs)} refs but {len(keys)} keys")
        if not refs:
            return
        index = self._mapper_index(mapper) + 1
        highest = max(refs)
        if highest <= self._limit:
            self._grow(highest)
        classes, ints, other = self._classes, self._ints, self._other
        size = len(classes)
        for ref, key in zip(refs, keys, strict=True):
            if 0 < ref < size and type(key) is int and _INT64[0] <= key <= _INT64[1]:
                # A new ref counts; one noted before (in the arrays or the dict) is replaced.
                if not classes[ref] and (not other or other.pop(ref, None) is None):
                    self._count += 1
                classes[ref] = index
                ints[ref] = key
            else:
                self.add(ref, mapper, (key,))

    def _mapper_index(self, mapper: Mapper[Any]) -> int:
        index = self._index.get(mapper)
        if index is None:
            index = self._index[mapper] = len(self._mappers)
            self._mappers.append(mapper)
            self._attributes.append(pk_attributes(mapper))
        return index

    def forget(self, ref: int) -> None:
        """Drop the key of ``ref`` (its insert was rolled back to a savepoint)."""
        if 0 < ref < len(self._classes) and self._classes[ref]:
            self._classes[ref] = 0
            self._count -= 1
        elif self._other.pop(ref, None) is not None:
            self._count -= 1

    def _grow(self, ref: int) -> None:
        size = len(self._classes)
        if ref >= size:
            more = min(max(ref + 1, size + size // 2, _GROWTH), self._limit + 1) - size
            self._classes.frombytes(bytes(more * self._classes.itemsize))
            self._ints.frombytes(bytes(more * self._ints.itemsize))

    def __contains__(self, ref: int) -> bool:
        return (0 < ref < len(self._classes) and self._classes[ref] != 0) or ref in self._other

    def __len__(self) -> int:
        return self._count

    def mapper(self, ref: int) -> Mapper[Any]:
        """The mapper of new object ``ref``; KeyError if it has no key."""
        if 0 < ref < len(self._classes):
            index = self._classes[ref]
            if index:
                return self._mappers[index - 1]
        return self._mappers[self._other[ref][0]]

    def values(self, ref: int) -> tuple[Any, ...]:
        """The primary key values of new object ``ref``; KeyError if it has none."""
        if 0 < ref < len(self._classes) and self._classes[ref]:
            return (self._ints[ref],)
        return self._other[ref][1]

    def value(self, ref: int, attribute: str) -> Any:
        """``key(ref)[attribute]`` without building the dict: once per link of a bulk row.

        :raises KeyError: ``ref`` has no key, or its key no such attribute.
        """
        if 0 < ref < len(self._classes):
            index = self._classes[ref]
            if index and self._attributes[index - 1][0] == attribute:
                return self._ints[ref]
        key = self.key(ref)
        if key is None:
            raise KeyError(ref)
        return key[attribute]

    def key(self, ref: int) -> dict[str, Any] | None:
        """``{attribute: value}`` of the primary key of ``ref``, or None if it has none."""
        if 0 < ref < len(self._classes):
            index = self._classes[ref]
            if index:
                return {self._attributes[index - 1][0]: self._ints[ref]}
        found = self._other.get(ref)
        if found is None:
            return None
        return dict(zip(self._attributes[found[0]], found[1], strict=True))

    def refs(self) -> Iterator[int]:
        """The refs that have a key, in ascending order."""
        classes = self._classes
        dense = (ref for ref in range(1, len(classes)) if classes[ref])
        if not self._other:
            yield from dense
            return
        yield from sorted([*dense, *self._other])


class Identities(Mapping[Placeholder, Any]):
    """``ReplayResult.identities``: each placeholder of the journal → the database's value.

    A read-only view over the keys the replay kept anyway (:class:`NewKeys`), so that a
    journal of a million new rows does not also build a million placeholder objects.
    """

    def __init__(self, keys: NewKeys) -> None:
        self._keys = keys

    def __getitem__(self, placeholder: Placeholder) -> Any:
        if not isinstance(placeholder, Placeholder):
            raise KeyError(placeholder)
        key = self._keys.key(placeholder.ref)
        if key is None or placeholder.attribute not in key:
            raise KeyError(placeholder)
        return key[placeholder.attribute]

    def __iter__(self) -> Iterator[Placeholder]:
        for ref in self._keys.refs():
            for attribute in self._keys.key(ref) or ():
                yield Placeholder(ref, attribute)

    def __len__(self) -> int:
        return sum(len(self._keys.values(ref)) for ref in self._keys.refs())

    def __repr__(self) -> str:
        return f"<Identities of {len(self._keys)} new object(s)>"


def _is_int64(value: Any) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


@functools.cache
def pk_attributes(mapper: Mapper[Any]) -> tuple[str, ...]:
    """The attribute keys of ``mapper``'s primary key columns, in order."""
    return tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
