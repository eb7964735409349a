"""``inheritance/``: joined, single and concrete table inheritance of one Company model.

The three scripts share one demo: a company with managers, engineers and a plain person,
committed; spongebob found through Person and Engineer, renamed and committed; then two
``with_polymorphic`` queries. The demo is one phase as written (its queries follow its
writes in the same session) and is also split in two, so that a refused query cannot hide
how the writes replay. The last two phases are ours: a reorganisation (a person removed
through ``delete-orphan``, one hired, one moved to another company) and a company
dissolved (deleted with its employees).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, with_polymorphic

from tests.corpus.spec import Example, Phase, Source


def _staff(m: Any) -> list[Any]:
    return [
        m.Manager(name="mr krabs", status="AAB", manager_name="manager1"),
        m.Engineer(
            name="spongebob", status="BBA", engineer_name="engineer1", primary_language="java"
        ),
        m.Person(name="joesmith"),
        m.Engineer(
            name="patrick", status="CGG", engineer_name="engineer2", primary_language="python"
        ),
        m.Manager(name="jsmith", status="ABA", manager_name="manager2"),
    ]


def found(session: Session, m: Any) -> None:
    """The demo's first commit: company1 and its five employees."""
    session.add(m.Company(name="company1", employees=_staff(m)))
    session.commit()


def rename(session: Session, m: Any) -> None:
    """The demo's second commit: spongebob loaded as a Person and as an Engineer (the same
    object), given a new engineer_name."""
    spongebob = session.scalars(select(m.Person).filter_by(name="spongebob")).one()
    spongebob2 = session.scalars(select(m.Engineer).filter_by(name="spongebob")).one()
    assert spongebob is spongebob2
    spongebob2.engineer_name = "hes spongebob!"
    session.commit()


def _queries(session: Session, m: Any, *, concrete: bool) -> None:
    """The demo's two ``with_polymorphic`` queries (its concrete variant uses "*")."""
    if concrete:
        eng_manager = with_polymorphic(m.Person, "*")
    else:
        eng_manager = with_polymorphic(m.Person, [m.Engineer, m.Manager], flat=True)
    criteria = or_(
        eng_manager.Engineer.engineer_name == "engineer1",
        eng_manager.Manager.manager_name == "manager2",
    )
    session.scalars(select(eng_manager).filter(criteria)).all()
    session.scalars(
        select(m.Company).join(m.Company.employees.of_type(eng_manager)).filter(criteria)
    ).all()


def demo(session: Session, m: Any, *, concrete: bool = False) -> None:
    """The demo as written: found, print the employees, rename, the two queries."""
    company = m.Company(name="company1", employees=_staff(m))
    session.add(company)
    session.commit()
    [repr(e) for e in company.employees]
    rename(session, m)
    _queries(session, m, concrete=concrete)
    session.commit()


def reorganise(session: Session, m: Any) -> None:
    """Ours, on the stored company: joesmith removed (``delete-orphan``), an engineer
    hired, a manager's status changed, patrick moved to a new company2."""
    company = session.scalars(select(m.Company).filter_by(name="company1")).one()
    by_name = {e.name: e for e in company.employees}
    company.employees.remove(by_name["joesmith"])
    company.employees.append(
        m.Engineer(name="sandy", status="AAA", engineer_name="engineer3", primary_language="rust")
    )
    by_name["jsmith"].status = "BBB"
    session.add(m.Company(name="company2", employees=[by_name["patrick"]]))
    session.commit()


def dissolve(session: Session, m: Any) -> None:
    """Ours: the stored company deleted, and its employees with it (``delete-orphan``)."""
    session.delete(session.scalars(select(m.Company).filter_by(name="company1")).one())
    session.commit()


def _example(script: str) -> Example:
    return Example(
        name=f"inheritance/{script}",
        sources=(Source(f"inheritance/{script}.py"),),
        phases=(
            Phase("demo", functools.partial(demo, concrete=script == "concrete"), after=()),
            Phase("found", found, after=()),
            Phase("rename", rename, after=("found",)),
            Phase("reorganise", reorganise, after=("found", "rename")),
            Phase("dissolve", dissolve, after=("found", "rename")),
        ),
    )


EXAMPLES = tuple(_example(script) for script in ("joined", "single", "concrete"))
