"""The checksum chain that links every record of a journal to the one before it.

Each record carries a 32-byte tag over ``previous tag || sequence number || record``.
Without a key the tag is a SHA-256 digest (it detects accidental damage); with a key it
is an HMAC-SHA256 (it also detects deliberate edits). Chaining makes any deletion,
reordering or truncation of records visible, not only edits inside one record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

__all__ = [
    "GENESIS",
    "KEY_ENVIRONMENT_VARIABLE",
    "TAG_SIZE",
    "chain_tag",
    "chain_tag_of_pieces",
    "resolve_key",
]

KEY_ENVIRONMENT_VARIABLE = "ORM_JOURNAL_KEY"
TAG_SIZE = 32
GENESIS = bytes(TAG_SIZE)


def resolve_key(key: bytes | str | None) -> bytes | None:
    """Return the signing key as bytes: ``key`` if given, else ``$ORM_JOURNAL_KEY``, else None.

    An empty key is refused: it would produce signatures anybody can forge.
    """
    if key is None:
        key = os.environ.get(KEY_ENVIRONMENT_VARIABLE) or None
        if key is None:
            return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw:
        raise ValueError("an empty journal key is not allowed; pass a secret of at least 16 bytes")
    return raw


def chain_tag(
    key: bytes | None, previous: bytes, sequence: int, record: bytes | memoryview
) -> bytes:
    """Return the tag of ``record`` at ``sequence``, chained to the ``previous`` tag."""
    return chain_tag_of_pieces(key, previous, sequence, (record,))


def chain_tag_of_pieces(
    key: bytes | None, previous: bytes, sequence: int, pieces: Iterable[bytes | memoryview]
) -> bytes:
    """Return the tag of the record made of ``pieces``: what :func:`chain_tag` returns for
    their concatenation, without holding it whole."""
    header = previous + sequence.to_bytes(8, "big")
    digest = hashlib.sha256(header) if key is None else hmac.new(key, header, hashlib.sha256)
    for piece in pieces:
        digest.update(piece)
    return digest.digest()
