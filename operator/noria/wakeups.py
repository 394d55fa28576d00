"""When to reconcile each object (a TrainingPipeline, a Rollout): a per-key due time, one pass at a
time per key. Both the training and the deployment handlers schedule their passes with it.

Why not Kopf timers or daemons: they put a finalizer on every object, so deleting a pipeline, a
Rollout (or their namespace) hangs whenever the operator is down. Instead, watch events and each pass's own
``requeue_after`` set a due time here, and one loop runs the passes that are due: never two at
once for the same pipeline (a wake-up that arrives during a pass runs it again right after), at
most ``concurrency`` pipelines at once, and never a busy loop.
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
        self._resync = resync_seconds
        self._due: dict[Hashable, float] = {}
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._deferred: dict[Hashable, float] = {}  # delayed wakes that arrived during a pass: due times
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._due)

    def wake(self, key: Hashable, delay: float = 0.0) -> None:
        """Run ``key`` within ``delay`` seconds (an earlier due time is kept)."""
        if key in self._running:
            # Never lost: the running pass may have read the world before the change this announces.
            if delay <= 0:
                self._again.add(key)
            else:
                due = time.monotonic() + delay
                self._deferred[key] = min(due, self._deferred.get(key, due))
            return
        due = time.monotonic() + delay
        if key not in self._due or due < self._due[key]:
            self._due[key] = due
            self._wake.set()

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)
        self._again.discard(key)
        self._deferred.pop(key, None)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for key in [k for k, t in self._due.items() if t <= now and k not in self._running]:
                del self._due[key]
                self._running.add(key)
                task = asyncio.create_task(self._pass(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            future = [t for k, t in self._due.items() if k not in self._running]
            timeout = max(0.05, min(future) - time.monotonic()) if future else None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _pass(self, key: Hashable) -> None:
        delay: float | None = self._resync
        try:
            async with self._slots:
                delay = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one pipeline's failure must not stop the others
            log.exception("reconcile of %s failed; retrying", key)
            delay = min(self._resync, 10.0)
        finally:
            self._running.discard(key)
        if delay is None:  # the object is gone
            self.forget(key)
            return
        if key in self._again:
            self._again.discard(key)
            delay = 0.0
        self.wake(key, min(delay, self._resync))
        deferred = self._deferred.pop(key, None)
        if deferred is not None:
            self.wake(key, max(0.0, deferred - time.monotonic()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
