"""The seed scenario of ``trackteroid-session.txt`` and tools to drive and observe a database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from orm_ext import JournalingSession, ReplayResult
from tests.models import (
    Asset,
    AssetVersion,
    Base,
    Component,
    ComponentLocation,
    Task,
)


@dataclass
class StatementLog:
    """Every statement an engine sends, by first keyword."""

    statements: list[str] = field(default_factory=list)

    def writes(self) -> list[str]:
        """The INSERT, UPDATE and DELETE statements seen so far."""
        return [
            s
            for s in self.statements
            if s.lstrip().split(None, 1)[0].upper()
            in {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"}
        ]

    def selects(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]

    def clear(self) -> None:
        self.statements.clear()


def watch(engine: Engine) -> StatementLog:
    """Return a log that records every statement ``engine`` executes from now on.

    After execution, so that a statement refused before it was sent does not count.
    """
    log = StatementLog()

    @event.listens_for(engine, "after_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.statements.append(statement)

    return log


def make_sessions(engine: Engine, **kw: Any) -> sessionmaker[JournalingSession]:
    return sessionmaker(engine, class_=JournalingSession, **kw)


def replay(engine: Engine, path: Path, **kw: Any) -> ReplayResult:
    """Replay ``path`` into ``engine`` with a new session (``journal_key=`` goes to it)."""
    key = kw.pop("journal_key", None)
    with make_sessions(engine)(journal_key=key) as session:
        return session.reconnect_and_commit(path, **kw)


def enforce_foreign_keys(engine: Engine) -> None:
    """Make SQLite enforce foreign keys (and so ON DELETE CASCADE); servers always do."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))


def terminate(admin: Engine, conn: Connection) -> None:
    """End ``conn``'s server session from another connection, as an operator would."""
    with admin.connect() as other:
        if admin.dialect.name == "postgresql":
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        else:
            pid = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            other.exec_driver_sql(f"KILL {int(pid)}")


def seed(engine: Engine) -> None:
    """Create the schema and the asset the scenario starts from."""
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        asset = Asset(name="bc0040_comp")
        task = Task(name="compositing")
        version = AssetVersion(asset=asset, task=task, version=1)
        component = Component(name="main", version=version)
        component.locations.append(ComponentLocation(resource_identifier="/v1/main.exr"))
        session.add_all([asset, version])
        session.commit()


def record_seed_scenario(session: JournalingSession) -> AssetVersion:
    """The body of the seed's deferred block: query, create a version graph, publish it."""
    asset = session.scalars(select(Asset).where(Asset.name == "bc0040_comp")).one()
    previous = asset.versions[-1]
    version = AssetVersion(asset=asset, task=previous.task, version=previous.version + 1)
    component = Component(name="main", version=version)
    ComponentLocation(resource_identifier="/path/to/final/file", component=component)
    session.add(version)
    session.flush()
    version.is_published = True
    return version


def table_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every test table, without surrogate keys where natural ones exist."""
    with engine.connect() as conn:
        return {
            t.name: sorted(tuple(row) for row in conn.execute(select(t)))
            for t in Base.metadata.sorted_tables
        }
