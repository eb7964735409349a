"""How recorded operations refer to objects: placeholders and class paths."""

from __future__ import annotations

from journal import Placeholder
from orm_ext.exc import DeferredOperationError

# A new object's key used as text inside a deferred block: misuse of the block (SPEC §2).
Placeholder.value_error = DeferredOperationError

__all__ = ["Placeholder", "class_path"]


def class_path(cls: type) -> str:
    """Return ``module:QualifiedName``, how a journal names a mapped class."""
    return f"{cls.__module__}:{cls.__qualname__}"
