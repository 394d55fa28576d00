"""The prediction-log writer renders in short turns with rests between them, not in one burst."""

from __future__ import annotations

import os
import sys
import time
from collections import deque

import pytest
from noria_server.predlog import WRITER_NICE, JsonlLog, _pieces


def test_the_writer_renders_in_turns_and_rests_between_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rendered: list[tuple[float, float]] = []  # (start, end) of each render, perf_counter

    def render() -> bytes:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.0002:  # 0.2 ms of work, as ~80 rows are
            pass
        rendered.append((start, time.perf_counter()))
        return b'{"id":"x"}\n'

    log = JsonlLog(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", lambda n: None, flush_seconds=60,
                   tick_seconds=0.05, turn_seconds=0.0005, rest_seconds=0.003)
    try:
        for _ in range(40):  # all queued before the writer's first wake-up: one take
            log.offer(1, render)
        deadline = time.monotonic() + 10
        while len(rendered) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        log.close()
    assert len(rendered) == 40
    gaps = [b[0] - a[1] for a, b in zip(rendered, rendered[1:], strict=False)]
    rests = sum(1 for g in gaps if g >= 0.003)  # a rest is never shorter than asked
    assert rests >= 8, gaps  # 8 ms of rendering in turns of 0.5 ms: ~13 rests (at most 3 renders a turn)
    # never more than a turn's worth in a row: a turn starts a render only before 0.5 ms have passed
    run, longest = 1, 1
    for g in gaps:
        run = 1 if g >= 0.003 else run + 1
        longest = max(longest, run)
    assert longest <= 4, gaps


def test_a_flush_writes_the_buffer_in_pieces_that_add_up_to_it() -> None:
    chunks = deque((1, bytes([i % 251]) * n) for i, n in enumerate([10, 300, 1000, 5, 5, 250, 3]))
    pieces = list(_pieces(chunks, 256))
    assert b"".join(pieces) == b"".join(c for _, c in chunks)
    assert all(len(p) >= 256 for p in pieces[:-1]) and len(pieces) == 4
    assert pieces[1] is chunks[2][1]  # a chunk past the size alone is written as is, not copied
    assert list(_pieces(deque(), 256)) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_writer_thread_runs_at_a_lower_priority_than_the_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = JsonlLog(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", lambda n: None, flush_seconds=60)
    try:
        deadline = time.monotonic() + 5
        tid = log._thread.native_id
        while time.monotonic() < deadline and os.getpriority(os.PRIO_PROCESS, tid) == os.getpriority(os.PRIO_PROCESS, 0):
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + WRITER_NICE)
    finally:
        log.close()
