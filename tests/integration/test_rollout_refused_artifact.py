"""A ModelVersion Noria must not serve, against the real control plane, operator, router and servers.

Given churn-v1 serving users through the router:
- when churn-v2 is approved with an artifact whose sha256 is not its digest, then its real server
  refuses it, stays unready and exits with a JSON termination message; the operator reads it from
  the pod's status and aborts: traffic stays on churn-v1, churn-v2 is Rejected with the server's
  reason, the Rollout is Degraded with ArtifactVerificationFailed, and users never see an error;
- when churn-v2 points at another namespace's store (a real, loadable model there), then the
  operator never starts it: the Rollout is Degraded with ArtifactOutOfScope naming
  spec.artifact.uri, the ModelVersion carries the same condition and an Event, and no Deployment
  is made.
Given nothing served yet, a first version whose artifact is refused leaves the Rollout Degraded
with ArtifactVerificationFailed.
"""

from __future__ import annotations

import json
import time

import pytest
from noria import conditions as c
from rollout_helpers import (
    PIPELINE,
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

WRONG_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def deploy_env(prometheus) -> dict[str, str]:  # noqa: ANN001
    return operator_env(prometheus.url)


def events(cluster, namespace: str, name: str) -> list[dict]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                          "-o", "json")
    return json.loads(out.stdout)["items"]


def degraded_with(cluster, namespace: str, reason: str) -> dict | None:  # noqa: ANN001
    st = rollout_status(cluster, namespace)
    cond = condition(st, c.DEGRADED)
    return st if cond.get("status") == c.TRUE and cond.get("reason") == reason else None


def test_a_candidate_whose_server_refuses_the_artifact_is_aborted_and_stable_keeps_serving(
        cluster, namespace, operator_factory, store_claim, deploy_env):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, deploy_env, manifest)
    try:
        tampered = save_model(cluster.store_dir, namespace, 2, seed=1)
        tampered["spec"]["artifact"]["digest"] = WRONG_DIGEST  # the file on disk is not what the version claims
        approved_at = time.monotonic()
        create_model_version(cluster, tampered)
        wait_for("churn-v2 to become the candidate",
                 lambda: rollout_status(cluster, namespace).get("canaryVersion") == "churn-v2", timeout=60)
        st = wait_for("the Rollout to abort with ArtifactVerificationFailed",
                      lambda: degraded_with(cluster, namespace, c.ARTIFACT_VERIFICATION_FAILED), timeout=180,
                      on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
        aborted_after = time.monotonic() - approved_at
        assert st["stableVersion"] == "churn-v1" and not st.get("canaryVersion")
        assert st["weights"] == {"churn-v1": 100} and st["phase"] == "Degraded"
        message = condition(st, c.DEGRADED)["message"]
        assert "churn-v2" in message and "refused the artifact" in message
        mv = get(cluster, namespace, "modelversion", "churn-v2")
        assert mv["status"]["stage"] == "Rejected" and mv["status"]["traffic"] == 0
        assert "refused the artifact" in mv["status"]["message"]
        assert mv["status"]["history"][-1]["by"] == f"rollout/{PIPELINE}"
        reasons = {(e["type"], e["reason"]) for e in events(cluster, namespace, PIPELINE)}
        assert ("Warning", c.ARTIFACT_VERIFICATION_FAILED) in reasons
        # The refused server pod said why in its own status (what `kubectl describe pod` shows).
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "noria.dev/version=churn-v2",
                                          "-o", "json").stdout)["items"]
        said = [json.loads(t["message"]) for p in pods for s in p["status"].get("containerStatuses") or []
                for t in ((s.get("state") or {}).get("terminated"), (s.get("lastState") or {}).get("terminated"))
                if t and t.get("message", "").startswith("{")]
        assert said and said[0]["reason"] == c.ARTIFACT_VERIFICATION_FAILED and said[0]["kind"]
        # churn-v2 never served: every user request was answered by churn-v1.
        time.sleep(2)
        assert traffic.answers and all(a.status == 200 and a.version == "churn-v1" for a in traffic.answers), (
            f"answers: {traffic.summary()}")
        wait_for("churn-v2 scaled down", lambda: get(cluster, namespace, "deployment", "churn-churn-v2") is None,
                 timeout=60)
        print(f"FIGURE approved->aborted (ArtifactVerificationFailed): {aborted_after:.1f}s")
    finally:
        traffic.stop()


def test_a_version_pointing_at_another_namespaces_store_is_never_started(
        cluster, namespace, operator_factory, store_claim, deploy_env):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, deploy_env, manifest)
    try:
        # A real model of another tenant, loadable and with the right digest: only its place is wrong.
        foreign = save_model(cluster.store_dir, f"{namespace}-other", 1, seed=2)
        borrowed = save_model(cluster.store_dir, namespace, 2, seed=1)
        borrowed["spec"]["artifact"] = foreign["spec"]["artifact"]
        create_model_version(cluster, borrowed)
        st = wait_for("the Rollout to refuse churn-v2 as out of scope",
                      lambda: degraded_with(cluster, namespace, c.ARTIFACT_OUT_OF_SCOPE), timeout=60,
                      on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
        message = condition(st, c.DEGRADED)["message"]
        assert "spec.artifact.uri" in message and f"{namespace}-other" in message
        assert st["stableVersion"] == "churn-v1" and not st.get("canaryVersion")
        mv = wait_for("the ModelVersion's own condition", lambda: (m := get(cluster, namespace, "modelversion",
                                                                            "churn-v2"))
                      and condition(m.get("status") or {}, c.DEGRADED).get("reason") == c.ARTIFACT_OUT_OF_SCOPE
                      and m, timeout=30)
        assert condition(mv["status"], c.DEGRADED)["message"].startswith("spec.artifact.uri ")
        assert ("Warning", c.ARTIFACT_OUT_OF_SCOPE) in {(e["type"], e["reason"])
                                                        for e in events(cluster, namespace, "churn-v2")}
        time.sleep(5)  # several passes later, still nothing started for it
        assert get(cluster, namespace, "deployment", "churn-churn-v2") is None
        assert stage_of(cluster, namespace, "churn-v2") == "Approved"  # not ours to reject; refused to serve
        assert all(a.status == 200 and a.version == "churn-v1" for a in traffic.answers), traffic.summary()
    finally:
        traffic.stop()


def test_a_refused_first_version_leaves_the_rollout_degraded(cluster, namespace, operator_factory, store_claim,
                                                             deploy_env):
    store_claim(namespace)
    tampered = save_model(cluster.store_dir, namespace, 1)
    tampered["spec"]["artifact"]["digest"] = WRONG_DIGEST
    create_model_version(cluster, tampered)
    operator_factory(namespace, **deploy_env)
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"immediate": {}}))
    st = wait_for("the Rollout to be Degraded with ArtifactVerificationFailed",
                  lambda: degraded_with(cluster, namespace, c.ARTIFACT_VERIFICATION_FAILED), timeout=180,
                  on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
    assert not st.get("stableVersion") and condition(st, c.READY).get("status") == c.FALSE
    assert stage_of(cluster, namespace, "churn-v1") == "Rejected"
    time.sleep(3)  # and it stays so: nothing else to serve, the reason is kept
    assert degraded_with(cluster, namespace, c.ARTIFACT_VERIFICATION_FAILED)
