"""The chart installed by real Helm on the test bed, as a platform team installs it.

Given the chart installed with ``helm install`` (Helm built from its Go module, cached), the
operator runs from the chart's Deployment — two replicas electing a leader — as processes the node
agent starts from the operator image's entrypoint (the Deployment gives only ``args``), each with
a token of the chart's ServiceAccount and nothing else, so it acts with the chart's RBAC alone;
when a TrainingPipeline and a Rollout are applied, a version is trained and served; after
``helm upgrade`` changes a value, the new pods carry it and the operator keeps working: a retrain
asked by an approver (the chart's admission policy refuses anyone else) trains a second version
that the canary takes to 50% and, once the approver promotes it, to 100% (the operator removes the
consumed annotation, which the policy admits only from the chart's ServiceAccount); after ``helm uninstall`` no chart object is left and deleting the
Rollout, the pipeline and the ModelVersions completes (nothing waits on a finalizer of an operator
that is gone). The operator's logs hold no refusal by the API server: the chart's RBAC covered
every call it made.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from helm_helpers import (
    CHART,
    Helm,
    build_helm,
    container_pid,
    env_of,
    items,
    operator_pods,
    process_environ,
    ready,
    release_objects,
    values_for_testbed,
)
from noria_testbed.processes import free_port
from rollout_helpers import rollout, rollout_status
from training_helpers import POD_STORE, classification_frame, pipeline_yaml, wait_for, write_data

pytestmark = pytest.mark.integration

APPROVER = ["--as=alice", "--as-group=noria-approvers"]
REFUSALS = ("HTTP/1.1 403", "Forbidden", "forbidden")  # how an RBAC refusal shows in Kopf's and lightkube's logs


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    return build_helm()


def operator_logs(cluster: Any, namespace: str) -> str:  # noqa: ANN401
    """The logs of every operator pod that ran in ``namespace`` (deleted ones too: the agent keeps them)."""
    pods = cluster.node_agent.root / "pods" / namespace
    return "".join(f"==> {d.name} <==\n{cluster.node_agent.pod_log(namespace, d.name)}"
                   for d in sorted(pods.iterdir())) if pods.exists() else ""


def whoami(cluster: Any, kubeconfig: str) -> str:  # noqa: ANN401
    out = cluster.kubectl("auth", "whoami", "--kubeconfig", kubeconfig, "-o", "json")
    return json.loads(out.stdout)["status"]["userInfo"]["username"]


def serving(cluster: Any, namespace: str, version: str) -> bool:  # noqa: ANN401
    status = rollout_status(cluster, namespace)
    return status.get("phase") == "Healthy" and status.get("stableVersion") == version


def test_a_pod_acts_with_its_own_service_account_token_and_a_missing_permission_shows(cluster: Any,  # noqa: ANN401
                                                                                        namespace: str) -> None:
    kubectl = cluster.binaries / "kubectl"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: pod-reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pod-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: pod-reader, namespace: {namespace}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: with-token}}
spec:
  serviceAccountName: pod-reader
  restartPolicy: Never
  containers:
    - name: kubectl
      image: kubectl
      command: [sh, -c]
      args: ["{kubectl} auth whoami -o jsonpath='{{.status.userInfo.username}}'; echo; {kubectl} get pods -o name; {kubectl} get secrets; true"]
---
apiVersion: v1
kind: Pod
metadata: {{name: without-token}}
spec:
  serviceAccountName: pod-reader
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
    - name: kubectl
      image: kubectl
      command: [sh, -c, 'echo "KUBECONFIG=${{KUBECONFIG:-unset}}"']
""")
    for pod in ("with-token", "without-token"):
        wait_for(f"pod {pod} Succeeded", lambda p=pod: cluster.kubectl(
            "get", "pod", p, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout == "Succeeded", timeout=60)
    with_token = cluster.node_agent.pod_log(namespace, "with-token")
    assert f"system:serviceaccount:{namespace}:pod-reader" in with_token
    assert "pod/with-token" in with_token  # what its Role grants works
    assert f'cannot list resource "secrets" in API group "" in the namespace "{namespace}"' in with_token
    assert str(cluster.kubeconfig) not in with_token
    assert "KUBECONFIG=unset" in cluster.node_agent.pod_log(namespace, "without-token")


def test_helm_install_runs_the_operator_under_its_own_token_through_upgrade_and_uninstall(  # noqa: PLR0915
        cluster: Any, prometheus: Any, namespace: str, store_claim: Any, helm_binary: Path,  # noqa: ANN401
        tmp_path: Path) -> None:
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = time.monotonic() - began - sum(phases.values())

    suffix = secrets.token_hex(3)
    release, release_ns = f"noria-{suffix}", f"t-helm-{suffix}"
    account = f"system:serviceaccount:{release_ns}:{release}"  # the chart's ServiceAccount is the full name
    helm = Helm(helm_binary, cluster.kubeconfig, tmp_path)
    values = helm.values_file("testbed", values_for_testbed(
        store_dir=cluster.store_dir, app_namespace=namespace, prometheus_url=prometheus.url,
        liveness_port=free_port(), metrics_port=free_port()))
    cluster.kubectl("create", "namespace", release_ns)
    uninstalled = False
    try:
        # ---- install ------------------------------------------------------------------------------
        helm("install", release, str(CHART), "-n", release_ns, "-f", str(values), "--wait", "--timeout", "3m")
        pods = operator_pods(cluster, release_ns, release)
        assert len(pods) == 2 and all(ready(p) for p in pods), [p["status"] for p in pods]
        for pod in pods:
            environ = process_environ(container_pid(pod))
            assert environ["KUBECONFIG"] != str(cluster.kubeconfig)
            assert whoami(cluster, environ["KUBECONFIG"]) == account  # its own token, not the admin's
            assert environ.get("NORIA_TRAINER_IMAGE") == "noria-trainer:test"
        holder = wait_for("a leader holds the Lease", lambda: cluster.kubectl(
            "get", "lease", "noria-operator", "-n", release_ns, "-o", "jsonpath={.spec.holderIdentity}",
            check=False).stdout, timeout=30)
        assert holder in {p["metadata"]["name"] for p in pods}
        phase("install")

        # ---- a pipeline trains, a Rollout serves it ----------------------------------------------
        store_claim(namespace)
        pod_view = write_data(cluster.store_dir, namespace, "churn", classification_frame(400, seed=1))
        source = pod_view.replace(f"file://{POD_STORE}", f"file://{cluster.store_dir}")  # the store root in values
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("churn", source, min_rows=100))
        cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [
            {"setWeight": 50}, {"pause": {}}]}}))  # the second version waits for a person at 50%
        wait_for("churn-v1 trained and served", lambda: serving(cluster, namespace, "churn-v1"), timeout=150,
                 on_timeout=lambda: f"{rollout_status(cluster, namespace)}\n{operator_logs(cluster, release_ns)[-4000:]}")
        phase("v1 trained and served")

        # ---- upgrade: a changed value reaches the pods, the operator keeps working ------------------
        old_pods = {p["metadata"]["name"] for p in pods}
        helm("upgrade", release, str(CHART), "-n", release_ns, "-f", str(values), "--set", "workers.limit=50",
             "--wait", "--timeout", "3m")

        def upgraded_pods() -> list[dict[str, Any]] | None:
            now = operator_pods(cluster, release_ns, release)
            new = len(now) == 2 and not old_pods & {p["metadata"]["name"] for p in now}
            carry = all(ready(p) and env_of(p, "NORIA_WORKER_LIMIT") == "50" for p in now)
            return now if new and carry else None

        upgraded = wait_for("two new operator pods, ready, with the new value", upgraded_pods, timeout=90)
        for pod in upgraded:
            assert process_environ(container_pid(pod))["NORIA_WORKER_LIMIT"] == "50"
        phase("upgrade")

        # The chart's admission policy: RBAC lets alice and mallory patch pipelines and Rollouts, yet
        # only alice, an approver, may ask for a retrain or a promotion. The policy reaches the API server's admission chain a
        # moment after install, hence the wait.
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input="""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: noria-editor}
rules: [{apiGroups: [noria.dev], resources: [trainingpipelines, rollouts], verbs: [get, patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: noria-editors}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: noria-editor}
subjects:
  - {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
  - {kind: User, name: mallory, apiGroup: rbac.authorization.k8s.io}
""")

        def refused_to_mallory() -> Any:  # noqa: ANN401
            tried = cluster.kubectl("annotate", "--overwrite", "-n", namespace, "tp/churn", "--as=mallory",
                                    "--dry-run=server",  # admission runs, nothing lands
                                    f"noria.dev/retrain=probe-{time.time()}", check=False)
            return tried if tried.returncode else None

        refused = wait_for("the admission policy refuses a non-approver", refused_to_mallory, timeout=60)
        assert "noria-approvers" in refused.stderr, refused.stderr
        cluster.kubectl("annotate", "--overwrite", "-n", namespace, "tp/churn", *APPROVER,
                        "noria.dev/retrain=after-upgrade")
        def paused_for_a_person() -> bool:
            status = rollout_status(cluster, namespace)
            return status.get("canaryVersion") == "churn-v2" and status.get("phase") == "Paused"

        wait_for("churn-v2 trained, at 50% and paused for a person", paused_for_a_person, timeout=150,
                 on_timeout=lambda: f"{rollout_status(cluster, namespace)}\n"
                                    f"{operator_logs(cluster, release_ns)[-4000:]}")
        # The operator removes a promote it acted on; the policy admits that only from the chart's
        # ServiceAccount, which is who the operator now is.
        cluster.kubectl("annotate", "--overwrite", "-n", namespace, "mro/churn", *APPROVER, "noria.dev/promote=true")
        wait_for("churn-v2 promoted by the upgraded operator", lambda: serving(cluster, namespace, "churn-v2"),
                 timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        annotations = json.loads(cluster.kubectl("get", "mro", "churn", "-n", namespace, "-o", "json").stdout)[
            "metadata"].get("annotations") or {}
        assert "noria.dev/promote" not in annotations, annotations
        phase("v2 trained and rolled out")
        logs = operator_logs(cluster, release_ns)
        (tmp_path / "operators.log").write_text(logs)  # kept by pytest's tmp_path retention
        # Kopf logs in from KUBECONFIG (the pod's token kubeconfig): by its own reader, or through the
        # kubernetes/pykube client when one is installed (the dev venv has them, via dask-kubernetes).
        assert re.search(r"Activity 'login_(with_kubeconfig|via_client|via_pykube)' succeeded", logs), logs[-3000:]
        refusals = [line for line in logs.splitlines() if any(word in line for word in REFUSALS)]
        assert not refusals, "the chart's RBAC refused the operator:\n" + "\n".join(refusals[:20])

        # ---- uninstall: nothing of the chart is left, nothing is stuck ------------------------------
        helm("uninstall", release, "-n", release_ns, "--wait", "--timeout", "2m")
        uninstalled = True
        wait_for("operator pods gone", lambda: not items(cluster, "pods", "-n", release_ns,
                                                          f"-l=app.kubernetes.io/instance={release}"), timeout=60)
        assert release_objects(cluster, release, [release_ns, namespace]) == []
        assert helm("list", "-n", release_ns, "-q").stdout.strip() == ""
        claims = [c["metadata"]["name"] for c in items(cluster, "pvc", "-n", release_ns)]
        assert claims == ["noria-store"]  # helm.sh/resource-policy: keep: the models outlive the release
        for kind in ("rollouts.noria.dev/churn", "trainingpipelines.noria.dev/churn", "modelversions.noria.dev"):
            target = [kind, "--all"] if "/" not in kind else [kind]
            deleted = cluster.kubectl("delete", *target, "-n", namespace, "--timeout=30s", check=False)
            assert deleted.returncode == 0, f"deleting {kind} after uninstall: {deleted.stderr}"
        assert items(cluster, "rollouts.noria.dev,trainingpipelines.noria.dev,modelversions.noria.dev",
                     "-n", namespace) == []
        gone = cluster.kubectl("delete", "namespace", release_ns, "--timeout=60s", check=False)
        assert gone.returncode == 0, gone.stderr
        phase("uninstall and deletions")
        print("\nhelm install test phases: " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()))
    except BaseException:
        print("\n".join(helm.transcript))
        raise
    finally:
        if not uninstalled:
            helm("uninstall", release, "-n", release_ns, "--timeout", "1m", check=False)
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", "--ignore-not-found", check=False)
