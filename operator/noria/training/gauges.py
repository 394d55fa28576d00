"""The TrainingPipeline gauges of ``noria.opmetrics``, set from one pass's trigger evaluations.

The drift and performance triggers compare live values with thresholds that live in each pipeline's
spec. ``status.triggers`` shows both to ``kubectl``; alert rules and the dashboard
(``noria.monitoring``) need them in Prometheus, which can only compare what it scrapes. So the gauges
mirror ``status.triggers``: the drift statistic of each tested feature (untested features, with too
few live values for the trigger, are left out: their statistic is noise), the drift threshold, the
live metric and its ``below`` target. A trigger that is not configured, or has nothing to show, has
no series; a deleted pipeline loses its series (``forget``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from noria import opmetrics

from . import triggers

# Label values set per pipeline, so series that are no longer shown can be removed.
_drift_features: dict[tuple[str, str], set[str]] = {}
_live_metrics: dict[tuple[str, str], set[str]] = {}


def _number(text: Any) -> float | None:
    try:
        return None if text is None else float(text)
    except (TypeError, ValueError):
        return None


def _record_drift(namespace: str, pipeline: str, state: Mapping[str, Any]) -> None:
    key = (namespace, pipeline)
    shown = {f["feature"]: value for f in state.get("features") or []
             if f.get("pValue") is not None and (value := _number(f.get("value"))) is not None}
    for gone in _drift_features.get(key, set()) - shown.keys():
        _remove(opmetrics.PIPELINE_DRIFT, namespace, pipeline, gone)
    for feature, value in shown.items():
        opmetrics.PIPELINE_DRIFT.labels(namespace, pipeline, feature).set(value)
    _drift_features[key] = set(shown)
    threshold = _number(state.get("threshold"))
    if threshold is None:
        _remove(opmetrics.PIPELINE_DRIFT_THRESHOLD, namespace, pipeline)
    else:
        opmetrics.PIPELINE_DRIFT_THRESHOLD.labels(namespace, pipeline).set(threshold)


def _record_performance(namespace: str, pipeline: str, state: Mapping[str, Any]) -> None:
    key = (namespace, pipeline)
    metric = state.get("metric")
    value, below = _number(state.get("value")), _number(state.get("below"))
    for gone in _live_metrics.get(key, set()) - ({metric} if metric else set()):
        _remove(opmetrics.PIPELINE_LIVE_METRIC, namespace, pipeline, gone)
        _remove(opmetrics.PIPELINE_LIVE_METRIC_BELOW, namespace, pipeline, gone)
    _live_metrics[key] = {metric} if metric else set()
    if not metric:
        return
    if value is None:  # too few labels yet: no value, rather than a stale one
        _remove(opmetrics.PIPELINE_LIVE_METRIC, namespace, pipeline, metric)
    else:
        opmetrics.PIPELINE_LIVE_METRIC.labels(namespace, pipeline, metric).set(value)
    if below is None:
        _remove(opmetrics.PIPELINE_LIVE_METRIC_BELOW, namespace, pipeline, metric)
    else:
        opmetrics.PIPELINE_LIVE_METRIC_BELOW.labels(namespace, pipeline, metric).set(below)


def record(namespace: str, pipeline: str, evaluations: Iterable[triggers.TriggerResult]) -> None:
    """Set the pipeline's gauges to what this pass's evaluations put in status.triggers."""
    for result in evaluations:
        if result.kind == triggers.DRIFT:
            _record_drift(namespace, pipeline, result.state)
        elif result.kind == triggers.PERFORMANCE:
            _record_performance(namespace, pipeline, result.state)


def forget(namespace: str, pipeline: str) -> None:
    """Remove every series of a pipeline that is gone."""
    _record_drift(namespace, pipeline, {})
    _record_performance(namespace, pipeline, {})
    _drift_features.pop((namespace, pipeline), None)
    _live_metrics.pop((namespace, pipeline), None)


def _remove(gauge: Any, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never set
        pass
