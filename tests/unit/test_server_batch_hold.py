"""A small micro-batch is held back a few tens of µs only near the maximum (model.BatchHold), once per
batch, and never with a configured batch wait of its own."""

from __future__ import annotations

import asyncio
import time

import pytest
from noria_server.model import DEFAULT_BATCH_HOLD_US, BatchHold
from noria_server.serve import MIN_HOLD_TARGET_ROWS, ModelServer, ServeSettings


def _hold(rate: float, busy: float, hold_seconds: float = 30e-6) -> BatchHold:
    hold = BatchHold(hold_seconds, target_rows=16, min_busy=0.85)
    hold.rate, hold.busy = rate, busy
    return hold


def test_held_only_near_the_maximum_and_only_while_the_batch_is_small() -> None:
    assert _hold(20_000, 0.97).seconds(6) == pytest.approx(30e-6)  # 10 rows would take 500 µs: the bound
    assert _hold(400_000, 0.97).seconds(6) == pytest.approx(10 / 400_000)  # the 10 missing rows' arrival time
    assert _hold(20_000, 0.97).seconds(16) == 0.0  # as large as the target already
    assert _hold(20_000, 0.80).seconds(6) == 0.0  # the loop has time to spare: bigger batches gain nothing
    assert _hold(6_400, 0.97).seconds(1) == 0.0  # 0.19 requests expected in 30 µs: a low rate, never held
    assert _hold(20_000, 0.97, hold_seconds=0.0).seconds(1) == 0.0  # switched off
    with pytest.raises(ValueError):
        BatchHold(-1e-6)


def test_rate_and_busy_come_from_whole_windows_and_the_cpu_clock_is_read_only_when_one_closes() -> None:
    reads: list[float] = []
    cpu = iter([0.0, 0.018, 0.019])

    def clock() -> float:
        reads.append(1.0)
        return next(cpu)

    hold = BatchHold(30e-6, window_seconds=0.02)
    hold.tick(0.0, clock)  # starts the first window
    for _ in range(400):
        hold.arrive()
    hold.tick(0.010, clock)  # mid-window: nothing read, nothing decided
    assert len(reads) == 1 and hold.rate == 0.0
    hold.tick(0.020, clock)
    assert len(reads) == 2
    assert hold.rate == pytest.approx(20_000) and hold.busy == pytest.approx(0.9)
    assert hold.seconds(6) == pytest.approx(30e-6)


async def test_the_server_holds_a_batch_once_and_never_with_a_batch_wait() -> None:
    settings = ServeSettings(artifact_uri="file:///none", digest="sha256:x", model="m", version="v1")
    assert settings.batch_hold_us == DEFAULT_BATCH_HOLD_US > 0
    server = ModelServer(settings)
    assert server.hold.target_rows == MIN_HOLD_TARGET_ROWS
    server.hold.rate, server.hold.busy = 1e6, 1.0  # as measured near the maximum
    server.pending_rows = 1
    started = time.perf_counter()
    assert server._held_back() is True  # slept, and the batch is taken after the loop's next poll
    assert time.perf_counter() - started >= 15e-6  # (16 - 1) rows at 1e6/s
    assert server.flush_scheduled and server.held
    assert server._held_back() is False  # the same batch is not held twice
    assert server._held_back() is True  # the next one may be
    asyncio.get_running_loop()  # the flushes it scheduled are never run: there are no requests behind them

    waiting = ModelServer(ServeSettings(artifact_uri="file:///none", digest="sha256:x", model="m", version="v1",
                                        batch_wait_ms=1.0))
    assert waiting.hold.hold_seconds == 0.0
    with pytest.raises(ValueError):
        ServeSettings(artifact_uri="a", digest="d", model="m", version="v", batch_hold_us=-1).validate()
