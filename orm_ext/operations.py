"""The shape of a recorded operation, and the check every operation passes before replay.

A journal is a file anyone may have edited (SPEC §4): even a well-chained one can hold an
operation that no recorder wrote. Replay applies an operation only once it has the shape
:mod:`orm_ext.recording` writes (docs/concepts/operations.md) and names attributes the
mapped class has, so a malformed one is a :class:`JournalCorruptError` naming it, never a
``KeyError`` half-way through a unit of work, nor a value silently dropped by a flush.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.orm import Mapper

from journal import JournalCorruptError
from orm_ext.dml import CRITERIA_OPERATORS
from orm_ext.exc import SchemaMismatchError

__all__ = ["OperationChecker", "check_meta"]

# Every key an operation of each kind may carry, and the ones it must.
_COMMON: Final = frozenset({"op", "class", "table"})
_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "insert": _COMMON | {"ref", "values", "refs", "links", "added"},
    "update": _COMMON | {"target", "values", "old", "refs", "links", "added", "removed", "version"},
    "delete": _COMMON | {"target", "old", "version"},
    "bulk_insert": _COMMON | {"rows"},
    "bulk_update": _COMMON | {"rows", "where", "values"},
    "bulk_delete": _COMMON | {"rows", "where"},
}
_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "insert": _COMMON | {"ref", "values"},
    "update": _COMMON | {"target", "values"},
    "delete": _COMMON | {"target"},
    "bulk_insert": _COMMON | {"rows"},
    "bulk_update": _COMMON,
    "bulk_delete": _COMMON,
}
# Criteria nest as deep as the program's WHERE clause; far deeper is a crafted file.
_MAX_CRITERIA_DEPTH: Final = 64


@dataclass(frozen=True)
class _Attributes:
    """What one mapped class lets an operation name."""

    columns: frozenset[str]
    relationships: frozenset[str]
    primary_key: int


class OperationChecker:
    """Checks operations of one journal; caches what each mapped class allows.

    :param mapper_of: the replay's lookup of a ``module:QualName`` class path (it raises
        :class:`SchemaMismatchError` for a class this process does not map).
    """

    def __init__(self, path: str, mapper_of: Callable[[str], Mapper[Any]]) -> None:
        self.path = path
        self._mapper_of = mapper_of
        self._attributes: dict[str, _Attributes] = {}

    def check(self, sequence: int, op: object) -> None:
        """Raise :class:`JournalCorruptError` unless ``op`` is a well-formed operation."""
        if type(op) is dict and op.get("op") == "insert" and self._plain_insert(op):
            return
        self._check(sequence, op)

    def _plain_insert(self, op: dict[str, Any]) -> bool:
        """Whether ``op`` is an insert of the most common shape, checked in one expression.

        Replay runs this for every operation of a journal of millions of inserts; anything
        it does not accept goes through the full check, which names the problem.
        """
        class_path = op.get("class")
        attrs = self._attributes.get(class_path) if type(class_path) is str else None
        ref = op.get("ref")
        values = op.get("values")
        if (
            attrs is None
            or type(op.get("table")) is not str
            or type(ref) is not int
            or ref <= 0
            or type(values) is not dict
            or not values.keys() <= attrs.columns
        ):
            return False
        size = len(op)
        if size == 5:
            return True
        links = op.get("links")
        if size != 6 or type(links) is not dict or not links.keys() <= attrs.relationships:
            return False
        for target in links.values():
            if not (type(target) is int or type(target) is list or target is None):
                return False
        return True

    def _check(self, sequence: int, op: object) -> None:
        if type(op) is not dict:
            raise self._bad(sequence, "is not a mapping")
        kind = op.get("op")
        if type(kind) is not str or kind not in _ALLOWED:
            raise self._bad(sequence, f"has an unknown kind {kind!r}")
        allowed = _ALLOWED[kind]
        keys = op.keys()
        if not keys <= allowed or not _REQUIRED[kind] <= keys:
            extra = sorted(map(str, keys - allowed))
            missing = sorted(_REQUIRED[kind] - keys)
            raise self._bad(
                sequence, f"({kind}) has the fields {extra} too many, {missing} missing"
            )
        if type(op["class"]) is not str or type(op["table"]) is not str:
            raise self._bad(sequence, "does not name its class and table as text")
        attributes = self._attributes_of(op["class"])
        self._check_fields(sequence, op, attributes)

    def _check_fields(self, sequence: int, op: dict[str, Any], attrs: _Attributes) -> None:
        if "ref" in op and not _is_ref(op["ref"]):
            raise self._bad(sequence, "has a ref that is not a positive integer")
        if "target" in op and not _is_target(op["target"], attrs):
            raise self._bad(sequence, "names its row neither by ref nor by primary key")
        for field in ("values", "old"):
            if field in op:
                self._check_columns(sequence, op, field, op[field], attrs)
        if "refs" in op:
            refs = op["refs"]
            self._check_columns(sequence, op, "refs", refs, attrs)
            for value in refs.values():
                if not (
                    type(value) is list
                    and len(value) == 2
                    and _is_ref(value[0])
                    and type(value[1]) is str
                ):
                    raise self._bad(sequence, "has a refs entry that is not [ref, attribute]")
        for field in ("links", "added", "removed"):
            if field in op:
                self._check_links(sequence, op, field, attrs)
        if "rows" in op:
            rows = op["rows"]
            if type(rows) is not list:
                raise self._bad(sequence, "has rows that are not a list")
            for row in rows:
                self._check_columns(sequence, op, "rows", row, attrs)
        if op["op"] == "bulk_update" and "rows" not in op and type(op.get("values")) is not dict:
            raise self._bad(sequence, "(bulk_update) has neither rows nor values")
        if op.get("where") is not None and not self._criteria_ok(op["where"], attrs, 0):
            raise self._bad(sequence, "has a malformed WHERE clause")
        version = op.get("version")
        if type(version) is list and len(version) != 2:
            raise self._bad(sequence, "has a version that is not [old, new]")

    def _check_columns(
        self, sequence: int, op: dict[str, Any], field: str, values: object, attrs: _Attributes
    ) -> None:
        if type(values) is not dict:
            raise self._bad(sequence, f"has {field} that are not a mapping")
        unknown = values.keys() - attrs.columns
        if unknown:
            raise self._unmapped(sequence, op, field, unknown)

    def _check_links(
        self, sequence: int, op: dict[str, Any], field: str, attrs: _Attributes
    ) -> None:
        links = op[field]
        if type(links) is not dict:
            raise self._bad(sequence, f"has {field} that are not a mapping")
        unknown = links.keys() - attrs.relationships
        if unknown:
            raise self._unmapped(sequence, op, field, unknown)
        # The targets' class is the relationship's: checked against it when applied.
        for value in links.values():
            if field == "links":
                ok = value is None or type(value) is int or type(value) is list
            else:
                ok = type(value) is list and all(type(t) is int or type(t) is list for t in value)
            if not ok:
                raise self._bad(sequence, f"has {field} whose targets are malformed")

    def _criteria_ok(self, node: object, attrs: _Attributes, depth: int) -> bool:
        if type(node) is not list or not node or depth > _MAX_CRITERIA_DEPTH:
            return False
        kind = node[0]
        if kind in ("and", "or"):
            return (
                len(node) == 2
                and type(node[1]) is list
                and all(self._criteria_ok(c, attrs, depth + 1) for c in node[1])
            )
        if kind == "not":
            return len(node) == 2 and self._criteria_ok(node[1], attrs, depth + 1)
        return (
            len(node) == 4
            and node[0] == "cmp"
            and node[1] in CRITERIA_OPERATORS
            and node[2] in attrs.columns
        )

    def _attributes_of(self, class_path: str) -> _Attributes:
        found = self._attributes.get(class_path)
        if found is None:
            mapper = self._mapper_of(class_path)
            found = self._attributes[class_path] = _Attributes(
                columns=frozenset(p.key for p in mapper.column_attrs),
                relationships=frozenset(mapper.relationships.keys()),
                primary_key=len(mapper.primary_key),
            )
        return found

    def _bad(self, sequence: int, problem: str) -> JournalCorruptError:
        return JournalCorruptError(
            f"journal {self.path}: operation {sequence} {problem}; orm-journal never records "
            "that, so the file was altered or damaged: do not replay it",
            path=self.path,
        )

    def _unmapped(
        self, sequence: int, op: dict[str, Any], field: str, names: set[str]
    ) -> SchemaMismatchError:
        listed = ", ".join(sorted(map(repr, names)))
        difference = f"class {op['class']} has no mapped attribute {listed} ({field})"
        return SchemaMismatchError(
            f"journal {self.path}: operation {sequence} ({op['op']} of {op['table']}) names "
            f"{listed} in {field}, which {op['class']} does not map in this process; import "
            "the models the journal was recorded with",
            differences=[difference],
            path=self.path,
        )


def _is_ref(value: object) -> bool:
    return type(value) is int and value > 0


def _is_target(value: object, attrs: _Attributes) -> bool:
    if type(value) is int:
        return value > 0
    return type(value) is list and len(value) == attrs.primary_key


def check_meta(path: str, meta: Mapping[str, Any]) -> None:
    """Raise :class:`JournalCorruptError` unless the journal's metadata has the recorded shape.

    The schema fingerprint and class list steer the schema check before anything is
    written; a malformed one must be a clear refusal, not an exception inside the check.
    """
    schema = meta.get("schema", {})
    classes = meta.get("classes", [])
    revision = meta.get("alembic_revision")
    well_formed = (
        type(schema) is dict
        and all(
            type(name) is str
            and type(table) is dict
            and type(table.get("columns", {})) is dict
            and all(type(c) is dict for c in table.get("columns", {}).values())
            for name, table in schema.items()
        )
        and type(classes) is list
        and all(type(c) is str for c in classes)
        and (revision is None or type(revision) is str)
    )
    if not well_formed:
        raise JournalCorruptError(
            f"journal {path}: its metadata (schema fingerprint, classes, Alembic revision) "
            "is malformed; the file was altered or damaged: do not replay it",
            path=path,
        )
