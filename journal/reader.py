"""Reading a journal file back: :class:`Journal`."""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from journal import codec
from journal.exc import (
    JournalCorruptError,
    JournalIncompleteError,
    JournalSignatureError,
)
from journal.signing import GENESIS, chain_tag_of_pieces, resolve_key
from journal.storage import (
    APPLICATION_ID,
    FORMAT_VERSION,
    KIND_BATCH,
    KIND_HEADER,
    KIND_SEAL,
    RawRecord,
    decode_json,
    iter_raw_records,
    open_readonly,
)

__all__ = ["Batch", "Journal", "JournalHeader", "Pickles"]

State = Literal["sealed", "incomplete"]
# How :meth:`Journal.batches` treats dill values; see there.
Pickles = Literal["auto", "opaque", "refuse"]


@dataclass(frozen=True)
class JournalHeader:
    """What a journal says about itself.

    ``meta`` is the creator's data (the ORM layer puts the schema fingerprint and the
    Alembic revision there), merged with what the seal added. ``pickled_records`` is the
    number of batch records holding ``dill`` values, as the seal says (``None`` when
    unsealed, or sealed by an orm-journal that did not count them).
    """

    format_version: int
    journal_id: str
    created_at: str
    host: str
    signed: bool
    versions: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)
    sealed_at: str | None = None
    operation_count: int | None = None
    digest: str | None = None
    pickled_records: int | None = None


@dataclass(frozen=True)
class _Verified:
    """What a verification saw: the key it used, and where the chain ended."""

    key: bytes | None
    records: int
    operations: int
    last_tag: bytes


@dataclass(frozen=True)
class Batch:
    """One flush of the recording session: its operations in program order.

    ``first_sequence`` is the sequence number of the first operation; operations are
    numbered from 1 across the whole journal without gaps.
    """

    number: int
    first_sequence: int
    operations: list[Any]


class Journal:
    """A journal file opened for reading; never modifies the file.

    Opening checks that the file is a journal of a supported format (exactly the format's
    table, nothing else) and reads its header and state. Everything the object reads
    comes from one snapshot of the file, taken when it is opened. :meth:`verify` checks
    every record's tag (and the seal); :meth:`batches` verifies the whole file before
    decoding any value and checks that what it decoded is exactly what was verified.

    >>> with Journal("ops.dbm", key=secret) as j:      # doctest: +SKIP
    ...     j.verify()
    ...     for batch in j.batches():
    ...         ...

    :param key: HMAC key for a signed journal; ``None`` falls back to ``$ORM_JOURNAL_KEY``.
        A key given for an unsigned journal makes :meth:`verify` refuse it.
    :param allow_dill: unpickle ``dill`` values even though the journal is not verified
        with a key. Unpickling runs code: allow it only for files nobody else can write.
    :raises FileNotFoundError: nothing at ``path``.
    :raises JournalCorruptError: not a journal, damaged, altered, or an unknown format
        version.
    """

    # Which kind of file of the family this class reads (a subclass reads query snapshots).
    _application_id: int = APPLICATION_ID

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | str | None = None,
        allow_dill: bool = False,
    ) -> None:
        self.path = Path(path)
        self._key = resolve_key(key)
        self._allow_dill = allow_dill
        self._conn = open_readonly(self.path, application_id=self._application_id)
        try:
            first = next(iter_raw_records(self._conn, self.path, limit=1), None)
            if first is None or first.sequence != 0 or first.kind != KIND_HEADER:
                raise JournalCorruptError(
                    f"journal {self.path} has no header record; the file is damaged",
                    path=self.path,
                )
            last = next(iter_raw_records(self._conn, self.path, descending=True, limit=1), first)
            header = decode_json(first, self.path)
            seal = decode_json(last, self.path) if last.kind == KIND_SEAL else None
            self._header = _make_header(header, seal, self.path)
            self.state: State = "sealed" if seal is not None else "incomplete"
            # What the header and seal were read from: verification must chain these very
            # records, or it would vouch for other content than the header describes.
            self._header_tag = first.tag
            self._seal_tag = last.tag if seal is not None else None
        except BaseException:
            self._conn.close()
            raise
        self._verified: _Verified | None = None

    @property
    def header(self) -> JournalHeader:
        """The header, merged with the seal's data when sealed."""
        return self._header

    @property
    def journal_id(self) -> str:
        return self._header.journal_id

    @property
    def signed(self) -> bool:
        """Whether the journal carries HMAC signatures (as its header says)."""
        return self._header.signed

    @property
    def sealed(self) -> bool:
        return self.state == "sealed"

    @property
    def dill_allowed(self) -> bool:
        """Whether ``dill`` values are unpickled: the journal verified with a key, or the
        reader was opened with ``allow_dill=True``."""
        return self._allow_dill or (self._verified is not None and self._verified.key is not None)

    def verify(self, key: bytes | str | None = None) -> None:
        """Check the whole journal: every record, the chain, and the seal.

        :param key: overrides the key given to the constructor.
        :raises JournalSignatureError: signed without a key, unsigned with a key, or a
            record whose signature does not match (edited, reordered, wrong key).
        :raises JournalCorruptError: a missing, extra or malformed record; a checksum
            mismatch in an unsigned journal; a seal that does not match the records.
        :raises JournalIncompleteError: the journal was never sealed.
        """
        signing_key = self._key if key is None else resolve_key(key)
        self._check_chain(signing_key)
        if not self.sealed:
            raise JournalIncompleteError(
                f"journal {self.path} was never sealed: the recording raised or its process "
                "died; its batches can be inspected but it cannot be replayed",
                path=self.path,
            )

    def batches(self, *, pickles: Pickles = "auto") -> Iterator[Batch]:
        """Yield the batches in order, verifying the whole journal before decoding any value.

        Streams: one batch is decoded at a time. Works on incomplete journals too (they
        hold every acknowledged batch); use :meth:`verify` to require a seal. Records are
        checked again while decoding, and the stream must end where verification ended
        (same records, same last tag), or :class:`JournalCorruptError` is raised after the
        last batch: a consumer that applies batches as they come must not commit before
        the iteration has finished.

        :param pickles: what ``dill`` values become. ``"auto"``: unpickled when
            :attr:`dill_allowed`, else :class:`journal.OpaqueValue` (and enum members
            :class:`journal.EnumRef`). ``"opaque"``: never unpickled, enums not looked
            up. ``"refuse"``: unpickled when :attr:`dill_allowed`, else
            :class:`JournalSignatureError` naming the record.
        """
        key = self._key
        if self._verified is None or self._verified.key != key:
            self._check_chain(key)
        verified = self._verified
        assert verified is not None
        decode = self._decoder(pickles)
        tag = GENESIS
        expected = 0
        operations = 0
        sequence = 1
        current: Batch | None = None
        for stored in iter_raw_records(self._conn, self.path):
            # Read whole once, then checked again: what is decoded must be what was verified.
            record = stored.loaded()
            if record.sequence != expected or (expected == 0 and record.tag != self._header_tag):
                raise self._changed()
            tag = self._check_record(record, expected, tag, key)
            expected += 1
            if record.kind != KIND_BATCH:
                continue
            number, chunk = decode(record)
            operations += len(chunk)
            if current is not None and current.number != number:
                yield current
                current = None
            if current is None:
                current = Batch(number, sequence, [])
            current.operations.extend(chunk)
            sequence += len(chunk)
        if (expected, operations, tag) != (
            verified.records,
            verified.operations,
            verified.last_tag,
        ):
            raise self._changed()
        if current is not None:
            yield current

    def operations(self, *, pickles: Pickles = "auto") -> Iterator[tuple[int, Any]]:
        """Yield ``(sequence number, operation)`` for every operation, in order."""
        for batch in self.batches(pickles=pickles):
            yield from enumerate(batch.operations, start=batch.first_sequence)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Journal {self.path} id={self.journal_id} {self.state}>"

    # -- internals ------------------------------------------------------------------------

    def _check_chain(self, key: bytes | None) -> None:
        if self.signed and key is None:
            raise JournalSignatureError(
                f"journal {self.path} is signed; give its key (key= / journal_key= or "
                "$ORM_JOURNAL_KEY) to verify it",
                path=self.path,
            )
        if not self.signed and key is not None:
            raise JournalSignatureError(
                f"journal {self.path} is not signed but a key is configured, so a signed "
                "journal is required; refusing it (unset the key to accept unsigned journals)",
                path=self.path,
            )
        tag = GENESIS
        expected = 0
        records = operations = 0
        seal: RawRecord | None = None
        digest = GENESIS
        for record in iter_raw_records(self._conn, self.path):
            if seal is not None:
                raise JournalCorruptError(
                    f"journal {self.path}: record {record.sequence} follows the seal",
                    path=self.path,
                )
            if record.sequence != expected:
                raise JournalCorruptError(
                    f"journal {self.path}: record {expected} is missing (next is "
                    f"{record.sequence}); the file was damaged or edited",
                    path=self.path,
                )
            previous = tag
            tag = self._check_record(record, expected, tag, key)
            if expected == 0 and record.tag != self._header_tag:
                raise self._changed()
            if (record.kind == KIND_HEADER) != (expected == 0):
                raise JournalCorruptError(
                    f"journal {self.path}: record {expected} has an unexpected kind",
                    path=self.path,
                )
            if record.kind == KIND_SEAL:
                seal = record
                digest = previous
            elif record.kind == KIND_BATCH:
                operations += record.operations
            elif record.kind != KIND_HEADER:
                raise JournalCorruptError(
                    f"journal {self.path}: record {expected} has an unknown kind",
                    path=self.path,
                )
            records += 1
            expected += 1
        if expected == 0:
            raise JournalCorruptError(f"journal {self.path} is empty", path=self.path)
        if (seal.tag if seal is not None else None) != self._seal_tag:
            raise self._changed()
        if seal is not None:
            info = decode_json(seal, self.path)
            if (
                info.get("records") != records - 1
                or info.get("operations") != operations
                or info.get("digest") != digest.hex()
            ):
                raise JournalCorruptError(
                    f"journal {self.path}: the seal does not match the records before it",
                    path=self.path,
                )
        self._verified = _Verified(key, records, operations, tag)

    def _changed(self) -> JournalCorruptError:
        return JournalCorruptError(
            f"journal {self.path}: its records read differently from one read to the next "
            "(the file was altered, or is crafted to do so); do not replay it",
            path=self.path,
        )

    def _decoder(self, pickles: Pickles) -> Callable[[RawRecord], tuple[int, list[Any]]]:
        """Return the function that decodes one batch record under the ``pickles`` policy."""
        if pickles not in ("auto", "opaque", "refuse"):
            raise ValueError(f"pickles must be 'auto', 'opaque' or 'refuse', not {pickles!r}")
        allowed = self.dill_allowed
        trusted = pickles != "opaque" and (allowed or pickles == "refuse")
        refuse = pickles == "refuse" and not allowed

        def decode(record: RawRecord) -> tuple[int, list[Any]]:
            return self._decode_chunk(record, trusted, refuse)

        return decode

    def _check_record(
        self, record: RawRecord, sequence: int, previous: bytes, key: bytes | None
    ) -> bytes:
        tag = chain_tag_of_pieces(key, previous, sequence, record.signed_pieces())
        if not hmac.compare_digest(tag, record.tag):
            if key is not None:
                raise JournalSignatureError(
                    f"journal {self.path}: record {sequence} does not match its signature; "
                    "the file was modified, records were removed or reordered, or the key "
                    "is wrong. Do not replay it",
                    path=self.path,
                )
            raise JournalCorruptError(
                f"journal {self.path}: record {sequence} fails its checksum; the file is "
                "damaged or was edited",
                path=self.path,
            )
        return tag

    def _decode_chunk(
        self, record: RawRecord, trusted: bool, refuse_pickles: bool
    ) -> tuple[int, list[Any]]:
        try:
            value = codec.decode(record.body, trusted=trusted, refuse_pickles=refuse_pickles)
        except JournalSignatureError as err:
            raise JournalSignatureError(
                f"journal {self.path}: record {record.sequence} holds a pickled (dill) value "
                "and the journal is not signed with a key this process holds; unpickling "
                "runs code. Sign journals with a key (journal_key / $ORM_JOURNAL_KEY), or "
                "allow dill (allow_dill=True, --allow-dill) only for files nobody else can "
                "write",
                path=self.path,
            ) from err
        except JournalCorruptError as err:
            raise JournalCorruptError(
                f"journal {self.path}: record {record.sequence}: {err}", path=self.path
            ) from err
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], int)
            or not isinstance(value[1], list)
            or len(value[1]) != record.operations
        ):
            raise JournalCorruptError(
                f"journal {self.path}: record {record.sequence} is not a batch", path=self.path
            )
        return value[0], value[1]


def _make_header(header: dict[str, Any], seal: dict[str, Any] | None, path: Path) -> JournalHeader:
    try:
        version = header["format"]
        if version != FORMAT_VERSION:
            raise JournalCorruptError(
                f"journal {path} has format version {version}; this orm-journal reads "
                f"version {FORMAT_VERSION}",
                path=path,
            )
        meta = dict(header.get("meta", {}))
        if seal is not None:
            meta.update(seal.get("meta", {}))
        journal_id = header["journal_id"]
        # Exactly the canonical form: the ledger compares ids as strings, so an id that
        # another spelling of one UUID could match would let a journal apply twice.
        if not isinstance(journal_id, str) or _canonical_uuid(journal_id) != journal_id:
            raise JournalCorruptError(
                f"journal {path} has the id {journal_id!r}, not a canonical lower-case UUID; "
                "the file was altered: do not replay it",
                path=path,
            )
        pickled = None if seal is None else seal.get("pickled")
        return JournalHeader(
            format_version=int(version),
            journal_id=journal_id,
            created_at=str(header["created_at"]),
            host=str(header["host"]),
            signed=bool(header["signed"]),
            versions=dict(header["versions"]),
            meta=meta,
            sealed_at=None if seal is None else str(seal["sealed_at"]),
            operation_count=None if seal is None else int(seal["operations"]),
            digest=None if seal is None else str(seal["digest"]),
            pickled_records=None if pickled is None else int(pickled),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        # OverflowError: JSON reads 1e400 as infinity, which int() refuses.
        if isinstance(err, JournalCorruptError):
            raise
        raise JournalCorruptError(
            f"journal {path} has a malformed header ({err!r})", path=path
        ) from err


def _canonical_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None
