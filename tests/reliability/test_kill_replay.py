"""SIGKILL of a replaying process at random moments (SPEC §5.1, §5.3).

Whatever the moment, including while the ledger's migration runs and while COMMIT is in
flight, the database must afterwards hold either all of the journal or none of it, with
the ledger agreeing, and a rerun must end with exactly one application.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from journal import Journal
from tests.conftest import Backend
from tests.reliability import workload
from tests.scenario import replay

pytestmark = pytest.mark.reliability

KILLS = 50

CHILD = (
    workload.CONNECTION_ANNOUNCER
    + """
import sys
from sqlalchemy import create_engine
from tests.scenario import make_sessions

engine = create_engine(sys.argv[1])
announce_connections(engine)
with make_sessions(engine)() as session:
    print("go", flush=True)
    result = session.reconnect_and_commit(sys.argv[2])
print("applied", result.applied, flush=True)
"""
)


def calibrate(backend: Backend, path: Path) -> float:
    """Seconds a whole replay takes in a child, from 'go' to its answer."""
    proc = workload.spawn(CHILD, backend.url, str(path))
    workload.read_until(proc, "go")
    started = time.monotonic()
    assert proc.stdout is not None
    answer = proc.stdout.readline()
    while answer.startswith("connection "):
        answer = proc.stdout.readline()
    elapsed = time.monotonic() - started
    proc.communicate(timeout=60)
    assert proc.returncode == 0 and answer.strip() == "applied True", answer
    return elapsed


@pytest.mark.slow
def test_sigkill_mid_replay_is_all_or_nothing(backend: Backend, tmp_path: Path, soak: int) -> None:
    engine = backend.engine()
    rng = random.Random(f"kill-replay-{backend.name}")
    path = tmp_path / "ops.dbm"

    # The shortest of three undisturbed replays (the machine may be busy) sets the window
    # the kills are spread over; each also gives the state a whole replay leaves.
    durations = []
    for _ in range(3):
        workload.reset(engine, drop_ledger=True)
        before = workload.natural_state(engine)
        workload.record(engine, path)
        durations.append(calibrate(backend, path))
        after = workload.natural_state(engine)
        assert after != before
    duration = min(durations)

    outcomes: Counter[str] = Counter()
    for attempt in range(KILLS * soak):
        # Every third attempt starts without the ledger, so that kills also land while the
        # packaged migration creates it.
        workload.reset(engine, drop_ledger=attempt % 3 == 0)
        assert workload.natural_state(engine) == before
        workload.record(engine, path)
        with open(path, "rb") as f:
            journal_bytes = f.read()
        proc = workload.spawn(CHILD, backend.url, str(path))
        lines = workload.read_until(proc, "go")
        time.sleep(rng.uniform(0, duration))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        lines += rest.split("\n")
        finished = "applied True" in lines
        workload.wait_until_gone(engine, workload.connection_ids(lines))

        state = workload.natural_state(engine)
        assert state in (before, after), f"attempt {attempt}: a partial replay is visible"
        with open(path, "rb") as f:
            assert f.read() == journal_bytes, f"attempt {attempt}: the journal changed"
        with Journal(path) as journal:
            journal_id = journal.journal_id
        in_ledger = journal_id in workload.applied_ids(engine)
        assert in_ledger == (state == after), f"attempt {attempt}: ledger and rows disagree"
        if finished:
            assert state == after
        outcomes["none" if state == before else "all"] += 1

        # The replayer that comes next: a process of its own, knowing nothing of the
        # ledger (this process's engine remembers a ledger that reset() may have dropped).
        fresh = backend.engine()
        rerun = replay(fresh, path)
        assert rerun.applied == (state == before), f"attempt {attempt}"
        assert workload.natural_state(engine) == after
        assert replay(fresh, path).applied is False
        assert workload.applied_ids(engine).count(journal_id) == 1
        fresh.dispose()

    print(f"\n{backend.name}: {sum(outcomes.values())} kills: {dict(outcomes)}")
    # Kills must mostly land inside the replay, or this test would prove little.
    assert outcomes["none"] >= KILLS * soak // 3
