"""Whole runs, in process, on real data: sklearn's bundled datasets and a drifting time series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
from noria import store
from noria.artifact import load_verified, sha256_file
from noria.profile import Profile
from trainer_datasets import classifier_spec, drifting_frame, sklearn_frame, write_partitions


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_breast_cancer_run_writes_a_verified_artifact_set(tmp_path, make_spec, run_trainer):
    csv = tmp_path / "cancer.csv"
    sklearn_frame("breast_cancer").to_csv(csv, index=False)
    spec = make_spec(f"file://{csv}", model=classifier_spec("target", params={"max_iter": 50}),
                     evaluation={"metric": "f1", "holdoutFraction": "0.25", "minScore": "0.80"},
                     validation={"minRows": 100, "maxMissingFraction": "0.0"})
    result = run_trainer(spec)
    summary = result.summary
    assert result.code == 0, summary
    assert summary["status"] == "succeeded" and summary["verdict"] == "passed"
    assert set(summary["metrics"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert all(isinstance(v, str) for v in summary["metrics"].values())
    assert float(summary["metrics"]["f1"]) > 0.9
    assert "meets minScore 0.80" in summary["reason"]
    assert json.loads(result.termination_log.read_text()) == summary
    assert len(result.termination_log.read_bytes()) <= 4096

    out = result.output_dir(spec)
    assert sorted(p.name for p in out.iterdir()) == sorted(store.ARTIFACT_FILES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    assert sha256_file(str(out / "model.skops")) == summary["digest"]
    metadata = _read(out / "metadata.json")
    assert metadata["artifact"]["digest"] == summary["digest"]
    assert metadata["runId"] == "churn-r1" and metadata["data"]["rows"] == 569
    assert "scikit-learn" in metadata["libraries"] and metadata["parent"] is None
    report = _read(out / "report.json")
    assert report["validation"]["passed"] and report["gate"]["verdict"] == "passed"
    # which average the scores are, said where they are (the live checks' macro F1, noria.scoring)
    assert "f1 are macro averages" in report["evaluation"]["averaging"] == metadata["evaluation"]["averaging"]

    # the saved model loads with skops and the trusted-type list, and predicts as before saving
    frame = sklearn_frame("breast_cancer")
    features = frame.drop(columns=["target"])
    model = load_verified(summary["artifactUri"], summary["digest"])
    untrusted = sio.get_untrusted_types(file=str(out / "model.skops"))
    assert sorted(untrusted) == metadata["artifact"]["untrustedTypes"]
    again = sio.load(str(out / "model.skops"), trusted=untrusted)
    np.testing.assert_array_equal(model.predict(features), again.predict(features))
    assert (model.predict(features) == frame["target"]).mean() > 0.9

    profile = Profile.load(summary["profileUri"])
    assert set(profile.features) == set(features.columns)
    assert profile.prediction is not None and set(profile.prediction.categories) <= {"0", "1"}
    assert abs(profile.prediction.reference.sum() - 1.0) < 1e-9


def test_progress_lines_name_every_stage_with_rows_and_elapsed(tmp_path, make_spec, run_trainer):
    csv = tmp_path / "wine.csv"
    sklearn_frame("wine").to_csv(csv, index=False)
    spec = make_spec(f"file://{csv}", model=classifier_spec("target", "sklearn.linear_model.LogisticRegression",
                                                            params={"max_iter": 500}),
                     tuning={"strategy": "random", "trials": 3, "space": {"C": [0.01, 10.0]}})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    stages = [line["stage"] for line in result.progress if line.get("event") == "done"]
    for stage in ("spec", "output-check", "load", "window", "validation", "split", "tuning", "training",
                  "evaluation", "artifacts", "write"):
        assert stage in stages
    load = next(line for line in result.progress if line["stage"] == "load" and line["event"] == "done")
    assert load["rows"] == 178 and load["elapsed"] >= 0 and load["peakRssMB"] > 0
    pcts = [line["pct"] for line in result.progress if line["stage"] == "tuning" and "pct" in line]
    assert pcts == sorted(pcts) and pcts[-1] == 100.0 and len(pcts) == 4  # user's params + 3 trials
    report = _read(result.output_dir(spec) / "report.json")
    assert len(report["tuning"]["trials"]) == 4
    metadata = _read(result.output_dir(spec) / "metadata.json")
    assert metadata["model"]["classes"] == [0, 1, 2]
    assert float(result.summary["metrics"]["accuracy"]) > 0.85  # multiclass metrics are macro-averaged


def test_diabetes_regression_reports_rmse_mae_r2(tmp_path, make_spec, run_trainer):
    parquet = tmp_path / "diabetes.parquet"
    sklearn_frame("diabetes").to_parquet(parquet, index=False)
    spec = make_spec(f"file://{parquet}", model={"task": "regression", "estimator": "sklearn.linear_model.Ridge",
                                                 "params": {"alpha": 0.5}, "target": "target"},
                     evaluation={"metric": "rmse", "maxScore": 70})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert set(result.summary["metrics"]) == {"rmse", "mae", "r2"}
    assert 40 < float(result.summary["metrics"]["rmse"]) < 70
    profile = Profile.load(result.summary["profileUri"])
    assert profile.prediction is not None and profile.prediction.kind == "numeric"


def test_dynamic_window_picks_the_post_drift_window(tmp_path, make_spec, run_trainer):
    source = write_partitions(drifting_frame(), tmp_path / "events")
    spec = make_spec(f"file://{source}/", model=classifier_spec("label", params={"max_iter": 40}),
                     data={"source": f"file://{source}/", "format": "parquet", "timestampColumn": "event_time",
                           "window": {"candidates": ["30d", "90d", "180d"]}},
                     evaluation={"metric": "accuracy", "holdoutFraction": "0.2"})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["window"] == "30d"
    report = _read(result.output_dir(spec) / "report.json")
    scores = {c["window"]: c["score"] for c in report["window"]["candidates"]}
    assert set(scores) == {"30d", "90d", "180d"}
    assert scores["30d"] > scores["90d"] + 0.1 and scores["30d"] > scores["180d"] + 0.1
    metadata = _read(result.output_dir(spec) / "metadata.json")
    assert metadata["data"]["window"] == "30d" and metadata["data"]["files"] == len(list(source.rglob("*.parquet")))


def test_csv_and_parquet_of_the_same_data_train_the_same_model(tmp_path, make_spec, run_trainer):
    frame = drifting_frame(days=60)
    csv = tmp_path / "events.csv"
    frame.to_csv(csv, index=False)
    parts = write_partitions(frame, tmp_path / "parts")
    common = {"model": classifier_spec("label"), "evaluation": {"metric": "accuracy"}}
    window = {"timestampColumn": "event_time", "window": {"last": "2000 rows"}}
    a = run_trainer(make_spec(f"file://{csv}", version=1, data={"source": f"file://{csv}", **window}, **common))
    b = run_trainer(make_spec(f"file://{parts}/*/*.parquet", version=2,
                              data={"source": f"file://{parts}/*/*.parquet", **window}, **common))
    assert a.code == b.code == 0, (a.summary, b.summary)
    assert a.summary["rows"] == b.summary["rows"] == 2000
    assert a.summary["metrics"] == b.summary["metrics"]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_feedback_rows_are_joined_by_id_deduplicated_and_counted(tmp_path, store_root, make_spec, run_trainer):
    frame = drifting_frame(days=60)
    csv = tmp_path / "events.csv"
    frame.to_csv(csv, index=False)
    fresh = drifting_frame(days=3, seed=99)
    predictions = [{"id": f"p{i}", "ts": "2026-06-29T10:00:00Z", "model_version": "churn-v1",
                    "features": {"x1": r.x1, "x2": r.x2, "x3": None if pd.isna(r.x3) else r.x3,
                                 "segment": r.segment}, "prediction": 1}
                   for i, r in enumerate(fresh.head(60).itertuples())]
    base = store_root / "ml" / "churn"
    _write_jsonl(base / "predictions" / "churn-v1" / "2026-06-29" / "pod-a-000001.jsonl", predictions[:30])
    # the same prediction logged twice (a retried write) must count once
    _write_jsonl(base / "predictions" / "churn-v1" / "2026-06-29" / "pod-b-000001.jsonl",
                 predictions[30:] + predictions[:5])
    labels = [{"id": f"p{i}", "ts": "2026-06-29T12:00:00Z", "label": int(r.label)}
              for i, r in enumerate(fresh.head(60).itertuples()) if i < 40]
    correction = {"id": "p0", "ts": "2026-06-29T13:00:00Z", "label": 1 - labels[0]["label"]}
    orphan = {"id": "never-predicted", "ts": "2026-06-29T13:00:00Z", "label": 1}
    _write_jsonl(base / "feedback" / "2026-06-29" / "pod-a-000001.jsonl", labels[:20])
    with open(base / "feedback" / "2026-06-29" / "pod-a-000001.jsonl", "a") as handle:
        handle.write('{"id": "torn')  # a line still being written when the run started
    _write_jsonl(base / "feedback" / "2026-06-30" / "pod-b-000001.jsonl", labels[20:] + [correction, orphan])

    spec = make_spec(f"file://{csv}", model=classifier_spec("label", features=["x1", "x2", "x3", "segment"]),
                     data={"source": f"file://{csv}", "timestampColumn": "event_time", "feedback": {"enabled": True}})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["feedbackRows"] == 40
    report = _read(result.output_dir(spec) / "report.json")
    assert report["feedback"] == {"rows": 40, "predictionsRead": 65, "labelsRead": 42, "duplicatePredictions": 5,
                                  "duplicateLabels": 1, "unmatchedLabels": 1, "files": 4, "undated": 0,
                                  "alreadyInData": 0, "dedupeKey": "features + event_time", "prematureLabels": 0,
                                  "inWindow": 40}
    metadata = _read(result.output_dir(spec) / "metadata.json")
    assert metadata["data"]["feedbackRows"] == 40
    assert metadata["data"]["trainingRows"] + metadata["data"]["holdoutRows"] == result.summary["rows"]


def test_gate_passes_a_better_contender_and_rejects_a_worse_one(tmp_path, store_root, make_spec, run_trainer):
    csv = tmp_path / "cancer.csv"
    sklearn_frame("breast_cancer").to_csv(csv, index=False)
    # The majority-class dummy's f1 is macro: 0.387 (0.774 on its class, 0 on the other), not the
    # 0.774 a binary F1 of class 1 gave it; a minScore of 0.30 lets it pass as the weak champion.
    evaluation = {"metric": "f1", "minScore": "0.30", "mustBeatChampionBy": "0.01"}
    weak = run_trainer(make_spec(f"file://{csv}", version=1, evaluation=evaluation,
                                 model=classifier_spec("target", "sklearn.dummy.DummyClassifier")))
    assert weak.code == 0 and weak.summary["verdict"] == "passed", weak.summary
    assert 0.3 < float(weak.summary["metrics"]["f1"]) < 0.45, weak.summary["metrics"]

    def champion(summary: dict, name: str) -> dict:
        return {"name": name, "artifactUri": summary["artifactUri"], "digest": summary["digest"],
                "profileUri": summary["profileUri"]}

    strong_spec = make_spec(f"file://{csv}", version=2, evaluation=evaluation,
                            champion=champion(weak.summary, "churn-v1"), model=classifier_spec("target"),
                            validation={"schema": "strict"})
    strong = run_trainer(strong_spec)
    assert strong.code == 0 and strong.summary["verdict"] == "passed", strong.summary
    assert "beats champion churn-v1" in strong.summary["reason"]
    assert strong.summary["championMetrics"]["f1"] == weak.summary["metrics"]["f1"]
    report = _read(strong.output_dir(strong_spec) / "report.json")
    drift = report["validation"]["driftAgainstChampion"]
    assert drift["mean_radius"]["psi"] < 0.05 and drift["mean_radius"]["outOfRangeShare"] < 0.01
    assert _read(strong.output_dir(strong_spec) / "metadata.json")["parent"] == "churn-v1"

    worse_spec = make_spec(f"file://{csv}", version=3, evaluation=evaluation,
                           champion=champion(strong.summary, "churn-v2"),
                           model=classifier_spec("target", "sklearn.tree.DecisionTreeClassifier",
                                                 params={"max_depth": 1}))
    worse = run_trainer(worse_spec)
    assert worse.code == 0, worse.summary
    assert worse.summary["verdict"] == "rejected" and worse.summary["status"] == "succeeded"
    assert "does not beat champion churn-v2" in worse.summary["reason"]
    # a rejected contender still has its artifact set, for the Rejected ModelVersion
    assert (worse.output_dir(worse_spec) / "model.skops").exists()


def test_contender_below_min_score_is_rejected_with_the_numbers(tmp_path, make_spec, run_trainer):
    csv = tmp_path / "cancer.csv"
    sklearn_frame("breast_cancer").to_csv(csv, index=False)
    result = run_trainer(make_spec(f"file://{csv}", model=classifier_spec("target", "sklearn.dummy.DummyClassifier",
                                                                          params={"strategy": "prior"}),
                                   evaluation={"metric": "roc_auc", "minScore": "0.70"}))
    assert result.code == 0
    assert result.summary["verdict"] == "rejected"
    assert result.summary["reason"] == "roc_auc 0.5000 is below minScore 0.70"


def test_declared_column_types_decide_the_encoding(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("wine")
    frame["cellar"] = (frame.index % 7) * 100  # a numeric-looking code, not a magnitude
    path = tmp_path / "wine.parquet"
    frame.to_parquet(path)
    spec = make_spec(f"file://{path}", model=classifier_spec("target", "sklearn.linear_model.LogisticRegression",
                                                             params={"max_iter": 1000}),
                     validation={"columns": {"cellar": "categorical", "alcohol": "float"}})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    metadata = _read(result.output_dir(spec) / "metadata.json")
    assert metadata["model"]["kinds"]["cellar"] == "categorical"
    assert metadata["model"]["kinds"]["alcohol"] == "numeric"
    profile = Profile.load(result.summary["profileUri"])
    assert set(profile.features["cellar"].categories) == {str(float(k * 100)) for k in range(7)} or \
        set(profile.features["cellar"].categories) == {str(k * 100) for k in range(7)}


def test_strict_schema_refuses_features_that_differ_from_the_champion(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("breast_cancer")
    first_path = tmp_path / "first.csv"
    frame.to_csv(first_path, index=False)
    first = run_trainer(make_spec(f"file://{first_path}", version=1,
                                  model=classifier_spec("target", "sklearn.dummy.DummyClassifier")))
    assert first.code == 0
    second_path = tmp_path / "second.csv"
    frame.drop(columns=["worst_area"]).assign(new_signal=1.0).to_csv(second_path, index=False)
    champion = {"name": "churn-v1", "artifactUri": first.summary["artifactUri"], "digest": first.summary["digest"],
                "profileUri": first.summary["profileUri"]}
    spec = make_spec(f"file://{second_path}", version=2, champion=champion, model=classifier_spec("target"),
                     validation={"schema": "strict"})
    result = run_trainer(spec)
    assert result.code == 4 and result.summary["failedStage"] == "validation"
    assert "features differ from the champion's: new ['new_signal']; gone ['worst_area']" in result.summary["reason"]
    assert not result.output_dir(spec).exists()


def test_tuning_stops_at_the_time_budget(tmp_path, make_spec, run_trainer):
    csv = tmp_path / "wine.csv"
    sklearn_frame("wine").to_csv(csv, index=False)
    spec = make_spec(f"file://{csv}", model=classifier_spec("target", "sklearn.tree.DecisionTreeClassifier"),
                     tuning={"strategy": "random", "trials": 50, "space": {"max_depth": [1, 8]}, "timeBudget": "0s"})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    tuning = _read(result.output_dir(spec) / "report.json")["tuning"]
    assert tuning["stoppedByTimeBudget"] is True and len(tuning["trials"]) == 1
