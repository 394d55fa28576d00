"""When a pipeline is passed again: polled triggers at the resync, the rest at their own requeue."""

from __future__ import annotations

from noria.training.handlers import next_pass_in


def test_a_cron_only_pipeline_waits_for_its_tick_not_the_resync():
    # Found by benchmarks/scale.py: 1,000 cron-only pipelines were passed every 30 s each.
    spec = {"triggers": {"schedule": {"cron": "0 0 1 1 *"}}}
    assert next_pass_in(spec, 86400.0, resync=30, idle_resync=600) == 600
    assert next_pass_in(spec, 12.0, resync=30, idle_resync=600) == 12
    assert next_pass_in({}, None, resync=30, idle_resync=600) == 600


def test_a_pipeline_with_a_polled_trigger_is_passed_every_resync():
    for kind in ("drift", "performance", "newData"):
        spec = {"triggers": {kind: {"x": 1}, "schedule": {"cron": "0 0 1 1 *"}}}
        assert next_pass_in(spec, 86400.0, resync=30, idle_resync=600) == 30
        assert next_pass_in(spec, None, resync=30, idle_resync=600) == 30
        assert next_pass_in(spec, 2.0, resync=30, idle_resync=600) == 2
