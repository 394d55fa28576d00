"""A retried pod of the same run (the Job made a second pod after an eviction or a kill) never
registers a second model: it finds the artifact set the first pod wrote and reports it again,
while a set written by another run is still refused (a version is never overwritten)."""

from __future__ import annotations

import json

from noria import runspec
from trainer_datasets import classifier_spec, sklearn_frame


def _spec(tmp_path, make_spec):  # noqa: ANN001, ANN202
    csv = tmp_path / "cancer.csv"
    sklearn_frame("breast_cancer").to_csv(csv, index=False)
    return make_spec(f"file://{csv}", model=classifier_spec("target", params={"max_iter": 50}),
                     evaluation={"metric": "f1", "minScore": "0.80"}, validation={"minRows": 100})


def test_second_pod_of_a_run_reports_the_set_the_first_pod_wrote(tmp_path, make_spec, run_trainer):
    spec = _spec(tmp_path, make_spec)
    first = run_trainer(spec)
    assert first.code == runspec.EXIT_OK, first.summary
    model = first.output_dir(spec) / "model.skops"
    written = model.stat().st_mtime_ns

    again = run_trainer(spec)
    assert again.code == runspec.EXIT_OK, again.summary
    assert again.summary == first.summary  # the same digest, URIs, metrics, verdict: registered once
    assert model.stat().st_mtime_ns == written  # not rewritten
    output_check = [p for p in again.progress if p["stage"] == "output-check" and p.get("event") == "done"]
    assert output_check[0]["foundWrittenBy"] == spec["runId"]
    assert not [p for p in again.progress if p["stage"] == "training"], "the second pod trained again"


def test_a_set_written_by_another_run_is_refused(tmp_path, make_spec, run_trainer):
    spec = _spec(tmp_path, make_spec)
    assert run_trainer(spec).code == runspec.EXIT_OK
    other = {**spec, "runId": "churn-r9"}  # another run aimed at the same version directory
    result = run_trainer(other)
    assert result.code == runspec.EXIT_OUTPUT
    assert "exists already" in result.summary["reason"]


def test_a_set_whose_model_no_longer_matches_its_digest_is_refused(tmp_path, make_spec, run_trainer):
    spec = _spec(tmp_path, make_spec)
    first = run_trainer(spec)
    model = first.output_dir(spec) / "model.skops"
    model.write_bytes(model.read_bytes() + b"tampered")
    result = run_trainer(spec)
    assert result.code == runspec.EXIT_OUTPUT, json.dumps(result.summary)
