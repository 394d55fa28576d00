"""noria.memtrim: freed heap pages go back to the operating system (glibc), and 0 turns it off."""

from __future__ import annotations

import asyncio

from noria import memtrim


def test_trim_returns_freed_pages_on_glibc():
    blocks = [bytearray(64 * 1024) for _ in range(200)]  # heap blocks below the mmap threshold
    del blocks
    assert memtrim.trim() is True


async def test_a_period_of_zero_turns_trimming_off():
    await asyncio.wait_for(memtrim.trim_forever(every=0), timeout=1)
