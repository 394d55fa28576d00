"""What each `kubectl noria` write command sends, and when it refuses (noria.cli.actions)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from noria import contracts as ct
from noria.cli import actions
from noria.cli.actions import Refused

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
STEPS = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "1m"}}]


def rollout(status: dict[str, Any] | None = None, paused: bool = False, **spec: Any) -> dict[str, Any]:
    body = {"source": {"pipeline": "churn"}, "strategy": {"canary": {"steps": STEPS}}, **spec}
    if paused:
        body["paused"] = True
    return {"metadata": {"name": "churn", "namespace": "ml"}, "spec": body, "status": status or {}}


MID_CANARY = {"stableVersion": "churn-v1", "canaryVersion": "churn-v2", "currentStep": 1,
              "weights": {"churn-v1": 75, "churn-v2": 25}}
STEADY = {"stableVersion": "churn-v1", "weights": {"churn-v1": 100}}


def mv(name: str, stage: str | None, by: str = "pipeline/churn", **annotations: str) -> dict[str, Any]:
    number = int(name.rsplit("v", 1)[1])
    status = {"stage": stage, "history": [{"stage": stage, "by": by, "reason": "aborted by the noria.dev/abort annotation"}]}
    return {"metadata": {"name": name, "annotations": annotations}, "spec": {"pipeline": "churn", "version": number},
            "status": status if stage else {}}


@pytest.mark.parametrize("status, full, annotation, says", [
    (MID_CANARY, False, ct.PROMOTE_ONCE, "goes past step 1 (pause until promoted) to step 2 (setWeight 60)"),
    ({**MID_CANARY, "currentStep": 3}, False, ct.PROMOTE_ONCE, "to the switch: churn-v2 takes all traffic"),
    (MID_CANARY, True, ct.PROMOTE_FULL, "churn-v2 skips every remaining step and takes all traffic; churn-v1 retires"),
], ids=["once-names-the-next-step", "once-at-the-last-step-is-the-switch", "full"])
def test_promote_writes_the_annotation_the_operator_reads(status, full, annotation, says) -> None:
    action = actions.promote(rollout(status), full=full)
    assert action.patch == {"metadata": {"annotations": {ct.ANNOTATION_PROMOTE: annotation}}}
    assert says in action.message


@pytest.mark.parametrize("command, obj, refusal", [
    (lambda r: actions.promote(r), rollout(STEADY), "has no canary to promote: churn-v1 serves all traffic"),
    (lambda r: actions.promote(r), rollout({}), "nothing is being rolled out"),
    (lambda r: actions.promote(r), rollout(MID_CANARY, paused=True), "is paused (spec.paused)"),
    (lambda r: actions.promote(r, full=True), rollout(MID_CANARY, paused=True), "resume churn` first"),
    (lambda r: actions.abort(r), rollout(STEADY), "has nothing to abort: churn-v1 serves all traffic"),
    (lambda r: actions.retry(r, {"churn-v1": mv("churn-v1", "Production")}), rollout(STEADY), "nothing to retry"),
    # Rejected by the training gate, not by this Rollout: a retry would not bring it back.
    (lambda r: actions.retry(r, {"churn-v2": mv("churn-v2", "Rejected")}), rollout(STEADY), "nothing to retry"),
], ids=["promote-no-canary", "promote-nothing-served", "promote-paused", "promote-full-paused",
        "abort-no-canary", "retry-nothing-aborted", "retry-gate-rejected"])
def test_a_command_the_state_makes_pointless_is_refused(command, obj, refusal) -> None:
    with pytest.raises(Refused, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        command(obj)


def test_abort_says_where_traffic_goes() -> None:
    action = actions.abort(rollout(MID_CANARY))
    assert action.patch == {"metadata": {"annotations": {ct.ANNOTATION_ABORT: "true"}}}
    assert "all traffic goes back to churn-v1, churn-v2 is scaled down and becomes Rejected (AbortedByUser)" in \
        action.message


def test_retry_brings_back_the_newest_version_this_rollout_rejected() -> None:
    mvs = {"churn-v2": mv("churn-v2", "Rejected", by="rollout/churn"),
           "churn-v3": mv("churn-v3", "Rejected", by="rollout/churn"),
           "churn-v4": mv("churn-v4", "Rejected", by="rollout/other")}
    action = actions.retry(rollout(STEADY), mvs)
    assert action.patch == {"metadata": {"annotations": {ct.ANNOTATION_RETRY: "true"}}}
    assert action.message.startswith("rollout churn: churn-v3 (rejected: aborted by the noria.dev/abort annotation)")


@pytest.mark.parametrize("command, paused, patch, says", [
    (actions.pause, False, {"spec": {"paused": True}}, "holds at step 1 with churn-v2 at 25%"),
    (actions.pause, True, None, "already paused"),
    (actions.resume, True, {"spec": {"paused": False}}, "carries on from the step it was held at"),
    (actions.resume, False, None, "is not paused"),
], ids=["pause", "pause-again-writes-nothing", "resume", "resume-unpaused-writes-nothing"])
def test_pause_and_resume_set_spec_paused(command, paused, patch, says) -> None:
    action = command(rollout(MID_CANARY, paused=paused))
    assert action.patch == patch and says in action.message


@pytest.mark.parametrize("stage", ["Registered", "Candidate"])
def test_approve_and_reject_record_the_callers_own_name(stage) -> None:
    approve = actions.approve(mv("churn-v7", stage), "alice")
    assert approve.patch == {"metadata": {"annotations": {ct.ANNOTATION_APPROVE: "alice"}}}
    assert f"{stage} -> Approved, recorded as by user/alice" in approve.message
    reject = actions.reject(mv("churn-v7", stage), "alice")
    assert reject.patch == {"metadata": {"annotations": {ct.ANNOTATION_REJECT: "alice"}}}


@pytest.mark.parametrize("version, refusal", [
    (mv("churn-v7", "Production"), "churn-v7 is Production: only a version in stage Registered or Candidate"),
    (mv("churn-v7", "Rejected"), "churn-v7 is Rejected"),
    (mv("churn-v7", None), "has no stage yet"),
    (mv("churn-v7", "Candidate", **{ct.ANNOTATION_REJECT: "bob"}), "a reject wins over an approve"),
], ids=["production", "rejected", "not-staged", "already-rejected"])
def test_approving_a_version_past_approval_is_refused(version, refusal) -> None:
    with pytest.raises(Refused, match=refusal):
        actions.approve(version, "alice")


@pytest.mark.parametrize("status, when", [
    ({}, "starts now"),
    ({"currentRun": {"id": "churn-r4"}}, "starts after run churn-r4 (in progress) ends"),
    ({"cooldownUntil": "2026-12-02T08:30:00Z"}, "starts when the cooldown ends at 2026-12-02T08:30:00Z"),
    ({"cooldownUntil": "2026-12-02T07:30:00Z"}, "starts now"),
], ids=["idle", "during-a-run", "in-cooldown", "cooldown-over"])
def test_retrain_asks_for_one_run_and_says_when(status, when) -> None:
    pipeline = {"metadata": {"name": "churn"}, "spec": {}, "status": status}
    action = actions.retrain(pipeline, "alice 2026-12-02T08:00:00.000000Z", NOW)
    assert action.patch == {"metadata": {"annotations": {ct.ANNOTATION_RETRAIN: "alice 2026-12-02T08:00:00.000000Z"}}}
    assert when in action.message


def test_retrain_of_a_pipeline_that_cannot_run_is_refused() -> None:
    pipeline = {"metadata": {"name": "churn"}, "status": {"conditions": [
        {"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": "spec.triggers.schedule ..."}]}}
    with pytest.raises(Refused, match="cannot run: InvalidSpec"):
        actions.retrain(pipeline, "x", NOW)


def test_each_retrain_value_is_new() -> None:
    first = actions.retrain_value("alice", NOW)
    assert first == "alice 2026-12-02T08:00:00.000000Z"
    assert actions.retrain_value("alice", NOW + dt.timedelta(microseconds=1)) != first
    assert actions.retrain_value(None, NOW) == "2026-12-02T08:00:00.000000Z"
