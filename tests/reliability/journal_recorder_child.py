"""A recording process for the disk-full tests: writes batches until the disk says no.

Run as ``python -m tests.reliability.journal_recorder_child MODE PATH LIMIT SEED BYTES``:

* ``MODE`` ``writer`` appends through :class:`journal.JournalWriter`; ``session`` records
  through ``JournalingSession.deferred_operations`` on the SQLite database ``$DATABASE``.
* ``LIMIT`` caps every file this process writes (``RLIMIT_FSIZE``; 0 for no cap), so the
  kernel fails a write past it with EFBIG, as a full disk would with ENOSPC.
* ``SEED`` and ``BYTES`` decide the batches (see :func:`batch`), about ``BYTES`` in all.

It prints one line per step the parent checks against the file: ``created``, ``ack N``
after batch N is acknowledged, ``sealing``, ``sealed``, or ``error TYPE MESSAGE`` (as
JSON) for the exception that stopped it. It exits 0 when sealed, 3 after a JournalError,
4 after any other exception.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
import traceback
from typing import Any

import journal

PAD_MAX = 1500


def batch(seed: int, number: int) -> list[dict[str, Any]]:
    """The operations of batch ``number`` of a run with ``seed`` (the parent rebuilds them)."""
    rng = random.Random(seed * 1_000_003 + number)
    return [
        {"op": "insert", "batch": number, "i": i, "pad": "x" * rng.randrange(PAD_MAX)}
        for i in range(rng.randint(1, 40))
    ]


def batch_count(seed: int, total: int) -> int:
    """How many batches make about ``total`` bytes of operations for ``seed``."""
    size = number = 0
    while size < total:
        number += 1
        size += sum(len(op["pad"]) + 40 for op in batch(seed, number))
    return number


def session_names(seed: int, number: int) -> list[str]:
    """The asset names the session child creates in flush ``number``."""
    return [
        f"a{number}-{i}-" + "y" * (len(op["pad"]) // 20) for i, op in enumerate(batch(seed, number))
    ]


def say(*parts: object) -> None:
    print(*parts, flush=True)


def record_with_writer(path: str, seed: int, batches: int) -> None:
    writer = journal.JournalWriter.create(path)
    say("created")
    for number in range(1, batches + 1):
        writer.append(batch(seed, number))
        say("ack", number)
    say("sealing")
    writer.seal()
    say("sealed")


def record_with_session(path: str, seed: int, batches: int) -> None:
    import sqlalchemy as sa

    from tests.models import Asset
    from tests.scenario import make_sessions

    engine = sa.create_engine(f"sqlite:///{os.environ['DATABASE']}")
    with make_sessions(engine)() as session:
        with session.deferred_operations(path):
            say("created")
            for number in range(1, batches + 1):
                session.add_all(Asset(name=name) for name in session_names(seed, number))
                session.flush()
                say("ack", number)
            say("sealing")
        say("sealed")
    engine.dispose()


def main(argv: list[str]) -> int:
    mode, path, limit, seed, total = argv
    # Without this the kernel kills the process at the limit instead of failing the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if int(limit):
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    record = record_with_writer if mode == "writer" else record_with_session
    try:
        record(path, int(seed), batch_count(int(seed), int(total)))
    except journal.JournalError as err:
        say("error", type(err).__name__, json.dumps(str(err)))
        return 3
    except BaseException as err:
        say("error", type(err).__name__, json.dumps(str(err)))
        traceback.print_exc()
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
