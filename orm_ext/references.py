"""How recorded operations refer to objects: placeholders and class paths."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Placeholder", "class_path"]


@dataclass(frozen=True, slots=True)
class Placeholder:
    """The not-yet-known value of a primary key column of an object created in a block.

    It stands in the object's primary key attribute until replay inserts the row; the
    journal stores it as a reference, and replay resolves it to the database's key.
    """

    ref: int
    attribute: str

    def __repr__(self) -> str:
        return f"<placeholder #{self.ref}.{self.attribute}: assigned by the database at replay>"


def class_path(cls: type) -> str:
    """Return ``module:QualifiedName``, how a journal names a mapped class."""
    return f"{cls.__module__}:{cls.__qualname__}"
