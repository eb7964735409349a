"""Models for ``examples/versioned_history``, which ships the ``Versioned`` mixin and its
tests but no models: the classes of its README and of ``test_versioning.py``.

Imported only after :func:`tests.corpus.loader.load` has put the cached examples on
``sys.path`` (by :class:`tests.corpus.spec.Example` with ``models=`` set to this module).
"""

from __future__ import annotations

from typing import Any, ClassVar

from examples.versioned_history.history_meta import Versioned
from sqlalchemy import Column, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, relationship


class Base(DeclarativeBase):
    pass


class SomeRelated(Base):
    """test_relationship's related class."""

    __tablename__ = "somerelated"

    id = Column(Integer, primary_key=True)


class SomeClass(Versioned, Base):
    """The README's class, with test_relationship's many-to-one."""

    __tablename__ = "sometable"

    id = Column(Integer, primary_key=True)
    name = Column(String(50))
    related_id = Column(Integer, ForeignKey("somerelated.id"))
    related = relationship("SomeRelated", backref="classes")


class Checked(Versioned, Base):
    """test_w_mapper_versioning's class: the version column is also the mapper's
    ``version_id_col``."""

    __tablename__ = "checked"
    use_mapper_versioning = True

    id = Column(Integer, primary_key=True)
    name = Column(String(50))


class BaseClass(Versioned, Base):
    """test_joined_inheritance's base class."""

    __tablename__ = "basetable"

    id = Column(Integer, primary_key=True)
    name = Column(String(50))
    type = Column(String(20))

    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": type,
        "polymorphic_identity": "base",
    }


class SubClassSamePk(BaseClass):
    """test_joined_inheritance's subclass sharing the base's primary key."""

    __tablename__ = "subtable2"

    id = Column(Integer, ForeignKey("basetable.id"), primary_key=True)
    subdata2 = Column(String(50))

    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "same"}
