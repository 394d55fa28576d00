"""Provider gatewayAPI: the HTTPRoute's backendRef weights and RequestMirror filter equal the plan at
each step. The Gateway API CRDs come from the ``sigs.k8s.io/gateway-api`` Go module (standard channel)
and are applied to the test control plane here only."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from rollout_helpers import (
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    stage_of,
    wait_for,
)
from unavailable import unavailable

pytestmark = pytest.mark.integration
GATEWAY_API_VERSION = "v1.3.0"  # first release whose standard channel has requestMirror.percent


@pytest.fixture(scope="session")
def gateway_api_crds(cluster) -> None:  # noqa: ANN001
    if shutil.which("go") is None:
        unavailable("go is not on PATH: cannot fetch the Gateway API CRDs from their Go module")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["go", "mod", "init", "gwcrds"], cwd=tmp, check=True, capture_output=True)
        out = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"],
                             cwd=tmp, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        unavailable(f"go mod download sigs.k8s.io/gateway-api failed: {out.stderr[-500:]}")
    crd = Path(json.loads(out.stdout)["Dir"]) / "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"
    cluster.kubectl("apply", "--server-side", "-f", str(crd))
    wait_for("HTTPRoute CRD established", lambda: cluster.kubectl(
        "get", "crd", "httproutes.gateway.networking.k8s.io", "-o",
        "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout == "True", timeout=60)


def http_route(namespace: str) -> str:
    return json.dumps({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "churn-route", "namespace": namespace},
        "spec": {"parentRefs": [{"name": "public-gateway"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                            "backendRefs": [{"name": "placeholder", "port": 8080}]}]}})


def route_state(cluster, namespace: str) -> tuple[dict[str, int], tuple[str, int] | None, dict]:  # noqa: ANN001
    rule = get(cluster, namespace, "httproute", "churn-route")["spec"]["rules"][0]
    weights = {ref["name"]: ref.get("weight", 1) for ref in rule.get("backendRefs") or []}
    mirror = next(((f["requestMirror"]["backendRef"]["name"], f["requestMirror"].get("percent", 100))
                   for f in rule.get("filters") or [] if f["type"] == "RequestMirror"), None)
    return weights, mirror, rule


def test_http_route_weights_and_mirror_follow_every_step(cluster, namespace, operator_factory, store_claim,
                                                         gateway_api_crds):
    store_claim(namespace)
    cluster.kubectl("apply", "-f", "-", input=http_route(namespace))
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    traffic = {"provider": "gatewayAPI", "gatewayAPI": {"httpRoute": "churn-route"}}
    steps = [{"setWeight": 30}, {"pause": {"duration": "4s"}}, {"setWeight": 70}, {"pause": {"duration": "4s"}}]
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": steps}}, traffic=traffic))
    wait_for("churn-v1 on the route", lambda: route_state(cluster, namespace)[0] == {"churn-churn-v1": 100},
             timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    _, _, rule = route_state(cluster, namespace)
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2"}}]  # the user's part is untouched

    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    seen = []
    for step, weight in ((1, 30), (3, 70)):
        wait_for(f"step {step}", lambda step=step: rollout_status(cluster, namespace).get("currentStep") == step,
                 timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        weights, mirror, _ = route_state(cluster, namespace)
        assert weights == {"churn-churn-v1": 100 - weight, "churn-churn-v2": weight} and mirror is None
        seen.append(weight)
    wait_for("promoted", lambda: route_state(cluster, namespace)[0] == {"churn-churn-v2": 100}, timeout=60)
    assert stage_of(cluster, namespace, "churn-v2") == "Production" and seen == [30, 70]

    # Switch the strategy to a manually promoted shadow: the route mirrors 40% to churn-v3, users stay on v2.
    cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"strategy": {"canary": None, "shadow": {"mirrorPercent": 40, "promote": "manual"}}}}))
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
    wait_for("mirror to churn-v3", lambda: route_state(cluster, namespace)[1] == ("churn-churn-v3", 40), timeout=150,
             on_timeout=lambda: str((route_state(cluster, namespace), rollout_status(cluster, namespace))))
    assert route_state(cluster, namespace)[0] == {"churn-churn-v2": 100, "churn-churn-v3": 0}
    assert rollout_status(cluster, namespace)["phase"] == "Paused"
    cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", namespace, "noria.dev/promote=true")
    wait_for("churn-v3 takes all, mirror removed",
             lambda: route_state(cluster, namespace)[:2] == ({"churn-churn-v3": 100}, None), timeout=60)


def test_a_missing_http_route_is_on_the_rollout_with_one_warning_and_clears_once_created(
        cluster, namespace, operator_factory, store_claim, gateway_api_crds):
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    traffic = {"provider": "gatewayAPI", "gatewayAPI": {"httpRoute": "churn-route"}}
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [{"setWeight": 30}]}},
                                                      traffic=traffic))

    def reconciled() -> dict:
        return next((c for c in rollout_status(cluster, namespace).get("conditions") or []
                     if c["type"] == "Reconciled"), {})

    def warnings() -> list[dict]:
        events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return [e for e in events if e["reason"] == "ReconcileError" and e["involvedObject"]["name"] == "churn"]

    wait_for("the missing route on the Rollout", lambda: reconciled().get("status") == "False", timeout=60,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert reconciled()["reason"] == "ReconcileError" and "HTTPRoute" in reconciled()["message"]
    assert "churn-route" in reconciled()["message"] and rollout_status(cluster, namespace)["phase"] == "Degraded"
    time.sleep(4)  # several failed passes (backoff from 0.5 s): still one Warning
    assert len(warnings()) == 1, warnings()
    cluster.kubectl("apply", "-f", "-", input=http_route(namespace))
    wait_for("recovered once the route exists", lambda: reconciled().get("status") == "True", timeout=90,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert reconciled()["reason"] == "ReconcileRecovered"
    wait_for("churn-v1 on the route", lambda: route_state(cluster, namespace)[0] == {"churn-churn-v1": 100},
             timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
