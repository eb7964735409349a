"""Dictionary-shaped collections: ``vertical/`` (both) and ``dynamic_dict``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source

# -- examples/vertical/dictlike.py: its __main__ block ---------------------------------------


def describe_stoat(session: Session, m: Any) -> None:
    """dictlike's first commit: the stoat with two facts set through ``obj[key]``."""
    stoat = m.Animal("stoat")
    stoat["color"] = "reddish"
    stoat["cuteness"] = "somewhat"
    str(stoat.facts["color"])
    session.add(stoat)
    session.commit()


def _change_and_add(session: Session, m: Any) -> None:
    critter = session.query(m.Animal).filter(m.Animal.name == "stoat").one()
    assert (critter["color"], critter["cuteness"]) == ("reddish", "somewhat")
    critter["cuteness"] = "very"
    for name, facts in (
        ("marten", {"color": "brown", "cuteness": "somewhat"}),
        ("shrew", {"cuteness": "somewhat", "poisonous-part": "saliva"}),
        ("slow loris", {"cuteness": "fairly", "poisonous-part": "elbows"}),
    ):
        animal = m.Animal(name)
        for key, value in facts.items():
            animal[key] = value
        session.add(animal)


def more_animals(session: Session, m: Any) -> None:
    """dictlike's second part: the stored stoat's cuteness changed; marten, shrew and slow
    loris added (the demo then queries without committing; we commit)."""
    _change_and_add(session, m)
    session.commit()


def more_animals_queried(session: Session, m: Any) -> None:
    """dictlike's second part as written: the same changes, then its four fact queries
    (each autoflushes first), then commit."""
    _change_and_add(session, m)
    animal, fact = m.Animal, m.AnimalFact
    reddish = session.query(animal).filter(
        animal.facts.any(and_(fact.key == "color", fact.value == "reddish"))
    )
    assert [a.name for a in reddish] == ["stoat"]
    brown = session.query(animal).filter(animal.with_characteristic("color", "brown"))
    assert [a.name for a in brown] == ["marten"]
    session.query(animal).filter(~animal.with_characteristic("poisonous-part", "elbows")).all()
    session.query(animal).filter(animal.facts.any(value="somewhat")).all()
    session.commit()


DICTLIKE = Example(
    name="vertical/dictlike",
    sources=(Source("vertical/dictlike.py", main_block=True),),
    phases=(
        Phase("stoat", describe_stoat),
        Phase("more_animals", more_animals),
        Phase("more_animals_queried", more_animals_queried, after=("stoat",)),
    ),
)

# -- examples/vertical/dictlike-polymorphic.py: its __main__ block -----------------------------


def describe_typed_stoat(session: Session, m: Any) -> None:
    """dictlike-polymorphic's first commit: a str, an int and a bool fact."""
    stoat = m.Animal("stoat")
    stoat["color"] = "red"
    stoat["cuteness"] = 7
    stoat["weasel-like"] = True
    session.add(stoat)
    session.commit()


def retype(session: Session, m: Any, *, queried: bool = False) -> None:
    """dictlike-polymorphic's next two commits: the stored stoat's cuteness turned from an
    int into a str; marten and shrew added; with ``queried``, then its five queries."""
    critter = session.query(m.Animal).filter(m.Animal.name == "stoat").one()
    assert (critter["color"], critter["cuteness"]) == ("red", 7)
    critter["cuteness"] = "very cute"
    session.commit()
    for name, facts in (
        ("marten", {"cuteness": 5, "weasel-like": True, "poisonous": False}),
        ("shrew", {"cuteness": 5, "weasel-like": False, "poisonous": True}),
    ):
        animal = m.Animal(name)
        for key, value in facts.items():
            animal[key] = value
        session.add(animal)
    session.commit()
    if not queried:
        return
    fact, animal = m.AnimalFact, m.Animal
    weasels = session.query(animal).filter(
        animal.facts.any(and_(fact.key == "weasel-like", fact.value == True))  # noqa: E712
    )
    assert sorted(a.name for a in weasels) == ["marten", "stoat"]
    session.query(animal).filter(animal.with_characteristic("weasel-like", True)).all()
    session.query(animal).filter(animal.with_characteristic("poisonous", False)).all()
    session.query(animal).filter(
        or_(
            animal.with_characteristic("poisonous", False),
            ~animal.facts.any(fact.key == "poisonous"),
        )
    ).all()
    session.query(animal).filter(animal.facts.any(fact.value == 5)).all()


def retype_queried(session: Session, m: Any) -> None:
    """dictlike-polymorphic's second part as written, with its queries."""
    retype(session, m, queried=True)


DICTLIKE_POLYMORPHIC = Example(
    name="vertical/dictlike-polymorphic",
    sources=(Source("vertical/dictlike-polymorphic.py", main_block=True),),
    phases=(
        Phase("stoat", describe_typed_stoat),
        Phase("retype", retype),
        Phase("retype_queried", retype_queried, after=("stoat",)),
    ),
)

# -- examples/dynamic_dict/dynamic_dict.py: its script body ---------------------------------

# The script still passes its engine to declarative_base(), which SQLAlchemy 2.0 removed.
BIND_REMOVED_IN_2_0 = (("declarative_base(engine)", "declarative_base()"),)


def fill_map(session: Session, m: Any) -> None:
    """The script: p1 added, k1 and k2 set through the dynamic relationship's dict proxy
    (each lookup autoflushes), k2 replaced (the old child removed, ``delete-orphan``)."""
    p1 = m.Parent(name="p1")
    session.add(p1)
    p1.child_map["k1"] = m.Child(key="k1")
    p1.child_map["k2"] = m.Child(key="k2")
    assert list(p1.child_map.keys()) == ["k1", "k2"]
    assert p1.child_map["k1"].key == "k1"
    p1.child_map["k2"] = m.Child(key="k2")
    assert p1.child_map["k2"].key == "k2"
    assert len(session.query(m.Child).all()) == 2
    session.commit()


def replace_in_map(session: Session, m: Any) -> None:
    """Ours, on the stored p1: k1 replaced and k3 added through the proxy."""
    p1 = session.scalars(select(m.Parent).filter_by(name="p1")).one()
    p1.child_map["k1"] = m.Child(key="k1")
    p1.child_map["k3"] = m.Child(key="k3")
    session.commit()


DYNAMIC_DICT = Example(
    name="dynamic_dict/dynamic_dict",
    sources=(Source("dynamic_dict/dynamic_dict.py", replacements=BIND_REMOVED_IN_2_0),),
    phases=(Phase("fill", fill_map), Phase("replace", replace_in_map)),
)

EXAMPLES = (DICTLIKE, DICTLIKE_POLYMORPHIC, DYNAMIC_DICT)
