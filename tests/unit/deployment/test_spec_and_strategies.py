"""Spec parsing and strategy plans: the steps and traffic each strategy asks for."""

from __future__ import annotations

import pytest
from noria.deployment.durations import parse_duration
from noria.deployment.spec import RolloutSpecError, parse_rollout_spec
from noria.deployment.strategies import Step, Traffic, plan_steps, split_replicas, traffic_at


def spec(**strategy):
    return {"source": {"pipeline": "churn"}, "replicas": 2, "strategy": strategy}


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (7, 7),
                                          ("2w", 1209600)])
def test_durations_parse_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "m5", "", "-1s", True])
def test_bad_durations_name_the_field(bad):
    with pytest.raises(ValueError, match="pause"):
        parse_duration(bad, "pause")


CHECKED = {"analysis": {"checks": [{"builtin": "errorRate", "max": "0.01"}]}}


@pytest.mark.parametrize(("body", "steps", "traffic"), [
    pytest.param(spec(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50},
                                        {"pause": {}}]}),
                 (Step("setWeight", weight=10), Step("pause", duration=60.0), Step("setWeight", weight=50),
                  Step("pause", duration=None), Step("switch")),
                 [Traffic(10), Traffic(10), Traffic(50), Traffic(50), Traffic(100)],
                 id="canary: the user's steps, then the implied switch; weights apply in order"),
    pytest.param(spec(canary={"steps": [{"setWeight": 20}, {"setWeight": 100}, {"pause": {}}]}),
                 (Step("setWeight", weight=20), Step("switch")), [Traffic(20), Traffic(100)],
                 id="canary: a 100% step is the switch and ends the plan"),
    pytest.param({**spec(canary={"steps": [{"setWeight": 20}, {"analysis": {"count": 3}}]}), **CHECKED},
                 (Step("setWeight", weight=20), Step("analysis", count=3), Step("switch")),
                 [Traffic(20), Traffic(20), Traffic(100)],
                 id="canary: an analysis step carries its count"),
    pytest.param({**spec(blueGreen={"prePromotionAnalysis": {}}), **CHECKED},
                 (Step("preview"), Step("analysis"), Step("pause", duration=None), Step("switch")),
                 [Traffic(preview=True), Traffic(preview=True), Traffic(preview=True), Traffic(100)],
                 id="blueGreen without autoPromotionAfter: preview, analysis, wait for a person, switch"),
    pytest.param(spec(blueGreen={"autoPromotionAfter": "10m"}),
                 (Step("preview"), Step("pause", duration=600.0), Step("switch")),
                 [Traffic(preview=True), Traffic(preview=True), Traffic(100)],
                 id="blueGreen with autoPromotionAfter: a timed pause"),
    pytest.param({**spec(shadow={"mirrorPercent": 50, "duration": "1m", "promote": "automatic"}), **CHECKED},
                 (Step("mirror", mirror_percent=50), Step("pause", duration=60.0), Step("analysis"), Step("switch")),
                 [Traffic(mirror_percent=50), Traffic(mirror_percent=50), Traffic(mirror_percent=50), Traffic(100)],
                 id="shadow: mirrored, no user traffic until the switch"),
    pytest.param(spec(shadow={}), (Step("mirror", mirror_percent=100), Step("pause", duration=None), Step("switch")),
                 [Traffic(mirror_percent=100), Traffic(mirror_percent=100), Traffic(100)],
                 id="shadow: manual promotion by default"),
    pytest.param(spec(immediate={}), (Step("switch"),), [Traffic(100)], id="immediate: one switch"),
])
def test_plan_steps_and_traffic(body, steps, traffic):
    planned = plan_steps(parse_rollout_spec(body))
    assert planned == steps
    assert [traffic_at(planned, i) for i in range(len(planned))] == traffic


@pytest.mark.parametrize("body,field", [
    (spec(canary={"steps": [{"setWeight": 50}, {"setWeight": 10}]}), "must not decrease"),
    (spec(canary={"steps": [{"setWeight": 150}]}), "setWeight"),
    ({**spec(canary={"steps": [{"setWeight": 10}]}), "strategy": {"canary": {"steps": []}, "immediate": {}}},
     "exactly one"),
    ({**spec(shadow={}), "traffic": {"provider": "service"}}, "cannot mirror"),
    (spec(canary={"steps": [{"analysis": {}}]}), "no checks"),
    ({**spec(immediate={}), "source": {}}, "spec.source"),
    ({**spec(immediate={}), "traffic": {"provider": "gatewayAPI"}}, "httpRoute"),
    ({**spec(immediate={}), "analysis": {"checks": [{"builtin": "errorRate"}]}}, "min or max"),
])
def test_invalid_specs_are_refused_with_the_field_named(body, field):
    with pytest.raises(RolloutSpecError, match=field):
        parse_rollout_spec(body)


def test_latency_bounds_accept_durations():
    s = parse_rollout_spec({**spec(immediate={}), "analysis": {"checks": [{"builtin": "latencyP99", "max": "250ms"}]}})
    assert s.analysis.checks[0].max == pytest.approx(0.25)


@pytest.mark.parametrize("weight,replicas,expected", [(0, 2, 0), (10, 2, 1), (50, 2, 2), (20, 4, 1), (100, 3, 3)])
def test_split_replicas_approximates_the_weight(weight, replicas, expected):
    assert split_replicas(weight, replicas) == expected
