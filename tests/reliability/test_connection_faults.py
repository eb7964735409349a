"""The database connection failing under a replay (SPEC §5.1, §5.3).

Two kinds of fault, on the servers (SQLite has no connection to lose):

- the server ends the replay's connection (PostgreSQL ``pg_terminate_backend``, MariaDB
  ``KILL``) before a random one of the statements the replay sends;
- the connection is cut around COMMIT by a proxy on loopback, either before the COMMIT
  reaches the server or after the server committed but before its answer arrives.

Each time: one clear ``DeferredOperationError`` naming the journal, the database and the
journal unchanged (or, when the commit landed, the whole journal applied and the error
saying so), and a rerun that leaves the journal applied exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from journal import Journal
from orm_ext import DeferredOperationError, ledger
from tests.conftest import Backend
from tests.reliability import workload
from tests.reliability.tcp_proxy import CuttingProxy
from tests.scenario import replay, terminate

pytestmark = pytest.mark.reliability

TERMINATIONS = 20
CUTS = 5


@pytest.fixture
def server(backend: Backend) -> Backend:
    if backend.name == "sqlite":
        pytest.skip("SQLite has no server connection to lose")
    return backend


def watch(engine: sa.Engine, *, kill_before: int = 0, admin: sa.Engine | None = None) -> list[str]:
    """The statements ``engine`` sends; its connection is ended before the n-th if asked."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)
        if len(seen) == kill_before and admin is not None:
            terminate(admin, conn)

    return seen


@pytest.mark.slow
def test_connection_terminated_before_a_random_statement(
    server: Backend, tmp_path: Path, soak: int
) -> None:
    engine = server.engine()
    admin = server.engine(isolation_level="AUTOCOMMIT")
    path = tmp_path / "ops.dbm"
    rng = random.Random(f"terminate-{server.name}")

    # Undisturbed replays count the statements a replay sends, with and without the
    # ledger's migration, and give the state a replay leaves. The first ones are those
    # of ledger.ensure_ledger: its own connections, before the replay transaction.
    statements: dict[bool, int] = {}
    preparing: dict[bool, int] = {}
    for drop_ledger in (True, False):
        workload.reset(engine, drop_ledger=drop_ledger)
        before = workload.natural_state(engine)
        workload.record(engine, path)
        counter = server.engine()
        sent = watch(counter)
        ledger.ensure_ledger(counter)
        preparing[drop_ledger] = len(sent)
        assert replay(counter, path).applied
        statements[drop_ledger] = len(sent)
    after = workload.natural_state(engine)

    outcomes: Counter[str] = Counter()
    for attempt in range(TERMINATIONS * soak):
        drop_ledger = attempt % 4 == 0
        workload.reset(engine, drop_ledger=drop_ledger)
        workload.record(engine, path)
        journal_bytes = path.read_bytes()
        target = rng.randint(1, statements[drop_ledger])
        replayer = server.engine()
        seen = watch(replayer, kill_before=target, admin=admin)

        try:
            replay(replayer, path)
        except DeferredOperationError as err:
            message = str(err)
            assert str(path) in message, message
            assert "nothing was applied" in message.lower(), message
            assert workload.natural_state(engine) == before, f"statement {target}: {seen[-1]}"
            assert path.read_bytes() == journal_bytes
            assert replay(engine, path).applied
            outcomes["error, rerun applied"] += 1
        else:
            # Only the ledger's check and migration run on connections of their own, and
            # they are retried (as when replayers race to create the ledger): losing one
            # of those connections costs nothing.
            assert target <= preparing[drop_ledger], f"statement {target}: {seen[target - 1]}"
            outcomes["migration retried, applied"] += 1
        replayer.dispose()
        assert len(seen) >= target, "the replay ended before the statement to kill"
        assert workload.natural_state(engine) == after
        assert replay(engine, path).applied is False

    print(f"\n{server.name}: {sum(outcomes.values())} terminations: {dict(outcomes)}")
    assert outcomes["error, rerun applied"] >= TERMINATIONS * soak // 2


@pytest.fixture
def proxy(server: Backend) -> Iterator[CuttingProxy]:
    """A cutting proxy in front of ``server``, closed after the test."""
    url = sa.make_url(server.url)
    proxy = CuttingProxy(url.host or "127.0.0.1", url.port or 0)
    yield proxy
    proxy.close()


def through(proxy: CuttingProxy, backend: Backend, request: pytest.FixtureRequest) -> sa.Engine:
    """An engine on ``backend``'s database A whose connections go through ``proxy``."""
    engine = sa.create_engine(sa.make_url(backend.url).set(host="127.0.0.1", port=proxy.port))
    request.addfinalizer(engine.dispose)
    return engine


@pytest.mark.parametrize("mode", ["drop_commit", "drop_answer"])
def test_commit_outcome_unknown(
    server: Backend,
    proxy: CuttingProxy,
    tmp_path: Path,
    soak: int,
    mode: Any,
    request: pytest.FixtureRequest,
) -> None:
    """With the COMMIT or its answer lost, the error says from the ledger what to do."""
    engine = server.engine()
    proxied = through(proxy, server, request)
    path = tmp_path / "ops.dbm"
    for _ in range(CUTS * soak):
        workload.reset(engine, drop_ledger=False)
        with engine.begin() as conn:
            ledger.upgrade(conn)
        before = workload.natural_state(engine)
        workload.record(engine, path)
        journal_bytes = path.read_bytes()
        with Journal(path) as journal:
            journal_id = journal.journal_id

        proxy.arm(mode)
        with pytest.raises(DeferredOperationError, match="while committing") as caught:
            replay(proxied, path)
        message = str(caught.value)
        assert str(path) in message
        assert path.read_bytes() == journal_bytes
        landed = mode == "drop_answer"
        if landed:
            assert "shows the journal applied" in message, message
            assert journal_id in workload.applied_ids(engine)
            assert workload.natural_state(engine) != before
        else:
            assert "does not show the journal applied" in message, message
            assert workload.natural_state(engine) == before

        rerun = replay(engine, path)
        assert rerun.applied is not landed
        after = workload.natural_state(engine)
        assert replay(engine, path).applied is False
        assert workload.natural_state(engine) == after != before
        assert workload.applied_ids(engine).count(journal_id) == 1
    assert proxy.cuts == CUTS * soak


def test_commit_outcome_unknown_and_the_database_gone(
    server: Backend, proxy: CuttingProxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The answer to COMMIT is lost and the database stays out of reach: say so, and what to do."""
    engine = server.engine()
    proxied = through(proxy, server, request)
    workload.reset(engine, drop_ledger=False)
    with engine.begin() as conn:
        ledger.upgrade(conn)
    path = tmp_path / "ops.dbm"
    workload.record(engine, path)
    proxy.arm("drop_answer", then_refuse=True)
    with pytest.raises(DeferredOperationError, match="cannot be reached") as caught:
        replay(proxied, path)
    assert str(path) in str(caught.value)
    assert "replay the journal again once it is back" in str(caught.value)
    # The commit had landed: the rerun the message asks for applies nothing twice.
    assert replay(engine, path).applied is False
