"""Replay conflicts: how each is described, and who decides what happens to it (SPEC §5.4, §5.8).

The model is SQLite's session extension, whose changeset conflict handler is told the
kind of each conflict and answers OMIT, REPLACE or ABORT. Here the answer is ``"skip"``,
``"overwrite"`` or ``"fail"``, given once for the whole replay (a policy string) or per
conflict (a callable). REPLACE means the same as there: only a row whose values differ
can be overwritten; a row that is gone or a constraint the database enforces cannot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from journal import Placeholder
from orm_ext.exc import ConflictKind, DeferredOperationError, ReplayConflictError

__all__ = [
    "ConflictHandler",
    "ConflictPolicy",
    "Conflicts",
    "check_policy",
    "conflict",
    "differences",
    "key_text",
]

ConflictPolicy = Literal["fail", "overwrite", "skip"]
ConflictHandler: TypeAlias = Callable[[ReplayConflictError], ConflictPolicy]
POLICIES: tuple[ConflictPolicy, ...] = ("fail", "overwrite", "skip")

# What a caller can do instead of failing, per kind. The phrases name the Python argument;
# the command line rewrites them into its options (orm_ext.commands.cli_words).
_ADVICE: Mapping[ConflictKind, str] = {
    "data": "choose on_conflict='overwrite' or 'skip' to go on anyway",
    "notfound": "choose on_conflict='skip' to leave the operation out",
    "constraint": "choose on_conflict='skip' to leave the operation out",
}


def check_policy(on_conflict: object) -> None:
    """Refuse anything but a policy string or a plain callable, before anything is replayed."""
    if inspect.iscoroutinefunction(on_conflict):
        # The replay runs in one synchronous transaction (for the async session, inside
        # SQLAlchemy's greenlet): it cannot await the answer.
        raise TypeError(
            "on_conflict must be a plain (not async) callable: the replay decides each "
            "conflict inside its transaction and cannot await the answer"
        )
    if callable(on_conflict) or on_conflict in POLICIES:
        return
    raise ValueError(
        f"on_conflict must be one of {', '.join(POLICIES)} or a callable, not {on_conflict!r}"
    )


def key_text(key: Sequence[Any]) -> str:
    """A row's key as a tuple is written, a new row's placeholder as ``#REF.attribute``."""
    parts = [f"#{v.ref}.{v.attribute}" if isinstance(v, Placeholder) else repr(v) for v in key]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """``column: the journal expected X, the row holds Y`` for each column that differs."""
    return "; ".join(
        f"{column}: the journal expected {value!r}, the row holds {actual.get(column)!r}"
        for column, value in expected.items()
        if column not in actual or actual[column] != value
    )


class Conflicts:
    """The conflicts one replay met, and the decision taken for each.

    :ivar found: the conflicts skipped or overwritten, in journal order.
    """

    def __init__(self, on_conflict: ConflictPolicy | ConflictHandler) -> None:
        check_policy(on_conflict)
        self.on_conflict = on_conflict
        self.found: list[ReplayConflictError] = []
        # A batch retried one operation at a time meets its conflicts again: the caller's
        # callable is asked once per operation.
        self._decided: dict[tuple[int, ConflictKind], ConflictPolicy] = {}

    @property
    def may_skip_constraints(self) -> bool:
        """Whether a constraint conflict may be left out, so each batch needs a savepoint."""
        return self.on_conflict == "skip" or callable(self.on_conflict)

    def resolve(self, conflict: ReplayConflictError) -> bool:
        """Decide ``conflict``: raise it, or return whether to apply the operation anyway.

        Its message gets the outcome appended, so that the error raised, and the one
        listed in ``ReplayResult.conflicts``, says what became of the operation.
        """
        decision = self._decide(conflict)
        conflict.decision = decision
        text = str(conflict)
        if decision == "overwrite" and conflict.kind != "data":
            cannot = "a row that is gone" if conflict.kind == "notfound" else "a constraint"
            conflict.decision = "fail"
            conflict.args = (
                f"{text} Nothing was applied: {cannot} cannot be overwritten; "
                f"{_ADVICE[conflict.kind]}",
            )
            raise conflict
        if decision == "fail":
            why = (
                "the on_conflict callable chose 'fail'"
                if callable(self.on_conflict)
                else _ADVICE[conflict.kind]
            )
            conflict.args = (f"{text} Nothing was applied; {why}",)
            raise conflict
        outcome = "was skipped" if decision == "skip" else "recorded values were applied anyway"
        subject = "The operation" if decision == "skip" else "The"
        conflict.args = (f"{text} {subject} {outcome}",)
        self.found.append(conflict)
        return decision == "overwrite"

    def mark(self) -> int:
        """A point to go back to with :meth:`undo` (a batch about to be retried)."""
        return len(self.found)

    def undo(self, mark: int) -> None:
        del self.found[mark:]

    def _decide(self, conflict: ReplayConflictError) -> ConflictPolicy:
        if not callable(self.on_conflict):
            return self.on_conflict
        known = self._decided.get((conflict.sequence, conflict.kind))
        if known is not None:
            return known
        try:
            decision = self.on_conflict(conflict)
        except Exception as err:
            raise DeferredOperationError(
                f"{conflict} The on_conflict callable raised {type(err).__name__}: {err}; "
                "nothing was applied",
                path=conflict.path,
            ) from err
        if decision not in POLICIES:
            raise DeferredOperationError(
                f"{conflict} The on_conflict callable returned {decision!r}, not one of "
                f"{', '.join(POLICIES)}; nothing was applied",
                path=conflict.path,
            )
        self._decided[(conflict.sequence, conflict.kind)] = decision
        return decision


def conflict(
    path: str,
    sequence: int,
    op: Mapping[str, Any],
    key: Sequence[Any],
    kind: ConflictKind,
    what: str,
    *,
    expected: Mapping[str, Any] | None = None,
    actual: Mapping[str, Any] | None = None,
) -> ReplayConflictError:
    """The error for one conflict, its outcome not yet decided (see :meth:`Conflicts.resolve`)."""
    return ReplayConflictError(
        f"journal {path}: operation {sequence} ({op['op']} of {op['table']} row "
        f"{key_text(key)}) conflicts: {what}.",
        sequence=sequence,
        table=str(op["table"]),
        key=key,
        expected=expected or {},
        actual=actual,
        path=path,
        kind=kind,
        operation=str(op["op"]),
        detail=what,
    )
