"""The Rollout series of noria.opmetrics (deployment/metrics.py): what a pass's status change maps to,
that a measurement is counted once however many passes see it, and that a deleted Rollout leaves no
series behind."""

from __future__ import annotations

import pytest
from noria import conditions as c
from noria import opmetrics
from noria.deployment import metrics as rm
from noria.deployment.decide import decide
from test_rollout_decide import BOTH_READY, SEC, SERVING, T0, last, measured, mid_canary, observe

CHECK = [{"name": "errorRate", "outcome": "Successful", "message": ""}]
MEASURED = {"consecutiveSuccesses": 1, "last": {"at": "2026-11-23T12:00:30Z", "outcome": "Successful", "checks": CHECK}}
CANARY_10 = {"phase": "Progressing", "canaryVersion": "churn-v7", "stableVersion": "churn-v6", "currentStep": 1,
             "weights": {"churn-v6": 90, "churn-v7": 10}}
PROMOTED = {"version": "churn-v7", "stage": "Production", "reason": c.ROLLOUT_PROMOTED, "at": "2026-11-23T12:05:00Z"}
ABORTED = {"version": "churn-v7", "stage": "Rejected", "reason": c.ROLLOUT_ANALYSIS_FAILED, "at": "2026-11-23T12:05:00Z"}
FIRST = {"version": "churn-v1", "stage": "Production", "reason": c.ROLLOUT_FIRST_DEPLOYMENT, "at": "2026-11-23T12:00:00Z"}


@pytest.mark.parametrize(("before", "after", "expect"), [
    pytest.param({}, {}, rm.PassMetrics("Pending", -1, {}), id="nothing yet: Pending, no step, no weights"),
    pytest.param({}, CANARY_10, rm.PassMetrics("Progressing", 1, {"churn-v6": 90, "churn-v7": 10}),
                 id="mid-canary: step and both weights"),
    pytest.param(CANARY_10, {**CANARY_10, "analysis": MEASURED},
                 rm.PassMetrics("Progressing", 1, {"churn-v6": 90, "churn-v7": 10}, (("errorRate", "Successful"),)),
                 id="a newly recorded measurement: one count per check"),
    pytest.param({**CANARY_10, "analysis": MEASURED}, {**CANARY_10, "analysis": MEASURED},
                 rm.PassMetrics("Progressing", 1, {"churn-v6": 90, "churn-v7": 10}),
                 id="the same measurement on a later pass: not counted again"),
    pytest.param(CANARY_10, {"phase": "Healthy", "stableVersion": "churn-v7", "weights": {"churn-v7": 100},
                             "lastVerdict": PROMOTED},
                 rm.PassMetrics("Healthy", -1, {"churn-v7": 100}, promoted=True), id="promotion"),
    pytest.param({"lastVerdict": PROMOTED}, {"phase": "Healthy", "lastVerdict": PROMOTED},
                 rm.PassMetrics("Healthy", -1, {}), id="the same verdict again: no second promotion"),
    pytest.param({}, {"phase": "Healthy", "lastVerdict": FIRST}, rm.PassMetrics("Healthy", -1, {}),
                 id="a first deployment is not a promotion"),
    pytest.param(CANARY_10, {"phase": "Degraded", "stableVersion": "churn-v6", "weights": {"churn-v6": 100},
                             "lastVerdict": ABORTED},
                 rm.PassMetrics("Degraded", -1, {"churn-v6": 100}, abort_reason=c.ROLLOUT_ANALYSIS_FAILED),
                 id="abort, by its reason"),
])
def test_pass_metrics(before, after, expect):
    assert rm.pass_metrics(before, after) == expect


def sample(name: str, **labels: str) -> float | None:
    return opmetrics.REGISTRY.get_sample_value(name, labels)


def test_record_sets_gauges_counts_once_and_forget_removes_every_series():
    ns, name = "metrics-unit", "churn"
    rm.record(ns, name, rm.pass_metrics({}, CANARY_10))
    rm.record(ns, name, rm.pass_metrics(CANARY_10, {**CANARY_10, "analysis": MEASURED}))
    rm.record(ns, name, rm.pass_metrics({**CANARY_10, "analysis": MEASURED}, {**CANARY_10, "analysis": MEASURED}))
    at = dict(namespace=ns, rollout=name)
    assert sample("noria_operator_rollout_phase", **at, phase="Progressing") == 1
    assert sample("noria_operator_rollout_phase", **at, phase="Healthy") == 0
    assert sample("noria_operator_rollout_step", **at) == 1
    assert sample("noria_operator_rollout_weight", **at, version="churn-v7") == 10
    assert sample("noria_operator_analysis_measurements_total", **at, check="errorRate", outcome="Successful") == 1
    after = {"phase": "Healthy", "stableVersion": "churn-v7", "weights": {"churn-v7": 100}, "lastVerdict": PROMOTED}
    rm.record(ns, name, rm.pass_metrics(CANARY_10, after))
    assert sample("noria_operator_rollout_weight", **at, version="churn-v6") is None  # left the weights
    assert sample("noria_operator_rollout_weight", **at, version="churn-v7") == 100
    assert sample("noria_operator_rollout_step", **at) == -1
    assert sample("noria_operator_rollout_promotions_total", **at) == 1
    rm.forget(ns, name)
    left = [s for metric in opmetrics.REGISTRY.collect() for s in metric.samples
            if s.labels.get("namespace") == ns and s.labels.get("rollout") == name]
    assert left == []


def test_a_measurement_decide_records_is_counted_by_the_pass_that_recorded_it():
    status = mid_canary(2, analysis=last("Successful", T0, streak=1))
    plan = decide(observe(status=status, mvs=SERVING, pods=BOTH_READY, measurement=measured("failure", T0 + 30 * SEC),
                          now=T0 + 30 * SEC))
    assert rm.pass_metrics(status, plan.status).measurements == (("errorRate", "Failed"),)
    unmeasured = decide(observe(status=plan.status, mvs=SERVING, pods=BOTH_READY, now=T0 + 31 * SEC))
    assert rm.pass_metrics(plan.status, unmeasured.status).measurements == ()


def errors() -> float:
    return sample("noria_operator_reconcile_errors_total", kind="Rollout") or 0.0


def passes() -> float:
    return sample("noria_operator_reconcile_duration_seconds_count", kind="Rollout") or 0.0


async def test_a_failed_pass_counts_as_an_error_and_a_conflict_does_not(monkeypatch):
    from noria import kube
    from noria.deployment import handlers

    async def unreachable(*_, **__):
        raise OSError("connection refused")

    async def conflict(*_, **__):
        raise kube.Conflict("the Rollout changed since it was read")

    async def nothing(*_, **__):
        return None

    monkeypatch.setattr(handlers, "report_error", nothing)
    before_errors, before_passes = errors(), passes()
    monkeypatch.setattr(handlers.kube, "get", unreachable)
    await handlers.reconcile(("metrics-unit", "failing"))
    assert errors() == before_errors + 1 and passes() == before_passes + 1
    monkeypatch.setattr(handlers.kube, "get", conflict)
    assert await handlers.reconcile(("metrics-unit", "failing")) == handlers.CONFLICT_RETRY_SECONDS
    assert errors() == before_errors + 1 and passes() == before_passes + 2


def test_the_counters_exist_at_zero_from_the_first_pass_so_increase_sees_the_first_event():
    # Prometheus' increase() needs a sample before the first increment: a counter born at 1 on the
    # first promotion (or failed measurement) reads as no increase, and the alert never fires.
    ns, name = "metrics-unit", "zeroes"
    at = dict(namespace=ns, rollout=name)
    rm.record(ns, name, rm.pass_metrics({}, CANARY_10, checks=("errorRate", "accuracy")))
    assert sample("noria_operator_rollout_promotions_total", **at) == 0
    for check in ("errorRate", "accuracy"):
        for outcome in ("Successful", "Failed", "Error", "Inconclusive", "Waiting"):
            assert sample("noria_operator_analysis_measurements_total", **at, check=check, outcome=outcome) == 0
    rm.record(ns, name, rm.pass_metrics(CANARY_10, {**CANARY_10, "analysis": MEASURED}, checks=("errorRate",)))
    assert sample("noria_operator_analysis_measurements_total", **at, check="errorRate", outcome="Successful") == 1
    assert sample("noria_operator_analysis_measurements_total", **at, check="errorRate", outcome="Failed") == 0
    rm.forget(ns, name)
    left = [s for metric in opmetrics.REGISTRY.collect() for s in metric.samples
            if s.labels.get("namespace") == ns and s.labels.get("rollout") == name]
    assert left == []
