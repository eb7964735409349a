"""``custom_attributes/``: attribute instrumentation changed by the application.

``listen_for_events.py`` is left out: it has no write workload (no engine, no session).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source

# -- examples/custom_attributes/active_column_defaults.py: its __main__ block -----------------


def make_widget(session: Session, m: Any) -> None:
    """The demo: a Widget whose defaults appear on first access (an ``init_scalar``
    listener), radius 30 and the access time as timestamp, then persisted."""
    w1 = m.Widget()
    assert w1.radius == 30
    current_time = w1.timestamp
    session.add(w1)
    session.commit()
    row = session.query(m.Widget.radius, m.Widget.timestamp).first()
    assert row is not None
    # The demo compares for equality; MariaDB's DATETIME drops the microseconds.
    assert (row.radius, abs(row.timestamp - current_time) < dt.timedelta(seconds=1)) == (30, True)


def resize(session: Session, m: Any) -> None:
    """Ours: the stored widget's radius changed, a second widget with an explicit radius."""
    session.scalars(select(m.Widget)).one().radius = 40
    session.add(m.Widget(radius=5))
    session.commit()


ACTIVE_COLUMN_DEFAULTS = Example(
    name="custom_attributes/active_column_defaults",
    sources=(Source("custom_attributes/active_column_defaults.py", main_block=True),),
    phases=(Phase("create", make_widget), Phase("resize", resize)),
    # The timestamp default is datetime.now, read when the attribute is first accessed.
    volatile=("widget.timestamp",),
)

# -- examples/custom_attributes/custom_management.py: its __main__ block ----------------------


def _a1(session: Session, m: Any) -> Any:
    return session.scalars(select(m.A).filter_by(name="a1")).one()


def make_a(session: Session, m: Any) -> None:
    """The demo's first commit: a1 with b1 and b2, state kept in ``_goofy_dict``."""
    a1 = m.A(name="a1", bs=[m.B(name="b1"), m.B(name="b2")])
    assert a1.name == "a1"
    assert a1.bs[0].name == "b1"
    session.add(a1)
    session.commit()


def remove_b(session: Session, m: Any) -> None:
    """The demo's second commit: a1 loaded again, its first b removed from ``bs``."""
    a1 = _a1(session, m)
    assert a1.bs[0].name == "b1"
    a1.bs.remove(a1.bs[0])
    session.commit()
    assert len(_a1(session, m).bs) == 1


def move_b(session: Session, m: Any) -> None:
    """Ours: a1 renamed and its last b moved to a new a2."""
    a1 = _a1(session, m)
    a1.name = "a1 renamed"
    session.add(m.A(name="a2", bs=[a1.bs[-1]]))
    session.commit()


CUSTOM_MANAGEMENT = Example(
    name="custom_attributes/custom_management",
    sources=(Source("custom_attributes/custom_management.py", main_block=True),),
    phases=(
        Phase("create", make_a),
        Phase("remove_b", remove_b),
        Phase("move_b", move_b, after=("create",)),
    ),
    metadata=lambda m: m.meta,
)

EXAMPLES = (ACTIVE_COLUMN_DEFAULTS, CUSTOM_MANAGEMENT)
