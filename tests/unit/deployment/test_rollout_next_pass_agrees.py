"""next_pass_in and decide/analysis_due agree: the next pass is scheduled for a time at which it has
something to do, never "now" for a time this pass already acted on. Before the fix, an analysis overdue
while analysis_due said no (an inconclusive pause, the candidate's pods starting) and a step older than
progressDeadline (a pause for a person, a first version that never gets ready) gave 0 s: a pass
after pass with nothing to do, as fast as the operator could run them."""

from __future__ import annotations

import dataclasses

import pytest
from noria import conditions as c
from noria.deployment.decide import analysis_due
from noria.deployment.handlers import next_pass_in
from test_rollout_decide import (
    BOTH_READY,
    MIN,
    SEC,
    SERVING,
    T0,
    WINDOW,
    decide,
    last,
    mid_canary,
    mv,
    observe,
    ready,
    unready,
)

INTERVAL, RESYNC = 2.0, 60.0
INCONCLUSIVE = [{"type": c.PAUSED, "status": c.TRUE, "reason": c.ROLLOUT_ANALYSIS_INCONCLUSIVE, "message": "x"}]


@pytest.mark.parametrize("given", [
    pytest.param(dict(status=mid_canary(2, analysis=last("Inconclusive", T0), conditions=INCONCLUSIVE),
                      pods=BOTH_READY, now=T0 + 5 * MIN), id="inconclusive pause, the last measurement long ago"),
    pytest.param(dict(status=mid_canary(2, analysis=last("Successful", T0, streak=1)),
                      pods=[ready("churn-v6"), unready("churn-v7", 0)], now=T0 + 5 * MIN),
                 id="candidate's pods starting, analysis overdue"),
    pytest.param(dict(status=mid_canary(3), pods=BOTH_READY, now=T0 + 60 * MIN),
                 id="a pause for a person longer than progressDeadline"),
    pytest.param(dict(spec=WINDOW, status={"stableVersion": "churn-v7", "previousVersion": "churn-v6",
                                           "rollbackWindowEndsAt": c.now_iso(T0 + 10 * MIN),
                                           "analysis": last("Successful", T0)},
                      mvs=[mv(6, "Retired"), mv(7, "Production")],
                      pods=[ready("churn-v6"), unready("churn-v7", 1)], now=T0 + 2 * MIN),
                 id="rollbackWindow, the new stable's pods not ready, analysis overdue"),
    pytest.param(dict(status={"canaryVersion": "churn-v7", "noProgressSince": c.now_iso(T0)}, mvs=[mv(7)],
                      pods=[unready("churn-v7", 0)], now=T0 + 60 * MIN),
                 id="a first version not ready long after progressDeadline (it keeps trying)"),
])
def test_the_next_pass_is_never_now_for_a_time_already_acted_on(given):
    o = observe(**{"mvs": SERVING, **given})
    plan = decide(o)
    assert next_pass_in(o, plan, INTERVAL, RESYNC) >= INTERVAL


def test_an_analysis_due_in_a_few_seconds_is_taken_then_and_is_due_then():
    o = observe(status=mid_canary(2, analysis=last("Successful", T0, streak=1)), mvs=SERVING, pods=BOTH_READY,
                now=T0 + 29 * SEC)
    plan = decide(o)
    delay = next_pass_in(o, plan, interval=5, resync=RESYNC)
    assert delay == pytest.approx(1, abs=0.01)
    assert analysis_due(dataclasses.replace(o, status=plan.status, now=o.now + delay * SEC))
