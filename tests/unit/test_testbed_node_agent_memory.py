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
