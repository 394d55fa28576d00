"""Wake-ups: one pass at a time per pipeline, a wake during a pass runs it once more, requeue delays."""

from __future__ import annotations

import asyncio

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
