"""``versioned_history/``: a ``before_flush`` listener copying old rows to history tables.

The example is a library (``history_meta.py``) with unit tests; its models are in
:mod:`tests.corpus.history_models`, its steps those of ``test_plain``,
``test_relationship``, ``test_w_mapper_versioning`` and ``test_joined_inheritance``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source


def attach(session: Session, m: Any) -> None:
    """``versioned_session(session)``, as every one of the example's tests does."""
    from examples.versioned_history.history_meta import versioned_session

    versioned_session(session)


def _stored(session: Session, m: Any) -> tuple[Any, Any, Any, Any]:
    return (
        session.scalars(select(m.SomeClass)).one(),
        session.scalars(select(m.Checked)).one(),
        session.scalars(select(m.BaseClass).filter_by(type="base")).one(),
        session.scalars(select(m.SubClassSamePk)).one(),
    )


def create(session: Session, m: Any) -> None:
    """The tests' first commits: sc1, a checked row, base1 and same1."""
    session.add_all(
        [
            m.SomeClass(name="sc1"),
            m.Checked(name="c1"),
            m.BaseClass(name="base1"),
            m.SubClassSamePk(name="same1", subdata2="same1subdata"),
        ]
    )
    session.commit()


def modify(session: Session, m: Any) -> None:
    """test_plain's and test_relationship's changes on the stored rows, one commit each:
    renamed twice, related to a new SomeRelated; the versioned subclasses changed."""
    sc, checked, base1, same1 = _stored(session, m)
    sc.name = "sc1modified"
    session.commit()
    assert sc.version == 2
    sc.name = "sc1modified2"
    sc.related = m.SomeRelated()
    checked.name = "c1modified"
    base1.name = "base1mod"
    same1.subdata2 = "same1subdatamod"
    session.commit()
    assert sc.version == 3
    assert checked.version == 2


def delete(session: Session, m: Any) -> None:
    """test_plain's last step: the stored sc deleted, which records a last history row."""
    session.delete(_stored(session, m)[0])
    session.commit()


VERSIONED_HISTORY = Example(
    name="versioned_history/history_meta",
    sources=(Source("versioned_history/history_meta.py"),),
    models="tests.corpus.history_models",
    phases=(
        Phase("create", create),
        Phase("modify", modify),
        Phase("delete", delete),
    ),
    session_setup=attach,
    # history_meta's "changed" column defaults to datetime.now(timezone.utc).
    volatile=("*_history.changed",),
)

EXAMPLES = (VERSIONED_HISTORY,)
