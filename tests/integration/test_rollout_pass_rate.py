"""A Rollout that waits for a person is passed about once per interval, however long it waits (real
operator, API server and servers). Before the fix a pause for a person that outlasted progressDeadline
(which does not apply to it) made next_pass_in return 0 s: pass after pass with nothing to do."""

from __future__ import annotations

import time
import urllib.request

import pytest
from noria import conditions as c
from prometheus_client.parser import text_string_to_metric_families
from rollout_helpers import (
    condition,
    create_model_version,
    rollout,
    rollout_status,
    save_model,
    start_stable,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # NORIA_ROLLOUT_INTERVAL_SECONDS
DEADLINE = 3  # progressDeadline, seconds, set once the pause has begun: the pause outlasts it


def rollout_passes(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return next(s.value for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "noria_operator_reconcile_duration_seconds_count" and s.labels.get("kind") == "Rollout")


def test_a_pause_for_a_person_past_progress_deadline_is_passed_once_per_interval(
        cluster, namespace, operator_factory, store_claim):
    # Long enough for the candidate's pods to start; shortened below, once the pause has begun.
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}, progressDeadline="2m")
    env = {"NORIA_ROLLOUT_INTERVAL_SECONDS": str(INTERVAL), "NORIA_ROUTER_BACKEND_URLS": "clusterIP"}
    operator, traffic = start_stable(cluster, namespace, operator_factory, store_claim, env, manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        st = wait_for("paused for a person at step 1", lambda: (s := rollout_status(cluster, namespace)).get(
            "currentStep") == 1 and condition(s, c.PAUSED).get("reason") == c.ROLLOUT_PAUSED_FOR_PROMOTION and s,
            timeout=120, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type", "merge",
                        "-p", f'{{"spec": {{"progressDeadline": "{DEADLINE}s"}}}}')
        time.sleep(max(0.0, wall_time(st["stepStartedAt"]) + DEADLINE + 2 - time.time()))
        before, started = rollout_passes(operator.metrics_url), time.monotonic()
        time.sleep(6)
        rate = (rollout_passes(operator.metrics_url) - before) / (time.monotonic() - started)
        st = rollout_status(cluster, namespace)
    finally:
        traffic.stop()
    assert st["canaryVersion"] == "churn-v2" and st["currentStep"] == 1, st  # still waiting, not aborted
    # One pass per interval, plus a few woken by events; a hot loop ran dozens per second.
    assert rate <= 2.5 / INTERVAL, f"{rate:.1f} Rollout passes/s while waiting for a person"
    print(f"FIGURE {rate:.2f} Rollout passes/s during a pause for a person past progressDeadline "
          f"(interval {INTERVAL:g}s)")
