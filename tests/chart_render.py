"""The Noria chart rendered by real Helm (built from its Go module by hack/build-helm.sh, cached by
version), and the documented value combinations every chart test renders: tests/unit/test_chart.py
lints and inspects them, tests/integration/test_chart_values.py sends them to the API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "noria"
BUILD_HELM = ROOT / "hack" / "build-helm.sh"
WATCHED = ("team-a", "team-b")  # the namespaces of the "namespaced" combination

# Each documented combination of values (charts/noria/README.md), as helm arguments.
COMBINATIONS: dict[str, list[str]] = {
    "defaults": [],
    "metrics-off": ["--set", "operator.metricsPort=0"],
    "namespaced": ["--set-json", f'watchNamespaces=["{WATCHED[0]}","{WATCHED[1]}"]'],
    "single-replica-no-election": ["--set", "replicaCount=1", "--set", "leaderElection.enabled=false"],
    "names-and-priority": ["--set", "nameOverride=mlops", "--set", "fullnameOverride=noria-core",
                           "--set", "priorityClassName=noria-critical"],
    "no-pvc-no-admission-no-pdb": ["--set", "store.pvc.create=false", "--set", "admission.enabled=false",
                                   "--set", "podDisruptionBudget.enabled=false"],
    # Argo CD's server admitted by its exact user name for the approve/reject actions (docs/operations/argocd.md)
    "approver-usernames": ["--set-json", 'admission.approverUsernames=["system:serviceaccount:argocd:argocd-server"]'],
    "existing-serviceaccount": ["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops"],
    "scheduling-and-env": ["--set-json", 'nodeSelector={"noria.dev/workload":"true"}',
                           "--set-json", 'tolerations=[{"key":"ml","operator":"Exists","effect":"NoSchedule"}]',
                           "--set-json", 'imagePullSecrets=[{"name":"regcred"}]',
                           "--set-json", 'operator.extraEnv=[{"name":"NORIA_TRAINING_RESYNC_SECONDS","value":"10"}]',
                           "--set", "operator.logLevel=debug", "--set-json", 'podAnnotations={"team":"ml"}',
                           "--set-json", 'store.trustedArtifactPrefixes=["s3://models/{namespace}/"]'],
    # The monitoring objects need the Prometheus Operator's CRDs, which the test bed does not have:
    # the API server checks the rest of this combination, lint and the schema all of it.
    "monitoring": ["--set", "monitoring.enabled=true", "--set-json", 'monitoring.labels={"release":"kps"}',
                   "--set", "monitoring.prometheusRule.runbookBaseUrl=https://runbooks.example/noria"],
    # An object store: no claim and no volume; the operator's own access from a Secret (object-storage.md).
    "s3": ["--set", "store.root=s3://noria-store/models", "--set", "store.s3.endpoint=http://seaweedfs.storage:8333",
           "--set", "store.s3.region=us-east-1", "--set", "store.s3.credentialsSecret=noria-s3",
           "--set-json", 'serviceAccount.annotations={"eks.amazonaws.com/role-arn":"arn:aws:iam::1:role/noria"}'],
    "kind": ["--set", "store.pvc.create=false", "--set", "replicaCount=1",
             "--set", "image.repository=noria-operator", "--set", "image.tag=dev",
             "--set", "trainerImage=noria-trainer:dev", "--set", "serverImage=noria-server:dev"],
}


def helm_binary() -> Path:
    built = subprocess.run(["bash", str(BUILD_HELM)], capture_output=True, text=True)
    assert built.returncode == 0, f"{BUILD_HELM} failed:\n{built.stderr[-3000:]}"
    return Path(built.stdout.strip().splitlines()[-1]) / "helm"


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render_text(helm: Path, *sets: str, namespace: str = "noria-system", release: str = "noria") -> str:
    out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *sets)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(helm: Path, *sets: str, namespace: str = "noria-system", release: str = "noria") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(helm, *sets, namespace=namespace, release=release)) if d]


MONITORING_GROUP = "monitoring.coreos.com/"


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
