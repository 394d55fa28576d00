"""Each trigger fires on its condition and only then (pure evaluators, table-driven)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from noria.profile import FeatureProfile, Profile
from noria.training import triggers as t
from noria.training.triggers import DataObservation, MetricObservation

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("has_mv", "counter", "state", "fires"),
    [
        (False, 0, None, True),
        (True, 0, None, False),  # imported or trained before
        (False, 1, None, False),  # the first run failed: no retry loop
        (False, 0, {"firedAt": "x"}, False),
    ],
)
def test_initial_fires_only_for_a_pipeline_that_never_trained(has_mv, counter, state, fires):
    assert t.evaluate_initial(has_mv, counter, state, T0).fired is fires


def test_manual_fires_once_per_new_value_after_it_settles():
    r = t.evaluate_manual("a", None, at(0), settle_seconds=2)
    assert not r.fired and r.recheck_after == pytest.approx(2)
    r = t.evaluate_manual("a", r.state, at(1), settle_seconds=2)
    assert not r.fired
    r = t.evaluate_manual("a", r.state, at(2), settle_seconds=2)
    assert r.fired and r.state["handled"] == "a"
    r = t.evaluate_manual("a", r.state, at(100), settle_seconds=2)
    assert not r.fired


def test_manual_burst_of_fifty_values_is_one_request():
    state = None
    fired = 0
    for i in range(50):
        r = t.evaluate_manual(f"v{i}", state, at(i * 0.01), settle_seconds=2)
        state, fired = r.state, fired + r.fired
    assert fired == 0 and state["changes"] == 50
    r = t.evaluate_manual("v49", state, at(3), settle_seconds=2)
    assert r.fired and "50 write(s)" in r.observed


def test_manual_without_settle_fires_at_once_and_removal_fires_nothing():
    assert t.evaluate_manual("x", None, T0, settle_seconds=0).fired
    assert not t.evaluate_manual(None, {"handled": "x"}, T0).fired


def test_schedule_shows_next_time_and_fires_when_due_once_for_missed_ticks():
    r = t.evaluate_schedule("*/5 * * * *", None, at(30))
    assert not r.fired and r.state["next"] == iso(300)
    assert not t.evaluate_schedule("*/5 * * * *", r.state, at(299)).fired
    late = t.evaluate_schedule("*/5 * * * *", r.state, at(3600 + 10))  # operator down for an hour
    assert late.fired and late.state["next"] == iso(3600 + 300)
    again = t.evaluate_schedule("*/5 * * * *", late.state, at(3600 + 20))
    assert not again.fired


def test_schedule_edit_restarts_the_count():
    r = t.evaluate_schedule("0 * * * *", {"schedule": "*/5 * * * *", "next": iso(0)}, at(10))
    assert not r.fired and r.state["next"] == iso(3600)


@pytest.mark.parametrize(
    ("baseline", "obs", "fires"),
    [
        (None, DataObservation(rows=100, fingerprint="a"), False),  # first sight: baseline only
        ({"rows": 100, "fingerprint": "a"}, DataObservation(rows=149, fingerprint="b"), False),
        ({"rows": 100, "fingerprint": "a"}, DataObservation(rows=150, fingerprint="b"), True),
        ({"rows": None, "fingerprint": "a"}, DataObservation(rows=None, fingerprint="b"), True),
        ({"rows": None, "fingerprint": "a"}, DataObservation(rows=None, fingerprint="a"), False),
    ],
)
def test_new_data_fires_on_min_new_rows_since_the_baseline(baseline, obs, fires):
    state = {"baseline": baseline} if baseline else None
    r = t.evaluate_new_data(50, obs, state, T0)
    assert r.fired is fires
    if fires:
        assert r.state["baseline"]["fingerprint"] == obs.fingerprint  # consumed: no refire


def test_new_data_unreadable_source_is_unknown_and_keeps_the_baseline():
    r = t.evaluate_new_data(50, DataObservation(error="no parquet files"), {"baseline": {"rows": 1}}, T0)
    assert not r.fired and r.health == t.UNKNOWN and r.state["baseline"] == {"rows": 1}


def _profile() -> Profile:
    fp = FeatureProfile._numeric(np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.5, 0, 0, 0]))
    return Profile({"x": fp}, None, 100)


DRIFT = {"method": "psi", "threshold": "0.2", "for": "60s"}
SAME = MetricObservation({("x", "0"): 50, ("x", "1"): 50})
SHIFTED = MetricObservation({("x", "1"): 10, ("x", "above"): 90})


def test_drift_must_hold_for_the_for_duration_then_fires_once():
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SHIFTED, None, at(0))
    assert not r.fired and r.state["since"] == iso(0) and r.state["state"] == "Above"
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SHIFTED, r.state, at(59))
    assert not r.fired
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SHIFTED, r.state, at(60))
    assert r.fired and r.state.get("since") is None


def test_drift_below_threshold_resets_since_and_never_fires():
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SHIFTED, None, at(0))
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SAME, r.state, at(30))
    assert not r.fired and r.state["since"] is None and r.state["state"] == "Below"
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SAME, r.state, at(1000))
    assert not r.fired


def test_drift_prometheus_error_is_unknown_and_does_nothing_rash():
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), SHIFTED, None, at(0))
    r = t.evaluate_drift(DRIFT, "m-v1", _profile(), MetricObservation(error="unreachable"), r.state, at(3600))
    assert not r.fired and r.health == t.UNKNOWN and r.state["state"] == "Unknown"


def test_drift_needs_enough_live_values_and_a_champion():
    few = MetricObservation({("x", "above"): 5})
    assert t.evaluate_drift(DRIFT, "m-v1", _profile(), few, None, T0).state["state"] == "InsufficientData"
    assert not t.evaluate_drift(DRIFT, None, None, SHIFTED, None, T0).fired


@pytest.mark.parametrize(
    ("metric", "confusion", "expected"),
    [
        ("accuracy", {("1", "1"): 8, ("0", "0"): 1, ("1", "0"): 1}, 0.9),
        ("f1", {("1", "1"): 5, ("0", "1"): 5, ("1", "0"): 0, ("0", "0"): 90}, 2 * 0.5 * 1 / 1.5),
        ("recall", {("1", "1"): 3, ("1", "0"): 1}, 0.75),
        ("f1", {("a", "a"): 1, ("b", "b"): 1, ("c", "a"): 1}, (2 / 3 + 1 + 0) / 3),  # macro
    ],
)
def test_live_metric_from_feedback_counts(metric, confusion, expected):
    value, labels = t.live_metric(metric, confusion)
    assert value == pytest.approx(expected) and labels == sum(confusion.values())


PERF = {"metric": "accuracy", "below": "0.8", "for": "0s", "minLabels": 10}


def test_performance_fires_below_threshold_with_enough_labels_only():
    bad = MetricObservation({("1", "0"): 6, ("1", "1"): 4})
    good = MetricObservation({("1", "1"): 10})
    few = MetricObservation({("1", "0"): 5})
    assert t.evaluate_performance(PERF, "m-v1", bad, None, T0).fired
    assert not t.evaluate_performance(PERF, "m-v1", good, None, T0).fired
    r = t.evaluate_performance(PERF, "m-v1", few, None, T0)
    assert not r.fired and r.state["state"] == "InsufficientLabels"
    assert t.evaluate_performance(PERF, "m-v1", MetricObservation(error="x"), None, T0).health == t.UNKNOWN


def test_human_duration():
    assert [t.human_duration(s) for s in (0, 59, 61, 3725, 90000)] == ["0s", "59s", "1m1s", "1h2m5s", "1d1h"]
