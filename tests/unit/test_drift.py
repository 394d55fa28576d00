"""Drift statistics: equal to scipy where scipy has the test, sensible on bins, vectorised."""

import numpy as np
import pytest
from noria import drift
from noria.profile import FeatureProfile
from scipy import stats
from scipy.spatial.distance import jensenshannon


@pytest.fixture
def samples():
    rng = np.random.default_rng(7)
    reference = np.column_stack([
        rng.normal(0, 1, 3000),
        rng.exponential(2.0, 3000),
        rng.integers(0, 5, 3000).astype(float),  # many ties
        rng.uniform(-1, 1, 3000),
    ])
    current = np.column_stack([
        rng.normal(0.3, 1.2, 2100),
        rng.exponential(2.5, 2100),
        rng.integers(1, 6, 2100).astype(float),
        rng.uniform(-1, 1, 2100),
    ])
    return reference, current


def test_raw_ks_and_wasserstein_equal_scipy_to_1e9_on_every_feature(samples):
    reference, current = samples
    ks, wd = drift.RawReference.fit(reference).ks_and_wasserstein(current)
    for j in range(reference.shape[1]):
        assert ks[j] == pytest.approx(stats.ks_2samp(reference[:, j], current[:, j]).statistic, abs=1e-9)
        assert wd[j] == pytest.approx(stats.wasserstein_distance(reference[:, j], current[:, j]), abs=1e-9)


def test_raw_statistics_on_one_dimensional_input_return_floats(samples):
    reference, current = samples
    assert isinstance(drift.ks_statistic(reference[:, 0], current[:, 0]), float)
    assert drift.wasserstein(reference[:, 1], current[:, 1]) == pytest.approx(
        stats.wasserstein_distance(reference[:, 1], current[:, 1]), abs=1e-9)


def test_raw_statistics_ignore_missing_values(samples):
    reference, current = samples
    ref = reference[:, 0].copy()
    ref[::10] = np.nan
    expected = stats.ks_2samp(ref[~np.isnan(ref)], current[:, 0]).statistic
    assert drift.ks_statistic(ref, current[:, 0]) == pytest.approx(expected, abs=1e-9)


def test_identical_samples_have_zero_distance(samples):
    reference, _ = samples
    ks, wd = drift.RawReference.fit(reference).ks_and_wasserstein(reference)
    assert np.all(ks == 0) and np.all(wd == 0)


def test_feature_count_mismatch_is_refused(samples):
    reference, current = samples
    with pytest.raises(ValueError, match="features"):
        drift.RawReference.fit(reference).ks(current[:, :2])


def test_psi_kl_js_on_count_vectors():
    ref = np.array([[50, 30, 20, 0], [25, 25, 25, 25]], dtype=float)
    cur = np.array([[10, 30, 40, 20], [25, 25, 25, 25]], dtype=float)
    p = np.where(ref / ref.sum(1, keepdims=True) == 0, 1e-4, ref / ref.sum(1, keepdims=True))
    q = np.where(cur / cur.sum(1, keepdims=True) == 0, 1e-4, cur / cur.sum(1, keepdims=True))
    np.testing.assert_allclose(drift.psi(ref, cur), ((q - p) * np.log(q / p)).sum(1), atol=1e-12)
    np.testing.assert_allclose(drift.kl_divergence(ref, cur), (q * np.log(q / p)).sum(1), atol=1e-12)
    np.testing.assert_allclose(drift.js_distance(ref, cur), [jensenshannon(ref[0], cur[0]), 0.0], atol=1e-9)
    assert drift.psi(ref, cur)[1] == pytest.approx(0.0)
    assert drift.psi(ref, cur)[0] > 0.2


def test_psi_accepts_fractions_or_counts_alike():
    assert drift.psi([0.5, 0.5], [0.2, 0.8]) == pytest.approx(drift.psi([50, 50], [20, 80]))


def test_chi_square_matches_scipy_statistic_and_pvalue():
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    cur = np.array([15.0, 18.0, 35.0, 32.0])
    stat, pvalue = drift.chi_square(ref, cur)
    expected = stats.chisquare(cur, f_exp=ref * cur.sum())
    assert stat == pytest.approx(expected.statistic, abs=1e-9)
    assert pvalue == pytest.approx(expected.pvalue, abs=1e-9)


@pytest.mark.parametrize("x,dof", [(0.5, 1), (3.0, 4), (25.0, 9), (200.0, 30), (1e-3, 2), (80.0, 120)])
def test_chi2_survival_function_matches_scipy(x, dof):
    assert drift.chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-15)


def test_binned_cdf_statistics_agree_with_raw_ones_on_fine_bins():
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, 20000)
    current = rng.normal(0.5, 1, 20000)
    profile = FeatureProfile.build(reference, "numeric", n_bins=50)
    stats_ = drift.binned_statistics(profile, profile.counts(current))
    raw_ks = stats.ks_2samp(reference, current).statistic
    raw_wd = stats.wasserstein_distance(reference, current)
    assert stats_["ks"] <= raw_ks + 1e-12  # edges are a subset of the points the raw KS looks at
    assert stats_["ks"] == pytest.approx(raw_ks, abs=0.02)
    assert stats_["wasserstein"] == pytest.approx(raw_wd, rel=0.1)
    assert stats_["psi"] > 0.1 and stats_["chisquare_pvalue"] < 1e-6


def test_binned_ks_equals_cdf_gap_at_the_edges():
    rng = np.random.default_rng(4)
    reference, current = rng.normal(0, 1, 5000), rng.normal(0.2, 1.3, 4000)
    profile = FeatureProfile.build(reference, "numeric", n_bins=10)
    ordered_ref = drift.ordered_numeric(profile, profile.counts(reference))
    ordered_cur = drift.ordered_numeric(profile, profile.counts(current))
    edges = profile.edges
    ecdf_gap = [abs(np.mean(reference < e) - np.mean(current < e)) for e in edges[:-1]]
    # after the last inner bin the CDFs include the closed last bin: compare at <= max edge
    ecdf_gap.append(abs(np.mean(reference <= edges[-1]) - np.mean(current <= edges[-1])))
    assert drift.ks_binned(ordered_ref, ordered_cur) == pytest.approx(max(ecdf_gap), abs=1e-12)


def test_binned_wasserstein_is_exact_for_uniform_mass_inside_bins():
    edges = np.array([0.0, 1.0, 2.0])
    ref = [0, 1, 0, 0]  # below, [0,1), [1,2], above: uniform on [0,1)
    cur = [0, 0, 1, 0]  # uniform on [1,2]: shifted by 1
    assert drift.wasserstein_binned(ref, cur, edges) == pytest.approx(1.0)


def test_categorical_profile_has_no_cdf_statistics():
    profile = FeatureProfile.build(["a", "b", "a", "c"], "categorical")
    out = drift.binned_statistics(profile, profile.vector({"a": 1, "b": 5, "other": 4}))
    assert "ks" not in out and out["psi"] > 0.5


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ"):
        drift.psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        drift.psi([1, -2], [1, 2])


# --- the drift trigger's test: G (likelihood ratio) and the Holm correction ----------------------
def test_g_test_one_sample_matches_scipy_log_likelihood_power_divergence():
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    cur = np.array([15.0, 18.0, 35.0, 32.0])
    stat, pvalue = drift.g_test(ref, cur)
    expected = stats.power_divergence(cur, f_exp=ref * cur.sum(), lambda_="log-likelihood")
    assert stat == pytest.approx(expected.statistic, abs=1e-9)
    assert pvalue == pytest.approx(expected.pvalue, abs=1e-9)


def test_g_test_two_sample_matches_scipy_contingency_g_test():
    ref = np.array([0.1, 0.2, 0.3, 0.4, 0.0])  # nothing above the training range
    cur = np.array([15.0, 18.0, 35.0, 30.0, 2.0])
    stat, pvalue = drift.g_test(ref, cur, reference_total=1000)
    table = np.vstack([ref * 1000, cur])
    g, p, dof, _ = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    assert (stat, pvalue) == (pytest.approx(g, abs=1e-9), pytest.approx(p, abs=1e-9)) and dof == 4


def test_g_test_is_vectorised_over_features_and_zero_without_live_values():
    ref = np.array([[0.5, 0.5], [0.25, 0.75]])
    cur = np.array([[50.0, 50.0], [0.0, 0.0]])
    stat, pvalue = drift.g_test(ref, cur, reference_total=400)
    assert stat[0] == pytest.approx(0.0, abs=1e-12) and pvalue[0] == pytest.approx(1.0)
    assert stat[1] == 0.0 and pvalue[1] == 1.0


def test_a_few_live_values_beyond_the_training_range_weigh_as_a_few_values():
    ref = np.array([0.25, 0.25, 0.25, 0.25, 0.0])
    cur = np.array([250.0, 250.0, 249.0, 248.0, 3.0])  # 3 of 1000 above the training maximum
    _, p_two_sample = drift.g_test(ref, cur, reference_total=10_000)
    _, p_chi_square = drift.chi_square(ref, cur)  # eps mass for the empty bin: its term grows like 1/E
    assert p_two_sample > 1e-3 and p_chi_square < 1e-12


@pytest.mark.parametrize(
    ("pvalues", "adjusted"),
    [
        ([0.01, 0.04, 0.03, 0.5], [0.04, 0.09, 0.09, 0.5]),  # 4·0.01, max(3·0.03, .04), 2·0.04, 1·0.5
        ([0.3, 0.2], [0.4, 0.4]),  # monotone: never below the previous adjusted value
        ([0.9, 0.9, 0.9], [1.0, 1.0, 1.0]),  # capped at 1
        ([0.001], [0.001]),  # one test: unadjusted
        ([], []),
    ],
)
def test_holm_adjusted_p_values(pvalues, adjusted):
    np.testing.assert_allclose(drift.holm(pvalues), adjusted, atol=1e-12)
