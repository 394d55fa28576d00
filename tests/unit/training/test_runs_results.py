"""Run objects, reading a finished Job, and turning a trainer summary into a ModelVersion."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from noria.training import results, runs

SETTINGS = runs.RunSettings(trainer_image="img:1", store_root="file:///var/lib/noria/store", store_pvc="noria-store",
                            store_mount_path="/var/lib/noria/store")
TP = {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline",
      "metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"},
      "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                         "target": "y"},
               "data": {"source": "file:///var/lib/noria/store/datasets/churn/"},
               "resources": {"requests": {"cpu": "1"}}}}
DIGEST = "sha256:" + "a" * 64
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)


def test_names_are_deterministic_and_parse_back():
    assert runs.run_name("churn", 7) == "churn-r7" and runs.version_name("churn", 7) == "churn-v7"
    assert runs.run_number("churn", "churn-r12") == 12
    assert runs.run_number("churn", "churn-x-r12") is None


def test_run_spec_follows_the_contract():
    spec = runs.run_spec(TP, 7, "drift", {"name": "churn-v6"}, SETTINGS)
    assert spec["runId"] == "churn-r7" and spec["version"] == 7 and spec["trigger"] == "drift"
    assert spec["outputUri"] == "file:///var/lib/noria/store/ml/churn/v7"
    assert spec["storeRoot"] == SETTINGS.store_root and spec["champion"] == {"name": "churn-v6"}
    assert spec["spec"] == TP["spec"]


def test_job_is_restricted_owned_bounded_and_mounts_spec_and_store():
    owner = {"uid": "u-1", "name": "churn", "kind": "TrainingPipeline", "apiVersion": "noria.dev/v1alpha1"}
    spec = runs.run_spec(TP, 3, "manual", None, SETTINGS)
    cm = runs.config_map(TP, owner, spec)
    job = runs.job(TP, owner, spec, "2026-11-23T12:00:00Z", SETTINGS)
    assert json.loads(cm["data"]["spec.json"]) == spec and cm["metadata"]["ownerReferences"] == [owner]
    assert job["metadata"]["name"] == cm["metadata"]["name"] == "churn-r3"
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == runs.DEFAULT_BACKOFF_LIMIT == 2 and job["spec"]["activeDeadlineSeconds"] > 0
    ignore, fail = job["spec"]["podFailurePolicy"]["rules"]  # order matters: the first match acts
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["containerName"] == "trainer"
    assert fail["onExitCodes"]["values"] == [2, 3, 4, 5, 6, 7]  # spec, data, validation, training, champion, output
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctr = pod["containers"][0]
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["command"][-4:] == ["--spec", "/etc/noria/run/spec.json", "--termination-log", "/dev/termination-log"]
    assert ctr["resources"] == {"requests": {"cpu": "1"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["run"]["configMap"]["name"] == "churn-r3"
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "noria-store"


def _job(cond: str | None, **status):
    st = dict(status)
    if cond:
        st["conditions"] = [{"type": cond, "status": "True", "reason": "BackoffLimitExceeded", "message": "m",
                             "lastTransitionTime": "2026-11-23T12:00:05Z"}]
    return {"metadata": {"name": "churn-r3", "creationTimestamp": "2026-11-23T12:00:00Z"}, "status": st}


def _pod(message: str, finished: str = "2026-11-23T12:00:04Z"):
    return {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 0, "message": message, "finishedAt": finished}}}]}}


def test_job_outcome_reads_state_and_the_newest_summary():
    assert runs.job_outcome(None, []).state == runs.MISSING
    assert runs.job_outcome(_job(None), []).state == runs.RUNNING
    done = runs.job_outcome(_job("Complete", completionTime="2026-11-23T12:00:06Z"),
                            [_pod('{"status": "failed"}', "2026-11-23T12:00:01Z"),
                             _pod('log line\n{"status": "succeeded", "version": 3}')])
    assert done.state == runs.SUCCEEDED and done.summary == {"status": "succeeded", "version": 3}
    failed = runs.job_outcome(_job("Failed"), [_pod("Traceback: boom")])
    assert failed.state == runs.FAILED and failed.summary is None and failed.reason == "BackoffLimitExceeded"


def test_job_outcome_counts_out_of_memory_kills_and_reads_the_memory_limit():
    def killed(key: str, reason: str) -> dict:
        return {"status": {"containerStatuses": [{"name": "trainer", key: {"terminated": {
            "exitCode": 137, "reason": reason, "finishedAt": "2026-11-23T12:00:04Z"}}}]}}

    job = {**_job("Failed"), "spec": {"template": {"spec": {"containers": [
        {"name": "trainer", "resources": {"limits": {"memory": "512Mi"}}}]}}}}
    pods = [killed("state", "OOMKilled"), killed("lastState", "OOMKilled"), killed("state", "Error")]
    failed = runs.job_outcome(job, pods)
    assert failed.oom_killed == 2 and failed.memory_limit == "512Mi"
    assert runs.job_outcome(_job("Failed"), [killed("state", "Error")]).oom_killed == 0


def test_prune_keeps_the_newest_finished_and_the_current_run():
    names = [f"churn-r{i}" for i in range(1, 9)] + ["other-r1"]
    assert runs.runs_to_prune("churn", names, 3, current="churn-r8") == ["churn-r4", "churn-r3", "churn-r2", "churn-r1"]


def summary(**over):
    base = {"status": "succeeded", "runId": "churn-r7", "version": 7, "digest": DIGEST,
            "artifactUri": "file:///s/ml/churn/v7/model.skops", "profileUri": "file:///s/ml/churn/v7/profile.json",
            "metrics": {"f1": "0.8312", "accuracy": 0.9}, "verdict": "passed", "reason": "ok", "rows": 100,
            "feedbackRows": 3, "window": "90d", "trainedAt": "2026-11-23T12:00:00Z"}
    return {**base, **over}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (summary(status="weird"), "summary.status"),
        (summary(runId="churn-r6"), "summary.runId"),
        (summary(version=6), "summary.version"),
        (summary(digest="md5:1"), "summary.digest"),
        (summary(verdict=None), "summary.verdict"),
        (summary(artifactUri=None), "artifactUri"),
        # read through noria.runspec's typed definition (the trainer writes by the same one)
        (summary(metrics=["f1", "0.8"]), "summary.metrics: Input should be a valid dictionary"),
        (summary(rows="many"), "summary.rows: Input should be a valid integer"),
        (summary(refit={"done": "maybe", "rows": 3}), "summary.refit.done: Input should be a valid boolean"),
        ({"status": "failed", "reason": ["no"]}, "summary.reason: Input should be a valid string"),
        ("a termination message that is not JSON's object", "summary: Input should be a valid dictionary"),
    ],
)
def test_summary_for_another_run_or_malformed_is_refused_naming_the_field(raw, error):
    with pytest.raises(results.InvalidSummary) as refused:
        results.check_summary(raw, "churn-r7", 7)
    assert error in str(refused.value)


def test_a_failure_summary_is_read_with_its_words_and_unknown_keys_kept():
    raw = {"status": "failed", "runId": "churn-r7", "version": 7, "failedStage": "data", "reason": "no rows",
           "exitCode": 3, "digest": None}
    s = results.check_summary(raw, "churn-r7", 7)
    assert (s.status, s.verdict, s.reason) == ("failed", None, "no rows") and s.raw["digest"] is None


@pytest.mark.parametrize(
    ("verdict", "approval", "stage"),
    [("passed", "automatic", "Approved"), ("passed", "manual", "Candidate"), ("rejected", "automatic", "Rejected")],
)
def test_model_version_stage_from_verdict_and_approval(verdict, approval, stage):
    tp = {**TP, "spec": {**TP["spec"], "approval": approval}}
    s = results.check_summary(summary(verdict=verdict, reason="f1 0.61 below minScore 0.70"), "churn-r7", 7)
    mv = results.model_version(tp, s, "drift", "churn-v6")
    assert mv["metadata"]["name"] == "churn-v7" and "ownerReferences" not in mv["metadata"]
    assert mv["spec"]["artifact"] == {"uri": "file:///s/ml/churn/v7/model.skops", "digest": DIGEST, "format": "skops"}
    assert mv["spec"]["metrics"] == {"f1": "0.8312", "accuracy": "0.9"}  # never floats
    assert mv["spec"]["lineage"]["parent"] == "churn-v6" and mv["spec"]["lineage"]["data"]["rows"] == 100
    status = results.initial_status(mv, NOW)
    assert status["stage"] == stage and status["history"][0]["stage"] == "Candidate"
    assert status["metric"] == "f1=0.8312"
    if stage == "Rejected":
        assert "minScore" in status["message"]
    assert results.initial_status({**mv, "status": status}, NOW) is None  # idempotent


def test_manual_approval_is_recorded_in_history_with_the_actor():
    mv = {"metadata": {"name": "churn-v7", "annotations": {"noria.dev/approve": "alice"}},
          "spec": {"pipeline": "churn"}, "status": {"stage": "Candidate", "history": [{"stage": "Candidate"}]}}
    patch = results.approval(mv, NOW)
    assert patch["stage"] == "Approved" and patch["history"][-1]["by"] == "user/alice"
    assert results.approval({**mv, "status": patch}, NOW) is None
    assert results.approval({**mv, "metadata": {"name": "x"}}, NOW) is None


def test_champion_is_production_else_newest_accepted():
    def mv(n, stage):
        return {"metadata": {"name": f"c-v{n}"}, "spec": {"version": n}, "status": {"stage": stage}}

    assert results.champion([mv(1, "Production"), mv(2, "Approved"), mv(3, "Rejected")])["metadata"]["name"] == "c-v1"
    assert results.champion([mv(1, "Retired"), mv(2, "Approved"), mv(3, "Candidate")])["metadata"]["name"] == "c-v2"
    assert results.champion([mv(3, "Rejected")]) is None


def test_the_gate_metric_default_is_the_api_default_the_trainer_uses():
    from noria.api.training_pipeline import DEFAULT_METRIC
    from noria_trainer.spec import parse_pipeline_spec

    for task in ("classification", "regression"):
        spec = {"model": {"task": task, "estimator": "sklearn.linear_model.LinearRegression", "target": "y"},
                "data": {"source": "file:///store/ml/d/"}}
        assert results.gate_metric(spec) == DEFAULT_METRIC[task] == parse_pipeline_spec(spec).metric
    assert results.gate_metric({"model": {"task": "regression"}}) == "rmse"  # it said r2 before


def test_a_model_version_created_by_hand_is_registered_then_approvable():
    imported = {"metadata": {"name": "churn-v1", "annotations": {}},
                "spec": {"pipeline": "churn", "version": 1, "metrics": {"f1": "0.81"}}}
    status = results.registration(imported, NOW)
    assert status["stage"] == "Registered" and status["history"][0]["by"] == "user"
    assert "kubectl noria approve churn-v1" in status["message"] and status["metric"] == "f1=0.81"
    approved_cond = [c for c in status["conditions"] if c["type"] == "Approved"][0]
    assert approved_cond["status"] == "False" and approved_cond["reason"] == "AwaitingApproval"
    registered = {**imported, "status": status}
    assert results.registration(registered, NOW) is None  # once
    approved = results.approval({**registered, "metadata": {"name": "churn-v1",
                                                            "annotations": {"noria.dev/approve": "bob"}}}, NOW)
    assert approved["stage"] == "Approved" and [h["stage"] for h in approved["history"]] == ["Registered", "Approved"]
    rejected = results.approval({**registered, "metadata": {"name": "churn-v1",
                                                            "annotations": {"noria.dev/reject": "bob"}}}, NOW)
    assert rejected["stage"] == "Rejected"


def test_a_model_version_a_run_registered_is_never_registered_by_hand():
    s = results.check_summary(summary(), "churn-r7", 7)
    trained = results.model_version(TP, s, "drift", None)
    assert results.registered_by_a_run(trained) and results.registration(trained, NOW) is None


def test_a_failed_pass_is_reconciled_false_with_one_event_per_transition():
    from noria.training.handlers import reconcile_error_status

    patch, transition = reconcile_error_status({}, "reconcile failed: HTTP 403: quota", 1, NOW)
    assert transition and patch["conditions"][0]["reason"] == "ReconcileError"
    assert patch["conditions"][0]["status"] == "False"
    assert reconcile_error_status(patch, "reconcile failed: HTTP 403: quota", 1, NOW) == (None, False)
    changed, transition = reconcile_error_status(patch, "reconcile failed: timeout", 1, NOW)
    assert changed is not None and not transition  # a new cause is written, no second Event
