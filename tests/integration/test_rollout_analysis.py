"""Analysis decides, never missing data: a bad canary is aborted within interval × failureLimit with
user traffic back on stable; no traffic pauses; an unreachable Prometheus aborts after the error
limit. In none of these cases is the new version ever promoted."""

from __future__ import annotations

import json
import time

import pytest
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


def test_inaccurate_canary_is_aborted_and_rejected_with_no_request_lost(cluster, namespace, operator_factory,
                                                                        store_claim, prometheus):
    interval, failure_limit = 4, 1
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "5m"}}]}},
                       analysis={"interval": f"{interval}s", "failureLimit": failure_limit,
                                 "checks": [{"builtin": "accuracy", "min": "0.7", "minLabels": 3},
                                            {"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest, feedback=True)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, flip_labels=True))
        wait_for("churn-v2 gets traffic", lambda: traffic.share("churn-v2", time.monotonic() - 3)[1] > 0, timeout=120)
        first_failure = wait_for("a failed measurement",
                                 lambda: (rollout_status(cluster, namespace).get("analysis") or {}).get("failed"),
                                 timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        assert first_failure >= 1
        first_failure_seen = time.monotonic()
        st = wait_for("the abort", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Degraded" and s,
                      timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        aborted_seen = time.monotonic()
        degraded = condition(st, "Degraded")
        assert degraded["reason"] == c.ROLLOUT_ANALYSIS_FAILED and "accuracy" in degraded["message"]
        assert st["weights"] == {"churn-v1": 100} and not st.get("canaryVersion")
        assert st["analysis"]["failed"] == failure_limit + 1
        mv = get(cluster, namespace, "modelversion", "churn-v2")
        assert mv["status"]["stage"] == "Rejected" and "accuracy" in mv["status"]["message"]
        assert mv["status"]["history"][-1]["by"] == "rollout/churn"
        decided_at = wall_time(st["analysis"]["last"]["at"])
        time.sleep(4)
        late = [a for a in traffic.answers if a.version == "churn-v2" and a.wall > decided_at + 2.0]
        assert not late, f"{len(late)} answers from churn-v2 more than 2s after the abort"
        assert all(a.status == 200 for a in traffic.answers), traffic.failures(decided_at)
        last_v2 = max(a.wall for a in traffic.answers if a.version == "churn-v2")
        # Aborted within interval × failureLimit of the first failure (plus a pass and a poll of slack).
        assert aborted_seen - first_failure_seen <= interval * failure_limit + 3.0, aborted_seen - first_failure_seen
        # The artifact is kept for forensics.
        assert (cluster.store_dir / namespace / "churn" / "v2" / "model.skops").exists()
        # Still not promoted a while later, and the stable serves everything.
        time.sleep(3)
        assert stage_of(cluster, namespace, "churn-v1") == "Production"
        assert rollout_status(cluster, namespace)["stableVersion"] == "churn-v1"
        print(f"FIGURE abort: decisive measurement -> last churn-v2 answer {last_v2 - decided_at:+.2f}s; "
              f"failed requests {sum(a.status != 200 for a in traffic.answers)} of {len(traffic.answers)}")
    finally:
        traffic.stop()


def test_no_traffic_is_inconclusive_pauses_and_never_promotes(cluster, namespace, operator_factory, store_claim,
                                                              prometheus):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "2s"}}]}},
                       analysis={"interval": "2s", "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    traffic.stop()  # nobody calls the model from now on
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    st = wait_for("paused on inconclusive analysis",
                  lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Paused" and s, timeout=120,
                  on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert condition(st, "Paused")["reason"] == c.ROLLOUT_ANALYSIS_INCONCLUSIVE
    time.sleep(8)  # several intervals and far past the pause's duration
    st = rollout_status(cluster, namespace)
    assert st["phase"] == "Paused" and st["canaryVersion"] == "churn-v2" and st["stableVersion"] == "churn-v1"
    assert stage_of(cluster, namespace, "churn-v2") == "Canary"
    # A person aborts: traffic back to stable, the version rejected.
    cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/abort=true")
    st = wait_for("aborted", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Degraded" and s,
                  timeout=30)
    assert condition(st, "Degraded")["reason"] == c.ROLLOUT_ABORTED_BY_USER and st["weights"] == {"churn-v1": 100}
    assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
    annotations = get(cluster, namespace, "rollouts.noria.dev", "churn")["metadata"].get("annotations") or {}
    assert "noria.dev/abort" not in annotations
    # Retry brings it back as a candidate.
    cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/retry=true")
    wait_for("retried", lambda: rollout_status(cluster, namespace).get("canaryVersion") == "churn-v2", timeout=30)
    assert stage_of(cluster, namespace, "churn-v2") == "Canary"


def test_unreachable_prometheus_aborts_after_the_error_limit(cluster, namespace, operator_factory, store_claim):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}]}},
                       analysis={"interval": "2s", "consecutiveErrorLimit": 2,
                                 "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim,
                              operator_env("http://127.0.0.1:9"), manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        st = wait_for("aborted on errors", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Degraded"
                      and s, timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        assert condition(st, "Degraded")["reason"] == c.ROLLOUT_ANALYSIS_ERRORS
        assert st["analysis"]["errors"] == 3 and st["analysis"]["passed"] == 0
        assert "unreachable" in json.dumps(st["analysis"]["last"])
        assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
        assert stage_of(cluster, namespace, "churn-v1") == "Production"
    finally:
        traffic.stop()
