"""Hypothesis strategies for the values a journal stores.

``sql_values`` draws one "standard SQL value" (SPEC §4) of any kind, ``value_trees``
nests them in lists, tuples and str-keyed dicts. The enum classes live here, at module
level, because the codec stores members by import path.
"""

from __future__ import annotations

import enum
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "Color",
    "Level",
    "Mode",
    "Perm",
    "big_ints",
    "datetimes",
    "decimals",
    "enum_members",
    "fixed_offsets",
    "json_documents",
    "sql_values",
    "times",
    "value_trees",
]


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 0
    HIGH = 10


class Mode(enum.StrEnum):
    READ = "r"
    WRITE = "w"


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


# Beyond msgpack's 64-bit integers, where the codec switches to its big-int encoding.
big_ints = st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1)

decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [Decimal(s) for s in ("NaN", "-NaN", "sNaN", "NaN123", "Infinity", "-Infinity")]
        + [Decimal(s) for s in ("-0", "0E-30", "1E+3", "-1.000", "1.10")]
    ),
    # High precision, more digits than the default context's 28, any exponent.
    st.builds(
        lambda sign, digits, exp: Decimal((sign, tuple(digits), exp)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=80),
        st.integers(-400, 400),
    ),
)

# datetime.timezone requires |offset| < 24h; the name is optional and shows in tzname().
_MAX_OFFSET = timedelta(hours=24) - timedelta(microseconds=1)
_offsets = st.timedeltas(min_value=-_MAX_OFFSET, max_value=_MAX_OFFSET)
fixed_offsets = st.builds(timezone, _offsets) | st.builds(timezone, _offsets, st.text(max_size=8))
_zones = st.none() | st.just(UTC) | fixed_offsets | st.timezones()


def _with_fold(value: Any, fold: int) -> Any:
    return value.replace(fold=fold)


datetimes = st.builds(_with_fold, st.datetimes(timezones=_zones), st.integers(0, 1))
times = st.builds(_with_fold, st.times(timezones=_zones), st.integers(0, 1))

enum_members = st.one_of(
    st.sampled_from(Color),
    st.sampled_from(Level),
    st.sampled_from(Mode),
    st.integers(0, 7).map(Perm),  # includes combinations and the empty flag
)

json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

sql_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    st.floats(),
    st.text(),
    st.binary(),
    decimals,
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    enum_members,
    json_documents,
)

value_trees = st.recursive(
    sql_values,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
