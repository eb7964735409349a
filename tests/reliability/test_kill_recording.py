"""SIGKILL of a recording process at random moments (SPEC §3, §4).

The recording child flushes, checkpoints with ``commit()``, and now and then rolls back
a savepoint (which rewinds the journal), announcing each acknowledged flush. Killed at any
moment (while creating the file, appending, rewinding or sealing), the journal must keep
every acknowledged batch whole and in order, must never pass as sealed unless the seal
completed, and must only ever raise SPEC §2 exceptions when read or replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from journal import Journal, JournalCorruptError, JournalIncompleteError
from tests.reliability import workload
from tests.scenario import make_sessions, seed, table_rows

pytestmark = pytest.mark.reliability

KILLS = 50
FLUSHES = 40
PER_FLUSH = 5

CHILD = f"""
import sys
from sqlalchemy import create_engine
from tests.models import Post
from tests.scenario import make_sessions

engine = create_engine(sys.argv[1])
with make_sessions(engine)() as session:
    print("go", flush=True)
    with session.deferred_operations(sys.argv[2], overwrite=True):
        for k in range({FLUSHES}):
            session.add_all(Post(title=f"w{{k}}-{{j}}") for j in range({PER_FLUSH}))
            session.flush()
            print("ack", k, flush=True)
            if k % 5 == 4:
                session.commit()
            if k % 7 == 6:
                savepoint = session.begin_nested()
                session.add(Post(title=f"discard{{k}}"))
                session.flush()
                savepoint.rollback()
                print("rewound", k, flush=True)
    print("sealed", flush=True)
"""


def start_child(url: str, path: Path) -> subprocess.Popen[str]:
    """Start the recording child; return once it is about to open the journal."""
    proc = workload.spawn(CHILD, url, str(path))
    workload.read_until(proc, "go")
    return proc


def batch_titles(path: Path) -> list[list[str]]:
    """The post titles of each batch of the journal at ``path``, in order."""
    with Journal(path) as journal:
        return [
            [op["values"]["title"] for op in batch.operations if op["op"] == "insert"]
            for batch in journal.batches()
        ]


@pytest.mark.slow
def test_sigkill_while_recording_keeps_acknowledged_batches(
    tmp_path: Path, sqlite_url: str, soak: int, request: pytest.FixtureRequest
) -> None:
    engine = sa.create_engine(sqlite_url)
    request.addfinalizer(engine.dispose)
    seed(engine)
    rows = table_rows(engine)
    rng = random.Random("kill-recording")
    path = tmp_path / "ops.dbm"

    proc = start_child(sqlite_url, path)
    started = time.monotonic()
    out, _ = proc.communicate(timeout=300)
    duration = time.monotonic() - started
    assert proc.returncode == 0 and out.rstrip().endswith("sealed"), out
    expected = [[f"w{k}-{j}" for j in range(PER_FLUSH)] for k in range(FLUSHES)]
    assert batch_titles(path) == expected

    outcomes: Counter[str] = Counter()
    for attempt in range(KILLS * soak):
        path.unlink(missing_ok=True)
        proc = start_child(sqlite_url, path)
        # Kill after a random acknowledged flush (or none), at a random moment of the
        # work that follows it: the next flush, a checkpoint, a rewind or the seal.
        target = rng.randint(-1, FLUSHES - 1)
        lines = [] if target < 0 else workload.read_until(proc, f"ack {target}")
        time.sleep(rng.uniform(0, 2 * duration / FLUSHES))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        lines += rest.split("\n")
        acknowledged = sum(line.startswith("ack ") for line in lines)
        sealed = "sealed" in lines

        if not path.exists():
            assert acknowledged == 0, f"attempt {attempt}: acknowledged batches but no file"
            outcomes["before the file"] += 1
            continue
        try:
            with Journal(path) as journal:
                state = journal.state
        except JournalCorruptError:
            # Killed while the file was being created: the half-made file is refused,
            # never mistaken for a journal, and nothing had been acknowledged.
            created_half = True
        else:
            created_half = False
        if created_half:
            assert acknowledged == 0, f"attempt {attempt}: a journal with batches is refused"
            outcomes["while creating"] += 1
            continue
        titles = batch_titles(path)
        kept = [t for t in titles if not t[0].startswith("discard")]
        assert kept == expected[: len(kept)], f"attempt {attempt}: batches out of order"
        assert len(kept) >= acknowledged, f"attempt {attempt}: an acknowledged batch is lost"
        # A savepoint's batch is kept only when the kill came before its rewind.
        assert all(not t[0].startswith("discard") for t in titles[:-1]), f"attempt {attempt}"
        if sealed:
            assert state == "sealed"
        if state == "sealed":
            assert kept == expected and len(titles) == FLUSHES
            with Journal(path) as journal:
                journal.verify()
            outcomes["sealed"] += 1
            continue
        with Journal(path) as journal, pytest.raises(JournalIncompleteError):
            journal.verify()
        with make_sessions(engine)() as session, pytest.raises(JournalIncompleteError):
            session.reconnect_and_commit(path)
        assert table_rows(engine) == rows
        outcomes["incomplete"] += 1

    print(f"\n{sum(outcomes.values())} kills while recording: {dict(outcomes)}")
    assert outcomes["incomplete"] >= KILLS * soak // 2
