"""The sender: publish never waits, a full queue drops and counts, each delivery retries inside its
bound (on a fake clock), a receiver gets only what it asked for, configuration is read with a short
cache and a problem is reported once, and one hanging receiver does not hold the others."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

import pytest
from noria import conditions as c
from noria import notify, opmetrics
from noria.notifications import RetryPolicy

ROLLOUT = {"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "churn", "namespace": "ml"},
           "spec": {"source": {"pipeline": "churn"}}, "status": {"canaryVersion": "churn-v2"}}
ABORT = ("Warning", c.ROLLOUT_ABORTED_BY_USER, "aborted churn-v2: by the annotation; traffic back on churn-v1")
PROMOTE = ("Normal", c.ROLLOUT_PROMOTED, "promoted churn-v2 to all traffic; churn-v1 retired")
STEP = ("Normal", c.ROLLOUT_STEP_IN_PROGRESS, "churn-v2: step 1")


class FakeClock:
    """Time moves only when the sender sleeps (or a fake post takes time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def cluster_config(receivers: str, urls: Mapping[str, str]) -> tuple[dict, dict]:
    config_map = {"metadata": {"name": "noria-notifications", "namespace": "ml"}, "data": {"receivers": receivers}}
    secret = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in urls.items()}}
    return config_map, secret


class Cluster:
    def __init__(self, receivers: str = "- {name: chat}", urls: Mapping[str, str] | None = None) -> None:
        self.config = cluster_config(receivers, urls if urls is not None else {"chat": "https://chat.example/h"})
        self.reads = 0
        self.reports: list[str] = []

    async def read(self, namespace: str) -> tuple[Any, Any]:
        self.reads += 1
        return self.config

    async def report(self, config_map: Mapping[str, Any], problems: str) -> None:
        self.reports.append(problems)


class Receiver:
    """Answers each POST with the next status of ``answers`` (None: no answer), then 200."""

    def __init__(self, clock: FakeClock, answers: list[int | None] | None = None, takes: float = 0.0) -> None:
        self.clock, self.answers, self.takes = clock, list(answers or []), takes
        self.calls: list[tuple[str, dict, float, float]] = []

    async def post(self, url: str, body: Mapping[str, Any], timeout: float) -> int | None:
        self.calls.append((url, dict(body), timeout, self.clock.now))
        self.clock.now += min(self.takes, timeout)
        return self.answers.pop(0) if self.answers else 200


def counted(reason: str, outcome: str) -> float:
    return opmetrics.REGISTRY.get_sample_value("noria_operator_notifications_total",
                                               {"reason": reason, "outcome": outcome}) or 0.0


def make(cluster: Cluster, receiver: Receiver, clock: FakeClock, **kw: Any) -> notify.Notifier:
    return notify.Notifier(receiver.post, cluster.read, cluster.report, clock=clock, sleep=clock.sleep, **kw)


async def test_a_notification_is_posted_once_with_its_body():
    clock = FakeClock()
    cluster, receiver = Cluster(), Receiver(clock)
    notifier = make(cluster, receiver, clock)
    notifier.start()
    before = counted(c.ROLLOUT_ABORTED_BY_USER, notify.SENT)
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    await notifier.stop()
    [(url, body, timeout, _)] = receiver.calls
    assert url == "https://chat.example/h" and timeout == 5.0
    assert body["transition"] == "rollout-aborted" and body["version"] == "churn-v2" and body["pipeline"] == "churn"
    assert body["text"].startswith("Rollout ml/churn aborted (AbortedByUser): aborted churn-v2")
    assert counted(c.ROLLOUT_ABORTED_BY_USER, notify.SENT) == before + 1


async def test_publish_never_waits_even_with_no_sender_running():
    clock = FakeClock()
    receiver = Receiver(clock)
    notifier = make(Cluster(), receiver, clock, queue_size=2)
    assert notifier.publish(ROLLOUT, *ABORT) is None  # a plain call: nothing to await
    assert notifier._queue.qsize() == 1 and receiver.calls == []  # queued for the sender, not sent inline


async def test_a_full_queue_drops_and_counts_and_keeps_what_it_holds():
    clock = FakeClock()
    cluster, receiver = Cluster(), Receiver(clock)
    notifier = make(cluster, receiver, clock, queue_size=2)
    dropped = counted(c.ROLLOUT_PROMOTED, notify.DROPPED)
    notifier.publish(ROLLOUT, *ABORT)
    notifier.publish(ROLLOUT, *PROMOTE)
    notifier.publish(ROLLOUT, *PROMOTE)  # the third finds the queue full
    assert counted(c.ROLLOUT_PROMOTED, notify.DROPPED) == dropped + 1
    notifier.start()
    await notifier.drain()
    await notifier.stop()
    assert [call[1]["reason"] for call in receiver.calls] == [c.ROLLOUT_ABORTED_BY_USER, c.ROLLOUT_PROMOTED]


@pytest.mark.parametrize(("answers", "posts", "sleeps", "outcome"), [
    ([None, 503], 3, [1.0, 4.0], notify.SENT),  # refused, then 503, then 200
    ([None, None, None], 3, [1.0, 4.0], notify.FAILED),  # down: three tries, then given up
    ([429], 2, [1.0], notify.SENT),
    ([404], 1, [], notify.FAILED),  # a wrong URL does not get better
    ([301], 1, [], notify.FAILED),  # redirects are not followed
])
async def test_retries_are_bounded_and_only_for_what_may_pass(answers, posts, sleeps, outcome):
    clock = FakeClock()
    receiver = Receiver(clock, answers)
    notifier = make(Cluster(), receiver, clock)
    before = counted(c.ROLLOUT_ABORTED_BY_USER, outcome)
    notifier.start()
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    await notifier.stop()
    assert len(receiver.calls) == posts and clock.sleeps == sleeps
    assert counted(c.ROLLOUT_ABORTED_BY_USER, outcome) == before + 1


async def test_a_hanging_receiver_costs_each_notification_at_most_the_budget():
    clock = FakeClock()
    receiver = Receiver(clock, [None] * 10, takes=10.0)  # every try hangs until its 10 s timeout
    cluster = Cluster("- {name: chat, timeout: 10s}")
    notifier = make(cluster, receiver, clock, policy=RetryPolicy(tries=5, budget=30.0))
    notifier.start()
    started = clock.now
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    await notifier.stop()
    # 10 s try, 1 s, 10 s try; a third (4 s + 10 s) would end past 30 s: not tried
    assert len(receiver.calls) == 2 and clock.now - started <= 30.0


async def test_one_hanging_receiver_does_not_hold_the_others():
    hung = asyncio.Event()

    async def post(url: str, body: Mapping[str, Any], timeout: float) -> int | None:
        if "dead" in url:
            await hung.wait()  # never answers until the test ends
        delivered.append(url)
        return 200

    delivered: list[str] = []
    cluster = Cluster("- {name: dead}\n- {name: live}", {"dead": "http://dead.example/", "live": "http://live.example/"})
    notifier = notify.Notifier(post, cluster.read, cluster.report, concurrency=4)
    notifier.start()
    for _ in range(3):
        notifier.publish(ROLLOUT, *ABORT)
    for _ in range(50):
        await asyncio.sleep(0)
    assert delivered == ["http://live.example/"] * 3
    hung.set()
    await notifier.drain()
    await notifier.stop()


async def test_a_receiver_gets_only_what_it_asked_for():
    clock = FakeClock()
    cluster = Cluster("- {name: aborts, events: [rollout-aborted]}\n- {name: steps, events: [StepInProgress]}",
                      {"aborts": "http://a.example/", "steps": "http://s.example/"})
    receiver = Receiver(clock)
    notifier = make(cluster, receiver, clock)
    notifier.start()
    for event in (ABORT, PROMOTE, STEP):
        notifier.publish(ROLLOUT, *event)
    await notifier.drain()
    await notifier.stop()
    assert sorted((call[0], call[1]["reason"]) for call in receiver.calls) == [
        ("http://a.example/", c.ROLLOUT_ABORTED_BY_USER), ("http://s.example/", c.ROLLOUT_STEP_IN_PROGRESS)]


async def test_events_nobody_is_told_about_by_default_are_not_sent():
    clock = FakeClock()
    receiver = Receiver(clock)
    notifier = make(Cluster(), receiver, clock)
    notifier.start()
    notifier.publish(ROLLOUT, *STEP)
    notifier.publish({"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ml"}}, "Warning", "Whatever", "m")
    await notifier.drain()
    await notifier.stop()
    assert receiver.calls == []


async def test_configuration_is_cached_briefly_and_problems_are_reported_once():
    clock = FakeClock()
    cluster = Cluster("- {name: chat}\n- {name: typo, events: [rollout-abortd]}")
    receiver = Receiver(clock)
    notifier = make(cluster, receiver, clock, cache_seconds=10.0)
    notifier.start()
    notifier.publish(ROLLOUT, *ABORT)
    notifier.publish(ROLLOUT, *PROMOTE)
    await notifier.drain()
    assert cluster.reads == 1 and len(receiver.calls) == 2
    clock.now += 11  # the cache ran out: read again, same problem, not reported again
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    assert cluster.reads == 2
    assert len(cluster.reports) == 1 and "receivers[1] ('typo').events[0]: 'rollout-abortd'" in cluster.reports[0]
    cluster.config = cluster_config("- {name: chat}", {"chat": "https://chat.example/h"})  # fixed
    clock.now += 11
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    await notifier.stop()
    assert len(cluster.reports) == 1 and len(receiver.calls) == 4


async def test_an_unreadable_configuration_counts_the_notification_as_failed_and_is_asked_again():
    clock = FakeClock()
    receiver = Receiver(clock)

    async def forbidden(namespace: str) -> tuple[Any, Any]:
        raise RuntimeError("403 Forbidden: configmaps noria-notifications")

    notifier = notify.Notifier(receiver.post, forbidden, clock=clock, sleep=clock.sleep)
    before = counted(c.ROLLOUT_ABORTED_BY_USER, notify.FAILED)
    notifier.start()
    notifier.publish(ROLLOUT, *ABORT)
    notifier.publish(ROLLOUT, *ABORT)
    await notifier.drain()
    await notifier.stop()
    assert receiver.calls == [] and counted(c.ROLLOUT_ABORTED_BY_USER, notify.FAILED) == before + 2


async def test_stop_gives_queued_notifications_a_grace_then_cancels():
    never = asyncio.Event()

    async def post(url: str, body: Mapping[str, Any], timeout: float) -> int | None:
        await never.wait()
        return 200

    cluster = Cluster()
    notifier = notify.Notifier(post, cluster.read)
    notifier.start()
    notifier.publish(ROLLOUT, *ABORT)
    await asyncio.wait_for(notifier.stop(grace=0.2), 2.0)  # returns although the receiver never answers


async def test_the_module_publish_is_a_no_op_without_a_running_notifier():
    assert notify._active is None
    notify.publish(ROLLOUT, *ABORT)  # the CLI and other tests post Events too


@pytest.mark.parametrize("api_answer", [None, OSError("connection refused")])
async def test_post_event_queues_the_notification_whether_or_not_the_event_was_stored(monkeypatch, api_answer):
    from noria import kube

    async def create(obj: Mapping[str, Any]) -> tuple[dict, bool]:
        if api_answer is not None:
            raise api_answer
        return dict(obj), True

    published: list[tuple] = []
    monkeypatch.setattr(kube, "create", create)
    monkeypatch.setattr(notify, "publish", lambda *args: published.append(args))
    await kube.post_event(ROLLOUT, *ABORT)
    assert published == [(ROLLOUT, *ABORT)]


async def test_a_namespace_whose_fresh_receivers_want_nothing_of_it_queues_nothing():
    clock = FakeClock()
    cluster, receiver = Cluster("- {name: chat, events: [run-failed]}"), Receiver(clock)
    notifier = make(cluster, receiver, clock, queue_size=1)
    notifier.start()
    notifier.publish(ROLLOUT, *ABORT)  # the first is queued: the receivers are not known yet
    await notifier.drain()
    dropped = counted(c.ROLLOUT_PROMOTED, notify.DROPPED)
    for _ in range(5):  # a burst the queue of 1 could not hold: known unwanted, never queued
        notifier.publish(ROLLOUT, *PROMOTE)
    assert counted(c.ROLLOUT_PROMOTED, notify.DROPPED) == dropped
    await notifier.drain()
    await notifier.stop()
    assert receiver.calls == [] and cluster.reads == 1
