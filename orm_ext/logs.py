"""The ``orm_ext.record`` logger: one line per recorded journal, one per batch (SPEC §7).

``orm_ext.replay`` is the replay's own (see :mod:`orm_ext.replay`). Both log each journal
at INFO (id, path, operations, duration, outcome) and each batch at DEBUG, and nothing at
WARNING or above when all goes well: a failure reaches the caller as an exception. The
per-batch call sites ask ``isEnabledFor`` first, so a disabled logger costs a flush one
attribute lookup.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from orm_ext.recording import DeferredOperations

__all__ = ["batch_recorded", "journal_recorded", "record_log"]

record_log: Final = logging.getLogger("orm_ext.record")


def journal_recorded(handle: DeferredOperations, started: float, outcome: str) -> None:
    """Log the end of a deferred block at INFO."""
    if record_log.isEnabledFor(logging.INFO):
        record_log.info(
            "journal %s (%s): %s, %d operation(s) in %.3f s",
            handle.journal_id,
            handle.path,
            outcome,
            handle.operations,
            time.monotonic() - started,
        )


def batch_recorded(handle: DeferredOperations, before: int) -> None:
    """Log at DEBUG the batch a flush appended (nothing when it recorded no operation)."""
    if handle.operations != before:
        record_log.debug(
            "journal %s: batch of %d operation(s) recorded, %d so far",
            handle.journal_id,
            handle.operations - before,
            handle.operations,
        )
