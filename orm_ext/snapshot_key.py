"""The key a query snapshot stores a statement under: the same in every process.

The memo keys a statement by SQLAlchemy's cache key, whose structure holds live objects
(tables, mappers, classes) that mean nothing in another process. Here that structure is
rendered into text that names them instead (a table by its name, a mapper by its class's
module and name), together with the bound values, the options that change what a
statement returns and the dialect, and hashed. An object this module does not know how to
name makes the statement unkeyable: it is then never answered from a snapshot, which is
only ever a miss, never another statement's answer.
"""

from __future__ import annotations

import enum
import hashlib
import types
from collections.abc import Hashable, Mapping
from typing import Any

import sqlalchemy
from sqlalchemy.orm import Mapper, MapperProperty
from sqlalchemy.sql.schema import Table

from orm_ext.sa_private import ORM_EXECUTION_OPTIONS, result_shaping_load_options

__all__ = ["Unkeyable", "snapshot_key", "structure_text"]

# What a snapshot key means depends on how SQLAlchemy builds cache keys: a snapshot taken
# with another release of it only misses.
_RELEASE = ".".join(sqlalchemy.__version__.split(".")[:2])
# Execution options SQLAlchemy sets itself, or that change nothing a statement returns.
_IGNORED_OPTIONS = ORM_EXECUTION_OPTIONS | {
    "compiled_cache",
    "logging_token",
    "autoflush",
    "populate_existing",
}
_PLAIN = (str, int, float, bool, type(None), bytes)


class Unkeyable(Exception):
    """The statement holds something with no name that is the same in another process."""


def structure_text(structure: Hashable) -> str:
    """Return the digest of a statement's cache key structure (``CacheKey.key``) rendered
    as text that means the same in every process; the memo keeps it per structure.

    :raises Unkeyable: something in it cannot be named across processes.
    """
    text = repr(_named(structure))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def snapshot_key(structure: str, values: Hashable, options: Mapping[str, Any], dialect: str) -> str:
    """Return the 64-hex-digit snapshot key of a statement.

    :param structure: the digest of the statement's structure, from :func:`structure_text`.
    :param values: its bound values, as the memo freezes them (typed, in order).
    :param options: its execution options.
    :param dialect: the name of the bind's dialect.
    :raises Unkeyable: something in it cannot be named across processes.
    """
    loaded = result_shaping_load_options(options)
    # Keys that are not strings are loaders' own bookkeeping (a subquery load keeps the
    # query it came from there, which its statement embeds already).
    chosen = sorted(
        (k, v) for k, v in options.items() if isinstance(k, str) and k not in _IGNORED_OPTIONS
    )
    text = repr(
        (
            _RELEASE,
            dialect,
            structure,
            # The memo's frozen values hold only types and values whose repr is the same
            # in every process (see memo._frozen).
            repr(values),
            _named(tuple(chosen)),
            _named(loaded),
        )
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _named(value: Any) -> Any:
    """Return ``value`` with every live object replaced by a name that other processes share."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple | list):
        return tuple([_named(v) for v in value])
    if isinstance(value, frozenset | set):
        return ("set", tuple(sorted(repr(_named(v)) for v in value)))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(_named(k)), _named(v)) for k, v in value.items())))
    if isinstance(value, type):
        return ("class", value.__module__, value.__qualname__)
    if isinstance(value, enum.Enum):
        return ("enum", type(value).__module__, type(value).__qualname__, value.name)
    if isinstance(value, Table):
        return ("table", value.schema, value.name)
    if isinstance(value, Mapper):
        return ("mapper", value.class_.__module__, value.class_.__qualname__)
    if isinstance(value, MapperProperty):
        owner = value.parent.class_
        return ("property", owner.__module__, owner.__qualname__, value.key)
    if isinstance(value, types.BuiltinFunctionType | types.FunctionType):
        return ("function", value.__module__, value.__qualname__)
    if isinstance(value, types.CodeType):
        # Lambda statements (lazy loads) key their code; the same SQLAlchemy release (part
        # of the key) has the same code at the same place.
        return ("code", value.co_qualname, value.co_firstlineno)
    # The memo's frozen values: everything else (dates, decimals, UUIDs) has a repr that
    # holds its value and type in every process.
    if isinstance(value, Hashable) and type(value).__repr__ is not object.__repr__:
        module = type(value).__module__
        if module in ("datetime", "decimal", "uuid"):
            return ("value", module, type(value).__qualname__, repr(value))
    raise Unkeyable(f"{type(value).__module__}.{type(value).__qualname__}")
