"""Analysis decides, never missing data: a bad canary is aborted within interval × failureLimit with
user traffic back on stable; no traffic pauses; an unreachable Prometheus aborts after the error
limit. In none of these cases is the new version ever promoted. The drift check compares with what its
``against`` names, by its ``method``."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from noria import conditions as c
from rollout_helpers import (
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    sample_rows,
    save_model,
    stage_of,
    start_stable,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration


def test_inaccurate_canary_is_aborted_and_rejected_with_no_request_lost(cluster, namespace, operator_factory,
                                                                        store_claim, prometheus):
    # The first measurement comes one interval into the 50% step. At 4 s it raced Prometheus on a loaded CI
    # machine (as the drift test's did at 3 s): churn-v2's counters had one scrape, no increase yet, so
    # "no requests" was inconclusive and the Rollout paused for good (no traffic pauses by design). 8 s is
    # several scrapes.
    interval, failure_limit = 8, 1
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "5m"}}]}},
                       analysis={"interval": f"{interval}s", "failureLimit": failure_limit,
                                 "checks": [{"builtin": "accuracy", "min": "0.7", "minLabels": 3},
                                            {"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest, feedback=True)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, flip_labels=True))
        wait_for("churn-v2 gets traffic", lambda: traffic.share("churn-v2", time.monotonic() - 3)[0] > 0, timeout=120)
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


def _send_batches(url: str, rows, stop: threading.Event, answered: dict[str, int], batch: int = 50) -> None:  # noqa: ANN001
    """Inference requests of ``batch`` rows each, in a loop: every row is counted into the bins, so a
    short window holds thousands of values per version (one row per request would leave the drift
    statistics to sampling noise on a loaded machine)."""
    with httpx.Client(timeout=5.0) as client:
        i = 0
        while not stop.is_set():
            chunk = rows[np.arange(i, i + batch) % len(rows)]
            i += batch
            body = {"inputs": [{"name": "input", "shape": list(chunk.shape), "datatype": "FP64",
                                "data": chunk.tolist()}]}
            try:
                resp = client.post(f"{url}/v2/models/churn/infer", json=body)
            except httpx.HTTPError:
                continue
            if resp.status_code == 200:
                version = resp.json().get("model_version")
                answered[version] = answered.get(version, 0) + 1
            stop.wait(0.05)


def test_drift_check_honours_against_and_method(cluster, namespace, operator_factory, store_claim, prometheus):
    """Live inputs moved away from what both versions were trained on: compared with the candidate's
    training profile (``against: reference``) the drift is large; compared with the stable version,
    which sees the same traffic, it is nil. ``method`` picks the statistic (PSI is unbounded, KS is a
    CDF gap in [0, 1]). Both versions are trained on the same data, so their bins are the same and
    the stable comparison is exact."""
    window = 20  # seconds: a measurement this long after the switch reads only moved traffic on both sides
    checks = [{"name": "psi-vs-training", "builtin": "drift", "method": "psi", "against": "reference",
               "max": "0.25", "window": f"{window}s", "dryRun": True},
              {"name": "ks-vs-training", "builtin": "drift", "method": "ks", "against": "reference",
               "max": "0.1", "window": f"{window}s", "dryRun": True},
              # Deciding (and tolerant of the first measurements, whose window still holds v1's unmoved
              # traffic), so that the analysis keeps measuring instead of pausing.
              {"name": "psi-vs-stable", "builtin": "drift", "method": "psi", "against": "stable", "max": "0.25",
               "window": f"{window}s"}]
    # The first measurement comes one interval into the 50% step. At 3 s it raced Prometheus on a loaded
    # CI machine: the candidate's counters had one scrape, no increase yet, so "no live traffic" was
    # inconclusive and the Rollout paused for good (no traffic pauses by design). 8 s is several scrapes.
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "5m"}}]}},
                       analysis={"interval": "8s", "failureLimit": 100, "checks": checks})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    traffic.stop()
    rows, _ = sample_rows()
    stop, answered = threading.Event(), {}
    sender = threading.Thread(target=_send_batches, args=(traffic.url, rows + 2.0, stop, answered), daemon=True)
    sender.start()  # every feature 2 units up, on both versions
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2))  # v1's data, v1's bins
        wait_for("churn-v2 answers", lambda: answered.get("churn-v2", 0) > 0, timeout=120,
                 on_timeout=lambda: str(rollout_status(cluster, namespace)))
        both_moved = time.time()

        def measured() -> dict | None:
            last = (rollout_status(cluster, namespace).get("analysis") or {}).get("last") or {}
            if not last.get("at") or wall_time(last["at"]) < both_moved + window + 2:
                return None
            return {r["name"]: r for r in last.get("checks") or []}

        results = wait_for("a measurement of moved traffic only", measured, timeout=90,
                           on_timeout=lambda: str(rollout_status(cluster, namespace)))
        vs_training, ks, vs_stable = (float(results[n]["value"]) for n in ("psi-vs-training", "ks-vs-training",
                                                                             "psi-vs-stable"))
        assert vs_training > 1.0, results  # far beyond any threshold: the inputs left the training range
        assert vs_stable < 0.1, results  # the same inputs on both versions: sampling noise only
        assert 0.3 < ks <= 1.0 and ks != vs_training, results
        assert results["psi-vs-training"]["outcome"] == "Failed" and results["psi-vs-stable"]["outcome"] == "Successful"
        assert "vs training profile" in results["psi-vs-training"]["message"]
        assert "vs stable churn-v1" in results["psi-vs-stable"]["message"]
        print(f"FIGURE drift: psi vs training {vs_training:.3f}, ks vs training {ks:.3f}, "
              f"psi vs stable {vs_stable:.3f}; batches answered {answered}")
    finally:
        stop.set()
        sender.join(10)
