"""Pausing Python's cyclic garbage collector while a flush is recorded.

CPython starts a collection every time about 700 more container objects (dicts, tuples,
instances) have been allocated than freed, whether or not they can ever form a cycle,
and every tenth such collection of the older generations walks every live object in the
process. Recording a flush of many objects allocates several containers per object and
keeps most of them, so with a large heap (the very objects being recorded) these walks
cost a quarter of the recording time while finding nothing: the recorder creates no
reference cycles. The same reasoning and remedy as Mercurial's ``util.nogc``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic garbage collector for the block, if it is enabled.

    It is re-enabled on the way out, error or not, only if this call disabled it: a
    program that disabled it before keeps it disabled, and of two threads pausing at
    once, the one that found it enabled enables it again. The collector is process-wide,
    so a thread that disables it during the block finds it enabled afterwards, and
    cyclic garbage made by other threads waits for the next collection. Reference
    counting frees memory as usual meanwhile.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
