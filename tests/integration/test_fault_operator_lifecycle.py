"""Fault suite, the operator's and the user's interruptions (issue #12 scenarios: operator down for a
whole analysis interval, a new version mid-canary, abort then retry to promotion), on the real test
bed with the real operator, router, model servers and Prometheus.

- Operator SIGKILLed during a timed pause and kept down for several analysis intervals: on restart
  it resumes the SAME step (same stepStartedAt, tallies kept), the pause ends when it was due, and
  nothing is done twice.
- churn-v3 arrives while churn-v2 is the canary at 50%: churn-v2 is dropped cleanly (no traffic, its
  Deployment gone, its history says why), churn-v3 rolls out, no user request fails.
- ``noria.dev/abort`` then ``noria.dev/retry``: the retried version reaches Production and the
  Rollout is Healthy; the ModelVersion's stage history tells the story in order.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from fault_helpers import StatusRecorder, is_subsequence, stage_history, status_text
from noria import conditions as c
from rollout_helpers import (
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    stage_of,
    start_stable,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration


def deployments(cluster, namespace: str) -> list[str]:  # noqa: ANN001
    return sorted(cluster.kubectl("get", "deployments", "-n", namespace, "-o",
                                  "jsonpath={.items[*].metadata.name}").stdout.split())


def test_fault_operator_down_for_whole_intervals_resumes_the_same_step(cluster, namespace, operator_factory,
                                                                       store_claim, prometheus):
    # The pause is long enough to hold the kill, the time down and the new process's wait for the
    # killed leader's Lease to expire (15 s), so the restarted operator finds the same step running.
    interval, pause, down = 2, 40, 8
    # minLabels: the check waits (no pause, no verdict) until Prometheus holds 5 feedback labels of the
    # canary, hence its requests too. Without it a first measurement taken before Prometheus had scraped
    # the canary twice was inconclusive, paused the Rollout for a person, and nothing was measured after
    # the restart (CI failure: "a new measurement after the restart not reached").
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": f"{pause}s"}}]}},
                       analysis={"interval": f"{interval}s",
                                 "checks": [{"builtin": "errorRate", "max": "0.05", "minLabels": 5}]})
    operator, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                                     manifest, feedback=True)
    try:
        with StatusRecorder(cluster, namespace) as recorder:
            create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
            before = wait_for("the pause, with a measurement", lambda: (s := rollout_status(cluster, namespace)).get(
                "currentStep") == 1 and ((s.get("analysis") or {}).get("last") or {}).get("at") and s, timeout=150,
                on_timeout=lambda: status_text(cluster, namespace))
            assert not before["analysis"].get("inconclusive"), before["analysis"]  # waited for data, never judged blind
            operator.kill(signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(down)  # several analysis intervals with nobody measuring
            frozen = rollout_status(cluster, namespace)
            assert frozen["currentStep"] == 1 and frozen["stepStartedAt"] == before["stepStartedAt"]
            assert frozen["analysis"]["last"]["at"] == before["analysis"]["last"]["at"] or \
                wall_time(frozen["analysis"]["last"]["at"]) <= time.time() - down + 1
            operator.start()
            restarted = time.monotonic()
            resumed = wait_for("a new measurement after the restart", lambda: (s := rollout_status(
                cluster, namespace)).get("analysis", {}).get("last", {}).get("at") != frozen["analysis"]["last"]["at"]
                and s, timeout=60, on_timeout=lambda: status_text(cluster, namespace))
            first_after = time.monotonic()
            due = wall_time(before["stepStartedAt"]) + pause
            assert time.time() < due - 1, "the test was too slow to see the step resume: lengthen the pause"
            assert resumed["currentStep"] == 1 and resumed["stepStartedAt"] == before["stepStartedAt"], (
                "the step was restarted instead of resumed")
            assert resumed["analysis"]["passed"] >= frozen["analysis"]["passed"], "tallies lost across the restart"
            st = wait_for("promoted", lambda: (s := rollout_status(cluster, namespace)).get("stableVersion")
                          == "churn-v2" and s, timeout=90, on_timeout=lambda: status_text(cluster, namespace))
        promoted_at = recorder.first(lambda s: s.get("stableVersion") == "churn-v2")
        assert promoted_at is not None
        promoted_wall = time.time() - (time.monotonic() - promoted_at[0])
        # The pause lasted its duration from its original start: not cut short, not restarted.
        assert promoted_wall >= due - 1.0, f"promoted {due - promoted_wall:.1f}s before the pause was due"
        assert promoted_wall < due + pause - 5, "the pause was counted again from the restart"
        steps = [(s.get("currentStep"), s.get("stepStartedAt")) for _, s in recorder.samples
                 if s.get("canaryVersion") == "churn-v2"]
        distinct = list(dict.fromkeys(steps))
        assert [i for i, _ in distinct] == sorted(i for i, _ in distinct), distinct
        assert len({i for i, _ in distinct}) == len(distinct), f"a step started twice: {distinct}"
        assert st["phase"] == "Healthy" and stage_history(cluster, namespace, "churn-v2").count("Canary") == 1
        assert all(a.status == 200 for a in traffic.answers), traffic.failures()
        print(f"FIGURE operator down {restarted - killed:.1f}s; restart -> first measurement "
              f"{first_after - restarted:.1f}s; promoted {promoted_wall - due:+.1f}s from the pause's due time")
    finally:
        traffic.stop()


def test_fault_a_new_version_mid_canary_supersedes_the_old_candidate_cleanly(cluster, namespace, operator_factory,
                                                                             store_claim, prometheus):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        wait_for("churn-v2 at 50%", lambda: (rollout_status(cluster, namespace).get("weights") or {})
                 .get("churn-v2") == 50 and traffic.share("churn-v2", time.monotonic() - 2)[0] > 0.2, timeout=120,
                 on_timeout=lambda: status_text(cluster, namespace))
        with StatusRecorder(cluster, namespace) as recorder:
            create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
            arrived = time.monotonic()
            wait_for("churn-v3 is the canary at 50%", lambda: (s := rollout_status(cluster, namespace)).get(
                "canaryVersion") == "churn-v3" and (s.get("weights") or {}).get("churn-v3") == 50, timeout=120,
                on_timeout=lambda: status_text(cluster, namespace))
            wait_for("churn-v3 answers users", lambda: traffic.share("churn-v3", time.monotonic() - 2)[0] > 0.2,
                     timeout=30)
            wait_for("churn-v2's Deployment gone", lambda: "churn-churn-v2" not in deployments(cluster, namespace),
                     timeout=60, on_timeout=lambda: str(deployments(cluster, namespace)))
        dropped = get(cluster, namespace, "modelversion", "churn-v2")["status"]
        assert dropped["stage"] != "Canary" and dropped.get("traffic", 0) == 0, dropped
        assert dropped["history"][-1]["reason"] == c.ROLLOUT_SUPERSEDED or "churn-v3" in json.dumps(dropped["history"][-1])
        # churn-v2 never got more than its 50% once churn-v3 existed, and it is never picked again.
        assert max(recorder.weights_of("churn-v2", since=arrived)) <= 50
        cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/promote=true")
        st = wait_for("churn-v3 promoted", lambda: (s := rollout_status(cluster, namespace)).get("stableVersion")
                      == "churn-v3" and s.get("phase") == "Healthy" and s, timeout=90,
                      on_timeout=lambda: status_text(cluster, namespace))
        assert st["weights"] == {"churn-v3": 100}
        assert stage_of(cluster, namespace, "churn-v3") == "Production"
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        assert stage_of(cluster, namespace, "churn-v2") != "Canary"
        assert "Canary" not in stage_history(cluster, namespace, "churn-v2")[-1:]
        assert all(a.status == 200 for a in traffic.answers), traffic.failures()
    finally:
        traffic.stop()


def test_fault_abort_then_retry_reaches_production_and_the_history_tells_the_story(
        cluster, namespace, operator_factory, store_claim, prometheus):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "4s"}}]}},
                       analysis={"interval": "2s", "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        wait_for("churn-v2 at 50%", lambda: (rollout_status(cluster, namespace).get("weights") or {})
                 .get("churn-v2") == 50, timeout=120, on_timeout=lambda: status_text(cluster, namespace))
        cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/abort=true")
        st = wait_for("aborted", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Degraded" and s,
                      timeout=60, on_timeout=lambda: status_text(cluster, namespace))
        assert condition(st, c.DEGRADED)["reason"] == c.ROLLOUT_ABORTED_BY_USER
        assert st["weights"] == {"churn-v1": 100} and stage_of(cluster, namespace, "churn-v2") == "Rejected"
        time.sleep(3)  # the abort sticks: nothing picks churn-v2 again by itself
        assert rollout_status(cluster, namespace)["phase"] == "Degraded"
        assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
        cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/retry=true")
        st = wait_for("the retried version promoted", lambda: (s := rollout_status(cluster, namespace)).get(
            "stableVersion") == "churn-v2" and s.get("phase") == "Healthy" and s, timeout=120,
            on_timeout=lambda: status_text(cluster, namespace))
        assert st["weights"] == {"churn-v2": 100}
        assert condition(st, c.DEGRADED).get("status") != c.TRUE
        assert stage_of(cluster, namespace, "churn-v2") == "Production"
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        history = stage_history(cluster, namespace, "churn-v2")
        assert is_subsequence(["Canary", "Rejected", "Canary", "Production"], history), history
        assert history.count("Production") == 1 and history.count("Rejected") == 1, history
        annotations = get(cluster, namespace, "rollouts.noria.dev", "churn")["metadata"].get("annotations") or {}
        assert "noria.dev/abort" not in annotations and "noria.dev/retry" not in annotations
        assert all(a.status == 200 for a in traffic.answers), traffic.failures()
    finally:
        traffic.stop()
