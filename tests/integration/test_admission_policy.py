"""The chart's ValidatingAdmissionPolicy on the real API server: who may set, change or remove the
annotations that steer Noria, tried as each kind of user through impersonation (``kubectl --as
--as-group``; the test bed's admin is in system:masters and may impersonate).

The policy is what the chart renders: real ``helm template`` (Helm built from the Go module proxy
by hack/build-helm.sh and cached under ~/.cache/noria), with the chart's default values except the
binding's namespaceSelector, narrowed to this module's namespace so the rest of the suite, which
annotates as the admin, is not governed, and admission.approverUsernames, which names one
ServiceAccount (standing for Argo CD's argocd-server) so that its neighbour in the same namespace,
which shares every group with it, can be refused.
"""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria_testbed.processes import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "noria"
EXAMPLES = ROOT / "examples"
APPROVERS = ["--as-group=noria-approvers"]
# Two ServiceAccounts of one namespace, as Argo CD's are: the server (which runs approve/reject
# actions) is listed in admission.approverUsernames; the application controller is not. Both are in
# the group system:serviceaccounts:<namespace>, so only a user name can tell them apart.
LISTED_SA, UNLISTED_SA = "argocd-server", "argocd-application-controller"
BUILD_HELM = ROOT / "hack" / "build-helm.sh"


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary (built once from the Go module proxy, then cached by version)."""
    built = subprocess.run(["bash", str(BUILD_HELM)], capture_output=True, text=True)
    assert built.returncode == 0, f"{BUILD_HELM} failed:\n{built.stderr[-3000:]}"
    return Path(built.stdout.strip().splitlines()[-1]) / "helm"


def render_policy(helm: Path, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    """The policy and binding exactly as ``helm template`` renders them from the chart."""
    out = subprocess.run([str(helm), "template", release, str(CHART), "--namespace", namespace,
                          "--show-only", "templates/admission-policy.yaml", *sets],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_chart_renders_the_policy_by_default_and_can_leave_it_out(helm: Path) -> None:
    docs = render_policy(helm, "noria", "noria-system")
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding")]
    policy, binding = docs
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] == "noria-annotations"
    assert binding["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert "'system:serviceaccount:noria-system:noria'" in variables["isOperator"]
    assert '["noria-approvers"]' in variables["isApprover"]
    off = subprocess.run([str(helm), "template", "noria", str(CHART), "--set", "admission.enabled=false",
                          "--show-only", "templates/admission-policy.yaml"], capture_output=True, text=True)
    assert off.returncode != 0 and "could not find template" in off.stderr


class Kube:
    def __init__(self, cluster: Any, namespace: str, operator_user: str) -> None:
        self.cluster, self.namespace, self.operator_user = cluster, namespace, operator_user

    def annotate(self, who: list[str], ref: str, *changes: str) -> Any:
        return self.cluster.kubectl(*who, "annotate", "--overwrite", "-n", self.namespace, ref, *changes, check=False)

    def annotations(self, ref: str) -> dict[str, str]:
        obj = json.loads(self.cluster.kubectl("get", "-n", self.namespace, ref, "-o", "json").stdout)
        return obj["metadata"].get("annotations") or {}


@pytest.fixture(scope="module")
def kube(cluster: Any, helm: Path) -> Any:
    namespace = f"t-admission-{secrets.token_hex(3)}"
    fullname = f"noria-{namespace}"  # the release name; the chart's full name and ServiceAccount name too
    cluster.kubectl("create", "namespace", namespace)
    # Everyone tried here may patch Noria's objects (RBAC allows it): what stops them is the policy.
    rbac = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: noria-editor, namespace: {namespace}}}
rules:
  - apiGroups: [noria.dev]
    resources: [modelversions, rollouts, trainingpipelines]
    verbs: [get, list, create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: noria-editors, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: noria-editor}}
subjects:
  - {{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}}
  - {{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}}
  - {{kind: User, name: mallory, apiGroup: rbac.authorization.k8s.io}}
  - {{kind: ServiceAccount, name: {fullname}, namespace: {namespace}}}
  - {{kind: ServiceAccount, name: {LISTED_SA}, namespace: {namespace}}}
  - {{kind: ServiceAccount, name: {UNLISTED_SA}, namespace: {namespace}}}
"""
    cluster.kubectl("apply", "-f", "-", input=rbac)
    cluster.kubectl("create", "serviceaccount", "-n", namespace, LISTED_SA)
    cluster.kubectl("create", "serviceaccount", "-n", namespace, UNLISTED_SA)
    for folder in ("01-training-pipeline/pipeline.yaml", "02-model-version-import", "03-rollout-canary"):
        cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(EXAMPLES / folder))
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    docs = render_policy(helm, fullname, namespace, "--set-json", f"admission.namespaceSelector={json.dumps(selector)}",
                         "--set-json", f"admission.approverUsernames={json.dumps([service_account(namespace, LISTED_SA)])}")
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
    k = Kube(cluster, namespace, f"system:serviceaccount:{namespace}:{fullname}")
    # A new policy takes a moment to reach the API server's admission chain: probe with a new value
    # each time (rewriting the same value changes nothing, which the policy rightly admits).
    probes = itertools.count()
    wait_until("the admission policy to refuse a write", timeout=60,
               check=lambda: k.annotate(["--as=mallory"], "tp/churn",
                                        f"noria.dev/retrain=probe-{next(probes)}").returncode != 0)
    assert k.annotate(alice(), "tp/churn", "noria.dev/retrain-").returncode == 0  # a probe admitted before
    # The API server type-checks the policy's CEL against the three CRD schemas: no warning may remain.
    checked = wait_until_value(lambda: json.loads(cluster.kubectl(
        "get", "validatingadmissionpolicy", f"{fullname}-annotations", "-o", "json").stdout)["status"]["typeChecking"])
    assert not checked.get("expressionWarnings"), checked
    yield k
    cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", f"{fullname}-annotations",
                    "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def wait_until_value(read: Any, timeout: float = 30) -> Any:
    box: dict[str, Any] = {}

    def probe() -> bool:
        box["value"] = read()
        return box["value"] is not None

    wait_until("a value", probe, timeout=timeout)
    return box["value"]


def alice(*extra: str) -> list[str]:
    return ["--as=alice", *APPROVERS, *extra]




def operator(kube: Kube) -> list[str]:
    return [f"--as={kube.operator_user}"]


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# (who, object, annotation change, allowed, fragment of the refusal)
CASES = [
    ("alice in noria-approvers approves as herself", alice(), "mv/churn-v1", "noria.dev/approve=alice", True, ""),
    ("mallory, not an approver, approves as herself", ["--as=mallory"], "mv/churn-v1", "noria.dev/approve=mallory",
     False, "may set noria.dev/approve; mallory is neither in these groups nor one of these users"),
    ("alice approves in bob's name", alice(), "mv/churn-v1", "noria.dev/approve=bob", False,
     "noria.dev/approve and noria.dev/reject must hold your own user name (alice)"),
    ("alice approves with a bare true", alice(), "mv/churn-v1", "noria.dev/approve=true", False,
     "must hold your own user name (alice)"),
    ("alice rejects as herself", alice(), "mv/churn-v1", "noria.dev/reject=alice", True, ""),
    ("mallory promotes a rollout", ["--as=mallory"], "rollouts.noria.dev/churn", "noria.dev/promote=true", False,
     "may set noria.dev/promote"),
    ("mallory aborts a rollout", ["--as=mallory"], "rollouts.noria.dev/churn", "noria.dev/abort=true", False,
     "may set noria.dev/abort"),
    ("mallory asks for a retry", ["--as=mallory"], "rollouts.noria.dev/churn", "noria.dev/retry=true", False,
     "may set noria.dev/retry"),
    ("mallory asks for a retrain", ["--as=mallory"], "tp/churn", "noria.dev/retrain=now", False,
     "may set noria.dev/retrain"),
    ("alice asks for a retrain", alice(), "tp/churn", "noria.dev/retrain=2026-12-02", True, ""),
    ("a cluster admin outside the group promotes", [], "rollouts.noria.dev/churn", "noria.dev/promote=true", False,
     "may set noria.dev/promote"),
    ("mallory writes an annotation Noria does not read", ["--as=mallory"], "mv/churn-v1", "team=fraud", True, ""),
    ("mallory with the approver group (as an identity provider would say) approves as herself",
     ["--as=mallory", *APPROVERS], "mv/churn-v1", "noria.dev/approve=mallory", True, ""),
]


@pytest.mark.parametrize(("who", "ref", "change", "allowed", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_who_may_set_a_steering_annotation(kube: Kube, who: list[str], ref: str, change: str, allowed: bool,
                                           fragment: str) -> None:
    key, _, value = change.partition("=")
    kube.annotate(alice(), ref, f"{key}-")  # start from nothing (alice may remove)
    out = kube.annotate(who, ref, change)
    stored = kube.annotations(ref).get(key)
    if allowed:
        assert out.returncode == 0, out.stderr
        assert stored == value
    else:
        assert out.returncode != 0, f"{change} by {who} was admitted"
        assert "ValidatingAdmissionPolicy" in out.stderr and fragment in out.stderr, out.stderr
        assert stored is None  # nothing was written


def test_a_listed_service_account_may_steer_and_its_namespace_neighbour_may_not(kube: Kube) -> None:
    """admission.approverUsernames admits one ServiceAccount by name, the way an admin admits Argo
    CD's argocd-server for its approve/reject actions. Impersonating a ServiceAccount's user name
    gives it the ServiceAccount's groups (system:serviceaccounts, system:serviceaccounts:<ns>), as
    its token would, so the neighbour really shares every group with the listed one."""
    listed, unlisted = (service_account(kube.namespace, name) for name in (LISTED_SA, UNLISTED_SA))
    allowed = f"only members of noria-approvers, or the users {listed}, may set"
    mv, rollout = "mv/churn-v1", "rollouts.noria.dev/churn"
    for ref, key in ((mv, "noria.dev/approve"), (mv, "noria.dev/reject"), (rollout, "noria.dev/promote")):
        kube.annotate(alice(), ref, f"{key}-")

    # the neighbour: refused, with a message that names who may, and nothing is stored
    out = kube.annotate([f"--as={unlisted}"], mv, f"noria.dev/approve={unlisted}")
    assert out.returncode != 0, "an unlisted ServiceAccount of the listed one's namespace approved"
    assert f"{allowed} noria.dev/approve; {unlisted} is neither in these groups nor one of these users" \
        in out.stderr, out.stderr
    assert "noria.dev/approve" not in kube.annotations(mv)
    out = kube.annotate([f"--as={unlisted}"], rollout, "noria.dev/promote=true")
    assert out.returncode != 0 and f"{allowed} noria.dev/promote" in out.stderr, out.stderr

    # the listed one: approves in its own name only, as a person in an approver group must
    out = kube.annotate([f"--as={listed}"], mv, "noria.dev/approve=alice")
    assert out.returncode != 0 and f"must hold your own user name ({listed})" in out.stderr, out.stderr
    for key in ("noria.dev/approve", "noria.dev/reject"):
        out = kube.annotate([f"--as={listed}"], mv, f"{key}={listed}")
        assert out.returncode == 0, out.stderr
        assert kube.annotations(mv)[key] == listed
    assert kube.annotate([f"--as={listed}"], rollout, "noria.dev/promote=true").returncode == 0
    # what it set, the neighbour may not remove; it may, as an approver may
    out = kube.annotate([f"--as={unlisted}"], rollout, "noria.dev/promote-")
    assert out.returncode != 0 and "or the Noria operator may remove noria.dev/promote" in out.stderr, out.stderr
    assert kube.annotate([f"--as={listed}"], rollout, "noria.dev/promote-").returncode == 0
    assert "noria.dev/promote" not in kube.annotations(rollout)
    # ... and being listed gives no operator rights: the first stage of a version stays the operator's
    out = kube.annotate([f"--as={listed}"], mv, "noria.dev/initial-stage=Approved")
    assert out.returncode != 0 and "written by the Noria operator only" in out.stderr, out.stderr
    assert kube.annotate(alice(), mv, "noria.dev/approve-", "noria.dev/reject-").returncode == 0


def test_only_approvers_and_the_operator_remove_what_the_operator_consumes(kube: Kube) -> None:
    ref = "rollouts.noria.dev/churn"
    assert kube.annotate(alice(), ref, "noria.dev/promote=true").returncode == 0
    refused = kube.annotate(["--as=mallory"], ref, "noria.dev/promote-")
    assert refused.returncode != 0 and "or the Noria operator may remove noria.dev/promote" in refused.stderr
    assert kube.annotations(ref).get("noria.dev/promote") == "true"
    assert kube.annotate(operator(kube), ref, "noria.dev/promote-").returncode == 0  # consumed after acting
    assert "noria.dev/promote" not in kube.annotations(ref)
    # ... but the operator cannot set one itself: promotion is a person's decision
    out = kube.annotate(operator(kube), ref, "noria.dev/promote=true")
    assert out.returncode != 0 and "may set noria.dev/promote" in out.stderr


def test_nobody_but_an_approver_changes_a_recorded_approval(kube: Kube) -> None:
    ref = "mv/churn-v1"
    kube.annotate(alice(), ref, "noria.dev/approve-")
    assert kube.annotate(alice(), ref, "noria.dev/approve=alice").returncode == 0
    out = kube.annotate(["--as=mallory"], ref, "noria.dev/approve=mallory")
    assert out.returncode != 0 and kube.annotations(ref)["noria.dev/approve"] == "alice"
    out = kube.annotate(["--as=mallory"], ref, "noria.dev/approve-")
    assert out.returncode != 0 and kube.annotations(ref)["noria.dev/approve"] == "alice"


def test_a_model_version_cannot_be_created_already_approved_except_by_the_operator(kube: Kube) -> None:
    doc = yaml.safe_load((EXAMPLES / "02-model-version-import" / "modelversion.yaml").read_text())
    doc["metadata"] = {"name": f"churn-v{secrets.randbelow(10**6) + 2}",
                       "annotations": {"noria.dev/initial-stage": "Approved"}}
    doc["spec"]["version"] = int(doc["metadata"]["name"].rsplit("v", 1)[1])
    manifest = json.dumps(doc)
    out = kube.cluster.kubectl("--as=mallory", *APPROVERS, "create", "-n", kube.namespace, "-f", "-", input=manifest,
                               check=False)
    assert out.returncode != 0 and "written by the Noria operator only" in out.stderr
    out = kube.cluster.kubectl(*operator(kube), "create", "-n", kube.namespace, "-f", "-", input=manifest, check=False)
    assert out.returncode == 0, out.stderr


def test_creating_with_an_approval_in_someone_elses_name_is_refused(kube: Kube) -> None:
    doc = yaml.safe_load((EXAMPLES / "02-model-version-import" / "modelversion.yaml").read_text())
    doc["metadata"] = {"name": "churn-v900", "annotations": {"noria.dev/approve": "bob"}}
    doc["spec"]["version"] = 900
    out = kube.cluster.kubectl(*alice(), "create", "-n", kube.namespace, "-f", "-", input=json.dumps(doc),
                               check=False)
    assert out.returncode != 0 and "must hold your own user name (alice)" in out.stderr


def test_the_whole_chart_renders_with_helm_and_the_api_server_accepts_it(cluster: Any, helm: Path) -> None:
    """The policy ships inside a chart that installs as a whole: every rendered object passes the API
    server's validation (server-side dry run), the policy's CEL included."""
    namespace = f"t-chart-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        out = subprocess.run([str(helm), "template", "noria", str(CHART), "--namespace", namespace,
                              "--set-json", 'store.trustedArtifactPrefixes=["s3://models/{namespace}/"]'],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["NORIA_TRUSTED_ARTIFACT_PREFIXES"] == "s3://models/{namespace}/"
        applied = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-",
                                  input=out.stdout, check=False)
        assert applied.returncode == 0, applied.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
