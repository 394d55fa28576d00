"""The Helm chart without Helm: every template must be YAML once its template expressions are
blanked out, every `.Values` path it uses must exist in values.yaml, RBAC names its verbs and
resources (no wildcards), the operator Deployment is hardened and its replicas elect a leader on a
Lease they may touch only in the release namespace, and its NORIA_*
variables are ones the operator actually reads. Also kind-config.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "noria"
TEMPLATES = sorted((CHART / "templates").glob("*.yaml"))
CONTROL_LINE = re.compile(r"^\s*\{\{-?\s*(if|else|end|with|range|include|toYaml|- )?.*\}\}\s*$")
EXPRESSION = re.compile(r"\{\{-?.*?-?\}\}")


def blank_render(text: str) -> list[dict[str, Any]]:
    """Drop lines that are only template directives, replace inline expressions with a placeholder."""
    lines = [line for line in text.splitlines() if not CONTROL_LINE.match(line)]
    body = "\n".join(EXPRESSION.sub("PLACEHOLDER", line) for line in lines)
    return [d for d in yaml.safe_load_all(body) if d]


def rendered(name: str) -> dict[str, Any]:
    (doc,) = blank_render((CHART / "templates" / name).read_text())
    return doc


def test_chart_metadata_and_values_load() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "noria" and chart["version"]
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_is_yaml_once_blanked(path: Path) -> None:
    docs = blank_render(path.read_text())
    assert docs, f"{path.name} renders to nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path.name


@pytest.mark.parametrize("path", [*TEMPLATES, CHART / "templates" / "NOTES.txt"], ids=lambda p: p.name)
def test_every_value_a_template_uses_exists(path: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", path.read_text()):
        node: Any = values
        for part in ref.split("."):
            assert isinstance(node, dict) and part in node, f"{path.name} uses .Values.{ref}, not in values.yaml"
            node = node[part]


def test_crds_are_shipped_with_the_chart() -> None:
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml")
    )


def test_cluster_role_is_least_privilege() -> None:
    role = rendered("clusterrole.yaml")
    assert role["kind"] == "ClusterRole"
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    needed = {
        ("noria.dev", "trainingpipelines"): {"get", "list", "watch", "patch"},
        ("noria.dev", "modelversions"): {"get", "list", "watch", "create", "patch"},
        ("noria.dev", "rollouts"): {"get", "list", "watch", "patch"},
        ("noria.dev", "trainingpipelines/status"): {"patch"},
        ("noria.dev", "modelversions/status"): {"patch"},
        ("noria.dev", "rollouts/status"): {"patch"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
        ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"create"},
        ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    for key, verbs in needed.items():
        assert verbs <= grants.get(key, set()), f"{key} lacks {verbs - grants.get(key, set())}"
    # pods are read, never written: a run's result is its pod's termination message
    assert grants[("", "pods")] == {"get", "list", "watch"}
    # the user's own objects are never deleted by the operator
    assert "delete" not in grants[("noria.dev", "trainingpipelines")] | grants[("noria.dev", "rollouts")]
    # the leader-election Lease is granted in the release namespace only (leader-election-rbac.yaml)
    assert ("coordination.k8s.io", "leases") not in grants


def test_leader_election_role_holds_one_lease_in_the_release_namespace() -> None:
    role, binding = blank_render((CHART / "templates" / "leader-election-rbac.yaml").read_text())
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "PLACEHOLDER"  # .Release.Namespace
    assert all(rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
               for rule in role["rules"])
    by_verbs = {tuple(rule["verbs"]): rule for rule in role["rules"]}
    assert set(by_verbs) == {("get", "update"), ("create",)}
    assert by_verbs[("get", "update")]["resourceNames"] == ["PLACEHOLDER"]  # .Values.leaderElection.leaseName
    assert binding["kind"] == "RoleBinding" and binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"][0]["kind"] == "ServiceAccount"


def test_binding_ties_the_role_to_the_service_account() -> None:
    binding = rendered("clusterrolebinding.yaml")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0]["kind"] == "ServiceAccount"


def test_operator_deployment_is_hardened_and_replaces_replicas_one_at_a_time() -> None:
    deployment = rendered("deployment.yaml")
    spec = deployment["spec"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 2 and values["leaderElection"]["enabled"] is True
    # a new pod starts (as a standby) before an old one stops: never zero replicas
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the only writable place with a read-only root
    assert any(m.get("readOnly") for m in mounts.values())


def test_deployment_env_names_are_settings_the_operator_reads() -> None:
    read = set()
    for module in ("settings.py", "operator_main.py", "__main__.py", "leader.py"):
        read |= set(re.findall(r"NORIA_[A-Z_]+", (ROOT / "operator" / "noria" / module).read_text()))
    (container,) = rendered("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]} - {"POD_NAME", "POD_NAMESPACE"}  # the downward API
    assert names and names <= read, f"unknown settings: {names - read}"
    assert {"NORIA_STORE_ROOT", "NORIA_TRAINER_IMAGE", "NORIA_SERVER_IMAGE", "NORIA_PROMETHEUS_URL"} <= names


def test_kind_config_has_a_worker_and_mounts_the_store() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1
    for node in config["nodes"]:
        assert any(m["containerPath"] == "/var/lib/noria/store" for m in node.get("extraMounts", [])), node["role"]


def test_disruption_budget_keeps_a_replica_through_a_drain() -> None:
    text = (CHART / "templates" / "poddisruptionbudget.yaml").read_text()
    assert "gt (int .Values.replicaCount) 1" in text  # one replica: a budget would block every drain
    (pdb,) = blank_render(text)
    assert pdb["kind"] == "PodDisruptionBudget" and "maxUnavailable" in pdb["spec"]
    assert "matchLabels" in pdb["spec"]["selector"] and 'include "noria.selectorLabels"' in text
