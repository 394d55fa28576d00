"""The chart's RBAC, rendered by real Helm and installed on a real API server (authorization mode
RBAC): the operator's ServiceAccount may do what the operator does and nothing more, in both modes
(cluster-wide, and namespaced with watchNamespaces: Roles in the watched namespaces only), its
`kubectl auth can-i --list` equals the golden files charts/noria/tests/rbac-can-i-*.txt, it can grant
the router its Role (the API server refuses to let anyone grant what they do not hold), and an
operator running under that ServiceAccount's own token with the namespaced RBAC reconciles in its
namespace and never touches another.

Golden files: `kubectl auth can-i --list` of the operator's ServiceAccount minus what a bare
ServiceAccount of the same namespace may already do (discovery, self-reviews: the cluster's, not the
chart's), per namespace role (release, watched, unwatched), namespace names replaced. After a
deliberate RBAC change, regenerate them with NORIA_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_helpers import CHART, ROOT, ChartRbac, build_helm, new_namespace
from noria.deployment.objects import RolloutRef, router_rbac
from noria_testbed.processes import wait_until

pytestmark = pytest.mark.integration

GOLDEN = CHART / "tests"
CAN_I_LINE = re.compile(r"^\s*(?:(\S+)\s+)?(\[[^\]]*\])\s+(\[[^\]]*\])\s+(\[[^\]]*\])\s*$")


@pytest.fixture(scope="module")
def helm() -> Path:
    return build_helm()


@pytest.fixture
def install(cluster: Any, helm: Path) -> Iterator[Any]:
    made: list[ChartRbac] = []
    namespaces: list[str] = []

    def make(watched_count: int) -> tuple[ChartRbac, list[str]]:
        release = new_namespace(cluster, "t-rel")
        watched = [new_namespace(cluster, "t-watch") for _ in range(watched_count)]
        namespaces.extend([release, *watched])
        made.append(ChartRbac(cluster, helm, release, watched))
        return made[-1], watched

    yield make
    for item in made:
        item.remove()
    for ns in namespaces:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def can_i_list(cluster: Any, user: str, namespace: str) -> set[str]:
    out = cluster.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace)
    lines = set()
    for line in out.stdout.splitlines()[1:]:  # the header
        match = CAN_I_LINE.match(line)
        assert match, f"unexpected `kubectl auth can-i --list` line: {line!r}"
        resource, urls, names, verbs = match.groups()
        lines.add(f"{resource or '-'} {urls} {names} [{' '.join(sorted(verbs[1:-1].split()))}]")
    return lines


def normalised(cluster: Any, install: ChartRbac, where: dict[str, str]) -> str:
    """Per namespace role: the chart's grants there, beyond a bare ServiceAccount's, sorted."""
    bare = f"system:serviceaccount:{install.release_ns}:default"
    out = []
    for role, namespace in where.items():
        extra = can_i_list(cluster, install.user, namespace) - can_i_list(cluster, bare, namespace)
        out += [f"{role}: {line}" for line in sorted(extra)]
    text = "\n".join(out) + "\n"
    for namespace in where.values():
        text = text.replace(namespace, "<namespace>")
    return text.replace(install.fullname, "<fullname>")


def compare_with_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NORIA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with NORIA_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), (
        f"`kubectl auth can-i --list` of the operator's ServiceAccount differs from {path.relative_to(ROOT)}"
        f" (a deliberate change: NORIA_UPDATE_GOLDEN=1, then review the diff):\n{text}")


def test_cluster_wide_permissions_equal_the_golden_file(cluster: Any, install: Any) -> None:
    chart, _ = install(0)
    elsewhere = new_namespace(cluster, "t-other")
    try:
        compare_with_golden(normalised(cluster, chart, {"release": chart.release_ns, "any other": elsewhere}),
                            "rbac-can-i-clusterwide.txt")
    finally:
        cluster.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)


def test_namespaced_permissions_equal_the_golden_file_and_write_nothing_elsewhere(cluster: Any, install: Any) -> None:
    chart, (watched,) = install(1)
    unwatched = new_namespace(cluster, "t-other")
    try:
        text = normalised(cluster, chart, {"release": chart.release_ns, "watched": watched, "unwatched": unwatched})
        compare_with_golden(text, "rbac-can-i-namespaced.txt")
        writes = {"create", "update", "patch", "delete", "deletecollection"}
        for line in text.splitlines():
            if line.startswith(("unwatched:", "release:")) and "leases" not in line:
                verbs = set(line.rsplit("[", 1)[1].rstrip("]").split())
                assert not verbs & writes, f"a write outside the watched namespaces: {line}"
    finally:
        cluster.kubectl("delete", "namespace", unwatched, "--wait=false", check=False)


def access(cluster: Any, user: str, namespace: str, checks: list[tuple[str, ...]]) -> dict[tuple[str, ...], bool]:
    """Ask the API server's authorizer (SubjectAccessReview, one kubectl call for all) whether
    ``user`` may do each ``(verb, "resource[/subresource].group"[, name])``; no discovery needed, so it
    also answers for kinds not installed here (HTTPRoute)."""
    reviews = []
    for verb, target, *name in checks:
        resource, _, group = target.partition(".")
        resource, _, subresource = resource.partition("/")
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if name:
            attributes["name"] = name[0]
        if subresource:
            attributes["subresource"] = subresource
        reviews.append({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}",
                           "system:authenticated"],
                "resourceAttributes": attributes,
            },
        })
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                              "items": reviews}))
    decoder, text, items = json.JSONDecoder(), out.stdout.strip(), []
    while text:  # kubectl prints one JSON document per created object
        item, end = decoder.raw_decode(text)
        items.append(item)
        text = text[end:].strip()
    return {check: bool(item["status"].get("allowed")) for check, item in zip(checks, items, strict=True)}


ALLOWED = [
    ("watch", "trainingpipelines.noria.dev"),
    ("patch", "trainingpipelines/status.noria.dev"),
    ("create", "modelversions.noria.dev"),
    ("patch", "modelversions/status.noria.dev"),
    ("patch", "rollouts.noria.dev"),
    ("patch", "rollouts/status.noria.dev"),
    ("update", "rollouts/finalizers.noria.dev"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("create", "daskclusters.kubernetes.dask.org"),  # dask runs (training/dask_cluster.py)
    ("list", "daskclusters.kubernetes.dask.org"),
    ("delete", "daskclusters.kubernetes.dask.org"),
    ("create", "configmaps"),
    ("get", "secrets", "noria-notifications"),
    ("list", "pods"),
    ("create", "deployments.apps"),
    ("patch", "services"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "events"),
    ("patch", "httproutes.gateway.networking.k8s.io"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
]
DENIED = [
    ("get", "secrets"),  # only the notifications Secret, by name
    ("get", "secrets", "someone-elses"),
    ("list", "secrets"),
    ("patch", "trainingpipelines.noria.dev"),  # the user's; the operator writes only its status
    ("delete", "trainingpipelines.noria.dev"),
    ("delete", "rollouts.noria.dev"),
    ("update", "rollouts.noria.dev"),
    ("delete", "modelversions.noria.dev"),
    ("update", "deployments.apps"),  # server-side apply is a patch
    ("delete", "pods"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "httproutes.gateway.networking.k8s.io"),
    ("create", "events.events.k8s.io"),
    ("watch", "namespaces"),  # cluster-wide mode: Kopf does not watch namespaces
    ("update", "leases.coordination.k8s.io", "someone-elses-lease"),  # only its own leader Lease
    ("delete", "leases.coordination.k8s.io", "noria-operator"),
    ("list", "leases.coordination.k8s.io"),
]


def test_operator_account_may_do_what_the_operator_does_and_no_more(cluster: Any, install: Any) -> None:
    chart, _ = install(0)
    answers = access(cluster, chart.user, chart.release_ns, ALLOWED + DENIED)
    refused = [c for c in ALLOWED if not answers[c]]
    granted = [c for c in DENIED if answers[c]]
    assert not refused, f"the operator needs {refused}"
    assert not granted, f"the operator should not have {granted}"
    lease = [("create", "leases.coordination.k8s.io"), ("get", "leases.coordination.k8s.io", "noria-operator"),
             ("update", "leases.coordination.k8s.io", "noria-operator")]
    assert all(access(cluster, chart.user, chart.release_ns, lease).values())
    elsewhere = access(cluster, chart.user, "kube-system", lease)
    assert not any(elsewhere.values()), f"the operator may touch leases outside its namespace: {elsewhere}"


def test_namespaced_mode_writes_only_in_watched_namespaces(cluster: Any, install: Any) -> None:
    chart, (watched,) = install(1)
    writes = [c for c in ALLOWED if c[0] in ("create", "patch", "update", "delete")]
    assert all(access(cluster, chart.user, watched, writes).values())
    for namespace in ("kube-system", chart.release_ns):
        answers = access(cluster, chart.user, namespace, writes + [("get", "secrets", "noria-notifications")])
        assert not any(answers.values()), f"writes in {namespace}: {[c for c, ok in answers.items() if ok]}"
    assert access(cluster, chart.user, "kube-system", [("list", "customresourcedefinitions.apiextensions.k8s.io"),
                                                       ("watch", "namespaces")]) == {
        ("list", "customresourcedefinitions.apiextensions.k8s.io"): True, ("watch", "namespaces"): True}


def test_operator_can_grant_the_router_its_role(cluster: Any, install: Any) -> None:
    chart, _ = install(0)
    namespace = chart.release_ns
    cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(ROOT / "examples" / "03-rollout-canary" / "rollout.yaml")
    )
    rollout = json.loads(cluster.kubectl("get", "mro", "churn", "-n", namespace, "-o", "json").stdout)
    ref = RolloutRef(name="churn", namespace=namespace, uid=rollout["metadata"]["uid"])
    objects = yaml.safe_dump_all(router_rbac(ref))
    out = cluster.kubectl("create", "--as", chart.user, "-n", namespace, "-f", "-", input=objects, check=False)
    assert out.returncode == 0, out.stderr
    # and it is refused a Role that grants more than it holds
    wider = [o for o in router_rbac(ref) if o["kind"] == "Role"][0]
    wider["metadata"]["name"] = "wider"
    wider["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    out = cluster.kubectl("create", "--as", chart.user, "-n", namespace, "-f", "-",
                          input=json.dumps(wider), check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower()


def test_operator_under_its_own_token_acts_only_in_its_watched_namespace(
    cluster: Any, install: Any, operator_factory: Any, tmp_path: Path
) -> None:
    """The chart's namespaced RBAC is enough to run (no admin kubeconfig), and --namespace (what the
    chart passes per watchNamespaces entry) really narrows the operator: a ModelVersion in the
    watched namespace is judged, one in another namespace is never touched."""
    from noria_testbed.prometheus import write_kubeconfig

    chart, (watched,) = install(1)
    unwatched = new_namespace(cluster, "t-other")
    try:
        token = cluster.kubectl("create", "token", chart.fullname, "-n", chart.release_ns,
                                "--duration=1h").stdout.strip()
        kubeconfig = write_kubeconfig(tmp_path / "operator-kubeconfig", admin_kubeconfig=cluster.kubeconfig,
                                      token=token)
        manifest = (ROOT / "examples" / "02-model-version-import" / "modelversion.yaml").read_text()
        for namespace in (unwatched, watched):
            cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
        operator = operator_factory(watched, KUBECONFIG=str(kubeconfig), NORIA_LEADER_NAMESPACE=chart.release_ns,
                                    NORIA_LEADER_LEASE_NAME="noria-operator")

        def conditions(namespace: str) -> list[dict[str, Any]]:
            mv = json.loads(cluster.kubectl("get", "mv", "churn-v1", "-n", namespace, "-o", "json").stdout)
            return (mv.get("status") or {}).get("conditions") or []

        wait_until("the watched namespace's ModelVersion judged", lambda: conditions(watched), timeout=60,
                   on_timeout=lambda: operator.log()[-3000:])
        assert conditions(unwatched) == [], "the operator acted outside its watched namespace"
        lease = json.loads(cluster.kubectl("get", "lease", "noria-operator", "-n", chart.release_ns,
                                           "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"], lease
        assert "Forbidden" not in operator.log() and "Not enough permissions" not in operator.log(), operator.log()[-3000:]
    finally:
        cluster.kubectl("delete", "namespace", unwatched, "--wait=false", check=False)
