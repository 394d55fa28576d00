"""Issue #11, defects 3-7: the trainer learns from what production taught, and the gate means what
the CRD says. Whole runs in process on generated data, with the feedback loop's own files (the
prediction log and the feedback log in the store) written the way the model server writes them.

Every table row was checked to fail on the trainer before the fix (commit fa41dff): rows windows
trained on every label ever logged, duration windows failed with "has no rows" beside fresh labels,
the holdout held data rows only, the shipped model never saw the newest slice, a tie passed and an
unset mustBeatChampionBy compared anyway.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from noria.api.training_pipeline import TrainingPipelineSpec
from noria.artifact import load_verified
from noria_trainer import data as data_mod
from noria_trainer.spec import parse_pipeline_spec
from trainer_datasets import NOW, classifier_spec

FEATURES = ["x1", "x2", "x3", "segment"]
LOGISTIC = "sklearn.linear_model.LogisticRegression"
TREES = "sklearn.ensemble.HistGradientBoostingClassifier"


def world(n: int, start: dt.datetime, end: dt.datetime, concept: str, seed: int,
          segment: str | None = None) -> pd.DataFrame:
    """``n`` labelled events spread evenly from ``start`` to ``end``. ``old``: the label follows
    x1 + x3; ``new``: x2 - x1 (the issue's abrupt concept change); ``flipped``: the opposite of old."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(-1, 1, n)
    noise = rng.normal(0, 0.2, n)
    rule = {"old": x1 + x3 + noise > 0, "new": x2 - x1 + noise > 0, "flipped": x1 + x3 + noise <= 0}[concept]
    stamps = pd.date_range(start, end, periods=n, tz="UTC")
    segments = [segment] * n if segment else rng.choice(["north", "south"], n).tolist()
    return pd.DataFrame({"event_time": stamps, "x1": x1, "x2": x2, "x3": x3, "segment": segments,
                         "label": rule.astype(int)})


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def write_feedback_loop(store_root: Path, frame: pd.DataFrame, prefix: str = "p") -> None:
    """What the model server writes: one prediction line per request (``ts`` = when it was
    predicted, the features it saw) and, later, one feedback line with the true label."""
    base = store_root / "ml" / "churn"
    predictions = base / "predictions" / "churn-v1" / "2026-06-29" / f"pod-a-{prefix}.jsonl"
    labels = base / "feedback" / "2026-06-29" / f"pod-a-{prefix}.jsonl"
    for path in (predictions, labels):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(predictions, "w") as out_p, open(labels, "w") as out_l:
        for i, row in enumerate(frame.itertuples(index=False)):
            stamp = pd.Timestamp(row.event_time).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            features = {name: getattr(row, name) for name in FEATURES}
            out_p.write(json.dumps({"id": f"{prefix}{i}", "ts": stamp, "model_version": "churn-v1",
                                    "features": features, "prediction": 0}) + "\n")
            out_l.write(json.dumps({"id": f"{prefix}{i}", "ts": stamp, "label": int(row.label)}) + "\n")


def write_data(tmp_path: Path, frame: pd.DataFrame, name: str = "events") -> str:
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return f"file://{path}"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def champion_of(summary: dict[str, Any], name: str = "churn-v1") -> dict[str, Any]:
    return {"name": name, "artifactUri": summary["artifactUri"], "digest": summary["digest"],
            "profileUri": summary["profileUri"]}


# --- defects 3 and 5: one window over data and feedback -------------------------------------------------------
@pytest.mark.parametrize("window,rows,feedback_rows", [
    # defect 3: "10000 rows" trained 96k rows, 88k of them feedback. Feedback is the newest here.
    ("1000 rows", 1000, 1000),
    ("4000 rows", 4000, 3000),
    # defect 5: the data is 10-30 days old, fresh labels are in the last 3 days: train on them
    ("3d", 3000, 3000),
    ("20d", 3000 + 1000, 3000),  # half the data (the last 10 of its 20 days) plus every label
    (None, 5000, 3000),
])
def test_the_window_counts_data_and_feedback_rows_together(tmp_path, store_root, make_spec, run_trainer,
                                                            window, rows, feedback_rows):
    source = write_data(tmp_path, world(2000, days_ago(30), days_ago(10), "old", seed=1))
    write_feedback_loop(store_root, world(3000, days_ago(3), days_ago(0.01), "old", seed=2))
    data: dict[str, Any] = {"source": source, "timestampColumn": "event_time", "feedback": {"enabled": True}}
    if window:
        data["window"] = {"last": window}
    spec = make_spec(source, data=data, model=classifier_spec("label", LOGISTIC, features=FEATURES),
                     evaluation={"metric": "accuracy"})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["rows"] == rows
    assert result.summary["feedbackRows"] == feedback_rows
    report = read_json(result.output_dir(spec) / "report.json")
    assert report["window"]["rows"] == rows and report["window"]["dataRows"] == rows - feedback_rows
    assert report["feedback"]["rows"] == 3000 and report["feedback"]["inWindow"] == feedback_rows


def test_a_duration_window_with_no_rows_at_all_still_fails_and_says_so(tmp_path, store_root, make_spec,
                                                                        run_trainer):
    source = write_data(tmp_path, world(500, days_ago(30), days_ago(10), "old", seed=1))
    write_feedback_loop(store_root, world(300, days_ago(9), days_ago(8), "old", seed=2))
    spec = make_spec(source, data={"source": source, "timestampColumn": "event_time", "window": {"last": "3d"},
                                   "feedback": {"enabled": True}},
                     model=classifier_spec("label", LOGISTIC, features=FEATURES))
    result = run_trainer(spec)
    assert result.code == 3 and result.summary["failedStage"] == "data"
    assert "window last 3d" in result.summary["reason"] and "neither data nor labelled feedback" in \
        result.summary["reason"]


@pytest.mark.parametrize("data_days,feedback_days,timestamp_column,window,feedback_in_window", [
    # by time, not by kind: here the data is newer than the labels, so the newest rows are data rows
    ((10, 0.01), (30, 20), "event_time", "1000 rows", 0),
    ((30, 20), (10, 0.01), "event_time", "1000 rows", 1000),
    ((30, 0.01), (15, 5), "event_time", "15d", 1500),  # both kinds inside 15 days
    # without a timestamp column there is no shared clock: feedback (production traffic) comes last
    ((10, 0.01), (30, 20), None, "1000 rows", 1000),
])
def test_data_and_feedback_are_ordered_by_time_before_the_window(data_days, feedback_days, timestamp_column, window,
                                                                  feedback_in_window):
    data = world(3000, days_ago(data_days[0]), days_ago(data_days[1]), "old", seed=12)
    feedback = world(1500, days_ago(feedback_days[0]), days_ago(feedback_days[1]), "old", seed=13)
    feedback[data_mod.FEEDBACK_ID_COLUMN] = [f"p{i}" for i in range(len(feedback))]
    if timestamp_column is None:
        data, feedback = data.drop(columns=["event_time"]), feedback.drop(columns=["event_time"])
    combined = data_mod.combine(data, feedback, timestamp_column)
    spec = parse_pipeline_spec({**MINIMAL, "data": {"source": "file:///d/", "window": {"last": window},
                                                    **({"timestampColumn": timestamp_column} if timestamp_column else {})}})
    windowed = data_mod.apply_window(combined, spec.window, timestamp_column, NOW)
    assert int(windowed[data_mod.FEEDBACK_ID_COLUMN].notna().sum()) == feedback_in_window
    if timestamp_column:
        assert windowed[timestamp_column].is_monotonic_increasing


# --- defect 4: the gate sees the feedback rows -----------------------------------------------------------------
@pytest.mark.parametrize("feedback_enabled,verdict,holdout_feedback", [
    # the feedback loop: the store is frozen history, the world changed, labels tell it. The holdout is
    # the newest labelled traffic, where the stale champion is wrong, so the contender passes.
    (True, "passed", 480),
    # without feedback the run sees only history, where the champion is as good: nothing to gain
    (False, "rejected", 0),
])
def test_the_gate_judges_on_the_newest_labelled_traffic(tmp_path, store_root, make_spec, run_trainer,
                                                          feedback_enabled, verdict, holdout_feedback):
    source = write_data(tmp_path, world(3000, days_ago(60), days_ago(5), "old", seed=3))
    model = classifier_spec("label", TREES, features=FEATURES, params={"max_iter": 60})
    evaluation = {"metric": "accuracy", "mustBeatChampionBy": "0"}
    first_spec = make_spec(source, version=1, data={"source": source, "timestampColumn": "event_time"},
                           model=model, evaluation=evaluation)
    first = run_trainer(first_spec)
    assert first.code == 0 and first.summary["verdict"] == "passed", first.summary

    write_feedback_loop(store_root, world(2000, days_ago(2), days_ago(0.01), "new", seed=4))
    spec = make_spec(source, version=2, champion=champion_of(first.summary), model=model, evaluation=evaluation,
                     data={"source": source, "timestampColumn": "event_time", "window": {"last": "2400 rows"},
                           "feedback": {"enabled": feedback_enabled}})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["verdict"] == verdict, result.summary["reason"]
    report = read_json(result.output_dir(spec) / "report.json")
    assert report["evaluation"]["holdoutRows"] == 480  # the newest 20% of 2400 rows
    assert report["evaluation"]["holdoutFeedbackRows"] == holdout_feedback
    champion_score = report["evaluation"]["champion"]["accuracy"]
    if feedback_enabled:  # scored on the same (new-concept) holdout as the contender
        assert champion_score < 0.7 < report["evaluation"]["contender"]["accuracy"]
    else:
        assert champion_score > 0.9


# --- defect 6: the shipped model learns the newest slice -------------------------------------------------------
@pytest.mark.parametrize("newest_from", ["data", "feedback"])
def test_the_shipped_model_is_refit_on_the_newest_slice(tmp_path, store_root, make_spec, run_trainer, newest_from):
    """After an abrupt change, exactly the new-concept rows are the holdout: the gated model never saw
    them (its holdout score is poor), the model shipped must have learnt them."""
    history = world(2000, days_ago(60), days_ago(2), "old", seed=5, segment="north")
    changed = world(500, days_ago(1.9), days_ago(0.01), "flipped", seed=6, segment="south")
    if newest_from == "data":
        source = write_data(tmp_path, pd.concat([history, changed], ignore_index=True))
    else:
        source = write_data(tmp_path, history)
        write_feedback_loop(store_root, changed)
    spec = make_spec(source, data={"source": source, "timestampColumn": "event_time",
                                   "feedback": {"enabled": newest_from == "feedback"}},
                     model=classifier_spec("label", TREES, features=FEATURES, params={"max_iter": 60}),
                     evaluation={"metric": "accuracy", "holdoutFraction": "0.2"})
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    fresh = world(1000, NOW, NOW + dt.timedelta(days=1), "flipped", seed=7, segment="south")
    shipped = load_verified(result.summary["artifactUri"], result.summary["digest"])
    assert (shipped.predict(fresh[FEATURES]) == fresh["label"]).mean() > 0.9
    assert float(result.summary["metrics"]["accuracy"]) < 0.3  # the gated model, on the changed rows
    assert result.summary["refit"] == {"done": True, "rows": 2500}

    report = read_json(result.output_dir(spec) / "report.json")
    assert report["refit"]["done"] and report["refit"]["holdoutIncluded"] and report["refit"]["rows"] == 2500
    assert report["refit"]["gatedScore"] == report["evaluation"]["contender"]["accuracy"]
    assert "refit on all 2500 rows of the window, the 500-row holdout included" in report["refit"]["note"]
    metadata = read_json(result.output_dir(spec) / "metadata.json")
    # the ModelVersion's metrics stay the gated holdout scores
    assert metadata["evaluation"]["metrics"] == result.summary["metrics"]
    assert metadata["data"]["shippedModelRows"] == 2500 and metadata["data"]["trainingRows"] == 2000


# --- defects 6 and 7: ties, and mustBeatChampionBy unset ---------------------------------------------------------
@pytest.mark.parametrize("champion_estimator,contender_estimator,margin,verdict,words", [
    # the same model twice scores the same on the same holdout: a tie keeps the champion
    ("sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyClassifier", "0", "rejected",
     "(a tie keeps the champion)"),
    ("sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyClassifier", "0.00", "rejected",
     "(a tie keeps the champion)"),
    # the user says a tie (and up to 0.01 worse) may pass
    ("sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyClassifier", "-0.01", "passed",
     "the gain must be more than -0.01"),
    # unset: the champion is scored and reported, not compared, as the CRD says
    (LOGISTIC, "sklearn.dummy.DummyClassifier", None, "passed", "not compared: mustBeatChampionBy is unset"),
    (LOGISTIC, "sklearn.dummy.DummyClassifier", "0", "rejected", "does not beat champion churn-v1"),
    ("sklearn.dummy.DummyClassifier", LOGISTIC, "0", "passed", "beats champion churn-v1"),
])
def test_the_champion_rule(tmp_path, make_spec, run_trainer, champion_estimator, contender_estimator, margin,
                           verdict, words):
    source = write_data(tmp_path, world(1500, days_ago(30), days_ago(1), "old", seed=8))
    data = {"source": source, "timestampColumn": "event_time"}
    first = run_trainer(make_spec(source, version=1, data=data, evaluation={"metric": "accuracy"},
                                  model=classifier_spec("label", champion_estimator, features=FEATURES)))
    assert first.code == 0, first.summary
    evaluation: dict[str, Any] = {"metric": "accuracy"}
    if margin is not None:
        evaluation["mustBeatChampionBy"] = margin
    spec = make_spec(source, version=2, data=data, evaluation=evaluation, champion=champion_of(first.summary),
                     model=classifier_spec("label", contender_estimator, features=FEATURES))
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["verdict"] == verdict and words in result.summary["reason"], result.summary["reason"]
    assert result.summary["championMetrics"] is not None  # scored on the same holdout in every case
    assert result.summary["refit"]["done"] is (verdict == "passed")


# --- deduplication ---------------------------------------------------------------------------------------------
def _feedback_frame(ids: list[str], x1: list[float], stamps: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"x1": x1, "segment": ["north"] * len(ids), "label": [1] * len(ids),
                         "event_time": pd.to_datetime(stamps, utc=True), data_mod.FEEDBACK_ID_COLUMN: ids})


DATA = pd.DataFrame({"x1": [1.0, 2.0, 3.0], "segment": ["north", "north", "south"], "label": [0, 1, 1],
                     "event_time": pd.to_datetime(["2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z",
                                                   "2026-06-03T00:00:00Z"], utc=True),
                     "prediction_id": ["a", "b", None]})


@pytest.mark.parametrize("feedback,id_column,timestamp_column,kept_ids,key", [
    # by prediction id: "a" and "b" were exported to the data; "c" was not
    (_feedback_frame(["a", "b", "c"], [9.0, 9.0, 9.0], ["2026-06-05"] * 3), "prediction_id", "event_time", ["c"],
     "prediction id (data column prediction_id)"),
    # by features + time: the first equals a data row (2 and 2.0 are the same number), the others differ in
    # one feature or in the time
    (_feedback_frame(["a", "b", "c"], [2, 2.0, 3.0], ["2026-06-02T00:00:00Z", "2026-06-02T00:00:01Z",
                                                      "2026-06-03T00:00:00Z"]),
     None, "event_time", ["b", "c"], "features + event_time"),
    # no id column and no time: equal features are not the same event, nothing is dropped
    (_feedback_frame(["a"], [2.0], ["2026-06-02"]), None, None, ["a"], "none"),
])
def test_feedback_rows_already_in_the_data_count_once(feedback, id_column, timestamp_column, kept_ids, key):
    kept, dropped, used = data_mod.dedupe_against_data(feedback, DATA, ["x1", "segment"], timestamp_column, id_column)
    assert list(kept[data_mod.FEEDBACK_ID_COLUMN]) == kept_ids
    assert dropped == len(feedback) - len(kept_ids) and used == key


def test_an_unknown_id_column_is_refused_by_name():
    with pytest.raises(data_mod.DataError, match="spec.data.feedback.idColumn 'order_id' is not a column"):
        data_mod.dedupe_against_data(_feedback_frame(["a"], [1.0], ["2026-06-02"]), DATA, ["x1"], "event_time",
                                     "order_id")


def test_a_labelled_production_row_exported_to_the_data_counts_once(tmp_path, store_root, make_spec, run_trainer):
    traffic = world(600, days_ago(3), days_ago(0.01), "old", seed=9)
    history = world(1000, days_ago(30), days_ago(4), "old", seed=10)
    # an export job copied the first 200 labelled predictions into the data, time and features as logged
    source = write_data(tmp_path, pd.concat([history, traffic.head(200)], ignore_index=True))
    write_feedback_loop(store_root, traffic)
    spec = make_spec(source, data={"source": source, "timestampColumn": "event_time", "feedback": {"enabled": True}},
                     model=classifier_spec("label", LOGISTIC, features=FEATURES))
    result = run_trainer(spec)
    assert result.code == 0, result.summary
    assert result.summary["rows"] == 1600 and result.summary["feedbackRows"] == 400
    report = read_json(result.output_dir(spec) / "report.json")
    assert report["feedback"]["alreadyInData"] == 200 and report["feedback"]["dedupeKey"] == "features + event_time"


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("labels,expected", [
    # the first label counts, as on the model server (a repeat is answered "duplicate" there)
    ([("2026-06-29T12:00:00Z", 0), ("2026-06-29T13:00:00Z", 1)], 0),
    ([("2026-06-29T13:00:00Z", 1), ("2026-06-29T12:00:00Z", 0)], 0),  # earliest by time, whatever the file order
    ([("2026-06-29T12:00:00Z", 1)], 1),
])
def test_one_label_per_prediction_the_first(store_root, labels, expected):
    base = store_root / "ml" / "churn"
    _write_lines(base / "predictions" / "churn-v1" / "d" / "pod-a-1.jsonl",
                 [{"id": "p1", "ts": "2026-06-29T11:00:00Z", "features": {"x1": 1.0}, "prediction": 1}])
    _write_lines(base / "feedback" / "d" / "pod-a-1.jsonl", [{"id": "p1", "ts": ts, "label": v} for ts, v in labels])
    merged = data_mod.merge_feedback(f"file://{store_root}", "ml", "churn", "label", ["x1"], "event_time")
    assert list(merged.rows["label"]) == [expected]
    assert merged.duplicate_labels == len(labels) - 1
    assert merged.rows["event_time"].iloc[0] == pd.Timestamp("2026-06-29T11:00:00Z")  # the prediction's time


# --- one source of defaults: the trainer's parser and the API model agree --------------------------------------
MINIMAL = {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                     "target": "y"}, "data": {"source": "file:///d/"}}


@pytest.mark.parametrize("trainer_field,api_value", [
    ("holdout_fraction", lambda s: float(s.evaluation.holdout_fraction)),
    ("must_beat_champion_by", lambda s: s.evaluation.must_beat_champion_by),
    ("min_score", lambda s: s.evaluation.min_score),
    ("metric", lambda s: s.evaluation_metric()),
    ("min_rows", lambda s: s.validation.min_rows),
    ("schema", lambda s: s.validation.schema_),
    ("feedback", lambda s: s.data.feedback.enabled),
    ("feedback_id_column", lambda s: s.data.feedback.id_column),
    ("tuning_trials", lambda s: s.tuning.trials),
    ("tuning_cv", lambda s: s.tuning.cv),
    ("seed", lambda s: s.seed),
])
def test_unset_fields_mean_what_the_api_model_says(trainer_field, api_value):
    # the API server fills an object's defaults only when the object is present: give every section
    spec = {**MINIMAL, "data": {**MINIMAL["data"], "feedback": {}}, "evaluation": {}, "validation": {}, "tuning": {}}
    assert getattr(parse_pipeline_spec(spec), trainer_field) == api_value(TrainingPipelineSpec.model_validate(spec))


# --- in process, as `noria backtest` calls it --------------------------------------------------------------
def test_run_document_returns_what_the_job_reports(tmp_path, make_spec):
    import io

    from noria_trainer.run import run_document

    frame = world(400, days_ago(10), days_ago(1), "old", seed=11)
    source = write_data(tmp_path, frame)
    spec = make_spec(source, data={"source": source, "timestampColumn": "event_time", "window": {"last": "5d"}},
                     model=classifier_spec("label", LOGISTIC, features=FEATURES), evaluation={"metric": "accuracy"})
    progress, log = io.StringIO(), tmp_path / "termination-log"
    code, summary = run_document(spec, stream=progress, termination_log=str(log))
    assert code == 0 and summary["status"] == "succeeded"
    assert summary == json.loads(log.read_text()) == json.loads(progress.getvalue().splitlines()[-1])
    assert summary["rows"] == int((frame["event_time"] >= pd.Timestamp(days_ago(5))).sum())  # 5 days before `now`
    code, failed = run_document({**spec, "version": "one"}, stream=io.StringIO())
    assert code == 2 and failed["failedStage"] == "spec"
    assert failed["reason"].startswith("version: must be a valid integer"), failed["reason"]
