"""The journal's value codec: exact round trips, the dill fallback, untrusted decoding and
corrupt input (SPEC §4, "Values")."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import decimal
import enum
import importlib
import math
import pathlib
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import dill
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journal import Journal, JournalWriter
from journal.codec import EnumRef, OpaqueValue, decode, encode
from journal.exc import JournalCorruptError
from tests.strategies import Color, Level, Mode, Perm, sql_values, value_trees

# No example database: it would be written into the working directory.
PROPERTY = settings(database=None, deadline=None)


def assert_same(decoded: Any, original: Any) -> None:
    """Assert equality that also checks types, NaN, the sign of zero and tz identity."""
    assert type(decoded) is type(original), (decoded, original)
    if isinstance(original, float):
        if math.isnan(original):
            assert math.isnan(decoded)
        else:
            assert decoded == original
            assert math.copysign(1.0, decoded) == math.copysign(1.0, original)
    elif isinstance(original, Decimal):
        assert decoded.compare_total(original) == 0
        assert str(decoded) == str(original)
    elif isinstance(original, datetime | time):
        assert decoded.replace(tzinfo=None) == original.replace(tzinfo=None)
        assert decoded.fold == original.fold
        assert_same_zone(decoded.tzinfo, original.tzinfo)
    elif isinstance(original, list | tuple):
        assert len(decoded) == len(original)
        for d, o in zip(decoded, original, strict=True):
            assert_same(d, o)
    elif isinstance(original, dict):
        assert list(decoded) == list(original)
        for key in original:
            assert_same(decoded[key], original[key])
    elif isinstance(original, enum.Enum):
        assert decoded is original
    else:
        assert decoded == original


def assert_same_zone(decoded: Any, original: Any) -> None:
    """Assert two tzinfo objects are the same zone: same key, or same offset and name."""
    assert type(decoded) is type(original)
    if isinstance(original, ZoneInfo):
        assert decoded.key == original.key
    elif original is not None:
        assert decoded.utcoffset(None) == original.utcoffset(None)
        assert decoded.tzname(None) == original.tzname(None)
        assert repr(decoded) == repr(original)


def _ext(code: int, payload: bytes) -> bytes:
    """Frame ``payload`` as a msgpack ext value, the way the codec does."""
    data: bytes = msgpack.packb(msgpack.ExtType(code, payload))
    return data


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Tag(str):
    pass


class Count(int):
    pass


class Rows(list[Any]):
    pass


class Settings(dict[str, Any]):
    pass


class Stamp(datetime):
    pass


class Plus2(tzinfo):
    """A hand-written tzinfo: neither ``timezone`` nor ``ZoneInfo``, so dill stores it."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "+2"

    def __eq__(self, other: object) -> bool:
        return type(other) is Plus2

    def __hash__(self) -> int:
        return 2


class Bits(enum.IntFlag):
    A = 1
    B = 2


class _CreatesFile:
    """Unpickling this runs ``Path(path).touch()``: a stand-in for hostile content."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path(self.path).touch, ())


@PROPERTY
@given(sql_values)
def test_standard_values_round_trip(value: Any) -> None:
    """Every standard SQL value decodes to an identical value of the same type."""
    assert_same(decode(encode(value)), value)


@PROPERTY
@given(value_trees)
def test_value_trees_round_trip(value: Any) -> None:
    """Lists, tuples and dicts of standard values keep their shape, order and types."""
    assert_same(decode(encode(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        2**64,
        -(2**63) - 1,
        10**400,
        -(10**400),
        -0.0,
        float("nan"),
        float("-inf"),
        Decimal("sNaN"),
        Decimal("-NaN123"),
        Decimal("-0"),
        Decimal("1E+3"),
        Decimal("3.14159265358979323846264338327950288419716939937510"),
        datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=timezone(-timedelta(hours=23, microseconds=1), "far west")),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        time(23, 59, 59, 999999, tzinfo=ZoneInfo("Asia/Kolkata"), fold=1),
        time(12, tzinfo=timezone(timedelta(minutes=90))),
        date(1, 1, 1),
        timedelta(days=-999999999),
        timedelta(days=999999999, seconds=86399, microseconds=999999),
        uuid.UUID(int=0),
        Mode.WRITE,
        Level.LOW,
        Perm.R | Perm.X,
        Perm(0),
        Bits(8 | 1),
        "bad file name \udcff",
        {(1, "a"): [None], 3: b"", Decimal("1.5"): {}, None: ((),)},
    ],
    ids=repr,
)
def test_edge_values_round_trip(value: Any) -> None:
    """Boundary values (64-bit limits, special decimals, fold, flags, surrogates) survive."""
    assert_same(decode(encode(value)), value)


def test_utc_keeps_its_identity() -> None:
    """An aware datetime in UTC decodes with the very ``timezone.utc`` singleton."""
    assert decode(encode(datetime(2024, 1, 1, tzinfo=UTC))).tzinfo is UTC


def test_interleaved_equal_zones_keep_their_own_identity() -> None:
    """Datetimes alternating between zones equal to each other each keep their own zone."""
    zones = [UTC, timezone(timedelta(0), "X"), None, ZoneInfo("UTC"), timezone(timedelta(0))]
    value = [datetime(2024, 1, 1, minute=i, tzinfo=zones[i % 5]) for i in range(20)]
    decoded = decode(encode(value))
    assert_same(decoded, value)
    assert [d.tzinfo is UTC for d in decoded] == [z is UTC for z in zones] * 4


def test_decimals_ignore_the_callers_context() -> None:
    """Decimals decode exactly even when the caller's context has a tiny precision."""
    value = Decimal("1.234567890123456789012345678901234567890")
    with decimal.localcontext(prec=3):
        assert str(decode(encode(value))) == str(value)


def test_native_values_are_plain_msgpack() -> None:
    """Native values are encoded exactly as plain msgpack would, without ext wrapping."""
    value = {"a": [1, -2, 2**64 - 1, 1.5, None, True], "b": b"\x00", 7: {"nested": "x"}}
    assert encode(value) == msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(
    ("value", "code", "payload"),
    [
        (2**64, 1, b"\x01" + bytes(8)),
        ((), 2, b"\x90"),
        (Decimal("-1.50"), 3, b"-1.50"),
        (
            datetime(2024, 2, 29, 13, 14, 15, 16, fold=1),
            4,
            bytes.fromhex("07e8 02 1d 0d 0e 0f 00000010 01"),
        ),
        (
            datetime(2024, 2, 29, 13, 14, 15, 16, tzinfo=UTC),
            4,
            bytes.fromhex("07e8 02 1d 0d 0e 0f 00000010 00 01 0000000000000000"),
        ),
        (
            datetime(2024, 2, 29, tzinfo=timezone(timedelta(hours=-5), "EST")),
            4,
            bytes.fromhex("07e8 02 1d 00 00 00 00000000 00 02 fffffffbcf1dcc00") + b"EST",
        ),
        (
            datetime(2024, 2, 29, tzinfo=ZoneInfo("Europe/Paris")),
            4,
            bytes.fromhex("07e8 02 1d 00 00 00 00000000 00 03") + b"Europe/Paris",
        ),
        (date(2024, 2, 29), 5, b"\x07\xe8\x02\x1d"),
        (
            time(1, 2, 3, 4, tzinfo=timezone(timedelta(minutes=90))),
            6,
            bytes.fromhex("01 02 03 00000004 00 01 0000000141dd7600"),
        ),
        (
            timedelta(days=-1, seconds=1, microseconds=2),
            7,
            bytes.fromhex("ffffffff0000000100000002"),
        ),
        (uuid.UUID(int=1), 8, bytes(15) + b"\x01"),
    ],
    ids=repr,
)
def test_ext_codes_are_stable(value: Any, code: int, payload: bytes) -> None:
    """The ext codes and payloads documented in the module docstring do not change."""
    assert encode(value) == msgpack.packb(msgpack.ExtType(code, payload))


@pytest.mark.parametrize(
    "value",
    [
        {1, 2, 3},
        frozenset({"a"}),
        Point(1, 2),
        [Point(3, 4), (Point(5, 6),)],
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        Tag("x"),
        Count(3),
        Rows([1, 2]),
        Settings(a=1),
        Stamp(2020, 1, 1),
        complex(1, 2),
        datetime(2020, 1, 1, tzinfo=Plus2()),
        time(1, tzinfo=Plus2()),
    ],
    ids=repr,
)
def test_other_objects_round_trip_through_dill(value: Any) -> None:
    """Sets, class instances and subclasses of native types come back with their type."""
    decoded = decode(encode(value))
    assert type(decoded) is type(value)
    assert decoded == value


def test_untrusted_dill_values_stay_opaque() -> None:
    """With ``trusted=False`` a dill value decodes to an OpaqueValue with its size."""
    decoded = decode(encode([Point(1, 2)]), trusted=False)
    size = len(dill.dumps(Point(1, 2), protocol=5))
    assert decoded == [OpaqueValue(size)]
    assert repr(decoded[0]) == f"<opaque dill value, {size} bytes>"


def test_untrusted_enums_are_references() -> None:
    """With ``trusted=False`` enum members decode to EnumRef, printed as their address."""
    decoded = decode(encode([Color.RED, Perm.R | Perm.W]), trusted=False)
    assert decoded == [
        EnumRef("tests.strategies", "Color", "RED"),
        EnumRef("tests.strategies", "Perm", "R|W"),
    ]
    assert str(decoded[0]) == "tests.strategies.Color.RED"


def test_untrusted_decoding_runs_nothing(tmp_path: pathlib.Path) -> None:
    """A hostile dill payload decoded with ``trusted=False`` does not run; trusted, it would."""
    victim = tmp_path / "pwned"
    data = encode({"blob": _CreatesFile(victim)})
    assert isinstance(decode(data, trusted=False)["blob"], OpaqueValue)
    assert not victim.exists()
    decode(data, trusted=True)
    assert victim.exists()


def test_untrusted_decoding_imports_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding an enum never imports its module; trusted decoding needs it imported already."""
    marker = tmp_path / "imported"
    (tmp_path / "journal_probe_module.py").write_text(
        f"import enum, pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "class E(enum.Enum):\n    X = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "journal_probe_module", raising=False)
    data = _ext(9, msgpack.packb(["journal_probe_module", "E", "X"]))
    try:
        assert decode(data, trusted=False) == EnumRef("journal_probe_module", "E", "X")
        assert not marker.exists()
        assert "journal_probe_module" not in sys.modules
        with pytest.raises(JournalCorruptError, match="has not imported"):
            decode(data)
        assert not marker.exists()
        importlib.import_module("journal_probe_module")
        assert decode(data).name == "X"
    finally:
        sys.modules.pop("journal_probe_module", None)


def test_unserialisable_value_raises_type_error() -> None:
    """A value not even dill can serialise raises TypeError naming its type, harmlessly."""
    with pytest.raises(TypeError, match=r"builtins\.generator"):
        encode({"rows": (n for n in range(3))})
    assert encode([7]) == msgpack.packb([7])  # the pooled packer was left clean


def test_unserialisable_value_leaves_the_journal_writable(tmp_path: pathlib.Path) -> None:
    """A batch the codec refuses raises TypeError from append; the journal goes on unchanged."""
    with JournalWriter.create(tmp_path / "ops.journal") as writer:
        writer.append([{"n": 1}])
        with pytest.raises(TypeError, match=r"builtins\.generator"):
            writer.append([{"n": 2}, {"rows": (n for n in range(3))}])
        assert (writer.batches, writer.operations) == (1, 1)
        writer.append([{"n": 3}])
        writer.seal()
    with Journal(tmp_path / "ops.journal") as journal:
        assert [(b.number, b.operations) for b in journal.batches()] == [
            (1, [{"n": 1}]),
            (2, [{"n": 3}]),
        ]


def test_enum_defined_in_a_function_raises_type_error() -> None:
    """A member of an enum that cannot be imported by name is refused while encoding."""

    class Local(enum.Enum):
        A = 1

    with pytest.raises(TypeError, match="define it at module level"):
        encode(Local.A)


def test_bytearray_is_stored_as_bytes() -> None:
    """``bytearray`` is the documented exception: msgpack stores and decodes it as bytes."""
    decoded = decode(encode(bytearray(b"ab")))
    assert type(decoded) is bytes
    assert decoded == b"ab"


def test_encoding_is_thread_safe() -> None:
    """Threads encoding at once (with nested tuples) never mix up each other's bytes."""
    values = [(i, (str(i), (Decimal(i),)), [date(2000, 1, 1 + i % 28)]) for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        encoded = list(pool.map(encode, values * 5))
    assert [decode(e) for e in encoded] == values * 5


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"", ValueError),
        (b"\xc1", msgpack.FormatError),
        (b"\x01\x02", msgpack.ExtraData),
        (b"\x91" * 100_000, msgpack.StackError),
        (b"\x82\x91\x01\x02\x03\x04", TypeError),  # a list as a dict key
        (_ext(2, b"\x05"), None),
        (_ext(3, b"1.2.3"), decimal.InvalidOperation),
        (_ext(3, b"\xff"), UnicodeDecodeError),
        (_ext(4, b"\x00"), Exception),
        (_ext(4, bytes.fromhex("07e8 01 01 00 00 00 00000000 00") + b"\x09"), None),
        (_ext(4, bytes.fromhex("07e8 01 01 00 00 00 00000000 00") + b"\x03No/Such_Zone"), None),
        (_ext(5, bytes(4)), ValueError),
        (_ext(6, bytes.fromhex("19 00 00 00000000 00")), ValueError),
        (_ext(7, b""), Exception),
        (_ext(8, b"short"), ValueError),
        (_ext(9, msgpack.packb([1, 2, 3])), None),
        (_ext(9, msgpack.packb(["no_such_module_hopefully", "E", "X"])), None),
        (_ext(9, msgpack.packb(["os.path", "join", "X"])), None),
        (_ext(9, msgpack.packb(["tests.strategies", "Color", "BLUE"])), None),
        (_ext(10, b"\x80\x05garbage"), Exception),
        (_ext(42, b""), None),
    ],
    ids=repr,
)
def test_corrupt_values_raise_journal_corrupt_error(
    data: bytes, cause: type[BaseException] | None
) -> None:
    """Malformed data and bad ext payloads raise JournalCorruptError, chained to the cause."""
    with pytest.raises(JournalCorruptError) as info:
        decode(data)
    if cause is not None:
        assert isinstance(info.value.__cause__, cause)


def test_invalid_decimal_is_refused_under_a_lenient_context() -> None:
    """A malformed Decimal is corrupt even when the caller's context does not trap it."""
    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = False
        with pytest.raises(JournalCorruptError):
            decode(_ext(3, b"garbage"))


@PROPERTY
@given(st.binary())
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    """Arbitrary bytes, decoded untrusted, give a value or JournalCorruptError, nothing else."""
    with contextlib.suppress(JournalCorruptError):
        decode(data, trusted=False)


# Enum payloads are left out: with trusted=True they name modules to import.
@PROPERTY
@given(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 127]), st.binary())
def test_arbitrary_ext_payloads_never_escape_as_other_errors(code: int, payload: bytes) -> None:
    """Random payloads under every ext code decode or raise JournalCorruptError."""
    for trusted in (True, False):
        with contextlib.suppress(JournalCorruptError):
            decode(_ext(code, payload), trusted=trusted)


@PROPERTY
@given(value_trees)
def test_truncated_encodings_are_corrupt(value: Any) -> None:
    """Every strict prefix, and any trailing garbage, of a valid encoding is corrupt."""
    data = encode(value)
    for end in range(len(data)):
        with pytest.raises(JournalCorruptError):
            decode(data[:end])
    with pytest.raises(JournalCorruptError):
        decode(data + b"\x00")


def test_placeholder_is_its_own_kind_of_value() -> None:
    """A placeholder round trips as a placeholder, and data shaped like one stays data."""
    from journal import Placeholder

    value = {"ref": Placeholder(3, "id"), "json": {"$ref": [3, "id"]}, "in": [Placeholder(1, "k")]}
    assert decode(encode(value)) == value
    assert type(decode(encode(Placeholder(3, "id")))) is Placeholder
    assert decode(encode({"$ref": [3, "id"]})) == {"$ref": [3, "id"]}
