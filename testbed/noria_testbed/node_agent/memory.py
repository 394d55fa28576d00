"""The container memory limit, enforced as the kernel's cgroup OOM killer would: a container whose
process group holds more memory than ``resources.limits.memory`` that the kernel could not reclaim is
SIGKILLed and its termination reason is ``OOMKilled`` (exit code 137), which is what a kubelet reports.

What counts is what a memory cgroup cannot give back under pressure: anonymous pages (the heap,
arrays, XGBoost's matrices) and shared memory, ``RssAnon + RssShmem`` of ``/proc/<pid>/status``. Not
counted: ``RssFile``, the file-backed pages of the shared libraries and of read files. A cgroup
charges them too, but they are clean page cache, which the kernel drops (and reads again when touched)
before it OOM-kills anything. Counting them would kill a container a real node runs: a Dask worker
of the trainer image holds, once its libraries are imported, 231 MB resident of which 88 MB is
``RssFile`` (143 MB anonymous) -- a sixth of a 512 MiB limit spent on pages the kernel would reclaim.
Measured on the test bed: ``/proc/<pid>/status`` of ``python -m distributed.cli.dask_worker --no-nanny``
after importing xgboost, pandas, pyarrow and noria_trainer.dask_training.

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


# The lines of /proc/<pid>/status a cgroup could not reclaim (module docstring), in kB.
UNRECLAIMABLE: Final = ("RssAnon", "RssShmem")


def unreclaimable_bytes(pid: int) -> int:
    """``RssAnon + RssShmem`` of one process (its resident memory less the file-backed pages)."""
    total = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in UNRECLAIMABLE:
                total += int(value.split()[0]) * 1024
    return total


def group_memory_bytes(pgid: int) -> int:
    """Unreclaimable memory of every process in process group ``pgid`` (a container's processes)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat, the process group
                continue
            total += unreclaimable_bytes(int(entry))
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
    ``limit`` bytes the kernel could not reclaim. True when it was killed for memory."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        if not _alive(pid):
            return False
        if group_memory_bytes(pid) > limit:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return True
