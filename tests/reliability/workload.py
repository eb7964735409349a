"""The campaign's workload and the ways it observes a database.

One journal of the campaign exercises every kind of operation replay applies: inserts on
the bulk path, many-to-many links to new and existing rows, updates of versioned rows
(with old values and version counters to check), a self-referential tree and deletes.
The database is observed by natural keys only, because surrogate keys differ between a
database where a replay was killed and one where it never started (a sequence that a
rolled-back transaction advanced stays advanced).
"""

from __future__ import annotations

import decimal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, aliased

from orm_ext import ledger
from tests.models import Account, Base, Node, Post, Tag, post_tag
from tests.scenario import make_sessions

REPO = Path(__file__).resolve().parents[2]
SEED_ACCOUNTS = 10
SEED_TAGS = 5


def reset(engine: Engine, *, drop_ledger: bool) -> None:
    """Recreate the test tables with the seed rows; drop the ledger too if asked."""
    Base.metadata.drop_all(engine)
    if drop_ledger:
        with engine.begin() as conn:
            for name in (ledger.LEDGER_TABLE, ledger.VERSION_TABLE):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        tags = [Tag(label=f"seed-t{i}") for i in range(SEED_TAGS)]
        session.add_all(tags)
        session.add_all(
            Account(code=f"A{i}", balance=decimal.Decimal(100)) for i in range(SEED_ACCOUNTS)
        )
        session.add_all(Post(title=f"seed-p{i}", tags=tags[: i + 1]) for i in range(3))
        session.add(Node(name="root"))
        session.commit()


def record(engine: Engine, path: Path, *, posts: int = 200, tag: str = "j") -> None:
    """Record the campaign's journal at ``path`` against ``engine``'s seed rows."""
    with make_sessions(engine)() as session, session.deferred_operations(path, overwrite=True):
        work(session, posts=posts, tag=tag)


def work(session: Session, *, posts: int, tag: str) -> None:
    """The body of the campaign's deferred block (also usable directly on a database)."""
    seed_tags = session.scalars(select(Tag).where(Tag.label.like("seed-%"))).all()
    for i in range(posts):
        labels = [Tag(label=f"{tag}-t{i}")] if i % 4 == 0 else []
        session.add(Post(title=f"{tag}-p{i}", tags=[seed_tags[i % len(seed_tags)], *labels]))
        if i % 50 == 49:
            session.flush()
    for account in session.scalars(select(Account).order_by(Account.code)):
        account.balance += 1
    session.flush()
    root = session.scalars(select(Node).where(Node.name == "root")).one()
    for i in range(10):
        branch = Node(name=f"{tag}-n{i}", parent=root)
        Node(name=f"{tag}-n{i}-leaf", parent=branch)
    doomed = session.scalars(select(Post).where(Post.title == "seed-p0")).one()
    session.delete(doomed)
    session.flush()


def natural_state(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every test table by natural keys: what must be all-or-nothing after a replay."""
    parent = aliased(Node)
    with engine.connect() as conn:
        return {
            "account": sorted(
                (code, str(balance), revision)
                for code, balance, revision in conn.execute(
                    select(Account.code, Account.balance, Account.revision)
                )
            ),
            "post": sorted(conn.scalars(select(Post.title))),
            "tag": sorted(conn.scalars(select(Tag.label))),
            "post_tag": sorted(
                tuple(row)
                for row in conn.execute(
                    select(Post.title, Tag.label)
                    .join(post_tag, post_tag.c.post_id == Post.id)
                    .join(Tag, Tag.id == post_tag.c.tag_id)
                )
            ),
            "node": sorted(
                tuple(row)
                for row in conn.execute(
                    select(Node.name, parent.name).outerjoin(parent, Node.parent)
                )
            ),
        }


def applied_ids(engine: Engine) -> list[str]:
    """The journal ids in the ledger (none if the ledger does not exist yet)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(ledger.LEDGER_TABLE):
            return []
        return sorted(conn.scalars(select(ledger.ledger_table.c.journal_id)))


# -- child processes ----------------------------------------------------------------------


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` with ``python -c`` from the checkout, reading its output as text."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc


def read_until(proc: subprocess.Popen[str], wanted: str) -> list[str]:
    """Read ``proc``'s output lines up to and including ``wanted``."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if lines[-1] == wanted:
            return lines
    raise AssertionError(f"the child process ended before printing {wanted!r}: {lines}")


# -- connections of other processes ---------------------------------------------------------

# Printed by a child process for every database connection it opens, so that the parent
# can wait until the server has finished with them (rolled back or committed) after the
# child was killed: only then is what the database shows final.
CONNECTION_ANNOUNCER = """
from sqlalchemy import event

def announce_connections(engine):
    query = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    sql = query.get(engine.dialect.name)
    if sql is None:
        return

    @event.listens_for(engine, "connect")
    def _announce(dbapi_connection, record):
        cursor = dbapi_connection.cursor()
        cursor.execute(sql)
        print("connection", cursor.fetchone()[0], flush=True)
        cursor.close()
        dbapi_connection.rollback()
"""


def connection_ids(lines: Iterable[str]) -> list[int]:
    """The connection ids a child announced among its output ``lines``."""
    return [int(line.split()[1]) for line in lines if line.startswith("connection ")]


def wait_until_gone(engine: Engine, ids: list[int], timeout: float = 60.0) -> None:
    """Wait until the server no longer has any of the connections ``ids``."""
    if not ids or engine.dialect.name == "sqlite":
        return
    if engine.dialect.name == "postgresql":
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid IN :ids")
    else:
        query = sa.text("SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN :ids")
    query = query.bindparams(sa.bindparam("ids", expanding=True))
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if not conn.execute(query, {"ids": ids}).scalar():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server still has connections {ids} after {timeout} s")
        time.sleep(0.05)
