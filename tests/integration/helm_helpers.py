"""Helpers of the Helm tests: the real helm binary against the test bed, the chart's values for the
test bed, what a release leaves in the cluster, and the chart's operator account (its RBAC only)."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "noria"
BUILD_HELM = ROOT / "hack" / "build-helm.sh"
RELEASE_LABEL = "app.kubernetes.io/instance"
# Every kind the chart renders, namespaced and cluster-scoped: what `helm uninstall` must remove.
CHART_KINDS_NAMESPACED = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets"
CHART_KINDS_CLUSTER = "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def build_helm() -> Path:
    """The helm binary (built once from the Go module proxy by hack/build-helm.sh, then cached)."""
    built = subprocess.run(["bash", str(BUILD_HELM)], capture_output=True, text=True)
    assert built.returncode == 0, f"{BUILD_HELM} failed:\n{built.stderr[-3000:]}"
    return Path(built.stdout.strip().splitlines()[-1]) / "helm"


def new_namespace(cluster: Any, prefix: str) -> str:  # noqa: ANN401
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    return name


class ChartRbac:
    """The chart's ServiceAccount and RBAC objects (only those), rendered by ``helm template`` and
    applied for real: ``user`` is the operator's account, to impersonate with ``kubectl --as``.
    ``watched`` empty is the cluster-wide mode (a ClusterRole), else Roles in those namespaces only."""

    def __init__(self, cluster: Any, helm: Path, release_ns: str, watched: list[str]) -> None:  # noqa: ANN401
        self.cluster, self.release_ns, self.watched = cluster, release_ns, watched
        self.fullname = f"noria-{release_ns}"  # cluster-scoped names: one per release namespace
        self.user = f"system:serviceaccount:{release_ns}:{self.fullname}"
        args = [str(helm), "template", "noria", str(CHART), "--namespace", release_ns,
                "--set", f"fullnameOverride={self.fullname}", "--set-json", f"watchNamespaces={json.dumps(watched)}"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.docs = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] in RBAC_KINDS]
        cluster.kubectl("apply", "--server-side", "--validate=strict", "-f", "-",
                        input=yaml.safe_dump_all(self.docs))

    def remove(self) -> None:
        """The cluster-scoped objects; the namespaced ones go with their namespace."""
        self.cluster.kubectl("delete", "clusterrolebinding,clusterrole", self.fullname, f"{self.fullname}-cluster",
                             "--ignore-not-found", "--wait=false", check=False)


class Helm:
    """``helm`` with the test bed's kubeconfig; every call's output is kept for the failure report."""

    def __init__(self, binary: Path, kubeconfig: Path, workdir: Path) -> None:
        self.binary, self.kubeconfig, self.workdir = binary, kubeconfig, workdir
        self.transcript: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
                                capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                                env={"HOME": str(self.workdir), "PATH": "/usr/bin:/bin",
                                     "HELM_CACHE_HOME": str(self.workdir / "cache"),
                                     "HELM_CONFIG_HOME": str(self.workdir / "config"),
                                     "HELM_DATA_HOME": str(self.workdir / "data")})
        self.transcript.append(f"$ helm {' '.join(args)}  (exit {result.returncode})\n{result.stdout}{result.stderr}")
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result

    def values_file(self, name: str, values: dict[str, Any]) -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return path


def values_for_testbed(*, store_dir: Path, app_namespace: str, prometheus_url: str, liveness_port: int,
                   metrics_port: int) -> dict[str, Any]:
    """The chart's values for this test bed. Image names are the ones whose entrypoints the node
    agent reads from the Dockerfiles (any registry or tag maps to the same Dockerfile). The store is
    the test bed's store directory, mounted at the same path, so the URIs the operator writes mean
    the same files to it, the trainer and the servers. Ports are free ones: the node agent gives each
    pod its own address, but a port already bound on 0.0.0.0 by something else on this machine
    would still collide. The admission policy governs the app namespace only: the rest of a shared
    test session annotates as the administrator."""
    return {
        "image": {"repository": "ghcr.io/noria-dev/noria-operator", "tag": "test"},
        "trainerImage": "noria-trainer:test",
        "serverImage": "noria-server:test",
        "replicaCount": 2,
        # Short lease times, so a rolling update's handover does not dominate the test's time.
        "leaderElection": {"enabled": True, "leaseDurationSeconds": 6, "renewDeadlineSeconds": 4,
                           "renewPeriodSeconds": 1, "retryPeriodSeconds": 1},
        "watchNamespaces": [app_namespace],
        "prometheus": {"url": prometheus_url, "timeout": "2"},
        "store": {"root": f"file://{store_dir}", "mountPath": str(store_dir),
                  "pvc": {"create": True, "accessModes": ["ReadWriteOnce"], "size": "1Gi"}},
        "operator": {"livenessPort": liveness_port, "metricsPort": metrics_port, "extraEnv": [
            {"name": "NORIA_TRAINING_RESYNC_SECONDS", "value": "2"},
            {"name": "NORIA_TRIGGER_SETTLE_SECONDS", "value": "1"},
            {"name": "NORIA_ROLLOUT_INTERVAL_SECONDS", "value": "0.5"},
            # The test bed has no EndpointSlices for loopback pod addresses; its agent proxies ClusterIPs.
            {"name": "NORIA_ROUTER_BACKEND_URLS", "value": "clusterIP"},
        ]},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}},
        "admission": {"enabled": True,
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app_namespace}}},
    }


def items(cluster: Any, kinds: str, *args: str) -> list[dict[str, Any]]:  # noqa: ANN401
    out = cluster.kubectl("get", kinds, "-o", "json", *args)
    return json.loads(out.stdout).get("items", [])


def release_objects(cluster: Any, release: str, namespaces: list[str]) -> list[str]:  # noqa: ANN401
    """``Kind/namespace/name`` of every object labelled as the release's, in ``namespaces`` and cluster-wide."""
    selector = f"-l={RELEASE_LABEL}={release}"
    found = [(o, ns) for ns in namespaces for o in items(cluster, CHART_KINDS_NAMESPACED, "-n", ns, selector)]
    found += [(o, "") for o in items(cluster, CHART_KINDS_CLUSTER, selector)]
    return sorted(f"{o['kind']}/{ns}/{o['metadata']['name']}" for o, ns in found)


def operator_pods(cluster: Any, namespace: str, release: str) -> list[dict[str, Any]]:  # noqa: ANN401
    return [p for p in items(cluster, "pods", "-n", namespace, f"-l={RELEASE_LABEL}={release}")
            if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def env_of(pod: dict[str, Any], name: str) -> str | None:
    for var in pod["spec"]["containers"][0].get("env") or []:
        if var["name"] == name:
            return var.get("value")
    return None


def process_environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with (/proc/<pid>/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def container_pid(pod: dict[str, Any]) -> int:
    """The node agent's container ID is ``noria://<pid>``."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    return int(container_id.removeprefix("noria://"))

