"""The seed scenario as a demo: an asset pipeline recorded offline and replayed later.

``orm-journal demo`` runs each step in its own process, as a recording worker and a
replay service would: ``orm_ext.demo.main(["record" | "replay", DATABASE_URL, JOURNAL])``.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from orm_ext.session import JournalingSession

__all__ = [
    "Asset",
    "AssetVersion",
    "Base",
    "Component",
    "ComponentLocation",
    "Task",
    "record",
    "replay",
    "setup",
]


class Base(DeclarativeBase):
    """The demo's models."""


class Asset(Base):
    __tablename__ = "asset"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    versions: Mapped[list[AssetVersion]] = relationship(
        back_populates="asset", order_by="AssetVersion.version"
    )


class Task(Base):
    __tablename__ = "task"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class AssetVersion(Base):
    __tablename__ = "asset_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("task.id"))
    version: Mapped[int]
    is_published: Mapped[bool] = mapped_column(default=False)
    asset: Mapped[Asset] = relationship(back_populates="versions")
    task: Mapped[Task | None] = relationship()
    components: Mapped[list[Component]] = relationship(back_populates="version")


class Component(Base):
    __tablename__ = "component"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("asset_version.id"))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[AssetVersion] = relationship(back_populates="components")
    locations: Mapped[list[ComponentLocation]] = relationship(back_populates="component")


class ComponentLocation(Base):
    __tablename__ = "component_location"
    id: Mapped[int] = mapped_column(primary_key=True)
    component_id: Mapped[int] = mapped_column(ForeignKey("component.id"))
    resource_identifier: Mapped[str] = mapped_column(String(300))
    component: Mapped[Component] = relationship(back_populates="locations")


def setup(url: str) -> None:
    """Create the demo database with one published asset version, unless it has it already.

    A second demo in the same directory goes on from the database the first one left:
    it records and replays the next version.
    """
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with sessionmaker(engine)() as session:
        if session.scalars(select(Asset).where(Asset.name == "bc0040_comp")).first():
            engine.dispose()
            return
        asset = Asset(name="bc0040_comp")
        version = AssetVersion(asset=asset, task=Task(name="compositing"), version=1)
        component = Component(name="main", version=version)
        ComponentLocation(
            resource_identifier="/renders/bc0040_comp/v001/main.exr", component=component
        )
        session.add(asset)
        session.commit()
    engine.dispose()


def record(url: str, journal: str) -> int:
    """Record the seed scenario into ``journal``; return the number of operations."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, class_=JournalingSession)
    with sessions() as session, session.deferred_operations(journal, overwrite=True) as recorded:
        asset = session.scalars(select(Asset).where(Asset.name == "bc0040_comp")).one()
        previous = asset.versions[-1]
        version = AssetVersion(asset=asset, task=previous.task, version=previous.version + 1)
        component = Component(name="main", version=version)
        ComponentLocation(resource_identifier="/path/to/final/file", component=component)
        session.add(version)
        session.flush()
        version.is_published = True
    engine.dispose()
    return recorded.operations


def replay(url: str, journal: str) -> bool:
    """Replay ``journal`` into the database; return whether it was applied."""
    engine = create_engine(url)
    with sessionmaker(engine, class_=JournalingSession)() as session:
        result = session.reconnect_and_commit(journal)
    engine.dispose()
    return result.applied


def main(argv: list[str]) -> int:
    """Run one step of the demo in this process and print its outcome."""
    step, url, journal = argv
    if step == "record":
        print(record(url, journal))
    elif step == "replay":
        print(replay(url, journal))
    else:
        raise SystemExit(f"unknown step {step!r}")
    return 0
