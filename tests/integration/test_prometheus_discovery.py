"""The test bed's Prometheus finds pods through Kubernetes service discovery (kubernetes_sd_configs
against the test bed's API server, under a read-only ServiceAccount) and labels their series as the
chart's PodMonitor does (noria.scrape); the operator's own queries find the model servers' series
under those labels.

Runs on the Prometheus built from its Go module; with NORIA_TESTBED_PROMETHEUS=debian (Debian's
Prometheus, node agent http_sd) the same labels are checked, the discovery assertion is skipped.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from noria import metrics as m
from noria import scrape
from noria.contracts import LABEL_COMPONENT
from noria.deployment import checks
from noria.deployment.spec import CheckSpec
from noria_testbed.binaries import PROMETHEUS_CHOICE_ENV, PROMETHEUS_DEBIAN
from noria_testbed.processes import urlopen, wait_until
from noria_testbed.prometheus import SERVICE_ACCOUNT, SERVICE_ACCOUNT_NAMESPACE
from rollout_helpers import PIPELINE, operator_env, rollout, start_stable, wait_for
from unavailable import unavailable

pytestmark = pytest.mark.integration

# Three pods serving the same /metrics: only the one a PodMonitor selects (component server, port
# named http) may be scraped; a trainer and a server whose port has another name must not be.
PODS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: www}
data:
  metrics: |
    # TYPE discovery_answer gauge
    discovery_answer 42
"""
POD = """
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{noria.dev/component: {component}, noria.dev/rollout: churn, noria.dev/version: churn-v7,
           app.kubernetes.io/managed-by: noria}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: python:3.11-slim
    # http.server, but /metrics served as the text format (Prometheus 3 refuses an unknown Content-Type).
    command: [python, -c, "{serve}", /srv/www]
    env:
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    ports: [{{name: {port}, containerPort: 8000}}]
    readinessProbe: {{tcpSocket: {{port: 8000}}, periodSeconds: 1}}
    volumeMounts: [{{name: www, mountPath: /srv/www}}]
  volumes:
  - name: www
    configMap: {{name: www}}
"""

SERVE = ("import functools, os, sys, http.server as s; "
         "s.SimpleHTTPRequestHandler.extensions_map[''] = 'text/plain; version=0.0.4'; "
         "s.ThreadingHTTPServer((os.environ['POD_IP'], 8000), "
         "functools.partial(s.SimpleHTTPRequestHandler, directory=sys.argv[1])).serve_forever()")


def kubernetes_discovery_expected() -> bool:
    return os.environ.get(PROMETHEUS_CHOICE_ENV, "").strip().lower() != PROMETHEUS_DEBIAN


def active_targets(prometheus, namespace: str) -> list[dict]:  # noqa: ANN001
    with urlopen(f"{prometheus.url}/api/v1/targets?state=active", timeout=10) as response:
        body = json.loads(response.read())
    return [t for t in body["data"]["activeTargets"] if t["labels"].get("namespace") == namespace]


def test_prometheus_discovery_runs_kubernetes_sd_unless_debian_is_forced(prometheus):
    """The suite really runs on Kubernetes discovery: a silent fall-back to Debian's Prometheus fails here."""
    assert prometheus.kubernetes_sd == kubernetes_discovery_expected(), prometheus.binaries.origin
    config = prometheus.config()["scrape_configs"][0]
    assert ("kubernetes_sd_configs" in config) == kubernetes_discovery_expected()


def test_prometheus_discovery_scrapes_only_what_the_podmonitor_selects_with_its_labels(cluster, prometheus, namespace):
    manifests = PODS + "".join(POD.format(name=name, component=component, port=port, serve=SERVE) for name, component, port in (
        ("srv", "server", "http"), ("trainer", "trainer", "http"), ("other-port", "server", "metrics")))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifests)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod", "--all", "--timeout=60s")
    pod_ip = cluster.kubectl("get", "pod", "srv", "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout

    series = wait_for("srv scraped", lambda: prometheus.query(f'discovery_answer{{namespace="{namespace}"}}'),
                      timeout=30)
    time.sleep(3)  # every pod was Ready before the first scrape: three scrape intervals for the others to show
    series = prometheus.query(f'discovery_answer{{namespace="{namespace}"}}')
    assert [s["metric"] for s in series] == [{
        "__name__": "discovery_answer", "namespace": namespace, "pod": "srv", "container": "web",
        "endpoint": scrape.POD_PORT_NAME, "job": scrape.DEFAULT_POD_JOB, "instance": f"{pod_ip}:8000",
        "noria_dev_component": "server", "noria_dev_rollout": "churn", "noria_dev_version": "churn-v7",
    }]
    [target] = active_targets(prometheus, namespace)
    if kubernetes_discovery_expected():  # only kubernetes_sd knows the pod's uid; the node agent's /sd does not publish it
        uid = cluster.kubectl("get", "pod", "srv", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
        assert target["discoveredLabels"]["__meta_kubernetes_pod_uid"] == uid

    # Deleting the pod ends its target: discovery follows the API server.
    cluster.kubectl("delete", "pod", "srv", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_until("srv's target gone", lambda: not active_targets(prometheus, namespace), timeout=20)


def test_prometheus_discovery_identity_may_only_read_pods(cluster, prometheus):
    if not prometheus.kubernetes_sd:
        unavailable("Debian's Prometheus reads the node agent, not the API server")
    user = f"system:serviceaccount:{SERVICE_ACCOUNT_NAMESPACE}:{SERVICE_ACCOUNT}"

    def can(*args: str) -> bool:
        return cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip() == "yes"

    assert can("list", "pods", "--all-namespaces") and can("watch", "pods", "--all-namespaces")
    for forbidden in (("create", "pods"), ("list", "secrets", "--all-namespaces"), ("list", "nodes"),
                      ("get", "configmaps", "-n", "kube-system"), ("list", "rollouts.noria.dev", "--all-namespaces")):
        assert not can(*forbidden), forbidden
    kubeconfig = cluster.workdir / "prometheus-kubeconfig"
    assert "client-key" not in kubeconfig.read_text()  # not the admin's certificate


def test_prometheus_discovery_model_server_series_answer_the_operators_queries(
        cluster, prometheus, namespace, operator_factory, store_claim):
    """Real model server and router pods made by the operator, found through Kubernetes discovery: their
    series carry the pod's labels, and the operator's PromQL for a version finds the server's series
    (errorRate's infer answers, latency without the router's hop)."""
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url), manifest)
    try:
        version = "churn-v1"
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        by_component: dict[str, set[str]] = {}
        for p in pods:
            by_component.setdefault(p["metadata"]["labels"].get(LABEL_COMPONENT, ""), set()).add(p["metadata"]["name"])

        ctx = checks.CheckContext(namespace=namespace, rollout=PIPELINE, pipeline=PIPELINE, version=version,
                                  stable=None, window=30)
        error_rate = checks.queries_for(CheckSpec(name="errorRate", builtin="errorRate", max=0.05), ctx)
        wait_for("errorRate's total has data", lambda: prometheus.query(error_rate["total"]), timeout=30)

        requests = prometheus.query(f'{m.REQUESTS_TOTAL}{{namespace="{namespace}"}}')
        server_series = [s["metric"] for s in requests if s["metric"].get("noria_dev_component") == "server"]
        assert server_series, requests
        for labels in server_series:
            assert labels["pod"] in by_component["server"] and labels["noria_dev_version"] == version
            assert labels["noria_dev_rollout"] == PIPELINE and labels[m.LABEL_VERSION] == version
            assert labels["endpoint"] == scrape.POD_PORT_NAME and labels["job"] == scrape.DEFAULT_POD_JOB
            assert labels["container"] and labels["namespace"] == namespace
            assert not any(k.startswith("exported_") for k in labels), labels  # no clash with a target label
        assert {s[m.LABEL_ENDPOINT] for s in server_series} >= {m.ENDPOINT_INFER}

        # The latency checks leave the router's hop out: their selector matches servers only, and the
        # router's own series are there to be left out.
        duration = f'{m.REQUEST_DURATION_SECONDS}_count{{namespace="{namespace}", {m.LABEL_VERSION}="{version}"'
        # Both pods' series, once each has been scraped since it answered (the router's may come a
        # scrape after the server's errorRate series waited for above).
        wait_for("the router's and the server's latency series", lambda: {
            s["metric"].get("noria_dev_component") for s in prometheus.query(duration + "}")} == {"server", "router"},
            timeout=30)
        routed = prometheus.query(duration + "}")
        assert {s["metric"].get("noria_dev_component") for s in routed} == {"server", "router"}, routed
        not_router = prometheus.query(f"{duration}, {checks.NOT_ROUTER}}}")
        assert not_router and {s["metric"]["noria_dev_component"] for s in not_router} == {"server"}
        latency = checks.queries_for(CheckSpec(name="latencyP99", builtin="latencyP99", max=1.0), ctx)
        assert prometheus.query(latency["count"]), latency
    finally:
        traffic.stop()
