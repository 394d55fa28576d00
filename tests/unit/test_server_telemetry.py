"""Server metrics (noria_server.telemetry): vectorised bin counting equals the shared profile's binning."""

from __future__ import annotations

import numpy as np
from noria import metrics as m
from noria.profile import FeatureProfile, build_profile
from noria_server.telemetry import FeatureBinCounter, ServerMetrics


def _profile(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    columns = {"x": rng.normal(size=500), "y": rng.exponential(size=500), "z": np.r_[np.ones(250), np.zeros(250)],
               "seg": np.array(["a", "b", "c", "a", "b"] * 100, dtype=object)}
    kinds = {"x": "numeric", "y": "numeric", "z": "numeric", "seg": "categorical"}
    return build_profile(columns, kinds)  # type: ignore[arg-type]


def test_vectorised_bins_equal_feature_profile_assign_on_edges_and_outliers() -> None:
    rng = np.random.default_rng(1)
    profile = _profile(rng)
    features = ["x", "y", "z", "seg"]
    counter = FeatureBinCounter("m", "m-v1", features, profile)
    x_edges = profile.features["x"].edges
    assert x_edges is not None
    values = {
        "x": np.r_[rng.normal(size=300), x_edges, [-99.0, 99.0, np.nan]],
        "y": np.r_[rng.exponential(size=300) * 2, profile.features["y"].edges, [np.nan, -1.0, 1e9]],
    }
    n = len(values["x"])
    values["y"] = values["y"][:n]
    values["z"] = rng.choice([0.0, 1.0, 0.5, np.nan, 2.0], size=n)
    segs = rng.choice(np.array(["a", "b", "c", "zzz"], dtype=object), size=n)
    segs[:3] = None
    rows = np.empty((n, 4), dtype=object)
    for j, f in enumerate(["x", "y", "z"]):
        rows[:, j] = values[f]
    rows[:, 3] = segs
    counter.observe(rows)
    collected = {(s.labels["feature"], s.labels["bin"]): s.value for fam in counter.collect() for s in fam.samples}
    for f, vals in (("x", values["x"]), ("y", values["y"]), ("z", values["z"]), ("seg", segs)):
        fp: FeatureProfile = profile.features[f]
        expected = fp.counts(list(vals) if f == "seg" else vals)
        got = np.array([collected[(f, label)] for label in fp.labels])
        assert got.tolist() == expected.tolist(), f
        # And label_of (the per-value path the contract names) agrees too.
        by_label = {label: 0 for label in fp.labels}
        for v in vals:
            by_label[fp.label_of(v)] += 1
        assert [by_label[label] for label in fp.labels] == expected.tolist(), f


def test_float_matrix_fast_path_counts_the_same_as_object_rows() -> None:
    rng = np.random.default_rng(2)
    profile = build_profile({"a": rng.normal(size=200), "b": rng.normal(size=200)},
                            {"a": "numeric", "b": "numeric"})
    rows = rng.normal(size=(64, 2)) * 2
    fast = FeatureBinCounter("m", "v", ["a", "b"], profile)
    slow = FeatureBinCounter("m", "v", ["a", "b"], profile)
    fast.observe(rows)
    slow.observe(rows.astype(object))
    assert fast.counts.tolist() == slow.counts.tolist()
    assert fast.counts.sum() == 128


def test_exposition_uses_the_contract_names_and_labels() -> None:
    rng = np.random.default_rng(3)
    metrics = ServerMetrics("churn", "churn-v2")
    metrics.enable_feature_bins(["a"], build_profile({"a": rng.normal(size=50)}, {"a": "numeric"}))
    metrics.declare_classes([0, 1])
    metrics.count_code(200, m.ENDPOINT_INFER)
    metrics.duration.observe(0.001)
    metrics.count_predictions(np.array([1, 1, 0]), classifier=True)
    metrics.feedback.labels("churn", "churn-v2", "1", "0").inc()
    metrics.abs_error.observe(0.5)
    text = metrics.exposition().decode()
    for name in (m.REQUESTS_TOTAL, m.REQUEST_DURATION_SECONDS + "_bucket", m.PREDICTIONS_TOTAL,
                 m.FEATURE_BIN_TOTAL, m.FEEDBACK_TOTAL, m.FEEDBACK_ABS_ERROR_SUM, m.FEEDBACK_ABS_ERROR_COUNT,
                 m.PREDICTION_LOG_DROPPED_TOTAL):
        assert f"\n{name}{{" in text, name
    assert 'noria_predictions_total{class="1",model="churn",version="churn-v2"} 2.0' in text
    assert 'noria_feedback_total{actual="1",model="churn",predicted="0",version="churn-v2"} 1.0' in text
    assert 'noria_feature_bin_total{bin="missing",feature="a",model="churn",version="churn-v2"} 0.0' in text
    assert "_created" not in text


def test_series_the_analysis_reads_exist_at_zero_before_the_first_request() -> None:
    metrics = ServerMetrics("churn", "churn-v2")
    metrics.declare_classes([0, 1])
    text = metrics.exposition().decode()
    for code in ("200", "500"):
        assert f'{m.REQUESTS_TOTAL}{{code="{code}",{m.LABEL_ENDPOINT}="infer",model="churn",version="churn-v2"}} 0.0' in text
    for actual in ("0", "1"):
        for predicted in ("0", "1"):
            assert (f'{m.FEEDBACK_TOTAL}{{actual="{actual}",model="churn",predicted="{predicted}",'
                    f'version="churn-v2"}} 0.0') in text


def test_buffered_counts_equal_the_profile_across_fills_bulk_batches_and_reads() -> None:
    rng = np.random.default_rng(4)
    profile = build_profile({"a": rng.normal(size=300), "b": rng.exponential(size=300), "c": np.ones(300)},
                            {"a": "numeric", "b": "numeric", "c": "numeric"})
    counter = FeatureBinCounter("m", "v", ["a", "b", "c"], profile)
    seen = []
    for i, n in enumerate([1, 11, 200, 60, 1, FeatureBinCounter.BUFFER_ROWS, FeatureBinCounter.BUFFER_ROWS + 1,
                           3, 700, 2, 255]):
        rows = rng.normal(size=(n, 3)) * 3
        rows[rng.random(size=(n, 3)) < 0.05] = np.nan
        counter.observe(rows)
        seen.append(rows)
        if i % 3 == 0:  # a read between batches counts what is held, and counting goes on after it
            every = np.vstack(seen)
            expected = np.concatenate([profile.features[f].counts(every[:, j]) for j, f in enumerate("abc")])
            assert counter.counts.tolist() == expected.tolist(), i
    every = np.vstack(seen)
    collected = {(s.labels["feature"], s.labels["bin"]): s.value for fam in counter.collect() for s in fam.samples}
    for j, f in enumerate("abc"):
        fp = profile.features[f]
        assert [collected[(f, label)] for label in fp.labels] == fp.counts(every[:, j]).tolist(), f
    assert counter.counts.sum() == every.size


def test_predictions_counted_alike_in_small_and_large_batches() -> None:
    metrics = ServerMetrics("m", "v")
    metrics.declare_classes(["a", "b", "c"])
    small = np.array(["b", "a", "b"], dtype=object)
    large = np.array(["c", "a"] * 100)
    metrics.count_predictions(small, classifier=True)
    metrics.count_predictions(large, classifier=True)
    metrics.count_predictions(np.array(["a"]), classifier=True)
    got = {s.labels["class"]: s.value for fam in metrics.predictions.collect() for s in fam.samples}
    assert got == {"a": 102.0, "b": 2.0, "c": 100.0}
