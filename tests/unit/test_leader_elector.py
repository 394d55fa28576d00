"""The election loop against an in-memory Lease that behaves like the API server's (create refused
if it exists, replace refused unless its resourceVersion is current), on a fake clock; and the
fenced event loop, in a real child process."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import textwrap
import time

import pytest
from noria import leader
from noria.leader import Action, LeaderElector, LeaseConfig, LeaseConflict, LeaseRecord

CONFIG = dict(duration=15, renew_deadline=10, renew_period=5, retry_period=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLease:
    """One Lease with resourceVersion preconditions; ``fail`` makes the next calls raise."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.fail: Exception | None = None
        self.writes: list[tuple[str, str]] = []  # (holder, how)

    def _bump(self, holder: str, duration: int, transitions: int) -> LeaseRecord:
        self.version += 1
        self.record = LeaseRecord(holder=holder, duration=duration, resource_version=str(self.version),
                                  transitions=transitions, acquire_time="2026-12-02T00:00:00+00:00")
        return self.record

    async def get(self) -> LeaseRecord | None:
        if self.fail:
            raise self.fail
        return self.record

    async def create(self, holder: str, duration: int, now: dt.datetime) -> LeaseRecord:
        if self.fail:
            raise self.fail
        if self.record is not None:
            raise LeaseConflict("exists")
        self.writes.append((holder, "create"))
        return self._bump(holder, duration, 0)

    async def update(self, base: LeaseRecord, holder: str, duration: int, now: dt.datetime,
                     acquired: bool) -> LeaseRecord:
        if self.fail:
            raise self.fail
        if self.record is None or base.resource_version != self.record.resource_version:
            raise LeaseConflict("stale resourceVersion")
        self.writes.append((holder, "update"))
        changed = holder != self.record.holder and holder
        return self._bump(holder, duration, self.record.transitions + (1 if changed else 0))


@pytest.fixture(autouse=True)
def election_state():
    leader.start_election()
    yield
    leader._set_term(None)
    leader._Term.enabled = False
    leader._Term.clock = leader.time.monotonic


def elector(store: MemoryLease, clock: Clock, me: str) -> LeaderElector:
    leader._Term.clock = clock
    return LeaderElector(LeaseConfig(identity=me, **CONFIG), store, clock=clock)


async def test_first_candidate_creates_the_lease_and_leads() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, clock, "a")
    assert not leader.is_leading()
    decision = await a.step()
    assert decision.action is Action.CREATE and store.record.holder == "a"
    assert leader.is_leading() and leader.seconds_left() == pytest.approx(10)
    assert not leader.is_leading(margin=10)


async def test_of_two_standbys_taking_over_the_same_record_one_wins() -> None:
    store, clock = MemoryLease(), Clock()
    await elector(store, clock, "old").step()
    b, c = elector(store, clock, "b"), elector(store, clock, "c")
    await b.step(), await c.step()  # both see the record now
    clock.now += 15
    b_took, c_took = await b.step(), await c.step()
    assert b_took.action is Action.TAKE_OVER and store.record.holder == "b"
    assert c_took.action is Action.WAIT and c.renewed_at is None, "the second replace carried a stale version"
    assert (await c.step()).action is Action.WAIT  # and c now sees b's fresh record: a new duration to wait
    assert store.record.transitions == 1


async def test_standby_waits_a_whole_duration_after_each_change_it_sees() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.step()
    await b.step()
    for _ in range(4):  # a renews every 5 s: b never gets to take over
        clock.now += 5
        assert (await a.step()).action is Action.RENEW
        assert (await b.step()).action is Action.WAIT
    clock.now += 14.9
    assert (await b.step()).action is Action.WAIT
    clock.now += 0.1
    assert (await b.step()).action is Action.TAKE_OVER


async def test_leader_renews_without_reading_and_rereads_on_conflict() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, clock, "a")
    await a.step()
    clock.now += 5
    store.fail = None
    reads = []
    original_get = store.get

    async def counting_get() -> LeaseRecord | None:
        reads.append(clock.now)
        return await original_get()

    store.get = counting_get  # type: ignore[method-assign]
    assert (await a.step()).action is Action.RENEW and reads == []
    store._bump("a", 15, 0)  # someone else touched it (a label, say): our version is stale
    clock.now += 5
    assert (await a.step()).action is Action.WAIT and a.renewed_at is not None  # 409: read again
    assert (await a.step()).action is Action.RENEW and len(reads) == 1


async def test_hold_returns_when_renewals_fail_until_the_deadline() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, clock, "a")
    await a.step()
    store.fail = OSError("connection refused")

    async def no_sleep(seconds: float) -> None:
        clock.now += max(seconds, 0.5)

    real_sleep, leader.asyncio.sleep = leader.asyncio.sleep, no_sleep  # type: ignore[assignment]
    try:
        why = await asyncio.wait_for(a.hold(), 5)
    finally:
        leader.asyncio.sleep = real_sleep  # type: ignore[assignment]
    assert "not renewed" in why and "connection refused" in why
    assert clock.now - 1000.0 == pytest.approx(10, abs=2.5)
    assert not leader.is_leading()


async def test_hold_returns_when_another_holder_took_the_lease() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, clock, "a")
    await a.step()
    store._bump("b", 15, 1)

    async def no_sleep(seconds: float) -> None:
        clock.now += seconds

    real_sleep, leader.asyncio.sleep = leader.asyncio.sleep, no_sleep  # type: ignore[assignment]
    try:
        why = await asyncio.wait_for(a.hold(), 5)
    finally:
        leader.asyncio.sleep = real_sleep  # type: ignore[assignment]
    assert why == "the Lease is held by b"


async def test_release_lets_a_standby_take_over_at_once() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.step()
    await b.step()
    await a.release()
    assert store.record.holder == "" and not leader.is_leading()
    assert (await b.step()).action is Action.TAKE_OVER and store.record.holder == "b"


async def test_a_restarted_pod_resumes_its_own_lease() -> None:
    store, clock = MemoryLease(), Clock()
    await elector(store, clock, "pod-0").step()
    again = elector(store, clock, "pod-0")  # same identity, new process
    assert (await again.step()).action is Action.RENEW and again.renewed_at is not None


def test_micro_time_always_has_a_fraction() -> None:
    whole = dt.datetime(2026, 12, 2, 4, 0, 0, tzinfo=dt.UTC)
    assert leader.micro_time(whole).microsecond == 1
    assert leader.micro_time(whole.replace(microsecond=250)).microsecond == 250



class ReplacingClient:
    """lightkube's AsyncClient as ``KubeLeaseStore.update`` uses it: ``replace`` answers with the Lease
    as the API server stores it (through its JSON form, a new resourceVersion)."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def replace(self, lease):  # noqa: ANN001, ANN201
        from lightkube.resources.coordination_v1 import Lease

        self.sent.append(Lease.to_dict(lease))
        body = Lease.to_dict(lease)
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return Lease.from_dict(body)


TOOK = dt.datetime(2026, 12, 2, 8, 0, 0, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("acquire_time", [
    "2026-12-02T08:00:00.000001Z",  # a MicroTime as the API server writes it
    "2026-12-02T08:00:00.000001+00:00",  # as KubeLeaseStore._record keeps it
    "2026-12-02T03:00:00.000001-05:00",
    "2026-12-02T08:00:00.000001",  # no offset: UTC (noria.api.common.parse_timestamp), not local time
])
async def test_a_renewal_keeps_the_acquire_time_it_read(acquire_time, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # a machine whose local time is not UTC
    time.tzset()
    try:
        client = ReplacingClient()
        store = leader.KubeLeaseStore(LeaseConfig(identity="pod-0", **CONFIG), client=client)
        base = LeaseRecord(holder="pod-0", duration=15, resource_version="7", acquire_time=acquire_time)
        now = dt.datetime(2026, 12, 2, 9, 30, 0, tzinfo=dt.UTC)
        renewed = await store.update(base, "pod-0", 15, now, acquired=False)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    (sent,) = client.sent
    assert sent["spec"]["acquireTime"] == "2026-12-02T08:00:00.000001Z", sent["spec"]
    assert sent["spec"]["renewTime"] == "2026-12-02T09:30:00.000001Z"
    assert sent["metadata"]["resourceVersion"] == "7"  # the precondition
    assert renewed.acquire_time is not None and dt.datetime.fromisoformat(renewed.acquire_time) == TOOK
    # A takeover starts a new term: acquireTime is now.
    taken = await store.update(renewed, "pod-1", 15, now, acquired=True)
    assert client.sent[-1]["spec"]["acquireTime"] == "2026-12-02T09:30:00.000001Z"
    assert taken.transitions == 1 and taken.holder == "pod-1"

FENCE_CHILD = textwrap.dedent("""
    import asyncio, time
    from noria import leader

    def say(text):
        print(text, flush=True)

    async def main():
        leader.start_election()
        leader._set_term(time.monotonic() + 0.3)
        asyncio.get_running_loop().call_later(0.1, say, "callback before the deadline ran")
        await asyncio.sleep(0.2)
        FREEZE
        await asyncio.sleep(5)
        say("STILL RUNNING")

    with asyncio.Runner(loop_factory=leader.fenced_event_loop) as runner:
        runner.run(main())
""")
# Frozen past the deadline (as SIGSTOP or a VM pause would), with work queued behind the freeze.
FROZEN = 'time.sleep(0.5)\n    asyncio.get_running_loop().call_soon(say, "WROTE AFTER THE DEADLINE")'


def run_child(freeze: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", FENCE_CHILD.replace("FREEZE", freeze)], capture_output=True,
                         text=True, timeout=60)
    return out, time.monotonic() - started


def test_fenced_loop_ends_the_process_before_any_callback_after_the_deadline() -> None:
    out, _ = run_child(FROZEN)
    assert out.returncode == leader.LEASE_LOST_EXIT_CODE, out.stdout + out.stderr
    assert "callback before the deadline ran" in out.stdout
    assert "WROTE AFTER THE DEADLINE" not in out.stdout and "STILL RUNNING" not in out.stdout
    assert "leader lease lost" in out.stderr


def test_fenced_loop_wakes_an_idle_leader_at_its_deadline() -> None:
    out, took = run_child("pass")
    assert out.returncode == leader.LEASE_LOST_EXIT_CODE, out.stdout + out.stderr
    assert "STILL RUNNING" not in out.stdout
    assert took < 4.5, "the loop slept through its deadline"


def test_without_the_fence_the_queued_work_would_run() -> None:
    """The control: the same child on a plain event loop runs what was queued behind the freeze."""
    child = FENCE_CHILD.replace("FREEZE", FROZEN).replace("await asyncio.sleep(5)", "await asyncio.sleep(0.1)")
    child = child.replace("loop_factory=leader.fenced_event_loop", "loop_factory=None")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "WROTE AFTER THE DEADLINE" in out.stdout, out.stdout + out.stderr


def test_a_standby_process_is_alive_takes_no_action_and_stops_on_sigterm(tmp_path) -> None:  # noqa: ANN001
    """``python -m noria`` that cannot reach its Lease (no API server here) stands by: /healthz answers,
    /metrics says it does not lead, Kopf never starts, and SIGTERM ends it cleanly."""
    import json
    import os
    import signal
    import urllib.request

    from noria_testbed.processes import free_port, wait_until

    health, metrics = free_port(), free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "NORIA_METRICS_PORT": str(metrics), "POD_NAME": "standby",
           "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "noria", "-n", "ml", "--liveness",
                                    f"http://127.0.0.1:{health}/healthz"], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        def answer(url: str) -> str:
            assert process.poll() is None, log_path.read_text()
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()

        wait_until("standby liveness", lambda: answer(f"http://127.0.0.1:{health}/healthz"), timeout=60,
                   on_timeout=log_path.read_text)
        assert json.loads(answer(f"http://127.0.0.1:{health}/healthz")) == {"leading": False}
        assert "\nnoria_operator_leader 0.0\n" in answer(f"http://127.0.0.1:{metrics}/metrics")
        wait_until("a failed look at the Lease", lambda: "standing by" in log_path.read_text(), timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "Lease ml/noria-operator" in log
    assert "kopf" not in log, f"Kopf started in a standby:\n{log}"
