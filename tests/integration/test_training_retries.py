"""Trainer retries on the real control plane (fault-suite scenarios "trainer fail / OOM / drain").

A trainer pod evicted by a node drain is replaced without counting as a failure, and the run
registers once; a trainer over its memory limit is OOMKilled (the node agent enforces
``resources.limits.memory`` as the kernel would), retried up to the Job's backoffLimit, and the
pipeline says so and what to raise; a data-validation failure is not retried (one pod); a first
run that fails is retried later by the operator, with no person involved; a pass that fails on the
API server (a quota refusing the Job) puts ReconcileError on the pipeline with one Warning Event; a
schedule the API server accepts but that never comes is InvalidSpec, with one Warning Event.
"""

from __future__ import annotations

import json

import pytest
from training_helpers import (
    classification_frame,
    condition,
    get,
    jobs,
    model_versions,
    pipeline_yaml,
    settle,
    status,
    wait_for,
    write_data,
)

pytestmark = pytest.mark.integration

NODE = "noria-local"
# A run that lasts long enough to be disrupted: a random search stopped by its time budget.
SLOW = {"tuning": {"strategy": "random", "trials": 1000, "space": {"C": [0.01, 10.0]}, "timeBudget": "15s"}}
NO_INITIAL_RETRY = {"NORIA_INITIAL_RETRY_SECONDS": "3600"}


def apply(cluster, namespace: str, manifest: str) -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def pods_of(cluster, namespace: str, job: str) -> list[dict]:  # noqa: ANN001
    return get(cluster, namespace, "pods", selector=f"job-name={job}") or []


def trainer_state(pod: dict) -> dict:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def job_condition(job: dict, type_: str) -> dict:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def events_of(cluster, namespace: str, name: str) -> list[dict]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                          "-o", "json").stdout
    return json.loads(out)["items"]


def test_a_drained_trainer_pod_is_replaced_without_counting_and_the_run_registers_once(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "drained", classification_frame(600))
    # backoffLimit 0: had the eviction counted as a failure, the Job would fail on it.
    operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="0")
    apply(cluster, namespace, pipeline_yaml("drained", source, extra=SLOW))
    first = wait_for("trainer running", lambda: next(
        (p for p in pods_of(cluster, namespace, "drained-r1") if trainer_state(p).get("running")), None), timeout=90)

    try:
        cluster.kubectl("drain", NODE, "--pod-selector=job-name=drained-r1", "--ignore-daemonsets",
                        "--delete-emptydir-data", "--timeout=90s")
    finally:
        cluster.kubectl("uncordon", NODE)  # the replacement lands on the node again (another node, on a cluster)

    mv = wait_for("drained-v1 registered", lambda: get(cluster, namespace, "modelversion", "drained-v1"), timeout=240,
                  on_timeout=lambda: json.dumps(status(cluster, namespace, "drained"), indent=1))
    [job] = jobs(cluster, namespace, "drained")
    assert (job.get("status") or {}).get("succeeded") == 1
    assert not (job.get("status") or {}).get("failed"), "the evicted pod was counted as a failure"
    pods = pods_of(cluster, namespace, "drained-r1")
    assert first["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}, "the evicted pod ran on"
    st = wait_for("run recorded", lambda: (s := status(cluster, namespace, "drained")).get("lastRuns") and s)
    assert st["runCounter"] == 1 and st["lastRuns"][0]["outcome"] == "Succeeded"
    assert [m["metadata"]["name"] for m in model_versions(cluster, namespace)] == ["drained-v1"]
    assert mv["spec"]["lineage"]["run"] == "drained-r1"


def test_a_trainer_over_its_memory_limit_is_retried_then_the_pipeline_names_the_limit(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "oom", classification_frame(600))
    operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="1", **NO_INITIAL_RETRY)
    # 64 MiB: the trainer's Python with pandas and scikit-learn imported holds more than that.
    apply(cluster, namespace, pipeline_yaml("oom", source, extra={"resources": {"limits": {"memory": "64Mi"}}}))

    st = wait_for("Degraded", lambda: condition(s := status(cluster, namespace, "oom"), "Degraded").get("status")
                  == "True" and s, timeout=180)
    degraded = condition(st, "Degraded")
    assert degraded["reason"] == "TrainerOOMKilled", degraded
    assert "OOMKilled) in 2 pod(s), its memory limit is 64Mi" in degraded["message"]
    assert "spec.resources.limits.memory" in degraded["message"]
    pods = pods_of(cluster, namespace, "oom-r1")
    assert len(pods) == 2  # the first and one retry (backoffLimit 1)
    assert all(trainer_state(p)["terminated"]["reason"] == "OOMKilled" for p in pods)
    assert all(trainer_state(p)["terminated"]["exitCode"] == 137 for p in pods)
    assert model_versions(cluster, namespace) == []
    assert [e["reason"] for e in events_of(cluster, namespace, "oom") if e["type"] == "Warning"] == ["TrainerOOMKilled"]


def test_a_data_validation_failure_is_not_retried(cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "tiny", classification_frame(30))
    operator_factory(namespace, **NO_INITIAL_RETRY)  # backoffLimit 2: a retried failure would show a second pod
    apply(cluster, namespace, pipeline_yaml("tiny", source, min_rows=1000))

    st = wait_for("Degraded", lambda: condition(s := status(cluster, namespace, "tiny"), "Degraded").get("status")
                  == "True" and s, timeout=180)
    assert condition(st, "Degraded")["reason"] == "TrainerFailed"
    [job] = jobs(cluster, namespace, "tiny")
    assert job_condition(job, "Failed").get("reason") == "PodFailurePolicy"
    settle(5)
    [pod] = pods_of(cluster, namespace, "tiny-r1")
    assert trainer_state(pod)["terminated"]["exitCode"] == 4  # EXIT_VALIDATION
    assert status(cluster, namespace, "tiny")["runCounter"] == 1


def test_a_first_run_that_fails_is_retried_later_without_a_person(cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    folder = cluster.store_dir / "datasets" / namespace / "late"
    folder.mkdir(parents=True)  # the data has not landed yet: the first run fails on it
    source = f"file:///var/lib/noria/store/datasets/{namespace}/late/"
    operator_factory(namespace, NORIA_INITIAL_RETRY_SECONDS="3")
    apply(cluster, namespace, pipeline_yaml("late", source))

    st = wait_for("first run failed", lambda: (s := status(cluster, namespace, "late")).get("lastRuns") and s,
                  timeout=120)
    assert st["lastRuns"][0]["outcome"] == "Failed"
    write_data(cluster.store_dir, namespace, "late", classification_frame(600))  # it lands

    wait_for("late-v2 registered", lambda: get(cluster, namespace, "modelversion", "late-v2"), timeout=180,
             on_timeout=lambda: json.dumps(status(cluster, namespace, "late"), indent=1))
    st = wait_for("Ready", lambda: (s := status(cluster, namespace, "late")).get("phase") == "Ready" and s, timeout=30)
    assert st["runCounter"] == 2 and [r["outcome"] for r in st["lastRuns"]] == ["Succeeded", "Failed"]
    assert st["lastRuns"][0]["trigger"] == "initial"
    assert condition(st, "Degraded")["status"] == "False"


def test_a_pass_the_api_server_refuses_is_reconcile_error_with_one_event(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    cluster.kubectl("create", "quota", "no-jobs", "-n", namespace, "--hard=count/jobs.batch=0")
    source = write_data(cluster.store_dir, namespace, "quota", classification_frame(600))
    operator_factory(namespace)
    apply(cluster, namespace, pipeline_yaml("quota", source))

    st = wait_for("ReconcileError", lambda: condition(s := status(cluster, namespace, "quota"), "Reconciled")
                  .get("reason") == "ReconcileError" and s, timeout=60)
    reconciled = condition(st, "Reconciled")
    assert reconciled["status"] == "False" and "quota" in reconciled["message"].lower(), reconciled
    settle(8)  # several failing passes
    warnings = [e for e in events_of(cluster, namespace, "quota") if e["reason"] == "ReconcileError"]
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1, warnings

    cluster.kubectl("delete", "quota", "no-jobs", "-n", namespace)
    wait_for("quota-v1 registered", lambda: get(cluster, namespace, "modelversion", "quota-v1"), timeout=180)
    st = wait_for("Reconciled", lambda: condition(s := status(cluster, namespace, "quota"), "Reconciled")
                  .get("status") == "True" and s, timeout=30)
    assert condition(st, "Reconciled")["reason"] == "ReconcileRecovered"


def test_a_schedule_the_api_server_accepts_but_that_never_comes_is_invalid_spec_until_fixed(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "never", classification_frame(600))
    operator_factory(namespace)
    # Every 12 months from February, on the 30th: in range field by field, so the API server's
    # rules let it through; no February has a 30th, so only the operator can tell.
    apply(cluster, namespace, pipeline_yaml("never", source, triggers={"schedule": "0 0 30 2/12 *"}))

    st = wait_for("InvalidSpec", lambda: condition(s := status(cluster, namespace, "never"), "Degraded")
                  .get("reason") == "InvalidSpec" and s, timeout=60)
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True" and "spec.triggers.schedule '0 0 30 2/12 *'" in degraded["message"]
    assert st["phase"] == "Degraded" and condition(st, "Training")["reason"] == "InvalidSpec"
    settle(6)  # passes every 2 s: still one Event, and no run
    warnings = [e for e in events_of(cluster, namespace, "never") if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1, warnings
    assert jobs(cluster, namespace, "never") == []

    cluster.kubectl("patch", "trainingpipeline", "never", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"triggers": {"schedule": "0 2 * * *"}}}))
    wait_for("never-v1 registered", lambda: get(cluster, namespace, "modelversion", "never-v1"), timeout=180)
    st = status(cluster, namespace, "never")
    assert condition(st, "Degraded")["reason"] in ("SpecValid", "LastRunSucceeded")
