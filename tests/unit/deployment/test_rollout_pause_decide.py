"""spec.paused as decide carries it out (deployment/pause.py): the step holds, nothing is promoted or
started, abort and failing analysis still act, paused time never counts, and the resume carries on
with the time the step had left. Rows in the style of test_rollout_decide.py, whose helpers they use."""

from __future__ import annotations

import pytest
from noria import conditions as c
from noria.deployment import handlers
from noria.deployment.decide import analysis_due, decide
from noria.deployment.pause import paused_since, resumed
from test_rollout_decide import (
    BOTH_READY,
    CANARY,
    MIN,
    SEC,
    SERVING,
    T0,
    Row,
    check,
    facts,
    last,
    measured,
    mid_canary,
    mv,
    observe,
    ready,
    unready,
)

PAUSED = {**CANARY, "paused": True}
T, F = c.TRUE, c.FALSE


def paused_at(at, **status):
    """Status as the pass that first saw spec.paused left it (the Paused condition says since when)."""
    conditions = [{"type": c.PAUSED, "status": T, "reason": c.ROLLOUT_PAUSED_BY_USER, "message": "paused",
                   "lastTransitionTime": c.now_iso(at)},
                  {"type": c.PROGRESSING, "status": T, "reason": c.ROLLOUT_PAUSED_BY_USER, "message": "paused",
                   "lastTransitionTime": c.now_iso(T0)}]
    return {**status, "conditions": conditions}


def events(plan, reason):
    return [(t, m) for t, r, m in plan.events if r == reason]


# --- what holds and what still acts ------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expect"), [
    Row(dict(spec=PAUSED, status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, now=T0 + 5 * MIN),
        dict(step=1, weights={"churn-v6": 90, "churn-v7": 10}, phase="Paused", paused=(T, c.ROLLOUT_PAUSED_BY_USER),
             progressing=(T, c.ROLLOUT_PAUSED_BY_USER), stable="churn-v6", warnings=()),
        id="a timed pause step past its duration does not end while paused; weights stay"),
    Row(dict(spec=PAUSED, status=mid_canary(2, analysis=last("Successful", T0, streak=1)), mvs=SERVING,
             pods=BOTH_READY),
        dict(step=2, weights={"churn-v6": 90, "churn-v7": 10}, phase="Paused"),
        id="an open gate does not raise traffic while paused"),
    Row(dict(spec=PAUSED, status=mid_canary(4, analysis=last("Successful", T0, streak=1)), mvs=SERVING,
             pods=BOTH_READY),
        dict(stable="churn-v6", candidate="churn-v7", weights={"churn-v6": 50, "churn-v7": 50}, verdict=None),
        id="the final switch is not promoted while paused"),
    Row(dict(spec=PAUSED, status=mid_canary(2, analysis=last("Successful", T0, streak=1)), mvs=SERVING,
             pods=BOTH_READY, measurement=measured("success", T0 + 30 * SEC), now=T0 + 30 * SEC),
        dict(step=2, streak=2, measured="Successful", weights={"churn-v6": 90, "churn-v7": 10}),
        id="analysis goes on measuring while paused (tallied), and still nothing moves"),
    Row(dict(spec=PAUSED, status=mid_canary(2, analysis=last("Failed", T0, failed=1)), mvs=SERVING,
             pods=BOTH_READY, measurement=measured("failure", T0 + 30 * SEC), now=T0 + 30 * SEC),
        dict(candidate=None, weights={"churn-v6": 100}, phase="Degraded", degraded=(T, c.ROLLOUT_ANALYSIS_FAILED),
             verdict=("churn-v7", "Rejected", c.ROLLOUT_ANALYSIS_FAILED), paused=(T, c.ROLLOUT_PAUSED_BY_USER)),
        id="failing analysis past failureLimit aborts while paused (as unpaused)"),
    Row(dict(spec=PAUSED, status=mid_canary(2), mvs=SERVING, pods=BOTH_READY, abort=True),
        dict(candidate=None, weights={"churn-v6": 100}, verdict=("churn-v7", "Rejected", c.ROLLOUT_ABORTED_BY_USER)),
        id="abort still works while paused"),
    Row(dict(spec=PAUSED, status=mid_canary(3), mvs=SERVING, pods=BOTH_READY, promote=True),
        dict(step=3, stable="churn-v6", consume_first=("promote",), warnings=(c.ROLLOUT_PAUSED_BY_USER,),
             verdict=None),
        id="promote while paused: consumed and refused with a Warning that says to resume first"),
    Row(dict(spec=PAUSED, status=mid_canary(2), mvs=SERVING, pods=[ready("churn-v6"), unready("churn-v7")],
             now=T0 + 30 * SEC),
        dict(weights={"churn-v6": 100, "churn-v7": 0}, candidate="churn-v7", step=2),
        id="a candidate with no ready pod loses its traffic while paused (users first)"),
    Row(dict(spec=PAUSED, status=mid_canary(2, analysis=last("Error", T0), noProgressSince=c.now_iso(T0)),
             mvs=SERVING, pods=BOTH_READY, now=T0 + 60 * MIN),
        dict(candidate="churn-v7", noProgressSince=c.now_iso(T0), degraded=None),
        id="progressDeadline does not run while paused: an hour held, no abort, noProgressSince left as it was"),
    Row(dict(spec=PAUSED, status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
             pods=[ready("churn-v6")]),
        dict(candidate=None, replicas={"churn-v6": 2}, weights={"churn-v6": 100}, phase="Paused",
             progressing=(F, c.ROLLOUT_PAUSED_BY_USER), stages={"churn-v6": "Production"}),
        id="a new version does not start while paused"),
    Row(dict(spec=PAUSED, status=mid_canary(2), mvs=[*SERVING, mv(8)], pods=BOTH_READY),
        dict(candidate="churn-v7", step=2, replicas={"churn-v6": 2, "churn-v7": 2}),
        id="a newer version does not supersede the paused candidate"),
    Row(dict(spec=PAUSED, mvs=[mv(1)]),
        dict(replicas={}, candidate=None, phase="Paused"),
        id="paused before the first deployment: nothing starts"),
    Row(dict(spec=PAUSED, mvs=[mv(1)], pods=[ready("churn-v1")], status={"canaryVersion": "churn-v1"}),
        dict(replicas={"churn-v1": 2}, stable=None, candidate="churn-v1", verdict=None),
        id="a first deployment under way keeps its pods but is not promoted while paused"),
])
def test_paused(given, expect):
    check(given, expect)


def test_the_pause_is_announced_once_and_says_how_to_resume():
    plan = decide(observe(spec=PAUSED, status=mid_canary(1), mvs=SERVING, pods=BOTH_READY, now=T0 + 5 * SEC))
    [(kind, message)] = events(plan, c.ROLLOUT_PAUSED_BY_USER)
    assert kind == "Normal" and "kubectl noria resume churn" in message and "step 1" in message
    assert "kubectl noria resume churn" in plan.status["message"]
    assert paused_since(plan.status["conditions"]) == T0 + 5 * SEC
    again = decide(observe(spec=PAUSED, status=plan.status, mvs=SERVING, pods=BOTH_READY, now=T0 + 9 * SEC))
    assert events(again, c.ROLLOUT_PAUSED_BY_USER) == [] and paused_since(again.status["conditions"]) == T0 + 5 * SEC


def test_a_pause_over_a_pause_for_a_person_begins_when_spec_paused_is_seen():
    at_gate = decide(observe(status=mid_canary(3), mvs=SERVING, pods=BOTH_READY, now=T0))
    assert facts(at_gate)["paused"] == (T, c.ROLLOUT_PAUSED_FOR_PROMOTION)
    plan = decide(observe(spec=PAUSED, status=at_gate.status, mvs=SERVING, pods=BOTH_READY, now=T0 + 7 * MIN))
    assert facts(plan)["paused"] == (T, c.ROLLOUT_PAUSED_BY_USER)
    assert paused_since(plan.status["conditions"]) == T0 + 7 * MIN


def test_an_inconclusive_measurement_while_paused_raises_no_second_pause():
    plan = decide(observe(spec=PAUSED, status=paused_at(T0, **mid_canary(2)), mvs=SERVING, pods=BOTH_READY,
                          measurement=measured("inconclusive", T0 + 30 * SEC), now=T0 + 30 * SEC))
    assert facts(plan)["paused"] == (T, c.ROLLOUT_PAUSED_BY_USER) and facts(plan)["warnings"] == ()


def test_analysis_is_due_while_paused():
    obs = observe(spec=PAUSED, status=paused_at(T0, **mid_canary(2, analysis=last("Successful", T0))),
                  mvs=SERVING, pods=BOTH_READY, now=T0 + 30 * SEC)
    assert analysis_due(obs)


# --- resume ------------------------------------------------------------------------------------------
def test_resume_carries_on_with_the_time_the_pause_step_had_left():
    # step 1 is a 1 min pause begun at T0; paused after 20 s, for 10 min; resumed at T0 + 10 min 20 s
    status = paused_at(T0 + 20 * SEC, **mid_canary(1))
    resume = T0 + 10 * MIN + 20 * SEC
    plan = check(dict(status=status, mvs=SERVING, pods=BOTH_READY, now=resume),
                 dict(step=1, stepStartedAt=c.now_iso(T0 + 10 * MIN), paused=(F, c.ROLLOUT_RESUMED_BY_USER),
                      phase="Progressing", progressing=(T, c.ROLLOUT_STEP_IN_PROGRESS)))
    [(kind, message)] = events(plan, c.ROLLOUT_RESUMED_BY_USER)
    assert kind == "Normal" and "spec.paused=false" in message
    later = decide(observe(status=plan.status, mvs=SERVING, pods=BOTH_READY, now=resume + 39 * SEC))
    assert facts(later)["step"] == 1 and events(later, c.ROLLOUT_RESUMED_BY_USER) == []
    done = decide(observe(status=plan.status, mvs=SERVING, pods=BOTH_READY, now=resume + 40 * SEC))
    assert facts(done)["step"] == 2


def test_resume_does_not_count_the_paused_time_toward_progress_deadline():
    status = paused_at(T0 + 5 * MIN, **mid_canary(2, analysis=last("Error", T0), noProgressSince=c.now_iso(T0)))
    obs = resumed(observe(status=status, mvs=SERVING, pods=BOTH_READY, now=T0 + 65 * MIN))
    assert obs.status["noProgressSince"] == c.now_iso(T0 + 60 * MIN)  # 5 min stalled before the pause, kept
    plan = decide(observe(status=status, mvs=SERVING, pods=BOTH_READY, now=T0 + 65 * MIN))
    assert facts(plan)["candidate"] == "churn-v7" and facts(plan)["degraded"] is None


def test_resume_of_a_steady_rollout_starts_the_version_that_waited():
    status = paused_at(T0, stableVersion="churn-v6")
    check(dict(status=status, mvs=[mv(6, "Production"), mv(7)], pods=[ready("churn-v6")], now=T0 + MIN),
          dict(candidate="churn-v7", step=0, paused=(F, c.ROLLOUT_RESUMED_BY_USER)))


def test_next_pass_while_paused_at_an_expired_pause_step_is_not_immediate():
    measuring = mid_canary(1, analysis=last("Successful", T0 + 5 * MIN - SEC))  # analysis goes on while paused
    obs = observe(spec=PAUSED, status=paused_at(T0, **measuring), mvs=SERVING, pods=BOTH_READY, now=T0 + 5 * MIN)
    plan = decide(obs)
    assert handlers.next_pass_in(obs, plan, interval=2, resync=60) == 2
