"""The prediction log's writer thread runs under SCHED_BATCH at nice +10 (Linux), so its wake-ups never
preempt a runnable event loop; it still stores what it is given while the core is busy."""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time

import pytest
from noria_server import predlog
from noria_server.predlog import JsonlLog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


def _log(tmp_path, dropped: list[int], **kw) -> JsonlLog:  # type: ignore[no-untyped-def]
    return JsonlLog(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", dropped.append, **kw)


def test_the_writer_thread_is_batch_policy_and_niced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dropped: list[int] = []
    log = _log(tmp_path, dropped, flush_seconds=60)
    try:
        tid = log._thread.native_id
        assert tid is not None
        deadline = time.monotonic() + 2
        while os.sched_getscheduler(tid) != os.SCHED_BATCH and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread sets it first thing
        assert os.sched_getscheduler(tid) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, tid) >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + predlog.WRITER_NICE)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread keeps its policy
    finally:
        log.close()


def test_it_still_stores_while_a_normal_thread_keeps_the_same_core_busy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # this thread, the spinner and (inherited) the writer on one core
    stop = threading.Event()
    spins = [0]

    def spin() -> None:
        while not stop.is_set():
            spins[0] += 1

    try:
        dropped: list[int] = []
        log = _log(tmp_path, dropped, flush_seconds=0.1)
        spinner = threading.Thread(target=spin)
        spinner.start()
        for i in range(200):
            log.offer_rendered(1, lambda i=i: b'{"id":"%d"}\n' % i)
        day = dt.datetime.now(dt.UTC).date().isoformat()
        deadline = time.monotonic() + 10
        stored = b""
        while time.monotonic() < deadline:
            stored = b"".join(p.read_bytes() for p in sorted((tmp_path / "p" / day).glob("pod-*.jsonl")))
            if stored.count(b"\n") == 200:
                break
            time.sleep(0.05)
        stop.set()
        spinner.join()
        log.close()
        assert stored == b"".join(b'{"id":"%d"}\n' % i for i in range(200)) and dropped == []
        assert spins[0] > 0
    finally:
        stop.set()
        os.sched_setaffinity(0, cpus)
