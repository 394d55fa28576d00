"""Every documented value combination of the chart, rendered by real Helm, is accepted by the real
API server (server-side dry run: the same validation and admission as an install), the defaults
pass the "restricted" Pod Security Standard, `operator.metricsPort=0` leaves no metrics object,
NOTES.txt tells the next steps, the CRD upgrade step adds a new field to an installed CRD, and the
kind store manifest binds."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import (
    CHART,
    COMBINATIONS,
    MONITORING_GROUP,
    ROOT,
    WATCHED,
    helm_binary,
    render_text,
    run_helm,
)
from noria_testbed.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


@pytest.fixture
def namespaces(cluster: Any) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(prefix: str = "t-chart", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        cluster.kubectl("create", "namespace", name)
        if labels:
            cluster.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(cluster: Any, manifests: str) -> subprocess.CompletedProcess[str]:
    """Every namespaced object the chart renders names its namespace (the release's, or a watched one)."""
    return cluster.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict",
                           "-o", "name", "-f", "-", input=manifests, check=False)


@pytest.mark.parametrize("name", COMBINATIONS)
def test_each_documented_combination_is_accepted_by_the_api_server(cluster: Any, helm: Path, namespaces: Any,
                                                                   name: str) -> None:
    release_ns = namespaces()
    sets = list(COMBINATIONS[name])
    if name == "namespaced":  # the watched namespaces must exist: fresh ones instead of team-a, team-b
        watched = [namespaces("t-watch") for _ in WATCHED]
        sets = [s.replace(WATCHED[0], watched[0]).replace(WATCHED[1], watched[1]) for s in sets]
    text = render_text(helm, *sets, namespace=release_ns, release=f"n{secrets.token_hex(3)}")
    if name == "monitoring":  # no Prometheus Operator CRDs on the test bed (see chart_render.COMBINATIONS)
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert {d["kind"] for d in docs if d["apiVersion"].startswith(MONITORING_GROUP)} >= {"PodMonitor",
                                                                                           "ServiceMonitor"}
        text = yaml.safe_dump_all([d for d in docs if not d["apiVersion"].startswith(MONITORING_GROUP)])
    out = dry_run(cluster, text)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    created = out.stdout.split()
    assert any(c.startswith("deployment.apps/") for c in created), created
    if name == "metrics-off":
        assert not any(c.startswith("service/") for c in created), created
        (deployment,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {e["name"]: e.get("value") for e in container["env"]}["NORIA_METRICS_PORT"] == "0"
        assert [p["name"] for p in container["ports"]] == ["healthz"]
    if name == "namespaced":
        roles = [c for c in created if c.startswith("role.rbac.authorization.k8s.io/")]
        assert len(roles) == 3, created  # one per watched namespace + the leader-election Role


def test_defaults_pass_the_restricted_pod_security_standard(cluster: Any, helm: Path, namespaces: Any) -> None:
    """PodSecurity admission checks a Deployment's pod template against the namespace's `warn`
    level: the defaults draw no warning, and a weakened security context does (so the check can fail)."""
    restricted = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
    namespace = namespaces("t-pss", restricted)
    out = dry_run(cluster, render_text(helm, namespace=namespace))
    assert out.returncode == 0 and "PodSecurity" not in out.stderr, out.stderr
    weakened = render_text(helm, "--set", "securityContext.allowPrivilegeEscalation=true", namespace=namespace)
    out = dry_run(cluster, weakened)
    assert 'would violate PodSecurity "restricted:latest"' in out.stderr and "allowPrivilegeEscalation" in out.stderr


def test_notes_tell_the_next_steps(cluster: Any, helm: Path, namespaces: Any) -> None:
    release_ns, watched = namespaces(), namespaces("t-watch")
    out = run_helm(helm, "install", "noria", str(CHART), "--dry-run=server", "--namespace", release_ns,
                   "--set-json", f'watchNamespaces=["{watched}"]', "--set", "operator.metricsPort=0",
                   *COMBINATIONS["approver-usernames"])
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    for expected in (f"It watches only: {watched}", "kubectl apply -n <ns> -f examples/90-closed-loop/store.yaml",
                     "kubectl noria approve", "kubectl noria promote", "kubectl noria retrain",
                     "kubectl apply --server-side --force-conflicts -f charts/noria/crds/",
                     "operator.metricsPort=0",
                     "members of\n   noria-approvers and the users system:serviceaccount:argocd:argocd-server only"):
        assert expected in notes, f"NOTES.txt lacks {expected!r}:\n{notes}"


def test_the_crd_upgrade_step_adds_a_new_field(cluster: Any, tmp_path: Path) -> None:
    """Helm installs crds/ once and never upgrades them; the documented step (README.md, NOTES.txt)
    is `kubectl apply --server-side --force-conflicts -f charts/noria/crds/`. An older Rollout CRD
    without spec.paused, created as Helm creates it, is brought to the chart's by that step, and a
    Rollout using the new field is refused before and accepted after. The CRD is the chart's own,
    moved to a group of its own so the test bed's Noria CRDs are untouched."""
    group = f"u{secrets.token_hex(3)}.noria.dev"
    new = yaml.safe_load((CHART / "crds" / "rollouts.noria.dev.yaml").read_text())
    new["metadata"]["name"] = f"rollouts.{group}"
    new["spec"]["group"] = group
    old = json.loads(json.dumps(new))
    for version in old["spec"]["versions"]:
        spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert "paused" in spec_schema["properties"], "the chart's Rollout CRD lacks spec.paused"
        del spec_schema["properties"]["paused"]
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "rollouts.yaml").write_text(yaml.safe_dump(new))
    namespace = f"t-crd-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl("create", "--field-manager=helm", "-f", "-", input=yaml.safe_dump(old))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/rollouts.{group}", "--timeout=30s")
        rollout = yaml.safe_load((ROOT / "examples" / "03-rollout-canary" / "rollout.yaml").read_text())
        rollout["apiVersion"] = f"{group}/{rollout['apiVersion'].split('/')[1]}"
        rollout["spec"]["paused"] = True

        def apply_rollout() -> subprocess.CompletedProcess[str]:
            return cluster.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", "-",
                                   input=json.dumps(rollout), check=False)

        before = apply_rollout()
        assert before.returncode != 0 and "paused" in before.stderr, before.stderr
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tmp_path / "crds"))

        def accepted() -> bool:  # the API server serves the new schema a moment after the update
            return apply_rollout().returncode == 0

        wait_until("a Rollout with spec.paused accepted", accepted, timeout=30,
                   on_timeout=lambda: apply_rollout().stderr)
        got = cluster.kubectl("get", f"rollouts.{group}", rollout["metadata"]["name"], "-n", namespace,
                              "-o", "jsonpath={.spec.paused}")
        assert got.stdout == "true"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "crd", f"rollouts.{group}", "--wait=false", check=False)


def test_the_kind_store_manifest_binds_one_volume_per_namespace(cluster: Any, namespaces: Any) -> None:
    """examples/kind/store.yaml on the real PersistentVolume controller: each namespace's claim binds
    its own hostPath volume (namespaces and volume names made unique for the shared test bed)."""
    system, ml = namespaces("t-kind-sys"), namespaces("t-kind-ml")
    text = (ROOT / "examples" / "kind" / "store.yaml").read_text()
    text = text.replace("noria-store-noria-system", f"pv-{system}").replace("noria-store-ml", f"pv-{ml}")
    text = text.replace("namespace: noria-system", f"namespace: {system}").replace("namespace: ml", f"namespace: {ml}")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert {d["kind"] for d in docs} == {"PersistentVolume", "PersistentVolumeClaim"}
    assert all(d["spec"]["accessModes"] == ["ReadWriteOnce"] for d in docs)
    cluster.kubectl("apply", "--server-side", "--validate=strict", "-f", "-", input=text)
    try:
        for namespace in (system, ml):
            def bound(ns: str = namespace) -> bool:
                phase = cluster.kubectl("get", "pvc", "noria-store", "-n", ns, "-o", "jsonpath={.status.phase}")
                return phase.stdout == "Bound"

            wait_until(f"claim noria-store in {namespace} bound", bound, timeout=60)
            volume = cluster.kubectl("get", "pvc", "noria-store", "-n", namespace, "-o", "jsonpath={.spec.volumeName}")
            assert volume.stdout == f"pv-{namespace}"
    finally:
        cluster.kubectl("delete", "pv", f"pv-{system}", f"pv-{ml}", "--wait=false", check=False)
