"""Mapped classes the tests record and replay: the seed scenario and the special cases.

The seed scenario is the one of ``seeds/trackteroid-session.txt``: an asset with versions,
each version with a task and components, each component with locations.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any, ClassVar

from sqlalchemy import Column, ForeignKey, Integer, Numeric, String, Table, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The declarative base of every test model."""


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
    version: Mapped[int] = mapped_column(default=1)
    is_published: Mapped[bool] = mapped_column(default=False)
    comment: Mapped[str | None] = mapped_column(String(200))
    asset: Mapped[Asset] = relationship(back_populates="versions")
    task: Mapped[Task | None] = relationship()
    components: Mapped[list[Component]] = relationship(
        back_populates="version", cascade="all, delete-orphan"
    )


class Component(Base):
    __tablename__ = "component"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("asset_version.id"))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[AssetVersion] = relationship(back_populates="components")
    locations: Mapped[list[ComponentLocation]] = relationship(
        back_populates="component", cascade="all, delete-orphan"
    )


class ComponentLocation(Base):
    __tablename__ = "component_location"
    id: Mapped[int] = mapped_column(primary_key=True)
    component_id: Mapped[int] = mapped_column(ForeignKey("component.id"))
    resource_identifier: Mapped[str] = mapped_column(String(300))
    component: Mapped[Component] = relationship(back_populates="locations")


class Node(Base):
    """A self-referential tree."""

    __tablename__ = "node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("node.id"))
    parent: Mapped[Node | None] = relationship(back_populates="children", remote_side=[id])
    children: Mapped[list[Node]] = relationship(back_populates="parent")


post_tag = Table(
    "post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("post.id"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id"), primary_key=True),
)


class Post(Base):
    """One side of a many-to-many relationship through a secondary table."""

    __tablename__ = "post"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100), unique=True)
    tags: Mapped[list[Tag]] = relationship(secondary=post_tag, back_populates="posts")


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50), unique=True)
    posts: Mapped[list[Post]] = relationship(secondary=post_tag, back_populates="tags")


class Account(Base):
    """A versioned row (``version_id_col``) with a natural key and typed values."""

    __tablename__ = "account"
    __table_args__ = (UniqueConstraint("code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20))
    balance: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 2), default=decimal.Decimal(0))
    opened: Mapped[dt.date | None]
    note: Mapped[str | None] = mapped_column(String(200), deferred=True)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": revision}
