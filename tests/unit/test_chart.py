"""The Helm chart as real Helm renders it (helm built from its Go module by hack/build-helm.sh,
cached by version): `helm lint --strict` for each documented value combination, values.schema.json
refusing misspelt keys and wrong types with a message naming the key, RBAC that names its verbs
and resources (no wildcards) and narrows to Roles when watchNamespaces is set, metrics that really
switch off, a hardened Deployment whose replicas elect a leader on a Lease they may touch only in
the release namespace, NORIA_* variables the operator actually reads. Also kind-config.yaml.
The same renders are checked by the real API server in tests/integration/test_chart_values.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import COMBINATIONS, helm_binary, of_kind, render, run_helm
from noria import contracts

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "noria"


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = of_kind(docs, "Deployment")
    return dep


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_chart_metadata_and_values_load() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "noria" and chart["version"]
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)


@pytest.mark.parametrize("name", COMBINATIONS)
def test_lint_strict_passes_for_each_documented_combination(helm: Path, name: str) -> None:
    out = run_helm(helm, "lint", "--strict", str(CHART), *COMBINATIONS[name])
    assert out.returncode == 0, out.stdout + out.stderr
    assert render(helm, *COMBINATIONS[name])


@pytest.mark.parametrize(("sets", "named"), [
    (["--set", "operator.metricsPrt=1"], "'metricsPrt' not allowed"),           # a typo
    (["--set", "replicaCont=3"], "'replicaCont' not allowed"),                 # a typo at the top
    (["--set", "store.pvc.acessModes={ReadWriteOnce}"], "'acessModes' not allowed"),
    (["--set", "operator.metricsPort=metrics"], "/operator/metricsPort"),     # wrong type
    (["--set", "replicaCount=two"], "/replicaCount"),
    (["--set", "leaderElection.enabled=yes-please"], "/leaderElection/enabled"),
    (["--set-json", 'watchNamespaces="ml"'], "/watchNamespaces"),            # a string, not a list
    (["--set-json", 'watchNamespaces=["Team_A"]'], "/watchNamespaces/0"),    # not a namespace name
    (["--set", "store.pvc.accessModes={ReadWriteSometimes}"], "/store/pvc/accessModes/0"),
    (["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    (["--set", "monitoring.enabeld=true"], "'enabeld' not allowed"),          # the monitoring block too
    (["--set", "monitoring.interval=often"], "/monitoring/interval"),
    (["--set", "admission.validationActions={Block}"], "/admission/validationActions/0"),
    (["--set-json", 'admission.approverUsernames="argocd-server"'], "/admission/approverUsernames"),
    (["--set-json", 'admission.approverUsernames=["bot","bot"]'], "/admission/approverUsernames"),
])
def test_schema_refuses_typos_and_wrong_types_naming_the_key(helm: Path, sets: list[str], named: str) -> None:
    for command in (["template", "noria", str(CHART)], ["lint", "--strict", str(CHART)]):
        out = run_helm(helm, *command, *sets)
        assert out.returncode != 0, f"helm {command[0]} accepted {sets}"
        assert named in out.stdout + out.stderr, out.stdout + out.stderr


def test_schema_covers_every_key_in_values_yaml() -> None:
    """A key added to values.yaml without the schema would be refused by the schema itself (every
    object is closed); this names it instead of failing every render."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict) or node.get("additionalProperties") is not False:
            return
        for key, value in values.items():
            assert key in node["properties"], f"values.yaml {path}{key} is not in values.schema.json"
            walk(value, node["properties"][key], f"{path}{key}.")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


def test_metrics_port_zero_renders_no_port_service_or_scrape_annotation(helm: Path) -> None:
    on, off = render(helm), render(helm, *COMBINATIONS["metrics-off"])
    assert [s["metadata"]["name"] for s in of_kind(on, "Service")] == ["noria-metrics"]
    assert of_kind(off, "Service") == []
    for docs, port in ((on, "9808"), (off, "0")):
        pod = deployment(docs)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NORIA_METRICS_PORT"] == port
        ports = {p["name"] for p in container["ports"]}
        annotations = deployment(docs)["spec"]["template"]["metadata"].get("annotations") or {}
        if port == "0":
            assert ports == {"healthz"} and "prometheus.io/scrape" not in annotations
        else:
            assert ports == {"healthz", "metrics"} and annotations["prometheus.io/port"] == port


def admission_policy(docs: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """The policy's CEL variables by name, and its refusal messages, as rendered."""
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    return variables, [v["messageExpression"] for v in policy["spec"]["validations"]]


def test_approver_usernames_admit_exact_names_next_to_the_groups(helm: Path) -> None:
    """admission.approverUsernames: the exact user names (a ServiceAccount such as Argo CD's
    argocd-server) that may steer as a member of approverGroups may; the refusal names them. With
    none listed the policy and its messages are what they were. The API server runs both in
    tests/integration/test_admission_policy.py."""
    variables, messages = admission_policy(render(helm))
    assert variables["isApprover"].endswith("|| request.userInfo.username in []")
    assert "the users" not in " ".join(messages)
    argocd = "system:serviceaccount:argocd:argocd-server"
    variables, messages = admission_policy(render(helm, *COMBINATIONS["approver-usernames"]))
    assert variables["isApprover"] == ('request.userInfo.groups.exists(g, g in ["noria-approvers"]) '
                                       f'|| request.userInfo.username in ["{argocd}"]')
    assert f'\', or the users \' + ["{argocd}"].join' in messages[0]
    assert f'\', the users \' + ["{argocd}"].join' in messages[1] and "or the Noria operator" in messages[1]


@pytest.mark.parametrize(("value", "said"), [
    ('admission.approverUsernames=["system:serviceaccounts:argocd"]',
     '"system:serviceaccounts:argocd" is a group (every ServiceAccount of a namespace is in it), not a user name: '
     "list it in admission.approverGroups"),
    ('admission.approverGroups=["system:serviceaccount:argocd:argocd-server"]',
     '"system:serviceaccount:argocd:argocd-server" is a ServiceAccount\'s user name, not a group, and would admit '
     "nobody: list it in admission.approverUsernames"),
])
def test_a_service_account_group_and_user_name_in_each_others_place_are_refused(helm: Path, value: str,
                                                                               said: str) -> None:
    """The two look alike (serviceaccounts: vs serviceaccount:) and a swap fails silently on the API
    server: a group that admits a whole namespace, or a "group" that admits nobody. The chart's
    `fail` stops install, upgrade and template; `helm lint` only reports a template's fail as
    [INFO] (lint renders in a mode that tolerates it), so there the message is all there is."""
    out = run_helm(helm, "template", "noria", str(CHART), "--set-json", value)
    assert out.returncode != 0 and said in out.stderr, out.stderr
    out = run_helm(helm, "lint", "--strict", str(CHART), "--set-json", value)
    assert said in out.stdout + out.stderr, out.stdout + out.stderr


def test_the_package_leaves_out_test_files_the_templates_do_not_read(helm: Path, tmp_path: Path) -> None:
    """.helmignore keeps the RBAC golden files and promtool's alert tests out of the package; the
    templates read files/monitoring/ (alerts.yaml, dashboard.json, the monitors), which stay. The
    promtool tests read alerts_test.yaml from the repository, where it still is."""
    import tarfile

    out = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (package,) = tmp_path.glob("noria-*.tgz")
    with tarfile.open(package) as tar:
        packaged = {name.removeprefix("noria/") for name in tar.getnames()}
    read_by_templates = set(re.findall(r'\.Files\.Get "([^"]+)"', "".join(
        t.read_text() for t in (CHART / "templates").rglob("*") if t.is_file())))
    assert read_by_templates and read_by_templates <= packaged
    assert "files/monitoring/alerts_test.yaml" not in packaged
    assert not any(name.startswith("tests/") for name in packaged)
    assert (CHART / "files" / "monitoring" / "alerts_test.yaml").is_file()
    # and the package renders the monitoring objects from its own files
    out = run_helm(helm, "template", "noria", str(package), "--set", "monitoring.enabled=true")
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_rbac_names_every_verb_and_resource(helm: Path) -> None:
    for name in ("defaults", "namespaced"):
        for doc in render(helm, *COMBINATIONS[name]):
            if doc["kind"] not in ("ClusterRole", "Role"):
                continue
            for rule in doc["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], f"wildcard in {key}: {rule}"
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_cluster_wide_rbac_grants_what_the_operator_does_and_no_more(helm: Path) -> None:
    docs = render(helm)
    roles = {d["metadata"]["name"]: d for d in of_kind(docs, "ClusterRole")}
    assert set(roles) == {"noria", "noria-cluster"}
    granted = grants(roles["noria"]["rules"])
    assert granted[("noria.dev", "trainingpipelines")] == {"get", "list", "watch"}
    assert granted[("noria.dev", "modelversions")] == {"get", "list", "watch", "create"}
    assert granted[("noria.dev", "rollouts")] == {"get", "list", "watch", "patch"}
    assert not {"create", "update", "patch", "delete"} & granted[("", "pods")]  # pods are only read
    assert "delete" not in granted[("noria.dev", "rollouts")] | granted[("noria.dev", "trainingpipelines")]
    (secret_rule,) = [r for r in roles["noria"]["rules"] if "secrets" in r["resources"]]
    # notify.py reads that one Secret (and the ConfigMap of the same name) in each watched namespace
    assert secret_rule["resourceNames"] == [contracts.NOTIFICATIONS_CONFIGMAP] and secret_rule["verbs"] == ["get"]
    assert ("coordination.k8s.io", "leases") not in granted  # leader-election-rbac.yaml, release namespace
    assert grants(roles["noria-cluster"]["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    bindings = {b["metadata"]["name"]: b for b in of_kind(docs, "ClusterRoleBinding")}
    assert {b["roleRef"]["name"] for b in bindings.values()} == set(roles)
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "noria", "namespace": "noria-system"}]
               for b in bindings.values())
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == ["noria-leader-election"]


def test_watch_namespaces_gives_a_role_per_namespace_and_no_cluster_wide_write(helm: Path) -> None:
    docs = render(helm, *COMBINATIONS["namespaced"])
    (cluster_role,) = of_kind(docs, "ClusterRole")
    cluster_wide = grants(cluster_role["rules"])
    assert all(verbs <= {"get", "list", "watch"} for verbs in cluster_wide.values()), cluster_wide
    assert set(cluster_wide) == {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    assert set(roles) == {("team-a", "noria"), ("team-b", "noria"), ("noria-system", "noria-leader-election")}
    cluster_wide_mode = {d["metadata"]["name"]: d for d in of_kind(render(helm), "ClusterRole")}["noria"]
    assert roles[("team-a", "noria")]["rules"] == cluster_wide_mode["rules"]  # the same list, one source
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in of_kind(docs, "RoleBinding")}
    assert bindings == set(roles)
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_leader_election_role_holds_one_lease_in_the_release_namespace(helm: Path) -> None:
    docs = render(helm, namespace="ops")
    (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert role["metadata"]["namespace"] == "ops"
    assert all(rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
               for rule in role["rules"])
    by_verbs = {tuple(rule["verbs"]): rule for rule in role["rules"]}
    assert set(by_verbs) == {("get", "update"), ("create",)}
    assert by_verbs[("get", "update")]["resourceNames"] == ["noria-operator"]


def test_operator_deployment_is_hardened_probed_and_replaces_replicas_one_at_a_time(helm: Path) -> None:
    spec = deployment(render(helm))["spec"]
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
    assert "priorityClassName" not in pod
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the only writable place with a read-only root
    assert any(m.get("readOnly") for m in mounts.values())


def test_security_context_names_and_priority_class_are_overridable(helm: Path) -> None:
    docs = render(helm, *COMBINATIONS["names-and-priority"], "--set", "securityContext.readOnlyRootFilesystem=false",
                  "--set", "podSecurityContext.runAsUser=1001")
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "noria-critical"
    assert pod["securityContext"]["runAsUser"] == 1001 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    named = {d["metadata"]["name"] for d in docs if d["kind"] != "PersistentVolumeClaim"}
    assert {"noria-core", "noria-core-metrics", "noria-core-cluster", "noria-core-leader-election"} <= named
    assert all(n.startswith("noria-core") for n in named), named
    assert deployment(docs)["metadata"]["labels"]["app.kubernetes.io/name"] == "mlops"
    # nameOverride alone: <release>-<nameOverride>
    assert deployment(render(helm, "--set", "nameOverride=mlops"))["metadata"]["name"] == "noria-mlops"


def test_deployment_env_names_are_settings_the_operator_reads(helm: Path) -> None:
    read = set()
    for module in ("settings.py", "operator_main.py", "__main__.py", "leader.py"):
        read |= set(re.findall(r"NORIA_[A-Z_]+", (ROOT / "operator" / "noria" / module).read_text()))
    (container,) = deployment(render(helm))["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]} - {"POD_NAME", "POD_NAMESPACE"}  # the downward API
    assert names and names <= read, f"unknown settings: {names - read}"
    assert {"NORIA_STORE_ROOT", "NORIA_TRAINER_IMAGE", "NORIA_SERVER_IMAGE", "NORIA_PROMETHEUS_URL"} <= names


def test_crds_are_shipped_with_the_chart() -> None:
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml")
    )


def test_kind_config_has_a_worker_and_mounts_the_store() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 1  # one node runs every pod: RWO is enough
    for node in config["nodes"]:
        assert any(m["containerPath"] == "/var/lib/noria/store" for m in node.get("extraMounts", [])), node["role"]


def test_disruption_budget_keeps_a_replica_through_a_drain(helm: Path) -> None:
    (pdb,) = of_kind(render(helm), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"]
    # one replica: a budget would block every drain
    assert of_kind(render(helm, *COMBINATIONS["single-replica-no-election"]), "PodDisruptionBudget") == []


def test_the_operator_holds_every_permission_it_grants_the_router(helm: Path) -> None:
    """The API server refuses a Role granting more than its creator holds (RBAC escalation
    prevention): the router's Role (objects.router_rbac) must lie within the chart's rules."""
    from noria.deployment.objects import RolloutRef, router_rbac

    (role,) = [o for o in router_rbac(RolloutRef(name="churn", namespace="ml", uid="u")) if o["kind"] == "Role"]
    held = {d["metadata"]["name"]: d for d in of_kind(render(helm), "ClusterRole")}["noria"]["rules"]
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert any(group in h["apiGroups"] and resource in h["resources"] and verb in h["verbs"]
                               and (not h.get("resourceNames") or set(rule.get("resourceNames") or ["*"])
                                    <= set(h["resourceNames"])) for h in held), \
                        f"the router's Role grants {verb} {resource}.{group}, which the operator does not hold"


def test_every_top_level_value_is_in_the_readme_reference() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, f"charts/noria/README.md does not document {missing}"


def test_readme_links_resolve_inside_the_repository_and_reach_the_monitoring_guide() -> None:
    readme = CHART / "README.md"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme.read_text())
    targets = {(readme.parent / link).resolve() for link in links if "://" not in link}
    missing = sorted(str(t) for t in targets if not t.exists() or ROOT not in t.parents)
    assert not missing, f"charts/noria/README.md links to {missing}"
    assert ROOT / "docs" / "operations" / "monitoring.md" in targets


def test_the_feast_trainer_image_is_set_by_its_value_and_reaches_the_operators_settings(helm: Path) -> None:
    from noria.settings import Settings

    docs = render(helm, "--set", "trainerFeastImage=registry.example/noria-trainer-feast:7")
    (container,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["NORIA_TRAINER_FEAST_IMAGE"] == "registry.example/noria-trainer-feast:7"
    assert Settings.from_env(env).trainer_feast_image == "registry.example/noria-trainer-feast:7"
