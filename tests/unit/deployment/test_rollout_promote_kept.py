"""A promote that arrives while the step cannot move (the candidate's pods are starting, the stable is
unhealthy) is kept, not lost: the annotation stays until the pass that acts on it, as Argo Rollouts
keeps a promote of an unready canary. Before the fix decide consumed it at once and the step machine
returned before reading it: the person's promote vanished without effect and without an Event."""

from __future__ import annotations

import pytest
from noria import conditions as c
from test_rollout_decide import (
    BOTH_READY,
    CANARY,
    MIN,
    SERVING,
    T0,
    decide,
    mid_canary,
    observe,
    ready,
    unready,
)

PAUSED_SPEC = {**CANARY, "paused": True}
STARTING = [ready("churn-v6"), unready("churn-v7", 0)]


@pytest.mark.parametrize("kw", [{"promote": True}, {"promote_full": True}], ids=["promote", "promote=full"])
def test_a_promote_while_the_candidates_pods_start_is_kept_and_said(kw):
    plan = decide(observe(status=mid_canary(3), mvs=SERVING, pods=STARTING, now=T0 + MIN, **kw))
    assert "promote" not in plan.consume_first  # the annotation stays for the pass that can act on it
    assert plan.status["currentStep"] == 3 and "lastVerdict" not in plan.status
    progressing = c.get_condition(plan.status["conditions"], c.PROGRESSING)
    assert "promote waits" in progressing["message"]


@pytest.mark.parametrize("kw", [{"promote": True}, {"promote_full": True}], ids=["promote", "promote=full"])
def test_the_kept_promote_takes_effect_once_the_pods_are_ready(kw):
    waiting = decide(observe(status=mid_canary(3), mvs=SERVING, pods=STARTING, now=T0 + MIN, **kw))
    plan = decide(observe(status=waiting.status, mvs=SERVING, pods=BOTH_READY, now=T0 + 2 * MIN, **kw))
    assert plan.consume_first == ("promote",)  # consumed in the pass that acts, before acting
    assert plan.status["stableVersion"] == "churn-v7"
    assert plan.status["lastVerdict"]["reason"] == c.ROLLOUT_PROMOTED


def test_a_promote_while_the_stable_is_unhealthy_is_kept():
    pods = [unready("churn-v6", 0), ready("churn-v7")]
    plan = decide(observe(status=mid_canary(3), mvs=SERVING, pods=pods, now=T0 + MIN, promote=True))
    assert "promote" not in plan.consume_first and plan.status["currentStep"] == 3


def test_a_promote_while_paused_is_still_consumed_and_refused_even_with_pods_starting():
    plan = decide(observe(spec=PAUSED_SPEC, status=mid_canary(3), mvs=SERVING, pods=STARTING, now=T0 + MIN,
                          promote=True))
    assert plan.consume_first == ("promote",)
    assert c.ROLLOUT_PAUSED_BY_USER in [r for t, r, _ in plan.events if t == "Warning"]


def test_a_promote_with_nothing_to_promote_is_consumed():
    plan = decide(observe(spec=CANARY, status={"stableVersion": "churn-v6"}, mvs=[SERVING[0]],
                          pods=[ready("churn-v6")], promote=True))
    assert plan.consume_first == ("promote",)


def test_a_pause_for_a_person_names_the_plugin_command():
    plan = decide(observe(status=mid_canary(3), mvs=SERVING, pods=BOTH_READY, now=T0 + MIN))
    paused = c.get_condition(plan.status["conditions"], c.PAUSED)
    assert paused["reason"] == c.ROLLOUT_PAUSED_FOR_PROMOTION and "`kubectl noria promote churn`" in paused["message"]
    assert [m for _, r, m in plan.events if r == c.ROLLOUT_PAUSED_FOR_PROMOTION] == [
        "churn-v7: paused at step 3 until `kubectl noria promote churn`"]


def test_a_waiting_promote_goes_with_its_candidate_when_that_is_aborted():
    by_user = decide(observe(status=mid_canary(3), mvs=SERVING, pods=STARTING, now=T0 + MIN, promote=True, abort=True))
    assert by_user.consume_first == ("promote",) and by_user.status["canaryVersion"] is None
    stalled = {**mid_canary(3), "noProgressSince": c.now_iso(T0)}
    deadline = decide(observe(status=stalled, mvs=SERVING, pods=STARTING, now=T0 + 11 * MIN, promote=True))
    assert deadline.consume_first == ("promote",) and deadline.status["canaryVersion"] is None
    assert deadline.status["lastVerdict"]["reason"] == c.ROLLOUT_CANDIDATE_UNREADY
