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


def test_canary_plan_appends_the_switch_and_applies_weights_in_order():
    s = parse_rollout_spec(spec(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}},
                                                  {"setWeight": 50}, {"pause": {}}]}))
    steps = plan_steps(s)
    assert steps == (Step("setWeight", weight=10), Step("pause", duration=60.0), Step("setWeight", weight=50),
                     Step("pause", duration=None), Step("switch"))
    assert [traffic_at(steps, i).weight for i in range(len(steps))] == [10, 10, 50, 50, 100]


def test_a_100_percent_step_is_the_switch_and_ends_the_plan():
    s = parse_rollout_spec(spec(canary={"steps": [{"setWeight": 20}, {"setWeight": 100}, {"pause": {}}]}))
    assert plan_steps(s)[-1] == Step("switch") and len(plan_steps(s)) == 2


def test_blue_green_previews_then_waits_for_promotion_without_auto_promotion():
    s = parse_rollout_spec({**spec(blueGreen={"prePromotionAnalysis": {}}),
                            "analysis": {"checks": [{"builtin": "errorRate", "max": "0.01"}]}})
    steps = plan_steps(s)
    assert [x.kind for x in steps] == ["preview", "analysis", "pause", "switch"]
    assert steps[2].duration is None
    assert traffic_at(steps, 1) == Traffic(weight=0, preview=True)


def test_shadow_mirrors_without_user_traffic_until_the_switch():
    s = parse_rollout_spec({**spec(shadow={"mirrorPercent": 50, "duration": "1m", "promote": "automatic"}),
                            "analysis": {"checks": [{"builtin": "shadowAgreement", "min": "0.95"}]}})
    steps = plan_steps(s)
    assert [x.kind for x in steps] == ["mirror", "pause", "analysis", "switch"]
    assert traffic_at(steps, 2) == Traffic(weight=0, mirror_percent=50)
    assert traffic_at(steps, 3) == Traffic(weight=100)


def test_immediate_is_one_switch():
    assert plan_steps(parse_rollout_spec(spec(immediate={}))) == (Step("switch"),)


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
