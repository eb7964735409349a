"""Schema fingerprints: what a journal assumes about the tables it touches.

A fingerprint describes a table as the mapping sees it (columns, types, nullability,
primary and foreign keys) in a JSON-compatible form, so a replaying process can say
precisely what differs instead of only "something changed".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, column, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["describe_table", "diff_schemas", "read_alembic_revision", "schema_digest"]


def describe_table(tbl: Table) -> dict[str, Any]:
    """Return the JSON-compatible description of ``tbl`` that fingerprints compare."""
    return {
        "columns": {
            str(col.name): {
                "type": _type_name(col.type),
                "nullable": bool(col.nullable),
                "primary_key": bool(col.primary_key),
            }
            for col in tbl.columns
        },
        "foreign_keys": sorted(
            f"{fk.parent.name}->{fk.target_fullname}" for fk in tbl.foreign_keys
        ),
    }


def _type_name(type_: Any) -> str:
    # The generic (dialect-independent) type with its parameters, e.g. "VARCHAR(50)":
    # what matters for replay is what values the column accepts, not the Python class.
    try:
        return str(type_.compile())
    except SQLAlchemyError:
        return type(type_).__name__


def schema_digest(description: Mapping[str, Any]) -> str:
    """Return a short, stable digest of a schema description."""
    raw = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def diff_schemas(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Return one line per difference between two ``{table: description}`` mappings.

    Only tables in ``recorded`` are compared: the journal touches nothing else.
    """
    lines: list[str] = []
    for name, old in sorted(recorded.items()):
        new = current.get(name)
        if new is None:
            lines.append(f"table {name}: recorded, but not mapped or not present now")
            continue
        old_cols, new_cols = old.get("columns", {}), new.get("columns", {})
        for col in sorted(set(old_cols) | set(new_cols)):
            if col not in new_cols:
                lines.append(f"table {name}: column {col} was removed")
            elif col not in old_cols:
                lines.append(f"table {name}: column {col} was added")
            elif old_cols[col] != new_cols[col]:
                changes = ", ".join(
                    f"{k} {old_cols[col].get(k)!r} -> {new_cols[col].get(k)!r}"
                    for k in sorted(set(old_cols[col]) | set(new_cols[col]))
                    if old_cols[col].get(k) != new_cols[col].get(k)
                )
                lines.append(f"table {name}: column {col} changed: {changes}")
        if old.get("foreign_keys") != new.get("foreign_keys"):
            lines.append(f"table {name}: foreign keys changed")
    return lines


def read_alembic_revision(
    connection: Connection, version_tables: Iterable[str] = ("alembic_version",)
) -> str | None:
    """Return the application's Alembic revision(s), or None if it has no version table.

    Several heads are joined with ``+`` in sorted order. Runs inside a SAVEPOINT-free
    check of the table's existence first, because a failed SELECT would abort the
    surrounding transaction on PostgreSQL.
    """
    names = set(inspect(connection).get_table_names())
    revisions: list[str] = []
    for name in version_tables:
        if name not in names:
            continue
        version = table(name, column("version_num"))
        revisions.extend(
            str(r) for r in connection.execute(select(version.c.version_num)).scalars()
        )
    return "+".join(sorted(revisions)) if revisions else None
