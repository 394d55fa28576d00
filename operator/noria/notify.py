"""Webhook notifications: the sender. What is sent, and to whom, is decided in ``noria.notifications``.

The problem this solves is timing. An Event is posted inside a reconcile pass; a webhook receiver
may be slow, down, or hang until its timeout. So ``publish`` (called by ``kube.post_event`` right
after each Event) only puts the notification on a bounded queue and returns; a background task
reads each namespace's receivers and sends, each delivery with its own retries inside a bound
(``notifications.RetryPolicy``). Nothing a receiver does can delay or change a pass: when the
queue is full the notification is dropped and counted (``noria_operator_notifications_total``
outcome ``dropped``), and the Event stays the record.

Only the replica that acts sends: the notifier starts with Kopf, which runs only on the leader, and
Events are posted only by the passes Kopf runs there.

Configuration is read with ``get`` only, so the chart's RBAC names the two objects
(``resourceNames: [noria-notifications]`` on configmaps and secrets, no list or watch of Secrets):
per namespace, ConfigMap ``noria-notifications`` lists the receivers and Secret
``noria-notifications`` holds their URLs. Both are cached for ``NORIA_NOTIFICATIONS_CACHE_SECONDS``
(default 10 s), so a burst of Events costs two reads, and a change takes effect within that time.
A configuration problem is logged and posted once as a Warning Event on the ConfigMap.

Environment: ``NORIA_NOTIFICATIONS_QUEUE`` (default 100 notifications waiting),
``NORIA_NOTIFICATIONS_CONCURRENCY`` (default 8 deliveries at once), the cache time above.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from noria import conditions as c
from noria import opmetrics
from noria.api.common import format_timestamp
from noria.contracts import NOTIFICATIONS_CONFIGMAP
from noria.notifications import (
    Notification,
    RetryPolicy,
    Target,
    build_payload,
    notification_of,
    parse_receivers,
    resolve_targets,
    retryable,
)

log = logging.getLogger(__name__)

SENT, FAILED, DROPPED = "sent", "failed", "dropped"  # outcome label values of NOTIFICATIONS
STOP_GRACE_SECONDS = 3.0  # on shutdown, how long queued notifications may still go out
DROP_LOG_SECONDS = 10.0  # at most one log line about dropped notifications this often

# (url, JSON body, timeout) -> the HTTP status, or None when no answer came (refused, reset, timed out)
Post = Callable[[str, Mapping[str, Any], float], Awaitable[int | None]]
# namespace -> (ConfigMap, Secret), each None when absent
ReadConfig = Callable[[str], Awaitable[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]]
# (the ConfigMap, the problems) -> posts the Warning Event
Report = Callable[[Mapping[str, Any], str], Awaitable[None]]


@dataclass
class _Cached:
    at: float
    targets: tuple[Target, ...]


class Notifier:
    """A bounded queue of notifications and the task that delivers them."""

    def __init__(self, post: Post, read_config: ReadConfig, report: Report | None = None, *,
                 queue_size: int = 100, concurrency: int = 8, cache_seconds: float = 10.0,
                 policy: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self._post, self._read_config, self._report = post, read_config, report
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=max(1, queue_size))
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._cache_seconds = cache_seconds
        self._policy = policy or RetryPolicy()
        self._clock, self._sleep = clock, sleep
        self._cache: dict[str, _Cached] = {}
        self._reported: dict[str, tuple[Any, ...]] = {}  # namespace -> the config problems last posted
        self._deliveries: set[asyncio.Task[str]] = set()
        self._dropped, self._dropped_logged_at = 0, -math.inf
        self._task: asyncio.Task[None] | None = None

    # --- the reconcile side: never waits ------------------------------------------------------------
    def publish(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
                time_: str | None = None) -> None:
        note = notification_of(involved, type_, reason, message, time_ or format_timestamp())
        if note is None or not self._may_want(note):
            return
        try:
            self._queue.put_nowait(note)
        except asyncio.QueueFull:
            opmetrics.NOTIFICATIONS.labels(reason, DROPPED).inc()
            self._dropped += 1
            if self._clock() - self._dropped_logged_at >= DROP_LOG_SECONDS:  # a burst is one line, not thousands
                log.warning("notifications: queue full (%d waiting): dropped %d, the last %s on %s %s/%s; "
                            "the Events stay", self._queue.maxsize, self._dropped, reason, note.kind, note.namespace,
                            note.name)
                self._dropped, self._dropped_logged_at = 0, self._clock()

    def _may_want(self, note: Notification) -> bool:
        """False only when the namespace's receivers, read less than the cache time ago, want none of
        it: a namespace without receivers (most) then never fills the queue in a burst of Events."""
        targets = self._cached_targets(note.namespace)
        return targets is None or any(t.receiver.wants(note.transition, note.reason) for t in targets)

    def _cached_targets(self, namespace: str) -> tuple[Target, ...] | None:
        """The namespace's targets if read less than the cache time ago, else None."""
        cached = self._cache.get(namespace)
        if cached is None or self._clock() - cached.at >= self._cache_seconds:
            return None
        return cached.targets

    # --- the background side -----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="notifications")

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Give queued notifications ``grace`` seconds to go out, then cancel what is left."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.drain(), grace)
        except TimeoutError:
            log.info("notifications: %d queued and %d in flight not sent at shutdown", self._queue.qsize(),
                     len(self._deliveries))
        self._task.cancel()
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(self._task, *self._deliveries, return_exceptions=True)
        self._task = None

    async def drain(self) -> None:
        """Until everything published so far is delivered or given up (tests, shutdown)."""
        await self._queue.join()
        while self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            note = await self._queue.get()
            try:
                try:
                    targets = await self._targets(note.namespace)
                except Exception as exc:  # noqa: BLE001 - its receivers are unknown: counted as failed
                    opmetrics.NOTIFICATIONS.labels(note.reason, FAILED).inc()
                    log.warning("notifications: cannot read %s in %s (%s): %s on %s not sent", NOTIFICATIONS_CONFIGMAP,
                                note.namespace, _describe(exc), note.reason, note.name)
                    continue
                for target in targets:
                    if target.receiver.wants(note.transition, note.reason):
                        await self._slots.acquire()  # a full house holds the queue, which then drops
                        task = asyncio.create_task(self._deliver(target, note))
                        self._deliveries.add(task)
                        task.add_done_callback(self._delivered)
            except Exception:  # noqa: BLE001 - one bad notification must not end the sender
                log.exception("notifications: could not handle %s on %s/%s", note.reason, note.namespace, note.name)
            finally:
                self._queue.task_done()

    def _delivered(self, task: asyncio.Task[str]) -> None:
        self._deliveries.discard(task)
        self._slots.release()

    async def _targets(self, namespace: str) -> tuple[Target, ...]:
        cached = self._cached_targets(namespace)
        if cached is not None:
            return cached
        config_map, secret = await self._read_config(namespace)  # a failure is not cached: the next one asks again
        targets, problems = configure(config_map, secret)
        self._cache[namespace] = _Cached(self._clock(), targets)
        if self._reported.get(namespace) != problems:  # said once per distinct set of problems
            self._reported[namespace] = problems
            if problems and config_map is not None:
                await self._report_problems(namespace, config_map, problems)
        return targets

    async def _report_problems(self, namespace: str, config_map: Mapping[str, Any], problems: tuple[str, ...]) -> None:
        text = "; ".join(problems)
        log.warning("notifications in %s: %s", namespace, text)
        if self._report is not None:
            try:
                await self._report(config_map, text)
            except Exception as exc:  # noqa: BLE001 - the log line above already says it
                log.warning("notifications in %s: could not post the Warning Event: %s", namespace, exc)

    async def _deliver(self, target: Target, note: Notification) -> str:
        """Try, and retry while the policy allows; the outcome is counted once per delivery."""
        body = build_payload(note)
        started = self._clock()
        attempt, status = 1, None
        while True:
            status = await self._try(target, body)
            if status is not None and 200 <= status < 300:
                opmetrics.NOTIFICATIONS.labels(note.reason, SENT).inc()
                log.info("notification %s on %s/%s sent to %s", note.reason, note.namespace, note.name,
                         target.receiver.name)
                return SENT
            delay = (self._policy.delay_before(attempt + 1, self._clock() - started, target.receiver.timeout)
                     if retryable(status) else None)
            if delay is None:
                break
            await self._sleep(delay)
            attempt += 1
        opmetrics.NOTIFICATIONS.labels(note.reason, FAILED).inc()
        answer = "no answer" if status is None else f"HTTP {status}"
        log.warning("notification %s on %s/%s to receiver %s failed after %d tries (%s)", note.reason,
                    note.namespace, note.name, target.receiver.name, attempt, answer)
        return FAILED

    async def _try(self, target: Target, body: Mapping[str, Any]) -> int | None:
        try:
            return await self._post(target.url, body, target.receiver.timeout)
        except Exception as exc:  # noqa: BLE001 - a sender error is a failed try, whatever it is
            log.debug("notification to %s: %s", target.receiver.name, type(exc).__name__)
            return None


def _describe(exc: BaseException) -> str:
    from noria import kube

    return kube.describe_error(exc)


def configure(config_map: Mapping[str, Any] | None,
              secret: Mapping[str, Any] | None) -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """A namespace's targets, and every problem of its configuration (none without a ConfigMap)."""
    if config_map is None:
        return (), ()
    receivers = parse_receivers(config_map.get("data") or {})
    if not receivers.receivers:
        return (), receivers.problems
    targets, secret_problems = resolve_targets(receivers, decode_secret(secret))
    return targets, receivers.problems + secret_problems


def decode_secret(secret: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A Secret's ``data`` (base64) and ``stringData`` as text; a value that does not decode is
    left out (its receiver then reports the key as missing)."""
    if secret is None:
        return None
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            log.warning("notifications: Secret %s key %r is not base64 text", NOTIFICATIONS_CONFIGMAP, key)
    out.update({k: v for k, v in (secret.get("stringData") or {}).items() if isinstance(v, str)})
    return out


# --- the real I/O: the API server and HTTP -------------------------------------------------------------
async def read_config_from_cluster(namespace: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``get`` the ConfigMap and, only when it exists, the Secret (nothing else is ever read)."""
    from noria import kube

    config_map = await kube.get("v1", "ConfigMap", NOTIFICATIONS_CONFIGMAP, namespace)
    if config_map is None:
        return None, None
    return config_map, await kube.get("v1", "Secret", NOTIFICATIONS_CONFIGMAP, namespace)


async def report_to_cluster(config_map: Mapping[str, Any], problems: str) -> None:
    from noria import kube

    involved = {"apiVersion": "v1", "kind": "ConfigMap", **{"metadata": config_map.get("metadata") or {}}}
    await kube.post_event(involved, "Warning", c.NOTIFICATIONS_INVALID, problems)


def http_post() -> tuple[Post, Callable[[], Awaitable[None]]]:
    """A POST over one pooled client, and its close. Redirects are not followed (a token in the URL
    stays with the host it names); the answer's body is never read beyond its status."""
    import httpx

    client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "noria-operator"})

    async def post(url: str, body: Mapping[str, Any], timeout: float) -> int | None:
        try:
            response = await client.post(url, json=dict(body), timeout=timeout)
        except httpx.HTTPError:
            return None
        return response.status_code

    return post, client.aclose


# --- the process's notifier ----------------------------------------------------------------------------
_active: Notifier | None = None
_close: Callable[[], Awaitable[None]] | None = None


def publish(involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue a notification for the Event just posted; nothing when no notifier runs here (the CLI,
    tests of other parts, a standby replica)."""
    if _active is not None:
        _active.publish(involved, type_, reason, message)


def start(env: Mapping[str, str] | None = None) -> Notifier:
    """Start this process's notifier (the operator's start-up, on the leader)."""
    global _active, _close
    if _active is not None:
        return _active
    e = os.environ if env is None else env
    post, _close = http_post()
    _active = Notifier(post, read_config_from_cluster, report_to_cluster,
                       queue_size=int(e.get("NORIA_NOTIFICATIONS_QUEUE", "100")),
                       concurrency=int(e.get("NORIA_NOTIFICATIONS_CONCURRENCY", "8")),
                       cache_seconds=float(e.get("NORIA_NOTIFICATIONS_CACHE_SECONDS", "10")))
    _active.start()
    return _active


async def stop() -> None:
    global _active, _close
    notifier, close = _active, _close
    _active = _close = None
    if notifier is not None:
        await notifier.stop()
    if close is not None:
        await close()
