"""Compare every table of two databases: same rows, and the same keys where inserted alike.

Rows are read ordered by primary key. Two tables are equal when those lists are equal (or,
without a primary key, the same multiset). Otherwise the difference is reported as one of:

* ``values differ``: the rows projected onto their non-key columns are different
  multisets; what only A and only B hold is shown;
* ``keys differ``: the same values, but primary or foreign key columns differ, e.g. rows
  got other autoincrement ids than the direct run gave them (SPEC §3.9, keys).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

__all__ = ["compare_databases"]

# The ledger and its migration's version table exist only in the replayed database.
LEDGER_PREFIX = "orm_journal_"
SHOWN = 2  # rows shown per side and table


def compare_databases(
    url_a: str,
    url_b: str,
    *,
    volatile: Callable[[str, str], bool],
    arbitrary: Callable[[str, str], bool],
) -> list[str]:
    """Return one line per table that differs between A and B (empty: equal).

    :param volatile: whether ``(table, column)`` holds a wall-clock value; such a column
        is compared as NULL or not only.
    :param arbitrary: whether ``(table, column)`` is a key SQLAlchemy assigns in arbitrary
        order; such a column is not compared.
    """
    # Two databases, two connections: read them at the same time.
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(_read, (url_a, url_b))
    lines: list[str] = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            lines.append(f"{name}: table only in A")
        elif name not in a:
            lines.append(f"{name}: table only in B")
        elif a[name][0] != b[name][0]:
            lines.append(f"{name}: columns differ: A {a[name][0]} vs B {b[name][0]}")
        else:
            columns, keys, rows_a = a[name]
            rows_b = b[name][2]
            lines.extend(_compare_table(name, columns, keys, rows_a, rows_b, volatile, arbitrary))
    return lines


Table = tuple[list[str], set[str], list[tuple[Any, ...]]]


def _read(url: str) -> dict[str, Table]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            names = [n for n in inspector.get_table_names() if not n.startswith(LEDGER_PREFIX)]
            if not names:
                return {}
            # The multi-table calls: a few catalog queries, not a few per table.
            primary = inspector.get_multi_pk_constraint(filter_names=names)
            foreign = inspector.get_multi_foreign_keys(filter_names=names)
            found: dict[str, Table] = {}
            for (_, name), constraint in primary.items():
                pk = list(constraint["constrained_columns"])
                keys = set(pk).union(*(fk["constrained_columns"] for fk in foreign[None, name]))
                query = sa.select(sa.text("*")).select_from(sa.table(name))
                result = connection.execute(query.order_by(*map(sa.column, pk)))
                rows = [tuple(_hashable(v) for v in row) for row in result]
                found[name] = (list(result.keys()), keys, rows)
        return found
    finally:
        engine.dispose()


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _compare_table(
    name: str,
    columns: list[str],
    keys: set[str],
    rows_a: list[tuple[Any, ...]],
    rows_b: list[tuple[Any, ...]],
    volatile: Callable[[str, str], bool],
    arbitrary: Callable[[str, str], bool],
) -> list[str]:
    kept = [i for i, c in enumerate(columns) if not arbitrary(name, c)]
    clock = {i for i, c in enumerate(columns) if volatile(name, c)}

    def shown(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            ("<set>" if row[i] is not None else None) if i in clock else row[i] for i in kept
        )

    seen_a, seen_b = [shown(r) for r in rows_a], [shown(r) for r in rows_b]
    if seen_a == seen_b or Counter(seen_a) == Counter(seen_b):
        return []
    names = [columns[i] for i in kept]
    values = [j for j, c in enumerate(names) if c not in keys]

    def project(rows: Sequence[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
        return Counter(tuple(r[j] for j in values) for r in rows)

    only_a, only_b = project(seen_a) - project(seen_b), project(seen_b) - project(seen_a)
    header = f"({', '.join(names[j] for j in values)})"
    if only_a or only_b:
        return [
            f"{name}: values differ ({len(rows_a)} rows in A, {len(rows_b)} in B): "
            f"{header} only in A {_few(only_a)}, only in B {_few(only_b)}"
        ]
    pairs = [(x, y) for x, y in zip(seen_a, seen_b, strict=False) if x != y]
    x, y = pairs[0] if pairs else (seen_a[0], seen_b[0])
    return [
        f"{name}: keys differ (same values; {len(pairs)} of {len(rows_a)} rows): "
        f"({', '.join(names)}) first A {x} vs B {y}"
    ]


def _few(rows: Counter[tuple[Any, ...]]) -> str:
    listed = list(rows.elements())
    more = f" and {len(listed) - SHOWN} more" if len(listed) > SHOWN else ""
    return f"{listed[:SHOWN]}{more}" if listed else "nothing"
