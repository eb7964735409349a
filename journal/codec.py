"""The value codec of the journal file: a tree of Python values to bytes and back.

Standard SQL values travel as plain msgpack (C speed, no code execution); everything
else is a msgpack *ext* value whose code says how to read it. The journal file carries
the format version, so these codes must never change meaning; new kinds get new codes.

==== =========== ==========================================================
code kind        payload
==== =========== ==========================================================
1    big int     signed big-endian two's complement (outside msgpack's 64 bits)
2    tuple       msgpack array of the items
3    Decimal     ASCII ``str(d)`` (exact, incl. NaN/sNaN/Infinity/-0/exponent)
4    datetime    ``>HBBBBBIB`` year .. microsecond, fold; then a time zone tail
5    date        ``>HBB`` year, month, day
6    time        ``>BBBIB`` hour, minute, second, microsecond, fold; time zone tail
7    timedelta   ``>iII`` days, seconds, microseconds
8    UUID        the 16 bytes
9    Enum member msgpack array [module, qualname, member name]; a Flag value without
                 one joins its members' names, then any other bits as a decimal
                 number, with ``|`` (``""`` is the empty flag)
10   dill        ``dill.dumps(value, protocol=5)``: every other object
11   Placeholder msgpack array [ref, attribute]: the key of an object created while
                 recording, which the database assigns at replay
==== =========== ==========================================================

Time zone tail: empty (naive); ``\\x01`` + ``>q`` offset in microseconds
(``datetime.timezone``); ``\\x02`` + ``>q`` + UTF-8 name (``timezone`` with an explicit
name); ``\\x03`` + UTF-8 key (``zoneinfo.ZoneInfo``). Any other tzinfo sends the whole
value to dill. Subclasses of these types (except enums) also go to dill, so a value
decodes to an equal value of the same type. One exception, from msgpack's C packer:
``bytearray`` and ``memoryview`` are stored, and decode, as ``bytes``.

>>> decode(encode({"id": 1, "at": (Decimal("1.10"), None)}))
{'id': 1, 'at': (Decimal('1.10'), None)}
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import operator
import struct
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Context, Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import dill
import msgpack

from journal.exc import JournalCorruptError, JournalError, JournalSignatureError

__all__ = ["EnumRef", "OpaqueValue", "Placeholder", "decode", "encode", "pickles_encoded"]

_BIGINT, _TUPLE, _DECIMAL, _DATETIME, _DATE, _TIME, _TIMEDELTA, _UUID, _ENUM, _DILL = range(1, 11)
_PLACEHOLDER = 11
# How dill values decode: as OpaqueValue (enums as EnumRef), unpickled, or refused.
_OPAQUE, _DECODE, _REFUSE = range(3)
_DILL_PROTOCOL = 5
_DATETIME_HEAD = struct.Struct(">HBBBBBIB")
_DATE_HEAD = struct.Struct(">HBB")
_TIME_HEAD = struct.Struct(">BBBIB")
_TIMEDELTA_HEAD = struct.Struct(">iII")
_OFFSET = struct.Struct(">q")
# Decimal(str, context) ignores the context's precision; the context only decides that a
# malformed string raises instead of quietly becoming NaN (whatever the caller's default).
_STRICT_DECIMAL = Context(traps=[InvalidOperation])


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OpaqueValue:
    """A dill value decoded with ``trusted=False``: never unpickled, only measured."""

    size: int

    def __repr__(self) -> str:
        return f"<opaque dill value, {self.size} bytes>"


@dataclasses.dataclass(frozen=True, slots=True)
class Placeholder:
    """The not-yet-known value of a primary key column of an object created while recording.

    ``ref`` numbers the object within its journal; ``attribute`` names the key column's
    attribute. It stands in the object's key until replay inserts the row, and is stored
    as its own kind of value, so it can never be mistaken for data that looks like it.
    """

    ref: int
    attribute: str
    # SQLAlchemy hashes every recorded object's identity key (which holds its
    # placeholders) several times per flush; the generated __hash__ rebuilds a tuple
    # each time.
    _hash: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.ref, self.attribute)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[Placeholder], tuple[int, str]]:
        # Rebuilt through __init__: string hashes differ between processes.
        return (Placeholder, (self.ref, self.attribute))

    def __repr__(self) -> str:
        return f"<placeholder #{self.ref}.{self.attribute}: assigned by the database at replay>"

    # What using the key as a value raises; orm_ext makes it DeferredOperationError (this
    # package cannot import it). A subclass of TypeError by default, as for int(key).
    value_error: ClassVar[type[Exception]] = TypeError

    def __str__(self) -> str:
        # The key as text (a URL, a run id, a value copied into another column) would be
        # this description, not the key a direct run gives: refuse rather than record it.
        raise self.value_error(
            f"{self!r} has no text form: the database assigns this key when the journal is "
            "replayed. Refer to the object itself (a relationship), or give the class a "
            "client-side key (e.g. a UUID default) if its key must be known while recording"
        )

    def __format__(self, spec: str) -> str:
        return str(self)


@dataclasses.dataclass(frozen=True, slots=True)
class EnumRef:
    """An enum member decoded with ``trusted=False``: its address, nothing imported."""

    module: str
    qualname: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.qualname}.{self.name}"


class _PackerPool(threading.local):
    # A Packer is neither thread-safe nor re-entrant (a tuple packs its items while the
    # outer value is still being packed), but building one per call triples the cost of a
    # small row: so each thread keeps idle packers and a nested call takes another one.
    def __init__(self) -> None:
        self.idle: list[Any] = []
        # Dill values encoded by this thread so far (a writer compares it around a record
        # to mark records that hold pickles), and whether dill is refused right now.
        self.pickles = 0
        self.refuse_pickles = False


_POOL = _PackerPool()


def encode(value: object, *, pickles: bool = True) -> bytes:
    """Encode a tree of values into bytes that :func:`decode` turns back into it.

    Raises ``TypeError``, naming the type, for a value that not even dill can serialise,
    or, with ``pickles=False``, for any value that would need dill.
    """
    if not pickles and not _POOL.refuse_pickles:
        _POOL.refuse_pickles = True
        try:
            return encode(value)
        finally:
            _POOL.refuse_pickles = False
    idle = _POOL.idle
    packer = idle.pop() if idle else _new_packer()
    try:
        data: bytes = packer.pack(value)
    except UnicodeEncodeError:
        # Lone surrogates (e.g. os.fsdecode of a bad file name) are legal in str but not
        # in UTF-8; only such rare values pay for the slower error-handling packer.
        data = _new_packer("surrogatepass").pack(value)
    finally:
        idle.append(packer)
    return data


def _new_packer(unicode_errors: str | None = None) -> Any:
    return msgpack.Packer(
        default=_default, strict_types=True, use_bin_type=True, unicode_errors=unicode_errors
    )


# ExtType's own __new__ validates in Python and costs more than the whole rest of a
# value's encoding; our codes and payloads are known to be valid, so ext values are built
# with the tuple constructor.
_new_ext = tuple.__new__
_ExtType = msgpack.ExtType


def _ext(code: int, payload: bytes) -> msgpack.ExtType:
    return _new_ext(_ExtType, (code, payload))


def _default(value: object) -> msgpack.ExtType:
    if type(value) is datetime:
        # The most frequent typed value by far (a timestamp in most rows), so it is encoded
        # here without further calls: one struct packs the fields and the time zone tail.
        entry = _last_layout
        if entry[0] is not value.tzinfo:
            entry = _datetime_layout(value.tzinfo)
        if entry[1] is None:
            return _encode_dill(value)
        return _new_ext(
            _ExtType,
            (
                _DATETIME,
                entry[1].pack(
                    value.year,
                    value.month,
                    value.day,
                    value.hour,
                    value.minute,
                    value.second,
                    value.microsecond,
                    value.fold,
                    entry[2],
                ),
            ),
        )
    if type(value) is Decimal:
        # Next in frequency (money columns): also without a further call.
        return _new_ext(_ExtType, (_DECIMAL, str(value).encode("ascii")))
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        ext = _encode_enum(value)
        if ext is not None:
            return ext
    return _encode_dill(value)


_Layout = tuple[tzinfo | None, struct.Struct | None, bytes]

# (tzinfo, struct of the fields and the tail, tail) by the identity of the tzinfo object,
# which the entry keeps alive so its id cannot be reused (equality would not do:
# timezone.utc == timezone(timedelta(0), "X")). None, for naive values, is a key too.
_DATETIME_LAYOUTS: dict[int, _Layout] = {}
# The layout used last: the datetimes of a batch mostly share one time zone, and checking
# it costs less than the lookup. Replaced whole, so threads never see half an update.
_last_layout: _Layout = (None, struct.Struct(f"{_DATETIME_HEAD.format}0s"), b"")


def _datetime_layout(tz: tzinfo | None) -> _Layout:
    global _last_layout
    entry = _DATETIME_LAYOUTS.get(id(tz))
    if entry is None or entry[0] is not tz:
        tail = _tz_tail(tz)
        if tail is None:
            return (tz, None, b"")  # not cached: only time zones we store keep a reference
        entry = (tz, struct.Struct(f"{_DATETIME_HEAD.format}{len(tail)}s"), tail)
        if len(_DATETIME_LAYOUTS) < 1024:
            _DATETIME_LAYOUTS[id(tz)] = entry
    _last_layout = entry
    return entry


def _encode_time(v: time) -> msgpack.ExtType:
    tail = _tz_tail(v.tzinfo)
    if tail is None:
        return _encode_dill(v)
    return _ext(_TIME, _TIME_HEAD.pack(v.hour, v.minute, v.second, v.microsecond, v.fold) + tail)


def _tz_tail(tz: tzinfo | None) -> bytes | None:
    if tz is None:
        return b""
    if type(tz) is timezone:
        return _fixed_offset_tail(tz.utcoffset(None), tz.tzname(None))
    if type(tz) is ZoneInfo and tz.key is not None:
        return b"\x03" + tz.key.encode("utf-8", "surrogatepass")
    return None


@functools.lru_cache(maxsize=256)
def _fixed_offset_tail(offset: timedelta, name: str) -> bytes:
    # Cached on (offset, name), not on the tzinfo: timezones compare equal by offset alone.
    micros = _OFFSET.pack(offset // timedelta(microseconds=1))
    if name == timezone(offset).tzname(None):
        return b"\x01" + micros
    return b"\x02" + micros + name.encode("utf-8", "surrogatepass")


# Keyed by (class, member name): IntEnum members hash and compare as their int value, so
# the members themselves would collide across classes.
_ENUM_EXTS: dict[tuple[type[enum.Enum], str], msgpack.ExtType] = {}


def _encode_enum(member: enum.Enum) -> msgpack.ExtType | None:
    """The by-name reference to ``member``, or None to send it to dill."""
    cls = type(member)
    key = (cls, member._name_)
    ext = _ENUM_EXTS.get(key)
    if ext is not None:
        return ext
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        # dill cannot rebuild an Enum class by value either: fail while recording, not
        # at replay time.
        raise TypeError(
            f"cannot store a member of the enum {cls.__module__}.{cls.__qualname__} in a"
            " journal: the class cannot be imported by that name; define it at module level"
        )
    members = cls.__members__
    if member._name_ in members and members[member._name_] is member:
        name = member._name_
    elif isinstance(member, enum.Flag):
        name = _flag_name(member)
    else:
        return None  # a nameless value made up by a _missing_ hook
    ext = _ext(_ENUM, encode([cls.__module__, cls.__qualname__, name]))
    if member._name_ is not None:  # nameless Flag values share the key (cls, None)
        _ENUM_EXTS[key] = ext
    return ext


def _flag_name(member: enum.Flag) -> str:
    # Python names a combination "R|W" only from 3.11 on, and leaves bits outside the
    # named members (boundary=KEEP) or the empty flag without a usable name.
    parts = list(member)
    rest = functools.reduce(lambda bits, m: bits & ~m._value_, parts, member._value_)
    return "|".join([str(m._name_) for m in parts] + ([str(rest)] if rest else []))


def _flag_from_name(cls: type[enum.Enum], name: str) -> enum.Enum:
    members = cls.__members__
    parts = [members[p] if p in members else cls(int(p)) for p in name.split("|") if name]
    return functools.reduce(operator.or_, parts, cls(0))


def pickles_encoded() -> int:
    """How many values this thread has encoded with dill so far."""
    return _POOL.pickles


def _encode_dill(value: object) -> msgpack.ExtType:
    if _POOL.refuse_pickles:
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise TypeError(
            f"cannot store a {kind} value in this journal: it would need dill (pickling), "
            "which this journal refuses; store a plain SQL value, or allow dill"
        )
    _POOL.pickles += 1
    try:
        payload = dill.dumps(value, protocol=_DILL_PROTOCOL)
    except Exception as err:
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise TypeError(
            f"cannot store a {kind} value in a journal: dill cannot serialise it"
            f" ({type(err).__name__}: {err}); store a plain value or make the type picklable"
        ) from err
    return _ext(_DILL, payload)


# Exact types only: a subclass could carry state or behaviour these payloads would drop.
# (datetime and Decimal are handled in _default itself.)
_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    # strict_types msgpack hands over only the ints it cannot fit in 64 bits
    int: lambda n: _ext(_BIGINT, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)),
    tuple: lambda v: _ext(_TUPLE, encode(list(v))),
    date: lambda v: _ext(_DATE, _DATE_HEAD.pack(v.year, v.month, v.day)),
    time: _encode_time,
    timedelta: lambda v: _ext(_TIMEDELTA, _TIMEDELTA_HEAD.pack(v.days, v.seconds, v.microseconds)),
    uuid.UUID: lambda v: _ext(_UUID, v.bytes),
    Placeholder: lambda v: _ext(_PLACEHOLDER, encode([v.ref, v.attribute])),
}


def decode(data: bytes | memoryview, *, trusted: bool = True, refuse_pickles: bool = False) -> Any:
    """Decode bytes made by :func:`encode` back into the tree of values.

    With ``trusted=False`` nothing from ``data`` is imported or executed: dill values
    come back as :class:`OpaqueValue` and enum members as :class:`EnumRef`. With
    ``refuse_pickles`` (and ``trusted``), enum members are decoded but a dill value raises
    :class:`JournalSignatureError`: for data that must be applied but was not proven to
    come from a holder of the key.

    Raises :class:`JournalCorruptError` (chained to the cause) for anything unreadable.
    """
    mode = _OPAQUE if not trusted else _REFUSE if refuse_pickles else _DECODE
    try:
        return _unpack(data, _HOOKS[mode])
    except JournalError:
        raise
    except Exception as err:
        # msgpack, struct, datetime and zoneinfo each have their own errors (and corrupt
        # nesting can even exhaust the stack); the journal promises exactly one.
        raise JournalCorruptError(
            f"a journal value is corrupt and cannot be decoded ({type(err).__name__}: {err})"
        ) from err


def _unpack(data: bytes | memoryview, hook: Callable[[int, bytes], object]) -> Any:
    return msgpack.unpackb(
        data, ext_hook=hook, strict_map_key=False, raw=False, unicode_errors="surrogatepass"
    )


def _make_hook(mode: int) -> Callable[[int, bytes], object]:
    def hook(code: int, data: bytes) -> object:
        decoder = _DECODERS.get(code)
        if decoder is None:
            raise JournalCorruptError(
                f"a journal value has the unknown type code {code}; it was written by another"
                " version of orm-journal or is corrupt"
            )
        return decoder(data, mode)

    return hook


def _decode_placeholder(data: bytes, mode: int) -> Placeholder:
    parts = _unpack(data, _HOOKS[_OPAQUE])
    if type(parts) is not list or len(parts) != 2 or [type(p) for p in parts] != [int, str]:
        raise JournalCorruptError("a journal placeholder is not [ref, attribute]")
    return Placeholder(parts[0], parts[1])


def _decode_tuple(data: bytes, mode: int) -> tuple[object, ...]:
    items = _unpack(data, _HOOKS[mode])
    if type(items) is not list:
        raise JournalCorruptError("a journal tuple value does not hold an array")
    return tuple(items)


def _decode_datetime(data: bytes, mode: int) -> datetime:
    year, month, day, hour, minute, second, micro, fold = _DATETIME_HEAD.unpack_from(data)
    tz = _decode_tz(data[_DATETIME_HEAD.size :])
    return datetime(year, month, day, hour, minute, second, micro, tz, fold=fold)


def _decode_time(data: bytes, mode: int) -> time:
    hour, minute, second, micro, fold = _TIME_HEAD.unpack_from(data)
    return time(hour, minute, second, micro, _decode_tz(data[_TIME_HEAD.size :]), fold=fold)


# Cached: a journal holds few distinct zones, and building one is most of a value's cost.
@functools.lru_cache(maxsize=256)
def _decode_tz(tail: bytes) -> tzinfo | None:
    if not tail:
        return None
    if tail[0] in (1, 2) and len(tail) >= 1 + _OFFSET.size:
        offset = timedelta(microseconds=_OFFSET.unpack_from(tail, 1)[0])
        if tail[0] == 1:
            return timezone(offset)
        return timezone(offset, tail[1 + _OFFSET.size :].decode("utf-8", "surrogatepass"))
    if tail[0] == 3:
        key = tail[1:].decode("utf-8", "surrogatepass")
        try:
            return ZoneInfo(key)
        except Exception as err:
            raise JournalCorruptError(
                f"time zone {key!r} of a journal value is not available here; install tzdata"
            ) from err
    raise JournalCorruptError(f"a journal value has the unknown time zone tag {tail[0]}")


# Cached: the members of a journal are few, and importing and checking cost microseconds.
@functools.lru_cache(maxsize=1024)
def _decode_enum(data: bytes, mode: int) -> object:
    parts = _unpack(data, _HOOKS[_OPAQUE])
    if type(parts) is not list or len(parts) != 3 or {type(p) for p in parts} != {str}:
        raise JournalCorruptError("a journal enum value is not [module, qualname, name]")
    ref = EnumRef(*parts)
    if mode == _OPAQUE:
        return ref
    # Only modules the process has already imported: a journal never makes its reader
    # import (run) anything; the application imports its own enums with its models.
    cls: Any = sys.modules.get(ref.module)
    if cls is None:
        raise JournalCorruptError(
            f"the enum {ref.module}.{ref.qualname} of a journal value is in a module this "
            "process has not imported; import the application's models before reading"
        )
    try:
        for part in ref.qualname.split("."):
            cls = getattr(cls, part)
    except AttributeError as err:
        raise JournalCorruptError(
            f"the enum {ref.module}.{ref.qualname} of a journal value does not exist in "
            f"this process ({err}); use the application version that recorded it"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
        raise JournalCorruptError(f"{ref.module}.{ref.qualname} in a journal is not an Enum")
    if ref.name in cls.__members__:
        return cls.__members__[ref.name]
    if issubclass(cls, enum.Flag):
        with contextlib.suppress(ValueError):
            return _flag_from_name(cls, ref.name)
    raise JournalCorruptError(f"the enum {ref.module}.{ref.qualname} has no member {ref.name!r}")


def _decode_dill(data: bytes, mode: int) -> object:
    if mode == _OPAQUE:
        return OpaqueValue(len(data))
    if mode == _REFUSE:
        raise JournalSignatureError(
            "a journal value is pickled (dill), and unpickling runs code: it is decoded only "
            "from a journal that verified with the key, or when dill is explicitly allowed"
        )
    try:
        return dill.loads(data)
    except Exception as err:
        raise JournalCorruptError(
            f"a pickled (dill) journal value cannot be loaded ({type(err).__name__}: {err});"
            " is its class importable, and the same version, in this process?"
        ) from err


_DECODERS: dict[int, Callable[[bytes, int], object]] = {
    _BIGINT: lambda d, t: int.from_bytes(d, "big", signed=True),
    _TUPLE: _decode_tuple,
    _DECIMAL: lambda d, t: Decimal(d.decode("ascii"), _STRICT_DECIMAL),
    _DATETIME: _decode_datetime,
    _DATE: lambda d, t: date(*_DATE_HEAD.unpack(d)),
    _TIME: _decode_time,
    _TIMEDELTA: lambda d, t: timedelta(*_TIMEDELTA_HEAD.unpack(d)),
    _UUID: lambda d, t: uuid.UUID(bytes=d),
    _ENUM: _decode_enum,
    _DILL: _decode_dill,
    _PLACEHOLDER: _decode_placeholder,
}
_HOOKS = (_make_hook(_OPAQUE), _make_hook(_DECODE), _make_hook(_REFUSE))  # by mode
