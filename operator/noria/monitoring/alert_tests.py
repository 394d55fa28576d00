"""promtool unit tests of the alert rules: for every alert, input series where it fires and where it
does not (another object that is fine, a time before ``for`` has passed, a stale standby replica).

Written as data here so the series names come from the same modules as the rules; ``python -m
noria.monitoring`` writes them next to the rules (``alerts_test.yaml``) and a unit test runs
``promtool test rules`` on them. Expected annotations are the rules' own templates rendered with
the expected labels, so a changed description cannot pass unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from noria import metrics as m
from noria.contracts import COMPONENT_ROUTER, COMPONENT_SERVER

from . import promql as q
from .alerts import ALERTS, Alert, render, runbook_url
from .promql import COMPONENT, NAMESPACE, OP_PIPELINE, OP_ROLLOUT, POD, POD_VERSION, ROLLOUT

RULES_FILE = "alerts.yaml"
INTERVAL = "1m"

# Target labels a scrape gives: the operator's metrics Service (ServiceMonitor, honorLabels) and a pod
# of the PodMonitor.
OPERATOR = {"job": "noria-operator", "instance": "10.0.0.1:9808"}
STANDBY = {"job": "noria-operator", "instance": "10.0.0.2:9808"}
OPERATOR_POD = {**OPERATOR, NAMESPACE: "noria-system"}


def series(metric: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def pod_target(pod: str, rollout: str, version: str, component: str = COMPONENT_SERVER) -> dict[str, str]:
    return {"job": "noria-system/noria-models", "instance": f"10.1.0.{len(pod)}:8080", NAMESPACE: "ml", POD: pod,
            "container": component, "endpoint": "http", ROLLOUT: rollout, POD_VERSION: version, COMPONENT: component}


def server(version: str, **labels: str) -> dict[str, str]:
    """A model server's own labels (model = the pipeline) on a pod's target labels."""
    return {**pod_target(f"churn-{version}-5d8f9", "churn", version), m.LABEL_MODEL: "churn",
            m.LABEL_VERSION: version, **labels}


@dataclass(frozen=True)
class Case:
    """At ``eval_time`` after input ``series`` (1 sample per minute), ``alert`` fires exactly for
    ``fires`` (the alert's labels, severity added here)."""

    given: str
    series: dict[str, str]
    eval_time: str
    fires: tuple[dict[str, str], ...] = field(default_factory=tuple)


def _leader(*values: str) -> dict[str, str]:
    out = {series(q.LEADER, OPERATOR_POD): values[0]}
    if len(values) > 1:
        out[series(q.LEADER, {**STANDBY, NAMESPACE: "noria-system"})] = values[1]
    return out


CASES: dict[str, tuple[Case, ...]] = {
    "NoriaTrainingRunFailed": (
        Case("churn's run failed at minute 3; fraud's runs succeed",
             {series(q.RUNS, {**OPERATOR, NAMESPACE: "ml", OP_PIPELINE: "churn", "trigger": "drift",
                              "outcome": "Failed"}): "0 0 0 1x80",
                  series(q.RUNS, {**OPERATOR, NAMESPACE: "ml", OP_PIPELINE: "fraud", "trigger": "drift",
                                  "outcome": "Failed"}): "0x80",
                  series(q.RUNS, {**OPERATOR, NAMESPACE: "ml", OP_PIPELINE: "fraud", "trigger": "drift",
                                  "outcome": "Succeeded"}): "0 1 2 3x80"},
             "10m", ({NAMESPACE: "ml", OP_PIPELINE: "churn"},)),
        Case("more than an hour after the failure", {
            series(q.RUNS, {**OPERATOR, NAMESPACE: "ml", OP_PIPELINE: "churn", "trigger": "drift",
                            "outcome": "Failed"}): "0 0 0 1x80"}, "75m"),
    ),
    "NoriaDriftAboveThreshold": (
        Case("churn drifts 0.35 > 0.2 for 35 minutes; fraud 0.1 < 0.2 (a standby's stale 0.9 ignored)", {
            **_leader("1x40", "0x40"),
            series(q.PIPELINE_DRIFT, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "feature": "tenure"}): "0.35x40",
            series(q.PIPELINE_DRIFT, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "feature": "age"}): "0.05x40",
            series(q.PIPELINE_DRIFT_THRESHOLD, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn"}): "0.2x40",
            series(q.PIPELINE_DRIFT, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "fraud", "feature": "amount"}): "0.1x40",
            series(q.PIPELINE_DRIFT, {**STANDBY, NAMESPACE: "ml", OP_PIPELINE: "fraud", "feature": "amount"}): "0.9x40",
            series(q.PIPELINE_DRIFT_THRESHOLD, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "fraud"}): "0.2x40",
        }, "35m", ({NAMESPACE: "ml", OP_PIPELINE: "churn"},)),
        Case("churn has drifted for 20 minutes only", {
            **_leader("1x40"),
            series(q.PIPELINE_DRIFT, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "feature": "tenure"}): "0.1x15 0.35x25",
            series(q.PIPELINE_DRIFT_THRESHOLD, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn"}): "0.2x40",
        }, "35m"),
    ),
    "NoriaLiveMetricBelowTarget": (
        Case("churn's live f1 0.6 < 0.75 for 20 minutes; fraud's 0.9 >= 0.75", {
            **_leader("1x30"),
            series(q.PIPELINE_LIVE_METRIC, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "metric": "f1"}): "0.6x30",
            series(q.PIPELINE_LIVE_METRIC_BELOW, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "metric": "f1"}): "0.75x30",
            series(q.PIPELINE_LIVE_METRIC, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "fraud", "metric": "f1"}): "0.9x30",
            series(q.PIPELINE_LIVE_METRIC_BELOW, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "fraud", "metric": "f1"}): "0.75x30",
        }, "20m", ({NAMESPACE: "ml", OP_PIPELINE: "churn", "metric": "f1"},)),
        Case("churn's live f1 below target for 10 minutes only", {
            **_leader("1x30"),
            series(q.PIPELINE_LIVE_METRIC, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "metric": "f1"}): "0.6x30",
            series(q.PIPELINE_LIVE_METRIC_BELOW, {**OPERATOR_POD, NAMESPACE: "ml", OP_PIPELINE: "churn", "metric": "f1"}): "0.75x30",
        }, "10m"),
    ),
    "NoriaRolloutDegraded": (
        Case("churn is Degraded; fraud is Healthy", {
            **_leader("1x10"),
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "phase": "Degraded"}): "0 1x9",
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "fraud", "phase": "Degraded"}): "0x10",
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "fraud", "phase": "Healthy"}): "1x10",
        }, "5m", ({NAMESPACE: "ml", OP_ROLLOUT: "churn"},)),
        Case("a standby's stale Degraded while the leader says Healthy", {
            **_leader("1x10", "0x10"),
            series(q.ROLLOUT_PHASE, {**STANDBY, NAMESPACE: "ml", OP_ROLLOUT: "churn", "phase": "Degraded"}): "1x10",
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "phase": "Degraded"}): "0x10",
        }, "5m"),
    ),
    "NoriaRolloutStuck": (
        Case("churn Progressing at step 2 since minute 10; fraud's step moves every 20 minutes", {
            **_leader("1x120"),
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "phase": "Progressing"}): "0x9 1x110",
            series(q.ROLLOUT_STEP, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn"}): "-1x9 2x110",
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "fraud", "phase": "Progressing"}): "1x120",
            series(q.ROLLOUT_STEP, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "fraud"}): "0x19 1x19 2x19 3x19 4x19 5x19",
        }, "90m", ({NAMESPACE: "ml", OP_ROLLOUT: "churn"},)),
        Case("churn Progressing for 50 minutes only", {
            **_leader("1x120"),
            series(q.ROLLOUT_PHASE, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "phase": "Progressing"}): "0x9 1x110",
            series(q.ROLLOUT_STEP, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn"}): "2x120",
        }, "60m"),
    ),
    "NoriaAnalysisErrors": (
        Case("errorRate cannot be measured every minute; accuracy failed once", {
            series(q.ANALYSIS_MEASUREMENTS, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "check": "errorRate",
                                             "outcome": "Error"}): "0 1 2 3 4 5",
            series(q.ANALYSIS_MEASUREMENTS, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "check": "accuracy",
                                             "outcome": "Error"}): "0 0 1 1 1 1",
            series(q.ANALYSIS_MEASUREMENTS, {**OPERATOR_POD, NAMESPACE: "ml", OP_ROLLOUT: "churn", "check": "accuracy",
                                             "outcome": "Successful"}): "0 1 2 3 4 5",
        }, "5m", ({NAMESPACE: "ml", OP_ROLLOUT: "churn", "check": "errorRate"},)),
    ),
    "NoriaModelServerNotReady": (
        Case("a server pod stops answering at minute 2; a router pod and another server answer", {
            series("up", pod_target("churn-v2-7c9d4", "churn", "churn-v2")): "1 1 0x10",
            series("up", pod_target("churn-v1-5d8f9", "churn", "churn-v1")): "1x12",
            series("up", pod_target("churn-router-6b7f8", "churn", "", COMPONENT_ROUTER)): "1x12",
        }, "10m", ({NAMESPACE: "ml", POD: "churn-v2-7c9d4", ROLLOUT: "churn", COMPONENT: COMPONENT_SERVER},)),
        Case("kube-state-metrics says a server that answers is not ready (others ready)", {
            series("up", pod_target("churn-v2-7c9d4", "churn", "churn-v2")): "1x12",
            series("up", pod_target("churn-v1-5d8f9", "churn", "churn-v1")): "1x12",
            series("kube_pod_status_ready", {"job": "kube-state-metrics", NAMESPACE: "ml", POD: "churn-v2-7c9d4",
                                             "condition": "true"}): "1 1 0x10",
            series("kube_pod_status_ready", {"job": "kube-state-metrics", NAMESPACE: "ml", POD: "churn-v1-5d8f9",
                                             "condition": "true"}): "1x12",
        }, "10m", ({NAMESPACE: "ml", POD: "churn-v2-7c9d4", ROLLOUT: "churn", COMPONENT: COMPONENT_SERVER},)),
        Case("down for 3 minutes only", {
            series("up", pod_target("churn-v2-7c9d4", "churn", "churn-v2")): "1x7 0x5",
        }, "10m"),
    ),
    "NoriaFeedbackStalled": (
        Case("v1's labels stop at minute 200 while it keeps answering; v2 never gets labels", {
            series(m.REQUESTS_TOTAL, server("churn-v1", **{m.LABEL_ENDPOINT: m.ENDPOINT_INFER}, code="200")): "0+10x300",
            series(m.FEEDBACK_TOTAL, server("churn-v1", actual="1", predicted="1")): "0+5x200 1000x100",
            series(m.REQUESTS_TOTAL, server("churn-v2", **{m.LABEL_ENDPOINT: m.ENDPOINT_INFER}, code="200")): "0+10x300",
            series(m.FEEDBACK_TOTAL, server("churn-v2", actual="1", predicted="1")): "0x300",
        }, "290m", ({NAMESPACE: "ml", m.LABEL_MODEL: "churn", m.LABEL_VERSION: "churn-v1"},)),
        Case("labels keep coming", {
            series(m.REQUESTS_TOTAL, server("churn-v1", **{m.LABEL_ENDPOINT: m.ENDPOINT_INFER}, code="200")): "0+10x300",
            series(m.FEEDBACK_ABS_ERROR_COUNT, server("churn-v1")): "0+5x300",
        }, "290m"),
    ),
    "NoriaPredictionLogDropping": (
        Case("v1 drops prediction log lines from minute 2; its feedback log is fine", {
            series(m.PREDICTION_LOG_DROPPED_TOTAL, server("churn-v1", kind="predictions")): "0 0 5+5x10",
            series(m.PREDICTION_LOG_DROPPED_TOTAL, server("churn-v1", kind="feedback")): "0x12",
        }, "10m", ({NAMESPACE: "ml", m.LABEL_MODEL: "churn", m.LABEL_VERSION: "churn-v1", m.LABEL_KIND: "predictions"},)),
    ),
    "NoriaOperatorNoLeader": (
        Case("the leader stops leading at minute 2 and the standby does not take over",
             _leader("1 1 0x10", "0x12"), "10m", ({},)),
        Case("no operator is scraped at all", {series("up", {"job": "other"}): "1x12"}, "10m", ({},)),
        Case("the standby takes over", _leader("1 1 0x10", "0 0 1x10"), "10m"),
    ),
    "NoriaReconcileErrors": (
        Case("Rollout passes fail every minute; TrainingPipeline passes succeed", {
            series(q.RECONCILE_ERRORS, {**OPERATOR_POD, "kind": "Rollout"}): "0+1x30",
            series(q.RECONCILE_ERRORS, {**OPERATOR_POD, "kind": "TrainingPipeline"}): "0x30",
        }, "25m", ({"kind": "Rollout"},)),
        Case("Rollout passes failed for 10 minutes, then recovered", {
            series(q.RECONCILE_ERRORS, {**OPERATOR_POD, "kind": "Rollout"}): "0+1x10 10x20",
        }, "30m"),
    ),
}


def _expected(alert: Alert, labels: dict[str, str]) -> dict[str, Any]:
    rule = alert.rule(runbook_url(alert))
    return {"exp_labels": {**labels, "severity": alert.severity},
            "exp_annotations": {k: render(v, labels) for k, v in rule["annotations"].items()}}


def promtool_tests() -> dict[str, Any]:
    """The promtool test file (``promtool test rules alerts_test.yaml``)."""
    missing = {a.name for a in ALERTS} - CASES.keys()
    if missing:
        raise ValueError(f"alerts without promtool tests: {sorted(missing)}")
    by_name = {a.name: a for a in ALERTS}
    tests = []
    for name, cases in CASES.items():
        alert = by_name[name]
        for case in cases:
            tests.append({
                "interval": INTERVAL,
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [{"eval_time": case.eval_time, "alertname": name,
                                     "exp_alerts": [_expected(alert, labels) for labels in case.fires]}],
            })
    return {"rule_files": [RULES_FILE], "evaluation_interval": INTERVAL, "tests": tests}
