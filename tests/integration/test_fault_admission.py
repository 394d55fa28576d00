"""Fault suite, bad input and security posture (issue #12 scenarios: invalid objects, security posture),
on the real kube-apiserver (its CRD schema, CEL rules and PodSecurity admission) with the real operator.

- Invalid objects the API server can judge are refused by it, naming the field.
- What only the operator can judge (a Rollout whose traffic provider points at an HTTPRoute that
  does not exist; a cron schedule that never fires) sets a condition naming the cause and posts ONE
  Warning Event, however many passes see it; fixing the spec clears the condition.
- Every pod the operator creates (model server, router, trainer) is admitted in a namespace that
  enforces the ``restricted`` Pod Security Standard, and only the router, which reads its own
  ConfigMap, gets a service-account token, bound to a Role limited to that.
"""

from __future__ import annotations

import json
import time

import pytest
from fault_helpers import event_count, warning_events
from noria import conditions as c
from noria.contracts import COMPONENT_ROUTER, COMPONENT_SERVER, COMPONENT_TRAINER, LABEL_COMPONENT
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


def rollout_manifest(namespace: str, name: str = "bad", **spec) -> str:  # noqa: ANN003
    base = {"source": {"pipeline": "churn"}, "replicas": 1, "strategy": {"immediate": {}}}
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout",
                       "metadata": {"name": name, "namespace": namespace}, "spec": {**base, **spec}})


def pipeline_manifest(namespace: str, schedule: str) -> str:
    doc = json.loads(pipeline_yaml("cron", "file:///var/lib/noria/store/datasets/x/cron/",
                                   triggers={"schedule": schedule}))
    doc["metadata"]["namespace"] = namespace
    return json.dumps(doc)


@pytest.mark.parametrize("document,field", [
    (lambda ns: rollout_manifest(ns, strategy={"canary": {"steps": [{"setWeight": 150}]}}), "setWeight"),
    (lambda ns: rollout_manifest(ns, replicas=-1), "replicas"),
    (lambda ns: rollout_manifest(ns, name="r" * 70), "name"),
    (lambda ns: rollout_manifest(ns, name="dotted.name"), "name"),
    (lambda ns: rollout_manifest(ns, analysis={"checks": [{"builtin": "errorRate", "max": "0.1"}],
                                               "interval": "soon"}), "interval"),
    (lambda ns: pipeline_manifest(ns, "99 99 99 99 99"), "schedule"),
    (lambda ns: pipeline_manifest(ns, "0 24 * * *"), "schedule"),
], ids=["weight-150", "negative-replicas", "name-too-long-for-derived-objects", "dotted-name", "bad-interval",
        "cron-out-of-range", "cron-hour-24"])
def test_fault_invalid_objects_are_refused_by_the_api_server_naming_the_field(cluster, namespace, document, field):
    out = cluster.kubectl("apply", "-f", "-", input=document(namespace), check=False)
    assert out.returncode != 0, f"accepted: {out.stdout}"
    assert field in out.stderr, out.stderr


def test_fault_a_missing_httproute_sets_one_condition_and_one_warning_event(cluster, namespace, operator_factory,
                                                                          store_claim, prometheus):
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env(prometheus.url))
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"immediate": {}}, traffic={
        "provider": "gatewayAPI", "gatewayAPI": {"httpRoute": "missing-route"}}))
    def failing(status: dict) -> dict:
        """The condition that reports the cause: Reconciled=False (ReconcileError) or Degraded (InvalidSpec)."""
        reconciled, degraded = condition(status, c.RECONCILED), condition(status, c.DEGRADED)
        if reconciled.get("status") == c.FALSE and reconciled.get("reason") == c.RECONCILE_ERROR:
            return reconciled
        if degraded.get("status") == c.TRUE and degraded.get("reason") == c.ROLLOUT_INVALID_SPEC:
            return degraded
        return {}

    st = wait_for("a condition naming the missing HTTPRoute", lambda: (s := rollout_status(cluster, namespace))
                  and "missing-route" in failing(s).get("message", "") and s, timeout=120,
                  on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
    reason = failing(st)["reason"]
    time.sleep(10)  # twenty passes at the test's 0.5 s interval
    assert failing(rollout_status(cluster, namespace)).get("reason") == reason
    posted = warning_events(cluster, namespace, "churn", reason)
    assert event_count(posted) == 1, [(e["reason"], e.get("count"), e["message"][:100]) for e in posted]
    # Fixed by the user: the condition clears (no new Warning).
    cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"traffic": {"provider": "router", "gatewayAPI": None}}}))
    wait_for("Healthy after the fix", lambda: rollout_status(cluster, namespace).get("phase") == "Healthy",
             timeout=120, on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
    assert not failing(rollout_status(cluster, namespace))
    assert event_count(warning_events(cluster, namespace, "churn", reason)) == 1


def test_fault_a_cron_that_never_fires_is_refused_or_flagged_once(cluster, namespace, operator_factory, store_claim):
    store_claim(namespace)
    out = cluster.kubectl("apply", "-f", "-", input=pipeline_manifest(namespace, "0 2 31 2 *"), check=False)
    if out.returncode != 0:  # the API server judged it: it must say which field
        assert "schedule" in out.stderr, out.stderr
        return
    operator_factory(namespace)
    st = wait_for("InvalidSpec on the pipeline", lambda: (s := (get(cluster, namespace, "trainingpipeline", "cron")
                                                               or {}).get("status") or {})
                  and c.INVALID_SPEC in json.dumps(s.get("conditions")) and s, timeout=60,
                  on_timeout=lambda: json.dumps(get(cluster, namespace, "trainingpipeline", "cron"))[:3000])
    assert "schedule" in json.dumps(st["conditions"])
    time.sleep(8)
    posted = warning_events(cluster, namespace, "cron", c.INVALID_SPEC)
    assert event_count(posted) == 1, [(e.get("count"), e["message"][:100]) for e in posted]
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert not jobs, "a pipeline with an invalid spec started a run"


def restricted_violations(pod: dict) -> list[str]:
    """What the ``restricted`` Pod Security Standard forbids, checked on the admitted spec as well."""
    spec, problems = pod["spec"], []
    pod_sc = spec.get("securityContext") or {}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        sc = container.get("securityContext") or {}
        name = container["name"]
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
            problems.append(f"{name}: runAsNonRoot not set")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities not dropped")
        profile = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {profile}")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append("host namespaces")
    return problems


def test_fault_every_pod_the_operator_creates_passes_the_restricted_standard(cluster, namespace, operator_factory,
                                                                            store_claim, prometheus):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    # The API server really enforces it here: a root pod is refused.
    refused = cluster.kubectl("run", "root-pod", "-n", namespace, "--image=busybox", "--restart=Never",
                              "--", "true", check=False)
    assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr
    manifest = rollout(namespace, {"immediate": {}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    traffic.stop()
    source = write_data(cluster.store_dir, namespace, "posture", classification_frame(300))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("posture", source))
    wait_for("a trainer pod admitted", lambda: json.loads(cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "noria.dev/pipeline=posture", "-o", "json").stdout)["items"],
        timeout=90, on_timeout=lambda: cluster.kubectl("get", "events", "-n", namespace).stdout[-3000:])
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]

    def component(pod: dict) -> str:
        return (pod["metadata"].get("labels") or {}).get(LABEL_COMPONENT, "?")

    assert {component(p) for p in pods} == {COMPONENT_SERVER, COMPONENT_ROUTER, COMPONENT_TRAINER}, [
        (p["metadata"]["name"], component(p)) for p in pods]
    for pod in pods:
        assert not restricted_violations(pod), (pod["metadata"]["name"], restricted_violations(pod))
        mounts_token = pod["spec"].get("automountServiceAccountToken", True) is not False
        if component(pod) == COMPONENT_ROUTER:
            account = pod["spec"]["serviceAccountName"]
            assert account != "default", "the router must not run as the namespace's default account"
            role = get(cluster, namespace, "role", account)
            assert role is not None
            for rule in role["rules"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
                if "configmaps" in rule["resources"]:
                    assert rule.get("resourceNames") == [account], rule
        else:
            assert not mounts_token, f"{pod['metadata']['name']} gets a token it does not need"
    forbidden = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate",
                                "-o", "json")
    assert not json.loads(forbidden.stdout)["items"], "a pod was refused by the restricted standard"
