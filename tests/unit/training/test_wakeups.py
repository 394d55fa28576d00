"""Wake-ups: one pass at a time per pipeline, a wake during a pass runs it once more, requeue delays."""

from __future__ import annotations

import asyncio
import time

from noria.wakeups import Wakeups


async def test_never_two_passes_of_one_key_at_once_and_a_wake_during_a_pass_reruns_once():
    running, max_running, passes = 0, 0, 0
    gate = asyncio.Event()

    async def reconcile(key):
        nonlocal running, max_running, passes
        running += 1
        max_running = max(max_running, running)
        passes += 1
        if passes == 1:
            await gate.wait()
        running -= 1
        return 60.0

    w = Wakeups(reconcile, resync_seconds=60)
    loop = asyncio.create_task(w.run())
    w.wake("a")
    await asyncio.sleep(0.1)
    for _ in range(20):  # a burst of events while the first pass runs
        w.wake("a")
    gate.set()
    await asyncio.sleep(0.3)
    loop.cancel()
    await w.stop()
    assert max_running == 1 and passes == 2


async def test_requeue_after_and_forget_on_none():
    calls: list[str] = []

    async def reconcile(key):
        calls.append(key)
        return None if key == "gone" else 0.1

    w = Wakeups(reconcile, resync_seconds=60)
    loop = asyncio.create_task(w.run())
    w.wake("gone")
    w.wake("live")
    await asyncio.sleep(0.35)
    loop.cancel()
    await w.stop()
    assert calls.count("gone") == 1 and calls.count("live") >= 3


async def test_a_failing_pass_is_retried_without_stopping_others():
    calls: list[str] = []

    async def reconcile(key):
        calls.append(key)
        if key == "bad":
            raise RuntimeError("boom")
        return 60.0

    w = Wakeups(reconcile, resync_seconds=0.1)
    loop = asyncio.create_task(w.run())
    w.wake("bad")
    w.wake("good")
    await asyncio.sleep(0.35)
    loop.cancel()
    await w.stop()
    assert calls.count("bad") >= 2 and "good" in calls


async def test_a_delayed_wake_during_a_pass_is_kept_not_dropped():
    # Found by the fault suite: a ModelVersion event (wake with a short delay) that arrived while the
    # Rollout's pass ran was dropped, and the new version waited for the 60 s resync.
    passes = 0
    gate = asyncio.Event()

    async def reconcile(key):
        nonlocal passes
        passes += 1
        if passes == 1:
            await gate.wait()
        return 60.0

    w = Wakeups(reconcile, resync_seconds=60)
    loop = asyncio.create_task(w.run())
    w.wake("a")
    await asyncio.sleep(0.1)
    w.wake("a", delay=0.1)  # an event during the pass
    gate.set()
    await asyncio.sleep(0.4)
    loop.cancel()
    await w.stop()
    assert passes == 2


async def test_an_event_wake_starts_before_passes_due_only_by_their_requeue():
    # Found by benchmarks/scale.py: every due key queued on one semaphore, so a user's edit waited
    # behind every resync pass already queued (reaction p50 10-50 s at 100-1,000 objects).
    started: list[str] = []
    gate = asyncio.Event()

    async def reconcile(key):
        started.append(key)
        if key == "blocker":
            await gate.wait()
        return 0.05  # every routine key is due again at once

    w = Wakeups(reconcile, resync_seconds=60, concurrency=1)
    loop = asyncio.create_task(w.run())
    w.wake("blocker")
    await asyncio.sleep(0.05)
    for i in range(5):  # routine keys: their first pass, then due by their own requeue
        w._schedule(f"resync-{i}", 0.0, urgent=False)
    await asyncio.sleep(0.1)
    w.wake("edited")  # woken by an event after the routine keys were already due
    gate.set()
    await asyncio.sleep(0.05)
    loop.cancel()
    await w.stop()
    assert started[:2] == ["blocker", "edited"]


async def test_a_requeue_longer_than_the_resync_is_kept():
    # The caller bounds its own requeue (a cron-only pipeline waits for its tick, not the resync).
    w = Wakeups(lambda key: asyncio.sleep(0, 3600.0), resync_seconds=1)
    loop = asyncio.create_task(w.run())
    w.wake("cron")
    await asyncio.sleep(0.1)
    loop.cancel()
    await w.stop()
    assert w._due["cron"] - time.monotonic() > 3000
