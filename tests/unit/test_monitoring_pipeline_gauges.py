"""The TrainingPipeline gauges alert rules and the dashboard compare: they mirror status.triggers
(tested features only, the threshold, the live metric and its target) and lose series that status no
longer shows, or when the pipeline is gone."""

from __future__ import annotations

import datetime as dt

from noria import opmetrics
from noria.training import gauges, triggers
from noria.training.triggers import TriggerResult

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def values(gauge, pipeline: str) -> dict[tuple[str, ...], float]:  # noqa: ANN001
    return {tuple(s.labels.values()): s.value for metric in gauge.collect() for s in metric.samples
            if s.labels.get("pipeline") == pipeline}


def drift(features: list[tuple[str, str, str | None]], threshold: str = "0.2") -> TriggerResult:
    return TriggerResult(triggers.DRIFT, False, {
        "threshold": threshold, "features": [{"feature": f, "value": v, "pValue": p} for f, v, p in features]}, "")


def test_drift_gauges_show_tested_features_and_the_threshold() -> None:
    gauges.record("ml", "gauge-test-a", [drift([("tenure", "0.3100", "1e-05"), ("age", "0.0200", None)])])
    assert values(opmetrics.PIPELINE_DRIFT, "gauge-test-a") == {("ml", "gauge-test-a", "tenure"): 0.31}
    assert values(opmetrics.PIPELINE_DRIFT_THRESHOLD, "gauge-test-a") == {("ml", "gauge-test-a"): 0.2}
    gauges.record("ml", "gauge-test-a", [drift([("age", "0.0500", "0.3")])])  # tenure no longer shown
    assert values(opmetrics.PIPELINE_DRIFT, "gauge-test-a") == {("ml", "gauge-test-a", "age"): 0.05}
    gauges.record("ml", "gauge-test-a", [TriggerResult(triggers.DRIFT, False, {}, "no drift trigger")])
    assert values(opmetrics.PIPELINE_DRIFT, "gauge-test-a") == {} and values(opmetrics.PIPELINE_DRIFT_THRESHOLD, "gauge-test-a") == {}


def test_live_metric_gauges_show_the_value_and_its_target() -> None:
    perf = TriggerResult(triggers.PERFORMANCE, False, {"metric": "f1", "value": "0.6100", "below": "0.75"}, "")
    gauges.record("ml", "gauge-test-b", [perf])
    assert values(opmetrics.PIPELINE_LIVE_METRIC, "gauge-test-b") == {("ml", "gauge-test-b", "f1"): 0.61}
    assert values(opmetrics.PIPELINE_LIVE_METRIC_BELOW, "gauge-test-b") == {("ml", "gauge-test-b", "f1"): 0.75}
    too_few = TriggerResult(triggers.PERFORMANCE, False, {"metric": "f1", "below": "0.75", "labels": 3}, "")
    gauges.record("ml", "gauge-test-b", [too_few])  # too few labels: no value rather than a stale one
    assert values(opmetrics.PIPELINE_LIVE_METRIC, "gauge-test-b") == {}
    assert values(opmetrics.PIPELINE_LIVE_METRIC_BELOW, "gauge-test-b") == {("ml", "gauge-test-b", "f1"): 0.75}


def test_a_deleted_pipeline_loses_its_series() -> None:
    gauges.record("ml", "gauge-test-c", [drift([("tenure", "0.3", "0.001")]),
                                         TriggerResult(triggers.PERFORMANCE, False,
                                                       {"metric": "accuracy", "value": "0.9", "below": "0.8"}, "")])
    gauges.forget("ml", "gauge-test-c")
    for gauge in (opmetrics.PIPELINE_DRIFT, opmetrics.PIPELINE_DRIFT_THRESHOLD, opmetrics.PIPELINE_LIVE_METRIC,
                  opmetrics.PIPELINE_LIVE_METRIC_BELOW):
        assert values(gauge, "gauge-test-c") == {}, gauge


def test_a_started_run_has_its_outcomes_at_zero_so_its_failure_shows_in_increase() -> None:
    from noria.training import handlers, pipeline

    def runs() -> dict[str, float]:
        return {s.labels["outcome"]: s.value for metric in opmetrics.RUNS.collect() for s in metric.samples
                if s.labels.get("pipeline") == "gauge-test-d" and s.name.endswith("_total")}

    handlers._count("ml", "gauge-test-d", pipeline.Plan(status=None, started="drift"))
    assert runs() == {"started": 1.0, "Succeeded": 0.0, "Rejected": 0.0, "Failed": 0.0}
    handlers._count("ml", "gauge-test-d", pipeline.Plan(status=None, finished=("drift", "Failed")))
    assert runs()["Failed"] == 1.0
