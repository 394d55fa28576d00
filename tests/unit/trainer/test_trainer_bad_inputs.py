"""Every bad input ends with a clear reason, a non-zero exit code and nothing under outputUri."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from noria.runspec import read_summary
from noria_trainer.run import EXIT_CHAMPION, EXIT_DATA, EXIT_OUTPUT, EXIT_SPEC, EXIT_VALIDATION
from trainer_datasets import classifier_spec, drifting_frame, files_under, sklearn_frame


def assert_failed(result, spec, exit_code: int, stage: str, *reason_parts: str) -> None:
    summary = result.summary
    assert result.code == exit_code, summary
    assert summary["status"] == "failed" and summary["failedStage"] == stage
    for part in reason_parts:
        assert part in summary["reason"], summary["reason"]
    # a FailureSummary: no artifact keys, the exit code, and the operator's reader takes it
    assert "digest" not in summary and "verdict" not in summary and summary["exitCode"] == exit_code
    assert read_summary(summary)["failedStage"] == stage
    output = result.output_dir(spec)
    assert files_under(output) == [] and not output.exists()
    assert not [p for p in output.parent.glob(".*")] if output.parent.exists() else True, "temporary files left"
    assert result.termination_log.read_text()  # the operator still learns why


def test_missing_column(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", features=["mean_radius", "tenure"]))
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation", "missing column(s) 'tenure'")


def test_missing_target_column(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("churned"))
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation", "missing column(s) 'churned'")


def test_empty_file(tmp_path, make_spec, run_trainer):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    spec = make_spec(f"file://{empty}", model=classifier_spec("target"))
    assert_failed(run_trainer(spec), spec, EXIT_DATA, "data", f"data file {empty} is empty")


def test_header_only_csv_has_no_rows(tmp_path, make_spec, run_trainer):
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,target\n")
    spec = make_spec(f"file://{header_only}", model=classifier_spec("target"))
    assert_failed(run_trainer(spec), spec, EXIT_DATA, "data", "has no rows")


def test_all_null_target(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("breast_cancer")
    frame["target"] = np.nan
    path = tmp_path / "nulls.parquet"
    frame.to_parquet(path)
    spec = make_spec(f"file://{path}", model=classifier_spec("target"))
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation",
                  "target column 'target' is null in all 569 rows")


def test_corrupt_parquet(tmp_path, make_spec, run_trainer):
    good = tmp_path / "good.parquet"
    sklearn_frame("wine").to_parquet(good)
    corrupt = tmp_path / "corrupt.parquet"
    data = good.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 64)
    spec = make_spec(f"file://{corrupt}", model=classifier_spec("target"))
    assert_failed(run_trainer(spec), spec, EXIT_DATA, "data", f"cannot read {corrupt} as parquet")


def test_wrong_types_against_the_declared_schema(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("breast_cancer")
    frame["mean_radius"] = frame["mean_radius"].astype(str)
    frame.loc[3, "mean_radius"] = "twelve"
    path = tmp_path / "typed.csv"
    frame.to_csv(path, index=False)
    spec = make_spec(f"file://{path}", model=classifier_spec("target"),
                     validation={"columns": {"mean_radius": "numeric"}})
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation",
                  "wrong type(s)", "'mean_radius' must be numeric", "'twelve'")


def test_non_numeric_regression_target_is_a_wrong_type(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("diabetes")
    frame["target"] = np.where(frame["target"] > 140, "high", "low")
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    spec = make_spec(f"file://{path}", model={"task": "regression", "estimator": "sklearn.linear_model.Ridge",
                                              "target": "target"})
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation", "regression target 'target' is not numeric")


def test_window_with_no_rows(tmp_path, make_spec, run_trainer):
    frame = drifting_frame(days=60)
    frame["event_time"] = frame["event_time"] - np.timedelta64(400, "D")  # all data is over a year old
    path = tmp_path / "old.parquet"
    frame.to_parquet(path)
    spec = make_spec(f"file://{path}", model=classifier_spec("label"),
                     data={"source": f"file://{path}", "timestampColumn": "event_time", "window": {"last": "30d"}})
    assert_failed(run_trainer(spec), spec, EXIT_DATA, "data", "window last 30d", "has no rows",
                  "the newest row is from 2025-")


def test_too_few_rows(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target"), validation={"minRows": 1000})
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation", "569 usable row(s)", "minRows 1000")


def test_too_many_missing_values(tmp_path, make_spec, run_trainer):
    frame = sklearn_frame("breast_cancer")
    frame.loc[frame.index[:100], "mean_texture"] = np.nan
    path = tmp_path / "gaps.parquet"
    frame.to_parquet(path)
    spec = make_spec(f"file://{path}", model=classifier_spec("target"), validation={"maxMissingFraction": "0.05"})
    assert_failed(run_trainer(spec), spec, EXIT_VALIDATION, "validation", "'mean_texture' 0.176")


def test_unknown_estimator(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", "sklearn.ensemble.MagicForest"))
    assert_failed(run_trainer(spec), spec, EXIT_SPEC, "spec", "'sklearn.ensemble.MagicForest' is not on the allow-list")


@pytest.mark.parametrize("path", ["os.system", "builtins.eval", "subprocess.Popen", "sklearn.utils._testing.raises"])
def test_disallowed_import_path_is_refused_before_import(cancer_csv, make_spec, run_trainer, path, monkeypatch):
    import importlib

    imported: list[str] = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", path))
    assert_failed(run_trainer(spec), spec, EXIT_SPEC, "spec", f"{path!r} is not on the allow-list",
                  "refused before import")
    assert imported == []


def test_estimator_of_the_wrong_task(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", "sklearn.linear_model.Ridge"))
    assert_failed(run_trainer(spec), spec, EXIT_SPEC, "spec", "is not a classifier")


def test_unknown_estimator_parameter(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", params={"max_iterations": 5}))
    assert_failed(run_trainer(spec), spec, EXIT_SPEC, "spec", "has no parameter(s) max_iterations")


@pytest.mark.parametrize("field,value,words", [
    ("minScore", "seventy", 'spec.evaluation.minScore: must be an integer or a decimal string such as "0.05"'),
    ("holdoutFraction", "1.5", "spec.evaluation.holdoutFraction: must be a fraction between 0 and 1"),
    ("holdoutFraction", 0.25, 'spec.evaluation.holdoutFraction: 0.25 is a float: write it as a decimal string'),
    ("metric", "rmse", "spec.evaluation.metric: metric does not fit the task: classification takes accuracy"),
])
def test_malformed_thresholds_name_the_field(cancer_csv, make_spec, run_trainer, field, value, words):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target"), evaluation={field: value})
    assert_failed(run_trainer(spec), spec, EXIT_SPEC, "spec", words)


def test_champion_whose_digest_does_not_match(tmp_path, cancer_csv, make_spec, run_trainer):
    first_spec = make_spec(f"file://{cancer_csv}", version=1,
                           model=classifier_spec("target", "sklearn.dummy.DummyClassifier"))
    first = run_trainer(first_spec)
    assert first.code == 0
    tampered = tmp_path / "store" / "tampered.skops"  # inside the store: the loader refuses paths outside it
    shutil.copy(first.output_dir(first_spec) / "model.skops", tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    spec = make_spec(f"file://{cancer_csv}", version=2, model=classifier_spec("target"),
                     champion={"name": "churn-v1", "artifactUri": f"file://{tampered}",
                               "digest": first.summary["digest"], "profileUri": first.summary["profileUri"]})
    assert_failed(run_trainer(spec), spec, EXIT_CHAMPION, "champion", "champion churn-v1", "digest mismatch",
                  first.summary["digest"])


def test_output_location_not_writable(tmp_path, cancer_csv, make_spec, run_trainer):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's pipeline folder should be")
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target"))
    spec["outputUri"] = f"file://{blocker}/v1"
    result = run_trainer(spec)
    assert_failed(result, spec, EXIT_OUTPUT, "output", f"output file://{blocker}/v1 is not writable")
    assert blocker.read_text().startswith("a file")


def test_existing_version_is_never_overwritten(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", model=classifier_spec("target", "sklearn.dummy.DummyClassifier"))
    output = Path(spec["outputUri"].removeprefix("file://"))
    output.mkdir(parents=True)
    (output / "model.skops").write_bytes(b"the real v1")
    result = run_trainer(spec)
    assert result.code == EXIT_OUTPUT and "exists already" in result.summary["reason"]
    assert (output / "model.skops").read_bytes() == b"the real v1"


def test_unreadable_spec_file(tmp_path):
    import io

    from noria_trainer.run import run_from_file

    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    out = io.StringIO()
    assert run_from_file(str(bad), None, stream=out) == EXIT_SPEC
    assert "is not JSON" in out.getvalue().splitlines()[-1]
