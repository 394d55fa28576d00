"""Analysis verdicts and the built-in checks' PromQL and reductions."""

from __future__ import annotations

import math

import pytest
from noria.deployment.analysis import Tallies, combine, judge_check, judge_run
from noria.deployment.checks import CheckContext, Observed, queries_for, reduce
from noria.deployment.spec import AnalysisSpec, CheckSpec
from noria.prometheus import PrometheusError, Sample
from noria.scoring import macro_f1

CTX = CheckContext(namespace="ml", rollout="churn", pipeline="churn", version="churn-v7", stable="churn-v6",
                   window=30.0)


def test_value_outside_bounds_fails_and_inside_succeeds():
    check = CheckSpec(name="errorRate", builtin="errorRate", max=0.01)
    assert judge_check(check, Observed(0.2)).outcome == "failure"
    assert judge_check(check, Observed(0.0)).outcome == "success"


def test_no_data_is_inconclusive_and_unreachable_prometheus_is_an_error():
    check = CheckSpec(name="errorRate", builtin="errorRate", max=0.01)
    assert judge_check(check, Observed(None, "no requests")).outcome == "inconclusive"
    assert judge_check(check, Observed(math.nan)).outcome == "inconclusive"
    assert judge_check(check, PrometheusError("down")).outcome == "error"


def test_dry_run_checks_never_decide_and_nothing_deciding_is_not_a_pass():
    bad = judge_check(CheckSpec(name="x", query="q", max=1, dry_run=True), Observed(5))
    good = judge_check(CheckSpec(name="y", query="q", max=1), Observed(0))
    assert bad.outcome == "failure"
    assert combine([bad, good]) == "success"
    assert combine([bad]) == "inconclusive"


def test_failure_outranks_error_outranks_inconclusive():
    f = judge_check(CheckSpec(name="f", query="q", max=1), Observed(2))
    e = judge_check(CheckSpec(name="e", query="q", max=1), PrometheusError("x"))
    i = judge_check(CheckSpec(name="i", query="q", max=1), Observed(None))
    assert combine([i, e, f]) == "failure" and combine([i, e]) == "error" and combine([i]) == "inconclusive"


def test_one_failure_more_than_the_limit_aborts():
    spec = AnalysisSpec(failure_limit=2)
    t = Tallies()
    for _ in range(2):
        t = t.record("failure", spec)
        assert judge_run(t, "failure", spec)[0] == "continue"
    t = t.record("failure", spec)
    assert judge_run(t, "failure", spec)[0] == "abort"


def test_errors_abort_only_when_consecutive():
    spec = AnalysisSpec(consecutive_error_limit=2)
    t = Tallies().record("error", spec).record("error", spec).record("success", spec).record("error", spec)
    assert judge_run(t, "error", spec)[0] == "continue"
    t = t.record("error", spec).record("error", spec)
    assert judge_run(t, "error", spec)[0] == "abort"


def test_inconclusive_pauses_or_fails_as_configured():
    assert judge_run(Tallies().record("inconclusive", AnalysisSpec()), "inconclusive", AnalysisSpec())[0] == "pause"
    strict = AnalysisSpec(inconclusive="fail")
    assert judge_run(Tallies().record("inconclusive", strict), "inconclusive", strict)[0] == "abort"


def test_tallies_round_trip_through_status():
    t = Tallies(passed=3, failed=1, errors=2, inconclusive=1, consecutive_errors=1)
    assert Tallies.from_status(t.to_status()) == t


def test_error_rate_query_selects_the_version_and_5xx():
    q = queries_for(CheckSpec(name="e", builtin="errorRate", max=0.01), CTX)
    assert 'version="churn-v7"' in q["errors"] and 'code=~"5.."' in q["errors"] and "[30s]" in q["total"]
    assert all('endpoint="infer"' in q[part] for part in ("errors", "total"))  # never diluted by other answers


def test_error_rate_without_requests_is_no_data():
    check = CheckSpec(name="e", builtin="errorRate", max=0.01)
    assert reduce(check, CTX, {"errors": [], "total": []}).value is None
    assert reduce(check, CTX, {"errors": [], "total": [Sample({}, 40.0)]}).value == 0.0
    assert reduce(check, CTX, {"errors": [Sample({}, 10.0)], "total": [Sample({}, 40.0)]}).value == 0.25


def test_latency_excludes_the_router_hop():
    q = queries_for(CheckSpec(name="l", builtin="latencyP99", max=0.25), CTX)
    assert 'label_noria_dev_component!="router"' in q["quantile"] and "0.99" in q["quantile"]


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
