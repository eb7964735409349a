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
    "update": _COMMON | {"target", "values", "old"},
    "delete": _COMMON | {"target", "old"},
    "bulk_insert": _COMMON | {"rows"},
    "bulk_update": _COMMON,
    "bulk_delete": _COMMON,
}
# An ORM statement is recorded either by rows of parameters or by its WHERE clause (None:
# every row), never both and never neither: each is one of these exact field sets.
_STATEMENT_FORMS: Final[dict[str, tuple[frozenset[str], ...]]] = {
    "bulk_update": (_COMMON | {"rows"}, _COMMON | {"where", "values"}),
    "bulk_delete": (_COMMON | {"rows"}, _COMMON | {"where"}),
}
# Values a key, a version counter or a comparison may hold: what a column holds.
_CONTAINERS: Final = (list, dict, tuple, set, bool)
# Criteria nest as deep as the program's WHERE clause; far deeper is a crafted file.
_MAX_CRITERIA_DEPTH: Final = 64


@dataclass(frozen=True)
class _Attributes:
    """What one mapped class lets an operation name."""

    columns: frozenset[str]
    relationships: frozenset[str]
    primary_key: int
    # Each relationship's target class's primary-key length: a target given by key must
    # have exactly that many values.
    target_keys: dict[str, int]


class OperationChecker:
    """Checks operations of one journal; caches what each mapped class allows.

    :param mapper_of: the replay's lookup of a ``module:QualName`` class path (it raises
        :class:`SchemaMismatchError` for a class this process does not map).
    """

    def __init__(self, path: str, mapper_of: Callable[[str], Mapper[Any]]) -> None:
        self.path = path
        self._mapper_of = mapper_of
        self._attributes: dict[str, _Attributes] = {}
        # Refs of new objects are handed out in increasing order and never reused.
        self._last_ref = 0

    def check(self, sequence: int, op: object) -> None:
        """Raise :class:`JournalCorruptError` unless ``op`` is a well-formed operation."""
        if type(op) is dict and op.get("op") == "insert" and self._plain_insert(op):
            return
        self._check(sequence, op)

    def _plain_insert(self, op: dict[str, Any]) -> bool:
        """Whether ``op`` is an insert of the most common shape, checked in one pass.

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
            or ref <= self._last_ref
            or type(values) is not dict
            or not values.keys() <= attrs.columns
        ):
            return False
        size = len(op)
        if size != 5:
            links = op.get("links")
            if size != 6 or type(links) is not dict or not links.keys() <= attrs.relationships:
                return False
            for target in links.values():
                # A link by key, or to no object, goes through the full check.
                if not (type(target) is int and 0 < target < ref):
                    return False
        self._last_ref = ref
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
        forms = _STATEMENT_FORMS.get(kind)
        if forms is not None and keys not in forms:
            raise self._bad(sequence, f"({kind}) has neither exactly rows nor a WHERE clause")
        if type(op["class"]) is not str or type(op["table"]) is not str:
            raise self._bad(sequence, "does not name its class and table as text")
        attributes = self._attributes_of(op["class"])
        self._check_fields(sequence, op, attributes)

    def _check_fields(self, sequence: int, op: dict[str, Any], attrs: _Attributes) -> None:
        if "ref" in op:
            if not _is_ref(op["ref"]) or op["ref"] <= self._last_ref:
                raise self._bad(sequence, "has a ref that is not a new positive integer")
            self._last_ref = op["ref"]
        # The row an update or delete changes exists already: an object of an earlier batch.
        if "target" in op and not self._is_target(op["target"], attrs.primary_key, existing=True):
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
        if "version" in op and not _is_version(op["op"], op["version"]):
            raise self._bad(sequence, "has a malformed version counter")

    def _check_columns(
        self, sequence: int, op: dict[str, Any], field: str, values: object, attrs: _Attributes
    ) -> None:
        if type(values) is not dict or not all(type(k) is str for k in values):
            raise self._bad(sequence, f"has {field} that are not a mapping of attribute names")
        unknown = values.keys() - attrs.columns
        if unknown:
            raise self._unmapped(sequence, op, field, unknown)

    def _check_links(
        self, sequence: int, op: dict[str, Any], field: str, attrs: _Attributes
    ) -> None:
        links = op[field]
        if type(links) is not dict or not all(type(k) is str for k in links):
            raise self._bad(sequence, f"has {field} that are not a mapping of relationships")
        unknown = links.keys() - attrs.relationships
        if unknown:
            raise self._unmapped(sequence, op, field, unknown)
        for key, value in links.items():
            arity = attrs.target_keys[key]
            if field == "links":
                ok = value is None or self._is_target(value, arity)
            else:
                ok = type(value) is list and all(self._is_target(t, arity) for t in value)
            if not ok:
                raise self._bad(sequence, f"has {field} whose targets are malformed")

    def _is_target(self, value: object, arity: int, *, existing: bool = False) -> bool:
        """A ref of an object created in the journal, or a primary key.

        Links may name objects of their own batch in any order (a flush inserts a graph),
        so only an ``existing`` target must have been created before.
        """
        if type(value) is int:
            return 0 < value <= self._last_ref if existing else value > 0
        return (
            type(value) is list
            and len(value) == arity
            and not any(isinstance(v, _CONTAINERS) for v in value)
        )

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
        if len(node) != 4 or node[0] != "cmp" or node[1] not in CRITERIA_OPERATORS:
            return False
        operator, key, value = node[1], node[2], node[3]
        if type(key) is not str or key not in attrs.columns:
            return False
        if operator in ("in", "not_in"):
            return type(value) is list and not any(isinstance(v, _CONTAINERS) for v in value)
        if operator in ("like", "not_like"):
            return type(value) is str
        return not isinstance(value, _CONTAINERS) or type(value) is bool

    def _attributes_of(self, class_path: str) -> _Attributes:
        found = self._attributes.get(class_path)
        if found is None:
            mapper = self._mapper_of(class_path)
            found = self._attributes[class_path] = _Attributes(
                columns=frozenset(p.key for p in mapper.column_attrs),
                relationships=frozenset(mapper.relationships.keys()),
                primary_key=len(mapper.primary_key),
                target_keys={r.key: len(r.mapper.primary_key) for r in mapper.relationships},
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


def _is_version(kind: str, version: object) -> bool:
    # An update carries [old, new]; a delete the old counter alone.
    parts = version if kind == "update" and type(version) is list else [version]
    expected = 2 if kind == "update" else 1
    return len(parts) == expected and not any(isinstance(v, _CONTAINERS) for v in parts)


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
