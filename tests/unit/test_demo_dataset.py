"""The demo's generated churn world: drift must really move what it claims to move."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from noria_testbed.demo import dataset as D
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    x = frame[list(D.FEATURES)].copy()
    for name in D.CATEGORICAL_FEATURES:
        x[name] = pd.Categorical(x[name], categories=sorted(set(D.CONTRACTS) | set(D.PAYMENT_METHODS)))
    return x, frame[D.TARGET]


def _fit(frame: pd.DataFrame) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0).fit(*_xy(frame))


def _accuracy(model: HistGradientBoostingClassifier, frame: pd.DataFrame) -> float:
    x, y = _xy(frame)
    return float(accuracy_score(y, model.predict(x)))


def test_generated_rows_have_the_schema_timestamps_and_plausible_churn_rate() -> None:
    frame = D.generate(3000, D.REFERENCE_WORLD, np.random.default_rng(1), START, END)
    assert list(frame.columns) == [D.ID, D.TIMESTAMP, *D.FEATURES, D.TARGET]
    assert frame[D.TIMESTAMP].is_monotonic_increasing
    assert frame[D.TIMESTAMP].min() >= pd.Timestamp(START) and frame[D.TIMESTAMP].max() < pd.Timestamp(END)
    assert set(frame["contract"]) == set(D.CONTRACTS)
    assert set(frame[D.TARGET]) == {0, 1}
    assert 0.2 < frame[D.TARGET].mean() < 0.5
    assert frame[list(D.NUMERIC_FEATURES)].notna().all().all()


def test_generation_is_deterministic_for_a_seed() -> None:
    a = D.generate(500, D.DRIFTED_WORLD, np.random.default_rng(7), START, END)
    b = D.generate(500, D.DRIFTED_WORLD, np.random.default_rng(7), START, END)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("feature", ["monthly_charges", "data_usage_gb", "age"])
def test_covariate_shift_moves_the_input_distribution(feature: str) -> None:
    rng = np.random.default_rng(2)
    reference = D.sample_features(4000, D.REFERENCE_WORLD, rng)
    same = D.sample_features(4000, D.REFERENCE_WORLD, rng)
    shifted = D.sample_features(4000, D.World(shift=1.0), rng)
    assert stats.ks_2samp(reference[feature], same[feature]).pvalue > 0.001
    assert stats.ks_2samp(reference[feature], shifted[feature]).pvalue < 1e-12


def test_covariate_shift_moves_the_contract_mix() -> None:
    rng = np.random.default_rng(3)
    before = D.sample_features(5000, D.REFERENCE_WORLD, rng)["contract"].value_counts(normalize=True)
    after = D.sample_features(5000, D.World(shift=1.0), rng)["contract"].value_counts(normalize=True)
    assert after["month-to-month"] - before["month-to-month"] > 0.15


def test_concept_drift_changes_the_labels_of_the_same_customers() -> None:
    features = D.sample_features(5000, D.REFERENCE_WORLD, np.random.default_rng(4))
    before = D.churn_logit(features, concept=0.0) > 0
    after = D.churn_logit(features, concept=1.0) > 0
    assert np.mean(before != after) > 0.25
    assert np.array_equal(D.churn_logit(features, 0.0) > 0, before)


def test_concept_drift_breaks_the_old_model_and_a_retrained_one_recovers() -> None:
    rng = np.random.default_rng(5)
    reference = D.generate(8000, D.REFERENCE_WORLD, rng, START, END)
    drifted = D.generate(8000, D.DRIFTED_WORLD, rng, START, END)
    v1, v2 = _fit(reference[:5000]), _fit(drifted[:5000])
    before = _accuracy(v1, reference[5000:])
    v1_after = _accuracy(v1, drifted[5000:])
    v2_after = _accuracy(v2, drifted[5000:])
    assert before > 0.85
    assert before - v1_after > 0.2, (before, v1_after)
    assert v2_after >= before - 0.02, (before, v2_after)


def test_corrupted_labels_are_inverted_and_make_a_confidently_wrong_model() -> None:
    rng = np.random.default_rng(6)
    clean = D.generate(5000, D.DRIFTED_WORLD, rng, START, END)
    bad = D.corrupt_labels(clean)
    assert (bad[D.TARGET] == 1 - clean[D.TARGET]).all()
    pd.testing.assert_frame_equal(bad[list(D.FEATURES)], clean[list(D.FEATURES)])
    holdout = D.generate(2000, D.DRIFTED_WORLD, rng, START, END)
    assert _accuracy(_fit(bad), holdout) < 0.3
    half = D.corrupt_labels(clean, fraction=0.5, rng=np.random.default_rng(0))
    assert 0.45 < np.mean(half[D.TARGET] != clean[D.TARGET]) < 0.55


def test_bad_arguments_are_refused_with_the_name_of_the_argument() -> None:
    with pytest.raises(ValueError, match="World.shift"):
        D.World(shift=1.5)
    with pytest.raises(ValueError, match="fraction"):
        D.corrupt_labels(D.generate(10, D.REFERENCE_WORLD, np.random.default_rng(0), START, END), fraction=0)
    with pytest.raises(ValueError, match="end"):
        D.generate(10, D.REFERENCE_WORLD, np.random.default_rng(0), END, START)
    with pytest.raises(ValueError, match="partition"):
        D.write_partition("/tmp", "x", pd.DataFrame(), "../escape")


def test_partitions_are_written_whole_and_read_back_in_time_order(tmp_path) -> None:
    rng = np.random.default_rng(8)
    first = D.generate(300, D.REFERENCE_WORLD, rng, START, START + dt.timedelta(days=30))
    second = D.generate(200, D.DRIFTED_WORLD, rng, START + dt.timedelta(days=30), END, id_offset=300)
    D.write_partition(tmp_path, "churn", second, "part-0002")
    path = D.write_partition(tmp_path, "churn", first, "part-0001")
    assert path == tmp_path / "datasets" / "churn" / "part-0001.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0001.parquet", "part-0002.parquet"]
    back = D.read_dataset(tmp_path, "churn")
    assert len(back) == 500 and back[D.TIMESTAMP].is_monotonic_increasing
    assert back[D.ID].is_unique


def test_a_feature_row_is_json_ready() -> None:
    frame = D.generate(3, D.REFERENCE_WORLD, np.random.default_rng(9), START, END)
    row = D.feature_row(frame, 0)
    assert set(row) == set(D.FEATURES)
    assert isinstance(row["contract"], str) and isinstance(row["tenure_months"], float)
