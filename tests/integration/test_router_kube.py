"""The router against the real local kube-apiserver: config from a ConfigMap, backends discovered.

Given two model servers running as local processes, Services whose selectors match Pods that
report those servers' address (status written here, as a kubelet would: the pods use a scheduler
that does not exist, so nothing else runs or touches them), and the router's ConfigMap, when the
router runs with ``--configmap <ns>/<name>``, then it routes by the ConfigMap's weights to the
discovered endpoints, applies a weight change within a second, stops sending to a Pod as soon as
it is not ready, and reads EndpointSlices where a Service has them.

EndpointSlices cannot carry loopback addresses (the API server refuses them), and this test bed's
pods live on loopback, so real traffic here goes through the Pod path; the EndpointSlice path is
checked with a documentation address (192.0.2.0/24) that no request is ever sent to.
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


def service(namespace: str, name: str, selector: dict[str, str] | None) -> str:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}
    if selector:
        spec["selector"] = selector
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                       "spec": spec})


def pod(namespace: str, name: str, labels: dict[str, str], port: int) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": namespace, "labels": labels},
                       "spec": {"schedulerName": "no-such-scheduler", "automountServiceAccountToken": False,
                                "containers": [{"name": "server", "image": "noria-server:test",
                                                "ports": [{"name": "http", "containerPort": port}]}]}})


def pod_status(ready: bool) -> str:
    return json.dumps({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                                  "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def endpoint_slice(namespace: str, service_name: str, address: str) -> str:
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-manual", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name,
                                "endpointslice.kubernetes.io/managed-by": "noria-tests"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]})


def configmap(namespace: str, weights: dict[str, int]) -> str:
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


def test_router_follows_its_configmap_and_discovers_endpoints(cluster, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v1 = train_and_save("logistic", str(tmp_path / "v1"), rows=300, seed=0)
    v2 = train_and_save("logistic", str(tmp_path / "v2"), rows=300, seed=1)
    servers = {"churn-v1": launch.serve(v1.artifact_uri, v1.digest, MODEL, "churn-v1", str(tmp_path)),
               "churn-v2": launch.serve(v2.artifact_uri, v2.digest, MODEL, "churn-v2", str(tmp_path))}
    router = None
    kubectl = cluster.kubectl
    try:
        for version, proc in servers.items():
            kubectl("apply", "-f", "-", input=service(namespace, f"churn-{version}", {"app": version}))
            kubectl("apply", "-f", "-", input=pod(namespace, f"{version}-pod", {"app": version}, proc.port))
            kubectl("patch", "pod", f"{version}-pod", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", pod_status(True))
        kubectl("apply", "-f", "-", input=service(namespace, "churn-churn-v3", None))
        kubectl("apply", "-f", "-", input=endpoint_slice(namespace, "churn-churn-v3", "192.0.2.10"))
        kubectl("apply", "-f", "-", input=configmap(namespace, {"churn-v1": 100, "churn-v2": 0, "churn-v3": 0}))
        port = launch.free_port()
        router = launch.Process(["route", "--configmap", f"{namespace}/churn-router", "--host", "127.0.0.1",
                                 "--port", str(port), "--drain-seconds", "0"], port,
                                str(tmp_path / "router.log"), {"KUBECONFIG": str(cluster.kubeconfig)}).start()
        for proc in servers.values():
            proc.wait_ready(300)
        router.wait_ready(300)
        wait_for("v1 endpoints discovered", lambda: infer(router.url) == (200, "churn-v1"), 10)
        assert {infer(router.url) for _ in range(20)} == {(200, "churn-v1")}

        def state() -> dict[str, Any]:
            return json.loads(launch.get(router.url + "/router/state")[1])

        endpoints = {b["version"]: b["endpoints"] for b in state()["backends"]}
        assert endpoints == {"churn-v1": [servers["churn-v1"].url], "churn-v2": [servers["churn-v2"].url],
                             "churn-v3": ["http://192.0.2.10:8080"]}  # the last one from the EndpointSlice

        # The operator shifts all traffic: live within a second of the write.
        kubectl("apply", "-f", "-", input=configmap(namespace, {"churn-v1": 0, "churn-v2": 100, "churn-v3": 0}))
        written = time.monotonic()
        wait_for("weight change", lambda: [b["weight"] for b in state()["backends"]] == [0, 100, 0], 5)
        assert time.monotonic() - written < 1.0
        assert {infer(router.url) for _ in range(20)} == {(200, "churn-v2")}

        # The v2 pod turns not ready: the router stops sending there (503, never a hang), then resumes.
        kubectl("patch", "pod", "churn-v2-pod", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", pod_status(False))
        wait_for("endpoint removal", lambda: infer(router.url)[0] == 503, 5)
        kubectl("patch", "pod", "churn-v2-pod", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", pod_status(True))
        wait_for("endpoint back", lambda: infer(router.url) == (200, "churn-v2"), 5)
    finally:
        if router is not None:
            router.stop()
        for proc in servers.values():
            proc.stop()
