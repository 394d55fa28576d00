"""Two real operator processes against one namespace: exactly one acts (the one the Lease names),
a kill -9 mid-canary hands over to the standby within a lease duration while user traffic through
the router keeps flowing (no request fails) and the new leader finishes the rollout, and a leader
frozen (SIGSTOP) past its lease wakes up to end itself without writing anything."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from rollout_helpers import (
    PIPELINE,
    Traffic,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    sample_rows,
    save_model,
    service_url,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration

DURATION, RENEW_DEADLINE = 10, 7.0
PAUSE = 15  # seconds of the canary pause the leader is killed in: the wait for traffic, the kill, the handover
# Short enough for a quick handover, long enough that a loaded 2-core machine does not lose the
# lease by accident (the leader gives up after RENEW_DEADLINE s without a successful renewal).
LEASE_ENV = {"NORIA_LEASE_DURATION_SECONDS": str(DURATION), "NORIA_LEASE_RENEW_DEADLINE_SECONDS": str(RENEW_DEADLINE),
             "NORIA_LEASE_RENEW_PERIOD_SECONDS": "2", "NORIA_LEASE_RETRY_PERIOD_SECONDS": "0.5"}
LEASE_LOST_EXIT_CODE = 75  # noria.leader.LEASE_LOST_EXIT_CODE
# A log line of the operator's reconcile machinery (Kopf, Noria's handlers); a standby has none.
ACTIVITY = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):(kopf|noria\.(deployment|training|kube))", re.M)


def lease(operator) -> dict:  # noqa: ANN001
    """The leader Lease ``operator`` competes for (operator_factory names one per test namespace)."""
    return get(operator.cluster, operator.env["NORIA_LEADER_NAMESPACE"], "lease",
               operator.env["NORIA_LEADER_LEASE_NAME"]) or {}


def holder(operator) -> str | None:  # noqa: ANN001
    return (lease(operator).get("spec") or {}).get("holderIdentity")


def leader_gauge(operator) -> float:  # noqa: ANN001
    match = re.search(r"^noria_operator_leader (\S+)$", operator.metrics(), re.M)
    assert match, "noria_operator_leader missing from the operator's /metrics"
    return float(match.group(1))


def snapshot(cluster, namespace: str) -> dict:  # noqa: ANN001
    """Everything an acting operator would change when churn-v2 appears: the Rollout, the
    ModelVersion, the Deployments it creates, the Events it posts about its own kinds."""
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return {
        "rollout": get(cluster, namespace, "rollouts.noria.dev", "churn")["metadata"]["resourceVersion"],
        "churn-v2": get(cluster, namespace, "modelversion", "churn-v2")["metadata"]["resourceVersion"],
        "deployments": sorted(cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.split()),
        "events": sorted(e["metadata"]["name"] for e in events
                         if e["involvedObject"]["kind"] in ("Rollout", "ModelVersion")),
    }


def two_replicas_serving_v1(cluster, namespace, operator_factory, store_claim,  # noqa: ANN001, ANN201
                             strategy: dict | None = None):
    """Replica a, then replica b, on one namespace; a Rollout (router provider) serving churn-v1
    (immediate strategy unless ``strategy``)."""
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    env = {**operator_env("http://127.0.0.1:9"), **LEASE_ENV}
    a = operator_factory(namespace, POD_NAME="replica-a", **env)
    wait_for("replica-a holds the Lease", lambda: holder(a) == "replica-a", timeout=60)
    b = operator_factory(namespace, POD_NAME="replica-b", **env)
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, strategy or {"immediate": {}}))
    wait_for("churn-v1 stable and Healthy", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Healthy"
             and s.get("stableVersion") == "churn-v1", timeout=120,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    return a, b


def test_one_replica_acts_and_the_standby_takes_over_after_kill_9_with_no_request_failed(
        cluster, namespace, operator_factory, store_claim):
    # churn-v2 at 50% with a timed pause that outlasts the kill: the leader is killed mid-canary, the
    # router keeps splitting user traffic while no replica leads, and the new leader ends the pause
    # when it was due (counted from its original start) and promotes.
    strategy = {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": f"{PAUSE}s"}}]}}
    a, b = two_replicas_serving_v1(cluster, namespace, operator_factory, store_claim, strategy)
    assert holder(a) == "replica-a"
    assert leader_gauge(a) == 1 and leader_gauge(b) == 0
    assert ACTIVITY.search(a.log()), "the leader shows no reconcile activity"
    assert not ACTIVITY.search(b.log()), f"the standby acted:\n{b.log()[-3000:]}"
    # Events doubled with two actors (issue #12): each one is posted once.
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    posted = [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"], e["message"]) for e in events
              if e["involvedObject"]["kind"] in ("Rollout", "ModelVersion")]
    assert posted and len(posted) == len(set(posted)), f"an Event was posted twice: {sorted(posted)}"

    rows, labels = sample_rows()
    traffic = Traffic(service_url(cluster, namespace, PIPELINE), rows, labels, feedback=False).start()
    try:
        wait_for("traffic answered by churn-v1", lambda: traffic.share("churn-v1", time.monotonic() - 2)[1] > 5,
                 timeout=60, on_timeout=lambda: f"answers: {traffic.summary()}")
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        paused = wait_for("churn-v2 at 50% in its pause, answering users", lambda: (
            s := rollout_status(cluster, namespace)).get("currentStep") == 1 and (s.get("weights") or {}).get(
            "churn-v2") == 50 and traffic.share("churn-v2", time.monotonic() - 2)[0] > 0.2 and s, timeout=120,
            on_timeout=lambda: f"{rollout_status(cluster, namespace)}; answers: {traffic.summary()}")
        due = wall_time(paused["stepStartedAt"]) + PAUSE
        assert not ACTIVITY.search(b.log()), f"the standby acted:\n{b.log()[-3000:]}"

        a.kill(signal.SIGKILL)
        killed = time.monotonic()
        assert time.time() < due - 2, "the pause ended before the kill: lengthen PAUSE"
        wait_for("replica-b holds the Lease", lambda: holder(b) == "replica-b", timeout=DURATION + 30)
        handover = time.monotonic() - killed
        # Within one lease duration of b's last sight of a's renewal (at most a renew period before the
        # kill), plus b's retry period and the test's polling on a loaded machine.
        assert handover <= DURATION + 4, f"handover took {handover:.1f}s"
        assert leader_gauge(b) == 1
        spec = lease(b)["spec"]
        assert spec["leaseTransitions"] >= 1 and spec["leaseDurationSeconds"] == DURATION
        # With no leader, the router kept splitting: both versions answered, nothing failed.
        leaderless = [x for x in traffic.since(killed) if x.at <= killed + handover]
        assert leaderless and all(x.status == 200 for x in leaderless), traffic.failures()
        served = {x.version for x in leaderless}
        assert served == {"churn-v1", "churn-v2"}, f"while no replica led, answers came from {served}"

        st = wait_for("churn-v2 promoted by the new leader", lambda: (s := rollout_status(cluster, namespace))
                      .get("stableVersion") == "churn-v2" and s.get("phase") == "Healthy" and s, timeout=90,
                      on_timeout=lambda: str(rollout_status(cluster, namespace)))
        promoted = time.time()
        # The new leader went on from the step it found: the pause was not cut short (nor restarted
        # from the takeover: that would add about a lease duration and more).
        assert promoted >= due - 1, f"promoted {due - promoted:.1f}s before the pause was due"
        assert st["weights"] == {"churn-v2": 100}, st
        wait_for("users answered by churn-v2 only", lambda: (
            share := traffic.share("churn-v2", time.monotonic() - 1.5))[0] == 1.0 and share[1] > 5, timeout=30,
            on_timeout=lambda: f"answers: {traffic.summary()}")
    finally:
        traffic.stop()
    assert ACTIVITY.search(b.log()), "the new leader shows no reconcile activity"
    assert traffic.answers and not traffic.failures(), f"{len(traffic.failures())} requests failed: " \
        f"{traffic.failures()[:10]}"
    print(f"FIGURE handover after kill -9 mid-canary: {handover:.1f}s (lease duration {DURATION}s); "
          f"{len(traffic.answers)} requests, {len(leaderless)} while no replica led, 0 failed; "
          f"promoted {promoted - due:+.1f}s from the pause's due time")

    # Stopped (a rolling update, a drain), the leader finishes, then releases the Lease at once.
    b.kill(signal.SIGTERM)
    assert b.process.returncode == 0, b.log()[-3000:]
    assert holder(b) is None, lease(b)


def test_frozen_leader_that_lost_its_lease_wakes_up_and_stops_without_writing(cluster, namespace,
                                                                              operator_factory, store_claim):
    a, b = two_replicas_serving_v1(cluster, namespace, operator_factory, store_claim)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        wait_for("replica-b takes over from the frozen replica-a", lambda: holder(b) == "replica-b",
                 timeout=DURATION + 30)
        wait_for("replica-b leads", lambda: leader_gauge(b) == 1, timeout=10)
        # Freeze b too, so that nothing may act; then give the frozen a something to act on.
        os.kill(b.pid, signal.SIGSTOP)
        b_frozen = time.monotonic()
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        time.sleep(2)  # the watch events reach a's socket, queued behind its freeze
        before = snapshot(cluster, namespace)
        a_log = len(a.log())
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a.process.wait(30)
    woke = a.log()[a_log:]
    assert a.process.returncode == LEASE_LOST_EXIT_CODE, woke
    # Ended by the fenced event loop on its first wake-up (not later, by the renewal task's own check).
    assert "leader lease lost (renew deadline passed" in woke
    assert not ACTIVITY.search(woke), f"the deposed leader acted after waking:\n{woke}"
    time.sleep(1)
    assert snapshot(cluster, namespace) == before, "something was written while no replica held the lease"

    # b was frozen past its own renew deadline: it ends itself the same way, and, restarted (the same
    # pod name), resumes the lease and rolls churn-v2 out.
    time.sleep(max(0.0, RENEW_DEADLINE + 1 - (time.monotonic() - b_frozen)))
    b_log = len(b.log())
    os.kill(b.pid, signal.SIGCONT)
    b.process.wait(30)
    assert b.process.returncode == LEASE_LOST_EXIT_CODE, b.log()[b_log:]
    assert snapshot(cluster, namespace) == before
    b.start()
    wait_for("churn-v2 rolled out after the restart", lambda: (s := rollout_status(cluster, namespace))
             .get("stableVersion") == "churn-v2" and s.get("phase") == "Healthy", timeout=120,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert holder(b) == "replica-b"
