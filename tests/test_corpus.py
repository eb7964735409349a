"""SQLAlchemy's own examples, recorded and replayed, against the same examples run directly.

The external corpus of the fidelity issue (SPEC §3.9-3.11, §5): for each adapted example of
the installed SQLAlchemy's ``examples/`` (downloaded from PyPI on first use and cached
outside the checkout, see :mod:`tests.corpus.source`) and each of its phases, the phase runs
directly with a plain ``Session`` on database A and recorded inside ``deferred_operations``
on database B, another process replays the journal into B, and every table of A and B is
compared (:mod:`tests.corpus.runner`). A case passes when the databases are equal or when
recording refused the phase with ``DeferredOperationError``; a replay that differs or an
exception of any other kind fails it, and so does a corpus that cannot be downloaded. A case
whose tables the backend cannot create is skipped. ``python -m tests.corpus.report`` prints
every case with its outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.corpus.adapters import CASES
from tests.corpus.runner import PASSING, run_case
from tests.corpus.source import CorpusUnavailableError, examples_root
from tests.corpus.spec import Case

pytestmark = pytest.mark.corpus

# Cases that still crash, each with the reason. A listed case that no longer crashes
# fails the run (take it off the list), so the list only shrinks; a replay that differs
# from the direct run is never listed: it fails, always.
KNOWN_CRASHES: dict[str, str] = {}


@pytest.fixture(scope="module")
def corpus() -> Path | CorpusUnavailableError:
    """The directory holding ``examples/``, or why it could not be obtained."""
    try:
        return examples_root()
    except CorpusUnavailableError as err:
        return err


@pytest.mark.parametrize("case", CASES, ids=str)
def test_replayed_phase_equals_the_direct_run(
    case: Case,
    backend: Backend,
    corpus: Path | CorpusUnavailableError,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """A phase of an example recorded and replayed leaves B as the direct run left A, or is refused."""
    if isinstance(corpus, CorpusUnavailableError):
        pytest.fail(str(corpus), pytrace=False)
    outcome = run_case(case, backend.url, backend.url_b, corpus, tmp_path)
    record_property("outcome", outcome.kind)
    record_property("detail", outcome.detail)
    if outcome.kind == "n/a":
        pytest.skip(f"{case} on {backend.name}: {outcome.detail}")
    known = KNOWN_CRASHES.get(str(case))
    if known is not None:
        if outcome.kind == "crash":
            pytest.xfail(f"known: {known}")
        pytest.fail(f"{case} on {backend.name} is now {outcome.kind}: take it off KNOWN_CRASHES")
    assert outcome.kind in PASSING, (
        f"{case} on {backend.name}: {outcome.kind}: {outcome.detail} (logs in {outcome.logs})"
    )
