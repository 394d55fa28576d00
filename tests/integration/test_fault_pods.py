"""Fault suite, the serving side breaks (issue #12 scenarios: an unready canary, an unhealthy stable
during promotion, a tampered artifact under a Rollout), on the real test bed: the node agent runs
each model server as a local process, which these tests kill, freeze or feed a corrupted file.

- The canary's server processes are killed at 50% and kept dead: within the grace period its
  weight goes to 0, no user request fails from then on, and once the progress deadline passes the
  rollout aborts (Degraded, the version Rejected); the stable serves throughout.
- The canary's processes are frozen (SIGSTOP) past the grace period and thawed: traffic leaves it;
  a promote sent while it is frozen waits on the Rollout and promotes it once thawed (no stuck pause).
- The stable's processes are frozen while the candidate is being promoted: traffic is not sent to
  the unhealthy stable (the candidate's ready pods take it), the reason says so.
- One byte of the candidate's model file is flipped in the store after its ModelVersion was made:
  the real server refuses it, the rollout aborts with ArtifactVerificationFailed, the version is
  Rejected, and a newer version rolls out while the tampered one is never picked again.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from fault_helpers import (
    PodKiller,
    StatusRecorder,
    event_count,
    signal_pods,
    stage_history,
    status_text,
    warning_events,
)
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
)

pytestmark = pytest.mark.integration

# How long traffic may stay on a version whose pods stopped answering: the readiness probe notices
# in periodSeconds × failureThreshold (2 s × 3, plus its 3 s timeout), the decision's grace period
# (docs/rollouts.md) follows, then one pass and the router's reload.
UNREADY_TO_ZERO_BOUND = 30.0


def canary_at_50(cluster, namespace, traffic, version: str = "churn-v2") -> None:  # noqa: ANN001
    wait_for(f"{version} at 50% and answering", lambda: (rollout_status(cluster, namespace).get("weights") or {})
             .get(version) == 50 and traffic.share(version, time.monotonic() - 2)[0] > 0.2, timeout=150,
             on_timeout=lambda: status_text(cluster, namespace))


def test_fault_unready_canary_loses_its_traffic_then_aborts_at_the_progress_deadline(
        cluster, namespace, operator_factory, store_claim, prometheus):
    deadline = 40
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                       progressDeadline=f"{deadline}s")
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        canary_at_50(cluster, namespace, traffic)
        with StatusRecorder(cluster, namespace) as recorder, \
                PodKiller(cluster, namespace, "noria.dev/version=churn-v2") as killer:
            killed = time.monotonic()
            zero = wait_for("churn-v2's weight to 0", lambda: (rollout_status(cluster, namespace).get("weights") or {})
                            .get("churn-v2", 0) == 0, timeout=UNREADY_TO_ZERO_BOUND + 30,
                            on_timeout=lambda: status_text(cluster, namespace))
            assert zero
            to_zero = time.monotonic() - killed
            settled = time.monotonic() + 2.0  # the router reloads its weights within a second
            st = wait_for("the abort after the progress deadline", lambda: (s := rollout_status(
                cluster, namespace)).get("phase") == "Degraded" and s, timeout=deadline + 60,
                on_timeout=lambda: status_text(cluster, namespace))
            aborted = time.monotonic()
            time.sleep(2)
        assert killer.kills > 0
        assert to_zero <= UNREADY_TO_ZERO_BOUND, f"traffic stayed on the dead canary for {to_zero:.1f}s"
        assert condition(st, c.DEGRADED)["reason"] in (c.ROLLOUT_CANDIDATE_UNREADY,
                                                       c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED), condition(st, c.DEGRADED)
        assert "churn-v2" in condition(st, c.DEGRADED)["message"]
        assert st["stableVersion"] == "churn-v1" and st["weights"] == {"churn-v1": 100}
        assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
        late = [a for a in traffic.since(settled) if a.status != 200]
        assert not late, f"{len(late)} user requests failed after churn-v2's weight reached 0: {late[:5]}"
        # It was not aborted before the deadline: the unready period is bounded by progressDeadline.
        unready_seen = recorder.first(lambda s: (s.get("weights") or {}).get("churn-v2", 0) == 0, since=killed)
        assert unready_seen and aborted - unready_seen[0] <= deadline + 15
        failed_before = sum(a.status != 200 for a in traffic.answers)
        print(f"FIGURE canary killed -> weight 0: {to_zero:.1f}s; failed requests before that "
              f"{failed_before} of {len(traffic.answers)}; killed -> aborted {aborted - killed:.1f}s")
    finally:
        traffic.stop()


def test_fault_a_frozen_canary_loses_its_traffic_and_resumes_when_it_recovers(
        cluster, namespace, operator_factory, store_claim, prometheus):
    # An indefinite pause holds the step while the canary is frozen (a timed pause could end before
    # the readiness probe has noticed, which is the promotion gate's business, not this test's).
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}, progressDeadline="5m")
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    selector = "noria.dev/version=churn-v2"
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        canary_at_50(cluster, namespace, traffic)
        frozen_at = time.monotonic()
        assert signal_pods(cluster, namespace, selector, signal.SIGSTOP) > 0
        try:
            wait_for("churn-v2's weight to 0", lambda: (rollout_status(cluster, namespace).get("weights") or {})
                     .get("churn-v2", 0) == 0, timeout=UNREADY_TO_ZERO_BOUND + 30,
                     on_timeout=lambda: status_text(cluster, namespace))
            to_zero = time.monotonic() - frozen_at
            settled = time.monotonic() + 2.0
            time.sleep(4)
            st = rollout_status(cluster, namespace)
            assert st["canaryVersion"] == "churn-v2" and st["stableVersion"] == "churn-v1"
            late = [a for a in traffic.since(settled) if a.status != 200]
            assert not late, f"{len(late)} requests failed after the frozen canary's weight reached 0"
            # A promote sent while the canary is unready is kept (as in Argo Rollouts), not dropped:
            # it waits on the Rollout, said in the Progressing message, and acts once the pods are back.
            cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/promote=true")
            wait_for("the promote said to wait", lambda: "promote waits" in (condition(
                rollout_status(cluster, namespace), c.PROGRESSING) or {}).get("message", ""), timeout=30,
                on_timeout=lambda: status_text(cluster, namespace))
            time.sleep(3)  # more passes while the pods are still frozen
            kept = json.loads(cluster.kubectl("get", "rollouts.noria.dev", "churn", "-n", namespace, "-o", "json").stdout)
            assert "noria.dev/promote" in kept["metadata"].get("annotations", {}), "the waiting promote was consumed"
            assert rollout_status(cluster, namespace)["canaryVersion"] == "churn-v2"
        finally:
            signal_pods(cluster, namespace, selector, signal.SIGCONT)
        thawed = time.monotonic()
        st = wait_for("churn-v2 promoted by the kept promote once ready", lambda: (s := rollout_status(
            cluster, namespace)).get("stableVersion") == "churn-v2" and s.get("phase") == "Healthy" and s,
            timeout=120, on_timeout=lambda: status_text(cluster, namespace))
        back = time.monotonic() - thawed
        assert to_zero <= UNREADY_TO_ZERO_BOUND, f"traffic stayed on the frozen canary for {to_zero:.1f}s"
        assert st["weights"] == {"churn-v2": 100} and stage_of(cluster, namespace, "churn-v2") == "Production"
        assert "Rejected" not in stage_history(cluster, namespace, "churn-v2")
        print(f"FIGURE canary frozen -> weight 0: {to_zero:.1f}s; thawed -> promoted by the promote sent while "
              f"frozen: {back:.1f}s")
    finally:
        signal_pods(cluster, namespace, selector, signal.SIGCONT)
        traffic.stop()


def test_fault_an_unhealthy_stable_gets_no_traffic_during_promotion(cluster, namespace, operator_factory,
                                                                   store_claim, prometheus):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                       progressDeadline="5m")
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    selector = "noria.dev/version=churn-v1"
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        canary_at_50(cluster, namespace, traffic)
        frozen_at = time.monotonic()
        assert signal_pods(cluster, namespace, selector, signal.SIGSTOP) > 0
        try:
            st = wait_for("traffic off the unhealthy stable", lambda: (s := rollout_status(cluster, namespace)).get(
                "weights", {}).get("churn-v1", 0) == 0 and s, timeout=UNREADY_TO_ZERO_BOUND + 30,
                on_timeout=lambda: status_text(cluster, namespace))
            to_zero = time.monotonic() - frozen_at
            assert c.ROLLOUT_STABLE_UNHEALTHY in json.dumps(st.get("conditions")), st.get("conditions")
            settled = time.monotonic() + 2.0
            time.sleep(6)
            window = [a for a in traffic.since(settled)]
            assert window and all(a.status == 200 and a.version == "churn-v2" for a in window), (
                f"after failover: {[(a.status, a.version, a.detail[:80]) for a in window if a.status != 200][:5]}")
        finally:
            signal_pods(cluster, namespace, selector, signal.SIGCONT)
        assert to_zero <= UNREADY_TO_ZERO_BOUND, f"traffic stayed on the unhealthy stable for {to_zero:.1f}s"
        print(f"FIGURE stable frozen -> weight 0: {to_zero:.1f}s")
    finally:
        signal_pods(cluster, namespace, selector, signal.SIGCONT)
        traffic.stop()


def test_fault_a_tampered_artifact_aborts_is_rejected_and_never_picked_again(cluster, namespace, operator_factory,
                                                                             store_claim, prometheus):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "2s"}}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        manifest_v2 = save_model(cluster.store_dir, namespace, 2, seed=1)  # its digest is the honest file's
        model_file = cluster.store_dir / namespace / "churn" / "v2" / "model.skops"
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the archive
        model_file.write_bytes(bytes(data))
        create_model_version(cluster, manifest_v2)
        st = wait_for("the abort with ArtifactVerificationFailed", lambda: (s := rollout_status(cluster, namespace))
                      .get("phase") == "Degraded" and condition(s, c.DEGRADED).get("reason")
                      == c.ARTIFACT_VERIFICATION_FAILED and s, timeout=180,
                      on_timeout=lambda: status_text(cluster, namespace))
        assert "churn-v2" in condition(st, c.DEGRADED)["message"]
        assert st["stableVersion"] == "churn-v1" and st["weights"] == {"churn-v1": 100}
        mv = get(cluster, namespace, "modelversion", "churn-v2")["status"]
        assert mv["stage"] == "Rejected", mv
        assert event_count(warning_events(cluster, namespace, "churn", c.ARTIFACT_VERIFICATION_FAILED)) == 1
        # A newer, honest version arrives: it rolls out, and the tampered one stays Rejected.
        with StatusRecorder(cluster, namespace) as recorder:
            create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
            st = wait_for("churn-v3 promoted", lambda: (s := rollout_status(cluster, namespace)).get("stableVersion")
                          == "churn-v3" and s.get("phase") == "Healthy" and s, timeout=180,
                          on_timeout=lambda: status_text(cluster, namespace))
        assert all(s.get("canaryVersion") in (None, "", "churn-v3") for _, s in recorder.samples), (
            "the tampered version was picked again")
        assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
        assert "Approved" not in stage_history(cluster, namespace, "churn-v2")[-1:]
        assert all(a.status == 200 and a.version != "churn-v2" for a in traffic.answers), traffic.summary()
    finally:
        traffic.stop()
