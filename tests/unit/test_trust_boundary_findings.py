"""Unit checks behind the red-team findings of issue #10 (the real-process checks are in
tests/integration/test_trust_boundary_redteam.py)."""

from __future__ import annotations

import time
from pathlib import Path

from noria_server.predlog import JsonlLog


def test_the_prediction_log_queue_is_bounded_in_rows_not_only_batches(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = JsonlLog(lambda day: f"file://{tmp_path}/p", "pod", dropped.append, flush_seconds=60, max_queued_rows=100)
    try:
        log.offer(60, lambda: b"{}\n" * 60)
        assert log.room() == 40
        log.offer(50, lambda: b"{}\n" * 50)  # one batch past the row bound: dropped whole, counted
        assert dropped == [50] and log.room() == 40
        log.offer(40, lambda: b"{}\n" * 40)
        assert log.room() == 0
        log.drop(7)  # rows a caller did not offer for lack of room are counted the same way
        assert dropped == [50, 7]
    finally:
        log.close()
    assert log.room() == 100  # written rows free the room
    written = sum(f.read_bytes().count(b"\n") for f in (tmp_path / "p").iterdir())
    assert written == 100


def test_room_comes_back_as_the_writer_catches_up(tmp_path: Path) -> None:
    log = JsonlLog(lambda day: f"file://{tmp_path}/p", "pod", lambda n: None, flush_seconds=0.02, max_queued_rows=10)
    try:
        log.offer(10, lambda: b"{}\n" * 10)
        deadline = time.monotonic() + 5
        while log.room() < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.room() == 10
    finally:
        log.close()
