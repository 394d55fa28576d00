"""Noria's Argo CD health checks and actions on real objects from the test bed.

The Lua scripts of integrations/argocd/ run under gopher-lua (hack/luatest, Argo CD's argocd-cm
sandbox) on the objects the operator wrote: a Rollout healthy, mid-canary, paused for promotion,
paused by spec.paused, aborted; a TrainingPipeline training, ready and failed; ModelVersions
Candidate, Approved and Rejected. Each action is carried out as an Argo CD server carries it out: the
script changes the live object, and the JSON merge patch from the live object to the changed one is
sent to the API server; then the operator must act on it (promote, abort, retry, pause, resume,
approve, reject, retrain).

NORIA_ARGOCD_CAPTURE=1 also writes the objects, as seen, to integrations/argocd/noria.dev/<Kind>/
testdata/real_<name>.yaml, the source of the fixtures "from real objects" in health_test.yaml.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import secrets
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria import contracts
from rollout_helpers import (
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    start_stable,
    wait_for,
)
from training_helpers import classification_frame, pipeline_yaml, write_data

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KINDS = ROOT / "integrations" / "argocd" / "noria.dev"
# What the approve/reject actions write by default: Argo CD's identity at the API server.
ARGOCD_USER = "system:serviceaccount:argocd:argocd-server"
RESOURCE = {"Rollout": "rollouts.noria.dev", "ModelVersion": "modelversions.noria.dev",
            "TrainingPipeline": "trainingpipelines.noria.dev"}


@cache
def luatest() -> str:
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-luatest.sh")], capture_output=True, text=True,
                         check=False, timeout=900)
    assert out.returncode == 0, f"building hack/luatest failed:\n{out.stderr[-3000:]}"
    return str(Path(out.stdout.strip().splitlines()[-1]) / "luatest")


def lua(mode: str, script: Path, obj: dict, tmp_path: Path) -> Any:
    path = tmp_path / f"obj-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(obj))
    out = subprocess.run([luatest(), mode, str(script), str(path)], capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0, f"{script.relative_to(ROOT)} on {obj['metadata']['name']}: {out.stderr}"
    return json.loads(out.stdout)


def live(cluster, namespace: str, kind: str, name: str) -> dict:  # noqa: ANN001
    obj = get(cluster, namespace, RESOURCE[kind], name)
    assert obj is not None, f"{kind} {name} is gone"
    return obj


def health(cluster, namespace: str, kind: str, name: str, tmp_path: Path, capture: str | None = None) -> dict:  # noqa: ANN001
    obj = live(cluster, namespace, kind, name)
    verdict = lua("health", KINDS / kind / "health.lua", obj, tmp_path)
    if capture and os.environ.get("NORIA_ARGOCD_CAPTURE"):
        save_capture(kind, capture, obj, verdict)
    return verdict


def save_capture(kind: str, name: str, obj: dict, verdict: dict) -> None:
    """The object as a fixture: Kopf's bookkeeping annotation and managedFields left out (bulk, no
    bearing on health), the verdict it got in a comment for the person who adds it to health_test.yaml."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"].pop("managedFields", None)
    annotations = obj["metadata"].get("annotations") or {}
    for key in [k for k in annotations if k.endswith("last-handled-configuration")]:
        del annotations[key]
    path = KINDS / kind / "testdata" / f"real_{name}.yaml"
    path.write_text(f"# Captured from the test bed by tests/integration/test_argocd_fixtures.py; health: "
                    f"{json.dumps(verdict)}\n" + yaml.safe_dump(obj, sort_keys=False, width=120))


def discovered(cluster, namespace: str, kind: str, name: str, tmp_path: Path) -> dict[str, bool]:  # noqa: ANN001
    """{action: enabled} for the live object."""
    actions = lua("discovery", KINDS / kind / "actions" / "discovery.lua", live(cluster, namespace, kind, name),
                  tmp_path)
    return {a["name"]: not a.get("disabled", False) for a in actions}


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 patch turning ``old`` into ``new`` (what Argo CD's server computes and sends)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif value != old[key]:
            patch[key] = merge_patch(old[key], value)
    return patch


def run_action(cluster, namespace: str, kind: str, name: str, action: str, tmp_path: Path) -> dict:  # noqa: ANN001
    """Run ``action`` as Argo CD does and return the patch it sent."""
    before = live(cluster, namespace, kind, name)
    [changed] = lua("action", KINDS / kind / "actions" / action / "action.lua", before, tmp_path)
    assert changed["operation"] == "patch"
    patch = merge_patch(before, changed["resource"])
    assert patch and "status" not in patch, f"{action}: unexpected patch {patch}"
    cluster.kubectl("patch", RESOURCE[kind], name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    return patch


def annotation_patch(key: str, value: str) -> dict:
    return {"metadata": {"annotations": {key: value}}}


def observed(cluster, namespace: str, kind: str, name: str) -> bool:  # noqa: ANN001
    obj = live(cluster, namespace, kind, name)
    return int((obj.get("status") or {}).get("observedGeneration") or -1) >= int(obj["metadata"]["generation"])


def test_rollout_health_and_every_rollout_action_on_a_real_canary(cluster, namespace, operator_factory, store_claim,
                                                                   prometheus, tmp_path):
    manifest = rollout(namespace, {"canary": {"steps": [
        {"setWeight": 30}, {"pause": {"duration": "3s"}}, {"pause": {}}, {"setWeight": 100}]}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    traffic.stop()  # the verdicts need no traffic; fewer processes on a shared machine

    def verdict(capture: str | None = None) -> dict:
        return health(cluster, namespace, "Rollout", "churn", tmp_path, capture)

    # Given churn-v1 serving: Healthy; nothing to promote, abort or retry; pause offered.
    assert verdict("healthy") == {"status": "Healthy", "message": "churn-v1 is serving"}
    assert discovered(cluster, namespace, "Rollout", "churn", tmp_path) == {
        "promote": False, "promote-full": False, "abort": False, "retry": False, "pause": True, "resume": False}

    # When churn-v2 arrives, the canary walks: Progressing while a step runs.
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    mid = wait_for("mid-canary Progressing", lambda: (v := verdict())["status"] == "Progressing"
                   and rollout_status(cluster, namespace).get("canaryVersion") == "churn-v2" and v, timeout=90,
                   on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert mid["message"].split(":")[0] in ("StepInProgress", "WaitingForPods"), mid
    verdict("canaryProgressing")
    assert discovered(cluster, namespace, "Rollout", "churn", tmp_path)["abort"]

    # The indefinite pause step: Suspended, waiting for promote.
    held = wait_for("PausedForPromotion", lambda: (v := verdict())["status"] == "Suspended" and v, timeout=60,
                    on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert held["message"].startswith("PausedForPromotion"), held
    verdict("pausedForPromotion")

    # Argo CD's pause action sets spec.paused; the operator holds it (PausedByUser): Suspended.
    assert run_action(cluster, namespace, "Rollout", "churn", "pause", tmp_path) == {"spec": {"paused": True}}
    by_user = wait_for("PausedByUser", lambda: observed(cluster, namespace, "Rollout", "churn")
                       and (v := verdict())["message"].startswith("PausedByUser") and v, timeout=30,
                       on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert by_user["status"] == "Suspended"
    verdict("pausedByUser")
    actions = discovered(cluster, namespace, "Rollout", "churn", tmp_path)
    assert actions["resume"] and actions["abort"] and not actions["promote"] and not actions["pause"]

    assert run_action(cluster, namespace, "Rollout", "churn", "resume", tmp_path) == {"spec": {"paused": False}}
    wait_for("PausedForPromotion again", lambda: observed(cluster, namespace, "Rollout", "churn")
             and verdict()["message"].startswith("PausedForPromotion"), timeout=30,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))

    # abort: traffic back to churn-v1, the Rollout Degraded with the reason; retry offered.
    assert run_action(cluster, namespace, "Rollout", "churn", "abort", tmp_path) == annotation_patch(
        contracts.ANNOTATION_ABORT, "true")
    aborted = wait_for("Degraded", lambda: (v := verdict())["status"] == "Degraded" and v, timeout=30,
                       on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert aborted["message"].startswith("AbortedByUser"), aborted
    verdict("aborted")
    st = rollout_status(cluster, namespace)
    assert st["stableVersion"] == "churn-v1" and not st.get("canaryVersion")
    actions = discovered(cluster, namespace, "Rollout", "churn", tmp_path)
    assert actions["retry"] and not actions["abort"] and not actions["promote"]

    # retry brings churn-v2 back through the steps; promote passes the indefinite pause.
    run_action(cluster, namespace, "Rollout", "churn", "retry", tmp_path)
    wait_for("churn-v2 retried and held for promotion", lambda: verdict()["message"].startswith("PausedForPromotion"),
             timeout=90, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert run_action(cluster, namespace, "Rollout", "churn", "promote", tmp_path) == annotation_patch(
        contracts.ANNOTATION_PROMOTE, contracts.PROMOTE_ONCE)
    wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2"
             and verdict()["status"] == "Healthy", timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))

    # promote-full skips every remaining step of churn-v3.
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
    # Once its pods serve (the operator consumes a promote that arrives before, doing nothing: see
    # docs/operations/argocd.md).
    wait_for("churn-v3 in canary", lambda: (rollout_status(cluster, namespace).get("weights") or {}).get("churn-v3")
             and discovered(cluster, namespace, "Rollout", "churn", tmp_path)["promote-full"], timeout=90)
    assert run_action(cluster, namespace, "Rollout", "churn", "promote-full", tmp_path) == annotation_patch(
        contracts.ANNOTATION_PROMOTE, contracts.PROMOTE_FULL)
    wait_for("churn-v3 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v3"
             and verdict()["status"] == "Healthy", timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert condition(rollout_status(cluster, namespace), "Degraded").get("status") == "False"


def test_pipeline_and_model_version_health_with_retrain_approve_reject_on_real_runs(
        cluster, namespace, operator_factory, store_claim, tmp_path):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "gated", classification_frame(400))
    tiny = write_data(cluster.store_dir, namespace, "tiny", classification_frame(30))
    operator_factory(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("gated", source, approval="manual"))
    # A run that fails (too few rows), side by side: its verdict is read at the end.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("tiny", tiny, min_rows=1000))

    def pipeline(name: str, capture: str | None = None) -> dict:
        return health(cluster, namespace, "TrainingPipeline", name, tmp_path, capture)

    def version(name: str, capture: str | None = None) -> dict:
        return health(cluster, namespace, "ModelVersion", name, tmp_path, capture)

    def stage(name: str) -> str | None:
        return ((get(cluster, namespace, "modelversion", name) or {}).get("status") or {}).get("stage")

    # A run in progress: Progressing.
    training = wait_for("gated training", lambda: (v := pipeline("gated"))["message"].startswith("RunInProgress")
                        and v, timeout=120)
    assert training["status"] == "Progressing"
    pipeline("gated", "training")

    # The trained version waits for a person: Suspended, approve and reject offered.
    wait_for("gated-v1 Candidate", lambda: stage("gated-v1") == contracts.CANDIDATE, timeout=180)
    assert version("gated-v1", "candidate")["status"] == "Suspended"
    assert discovered(cluster, namespace, "ModelVersion", "gated-v1", tmp_path) == {"approve": True, "reject": True}
    assert run_action(cluster, namespace, "ModelVersion", "gated-v1", "approve", tmp_path) == annotation_patch(
        contracts.ANNOTATION_APPROVE, ARGOCD_USER)
    wait_for("gated-v1 Approved", lambda: stage("gated-v1") == contracts.APPROVED, timeout=30)
    assert version("gated-v1", "approved") == {"status": "Healthy", "message": "Approved"}
    last = get(cluster, namespace, "modelversion", "gated-v1")["status"]["history"][-1]
    assert last["by"] == f"user/{ARGOCD_USER}", last  # who decided, as the API server saw the request
    assert discovered(cluster, namespace, "ModelVersion", "gated-v1", tmp_path) == {"approve": False, "reject": False}
    ready = wait_for("gated Healthy", lambda: (v := pipeline("gated"))["status"] == "Healthy" and v, timeout=30)
    assert ready["message"] == "champion is gated-v1"
    pipeline("gated", "ready")

    # retrain from Argo CD: one more run, whose version is then rejected: Degraded with the reason.
    assert discovered(cluster, namespace, "TrainingPipeline", "gated", tmp_path) == {"retrain": True}
    patch = run_action(cluster, namespace, "TrainingPipeline", "gated", "retrain", tmp_path)
    assert list(patch["metadata"]["annotations"]) == [contracts.ANNOTATION_RETRAIN]
    wait_for("gated-v2 Candidate", lambda: stage("gated-v2") == contracts.CANDIDATE, timeout=180)
    run_action(cluster, namespace, "ModelVersion", "gated-v2", "reject", tmp_path)
    wait_for("gated-v2 Rejected", lambda: stage("gated-v2") == contracts.REJECTED, timeout=30)
    rejected = version("gated-v2", "rejected")
    assert rejected["status"] == "Degraded" and ARGOCD_USER in rejected["message"], rejected
    assert pipeline("gated")["status"] == "Healthy"  # the champion still serves

    # The run that failed: Degraded with the trainer's reason.
    failed = wait_for("tiny Degraded", lambda: (v := pipeline("tiny"))["status"] == "Degraded" and v, timeout=180)
    assert failed["message"].startswith("TrainerFailed") and "1000" in failed["message"], failed
    pipeline("tiny", "runFailed")


def test_argo_cds_approve_passes_the_charts_admission_policy_only_as_configured(cluster, namespace, tmp_path):
    """docs/operations/argocd.md, "Approve and reject": with Argo CD's identity in an approver group,
    the approve action's patch, sent as that identity, is admitted by the chart's policy; written
    with another name, or sent by an identity outside the groups, it is refused and nothing changes."""
    helm = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True,
                          check=False, timeout=900)
    assert helm.returncode == 0, helm.stderr[-3000:]
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    rendered = subprocess.run(
        [str(Path(helm.stdout.strip().splitlines()[-1]) / "helm"), "template", f"noria-{namespace}",
         str(ROOT / "charts" / "noria"), "--namespace", namespace, "--show-only", "templates/admission-policy.yaml",
         "--set-json", 'admission.approverGroups=["noria-approvers","system:serviceaccounts:argocd"]',
         "--set-json", f"admission.namespaceSelector={json.dumps(selector)}"],
        capture_output=True, text=True, check=False, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    cluster.kubectl("apply", "--server-side", "-f", "-", input=rendered.stdout)
    # RBAC lets Argo CD's server patch (as the standard install's ClusterRole does): the policy decides.
    cluster.kubectl("apply", "-f", "-", input=f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: argocd-server-patch, namespace: {namespace}}}
rules: [{{apiGroups: [noria.dev], resources: [modelversions], verbs: [get, patch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: argocd-server-patch, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: argocd-server-patch}}
subjects:
  - {{kind: ServiceAccount, name: argocd-server, namespace: argocd}}
  - {{kind: ServiceAccount, name: argocd-server, namespace: gitops}}
""")
    for n in (1, 2, 3):
        mv = {"apiVersion": contracts.API_VERSION, "kind": "ModelVersion",
              "metadata": {"name": f"churn-v{n}", "namespace": namespace},
              "spec": {"pipeline": "churn", "version": n, "artifact": {
                  "uri": f"file:///var/lib/noria/store/{namespace}/churn/v{n}/model.skops", "digest": "sha256:" + "0" * 64}}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(mv))
        cluster.kubectl("patch", "modelversion", f"churn-v{n}", "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {"stage": contracts.CANDIDATE}}))
    # Impersonating a ServiceAccount's user name gives it the ServiceAccount's groups, as its token would.
    as_argocd = [f"--as={ARGOCD_USER}"]
    elsewhere = "system:serviceaccount:gitops:argocd-server"  # an Argo CD whose groups are not approvers

    def send(script: Path, name: str, who: list[str]) -> subprocess.CompletedProcess:
        before = live(cluster, namespace, "ModelVersion", name)
        [changed] = lua("action", script, before, tmp_path)
        patch = merge_patch(before, changed["resource"])
        return cluster.kubectl(*who, "patch", "modelversion", name, "-n", namespace, "--type=merge",
                               "-p", json.dumps(patch), check=False)

    # The policy reaches the API server's admission chain a moment after it is created: probe on
    # churn-v3 with a new value each time (rewriting the same value changes nothing and is admitted).
    probes = itertools.count()
    wait_for("the policy to refuse a write", lambda: cluster.kubectl(
        *as_argocd, "annotate", "-n", namespace, "modelversion", "churn-v3",
        f"{contracts.ANNOTATION_REJECT}=probe-{next(probes)}", "--overwrite", check=False).returncode != 0, timeout=60)

    generator = importlib.util.spec_from_file_location("generate_argocd_cm", ROOT / "integrations" / "argocd"
                                                       / "generate_argocd_cm.py")
    assert generator and generator.loader
    module = importlib.util.module_from_spec(generator)
    generator.loader.exec_module(module)

    def approve_script_for(user: str) -> Path:
        """approve's action.lua as the generator writes it into argocd-cm for ``user``."""
        cm = yaml.safe_load(module.render(user))["data"]["resource.customizations.actions.noria.dev_ModelVersion"]
        path = tmp_path / f"approve-{secrets.token_hex(3)}.lua"
        path.write_text(next(d["action.lua"] for d in yaml.safe_load(cm)["definitions"] if d["name"] == "approve"))
        return path

    # Argo CD's own name, from an identity outside the approver groups: refused.
    refused = send(approve_script_for(elsewhere), "churn-v1", [f"--as={elsewhere}"])
    assert refused.returncode != 0, "admitted without the approver group"
    assert "only members of noria-approvers, system:serviceaccounts:argocd" in refused.stderr, refused.stderr

    # As configured (the default script, sent as the identity in the group): admitted.
    admitted = send(KINDS / "ModelVersion" / "actions" / "approve" / "action.lua", "churn-v1", as_argocd)
    assert admitted.returncode == 0, admitted.stderr
    annotations = live(cluster, namespace, "ModelVersion", "churn-v1")["metadata"]["annotations"]
    assert annotations[contracts.ANNOTATION_APPROVE] == ARGOCD_USER

    # Generated for another name than the identity Argo CD really sends as: refused, naming the rule.
    refused = send(approve_script_for("argocd"), "churn-v2", as_argocd)
    assert refused.returncode != 0 and "must hold your own user name" in refused.stderr, refused.stderr
    assert contracts.ANNOTATION_APPROVE not in (live(cluster, namespace, "ModelVersion", "churn-v2")["metadata"]
                                                .get("annotations") or {})
