"""Give freed heap memory back to the operating system now and then (glibc's ``malloc_trim``).

The operator's memory is mostly a burst's, not what it holds: at start-up (and after a watch
relist) it decodes thousands of objects at once, frees them, and glibc keeps the freed pages in the
process, because after a large free it raises its mmap threshold and serves later large buffers from
the heap, where one live block pins the pages around it. ``malloc_trim(0)`` returns every free page
of the heap (not only its top). It takes milliseconds; it runs every ``NORIA_MEMORY_TRIM_SECONDS``
(default 30, 0 turns it off). Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)


def _libc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return free heap pages to the operating system; False where that is not possible."""
    fn = _libc_trim()
    if fn is None:
        return False
    fn(0)
    return True


async def trim_forever(every: float | None = None) -> None:
    period = float(os.environ.get("NORIA_MEMORY_TRIM_SECONDS", "30")) if every is None else every
    if period <= 0 or _libc_trim() is None:
        return
    while True:
        await asyncio.sleep(period)
        trim()
