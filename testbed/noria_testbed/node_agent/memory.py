"""The container memory limit, enforced as the kernel's cgroup OOM killer would: a container whose
process group holds more resident memory than ``resources.limits.memory`` is SIGKILLed and its
termination reason is ``OOMKilled`` (exit code 137), which is what a kubelet reports.

Processes on this node share the machine, so nothing else bounds them; checking every
``POLL_SECONDS`` is coarser than a cgroup (a burst between two checks is not seen), which is enough
for tests that give a container a limit it cannot live within.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from typing import Final

from noria_testbed.node_agent.common import Json

POLL_SECONDS: Final = 0.2
_QUANTITY: Final = re.compile(r"^([0-9.]+(?:e[0-9]+)?)([KMGTPE]i?|k|m)?$")
_FACTORS: Final = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 10**-3}


def memory_limit_bytes(container: Json) -> int | None:
    """``resources.limits.memory`` of a container spec in bytes, or None when unset or unreadable."""
    text = str(((container.get("resources") or {}).get("limits") or {}).get("memory") or "").strip()
    match = _QUANTITY.match(text)
    if not match:
        return None
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in process group ``pgid`` (a container's processes)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat, the process group
                continue
            with open(f"/proc/{entry}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def _alive(pid: int) -> bool:
    """Running, not ended (a zombie not reaped yet holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def enforce(pid: int, limit: int) -> bool:
    """Watch the process group of ``pid`` until it ends; SIGKILL it when it holds more than
    ``limit`` bytes. True when it was killed for memory."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        if not _alive(pid):
            return False
        if group_rss_bytes(pid) > limit:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return True
