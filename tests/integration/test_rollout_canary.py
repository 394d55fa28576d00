"""Canary rollouts against the real control plane, real Prometheus, and real server/router processes.

Given a stable version serving through the router, when a new ModelVersion is approved, then the
operator walks the canary steps; the weights are measured from the answers users get (which
version answered), not only read back from config.
"""

from __future__ import annotations

import time

import pytest
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


@pytest.fixture
def deploy_env(prometheus) -> dict[str, str]:  # noqa: ANN001
    return operator_env(prometheus.url)


def test_canary_of_a_good_version_walks_every_weight_and_promotes(cluster, namespace, operator_factory, store_claim,
                                                                  deploy_env):
    manifest = rollout(namespace, {"canary": {"steps": [
        {"setWeight": 25}, {"pause": {"duration": "15s"}}, {"setWeight": 60}, {"pause": {"duration": "15s"}}]}},
        analysis={"interval": "5s", "failureLimit": 1,
                  "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, deploy_env, manifest)
    try:
        assert stage_of(cluster, namespace, "churn-v1") == "Production"
        approved_at = time.monotonic()
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))

        measured = {}
        for step, weight in ((1, 25), (3, 60)):
            wait_for(f"step {step} (pause at {weight}%)",
                     lambda step=step: rollout_status(cluster, namespace).get("currentStep") == step, timeout=90,
                     on_timeout=lambda: str(rollout_status(cluster, namespace)))
            st = rollout_status(cluster, namespace)
            assert st["weights"] == {"churn-v1": 100 - weight, "churn-v2": weight}
            assert st["canaryVersion"] == "churn-v2" and st["phase"] == "Progressing"
            time.sleep(2)  # the router picks weights up within a second
            t0 = time.monotonic()
            time.sleep(10)
            share, n = traffic.share("churn-v2", t0)
            measured[weight] = (round(share, 3), n)
            assert n >= 80, f"too few answers to measure ({n})"
            # Binomial noise at n >= 80 is at most ~0.056 (sd); 0.15 is > 2.5 sd and far from the other step.
            assert abs(share - weight / 100) < 0.15, f"at setWeight {weight}: churn-v2 answered {share:.0%} of {n}"
        first_v2 = next(a.at for a in traffic.answers if a.version == "churn-v2")

        wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
                 timeout=90, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        st = rollout_status(cluster, namespace)
        assert st["phase"] == "Healthy" and st["weights"] == {"churn-v2": 100} and not st.get("canaryVersion")
        assert st["analysis"]["passed"] >= 3 and st["analysis"]["failed"] == 0
        assert stage_of(cluster, namespace, "churn-v2") == "Production"
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        history = [h["stage"] for h in get(cluster, namespace, "modelversion", "churn-v2")["status"]["history"]]
        assert history[-2:] == ["Canary", "Production"]
        time.sleep(2)
        t1 = time.monotonic()
        time.sleep(3)
        share, n = traffic.share("churn-v2", t1)
        assert share == 1.0 and n > 20
        assert all(a.status == 200 for a in traffic.answers), "a request failed during the canary"
        # The old stable is scaled down after scaleDownDelay.
        wait_for("churn-v1 scaled down", lambda: get(cluster, namespace, "deployment", "churn-churn-v1") is None,
                 timeout=60)
        print(f"FIGURE approved->first canary answer: {first_v2 - approved_at:.1f}s; measured shares {measured}")
    finally:
        traffic.stop()


def test_kubectl_get_mro_shows_the_rollout_columns(cluster, namespace, operator_factory, store_claim, deploy_env):
    manifest = rollout(namespace, {"immediate": {}})
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **deploy_env)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    wait_for("Healthy", lambda: rollout_status(cluster, namespace).get("phase") == "Healthy", timeout=120)
    out = cluster.kubectl("get", "mro", "-n", namespace).stdout
    assert "Healthy" in out and "churn-v1" in out, out
    assert condition(rollout_status(cluster, namespace), "Ready")["status"] == "True"
