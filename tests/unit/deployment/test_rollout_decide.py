"""The Rollout state machine as tables: given an observation, the facts the plan must have.

Each row is one rule (its id names it). A row gives the observation (``given``) and only the plan
facts the rule is about (``expect``); ``facts`` reads every fact from a plan the same way, so a row
reads like the rule in docs/rollouts.md. Sequences that need several passes (promote after an
inconclusive pause, a crash between the status write and the ModelVersion write) are small tests below
the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from noria import conditions as c
from noria.deployment.analysis import CheckResult
from noria.deployment.decide import (
    ArtifactRefusal,
    Measurement,
    Observation,
    Plan,
    VersionPods,
    analysis_due,
    analysis_target,
    decide,
)
from noria.deployment.handlers import artifact_refusal
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import parse_rollout_spec
from noria.deployment.step_machine import UNREADY_GRACE
from noria.deployment.strategies import plan_steps, traffic_at

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
REF = RolloutRef(name="churn", namespace="ml", uid="u1")
CHECKS = {"interval": "30s", "failureLimit": 1, "consecutiveErrorLimit": 2,
          "checks": [{"builtin": "errorRate", "max": "0.01"}]}
# steps: 0 setWeight 10, 1 pause 1m, 2 setWeight 50, 3 pause (for a person), 4 switch (implied)
CANARY = {"source": {"pipeline": "churn"}, "replicas": 2, "analysis": CHECKS, "progressDeadline": "10m",
          "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50},
                                            {"pause": {}}]}}}
NO_CHECKS = {**CANARY, "analysis": None}
# steps: 0 setWeight 20, 1 analysis count 3, 2 setWeight 50, 3 switch
COUNTED = {**CANARY, "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {"count": 3}},
                                                       {"setWeight": 50}]}}}
LABELS = {**CANARY, "analysis": {"interval": "30s", "checks": [
    {"builtin": "accuracy", "min": "0.8", "minLabels": 100, "labelTimeout": "5m"}]},
    "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}]}}}
LABELS_NO_TIMEOUT = {**LABELS, "analysis": {"interval": "30s", "checks": [
    {"builtin": "accuracy", "min": "0.8", "minLabels": 100}]}}
WINDOW = {**CANARY, "rollbackWindow": "10m"}
# steps: 0 mirror 100%, 1 pause 1m, 2 analysis, 3 switch (canaryWeight is the mirror percent)
SHADOW = {**CANARY, "strategy": {"shadow": {"mirrorPercent": 100, "duration": "1m", "promote": "automatic"}},
          "analysis": {**CHECKS, "checks": [{"builtin": "shadowAgreement", "min": "0.95"}]}}
# steps: 0 preview, 1 pause 1m (autoPromotionAfter), 2 switch
BLUE_GREEN = {**CANARY, "strategy": {"blueGreen": {"autoPromotionAfter": "1m"}}}
PINNED_V7 = {**CANARY, "source": {"modelVersion": "churn-v7"}}
MIN = dt.timedelta(minutes=1)
SEC = dt.timedelta(seconds=1)


def mv(n: int, stage: str | None = "Approved", history=None) -> dict:
    return {"metadata": {"name": f"churn-v{n}", "namespace": "ml"},
            "spec": {"pipeline": "churn", "version": n, "artifact": {"uri": "file:///x", "digest": "sha256:" + "0" * 64}},
            "status": {"stage": stage, "history": history or []} if stage else {}}


def by_rollout(n: int, stage: str, reason: str = "") -> dict:
    return mv(n, stage, history=[{"stage": stage, "by": "rollout/churn", "reason": reason}])


def ready(version: str, replicas: int = 2, scale_down_at=None) -> VersionPods:
    return VersionPods(version, replicas, replicas, True, scale_down_at)


def unready(version: str, ready_pods: int = 0, replicas: int = 2) -> VersionPods:
    return VersionPods(version, replicas, ready_pods, True)


def observe(spec=CANARY, status=None, mvs=(), pods=(), now=T0, **kw) -> Observation:
    return Observation(rollout=REF, generation=1, spec=parse_rollout_spec(spec), spec_error=None,
                       status=status or {}, model_versions={m["metadata"]["name"]: m for m in mvs},
                       pods={p.version: p for p in pods}, now=now, **kw)


def mid_canary(step: int, started=T0, spec=CANARY, **extra: Any) -> dict:
    """Status at the start of ``step``: the traffic of the steps before it is in place."""
    steps = plan_steps(parse_rollout_spec(spec))
    weight = traffic_at(steps, step - 1).weight if step > 0 else 0
    return {"stableVersion": "churn-v6", "canaryVersion": "churn-v7", "currentStep": step,
            "stepStartedAt": c.now_iso(started), "canaryWeight": weight,
            "weights": {"churn-v6": 100 - weight, "churn-v7": weight}, **extra}


def last(outcome: str, at=T0, streak: int = 0, message: str = "", **tallies) -> dict:
    return {"consecutiveSuccesses": streak, **tallies, "last": {"at": c.now_iso(at), "outcome": outcome,
                                                                "message": message}}


def measured(outcome: str, at=T0, name: str = "errorRate", message: str = "") -> Measurement:
    value = {"success": 0.0, "failure": 0.3}.get(outcome)
    return Measurement(outcome, (CheckResult(name, outcome, value, message),), at)  # type: ignore[arg-type]


SERVING = [mv(6, "Production"), mv(7, "Canary")]
BOTH_READY = [ready("churn-v6"), ready("churn-v7")]


def stages(plan: Plan) -> dict[str, str]:
    return {s.version: s.stage for s in plan.stage_changes}


def cond(plan: Plan, type_: str) -> tuple[str, str] | None:
    found = c.get_condition(plan.status["conditions"], type_)
    return (found["status"], found["reason"]) if found else None


def facts(plan: Plan) -> dict[str, Any]:
    st = plan.status
    verdict = st.get("lastVerdict") or {}
    return {
        "weights": plan.weights, "mirror": plan.mirror, "replicas": plan.replicas,
        "step": st.get("currentStep"), "stable": st.get("stableVersion"), "candidate": st.get("canaryVersion"),
        "phase": st.get("phase"), "stages": {s.version: s.stage for s in plan.stage_changes},
        "degraded": cond(plan, c.DEGRADED), "progressing": cond(plan, c.PROGRESSING),
        "paused": cond(plan, c.PAUSED), "ready": cond(plan, c.READY),
        "warnings": tuple(r for t, r, _ in plan.events if t == "Warning"),
        "verdict": (verdict.get("version"), verdict.get("stage"), verdict.get("reason")) if verdict else None,
        "streak": (st.get("analysis") or {}).get("consecutiveSuccesses"),
        "measured": ((st.get("analysis") or {}).get("last") or {}).get("outcome"),
        "noProgressSince": st.get("noProgressSince"), "candidateUnreadySince": st.get("candidateUnreadySince"),
        "stepStartedAt": st.get("stepStartedAt"), "previousVersion": st.get("previousVersion"),
        "rollbackWindowEndsAt": st.get("rollbackWindowEndsAt"), "consume_first": plan.consume_first,
        "scaled_down": tuple(sorted(plan.scale_down)), "delete": plan.delete,
    }


def check(given: dict, expect: dict) -> Plan:
    plan = decide(observe(**given))
    got = facts(plan)
    assert {k: got[k] for k in expect} == expect
    return plan


Row = pytest.param
T = c.TRUE
F = c.FALSE


# --- selection and the first version -------------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(mvs=[mv(1)]),
        dict(replicas={"churn-v1": 2}, weights=None, phase="Progressing", noProgressSince=c.now_iso(T0)),
        id="first version: its pods start, no traffic until ready"),
    Row(dict(mvs=[mv(1)], pods=[ready("churn-v1")], status={"canaryVersion": "churn-v1"}),
        dict(weights={"churn-v1": 100}, stable="churn-v1", candidate=None, stages={"churn-v1": "Production"},
             phase="Healthy", verdict=("churn-v1", "Production", c.ROLLOUT_FIRST_DEPLOYMENT)),
        id="first version ready: straight to all traffic, verdict recorded"),
    Row(dict(mvs=[mv(1)], pods=[unready("churn-v1")], now=T0 + 10 * MIN,
             status={"canaryVersion": "churn-v1", "noProgressSince": c.now_iso(T0)}),
        dict(replicas={"churn-v1": 2}, stages={"churn-v1": "Approved"}, verdict=None,
             degraded=(T, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED), warnings=(c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED,)),
        id="first version never ready: Degraded at the deadline, kept (nothing to fall back to), not rejected"),
    Row(dict(mvs=[mv(1, "Candidate")]),
        dict(phase="Degraded", degraded=(T, c.ROLLOUT_NO_MODEL_VERSION), warnings=(c.ROLLOUT_NO_MODEL_VERSION,)),
        id="nothing approved: Degraded with the reason, one Warning"),
    Row(dict(spec=PINNED_V7, mvs=[mv(7, "Registered")]),
        dict(replicas={}, degraded=(T, c.ROLLOUT_MODEL_VERSION_REJECTED)),
        id="pinned Registered (imported) version: not served until approved"),
    Row(dict(spec=PINNED_V7, mvs=[mv(7, "Approved")]),
        dict(replicas={"churn-v7": 2}, candidate="churn-v7", degraded=None),
        id="pinned version once approved: served"),
])
def test_selection_and_first_deployment(given, expect):
    check(given, expect)


def test_a_pinned_registered_version_says_how_to_approve_it():
    plan = decide(observe(spec=PINNED_V7, mvs=[mv(7, "Registered")]))
    message = c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]
    assert "not approved yet" in message and "`kubectl noria approve churn-v7`" in message


def test_a_pinned_version_refused_for_its_digest_says_the_digest_not_not_approved():
    refused = by_rollout(7, "Rejected", "the server refused the artifact: DigestMismatch: sha256 is 3f..")
    plan = decide(observe(spec=PINNED_V7, mvs=[mv(6, "Production"), refused], pods=[ready("churn-v6")],
                          status={"stableVersion": "churn-v6"}))
    message = c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]
    assert "DigestMismatch" in message and "not approved" not in message and "`kubectl noria retry churn`" in message


def test_a_pinned_version_refused_says_the_digest_even_when_its_rejected_stage_was_lost_to_a_crash():
    verdict = {"version": "churn-v7", "stage": "Rejected", "reason": c.ARTIFACT_VERIFICATION_FAILED,
               "message": "the server refused the artifact: DigestMismatch: sha256 is 3f.."}
    plan = decide(observe(spec=PINNED_V7, mvs=[mv(6, "Production"), mv(7, "Approved")], pods=[ready("churn-v6")],
                          status={"stableVersion": "churn-v6", "lastVerdict": verdict}))
    assert "DigestMismatch" in c.get_condition(plan.status["conditions"], c.PROGRESSING)["message"]
    assert stages(plan)["churn-v7"] == "Rejected" and plan.replicas == {"churn-v6": 2}


# --- the canary's steps ----------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)], pods=[ready("churn-v6")]),
        dict(candidate="churn-v7", step=0, weights={"churn-v6": 100}, replicas={"churn-v6": 2, "churn-v7": 2},
             stages={"churn-v7": "Canary"}),
        id="new version: step 0, all traffic on stable, both run"),
    Row(dict(status=mid_canary(0), mvs=SERVING, pods=BOTH_READY, now=T0 + 3 * SEC),
        dict(weights={"churn-v6": 90, "churn-v7": 10}, step=1, stepStartedAt="2026-11-23T12:00:03Z",
             noProgressSince=None),
        id="setWeight: applied, next step (the first raise needs no measurement: nothing to measure at 0%)"),
    Row(dict(status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, now=T0 + 59 * SEC),
        dict(step=1, weights={"churn-v6": 90, "churn-v7": 10}, noProgressSince=None),
        id="timed pause: holds until its duration (not a stall)"),
    Row(dict(status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, now=T0 + 60 * SEC),
        dict(step=2, weights={"churn-v6": 90, "churn-v7": 10}),
        id="timed pause: ends after its duration; the raise waits for the next pass"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=BOTH_READY, now=T0 + 5 * 60 * MIN),
        dict(step=3, phase="Paused", paused=(T, c.ROLLOUT_PAUSED_FOR_PROMOTION), noProgressSince=None,
             warnings=()),
        id="pause without duration: waits for a person, hours later still no stall, no abort"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=BOTH_READY, promote=True),
        dict(stable="churn-v7", weights={"churn-v7": 100}, stages={"churn-v7": "Production", "churn-v6": "Retired"},
             consume_first=("promote",), verdict=("churn-v7", "Production", c.ROLLOUT_PROMOTED)),
        id="promote at the last pause: goes past it, and the switch it leads to happens now"),
    Row(dict(status=mid_canary(0), mvs=SERVING, pods=BOTH_READY, promote_full=True),
        dict(stable="churn-v7", weights={"churn-v7": 100}, consume_first=("promote",), phase="Healthy",
             verdict=("churn-v7", "Production", c.ROLLOUT_PROMOTED)),
        id="promote=full at step 0: every remaining step skipped, promoted now"),
    Row(dict(status=mid_canary(4, analysis=last("Successful", T0, streak=1)), mvs=SERVING, pods=BOTH_READY),
        dict(weights={"churn-v7": 100}, stable="churn-v7", stages={"churn-v7": "Production", "churn-v6": "Retired"},
             scaled_down=("churn-v6",), delete=(), phase="Healthy"),
        id="switch after a fresh success: promoted, old stable retired with a scale-down deadline"),
    Row(dict(spec=NO_CHECKS, status=mid_canary(4, spec=NO_CHECKS), mvs=SERVING, pods=BOTH_READY),
        dict(stable="churn-v7"),
        id="switch without analysis checks: nothing to wait for"),
])
def test_steps(given, expect):
    check(given, expect)


# --- never promote blind: the gate on every traffic raise --------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status=mid_canary(2, analysis=last("Error", T0, consecutiveErrors=1)), mvs=SERVING, pods=BOTH_READY,
             now=T0 + 30 * SEC),
        dict(step=2, weights={"churn-v6": 90, "churn-v7": 10}, noProgressSince=c.now_iso(T0 + 30 * SEC),
             progressing=(T, c.ROLLOUT_STEP_IN_PROGRESS)),
        id="raise held: latest measurement an Error within consecutiveErrorLimit (hold, not continue)"),
    Row(dict(status=mid_canary(2, analysis=last("Successful", T0, streak=1)), mvs=SERVING, pods=BOTH_READY),
        dict(step=3, weights={"churn-v6": 50, "churn-v7": 50}, streak=0),
        id="raise after a success at the current weight; the streak restarts with the new traffic"),
    Row(dict(status=mid_canary(2, analysis=last("Successful", T0, streak=0)), mvs=SERVING, pods=BOTH_READY),
        dict(step=2, weights={"churn-v6": 90, "churn-v7": 10}),
        id="raise held: the last success was before the traffic changed (streak 0)"),
    Row(dict(status=mid_canary(4, analysis=last("Error", T0, consecutiveErrors=2)), mvs=SERVING, pods=BOTH_READY),
        dict(stable="churn-v6", candidate="churn-v7", weights={"churn-v6": 50, "churn-v7": 50}),
        id="final switch held while the latest measurement is an Error (Prometheus stopped mid-pause)"),
    Row(dict(status=mid_canary(4, analysis=last("Error", T0, consecutiveErrors=2)), mvs=SERVING, pods=BOTH_READY,
             measurement=measured("error", T0 + 30 * SEC)),
        dict(stable="churn-v6", candidate=None, weights={"churn-v6": 100}, stages={"churn-v7": "Rejected",
                                                                                   "churn-v6": "Production"},
             degraded=(T, c.ROLLOUT_ANALYSIS_ERRORS), verdict=("churn-v7", "Rejected", c.ROLLOUT_ANALYSIS_ERRORS)),
        id="errors beyond consecutiveErrorLimit: abort, traffic to stable"),
    Row(dict(status=mid_canary(4, analysis=last("Error", T0), noProgressSince=c.now_iso(T0)), mvs=SERVING,
             pods=BOTH_READY, now=T0 + 10 * MIN),
        dict(candidate=None, weights={"churn-v6": 100}, degraded=(T, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED),
             verdict=("churn-v7", "Rejected", c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED),
             warnings=(c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED,)),
        id="held for progressDeadline: abort with ProgressDeadlineExceeded"),
    Row(dict(status=mid_canary(2, analysis=last("Error", T0)), mvs=SERVING, pods=BOTH_READY, promote=True),
        dict(step=3, weights={"churn-v6": 50, "churn-v7": 50}),
        id="promote: a person's word goes past the gate once, raise included"),
    Row(dict(status=mid_canary(4, analysis=last("Error", T0)), mvs=SERVING, pods=BOTH_READY, promote=True),
        dict(stable="churn-v7", weights={"churn-v7": 100}, verdict=("churn-v7", "Production", c.ROLLOUT_PROMOTED)),
        id="promote while the gate holds the final switch: promoted"),
    Row(dict(spec=SHADOW, status=mid_canary(3, spec=SHADOW, canaryWeight=100, analysis=last("Error", T0)), mvs=SERVING,
             pods=BOTH_READY),
        dict(stable="churn-v6", mirror=("churn-v7", 100), weights={"churn-v6": 100, "churn-v7": 0}),
        id="shadow: the switch from mirroring is held while the latest measurement is an Error"),
    Row(dict(spec=SHADOW, status=mid_canary(3, spec=SHADOW, canaryWeight=100, analysis=last("Successful", T0, streak=1)),
             mvs=SERVING,
             pods=BOTH_READY),
        dict(stable="churn-v7", mirror=None, weights={"churn-v7": 100}),
        id="shadow: the switch after a success while mirrored"),
    Row(dict(spec=BLUE_GREEN, status=mid_canary(2, spec=BLUE_GREEN), mvs=SERVING, pods=BOTH_READY),
        dict(stable="churn-v7"),
        id="blueGreen without prePromotionAnalysis: nothing measured before the switch, nothing to wait for"),
])
def test_gate(given, expect):
    check(given, expect)


# --- analysis steps: count consecutive successes ---------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(spec=COUNTED, status=mid_canary(1, spec=COUNTED, analysis=last("Successful", T0 + 30 * SEC, streak=1)),
             mvs=SERVING, pods=BOTH_READY, measurement=measured("success", T0 + 60 * SEC), now=T0 + 60 * SEC),
        dict(step=1, streak=2, noProgressSince=None),
        id="count 3: two consecutive successes are not enough"),
    Row(dict(spec=COUNTED, status=mid_canary(1, spec=COUNTED, analysis=last("Successful", T0 + 60 * SEC, streak=2)),
             mvs=SERVING, pods=BOTH_READY, measurement=measured("success", T0 + 90 * SEC), now=T0 + 90 * SEC),
        dict(step=2, streak=3),
        id="count 3: the third consecutive success passes the step"),
    Row(dict(spec=COUNTED, status=mid_canary(1, spec=COUNTED, analysis=last("Successful", T0 + 60 * SEC, streak=2)),
             mvs=SERVING, pods=BOTH_READY, measurement=measured("error", T0 + 90 * SEC), now=T0 + 90 * SEC),
        dict(step=1, streak=0, noProgressSince=c.now_iso(T0 + 90 * SEC)),
        id="count 3: an error breaks the streak (consecutive means consecutive)"),
    Row(dict(spec=COUNTED, status=mid_canary(1, spec=COUNTED, analysis=last("Successful", T0 - SEC, streak=1)),
             mvs=SERVING, pods=BOTH_READY, now=T0 + 1 * SEC),
        dict(step=1),
        id="analysis step: a success from before the step began does not count"),
])
def test_analysis_count(given, expect):
    check(given, expect)


def test_analysis_step_message_shows_the_count_progress():
    plan = check(dict(spec=COUNTED, status=mid_canary(1, spec=COUNTED, analysis=last("Successful", T0, streak=1)),
                      mvs=SERVING, pods=BOTH_READY, measurement=measured("success", T0 + 30 * SEC),
                      now=T0 + 30 * SEC), dict(step=1))
    assert "2 of 3 consecutive successful measurements" in plan.status["message"]


# --- late labels: waiting, not pausing ------------------------------------------------------------
WAIT = "37 of 100 labels"


@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(spec=LABELS, status=mid_canary(1, spec=LABELS), mvs=SERVING, pods=BOTH_READY,
             measurement=measured("waiting", T0 + 30 * SEC, "accuracy", WAIT), now=T0 + 30 * SEC),
        dict(step=1, measured="Waiting", streak=0, paused=None, warnings=(),
             progressing=(T, c.ROLLOUT_WAITING_FOR_LABELS), noProgressSince=c.now_iso(T0 + 30 * SEC)),
        id="waiting for labels: no tally, no pause, no advance; the deadline clock runs"),
    Row(dict(spec=LABELS, status=mid_canary(1, spec=LABELS), mvs=SERVING, pods=BOTH_READY,
             measurement=measured("waiting", T0 + 5 * MIN, "accuracy", WAIT), now=T0 + 5 * MIN),
        dict(step=1, measured="Inconclusive", paused=(T, c.ROLLOUT_ANALYSIS_INCONCLUSIVE),
             warnings=(c.ROLLOUT_ANALYSIS_INCONCLUSIVE,)),
        id="waiting past labelTimeout (from the step's start): inconclusive as before"),
    Row(dict(spec=LABELS_NO_TIMEOUT, status=mid_canary(1, spec=LABELS, noProgressSince=c.now_iso(T0)), mvs=SERVING,
             pods=BOTH_READY, measurement=measured("waiting", T0 + 10 * MIN, "accuracy", WAIT), now=T0 + 10 * MIN),
        dict(candidate=None, degraded=(T, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED),
             verdict=("churn-v7", "Rejected", c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED)),
        id="waiting without labelTimeout: bounded by progressDeadline"),
    Row(dict(spec=LABELS, status=mid_canary(1, spec=LABELS, analysis=last("Waiting", T0 + 30 * SEC)), mvs=SERVING,
             pods=BOTH_READY, measurement=measured("success", T0 + 60 * SEC, "accuracy"), now=T0 + 60 * SEC),
        dict(step=2, streak=1, noProgressSince=None),
        id="labels arrived: the analysis step passes by itself, no person needed"),
    Row(dict(status=mid_canary(1, analysis=last("Successful", T0, streak=1)), mvs=SERVING, pods=BOTH_READY,
             measurement=measured("waiting", T0 + 30 * SEC, "accuracy", WAIT), now=T0 + 30 * SEC),
        dict(step=1, progressing=(T, c.ROLLOUT_WAITING_FOR_LABELS), noProgressSince=None, streak=1),
        id="waiting during a timed pause: said, not a stall, the streak kept"),
])
def test_waiting_for_labels(given, expect):
    check(given, expect)


def test_waiting_for_labels_says_how_many_it_has():
    plan = decide(observe(spec=LABELS, status=mid_canary(1, spec=LABELS), mvs=SERVING, pods=BOTH_READY,
                          measurement=measured("waiting", T0 + 30 * SEC, "accuracy", WAIT), now=T0 + 30 * SEC))
    assert WAIT in c.get_condition(plan.status["conditions"], c.PROGRESSING)["message"]


# --- unready candidate, unhealthy stable ------------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status=mid_canary(0), mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7", 1)]),
        dict(weights={"churn-v6": 100, "churn-v7": 0}, step=0, progressing=(T, c.ROLLOUT_WAITING_FOR_PODS),
             noProgressSince=c.now_iso(T0)),
        id="candidate not ready before its first traffic: waits, no weight moves"),
    Row(dict(status=mid_canary(0, noProgressSince=c.now_iso(T0)), mvs=SERVING, now=T0 + 10 * MIN,
             pods=[ready("churn-v6"), unready("churn-v7")]),
        dict(weights={"churn-v6": 100}, candidate=None, stages={"churn-v7": "Rejected", "churn-v6": "Production"},
             degraded=(T, c.ROLLOUT_CANDIDATE_UNREADY), phase="Degraded"),
        id="candidate never ready within progressDeadline: abort CandidateUnready"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7", 0)]),
        dict(weights={"churn-v6": 100, "churn-v7": 0}, step=3, progressing=(T, c.ROLLOUT_CANDIDATE_UNREADY),
             degraded=None, candidateUnreadySince=c.now_iso(T0), warnings=(c.ROLLOUT_CANDIDATE_UNREADY,)),
        id="candidate with traffic loses every ready pod: weight 0 at once"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7", 1)]),
        dict(weights={"churn-v6": 50, "churn-v7": 50}, progressing=(T, c.ROLLOUT_CANDIDATE_UNREADY),
             candidateUnreadySince=c.now_iso(T0), warnings=()),
        id="candidate partly ready: keeps its traffic within the grace period"),
    Row(dict(status=mid_canary(3, candidateUnreadySince=c.now_iso(T0)), mvs=SERVING,
             pods=[ready("churn-v6"), unready("churn-v7", 1)], now=T0 + UNREADY_GRACE * SEC),
        dict(weights={"churn-v6": 100, "churn-v7": 0}, warnings=(c.ROLLOUT_CANDIDATE_UNREADY,)),
        id="candidate partly ready past the grace period: weight 0"),
    Row(dict(status={**mid_canary(3, candidateUnreadySince=c.now_iso(T0), noProgressSince=c.now_iso(T0)),
                     "canaryWeight": 0, "weights": {"churn-v6": 100, "churn-v7": 0}},
             mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7")], now=T0 + 10 * MIN),
        dict(candidate=None, degraded=(T, c.ROLLOUT_CANDIDATE_UNREADY),
             verdict=("churn-v7", "Rejected", c.ROLLOUT_CANDIDATE_UNREADY)),
        id="candidate not ready again within progressDeadline: abort CandidateUnready (Degraded)"),
    Row(dict(status={**mid_canary(3, candidateUnreadySince=c.now_iso(T0), noProgressSince=c.now_iso(T0)),
                     "canaryWeight": 0, "weights": {"churn-v6": 100, "churn-v7": 0}},
             mvs=SERVING, pods=BOTH_READY, now=T0 + 2 * MIN),
        dict(weights={"churn-v6": 50, "churn-v7": 50}, step=3, candidateUnreadySince=None, noProgressSince=None,
             stepStartedAt=c.now_iso(T0 + 2 * MIN), paused=(T, c.ROLLOUT_PAUSED_FOR_PROMOTION)),
        id="candidate ready again: the step's traffic is back and the step starts over (no stuck pause)"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=[unready("churn-v6", 0), ready("churn-v7")]),
        dict(weights={"churn-v6": 0, "churn-v7": 100}, step=3, degraded=(T, c.ROLLOUT_STABLE_UNHEALTHY),
             warnings=(c.ROLLOUT_STABLE_UNHEALTHY,), noProgressSince=None),
        id="stable has no ready pod, candidate ready: fail over to the candidate, step holds"),
    Row(dict(status=mid_canary(1), mvs=SERVING, pods=[unready("churn-v6", 1), ready("churn-v7")], now=T0 + 2 * MIN),
        dict(weights={"churn-v6": 90, "churn-v7": 10}, step=1, degraded=(T, c.ROLLOUT_STABLE_UNHEALTHY)),
        id="stable partly ready: traffic stays, the step holds (the pause does not end)"),
    Row(dict(status=mid_canary(3, noProgressSince=c.now_iso(T0)), mvs=SERVING, now=T0 + 60 * MIN,
             pods=[unready("churn-v6", 0), ready("churn-v7")]),
        dict(candidate="churn-v7", weights={"churn-v6": 0, "churn-v7": 100}, noProgressSince=None),
        id="stable unhealthy: no deadline abort (it would send traffic to the broken stable)"),
    Row(dict(status=mid_canary(3), mvs=SERVING, pods=[unready("churn-v6", 0), unready("churn-v7", 0)]),
        dict(weights={"churn-v6": 100, "churn-v7": 0}, progressing=(T, c.ROLLOUT_CANDIDATE_UNREADY)),
        id="both unready: traffic to the stable (last known good); the candidate's clock runs"),
])
def test_unready_pods(given, expect):
    check(given, expect)


def test_a_stable_that_recovers_clears_degraded():
    first = decide(observe(status=mid_canary(3), mvs=SERVING, pods=[unready("churn-v6", 0), ready("churn-v7")]))
    later = decide(observe(status=first.status, mvs=SERVING, pods=BOTH_READY, now=T0 + 10 * SEC))
    assert cond(later, c.DEGRADED) == (F, c.ROLLOUT_STEP_IN_PROGRESS)
    assert later.weights == {"churn-v6": 50, "churn-v7": 50}


# --- inconclusive analysis and promote (issue #13 finding 2) -----------------------------------------
def test_promote_after_an_inconclusive_pause_goes_past_the_gate_and_stays_past_it():
    spec = {**CANARY, "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50},
                                                        {"pause": {}}]}}}
    status = mid_canary(1, spec=spec)
    pods, mvs = BOTH_READY, SERVING
    paused = decide(observe(spec=spec, status=status, mvs=mvs, pods=pods, now=T0 + 30 * SEC,
                            measurement=measured("inconclusive", T0 + 30 * SEC)))
    assert facts(paused)["paused"] == (T, c.ROLLOUT_ANALYSIS_INCONCLUSIVE) and paused.status["currentStep"] == 1
    promoted = decide(observe(spec=spec, status=paused.status, mvs=mvs, pods=pods, now=T0 + 40 * SEC, promote=True))
    assert promoted.status["currentStep"] == 2 and promoted.weights == {"churn-v6": 50, "churn-v7": 50}
    assert facts(promoted)["paused"][0] == F and promoted.consume_first == ("promote",)
    three_s_later = decide(observe(spec=spec, status=promoted.status, mvs=mvs, pods=pods, now=T0 + 43 * SEC))
    assert three_s_later.status["currentStep"] == 3 and facts(three_s_later)["paused"] == (
        T, c.ROLLOUT_PAUSED_FOR_PROMOTION)  # the next gate, not the same one again


def test_inconclusive_pauses_once_and_never_advances_or_stalls_until_promoted():
    obs = observe(status=mid_canary(0), mvs=SERVING, pods=BOTH_READY, measurement=measured("inconclusive"))
    plan = decide(obs)
    assert plan.status["phase"] == "Paused" and facts(plan)["warnings"] == (c.ROLLOUT_ANALYSIS_INCONCLUSIVE,)
    again = decide(dataclasses.replace(obs, status=plan.status, measurement=None, now=T0 + 60 * MIN))
    assert again.status["currentStep"] == plan.status["currentStep"] and again.status["phase"] == "Paused"
    assert again.events == () and again.status.get("noProgressSince") is None
    assert not analysis_due(dataclasses.replace(obs, status=plan.status, measurement=None))


# --- aborts and retries ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status=mid_canary(1, analysis=last("Successful", streak=1, passed=1, failed=1)), mvs=SERVING,
             pods=BOTH_READY, measurement=measured("failure")),
        dict(weights={"churn-v6": 100}, replicas={"churn-v6": 2}, scaled_down=("churn-v7",),
             stages={"churn-v7": "Rejected", "churn-v6": "Production"}, candidate=None, phase="Degraded",
             degraded=(T, c.ROLLOUT_ANALYSIS_FAILED), verdict=("churn-v7", "Rejected", c.ROLLOUT_ANALYSIS_FAILED)),
        id="failures beyond failureLimit: abort in the safe order"),
    Row(dict(status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, measurement=measured("failure")),
        dict(candidate="churn-v7", streak=0, warnings=(c.ROLLOUT_ANALYSIS_FAILED,)),
        id="a failure within failureLimit: counted, one Warning for the measurement"),
    Row(dict(status=mid_canary(2), mvs=SERVING, pods=BOTH_READY, abort=True),
        dict(weights={"churn-v6": 100}, stages={"churn-v7": "Rejected", "churn-v6": "Production"},
             degraded=(T, c.ROLLOUT_ABORTED_BY_USER)),
        id="abort annotation: aborts"),
    Row(dict(status={"stableVersion": "churn-v6", "conditions": c.set_condition(
        [], c.DEGRADED, c.TRUE, c.ROLLOUT_ANALYSIS_FAILED, "aborted")},
        mvs=[mv(6, "Production"), by_rollout(7, "Rejected")], pods=[ready("churn-v6")]),
        dict(candidate=None, phase="Degraded", degraded=(T, c.ROLLOUT_ANALYSIS_FAILED), warnings=()),
        id="after an abort: the rejected version is not picked again, no new Warning"),
    Row(dict(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), by_rollout(7, "Rejected")],
             pods=[ready("churn-v6")], retry=True),
        dict(candidate="churn-v7", stages={"churn-v7": "Canary"}, verdict=("churn-v7", "Approved", c.ROLLOUT_RETRIED)),
        id="retry: the rejected version walks the steps again (verdict Approved, so nothing re-rejects it)"),
])
def test_aborts_and_retries(given, expect):
    check(given, expect)


def test_abort_annotation_is_consumed_after_status():
    plan = decide(observe(status=mid_canary(2), mvs=SERVING, pods=BOTH_READY, abort=True))
    assert plan.consume_last == ("abort",)


# --- rollbackWindow ------------------------------------------------------------------------------------
# CHECKS tolerates one failure (failureLimit 1): the window's analysis is judged as the rollout's.
IN_WINDOW = {"stableVersion": "churn-v7", "previousVersion": "churn-v6",
             "rollbackWindowEndsAt": c.now_iso(T0 + 10 * MIN), "analysis": last("Failed", T0, failed=1)}
WINDOW_PODS = [ready("churn-v7"), ready("churn-v6", scale_down_at=T0 + 10 * MIN)]
WINDOW_MVS = [by_rollout(6, "Retired"), by_rollout(7, "Production")]


@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(spec=WINDOW, status=mid_canary(4, spec=WINDOW, analysis=last("Successful", streak=1)), mvs=SERVING,
             pods=BOTH_READY),
        dict(stable="churn-v7", previousVersion="churn-v6", rollbackWindowEndsAt=c.now_iso(T0 + 10 * MIN),
             scaled_down=("churn-v6",), stages={"churn-v7": "Production", "churn-v6": "Retired"}),
        id="promotion with rollbackWindow: the previous version's pods keep running, analysis goes on"),
    Row(dict(spec=WINDOW, status=IN_WINDOW, mvs=WINDOW_MVS, pods=WINDOW_PODS, now=T0 + MIN,
             measurement=measured("failure", T0 + MIN)),
        dict(stable="churn-v6", weights={"churn-v6": 100}, previousVersion=None,
             stages={"churn-v6": "Production", "churn-v7": "Rejected"}, degraded=(T, c.ROLLOUT_ROLLED_BACK),
             verdict=("churn-v7", "Rejected", c.ROLLOUT_ROLLED_BACK), warnings=(c.ROLLOUT_ROLLED_BACK,),
             scaled_down=("churn-v7",), phase="Degraded"),
        id="failure inside the window: traffic back to the previous version at once, new one Rejected"),
    Row(dict(spec=WINDOW, status=IN_WINDOW, mvs=WINDOW_MVS, pods=WINDOW_PODS, now=T0 + MIN,
             measurement=measured("success", T0 + MIN)),
        dict(stable="churn-v7", weights={"churn-v7": 100}, previousVersion="churn-v6", degraded=None),
        id="success inside the window: the new version stays"),
    Row(dict(spec=WINDOW, status=IN_WINDOW, mvs=WINDOW_MVS, pods=WINDOW_PODS, now=T0 + 10 * MIN),
        dict(stable="churn-v7", previousVersion=None, rollbackWindowEndsAt=None),
        id="window over: no more rollback, the previous version scales down at its deadline"),
])
def test_rollback_window(given, expect):
    check(given, expect)


def test_analysis_runs_against_the_new_stable_inside_the_window_only():
    obs = observe(spec=WINDOW, status=IN_WINDOW, mvs=WINDOW_MVS, pods=WINDOW_PODS, now=T0 + 30 * SEC)
    assert analysis_target(dict(obs.status)) == ("churn-v7", "churn-v6")
    assert analysis_due(obs)
    assert not analysis_due(dataclasses.replace(obs, now=T0 + 10 * MIN))
    assert analysis_target({"stableVersion": "churn-v7"}) is None


# --- durable verdicts: what status implies is re-emitted every pass ----------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status={"stableVersion": "churn-v6", "lastVerdict": {
        "version": "churn-v7", "stage": "Rejected", "reason": c.ROLLOUT_ANALYSIS_FAILED, "message": "failed"}},
        mvs=[mv(6, "Production"), by_rollout(7, "Canary")], pods=[ready("churn-v6")]),
        dict(stages={"churn-v6": "Production", "churn-v7": "Rejected"}, candidate=None),
        id="abort: status written, ModelVersion not -> Rejected re-emitted (never Approved again)"),
    Row(dict(status={"stableVersion": "churn-v6", "lastVerdict": {
        "version": "churn-v7", "stage": "Rejected", "reason": c.ROLLOUT_ANALYSIS_FAILED, "message": "failed"}},
        mvs=[mv(6, "Production"), by_rollout(7, "Canary")], pods=[ready("churn-v6")], retry=True),
        dict(candidate="churn-v7", verdict=("churn-v7", "Approved", c.ROLLOUT_RETRIED)),
        id="retry still finds a version whose Rejected write was lost (the verdict says it was rejected)"),
    Row(dict(status={"stableVersion": "churn-v7", "lastVerdict": {
        "version": "churn-v7", "stage": "Production", "reason": c.ROLLOUT_PROMOTED}},
        mvs=[by_rollout(6, "Production"), by_rollout(7, "Canary")], pods=[ready("churn-v7")]),
        dict(stages={"churn-v7": "Production", "churn-v6": "Retired"}),
        id="promotion: status written, ModelVersions not -> new Production, old Retired"),
    Row(dict(status={"stableVersion": "churn-v6", "lastVerdict": {
        "version": "churn-v7", "stage": "Rejected", "reason": c.ROLLOUT_ANALYSIS_FAILED}},
        mvs=[mv(6, "Production"), by_rollout(7, "Rejected")], pods=[ready("churn-v6")]),
        dict(stages={"churn-v6": "Production"}),
        id="nothing lost: nothing re-emitted beyond the stable"),
])
def test_durable_verdicts(given, expect):
    check(given, expect)


# --- Events once per transition ------------------------------------------------------------------------
@pytest.mark.parametrize("given", [
    pytest.param(dict(spec_error="spec.strategy: set exactly one"), id="invalid spec"),
    pytest.param(dict(mvs=[mv(1, "Candidate")]), id="nothing approved"),
    pytest.param(dict(status=mid_canary(3), mvs=SERVING, pods=[unready("churn-v6", 0), ready("churn-v7")]),
                 id="stable unhealthy"),
    pytest.param(dict(status=mid_canary(3), mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7", 0)]),
                 id="candidate unready"),
])
def test_a_second_pass_over_the_same_observation_posts_no_warning(given):
    spec_error = given.pop("spec_error", None)
    obs = observe(**given)
    if spec_error:
        obs = dataclasses.replace(obs, spec=None, spec_error=spec_error)
    first = decide(obs)
    assert [t for t, _, _ in first.events].count("Warning") == 1
    second = decide(dataclasses.replace(obs, status=first.status, now=T0 + 2 * SEC))
    assert [e for e in second.events if e[0] == "Warning"] == []


def test_invalid_spec_is_degraded_and_touches_nothing():
    obs = dataclasses.replace(observe(), spec=None, spec_error="spec.strategy: set exactly one")
    plan = decide(obs)
    assert plan.status["phase"] == "Degraded" and plan.replicas == {} and plan.weights is None


# --- new versions, rollback, scale-down ---------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(status=mid_canary(2), mvs=[*SERVING, mv(8)], pods=BOTH_READY),
        dict(weights={"churn-v6": 100}, candidate="churn-v8", step=0, scaled_down=("churn-v7",),
             stages={"churn-v7": "Approved", "churn-v8": "Canary"}),
        id="newer version mid-rollout supersedes the candidate (back to Approved)"),
    Row(dict(spec={**CANARY, "source": {"modelVersion": "churn-v6"}, "rollbackWindow": "10m"},
             status={"stableVersion": "churn-v7"}, mvs=[mv(6, "Retired"), mv(7, "Production")],
             pods=[ready("churn-v7"), ready("churn-v6", scale_down_at=T0 + 5 * MIN)]),
        dict(weights={"churn-v6": 100}, stable="churn-v6", stages={"churn-v6": "Production", "churn-v7": "Retired"},
             verdict=("churn-v6", "Production", c.ROLLOUT_FAST_ROLLBACK)),
        id="pinned back to a still-running version: rolled back at once"),
    Row(dict(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), by_rollout(7, "Rejected")],
             pods=[ready("churn-v6"), ready("churn-v7", scale_down_at=T0 + 20 * SEC)], retry=True),
        dict(weights={"churn-v6": 100}, candidate="churn-v7", step=0),
        id="a retried version whose pods still run walks the steps again"),
])
def test_new_versions(given, expect):
    check(given, expect)


def test_replaced_versions_are_deleted_only_after_their_deadline():
    pods = [ready("churn-v7"), ready("churn-v6", scale_down_at=T0 + 10 * SEC), ready("churn-v5")]
    obs = observe(status={"stableVersion": "churn-v7"}, mvs=[mv(7, "Production")], pods=pods)
    plan = decide(obs)
    assert plan.delete == () and set(plan.scale_down) == {"churn-v5"}
    assert decide(dataclasses.replace(obs, now=T0 + 10 * SEC)).delete == ("churn-v6",)


def test_a_restarted_pass_with_the_same_status_repeats_nothing():
    obs = observe(status=mid_canary(0), mvs=SERVING, pods=BOTH_READY)
    first = decide(obs)
    second = decide(dataclasses.replace(obs, status=first.status))
    assert second.status["currentStep"] == 1 and second.weights == first.weights  # pause: no skip, no repeat


def test_background_analysis_is_due_once_per_interval_while_the_canary_has_traffic():
    base = observe(status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, now=T0 + 30 * SEC)
    assert not analysis_due(dataclasses.replace(base, now=T0 + 29 * SEC))  # first: one interval in
    assert analysis_due(base)
    measured_status = mid_canary(1, analysis={"last": {"at": c.now_iso(T0)}})
    assert not analysis_due(dataclasses.replace(base, status=measured_status, now=T0 + 29 * SEC))
    assert analysis_due(dataclasses.replace(base, status=measured_status, now=T0 + 30 * SEC))
    assert not analysis_due(dataclasses.replace(base, status=mid_canary(0)))  # no traffic applied yet
    sick_stable = dataclasses.replace(base, pods={"churn-v6": unready("churn-v6"), "churn-v7": ready("churn-v7")})
    assert not analysis_due(sick_stable)  # the step holds: no measurement would decide anything


# --- artifacts: out of scope, refused by the server (issue #10) --------------------------------
REFUSAL = ArtifactRefusal("DigestMismatch", "sha256 of model.skops is 3f.., the ModelVersion says 00..", 3, "p-1")
OUT = {"churn-v7": "spec.artifact.uri 'file:///etc/passwd' is outside namespace ml's store (...)"}
PINNED_V7 = {**CANARY, "source": {"modelVersion": "churn-v7"}}


def crashed(version: str, refusal: ArtifactRefusal = REFUSAL) -> VersionPods:
    return VersionPods(version, 2, 0, True, None, refusal)


def degraded(plan: Plan) -> tuple[str, str]:
    cond = c.get_condition(plan.status["conditions"], c.DEGRADED)
    return cond["status"], cond["reason"]


@pytest.mark.parametrize(("given", "weights", "replicas", "stage", "reason"), [
    pytest.param(dict(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), crashed("churn-v7")]),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="canary refused mid-way: traffic back to stable, candidate rejected"),
    pytest.param(dict(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), crashed("churn-v7")]),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="canary refused before any weight moved"),
    pytest.param(dict(status={"canaryVersion": "churn-v1"}, mvs=[mv(1)], pods=[crashed("churn-v1")]),
                 {}, {}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="first deployment refused: nothing serves, Degraded"),
    pytest.param(dict(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
                      pods=[ready("churn-v6")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="newest version out of scope: never started, stable serves"),
    pytest.param(dict(spec=PINNED_V7, status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
                      pods=[ready("churn-v6")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="pinned version out of scope: refused, stable serves"),
    pytest.param(dict(mvs=[mv(7)], out_of_scope=OUT), None, {}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="first deployment out of scope: no Deployment at all"),
    pytest.param(dict(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), ready("churn-v7")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Approved", c.ARTIFACT_OUT_OF_SCOPE,
                 id="candidate found out of scope mid-way (trust withdrawn): dropped, stable serves"),
])
def test_artifact_trust(given, weights, replicas, stage, reason):
    plan = decide(observe(**given))
    assert plan.weights == weights
    assert plan.replicas == replicas  # the refused or out-of-scope version never gets pods asked for
    assert stages(plan).get("churn-v7" if "churn-v7" in {m["metadata"]["name"] for m in given["mvs"]}
                         else "churn-v1") == stage
    assert degraded(plan) == (c.TRUE, reason) and plan.status["phase"] == "Degraded"
    assert plan.status.get("canaryVersion") is None


def test_a_refused_candidate_says_why_everywhere():
    plan = decide(observe(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), crashed("churn-v7")]))
    (change,) = [s for s in plan.stage_changes if s.version == "churn-v7"]
    assert "DigestMismatch" in change.reason and change.traffic == 0
    assert "churn-v7" in plan.scale_down  # scaled down after traffic left it, not deleted at once
    assert any(t == "Warning" and r == c.ARTIFACT_VERIFICATION_FAILED and "DigestMismatch" in m
               for t, r, m in plan.events)
    assert "DigestMismatch" in c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]


def test_after_a_refused_first_deployment_the_reason_stays_until_something_serves():
    first = decide(observe(status={"canaryVersion": "churn-v1"}, mvs=[mv(1)], pods=[crashed("churn-v1")]))
    rejected = mv(1, "Rejected", history=[{"stage": "Rejected", "by": "rollout/churn"}])
    later = decide(observe(status=first.status, mvs=[rejected], pods=[crashed("churn-v1")]))
    assert degraded(later) == (c.TRUE, c.ARTIFACT_VERIFICATION_FAILED)
    assert later.replicas == {}


def test_out_of_scope_message_names_the_field():
    plan = decide(observe(spec=PINNED_V7, mvs=[mv(7)], out_of_scope=OUT))
    assert "spec.artifact.uri" in c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]


def test_a_stable_version_that_refuses_its_artifact_is_not_ready_and_says_why():
    plan = decide(observe(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production")],
                          pods=[crashed("churn-v6")]))
    ready_condition = c.get_condition(plan.status["conditions"], c.READY)
    assert ready_condition["status"] == c.FALSE and ready_condition["reason"] == c.ARTIFACT_VERIFICATION_FAILED
    assert degraded(plan) == (c.TRUE, c.ARTIFACT_VERIFICATION_FAILED)
    assert plan.replicas == {"churn-v6": 2}  # nothing to fall back to: what runs keeps running


def server_pod(state=None, last=None, name="server") -> dict:
    status = {"name": name, "state": state or {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": last or {}}
    return {"metadata": {"name": "churn-churn-v7-abc", "labels": {"noria.dev/version": "churn-v7"}},
            "status": {"containerStatuses": [status]}}


REFUSED = {"terminated": {"exitCode": 3, "message": '{"reason": "ArtifactVerificationFailed", "kind": "UntrustedType",'
                                                    ' "message": "os.system is not a trusted type"}'}}


@pytest.mark.parametrize(("pod", "kind"), [
    (server_pod(last=REFUSED), "UntrustedType"),  # restarted: the refusal is in lastState
    (server_pod(state=REFUSED), "UntrustedType"),  # just exited
    (server_pod(state={"running": {}}, last=REFUSED), "UntrustedType"),  # running again, still refused before
    (server_pod(last={"terminated": {"exitCode": 137, "message": "Traceback ...\nMemoryError"}}), None),  # a crash
    (server_pod(last={"terminated": {"exitCode": 1, "message": '{"reason": "Other"}'}}), None),
    (server_pod(last={"terminated": {"exitCode": 3}}), None),  # no message: not a refusal by contract
    (server_pod(last=REFUSED, name="sidecar"), None),  # only the server container speaks for the artifact
])
def test_artifact_refusal_is_read_from_the_server_termination_message(pod, kind):
    found = artifact_refusal(pod)
    assert (found.kind if found else None) == kind
    if found:
        assert found.exit_code == 3 and found.pod == "churn-churn-v7-abc" and "os.system" in found.message


def test_decide_never_changes_its_observation():
    import copy
    verdict = {"version": "churn-v7", "stage": "Rejected", "reason": c.ROLLOUT_ANALYSIS_FAILED, "message": "failed"}
    obs = observe(status={"stableVersion": "churn-v6", "lastVerdict": verdict},
                  mvs=[mv(6, "Production"), by_rollout(7, "Canary")], pods=[ready("churn-v6")], retry=True)
    before = copy.deepcopy((dict(obs.status), dict(obs.model_versions)))
    decide(obs)
    assert (dict(obs.status), dict(obs.model_versions)) == before


@pytest.mark.parametrize("spec", [CANARY, COUNTED, LABELS, SHADOW, BLUE_GREEN, WINDOW, NO_CHECKS],
                         ids=["canary", "counted", "labels", "shadow", "blueGreen", "window", "no-checks"])
def test_every_step_with_every_input_gives_a_consistent_plan(spec):
    """Every step index x annotation x pod state x measurement: no crash, and the plan never sends
    user traffic to a version without a ready pod while another version has one (except where a
    person asked for it: noria.dev/abort always sends traffic back to the stable)."""
    steps = plan_steps(parse_rollout_spec(spec))
    base = observe(spec=spec, mvs=SERVING, now=T0 + MIN)  # the spec parsed once
    pod_states = [BOTH_READY, [ready("churn-v6"), unready("churn-v7", 0)], [ready("churn-v6"), unready("churn-v7", 1)],
                  [unready("churn-v6", 0), ready("churn-v7")]]
    for i in range(len(steps)):
        at_step = mid_canary(i, spec=spec)
        for kw in ({}, {"promote": True}, {"promote_full": True}, {"abort": True}):
            for pods in pod_states:
                for outcome in (None, "success", "failure", "error", "inconclusive", "waiting"):
                    m = measured(outcome, T0 + MIN) if outcome else None
                    for prior in ("Successful", "Error", "Waiting"):
                        status = {**at_step, "analysis": last(prior, T0, streak=1)}
                        plan = decide(dataclasses.replace(base, status=status, pods={p.version: p for p in pods},
                                                          measurement=m, **kw))
                        live = {p.version for p in pods if p.ready > 0}
                        sent = {v for v, w in (plan.weights or {}).items() if w > 0}
                        if not kw.get("abort"):
                            assert not (sent - live) or not live, (i, kw, pods, outcome, prior, plan.weights)
