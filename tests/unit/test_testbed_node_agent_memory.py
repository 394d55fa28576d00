"""The node agent's memory limit: quantities read as Kubernetes writes them, and a process group
over its limit killed (as the kernel's OOM killer would) while one under it runs on."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from noria_testbed.node_agent import memory
from noria_testbed.processes import detach_and_die_with_parent


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("64Mi", 64 * 2**20), ("1Gi", 2**30), ("500M", 500 * 10**6), ("1.5Gi", int(1.5 * 2**30)), ("1e9", 10**9),
     ("12345", 12345), ("", None), ("lots", None)],
)
def test_memory_limit_is_read_as_a_kubernetes_quantity(quantity, expected):
    assert memory.memory_limit_bytes({"resources": {"limits": {"memory": quantity}}}) == expected
    assert memory.memory_limit_bytes({}) is None


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=detach_and_die_with_parent)


def test_a_process_group_over_its_limit_is_killed_and_one_under_it_is_not():
    hog = _python("import time; x = bytearray(200 * 2**20); time.sleep(30)")
    try:
        killed = asyncio.run(asyncio.wait_for(memory.enforce(hog.pid, 100 * 2**20), 20))
        assert killed and hog.wait(10) == -9
    finally:
        hog.kill()
    small = _python("import time; time.sleep(1.5)")
    try:
        assert asyncio.run(asyncio.wait_for(memory.enforce(small.pid, 2**30), 20)) is False
    finally:
        small.kill()



# Maps a file and touches every page: resident and file-backed (RssFile), clean, reclaimable.
MAP_A_FILE = """
import mmap, sys, time
handle = open(sys.argv[1], "rb")
pages = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
sum(pages[i] for i in range(0, len(pages), mmap.PAGESIZE))
print("mapped", flush=True)
time.sleep(30)
"""


def _status_kib(pid: int, line: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(row.split()[1]) for row in handle if row.startswith(f"{line}:"))


def test_file_backed_pages_are_not_counted_since_a_cgroup_would_reclaim_them(tmp_path):
    mapped = tmp_path / "pages"
    mapped.write_bytes(b"\1" * (200 * 2**20))
    reader = subprocess.Popen([sys.executable, "-c", MAP_A_FILE, str(mapped)], stdout=subprocess.PIPE,
                              preexec_fn=detach_and_die_with_parent)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == b"mapped\n"
        assert _status_kib(reader.pid, "RssFile") > 150 * 1024
        assert memory.group_memory_bytes(reader.pid) < 100 * 2**20
        with pytest.raises(TimeoutError):  # watched for 2 s with a 100 MiB limit, never killed
            asyncio.run(asyncio.wait_for(memory.enforce(reader.pid, 100 * 2**20), 2))
        assert reader.poll() is None
    finally:
        reader.kill()
        reader.wait(10)
