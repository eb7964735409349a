"""``versioned_rows/``: an UPDATE turned into an INSERT by a ``before_flush`` listener.

All four scripts register their listeners on the ``Session`` class itself, so they fire in
every session of the process: the direct one, the recording one and (if the library let
them) the replaying one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source

# -- examples/versioned_rows/versioned_rows.py: its script body -----------------------------


def create_rows(session: Session, m: Any) -> None:
    """The script's first commit of each of its two examples: Example e1, and a Parent
    with Child c1."""
    session.add(m.Example(data="e1"))
    session.add(m.Parent(child=m.Child(data="c1")))
    session.commit()


def new_row_versions(session: Session, m: Any) -> None:
    """The script's second commits on the stored rows: e1's data and p1's child's data
    changed, which the listener turns into new rows (and re-points the parent)."""
    e1 = session.scalars(select(m.Example)).one()
    e1.data = "e2"
    p1 = session.scalars(select(m.Parent)).one()
    p1.child.data = "c2"
    session.commit()


def rows_demo(session: Session, m: Any) -> None:
    """The script as written, both examples in one session: create, commit, change,
    commit, and its checks."""
    e1 = m.Example(data="e1")
    session.add(e1)
    session.commit()
    e1.data = "e2"
    session.commit()
    found = session.query(m.Example.id, m.Example.data).order_by(m.Example.id).all()
    assert [tuple(r) for r in found] == [(1, "e1"), (2, "e2")], found
    p1 = m.Parent(child=m.Child(data="c1"))
    session.add(p1)
    session.commit()
    p1.child.data = "c2"
    session.commit()
    assert p1.child_id == 2


VERSIONED_ROWS = Example(
    name="versioned_rows/versioned_rows",
    sources=(Source("versioned_rows/versioned_rows.py"),),
    phases=(
        Phase("create", create_rows),
        Phase("new_version", new_row_versions),
        Phase("demo", rows_demo, after=()),
    ),
)

# -- examples/versioned_rows/versioned_rows_w_versionid.py: its script body ------------------


def create_with_ids(session: Session, m: Any) -> None:
    """The script's first commits: Example(id=1, "e1"), Parent with Child(id=1, "c1")."""
    session.add(m.Example(id=1, data="e1"))
    session.add(m.Parent(child=m.Child(id=1, data="c1")))
    session.commit()


def new_versions_with_ids(session: Session, m: Any) -> None:
    """The script's second commits: the listener bulk-UPDATEs the old row's
    is_current_version and INSERTs the changed object as version 2."""
    e1 = session.scalars(select(m.Example)).one()
    e1.data = "e2"
    p1 = session.scalars(select(m.Parent)).one()
    p1.child.data = "c2"
    session.commit()


def with_ids_demo(session: Session, m: Any) -> None:
    """The script as written, with its checks (they read ``calc_is_current_version``)."""
    e1 = m.Example(id=1, data="e1")
    session.add(e1)
    session.commit()
    e1.data = "e2"
    session.commit()
    found = (
        session.query(
            m.Example.id,
            m.Example.version_id,
            m.Example.is_current_version,
            m.Example.calc_is_current_version,
            m.Example.data,
        )
        .order_by(m.Example.id, m.Example.version_id)
        .all()
    )
    assert [tuple(r) for r in found] == [(1, 1, False, False, "e1"), (1, 2, True, True, "e2")]
    p1 = m.Parent(child=m.Child(id=1, data="c1"))
    session.add(p1)
    session.commit()
    p1.child.data = "c2"
    session.commit()
    assert p1.child_id == 1
    assert p1.child.version_id == 2


VERSIONED_ROWS_W_VERSIONID = Example(
    name="versioned_rows/versioned_rows_w_versionid",
    sources=(Source("versioned_rows/versioned_rows_w_versionid.py"),),
    phases=(
        Phase("create", create_with_ids),
        Phase("new_version", new_versions_with_ids),
        Phase("demo", with_ids_demo, after=()),
    ),
)

# -- examples/versioned_rows/versioned_map.py: its __main__ block ---------------------------

CONFIG = {"user_name": "twitter", "hash_id": "4fedffca37eaf", "x": 27, "y": 450}


def create_config(session: Session, m: Any) -> None:
    """The demo's first commit: a ConfigData of four values."""
    session.add(m.ConfigData(dict(CONFIG)))
    session.commit()


def change_config(session: Session, m: Any, *, checked: bool = False) -> None:
    """The demo's second commit on the stored config: user_name changed, which makes a new
    ConfigData sharing the unchanged values; with ``checked``, then the demo's checks."""
    config = session.scalars(select(m.ConfigData)).one()
    version_one = config.id
    config.data["user_name"] = "yahoo"
    session.commit()
    if not checked:
        return
    assert config.id != version_one
    assert config.data == {**CONFIG, "user_name": "yahoo"}
    old_config = session.get(m.ConfigData, version_one)
    assert old_config.data == CONFIG
    history = (
        session.query(m.ConfigValue)
        .filter(m.ConfigValue.name == "user_name")
        .order_by(m.ConfigValue.originating_config_id)
        .all()
    )
    assert [(h.value, h.originating_config_id) for h in history] == [
        ("twitter", version_one),
        ("yahoo", config.id),
    ]


def change_config_checked(session: Session, m: Any) -> None:
    """The demo's second part as written: the change, then its checks (they read back
    both versions and the history of user_name)."""
    change_config(session, m, checked=True)


VERSIONED_MAP = Example(
    name="versioned_rows/versioned_map",
    sources=(Source("versioned_rows/versioned_map.py"),),
    phases=(
        Phase("create", create_config),
        Phase("new_version", change_config),
        Phase("new_version_checked", change_config_checked, after=("create",)),
    ),
)

# -- examples/versioned_rows/versioned_update_old_row.py: its script body -------------------

# The script's clock is a module global that its time_passes() moves by a real second per
# step; a fixed clock per phase makes the direct and the recorded run see the same times.
CLOCK = {
    "create": dt.datetime(2024, 1, 1, 12, 0, 0),
    "child_changes": dt.datetime(2024, 1, 1, 12, 0, 1),
    "parent_changes": dt.datetime(2024, 1, 1, 12, 0, 2),
}


def set_clock(m: Any, phase: str) -> None:
    """Set the script's ``now`` to the phase's time (also in the replaying process, whose
    ``do_orm_execute`` listener reads it)."""
    m.now = CLOCK[phase]


def create_timed(session: Session, m: Any) -> None:
    """The script's first commit: Parent(id=1, "c1") with Child(id=1, "child 1")."""
    c1 = m.Child(id=1, data="child 1")
    session.add(m.Parent(id=1, data="c1", child=c1))
    session.commit()


def change_child(session: Session, m: Any) -> None:
    """The script's second step: p1 found by the time-filtered query, its child's data
    changed, which ends the old child row and inserts a new one."""
    p1 = session.query(m.Parent).first()
    c1 = p1.child
    p1.child.data = "elvis presley"
    session.commit()
    assert session.query(m.Parent).first() is p1
    assert p1.child is c1
    assert c1.end == m.now + dt.timedelta(days=2)


def change_parent(session: Session, m: Any) -> None:
    """The script's third and fourth steps: p1's data changed (a new parent row), then an
    unrelated parent and child added, and the script's queries."""
    p1 = session.query(m.Parent).first()
    p1.data = "c2 elvis presley"
    session.commit()
    session.add(m.Parent(id=2, data="unrelated", child=m.Child(id=2, data="unrelated")))
    session.commit()
    assert session.query(m.Parent).filter_by(id=1).one() is p1
    session.query(m.Child).filter(m.Child.parent == p1).one()


VERSIONED_UPDATE_OLD_ROW = Example(
    name="versioned_rows/versioned_update_old_row",
    sources=(Source("versioned_rows/versioned_update_old_row.py"),),
    phases=(
        Phase("create", create_timed),
        Phase("child_changes", change_child),
        Phase("parent_changes", change_parent),
    ),
    prepare=set_clock,
)

EXAMPLES = (VERSIONED_ROWS, VERSIONED_ROWS_W_VERSIONID, VERSIONED_MAP, VERSIONED_UPDATE_OLD_ROW)
