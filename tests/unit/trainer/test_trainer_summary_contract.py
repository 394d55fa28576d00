"""The payloads between the operator and the trainer are one type, read the same on both sides
(noria.runspec): the run spec the operator writes is what the trainer reads, and the summaries the
trainer really writes (a success and failures) are what the operator's reader accepts."""

from __future__ import annotations

import json
from typing import get_type_hints

import pytest
from noria import runspec
from noria.training import results, runs
from noria_trainer.spec import SpecError, parse_run_spec
from trainer_datasets import classifier_spec

LOGISTIC = "sklearn.linear_model.LogisticRegression"
DIGEST = "sha256:" + "c" * 64


def test_a_real_success_summary_is_read_by_the_operator(cancer_csv, make_spec, run_trainer):
    spec = make_spec(f"file://{cancer_csv}", version=3, model=classifier_spec("target", LOGISTIC,
                                                                              params={"max_iter": 500}))
    result = run_trainer(spec)
    assert result.code == runspec.EXIT_OK, result.summary
    written = json.loads(result.termination_log.read_text())  # what the operator reads from the pod
    assert set(written) <= set(get_type_hints(runspec.SuccessSummary)), "a key the type does not declare"
    summary = results.check_summary(written, "churn-r3", 3)
    assert (summary.status, summary.verdict) == ("succeeded", "passed")
    assert summary.raw["digest"].startswith("sha256:") and summary.raw["refit"]["done"] is True
    assert runspec.read_summary(written) == written


@pytest.mark.parametrize(("change", "stage", "code", "run_id", "version"), [
    ({"spec": {"data": {"source": "file:///nowhere/"}}}, "spec", runspec.EXIT_SPEC, "churn-r3", 3),
    # a malformed run spec still gives a summary the operator reads: the wrongly typed names are null
    ({"runId": 7, "version": "three"}, "spec", runspec.EXIT_SPEC, None, None),
    ({"spec": {"data": {"source": "file:///nowhere/"}, "model": classifier_spec("target", LOGISTIC)}},
     "data", runspec.EXIT_DATA, "churn-r3", 3),
])
def test_a_real_failure_summary_is_read_by_the_operator(make_spec, run_trainer, change, stage, code, run_id,
                                                        version):
    spec = {**make_spec("file:///nowhere/", version=3), **change}
    result = run_trainer(spec)
    written = json.loads(result.termination_log.read_text())
    assert result.code == code and written["exitCode"] == code, written
    assert set(written) <= set(get_type_hints(runspec.FailureSummary)), "a key the type does not declare"
    summary = results.check_summary(written, "churn-r3", 3)
    assert (summary.status, summary.raw["failedStage"]) == ("failed", stage)
    assert (written["runId"], written["version"]) == (run_id, version)
    assert summary.reason == written["reason"] and summary.reason


def test_the_run_spec_the_operator_writes_is_the_one_the_trainer_reads():
    settings = runs.RunSettings(trainer_image="img:1", store_root="file:///store", store_pvc="noria-store",
                                store_mount_path="/store", trusted_data_prefixes=("file:///lake/",))
    tp = {"metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"},
          "spec": {"model": classifier_spec("y", LOGISTIC), "data": {"source": "file:///store/datasets/churn/"}}}
    champion = results.champion_ref({"metadata": {"name": "churn-v6"},
                                     "spec": {"artifact": {"uri": "file:///store/ml/churn/v6/model.skops",
                                                           "digest": DIGEST}, "profileUri": None}})
    document = runs.run_spec(tp, 7, "drift", champion, settings)
    assert set(document) <= set(get_type_hints(runspec.RunSpecDocument))
    run = parse_run_spec(json.loads(json.dumps(document)))  # through the ConfigMap as JSON
    assert (run.run_id, run.version, run.trigger, run.namespace, run.pipeline) == ("churn-r7", 7, "drift", "ml", "churn")
    assert (run.output_uri, run.store_root) == ("file:///store/ml/churn/v7", "file:///store")
    assert run.champion is not None and (run.champion.name, run.champion.digest) == ("churn-v6", DIGEST)
    assert run.trusted_data_prefixes == ("file:///lake/",)


@pytest.mark.parametrize(("change", "words"), [
    ({"runId": ""}, "runId: must have at least 1 character"),
    ({"version": 0}, "version: must be greater than or equal to 1"),
    ({"outputUri": None}, "outputUri: must be a valid string"),
    ({"champion": {"name": "c", "artifactUri": "file:///m", "digest": "md5:abc"}}, "champion.digest: must match"),
    ({"champion": {"name": "c", "digest": DIGEST}}, "champion.artifactUri: required"),
    ({"trustedDataPrefixes": "file:///lake/"}, "trustedDataPrefixes: must be a valid list"),
])
def test_a_run_spec_outside_the_type_is_refused_naming_the_field(change, words):
    raw = {"runId": "churn-r1", "namespace": "ml", "pipeline": "churn", "version": 1, "outputUri": "file:///o",
           "spec": {"model": classifier_spec("y", LOGISTIC), "data": {"source": "file:///d/"}}, **change}
    with pytest.raises(SpecError) as refused:
        parse_run_spec(raw)
    assert words in str(refused.value)
