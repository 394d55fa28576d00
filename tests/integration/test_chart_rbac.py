"""The chart's RBAC against a real API server (authorization mode RBAC): the operator's
ServiceAccount may do what the operator does, nothing more, and can grant the router its Role
(the API server refuses to let anyone grant permissions they do not hold)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria.deployment.objects import RolloutRef, router_rbac

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "charts" / "noria" / "templates"
LEASE = "noria-operator"  # values.yaml leaderElection.leaseName
DIRECTIVE_LINE = re.compile(r"^\s*\{\{-?\s*(if|end|include \"noria\.labels\")[^}]*\}\}\s*$")


def render(name: str, values: dict[str, str]) -> str:
    """Enough of Helm for the RBAC templates: known expressions replaced, directive lines dropped."""
    lines = [line for line in (TEMPLATES / name).read_text().splitlines() if not DIRECTIVE_LINE.match(line)]
    text = "\n".join(lines)
    for expression, value in values.items():
        text = text.replace("{{ " + expression + " }}", value)
    assert "{{" not in text, f"{name}: unrendered expression left:\n{text}"
    return text


@pytest.fixture
def operator_account(cluster: Any, namespace: str) -> Any:
    role_name = f"noria-{namespace}"  # cluster-scoped: one per test namespace
    values = {
        'include "noria.fullname" .': role_name,
        'include "noria.serviceAccountName" .': "noria",
        ".Release.Namespace": namespace,
        ".Values.leaderElection.leaseName": LEASE,
    }
    manifests = "\n---\n".join(
        render(t, values) for t in ("serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml",
                                    "leader-election-rbac.yaml")
    )
    cluster.kubectl("apply", "--server-side", "--validate=strict", "-f", "-", input=manifests)
    yield f"system:serviceaccount:{namespace}:noria"
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", role_name, "--wait=false", check=False)


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
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
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
    ("patch", "trainingpipelines.noria.dev"),
    ("patch", "trainingpipelines/status.noria.dev"),
    ("create", "modelversions.noria.dev"),
    ("patch", "modelversions/status.noria.dev"),
    ("patch", "rollouts/status.noria.dev"),
    ("update", "rollouts/finalizers.noria.dev"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("create", "configmaps"),
    ("list", "pods"),
    ("create", "deployments.apps"),
    ("patch", "services"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("create", "leases.coordination.k8s.io"),
    ("get", "leases.coordination.k8s.io", "noria-operator"),
    ("update", "leases.coordination.k8s.io", "noria-operator"),
    ("patch", "httproutes.gateway.networking.k8s.io"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "namespaces"),
]
DENIED = [
    ("get", "secrets"),
    ("delete", "trainingpipelines.noria.dev"),
    ("delete", "rollouts.noria.dev"),
    ("update", "trainingpipelines.noria.dev"),  # spec is the user's; only patches of metadata and status
    ("delete", "pods"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "httproutes.gateway.networking.k8s.io"),
    ("update", "leases.coordination.k8s.io", "someone-elses-lease"),  # only its own leader Lease
    ("delete", "leases.coordination.k8s.io", "noria-operator"),
    ("list", "leases.coordination.k8s.io"),
]


def test_operator_account_may_do_what_the_operator_does_and_no_more(
    cluster: Any, namespace: str, operator_account: str
) -> None:
    answers = access(cluster, operator_account, namespace, ALLOWED + DENIED)
    refused = [c for c in ALLOWED if not answers[c]]
    granted = [c for c in DENIED if answers[c]]
    assert not refused, f"the operator needs {refused}"
    assert not granted, f"the operator should not have {granted}"


def test_operator_account_touches_leases_in_its_own_namespace_only(cluster: Any, namespace: str,
                                                                  operator_account: str) -> None:
    elsewhere = [("create", "leases.coordination.k8s.io"), ("get", "leases.coordination.k8s.io", LEASE),
                 ("update", "leases.coordination.k8s.io", LEASE)]
    answers = access(cluster, operator_account, "kube-system", elsewhere)
    assert not any(answers.values()), f"the operator may touch leases outside its namespace: {answers}"


def test_operator_can_grant_the_router_its_role(cluster: Any, namespace: str, operator_account: str) -> None:
    cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(ROOT / "examples" / "03-rollout-canary" / "rollout.yaml")
    )
    rollout = json.loads(cluster.kubectl("get", "mro", "churn", "-n", namespace, "-o", "json").stdout)
    ref = RolloutRef(name="churn", namespace=namespace, uid=rollout["metadata"]["uid"])
    objects = yaml.safe_dump_all(router_rbac(ref))
    out = cluster.kubectl("create", "--as", operator_account, "-n", namespace, "-f", "-", input=objects, check=False)
    assert out.returncode == 0, out.stderr
    # and it is refused a Role that grants more than it holds
    wider = [o for o in router_rbac(ref) if o["kind"] == "Role"][0]
    wider["metadata"]["name"] = "wider"
    wider["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    out = cluster.kubectl("create", "--as", operator_account, "-n", namespace, "-f", "-",
                          input=json.dumps(wider), check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower()
