"""The router against the real local kube-apiserver: config from a ConfigMap, backends from EndpointSlices.

Given two model servers running as local processes, EndpointSlices that point at them (labelled
``kubernetes.io/service-name``, as the EndpointSlice controller labels them for a Service) and the
router's ConfigMap, when the router runs with ``--configmap <ns>/<name>``, then it routes by the
ConfigMap's weights to the discovered endpoints, applies a weight change within a second, and
stops sending to an endpoint as soon as its slice says it is not ready.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from noria_server import launch
from noria_server.reference_models import train_and_save

pytestmark = pytest.mark.integration
MODEL = "churn"


def slice_yaml(namespace: str, service: str, port: int, ready: bool) -> str:
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-test", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "noria-tests"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
    })


def configmap_yaml(namespace: str, weights: dict[str, int]) -> str:
    config = {"model": MODEL, "namespace": namespace, "shadow": None, "backends": [
        {"version": v, "service": f"churn-{v}", "port": 8080, "weight": w, "url": None} for v, w in weights.items()]}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "churn-router", "namespace": namespace},
                       "data": {"config.json": json.dumps(config)}})


def infer(url: str) -> tuple[int, str | None]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}]})
    req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get("x-noria-version")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def wait_for(what: str, predicate: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"{what} not within {timeout}s")


def test_router_follows_its_configmap_and_endpointslices(cluster, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v1 = train_and_save("logistic", str(tmp_path / "v1"), rows=300, seed=0)
    v2 = train_and_save("logistic", str(tmp_path / "v2"), rows=300, seed=1)
    servers = {"churn-v1": launch.serve(v1.artifact_uri, v1.digest, MODEL, "churn-v1", str(tmp_path)),
               "churn-v2": launch.serve(v2.artifact_uri, v2.digest, MODEL, "churn-v2", str(tmp_path))}
    router = None
    try:
        for version, proc in servers.items():
            cluster.kubectl("apply", "-f", "-", input=slice_yaml(namespace, f"churn-{version}", proc.port, True))
        cluster.kubectl("apply", "-f", "-", input=configmap_yaml(namespace, {"churn-v1": 100, "churn-v2": 0}))
        port = launch.free_port()
        router = launch.Process(["route", "--configmap", f"{namespace}/churn-router", "--host", "127.0.0.1",
                                 "--port", str(port), "--drain-seconds", "0"], port,
                                str(tmp_path / "router.log"), {"KUBECONFIG": str(cluster.kubeconfig)}).start()
        for proc in servers.values():
            proc.wait_ready(300)
        router.wait_ready(300)
        wait_for("v1 endpoints discovered", lambda: infer(router.url) == (200, "churn-v1"), 10)
        assert {infer(router.url) for _ in range(20)} == {(200, "churn-v1")}

        # The operator shifts all traffic: live within a second of the write.
        cluster.kubectl("apply", "-f", "-", input=configmap_yaml(namespace, {"churn-v1": 0, "churn-v2": 100}))
        written = time.monotonic()

        def shifted() -> bool:
            _, body = launch.get(router.url + "/router/state")
            state = json.loads(body)
            return [b["weight"] for b in state["backends"]] == [0, 100] and \
                state["backends"][1]["endpoints"] == [f"http://127.0.0.1:{servers['churn-v2'].port}"]

        wait_for("weight change", shifted, 5)
        assert time.monotonic() - written < 1.0 + 0.5  # kubectl's own exit is inside this window
        assert {infer(router.url) for _ in range(20)} == {(200, "churn-v2")}

        # The v2 endpoint turns not ready: the router stops sending there (503, never a hang).
        cluster.kubectl("apply", "-f", "-", input=slice_yaml(namespace, "churn-churn-v2",
                                                             servers["churn-v2"].port, False))
        wait_for("endpoint removal", lambda: infer(router.url)[0] == 503, 5)
        cluster.kubectl("apply", "-f", "-", input=slice_yaml(namespace, "churn-churn-v2",
                                                             servers["churn-v2"].port, True))
        wait_for("endpoint back", lambda: infer(router.url) == (200, "churn-v2"), 5)
    finally:
        if router is not None:
            router.stop()
        for proc in servers.values():
            proc.stop()
