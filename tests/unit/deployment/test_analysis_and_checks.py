"""Analysis verdicts and the built-in checks' PromQL and reductions."""

from __future__ import annotations

import math

import pytest
from noria import metrics as m
from noria.deployment.analysis import Tallies, combine, judge_check, judge_run, resolve_waiting
from noria.deployment.checks import CheckContext, Observed, queries_for, reduce
from noria.deployment.spec import AnalysisSpec, CheckSpec
from noria.prometheus import PrometheusError, Sample
from noria.scoring import macro_f1

CTX = CheckContext(namespace="ml", rollout="churn", pipeline="churn", version="churn-v7", stable="churn-v6",
                   window=30.0)


# --- analysis: one check's outcome, a measurement's outcome, what a run of them means ---------------
BOUNDED = CheckSpec(name="errorRate", builtin="errorRate", max=0.01)
LABELLED = CheckSpec(name="accuracy", builtin="accuracy", min=0.8, min_labels=100, label_timeout=300.0)


@pytest.mark.parametrize(("check", "observed", "outcome"), [
    pytest.param(BOUNDED, Observed(0.2), "failure", id="outside the bounds: failure"),
    pytest.param(BOUNDED, Observed(0.0), "success", id="within the bounds: success"),
    pytest.param(BOUNDED, Observed(None, "no requests"), "inconclusive", id="no data: inconclusive"),
    pytest.param(BOUNDED, Observed(math.nan), "inconclusive", id="NaN: inconclusive"),
    pytest.param(BOUNDED, PrometheusError("down"), "error", id="Prometheus unreachable: error"),
    pytest.param(LABELLED, Observed(None, "37 of 100 labels", waiting=True), "waiting",
                 id="fewer labels than minLabels: waiting, not inconclusive"),
])
def test_judge_check(check, observed, outcome):
    assert judge_check(check, observed).outcome == outcome


def result(name: str, observed, dry_run: bool = False):
    return judge_check(CheckSpec(name=name, query="q", max=1, dry_run=dry_run), observed)


FAIL, ERR, NODATA, OK = Observed(2), PrometheusError("x"), Observed(None), Observed(0)
WAITS = Observed(None, "3 of 100 labels", waiting=True)


@pytest.mark.parametrize(("observed", "outcome"), [
    pytest.param([NODATA, ERR, FAIL], "failure", id="failure outranks everything"),
    pytest.param([NODATA, ERR], "error", id="error outranks inconclusive"),
    pytest.param([WAITS, NODATA], "inconclusive", id="inconclusive outranks waiting"),
    pytest.param([OK, WAITS], "waiting", id="one check waiting: the measurement waits"),
    pytest.param([OK, OK], "success", id="all within bounds: success"),
    pytest.param([], "inconclusive", id="nothing deciding is never a pass"),
])
def test_combine(observed, outcome):
    assert combine([result(f"c{i}", o) for i, o in enumerate(observed)]) == outcome


def test_dry_run_checks_are_recorded_but_never_decide():
    bad, good = result("x", FAIL, dry_run=True), result("y", OK)
    assert bad.outcome == "failure" and combine([bad, good]) == "success" and combine([bad]) == "inconclusive"


def run(outcomes: str, spec: AnalysisSpec) -> tuple[Tallies, str]:
    """Record outcomes (s=success f=failure e=error i=inconclusive w=waiting) and judge the last one."""
    names = {"s": "success", "f": "failure", "e": "error", "i": "inconclusive", "w": "waiting"}
    tallies, verdict = Tallies(), "continue"
    for letter in outcomes:
        tallies = tallies.record(names[letter], spec)  # type: ignore[arg-type]
        verdict = judge_run(tallies, names[letter], spec)[0]  # type: ignore[arg-type]
    return tallies, verdict


@pytest.mark.parametrize(("outcomes", "spec", "verdict"), [
    pytest.param("ff", AnalysisSpec(failure_limit=2), "continue", id="failures up to failureLimit: continue"),
    pytest.param("fff", AnalysisSpec(failure_limit=2), "abort", id="one failure past failureLimit: abort"),
    pytest.param("f", AnalysisSpec(), "abort", id="default failureLimit 0: the first failure aborts"),
    pytest.param("eese", AnalysisSpec(consecutive_error_limit=2), "continue",
                 id="errors interrupted by a success: continue"),
    pytest.param("eee", AnalysisSpec(consecutive_error_limit=2), "abort",
                 id="errors past consecutiveErrorLimit in a row: abort"),
    pytest.param("i", AnalysisSpec(), "pause", id="inconclusive: pause for a person"),
    pytest.param("i", AnalysisSpec(inconclusive="fail"), "abort", id="inconclusive: fail counts as a failure"),
    pytest.param("w", AnalysisSpec(), "continue", id="waiting: neither pause nor failure"),
])
def test_judge_run(outcomes, spec, verdict):
    assert run(outcomes, spec)[1] == verdict


@pytest.mark.parametrize(("outcomes", "streak", "passed"), [
    pytest.param("sss", 3, 3, id="successes build the streak"),
    pytest.param("sse", 0, 2, id="an error breaks it"),
    pytest.param("ssf", 0, 2, id="a failure breaks it"),
    pytest.param("ssi", 0, 2, id="an inconclusive breaks it"),
    pytest.param("swsw", 2, 2, id="waiting neither counts nor breaks: no evidence either way"),
])
def test_success_streak(outcomes, streak, passed):
    tallies = run(outcomes, AnalysisSpec(failure_limit=5))[0]
    assert (tallies.consecutive_successes, tallies.passed) == (streak, passed)
    assert tallies.restart_streak().consecutive_successes == 0


def test_waiting_is_never_tallied():
    assert run("www", AnalysisSpec())[0] == Tallies()


@pytest.mark.parametrize(("check", "waited", "outcome"), [
    pytest.param(LABELLED, 299.0, "waiting", id="within labelTimeout: still waiting"),
    pytest.param(LABELLED, 300.0, "inconclusive", id="labelTimeout passed: inconclusive"),
    pytest.param(CheckSpec(name="accuracy", builtin="accuracy", min=0.8, min_labels=100), 86400.0, "waiting",
                 id="no labelTimeout: waits (the progressDeadline bounds it)"),
])
def test_resolve_waiting(check, waited, outcome):
    waiting = judge_check(check, WAITS)
    (resolved,) = resolve_waiting([waiting], [check], waited)
    assert resolved.outcome == outcome


def test_tallies_round_trip_through_status():
    t = Tallies(passed=3, failed=1, errors=2, inconclusive=1, consecutive_errors=1, consecutive_successes=2)
    assert Tallies.from_status(t.to_status()) == t


# --- checks: PromQL and reductions ----------------------------------------------------------------
def test_error_rate_query_selects_the_version_and_5xx():
    q = queries_for(CheckSpec(name="e", builtin="errorRate", max=0.01), CTX)
    assert 'version="churn-v7"' in q["errors"] and 'code=~"5.."' in q["errors"] and "[30s]" in q["total"]
    assert all(f'{m.LABEL_ENDPOINT}="infer"' in q[part] for part in ("errors", "total"))  # never diluted by other answers


def test_error_rate_without_requests_is_no_data():
    check = CheckSpec(name="e", builtin="errorRate", max=0.01)
    assert reduce(check, CTX, {"errors": [], "total": []}).value is None
    assert reduce(check, CTX, {"errors": [], "total": [Sample({}, 40.0)]}).value == 0.0
    assert reduce(check, CTX, {"errors": [Sample({}, 10.0)], "total": [Sample({}, 40.0)]}).value == 0.25


def test_latency_excludes_the_router_hop():
    q = queries_for(CheckSpec(name="l", builtin="latencyP99", max=0.25), CTX)
    assert 'noria_dev_component!="router"' in q["quantile"] and "0.99" in q["quantile"]


def test_accuracy_needs_min_labels():
    check = CheckSpec(name="a", builtin="accuracy", min=0.8, min_labels=10)
    samples = [Sample({"actual": "1", "predicted": "1"}, 6), Sample({"actual": "0", "predicted": "1"}, 2)]
    assert reduce(check, CTX, {"feedback": samples}).value is None
    samples.append(Sample({"actual": "0", "predicted": "0"}, 2))
    assert reduce(check, CTX, {"feedback": samples}).value == pytest.approx(0.8)


def test_macro_f1_of_a_perfect_and_a_useless_classifier():
    assert macro_f1({("a", "a"): 5, ("b", "b"): 5}) == 1.0
    assert macro_f1({("a", "b"): 5, ("b", "a"): 5}) == 0.0


def test_shadow_agreement_counts_errors_as_disagreement():
    check = CheckSpec(name="s", builtin="shadowAgreement", min=0.95)
    out = reduce(check, CTX, {"outcomes": [Sample({"outcome": "agree"}, 90), Sample({"outcome": "error"}, 10)]})
    assert out.value == pytest.approx(0.9)
    assert 'shadow="churn-v7"' in queries_for(check, CTX)["outcomes"]


def test_custom_query_is_templated():
    check = CheckSpec(name="c", query='sum(x{version="{{version}}",ns="{{namespace}}",r="{{rollout}}"})', max=1)
    assert queries_for(check, CTX)["value"] == 'sum(x{version="churn-v7",ns="ml",r="churn"})'


def test_prediction_drift_compares_with_stable():
    check = CheckSpec(name="d", builtin="predictionDrift", max=0.2, against="stable")
    same = [Sample({"class": "0"}, 50), Sample({"class": "1"}, 50)]
    shifted = [Sample({"class": "0"}, 95), Sample({"class": "1"}, 5)]
    assert reduce(check, CTX, {"candidate": same, "stable": same}).value == pytest.approx(0.0)
    assert reduce(check, CTX, {"candidate": shifted, "stable": same}).value > 0.2
