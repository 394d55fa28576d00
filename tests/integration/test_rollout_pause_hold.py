"""spec.paused on the test bed: a canary paused in a timed pause step holds past the step's duration
(weights as they were, phase Paused, Progressing reason PausedByUser), refuses noria.dev/promote, and
on resume carries on from the same step with the time it had left, then promotes. One Event each for
the pause and the resume."""

from __future__ import annotations

import json
import time

import pytest
from rollout_helpers import (
    condition,
    create_model_version,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration

PAUSE_STEP = 15  # seconds of the canary's timed pause step (step 1)


def events(cluster, namespace: str, reason: str) -> list[dict]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    return [e for e in json.loads(out)["items"]
            if e.get("reason") == reason and e["involvedObject"].get("kind") == "Rollout"]


def set_paused(cluster, namespace: str, paused: bool) -> None:  # noqa: ANN001
    cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"paused": paused}}))


def test_a_paused_canary_holds_its_step_and_resumes_with_the_time_it_had_left(
        cluster, namespace, operator_factory, store_claim):
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [
        {"setWeight": 40}, {"pause": {"duration": f"{PAUSE_STEP}s"}}, {"setWeight": 80}]}}))
    wait_for("churn-v1 stable", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v1",
             timeout=120, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    wait_for("the pause step at 40%", lambda: rollout_status(cluster, namespace).get("currentStep") == 1,
             timeout=120, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    step_started = wall_time(rollout_status(cluster, namespace)["stepStartedAt"])

    set_paused(cluster, namespace, True)
    st = wait_for("phase Paused", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Paused" and s,
                  timeout=30, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    paused_at = wall_time(condition(st, "Paused")["lastTransitionTime"])
    assert condition(st, "Paused")["reason"] == "PausedByUser"
    assert condition(st, "Progressing")["reason"] == "PausedByUser"
    assert "kubectl noria resume churn" in st["message"]
    cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/promote=true")
    wait_for("the promote refused", lambda: any(e["type"] == "Warning" and "promote ignored" in e["message"]
                                                for e in events(cluster, namespace, "PausedByUser")), timeout=30)
    time.sleep(max(0.0, step_started + PAUSE_STEP + 3 - time.time()))  # well past the step's own duration
    st = rollout_status(cluster, namespace)
    assert st["currentStep"] == 1 and st["phase"] == "Paused", st
    assert st["weights"] == {"churn-v1": 60, "churn-v2": 40} and st["canaryVersion"] == "churn-v2"

    set_paused(cluster, namespace, False)
    st = wait_for("resumed", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Progressing" and s,
                  timeout=30, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    resumed_at = wall_time(condition(st, "Paused")["lastTransitionTime"])
    assert st["currentStep"] == 1  # the step had time left: it carries on, it does not end at once
    left = PAUSE_STEP - (paused_at - step_started)
    shifted = wall_time(st["stepStartedAt"])
    assert abs(shifted - (step_started + (resumed_at - paused_at))) <= 2, (step_started, paused_at, resumed_at, st)
    wait_for("the next step, after the time that was left", lambda: rollout_status(cluster, namespace).get(
        "currentStep", 0) >= 2 or rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
        timeout=left + 30)
    assert time.time() >= resumed_at + left - 2
    wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
             timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    normal = [e for e in events(cluster, namespace, "PausedByUser") if e["type"] == "Normal"]
    assert len(normal) == 1 and sum(e.get("count") or 1 for e in normal) == 1, normal
    resumed = [e for e in events(cluster, namespace, "ResumedByUser") if "spec.paused=false" in e["message"]]
    assert len(resumed) == 1, resumed
    print(f"FIGURE paused {resumed_at - paused_at:.0f}s at {paused_at - step_started:.0f}s into a {PAUSE_STEP}s pause "
          f"step; stepStartedAt moved {shifted - step_started:.0f}s; {left:.0f}s left after the resume")
