"""Run the whole corpus and print every case: ``python -m tests.corpus.report [PYTEST ARGS]``.

Runs ``tests/test_corpus.py`` through pytest (so the backends are chosen and reset exactly
as in the test suite: ``--backends`` or ``ORM_JOURNAL_BACKENDS``, with
``ORM_JOURNAL_PG_URL`` / ``ORM_JOURNAL_MARIADB_URL``), then prints one line per case
(example, phase, backend, outcome, detail) and the number of cases per outcome and
backend. pytest's own progress goes to stderr. Extra arguments go to pytest, e.g.
``-k inheritance``; ``--width N`` cuts details to N characters (0: never, the default).

Exit status 0 when every case is ``equal``, ``refused`` or ``n/a``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.corpus.runner import PASSING

TEST_MODULE = Path(__file__).resolve().parent.parent / "test_corpus.py"
NODE_ID = re.compile(r"\[(?P<backend>[^-\]]+)-(?P<example>[^\]]+):(?P<phase>[^:\]]+)\]$")
OUTCOMES = ("equal", "refused", "different", "crash", "broken", "n/a", "error")


class Collector:
    """A pytest plugin keeping each case's outcome and detail."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Keep the call phase of each case (or its setup, when that failed)."""
        if report.when != "call" and not (report.when == "setup" and not report.passed):
            return
        found = NODE_ID.search(report.nodeid)
        if found is None:
            return
        properties = dict(report.user_properties)
        outcome = properties.get("outcome")
        detail = properties.get("detail", "")
        if outcome is None:  # the case never got to run: a setup error, a failed download
            outcome = "error"
            detail = report.longreprtext.strip().splitlines()[-1] if report.longrepr else ""
        self.rows.append(
            (found["example"], found["phase"], found["backend"], str(outcome), str(detail))
        )


def main(argv: list[str] | None = None) -> int:
    """Run the corpus and print the table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=0, help="cut details to this many characters")
    options, pytest_args = parser.parse_known_args(argv)
    collector = Collector()
    arguments = [str(TEST_MODULE), "-m", "corpus", "-q", "--tb=no", "-p", "no:cacheprovider"]
    with contextlib.redirect_stdout(sys.stderr):
        pytest.main([*arguments, *pytest_args], plugins=[collector])
    if not collector.rows:
        print("no corpus case ran (see the pytest output above)", file=sys.stderr)
        return 1
    print_table(collector.rows, options.width)
    print()
    print_counts(collector.rows)
    failing = [row for row in collector.rows if row[3] not in (*PASSING, "n/a")]
    return 1 if failing else 0


def print_table(rows: list[tuple[str, str, str, str, str]], width: int) -> None:
    """Print one aligned line per case."""
    header = ("example", "phase", "backend", "outcome", "detail")
    sizes = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        detail = row[4] if width <= 0 or len(row[4]) <= width else row[4][: width - 3] + "..."
        print(
            "  ".join(cell.ljust(size) for cell, size in zip(row[:4], sizes, strict=True)), detail
        )


def print_counts(rows: list[tuple[str, str, str, str, str]]) -> None:
    """Print the number of cases per outcome (rows) and backend (columns)."""
    backends = list(dict.fromkeys(r[2] for r in rows))
    counts: Counter[tuple[str, str]] = Counter((r[3], r[2]) for r in rows)
    outcomes = [o for o in OUTCOMES if any(counts[o, b] for b in backends)]
    print("outcome".ljust(10), *(b.rjust(10) for b in backends), "total".rjust(7))
    for outcome in outcomes:
        cells: list[Any] = [counts[outcome, b] for b in backends]
        print(outcome.ljust(10), *(str(c).rjust(10) for c in cells), str(sum(cells)).rjust(7))
    totals = [sum(counts[o, b] for o in outcomes) for b in backends]
    print("total".ljust(10), *(str(t).rjust(10) for t in totals), str(sum(totals)).rjust(7))


if __name__ == "__main__":
    sys.exit(main())
