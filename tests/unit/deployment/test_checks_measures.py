"""The analysis checks measure what their fields say: drift ``method`` x ``against``, late labels
(``minLabels`` makes a check wait), and one F1 for the rollout checks and the performance trigger."""

from __future__ import annotations

import numpy as np
import pytest
from noria import drift, scoring
from noria import metrics as m
from noria.deployment.checks import DEFAULT_MIN_LABELS, CheckContext, queries_for, reduce
from noria.deployment.spec import CheckSpec
from noria.profile import Profile, build_profile
from noria.prometheus import Sample
from noria.training.triggers import live_metric

METHODS = ("psi", "kl", "js", "chi2", "ks", "wasserstein")
RNG = np.random.default_rng(13)
PLANS = np.array(["basic", "plus", "unlimited"])


def _world(shift: float, n: int) -> dict[str, np.ndarray]:
    """Inputs of the toy model: a numeric feature (its mean moves by ``shift``) and a plan mix."""
    plan_mix = [0.6, 0.3, 0.1] if shift == 0 else [0.2, 0.3, 0.5]
    return {"usage": RNG.normal(shift, 1.0, n), "plan": RNG.choice(PLANS, n, p=plan_mix)}


def _profile(shift: float) -> Profile:
    data = _world(shift, 4000)
    predictions = np.where(data["usage"] > 0.5, "1", "0")
    return build_profile(data, {"usage": "numeric", "plan": "categorical"}, predictions=predictions)


TRAINED_ON_BASE = _profile(0.0)  # the candidate's training data
TRAINED_ON_SHIFTED = _profile(2.0)  # a stable version trained on other data: other bin edges


def _bin_samples(profile: Profile, live: dict[str, np.ndarray]) -> list[Sample]:
    """What ``sum by (feature, bin) (increase(noria_feature_bin_total[w]))`` returns for a server
    counting ``live`` into ``profile``'s bins."""
    out = []
    for feature, values in live.items():
        fp = profile.features[feature]
        for label, n in zip(fp.labels, fp.counts(values), strict=True):
            if n:
                out.append(Sample({m.LABEL_FEATURE: feature, m.LABEL_BIN: label}, float(n)))
    return out


def _ctx(reference: Profile | None = TRAINED_ON_BASE, stable_reference: Profile | None = TRAINED_ON_BASE
         ) -> CheckContext:
    return CheckContext(namespace="ml", rollout="churn", pipeline="churn", version="churn-v7", stable="churn-v6",
                        window=30.0, reference=reference, stable_reference=stable_reference)


def _drift_check(method: str, against: str, builtin: str = "drift") -> CheckSpec:
    return CheckSpec(name="d", builtin=builtin, max=0.2, method=method, against=against)


# --- against: which side the candidate is compared with ---------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_traffic_drifted_from_training_is_caught_against_reference_and_not_against_a_stable_seeing_the_same(method):
    live_cand, live_stable = _world(2.0, 3000), _world(2.0, 3000)
    results = {"candidate": _bin_samples(TRAINED_ON_BASE, live_cand),
               "stable": _bin_samples(TRAINED_ON_BASE, live_stable)}
    vs_reference = reduce(_drift_check(method, "reference"), _ctx(), results)
    vs_stable = reduce(_drift_check(method, "stable"), _ctx(), results)
    assert vs_reference.value is not None and vs_stable.value is not None
    assert vs_reference.value > 10 * vs_stable.value, (vs_reference, vs_stable)
    assert "vs training profile" in vs_reference.detail and "vs stable churn-v6" in vs_stable.detail


@pytest.mark.parametrize("method", METHODS)
def test_a_candidate_unlike_the_stable_is_caught_against_stable_and_not_against_its_own_training_data(method):
    live_cand, live_stable = _world(0.0, 3000), _world(2.0, 3000)
    results = {"candidate": _bin_samples(TRAINED_ON_BASE, live_cand),
               "stable": _bin_samples(TRAINED_ON_BASE, live_stable)}
    vs_reference = reduce(_drift_check(method, "reference"), _ctx(), results)
    vs_stable = reduce(_drift_check(method, "stable"), _ctx(), results)
    assert vs_stable.value > 10 * vs_reference.value, (vs_reference, vs_stable)


# --- method: which statistic --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_against_reference_the_value_is_the_named_statistic_of_the_worst_feature(method):
    live = _world(1.0, 2000)
    observed = reduce(_drift_check(method, "reference"), _ctx(), {"candidate": _bin_samples(TRAINED_ON_BASE, live)})
    per_feature = {name: drift.binned_statistics(fp, fp.counts(live[name])).get(drift.METHODS[method])
                   for name, fp in TRAINED_ON_BASE.features.items()}
    expected = max(v for v in per_feature.values() if v is not None)
    assert observed.value == pytest.approx(expected, rel=1e-9)
    worst = max((v, k) for k, v in per_feature.items() if v is not None)[1]
    assert f"largest {method}" in observed.detail and f"on {worst}" in observed.detail


def test_the_methods_give_different_numbers_on_the_same_counts():
    live = _bin_samples(TRAINED_ON_BASE, _world(1.0, 2000))
    values = {method: reduce(_drift_check(method, "reference"), _ctx(), {"candidate": live}).value
              for method in METHODS}
    assert len({round(v, 9) for v in values.values()}) == len(METHODS), values


def test_ks_and_wasserstein_skip_categorical_features_and_are_inconclusive_on_predicted_classes():
    only_plan = [s for s in _bin_samples(TRAINED_ON_BASE, _world(2.0, 500)) if s.labels[m.LABEL_FEATURE] == "plan"]
    psi = reduce(_drift_check("psi", "reference"), _ctx(), {"candidate": only_plan})
    ks = reduce(_drift_check("ks", "reference"), _ctx(), {"candidate": only_plan})
    assert psi.value > 0.2 and ks.value is None and "numeric bins" in ks.detail
    classes = [Sample({m.LABEL_CLASS: "0"}, 80), Sample({m.LABEL_CLASS: "1"}, 20)]
    assert reduce(_drift_check("wasserstein", "reference", "predictionDrift"), _ctx(),
                  {"candidate": classes}).value is None


# --- the stable version counts into its own bins ----------------------------------------------------
def test_against_stable_numeric_counts_are_moved_onto_the_stables_bins_before_comparing():
    """Both versions count live values into bins from their own training data. Re-binned, the same
    traffic reads as close and traffic one standard deviation away as far; compared bin label by bin
    label (what the check did before), the same traffic would read as drifted."""
    stable_bins = _profile(0.5)
    same = RNG.normal(0.25, 1.0, 5000)
    moved = RNG.normal(1.25, 1.0, 5000)
    ctx = _ctx(TRAINED_ON_BASE, stable_bins)
    check = _drift_check("ks", "stable")

    def observed(candidate_values):
        return reduce(check, ctx, {"candidate": _bin_samples(TRAINED_ON_BASE, {"usage": candidate_values}),
                                   "stable": _bin_samples(stable_bins, {"usage": same})}).value

    assert observed(RNG.normal(0.25, 1.0, 5000)) < 0.1
    assert observed(moved) > 0.3
    by_label = drift.ks_binned(drift.ordered_numeric(stable_bins.features["usage"],
                                                     stable_bins.features["usage"].counts(same)),
                               drift.ordered_numeric(TRAINED_ON_BASE.features["usage"],
                                                     TRAINED_ON_BASE.features["usage"].counts(same)))
    assert by_label > 0.1


def test_rebin_keeps_the_mass_and_is_exact_when_the_edges_are_the_same():
    counts = np.array([3.0, 10, 20, 30, 4])  # below, 3 bins, above
    edges = np.array([0.0, 1, 2, 3])
    assert drift.rebin_ordered(counts, edges, edges) == pytest.approx(counts)
    moved = drift.rebin_ordered(counts, edges, np.array([0.5, 1.5, 2.5]))
    assert moved.sum() == pytest.approx(counts.sum())
    assert moved == pytest.approx([3 + 5, 5 + 10, 10 + 15, 15 + 4])  # half of each bin moves on


# --- queries ------------------------------------------------------------------------------------------
def test_the_stable_series_is_read_only_when_compared_with():
    assert set(queries_for(_drift_check("psi", "reference"), _ctx())) == {"candidate"}
    q = queries_for(_drift_check("js", "stable", "predictionDrift"), _ctx())
    assert set(q) == {"candidate", "stable"} and 'version="churn-v6"' in q["stable"]


def test_against_reference_without_a_profile_is_inconclusive_and_says_why():
    out = reduce(_drift_check("psi", "reference"), _ctx(reference=None),
                 {"candidate": _bin_samples(TRAINED_ON_BASE, _world(0.0, 100))})
    assert out.value is None and not out.waiting and "profileUri" in out.detail


def test_prediction_drift_against_reference_uses_the_training_predictions():
    trained = TRAINED_ON_BASE.prediction
    assert trained is not None
    share_1 = trained.reference[trained.labels.index("1")]
    same = [Sample({m.LABEL_CLASS: "0"}, 1000 * (1 - share_1)), Sample({m.LABEL_CLASS: "1"}, 1000 * share_1)]
    flipped = [Sample({m.LABEL_CLASS: "0"}, 1000 * share_1), Sample({m.LABEL_CLASS: "1"}, 1000 * (1 - share_1))]
    check = _drift_check("psi", "reference", "predictionDrift")
    assert reduce(check, _ctx(), {"candidate": same}).value == pytest.approx(0.0, abs=1e-6)
    assert reduce(check, _ctx(), {"candidate": flipped}).value > 0.2


# --- late labels --------------------------------------------------------------------------------------
def _feedback(correct: int, wrong: int) -> dict[str, list[Sample]]:
    return {"feedback": [Sample({m.LABEL_ACTUAL: "1", m.LABEL_PREDICTED: "1"}, correct),
                         Sample({m.LABEL_ACTUAL: "0", m.LABEL_PREDICTED: "1"}, wrong)]}


@pytest.mark.parametrize("builtin", ["accuracy", "f1"])
@pytest.mark.parametrize(("min_labels", "labels", "waits"), [
    (50, 0, True), (50, 49, True), (50, 50, False), (0, DEFAULT_MIN_LABELS - 1, True), (0, DEFAULT_MIN_LABELS, False),
])
def test_a_label_check_with_fewer_than_min_labels_waits(builtin, min_labels, labels, waits):
    check = CheckSpec(name="a", builtin=builtin, min=0.8, min_labels=min_labels)
    out = reduce(check, _ctx(), _feedback(labels - labels // 4, labels // 4))
    needed = min_labels or DEFAULT_MIN_LABELS
    assert out.waiting is waits
    if waits:
        assert out.value is None and out.detail == f"{labels} of {needed} labels"
    else:
        assert out.value is not None and out.detail == f"{labels} labels"


def test_a_custom_query_with_min_labels_waits_for_the_candidates_labels():
    check = CheckSpec(name="mae", query='sum(x{version="{{version}}"})', max=3.0, min_labels=20)
    q = queries_for(check, _ctx())
    assert m.FEEDBACK_TOTAL in q["labels"] and m.FEEDBACK_ABS_ERROR_COUNT in q["labels"]
    assert 'version="churn-v7"' in q["labels"]
    assert reduce(check, _ctx(), {"value": [Sample({}, 1.5)], "labels": [Sample({}, 19)]}).waiting
    assert reduce(check, _ctx(), {"value": [Sample({}, 1.5)], "labels": []}).waiting
    done = reduce(check, _ctx(), {"value": [Sample({}, 1.5)], "labels": [Sample({}, 20)]})
    assert done.value == 1.5 and not done.waiting


def test_checks_that_read_no_labels_never_wait():
    check = CheckSpec(name="e", builtin="errorRate", max=0.01)
    assert "labels" not in queries_for(check, _ctx())
    assert not reduce(check, _ctx(), {"errors": [], "total": []}).waiting


# --- one F1 -------------------------------------------------------------------------------------------
CONFUSIONS = [
    {("1", "1"): 40, ("0", "1"): 10, ("1", "0"): 20, ("0", "0"): 130},  # binary 0/1, rare positives
    {("true", "true"): 5, ("false", "true"): 5, ("false", "false"): 90},  # binary true/false
    {("a", "a"): 30, ("b", "b"): 10, ("c", "a"): 15, ("b", "c"): 5},  # three classes, one never right
]


@pytest.mark.parametrize("confusion", CONFUSIONS)
def test_the_rollout_f1_check_and_the_performance_trigger_give_the_same_f1(confusion):
    samples = [Sample({m.LABEL_ACTUAL: a, m.LABEL_PREDICTED: p}, float(n)) for (a, p), n in confusion.items()]
    check = CheckSpec(name="f1", builtin="f1", min=0.5, min_labels=1)
    rollout_f1 = reduce(check, _ctx(), {"feedback": samples}).value
    trigger_f1, _ = live_metric("f1", confusion)
    assert rollout_f1 == pytest.approx(scoring.macro_f1(confusion), abs=1e-12)
    assert trigger_f1 == pytest.approx(rollout_f1, abs=1e-12)


def test_macro_f1_is_the_mean_of_per_class_f1_over_the_classes_seen():
    confusion = {("1", "1"): 40, ("0", "1"): 10, ("1", "0"): 20, ("0", "0"): 130}
    f1_positive = 2 * 40 / (50 + 60)  # 2TP / (predicted 1 + actual 1)
    f1_negative = 2 * 130 / (150 + 140)
    assert scoring.macro_f1(confusion) == pytest.approx((f1_positive + f1_negative) / 2)
    assert scoring.macro_f1({}) is None
    assert scoring.accuracy(confusion) == pytest.approx(170 / 200)
