"""Bulk application of recorded inserts during replay.

(Planned: runs of plain inserts become multi-row INSERT ... RETURNING.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from journal import Batch

if TYPE_CHECKING:
    from orm_ext.replay import Replay

__all__ = ["Run", "plan_batch"]


@dataclass
class Run:
    """Consecutive operations of a batch applied the same way."""

    operations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    bulk: Any = None


def plan_batch(replay: Replay, batch: Batch) -> Sequence[Run]:
    return [Run(list(enumerate(batch.operations, start=batch.first_sequence)))]
