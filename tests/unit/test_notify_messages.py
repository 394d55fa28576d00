"""Which Events are which transitions, and what a notification says: the table, the JSON body, and
the Events the Rollout state machine really posts (so a reworded abort cannot silently stop the
"aborted" notification)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from noria import conditions as c
from noria import notifications as n
from noria.deployment.analysis import CheckResult
from noria.deployment.decide import Measurement, Observation, VersionPods, decide
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import parse_rollout_spec

TP, MV, RO = "TrainingPipeline", "ModelVersion", "Rollout"


@pytest.mark.parametrize(("kind", "type_", "reason", "message", "transition"), [
    (TP, "Warning", c.TRAINER_FAILED, "run churn-r3 failed: too few rows", n.RUN_FAILED),
    (TP, "Warning", c.TRAINER_OOM_KILLED, "run churn-r3 failed: OOM", n.RUN_FAILED),
    (TP, "Warning", c.JOB_FAILED, "run churn-r3 failed: deadline", n.RUN_FAILED),
    (TP, "Normal", c.RUN_STARTED, "run churn-r4 started by drift", None),
    (TP, "Warning", c.MODEL_VERSION_REGISTERED, "run churn-r3 registered churn-v3 as Rejected", None),
    (MV, "Normal", c.AUTO_APPROVED, "churn-v3 is Approved", n.VERSION_APPROVED),
    (MV, "Normal", c.MANUALLY_APPROVED, "approved manually by user/alice", n.VERSION_APPROVED),
    (MV, "Warning", c.GATE_REJECTED, "f1 0.4 < 0.7", n.VERSION_REJECTED),
    (MV, "Normal", c.MANUALLY_REJECTED, "rejected manually by user/bob", n.VERSION_REJECTED),
    (MV, "Normal", c.AWAITING_APPROVAL, "churn-v3 is Candidate", n.VERSION_AWAITING_APPROVAL),
    (MV, "Normal", c.MODEL_VERSION_REGISTERED, "created without a training run", n.VERSION_AWAITING_APPROVAL),
    (MV, "Warning", c.ARTIFACT_OUT_OF_SCOPE, "artifact.uri outside", None),
    (RO, "Normal", c.ROLLOUT_PROMOTED, "promoted churn-v2 to all traffic; churn-v1 retired", n.ROLLOUT_PROMOTED),
    (RO, "Normal", c.ROLLOUT_FIRST_DEPLOYMENT, "first version churn-v1 is ready", n.ROLLOUT_PROMOTED),
    (RO, "Normal", c.ROLLOUT_PAUSED_FOR_PROMOTION, "churn-v2: paused at step 1", n.ROLLOUT_PAUSED),
    (RO, "Normal", c.ROLLOUT_PAUSED_BY_USER, "paused by spec.paused", n.ROLLOUT_PAUSED),
    (RO, "Warning", c.ROLLOUT_ANALYSIS_INCONCLUSIVE, "churn-v2: no data", n.ROLLOUT_PAUSED),
    (RO, "Warning", c.ROLLOUT_ABORTED_BY_USER, "aborted churn-v2: by the annotation", n.ROLLOUT_ABORTED),
    (RO, "Warning", c.ROLLOUT_ANALYSIS_FAILED, "aborted churn-v2: 2 failed", n.ROLLOUT_ABORTED),
    (RO, "Warning", c.ROLLOUT_ANALYSIS_FAILED, "churn-v2: errorRate=failure", None),
    (RO, "Warning", c.ROLLOUT_ROLLED_BACK, "churn-v2 rolled back to churn-v1", n.ROLLOUT_ABORTED),
    (RO, "Warning", c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED, "first version churn-v1 has 0 of 1", n.ROLLOUT_DEGRADED),
    (RO, "Warning", c.ROLLOUT_STABLE_UNHEALTHY, "stable churn-v1 has no ready pod", n.ROLLOUT_DEGRADED),
    (RO, "Warning", c.RECONCILE_ERROR, "reconcile failed: 500", n.ROLLOUT_DEGRADED),
    (RO, "Warning", c.ROLLOUT_CANDIDATE_UNREADY, "churn-v2 has 0 of 1 pods ready", None),
    (RO, "Normal", c.ROLLOUT_STEP_IN_PROGRESS, "churn-v2: step 1", None),
    ("ConfigMap", "Warning", c.NOTIFICATIONS_INVALID, "bad", None),
])
def test_transition_of_each_event(kind, type_, reason, message, transition):
    assert n.transition_of(kind, type_, reason, message) == transition


def test_a_receiver_wants_its_transitions_and_its_named_reasons():
    r = n.Receiver("r", frozenset({n.ROLLOUT_ABORTED, c.ROLLOUT_ANALYSIS_FAILED}), "r")
    assert r.wants(n.ROLLOUT_ABORTED, c.ROLLOUT_ABORTED_BY_USER)
    assert r.wants(None, c.ROLLOUT_ANALYSIS_FAILED)  # every failed measurement, asked for by name
    assert not r.wants(n.ROLLOUT_PROMOTED, c.ROLLOUT_PROMOTED)
    assert not r.wants(None, c.ROLLOUT_STEP_IN_PROGRESS)


# --- the body ---------------------------------------------------------------------------------------
ROLLOUT_OBJ = {"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "churn", "namespace": "ml", "uid": "u"},
               "spec": {"source": {"pipeline": "churn"}},
               "status": {"stableVersion": "churn-v1", "canaryVersion": "churn-v12",
                          "weights": {"churn-v1": 80, "churn-v12": 20}}}


def test_the_body_has_slack_text_and_every_field():
    note = n.notification_of(ROLLOUT_OBJ, "Warning", c.ROLLOUT_ANALYSIS_FAILED,
                             "aborted churn-v12: accuracy=0.6 < 0.8 & falling; traffic back on churn-v1",
                             "2026-12-02T08:00:00Z")
    assert note is not None
    body = n.build_payload(note)
    assert body == {
        "text": "Rollout ml/churn aborted (AnalysisFailed): aborted churn-v12: accuracy=0.6 &lt; 0.8 &amp; falling;"
                " traffic back on churn-v1",
        "kind": "Rollout", "namespace": "ml", "name": "churn", "type": "Warning", "reason": "AnalysisFailed",
        "message": "aborted churn-v12: accuracy=0.6 < 0.8 & falling; traffic back on churn-v1",
        "time": "2026-12-02T08:00:00Z", "transition": "rollout-aborted", "version": "churn-v12", "pipeline": "churn",
    }
    json.dumps(body)  # plain JSON


@pytest.mark.parametrize(("message", "version"), [
    ("promoted churn-v12 to all traffic; churn-v1 retired", "churn-v12"),
    ("rolled back to churn-v1 at once: its pods were still running", "churn-v1"),
    ("step 3: waiting for `kubectl annotate mro churn noria.dev/promote=true`", "churn-v12"),  # none named: the canary
])
def test_a_rollout_event_is_about_the_version_it_names_first(message, version):
    note = n.notification_of(ROLLOUT_OBJ, "Normal", c.ROLLOUT_PROMOTED, message, "t")
    assert note is not None and note.version == version and note.pipeline == "churn"


def test_a_failed_run_is_about_the_version_it_would_have_made():
    tp = {"kind": "TrainingPipeline", "metadata": {"name": "churn", "namespace": "ml"},
          "status": {"currentRun": {"id": "churn-r3", "version": "churn-v3"}}}
    note = n.notification_of(tp, "Warning", c.TRAINER_FAILED, "run churn-r3 failed: x", "t")
    assert note is not None and (note.transition, note.version, note.pipeline) == (n.RUN_FAILED, "churn-v3", "churn")
    body = n.build_payload(note)
    assert body["text"] == "TrainingPipeline ml/churn training run failed (TrainerFailed): run churn-r3 failed: x"


def test_a_model_version_event_names_it_and_its_pipeline():
    mv = {"kind": "ModelVersion", "metadata": {"name": "churn-v3", "namespace": "ml"}, "spec": {"pipeline": "churn"}}
    note = n.notification_of(mv, "Normal", c.MANUALLY_APPROVED, "approved manually by user/alice", "t")
    assert note is not None and (note.version, note.pipeline) == ("churn-v3", "churn")
    assert n.build_payload(note)["text"] == ("ModelVersion ml/churn-v3 approved (ManuallyApproved): "
                                             "approved manually by user/alice")


def test_an_event_asked_for_by_reason_alone_is_titled_by_its_reason():
    note = n.notification_of(ROLLOUT_OBJ, "Normal", c.ROLLOUT_STEP_IN_PROGRESS, "churn-v12: step 2", "t")
    assert note is not None and note.transition is None
    assert n.build_payload(note)["text"] == "Rollout ml/churn StepInProgress: churn-v12: step 2"


def test_objects_that_are_not_noria_s_make_no_notification():
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "noria-notifications", "namespace": "ml"}}
    assert n.notification_of(cm, "Warning", c.NOTIFICATIONS_INVALID, "bad", "t") is None


# --- the Events the Rollout state machine really posts ---------------------------------------------------
T0 = dt.datetime(2026, 12, 2, 8, 0, 0, tzinfo=dt.UTC)
CANARY = {"source": {"pipeline": "churn"}, "replicas": 1, "progressDeadline": "10m",
          "analysis": {"interval": "30s", "failureLimit": 1, "checks": [{"builtin": "errorRate", "max": "0.01"}]},
          "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]}}}


def mv(n_: int, stage: str) -> dict:
    return {"metadata": {"name": f"churn-v{n_}", "namespace": "ml"},
            "spec": {"pipeline": "churn", "version": n_,
                     "artifact": {"uri": "file:///x", "digest": "sha256:" + "0" * 64}},
            "status": {"stage": stage, "history": []}}


SERVING = {"churn-v1": mv(1, "Production"), "churn-v2": mv(2, "Canary")}
PODS = {v: VersionPods(v, 1, 1, True) for v in SERVING}


def rollout_events(step: int, weight: int, **kw) -> list[tuple[str, str, str]]:
    status = {"stableVersion": "churn-v1", "canaryVersion": "churn-v2", "currentStep": step,
              "stepStartedAt": c.now_iso(T0), "canaryWeight": weight,
              "weights": {"churn-v1": 100 - weight, "churn-v2": weight}, **kw.pop("status", {})}
    obs = Observation(rollout=RolloutRef("churn", "ml", "u"), generation=1, spec=parse_rollout_spec(CANARY),
                      spec_error=None, status=status, model_versions=SERVING, pods=PODS, now=T0, **kw)
    return list(decide(obs).events)


def transitions(events: list[tuple[str, str, str]]) -> list[str | None]:
    return [n.transition_of("Rollout", type_, reason, message) for type_, reason, message in events]


def failed(tallies: dict | None = None) -> dict:
    m = Measurement("failure", (CheckResult("errorRate", "failure", 0.3, ""),), T0)  # type: ignore[arg-type]
    return {"measurement": m, "status": {"analysis": tallies or {}}}


def test_decide_s_abort_by_annotation_is_an_aborted_notification():
    assert n.ROLLOUT_ABORTED in transitions(rollout_events(1, 10, abort=True))


def test_decide_s_abort_on_failed_analysis_is_aborted_but_a_failed_measurement_is_not():
    assert n.ROLLOUT_ABORTED in transitions(rollout_events(2, 10, **failed({"failed": 1, "passed": 1})))
    within_limit = rollout_events(2, 10, **failed())
    assert [r for _, r, _ in within_limit] == [c.ROLLOUT_ANALYSIS_FAILED]
    assert transitions(within_limit) == [None]


def test_decide_s_promotion_is_a_promoted_notification():
    assert n.ROLLOUT_PROMOTED in transitions(rollout_events(1, 10, promote_full=True))


def test_decide_s_indefinite_pause_is_one_paused_notification_when_it_begins():
    entering = rollout_events(0, 0)  # step 0 applies 10%, then the pause for a person begins
    assert transitions(entering).count(n.ROLLOUT_PAUSED) == 1
    paused = c.set_condition([], c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_FOR_PROMOTION, "waiting", now=T0)
    assert rollout_events(1, 10, status={"conditions": paused}) == []  # still paused: nothing new


# --- the Event a run's new version gets (training/results.initial_stage_event) --------------------------------
@pytest.mark.parametrize(("stage", "reason", "transition"), [
    ("Approved", c.AUTO_APPROVED, n.VERSION_APPROVED),
    ("Rejected", c.GATE_REJECTED, n.VERSION_REJECTED),
    ("Candidate", c.AWAITING_APPROVAL, n.VERSION_AWAITING_APPROVAL),
])
def test_a_version_a_run_registered_posts_its_approval_once_on_itself(stage, reason, transition):
    from noria.contracts import ANNOTATION_INITIAL_REASON, ANNOTATION_INITIAL_STAGE
    from noria.training.results import initial_stage_event, initial_status

    new = {"apiVersion": "noria.dev/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": "churn-v3", "namespace": "ml",
                        "annotations": {ANNOTATION_INITIAL_STAGE: stage, ANNOTATION_INITIAL_REASON: "f1=0.81 vs 0.7"}},
           "spec": {"pipeline": "churn", "metrics": {"f1": "0.81"}}}
    first = initial_status(new, T0)
    assert first is not None
    type_, got_reason, message = initial_stage_event(new, first)
    assert (got_reason, message) == (reason, f"churn-v3 is {stage}: f1=0.81 vs 0.7")
    assert type_ == ("Warning" if stage == "Rejected" else "Normal")
    assert n.transition_of("ModelVersion", type_, got_reason, message) == transition
    assert initial_status({**new, "status": first}, T0) is None  # staged once: the Event is posted once
