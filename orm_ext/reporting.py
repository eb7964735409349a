"""What ``orm-journal replay`` and ``verify`` print for each journal: one line, or one JSON object.

The command functions in :mod:`orm_ext.commands` decide what happened; this module only
turns an outcome into text. Every line is plain (escaped, never markup) and never wrapped,
so a log file or a ``grep`` sees one journal, or one conflict, per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from journal import Placeholder
from orm_ext.conflicts import key_text
from orm_ext.exc import ReplayConflictError

__all__ = [
    "CLI_WORDS",
    "ReplayOutcome",
    "cli_words",
    "conflict_lines",
    "json_line",
    "outcome_line",
]

# The advice in library messages names Python arguments; on the command line the same
# advice names the options (longest phrases first, so each is rewritten once).
CLI_WORDS: tuple[tuple[str, str], ...] = (
    (
        "choose on_conflict='overwrite' or 'skip'",
        "use --on-conflict overwrite or --on-conflict skip",
    ),
    ("choose on_conflict='skip'", "use --on-conflict skip"),
    ("pass allow_schema_drift=True", "pass --allow-schema-drift"),
    ("(allow_dill=True, CLI --allow-dill)", "(--allow-dill)"),
    ("(allow_dill=True, --allow-dill)", "(--allow-dill)"),
    ("(journal_key / $ORM_JOURNAL_KEY)", "(--key or $ORM_JOURNAL_KEY)"),
    ("(CLI: --models)", "(--models MODULE)"),
    ("; CLI: --models)", "; --models MODULE)"),
)


def cli_words(text: str) -> str:
    """Rewrite a library message's advice in terms of the command line's options."""
    for python, cli in CLI_WORDS:
        text = text.replace(python, cli)
    return text


@dataclass
class ReplayOutcome:
    """What became of one journal given to ``orm-journal replay``.

    :ivar outcome: ``applied``, ``would apply`` (``--dry-run``), ``already applied`` or
        ``failed``.
    """

    path: str
    outcome: str
    journal_id: str | None = None
    operations: int | None = None
    conflicts: list[ReplayConflictError] = field(default_factory=list)
    duration: float = 0.0
    dry_run: bool = False
    error: str | None = None

    def as_json(self, value: Callable[[Any], Any]) -> dict[str, Any]:
        """The JSON object of this outcome; ``value`` makes a journal value JSON data."""
        return {
            "path": self.path,
            "journal_id": self.journal_id,
            "outcome": self.outcome,
            "dry_run": self.dry_run,
            "operations": self.operations,
            "conflicts": [_conflict_json(c, value) for c in self.conflicts],
            "duration": round(self.duration, 6),
            "error": self.error,
        }


def outcome_line(outcome: ReplayOutcome) -> tuple[str, str]:
    """The outcome word and the detail of a journal's line (``PATH: OUTCOME: DETAIL``)."""
    if outcome.outcome == "failed":
        return "failed", outcome.error or ""
    if outcome.outcome == "already applied":
        return "already applied", outcome.journal_id or ""
    detail = f"{outcome.operations} operation(s) in {outcome.duration:.2f} s"
    if outcome.conflicts:
        skipped = sum(1 for c in outcome.conflicts if _decision(c) == "skipped")
        overwritten = len(outcome.conflicts) - skipped
        parts = [
            f"{n} {what}" for n, what in ((skipped, "skipped"), (overwritten, "overwritten")) if n
        ]
        detail += f", {len(outcome.conflicts)} conflict(s): {', '.join(parts)}"
    if outcome.dry_run:
        detail += " (dry run: rolled back)"
    return outcome.outcome, detail


def conflict_lines(outcome: ReplayOutcome, short: Callable[[Any], str]) -> list[str]:
    """One line per conflict: operation, table, key, kind, decision and what differs."""
    lines = []
    for conflict in outcome.conflicts:
        head = (
            f"conflict: operation {conflict.sequence} ({conflict.operation} of "
            f"{conflict.table} row {key_text(conflict.key)}): {conflict.kind}, "
            f"{_decision(conflict)}"
        )
        if conflict.kind == "data":
            actual = conflict.actual or {}
            what = "; ".join(
                f"{column}: journal {short(conflict.expected.get(column))}, "
                f"database {short(actual.get(column))}"
                for column in conflict.columns
            )
        elif conflict.kind == "notfound":
            what = "the row is gone"
        else:
            what = conflict.detail
        lines.append(f"{head}: {what}")
    return lines


def _decision(conflict: ReplayConflictError) -> str:
    return "overwritten" if conflict.decision == "overwrite" else "skipped"


def _conflict_json(conflict: ReplayConflictError, value: Callable[[Any], Any]) -> dict[str, Any]:
    actual = conflict.actual or {}
    return {
        "sequence": conflict.sequence,
        "operation": conflict.operation,
        "kind": conflict.kind,
        "decision": _decision(conflict),
        "table": conflict.table,
        "key": [
            f"#{k.ref}.{k.attribute}" if isinstance(k, Placeholder) else value(k)
            for k in conflict.key
        ],
        "columns": {
            column: {
                "journal": value(conflict.expected.get(column)),
                "database": value(actual.get(column)),
            }
            for column in conflict.columns
        },
        "message": str(conflict),
    }


def json_line(document: dict[str, Any]) -> str:
    """One JSON object on one line (ASCII, so no character can break the line)."""
    return json.dumps(document, ensure_ascii=True) + "\n"
