"""Every adapted example, by name, and the cases they make."""

from __future__ import annotations

from tests.corpus.adapters import (
    associations,
    attributes,
    dictlike,
    generic,
    inheritance,
    services,
    trees,
    versioned_history,
    versioned_rows,
)
from tests.corpus.spec import Case, Example

__all__ = ["CASES", "EXAMPLES"]

GROUPS = (
    trees,
    associations,
    generic,
    inheritance,
    versioned_rows,
    versioned_history,
    dictlike,
    attributes,
    services,
)
EXAMPLES: dict[str, Example] = {e.name: e for group in GROUPS for e in group.EXAMPLES}
CASES = [
    Case(example, phase.name)
    for example in EXAMPLES.values()
    for phase in example.phases
    if phase.recorded
]
