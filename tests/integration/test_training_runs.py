"""Training runs against the real control plane with the real trainer as the Job's process.

Given a dataset on the store volume and a TrainingPipeline, the operator runs the trainer Job
(the node agent runs ``python -m noria_trainer`` locally) and registers the ModelVersion with the
digest of the file the trainer wrote; failures degrade the pipeline; a gate failure registers a
Rejected version; and a SIGKILLed operator resumes without a second Job or a second version.
"""

from __future__ import annotations

import json
import signal

import pytest
from training_helpers import (
    classification_frame,
    condition,
    finished_runs,
    get,
    jobs,
    local_path,
    model_versions,
    pipeline_yaml,
    settle,
    sha256_of,
    status,
    wait_for,
    write_data,
)

pytestmark = pytest.mark.integration


def apply(cluster, namespace: str, manifest: str) -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def test_new_pipeline_runs_the_trainer_and_registers_the_digest_of_its_file(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "churn", classification_frame(600))
    op = operator_factory(namespace)
    apply(cluster, namespace, pipeline_yaml("churn", source))

    mv = wait_for("ModelVersion churn-v1", lambda: get(cluster, namespace, "modelversion", "churn-v1"),
                  timeout=180, on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1))
    artifact = mv["spec"]["artifact"]
    assert artifact["digest"] == sha256_of(local_path(cluster.store_dir, artifact["uri"]))
    assert artifact["uri"] == f"file:///var/lib/noria/store/{namespace}/churn/v1/model.skops"
    assert mv["spec"]["lineage"]["run"] == "churn-r1" and mv["spec"]["lineage"]["trigger"] == "initial"
    assert float(mv["spec"]["metrics"]["f1"]) > 0.5

    st = wait_for("pipeline Ready", lambda: (s := status(cluster, namespace, "churn")).get("phase") == "Ready" and s)
    assert st["latestVersion"] == st["championVersion"] == "churn-v1" and st["runCounter"] == 1
    assert st["lastRuns"][0]["outcome"] == "Succeeded" and st["lastTrigger"] == "initial"
    mv = wait_for("stage", lambda: (m := get(cluster, namespace, "modelversion", "churn-v1"))["status"].get("stage")
                  and m)
    assert mv["status"]["stage"] == "Approved"
    assert [h["stage"] for h in mv["status"]["history"]] == ["Candidate", "Approved"]

    [job] = jobs(cluster, namespace, "churn")
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingPipeline"

    table = cluster.kubectl("get", "tp", "-n", namespace).stdout
    assert "Ready" in table and "initial" in table and "churn-v1" in table
    mv_table = cluster.kubectl("get", "mv", "-n", namespace).stdout
    assert "Approved" in mv_table and "f1=" in mv_table
    assert "noria_operator_training_runs_total" in op.metrics()


def test_failing_trainer_degrades_the_pipeline_with_its_reason_and_registers_nothing(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "tiny", classification_frame(30))
    operator_factory(namespace)
    apply(cluster, namespace, pipeline_yaml("tiny", source, min_rows=1000))

    st = wait_for("Degraded", lambda: condition(s := status(cluster, namespace, "tiny"), "Degraded").get("status")
                  == "True" and s, timeout=180)
    degraded = condition(st, "Degraded")
    assert degraded["reason"] == "TrainerFailed"
    assert "1000" in degraded["message"]  # the trainer's own words about minRows
    assert st["phase"] == "Degraded" and st["lastRuns"][0]["outcome"] == "Failed"
    assert model_versions(cluster, namespace) == []
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=tiny", "-o", "json").stdout
    assert any(e["reason"] == "TrainerFailed" and e["type"] == "Warning" for e in json.loads(events)["items"])


def test_gate_failure_registers_a_rejected_version_that_keeps_its_artifact(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    noisy = classification_frame(400)
    noisy["label"] = noisy["label"].sample(frac=1.0, random_state=1).to_numpy()  # labels unrelated to features
    source = write_data(cluster.store_dir, namespace, "noisy", noisy)
    operator_factory(namespace)
    apply(cluster, namespace, pipeline_yaml("noisy", source, min_score="0.95"))

    mv = wait_for("rejected version", lambda: (m := get(cluster, namespace, "modelversion", "noisy-v1"))
                  and (m.get("status") or {}).get("stage") and m, timeout=180)
    assert mv["status"]["stage"] == "Rejected" and "0.95" in mv["status"]["message"]
    assert local_path(cluster.store_dir, mv["spec"]["artifact"]["uri"]).exists()
    st = status(cluster, namespace, "noisy")
    assert st["lastRuns"][0]["outcome"] == "Rejected" and "championVersion" not in st
    assert condition(st, "Degraded").get("status") == "False"


def test_sigkill_during_a_run_then_restart_makes_no_second_job_and_registers_once(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "crash", classification_frame(600))
    op = operator_factory(namespace)
    tuning = {"strategy": "random", "trials": 20, "space": {"C": [0.01, 10.0]}}  # a run long enough to be killed in
    apply(cluster, namespace, pipeline_yaml("crash", source, extra={"tuning": tuning}))
    wait_for("Job created", lambda: jobs(cluster, namespace, "crash"), timeout=60)
    op.kill(signal.SIGKILL)

    wait_for("Job finished while the operator was down",
             lambda: any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                         for c in (jobs(cluster, namespace, "crash")[0].get("status") or {}).get("conditions") or []),
             timeout=180)
    assert get(cluster, namespace, "modelversion", "crash-v1") is None
    op.start()
    wait_for("crash-v1 registered", lambda: get(cluster, namespace, "modelversion", "crash-v1"), timeout=60)
    wait_for("run recorded", lambda: finished_runs(cluster, namespace, "crash"), timeout=30)
    op.kill(signal.SIGKILL)  # and once more, after registering
    op.start()
    settle(6)
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace, "crash")] == ["crash-r1"]
    assert [m["metadata"]["name"] for m in model_versions(cluster, namespace)] == ["crash-v1"]
    st = status(cluster, namespace, "crash")
    assert st["runCounter"] == 1 and len(st["lastRuns"]) == 1


def test_manual_approval_annotation_moves_a_candidate_to_approved_with_the_actor_in_history(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "gated", classification_frame(400))
    operator_factory(namespace)
    apply(cluster, namespace, pipeline_yaml("gated", source, approval="manual"))
    mv = wait_for("candidate", lambda: (m := get(cluster, namespace, "modelversion", "gated-v1"))
                  and (m.get("status") or {}).get("stage") and m, timeout=180)
    assert mv["status"]["stage"] == "Candidate"
    assert "championVersion" not in status(cluster, namespace, "gated")  # not accepted yet

    cluster.kubectl("annotate", "-n", namespace, "modelversion", "gated-v1", "noria.dev/approve=alice")
    mv = wait_for("approved", lambda: (m := get(cluster, namespace, "modelversion", "gated-v1"))["status"]["stage"]
                  == "Approved" and m, timeout=30)
    last = mv["status"]["history"][-1]
    assert (last["stage"], last["by"]) == ("Approved", "user/alice") and last["at"]
    wait_for("champion", lambda: status(cluster, namespace, "gated").get("championVersion") == "gated-v1", timeout=30)


def test_invalid_pipeline_is_refused_by_the_api_server_naming_the_field(cluster, namespace):
    bad = json.loads(pipeline_yaml("bad", "file:///var/lib/noria/store/x/"))
    bad["spec"]["triggers"] = {"schedule": "every tuesday"}
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "spec.triggers.schedule" in result.stderr and "cron" in result.stderr
