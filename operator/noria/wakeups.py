"""When to reconcile each object (a TrainingPipeline, a Rollout): a per-key due time, one pass at a
time per key. Both the training and the deployment handlers schedule their passes with it.

Why not Kopf timers or daemons: they put a finalizer on every object, so deleting a pipeline, a
Rollout (or their namespace) hangs whenever the operator is down. Instead, watch events and each pass's own
``requeue_after`` set a due time here, and one loop runs the passes that are due: never two at
once for the same object (a wake-up that arrives during a pass runs it again right after), at
most ``concurrency`` objects at once, and never a busy loop.

Event wake-ups go first: when more passes are due than there are slots, a key woken by ``wake``
(a watch event: a user's edit, a new ModelVersion, a Job ending) starts before every key that is
due only by its own requeue (time passing, a resync), whatever their due times. Otherwise a user's
edit would wait behind every housekeeping pass queued before it (benchmarks/scale.py measured
reactions of 10-50 s at 100-1,000 objects that way). Passes start only when a slot is free, so a
due key is a dictionary entry, not a task waiting on a semaphore.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, reconcile: Callable[[Hashable], Awaitable[float | None]], resync_seconds: float,
                 concurrency: int = 8) -> None:
        self._reconcile = reconcile
        self._resync = resync_seconds  # the retry bound after a failed pass
        self._concurrency = concurrency
        self._due: dict[Hashable, float] = {}
        self._urgent: set[Hashable] = set()  # due keys woken by an event: they start first
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._deferred: dict[Hashable, float] = {}  # delayed wakes that arrived during a pass: due times
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._due)

    def wake(self, key: Hashable, delay: float = 0.0) -> None:
        """Run ``key`` within ``delay`` seconds (an earlier due time is kept), ahead of the keys
        due only by their own requeue."""
        if key in self._running:
            # Never lost: the running pass may have read the world before the change this announces.
            if delay <= 0:
                self._again.add(key)
            else:
                due = time.monotonic() + delay
                self._deferred[key] = min(due, self._deferred.get(key, due))
            return
        self._schedule(key, delay, urgent=True)

    def _schedule(self, key: Hashable, delay: float, urgent: bool) -> None:
        due = time.monotonic() + delay
        if key not in self._due or due < self._due[key]:
            self._due[key] = due
            self._wake.set()
        if urgent:
            self._urgent.add(key)

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)
        self._urgent.discard(key)
        self._again.discard(key)
        self._deferred.pop(key, None)

    def _start_due(self, now: float) -> None:
        free = self._concurrency - len(self._running)
        if free <= 0:
            return
        ready = [k for k, t in self._due.items() if t <= now]
        if len(ready) > free:  # event wakes first, then the longest overdue
            ready.sort(key=lambda k: (k not in self._urgent, self._due[k]))
        for key in ready[:free]:
            del self._due[key]
            self._urgent.discard(key)
            self._running.add(key)
            task = asyncio.create_task(self._pass(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self._start_due(now)
            timeout: float | None = None
            if len(self._running) < self._concurrency and self._due:
                # A pass's end sets _wake too, so with every slot busy there is no timer to keep.
                timeout = max(0.05, min(self._due.values()) - time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _pass(self, key: Hashable) -> None:
        delay: float | None = self._resync
        try:
            delay = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one object's failure must not stop the others
            log.exception("reconcile of %s failed; retrying", key)
            delay = min(self._resync, 10.0)
        finally:
            self._running.discard(key)
            self._wake.set()  # a slot is free
        if delay is None:  # the object is gone
            self.forget(key)
            return
        again = key in self._again
        self._again.discard(key)
        # The pass's own requeue (the caller bounds it by its resync); an event during the pass is urgent.
        self._schedule(key, 0.0 if again else delay, urgent=again)
        deferred = self._deferred.pop(key, None)
        if deferred is not None:
            self._schedule(key, max(0.0, deferred - time.monotonic()), urgent=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
