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
        (False, 1, None, False),  # the first run is under way (no failure to retry)
        (False, 0, {"firedAt": "x"}, False),
    ],
)
def test_initial_fires_only_for_a_pipeline_that_never_trained(has_mv, counter, state, fires):
    assert t.evaluate_initial(has_mv, counter, state, T0).fired is fires


@pytest.mark.parametrize(
    ("attempts", "failed_ago", "fires", "recheck"),
    [
        (1, 59, False, 1),  # retry 60 s after the first failure
        (1, 60, True, None),
        (2, 119, False, 1),  # then 120 s
        (3, 239, False, 1),  # then 240 s
        (3, 240, True, None),
        (20, 3599, False, 1),  # at most hourly
        (20, 3600, True, None),
    ],
)
def test_initial_retries_a_failed_first_run_with_a_doubling_back_off(attempts, failed_ago, fires, recheck):
    r = t.evaluate_initial(False, attempts, {"firedAt": "x", "attempts": attempts}, at(failed_ago), T0, 60.0)
    assert r.fired is fires
    assert r.recheck_after == (pytest.approx(recheck) if recheck else None)
    if fires:
        assert r.state["attempts"] == attempts + 1 and f"attempt {attempts + 1}" in r.observed


def test_initial_never_retries_once_a_version_exists():
    r = t.evaluate_initial(True, 1, {"firedAt": "x", "attempts": 1}, at(10_000), T0, 60.0)
    assert not r.fired


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ("0 2 * * *", None),
        ("@daily", None),
        ("0 0 29 2 *", None),  # leap days exist
        ("0 2 31 2 *", "not a schedule Noria can follow"),  # February 31st never comes
        ("99 99 99 99 99", "out of range"),
        ("0 24 * * *", "out of range"),
    ],
)
def test_schedule_problem_names_the_field_and_what_to_write(schedule, problem):
    found = t.schedule_problem(schedule)
    if problem is None:
        assert found is None
    else:
        assert problem in found and "spec.triggers.schedule" in found and "minute 0-59" in found


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
SAME = MetricObservation({("x", "0"): 250, ("x", "1"): 250})
SHIFTED = MetricObservation({("x", "1"): 50, ("x", "above"): 450})


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
    few = MetricObservation({("x", "above"): 150})  # every value shifted, but 150 < minSamples 200
    assert t.evaluate_drift(DRIFT, "m-v1", _profile(), few, None, T0).state["state"] == "InsufficientData"
    assert not t.evaluate_drift(DRIFT, None, None, SHIFTED, None, T0).fired


@pytest.mark.parametrize(
    ("metric", "confusion", "expected"),
    [
        ("accuracy", {("1", "1"): 8, ("0", "0"): 1, ("1", "0"): 1}, 0.9),
        # macro over the classes seen, two classes too (noria.scoring, as the Rollout's checks):
        # F1 of "1" is 2*5/(10+5), of "0" 2*90/(90+95)
        ("f1", {("1", "1"): 5, ("0", "1"): 5, ("1", "0"): 0, ("0", "0"): 90}, (10 / 15 + 180 / 185) / 2),
        ("recall", {("1", "1"): 3, ("1", "0"): 1}, (0.75 + 0) / 2),  # "0" is seen, never actual: recall 0
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


# --- defect 1: drift fired on noise (max PSI over features, 50 values, no test) -------------------
def _realistic_profile(features: int = 12, rows: int = 10_000, seed: int = 5) -> Profile:
    rng = np.random.default_rng(seed)
    built = {}
    for i in range(features):
        if i % 3 == 2:
            values = rng.choice(["a", "b", "c", "d", "e"], rows, p=[0.35, 0.25, 0.2, 0.15, 0.05])
            built[f"f{i}"] = FeatureProfile.build(values, "categorical")
        else:
            built[f"f{i}"] = FeatureProfile.build(rng.normal(0, 1, rows) if i % 3 == 0 else rng.exponential(1, rows),
                                                  "numeric")
    return Profile(built, None, rows)


REALISTIC = _realistic_profile()


def _window(n: int, seed: int, shift: dict[str, float] | None = None) -> MetricObservation:
    """``n`` live values per feature drawn from the profile's own fractions (pure noise); ``shift``
    moves that share of a feature's mass from its most common bins to its top bin (a real shift)."""
    rng = np.random.default_rng(seed)
    counts: dict[tuple[str, str], float] = {}
    for name, fp in REALISTIC.features.items():
        p = fp.reference.copy()
        moved = (shift or {}).get(name, 0.0)
        if moved:
            p = p * (1 - moved)
            p[int(np.nonzero(fp.reference)[0][-1])] += moved
        for label, c in zip(fp.labels, rng.multinomial(n, p / p.sum()), strict=True):
            if c:
                counts[(name, label)] = float(c)
    return MetricObservation(counts)


def _old_rule_fires(obs: MetricObservation) -> bool:
    """What the drift trigger did before: at least 50 values and the largest PSI above 0.2."""
    scores, samples = t.drift_scores(REALISTIC, obs.counts, "psi")
    return samples >= 50 and max(scores.values()) > 0.2


NOISE_60 = _window(60, seed=1)
NOISE_10K = _window(10_000, seed=2)


@pytest.mark.parametrize(
    ("given", "window", "spec", "fires", "state"),
    [
        ("noise, 60 values per feature (the old rule fires)", NOISE_60, {}, False, "InsufficientData"),
        ("noise, 60 values, minSamples lowered to 50", NOISE_60, {"minSamples": 50}, False, "Below"),
        ("noise, 10 000 values per feature", NOISE_10K, {}, False, "Below"),
        ("noise, 10 000 values, any significance", NOISE_10K, {"significance": "0.5"}, False, "Below"),
        ("a real shift of 30% of f0's mass, 300 values", _window(300, 3, {"f0": 0.3}), {}, True, "Above"),
        ("a real shift on a categorical feature, 300 values", _window(300, 4, {"f2": 0.3}), {}, True, "Above"),
        ("a real shift, 150 values: below minSamples", _window(150, 5, {"f0": 0.3}), {}, False, "InsufficientData"),
        ("a real shift, 150 values, minSamples 100", _window(150, 5, {"f0": 0.3}), {"minSamples": 100}, True,
         "Above"),
        ("a trivial shift on a huge sample: significant, PSI tiny", _window(200_000, 6, {"f0": 0.02}), {}, False,
         "Below"),
        ("a trivial shift, threshold lowered below it", _window(200_000, 6, {"f0": 0.02}), {"threshold": "0.001"},
         True, "Above"),
    ],
)
def test_drift_fires_on_evidence_not_on_noise(given, window, spec, fires, state):
    r = t.evaluate_drift({"method": "psi", "threshold": "0.2", **spec}, "m-v1", REALISTIC, window, None, T0)
    assert (r.fired, r.state["state"]) == (fires, state), f"{given}: {r.observed}"


def test_the_noise_rows_above_are_ones_the_old_rule_fired_on():
    assert _old_rule_fires(NOISE_60)  # so the table can fail on the old code
    assert not _old_rule_fires(NOISE_10K)


def test_drift_status_shows_per_feature_evidence_most_drifted_first():
    r = t.evaluate_drift({"threshold": "0.2"}, "m-v1", REALISTIC, _window(400, 7, {"f3": 0.4}), None, T0)
    assert r.fired and r.state["feature"] == "f3" and r.state["drifted"] == 1 and r.state["tested"] == 12
    first = r.state["features"][0]
    assert first["feature"] == "f3" and first["drifted"] and float(first["pValue"]) < 0.01
    assert first["samples"] == 400 and float(first["value"]) > 0.2
    assert len(r.state["features"]) == t.EVIDENCE_SHOWN and not any(f["drifted"] for f in r.state["features"][1:])
    assert "p=" in r.observed and "Holm over 12" in r.observed


def test_drift_state_of_another_champion_is_not_carried_over():
    drifting = {"threshold": "0.2", "for": "10m"}
    shifted = _window(400, 8, {"f0": 0.4})
    r = t.evaluate_drift(drifting, "m-v1", REALISTIC, shifted, None, at(0))
    assert r.state["since"] == iso(0)
    # v2 became the champion: its own (shifted) window restarts "for" instead of inheriting v1's
    r = t.evaluate_drift(drifting, "m-v2", REALISTIC, shifted, r.state, at(600))
    assert not r.fired and r.state["since"] == iso(600) and r.state["champion"] == "m-v2"


# --- defect 8: the performance trigger was absolute only -----------------------------------------
def confusion(correct: int, wrong: int) -> MetricObservation:
    return MetricObservation({("1", "1"): correct / 2, ("0", "0"): correct / 2, ("1", "0"): wrong / 2,
                              ("0", "1"): wrong / 2})


RELATIVE = {"metric": "accuracy", "dropBy": "0.05", "minLabels": 200}


@pytest.mark.parametrize(
    ("given", "spec", "windows", "fires", "state"),
    [
        # windows: (champion, correct, wrong) per pass; the first trusted one is the baseline
        ("the baseline window itself never fires", RELATIVE, [("v1", 160, 40)], False, "Above"),
        ("a fall of 0.15 over 1000 labels", RELATIVE, [("v1", 900, 100), ("v1", 750, 250)], True, "Below"),
        ("a world where 0.6 is the best anyone can do: fall of 0.1 from 0.6",
         RELATIVE, [("v1", 600, 400), ("v1", 500, 500)], True, "Below"),
        ("a fall of 0.03 < dropBy, significant on 20 000 labels",
         RELATIVE, [("v1", 18_000, 2000), ("v1", 17_400, 2600)], False, "Above"),
        ("a fall of 0.06 on 200 labels: label noise, not significant",
         RELATIVE, [("v1", 180, 20), ("v1", 168, 32)], False, "Above"),
        ("too few labels for a baseline, then a low window becomes the baseline",
         RELATIVE, [("v1", 90, 10), ("v1", 150, 50)], False, "Above"),
        ("a new champion measures its own baseline: v1's level does not carry over",
         RELATIVE, [("v1", 900, 100), ("v2", 700, 300)], False, "Above"),
        ("below still works alone", {"metric": "accuracy", "below": "0.8", "minLabels": 200},
         [("v1", 700, 300)], True, "Below"),
        ("below and dropBy: the absolute floor fires before any baseline",
         {**RELATIVE, "below": "0.8"}, [("v1", 700, 300)], True, "Below"),
        ("below and dropBy: a relative fall above the floor fires",
         {**RELATIVE, "below": "0.5"}, [("v1", 950, 50), ("v1", 850, 150)], True, "Below"),
    ],
)
def test_performance_relative_drop_from_the_versions_own_level(given, spec, windows, fires, state):
    r = None
    for i, (champion, correct, wrong) in enumerate(windows):
        r = t.evaluate_performance(spec, f"m-{champion}", confusion(correct, wrong), r.state if r else None, at(i))
    assert r is not None and (r.fired, r.state["state"]) == (fires, state), f"{given}: {r.observed}"


def test_performance_baseline_is_shown_and_kept_through_quiet_and_unknown_passes():
    r = t.evaluate_performance(RELATIVE, "m-v1", confusion(180, 20), None, at(0))
    assert r.state["baseline"]["value"] == "0.9000" and r.state["baseline"]["labels"] == 200
    r = t.evaluate_performance(RELATIVE, "m-v1", confusion(5, 5), r.state, at(1))  # too few labels
    r = t.evaluate_performance(RELATIVE, "m-v1", MetricObservation(error="down"), r.state, at(2))
    assert r.health == t.UNKNOWN
    r = t.evaluate_performance(RELATIVE, "m-v1", confusion(700, 300), r.state, at(3))
    assert r.fired and "baseline 0.900" in r.observed and r.state["baseline"]["at"] == iso(0)


@pytest.mark.parametrize(
    ("metric", "cells", "expected"),
    [
        ("accuracy", {("1", "1"): 30, ("0", "0"): 60, ("1", "0"): 10}, 100),
        # macro averages: labels per class seen
        ("precision", {("1", "1"): 30, ("0", "1"): 10, ("0", "0"): 60}, 50),
        ("recall", {("1", "1"): 30, ("1", "0"): 20, ("0", "0"): 50}, 50),
        ("f1", {("1", "1"): 30, ("1", "0"): 20, ("0", "1"): 10, ("0", "0"): 40}, 50),
        ("f1", {("a", "a"): 30, ("b", "b"): 30, ("c", "c"): 30}, 30),
    ],
)
def test_effective_labels_behind_each_metric(metric, cells, expected):
    assert t.effective_labels(metric, cells) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("significance", "fires"),
    [(None, True), ("0.01", True), (0, False), ("0", False), (1, True)],
)
def test_drift_significance_zero_means_never_not_the_default(significance, fires):
    spec = {"threshold": "0.2", **({} if significance is None else {"significance": significance})}
    r = t.evaluate_drift(spec, "m-v1", REALISTIC, _window(400, 9, {"f0": 0.4}), None, T0)
    assert r.fired is fires
