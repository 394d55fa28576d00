"""Seeing and bounding the pauses of the serving thread: event-loop lag, GC pauses, GC tuning.

Every request of a model server is parsed, batched, predicted and answered on one event-loop
thread, so anything that holds that thread for tens of milliseconds (a full garbage collection
walking every object sklearn, pandas and the ledger created, a thread holding the GIL, a batch
that grew too large) shows as the latency tail while the median stays flat. Two measurements make
such pauses visible in the server's metrics:

- ``LoopLagMonitor``: a task that asks to wake up every ``interval`` and records how late it woke
  (``noria_event_loop_lag_seconds``): the time the loop could not run anything else;
- ``GcPauses``: ``gc.callbacks`` timing each collection by generation (``noria_gc_pause_seconds``).

``settle_heap`` removes the largest pause at its source: after the model is loaded and warmed up,
every object alive (the interpreter, sklearn, pandas, the model) is moved to the permanent
generation with ``gc.freeze()``, so later full collections walk only what serving created since.
The young generation keeps a small threshold: a young collection walks every tracked object that
is still alive since the previous one, and serving keeps about two alive per request (the
feedback ledger's entry tuple, the log's queued batch), so a threshold of 20,000 made each young
collection walk ~20,000 objects: 7-12 ms of CPU in one piece on the loop thread, measured
(docs/operations/latency.md), where 700 costs ~0.6 ms each, more often.
``shorten_gil_turns`` bounds the other pause: a background thread (the log writer rendering JSON)
keeps the GIL for up to the interpreter's switch interval, 5 ms by default, before the loop thread
gets it back; 0.5 ms keeps that wait under a typical request's own cost.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

# Tracked objects allocated and still alive (allocations minus deallocations) before a young
# collection, which walks them all: the pause grows with it. CPython's default; the earlier 20,000
# ran one every ~6,000 requests, each holding the loop for 7-12 ms of CPU (ledger entries waiting
# for their first collection), where 700 runs one every ~120 requests at ~0.6 ms (max 1.7 ms).
YOUNG_THRESHOLD = 700
LOOP_LAG_INTERVAL_SECONDS = 0.025
GIL_SWITCH_INTERVAL_SECONDS = 0.0005


class FastHistogram:
    """Bucket counts and a sum for one label set, observed without a lock by one thread (the event
    loop; GC pauses by whichever thread collects, one collection at a time) and read at scrape by a
    worker thread; ``prometheus_client``'s histogram takes a lock per observation, which costs more
    than several of the stages it would time. A scrape may see a bucket count and the sum one
    observation apart, never a count that goes down: each bucket is read once per scrape."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), list(self.counts), strict=True):
            total += count
            out.append((bound, float(total)))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        """This histogram as the series ``labels`` of a scrape's ``family``."""
        family.add_metric(list(labels), self.cumulative(), self.sum)


class LoopLagMonitor:
    """Wakes every ``interval`` seconds and hands ``observe`` how late it woke, in seconds."""

    def __init__(self, observe: Callable[[float], None], interval: float = LOOP_LAG_INTERVAL_SECONDS) -> None:
        self.observe = observe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            expected = clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, clock() - expected))


class GcPauses:
    """Times every garbage collection through ``gc.callbacks``; ``observe(generation, seconds)``.

    A collection can start in any thread (the log writer allocates too), but the interpreter runs
    one collection at a time, so ``observe`` is never called twice at once."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self.observe = observe
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            elapsed = time.perf_counter() - self._started
            self._started = 0.0
            self.observe(int(info.get("generation", 0)), elapsed)


def settle_heap(young_threshold: int = YOUNG_THRESHOLD) -> int:
    """Collect once, freeze what is alive and set the young threshold (call after warm-up, on the
    loop thread, before serving). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    return gc.get_freeze_count()


def shorten_gil_turns(seconds: float = GIL_SWITCH_INTERVAL_SECONDS) -> None:
    """Longest time another thread holds the GIL while the loop thread waits for it."""
    sys.setswitchinterval(seconds)


# Timer slack of the loop thread when micro-batches may be held (``model.BatchHold``): Linux lets a
# sleep overrun by the thread's slack, 50 µs by default, so a 30 µs hold slept ~100 µs (measured here;
# ~58 µs at 1 µs of slack, the rest the system call and the wake-up).
HOLD_TIMER_SLACK_NS = 1000
_PR_SET_TIMERSLACK = 29


def precise_sleeps(slack_ns: int = HOLD_TIMER_SLACK_NS) -> bool:
    """Set the calling thread's timer slack (Linux ``prctl``); False where that is not possible."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_TIMERSLACK, slack_ns, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
