"""Eight replayer processes on one directory of fifty journals (SPEC §5.3).

Every process walks the whole directory in its own order; half of them wait for a
journal another process is applying, half skip it (``if_busy="skip"``). The ledger does
not exist at the start, so they also race to create it. Every journal must end up applied
exactly once, by exactly one process, and the totals must add up.
"""

from __future__ import annotations

import decimal
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from journal import Journal
from tests.conftest import Backend
from tests.models import Account, Post, Tag, post_tag
from tests.reliability import workload
from tests.scenario import make_sessions

pytestmark = pytest.mark.reliability

PROCESSES = 8
JOURNALS = 50
POSTS = 20

REPLAYER = """
import json, random, sys
from pathlib import Path
from sqlalchemy import create_engine
from tests.scenario import make_sessions

url, directory, number = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
paths = sorted(directory.glob("*.dbm"))
random.Random(number).shuffle(paths)
if_busy = "wait" if number % 2 == 0 else "skip"
engine = create_engine(url)
sessions = make_sessions(engine)
for path in paths:
    with sessions() as session:
        result = session.reconnect_and_commit(path, if_busy=if_busy)
    print(json.dumps([result.journal_id, result.applied, result.busy]), flush=True)
"""


def record_journals(engine: Engine, directory: Path, count: int) -> list[str]:
    """Record ``count`` journals, each adding posts and paying into its own account."""
    ids = []
    for j in range(count):
        path = directory / f"{j:03}.dbm"
        with make_sessions(engine)() as session, session.deferred_operations(path):
            tag = session.scalars(select(Tag).where(Tag.label == f"seed-t{j % 5}")).one()
            for i in range(POSTS):
                session.add(Post(title=f"c{j}-p{i}", tags=[tag]))
            account = session.scalars(select(Account).where(Account.code == f"C{j}")).one()
            account.balance += j + 1
        with Journal(path) as journal:
            ids.append(journal.journal_id)
    return ids


@pytest.mark.slow
def test_eight_replayers_apply_each_of_fifty_journals_once(
    backend: Backend, tmp_path: Path, soak: int
) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite serialises writers in one file; the servers are what this loads")
    engine = backend.engine()
    journals = JOURNALS * soak
    workload.reset(engine, drop_ledger=True)
    with Session(engine) as session:
        session.add_all(
            Account(code=f"C{j}", balance=decimal.Decimal(100)) for j in range(journals)
        )
        session.commit()
    directory = tmp_path / "journals"
    directory.mkdir()
    ids = record_journals(engine, directory, journals)

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REPLAYER, backend.url, str(directory), str(n)],
            cwd=workload.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    applied: Counter[str] = Counter()
    answers = busy = 0
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
            for line in out.splitlines():
                journal_id, was_applied, was_busy = json.loads(line)
                answers += 1
                busy += was_busy
                applied[journal_id] += was_applied
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()

    print(f"\n{backend.name}: {answers} replay calls, {busy} skipped as busy")
    assert answers == PROCESSES * journals
    assert applied == Counter(dict.fromkeys(ids, 1))
    assert workload.applied_ids(engine) == sorted(ids)
    with engine.connect() as conn:
        posts = conn.scalar(select(func.count()).where(Post.title.like("c%")))
        links = conn.scalar(
            select(func.count())
            .select_from(post_tag.join(Post, Post.id == post_tag.c.post_id))
            .where(Post.title.like("c%"))
        )
        paid = conn.scalar(select(func.sum(Account.balance)).where(Account.code.like("C%")))
        revisions = set(conn.scalars(select(Account.revision).where(Account.code.like("C%"))))
    assert posts == links == journals * POSTS
    assert paid == 100 * journals + sum(range(1, journals + 1))
    assert revisions == {2}
