"""The trainer refuses to read data its namespace may not read (defence in depth behind the
operator's check: the run spec is a ConfigMap in the namespace). In process, through the same entry
the Job runs: a refused run fails in stage "data" with the reason naming spec.data.source, writes no
model, and a symlinked directory does not lead out of the namespace's (or datasets/) folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from noria_trainer.run import EXIT_DATA, EXIT_SPEC
from trainer_datasets import classifier_spec, files_under, sklearn_frame


@pytest.fixture
def store(store_root: Path) -> Path:
    """A store with ml's data and logged production features, and an empty namespace ml2."""
    (store_root / "ml2").mkdir()
    ml_data = store_root / "ml" / "churn" / "exports"
    ml_data.mkdir(parents=True)
    sklearn_frame("breast_cancer").to_csv(ml_data / "cancer.csv", index=False)
    shared = store_root / "datasets" / "cancer"
    shared.mkdir(parents=True)
    sklearn_frame("breast_cancer").to_csv(shared / "cancer.csv", index=False)
    return store_root


def spec_in(make_spec, namespace: str, source: str, **extra: Any) -> dict[str, Any]:
    """A run spec of a pipeline in ``namespace``, with only the store's own scope (no trusted prefix)."""
    spec = make_spec(source, model=classifier_spec("target", "sklearn.linear_model.LogisticRegression"), **extra)
    spec.pop("trustedDataPrefixes")
    spec["namespace"] = namespace
    spec["outputUri"] = spec["outputUri"].replace("/ml/", f"/{namespace}/")
    return spec


def assert_refused(result, spec: dict[str, Any], *reason_parts: str) -> None:
    summary = result.summary
    assert result.code == EXIT_DATA, summary
    assert summary["status"] == "failed" and summary["failedStage"] == "data", summary
    for part in reason_parts:
        assert part in summary["reason"], summary["reason"]
    assert "digest" not in summary  # a FailureSummary names no artifact
    output = result.output_dir(spec)
    assert files_under(output) == [] and not output.exists()
    assert json.loads(result.termination_log.read_text())["failedStage"] == "data"


def test_shared_datasets_and_own_namespace_are_read(store: Path, make_spec, run_trainer) -> None:
    """The control: the rule refuses only what it must."""
    for n, source in enumerate([f"file://{store}/datasets/cancer/", f"file://{store}/datasets/*/cancer.csv"], 1):
        spec = spec_in(make_spec, "ml2", source, version=n)
        result = run_trainer(spec)
        assert result.code == 0, result.summary
    spec = spec_in(make_spec, "ml", f"file://{store}/ml/churn/exports/", version=3)
    assert run_trainer(spec).code == 0


@pytest.mark.parametrize(("source", "reason"), [
    ("{store}/ml/churn/exports/", "outside namespace ml2's store"),
    ("{store}/ml/churn/predictions/", "outside namespace ml2's store"),
    ("{store}/*/churn/exports/", "outside namespace ml2's store"),
    ("/etc/", "outside namespace ml2's store"),
])
def test_a_source_outside_the_namespace_is_refused(store: Path, make_spec, run_trainer, source: str,
                                                   reason: str) -> None:
    spec = spec_in(make_spec, "ml2", "file://" + source.format(store=store))
    assert_refused(run_trainer(spec), spec, "spec.data.source", reason)


def test_a_dot_dot_source_is_refused_as_a_malformed_spec(store: Path, make_spec, run_trainer) -> None:
    """The API model (the CRD's rule) refuses '..' in spec.data.source before any scope is judged,
    so the run fails in stage "spec" (exit 2, never retried), naming the field."""
    spec = spec_in(make_spec, "ml2", f"file://{store}/ml2/../ml/churn/exports/")
    result = run_trainer(spec)
    assert result.code == EXIT_SPEC and result.summary["failedStage"] == "spec", result.summary
    assert "spec.data.source: must not contain '.' or '..' path segments" in result.summary["reason"]
    assert files_under(result.output_dir(spec)) == []


def test_a_symlinked_directory_does_not_lead_into_another_namespace(store: Path, make_spec, run_trainer) -> None:
    os.symlink(store / "ml" / "churn" / "exports", store / "ml2" / "borrowed")
    spec = spec_in(make_spec, "ml2", f"file://{store}/ml2/borrowed/")
    assert_refused(run_trainer(spec), spec, "resolves to", str(store / "ml" / "churn" / "exports"))


def test_a_namespace_folder_that_is_a_symlink_leads_nowhere(store: Path, make_spec, run_trainer) -> None:
    os.symlink(store / "ml", store / "ml3")
    spec = spec_in(make_spec, "ml3", f"file://{store}/ml3/churn/exports/")
    assert_refused(run_trainer(spec), spec, "resolves to")


def test_a_symlinked_dataset_does_not_lead_out_of_datasets(store: Path, make_spec, run_trainer) -> None:
    os.symlink(store / "ml" / "churn" / "exports", store / "datasets" / "exports")
    spec = spec_in(make_spec, "ml2", f"file://{store}/datasets/exports/")
    assert_refused(run_trainer(spec), spec, "resolves to")


def test_symlinked_prediction_logs_of_another_namespace_are_refused(store: Path, make_spec, run_trainer) -> None:
    """The feedback loop reads the namespace's own logs; a predictions/ folder linked to ml's is refused."""
    logs = store / "ml" / "churn" / "predictions" / "churn-v1" / "2026-11-20"
    logs.mkdir(parents=True)
    (logs / "pod-000001.jsonl").write_text(json.dumps({"id": "p1", "ts": "2026-11-20T00:00:00Z",
                                                       "features": {}, "prediction": 1}) + "\n")
    (store / "ml2" / "churn").mkdir()
    os.symlink(store / "ml" / "churn" / "predictions", store / "ml2" / "churn" / "predictions")
    spec = spec_in(make_spec, "ml2", f"file://{store}/datasets/cancer/")
    spec["spec"]["data"]["feedback"] = {"enabled": True}
    assert_refused(run_trainer(spec), spec, "resolves to", "predictions")


def test_a_run_spec_without_store_root_reads_nothing(store: Path, make_spec, run_trainer) -> None:
    spec = spec_in(make_spec, "ml2", f"file://{store}/datasets/cancer/")
    spec.pop("storeRoot")
    assert_refused(run_trainer(spec), spec, "no storeRoot", "spec.data.source")


def test_a_trusted_data_prefix_is_read(store: Path, tmp_path: Path, make_spec, run_trainer) -> None:
    lake = tmp_path / "lake" / "ml2"
    lake.mkdir(parents=True)
    sklearn_frame("breast_cancer").to_csv(lake / "cancer.csv", index=False)
    spec = spec_in(make_spec, "ml2", f"file://{lake}/cancer.csv")
    assert_refused(run_trainer(spec), spec, "none configured (NORIA_TRUSTED_DATA_PREFIXES)")
    spec["trustedDataPrefixes"] = [f"file://{tmp_path}/lake/{{namespace}}/"]
    assert run_trainer(spec).code == 0
