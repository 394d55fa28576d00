"""A run of a pipeline with spec.data.feast trains on the Feast trainer image (Feast needs pandas<3,
docs/training-feast.md); every other run on the trainer image."""

from __future__ import annotations

from noria.settings import Settings
from noria.training import runs

OWNER = {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "name": "churn", "uid": "u-1"}


def pipeline(data: dict) -> dict:
    return {"metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"},
            "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                               "target": "churned"}, "data": data}}


def image(tp: dict, settings: runs.RunSettings) -> str:
    spec = runs.run_spec(tp, 1, "manual", None, settings)
    return runs.job(tp, OWNER, spec, "2026-12-02T12:00:00Z", settings)["spec"]["template"]["spec"]["containers"][0][
        "image"]


FEAST = {"source": "file:///store/datasets/labels/", "timestampColumn": "t",
         "feast": {"repository": "file:///store/datasets/repo", "featureService": "s"}}


def test_a_feast_pipeline_trains_on_the_feast_image_and_others_on_the_trainer_image() -> None:
    settings = runs.RunSettings(trainer_image="noria-trainer:1", store_root="file:///store", store_pvc="pvc",
                                store_mount_path="/store", trainer_feast_image="noria-trainer-feast:1")
    assert image(pipeline(FEAST), settings) == "noria-trainer-feast:1"
    assert image(pipeline({"source": "file:///store/datasets/churn/"}), settings) == "noria-trainer:1"


def test_without_a_feast_image_every_run_uses_the_trainer_image() -> None:
    settings = runs.RunSettings(trainer_image="noria-trainer:1", store_root="file:///store", store_pvc="pvc",
                                store_mount_path="/store")
    assert image(pipeline(FEAST), settings) == "noria-trainer:1"


def test_the_operator_setting_comes_from_its_environment() -> None:
    assert Settings.from_env({"NORIA_TRAINER_FEAST_IMAGE": "r/noria-trainer-feast:2"}).trainer_feast_image == (
        "r/noria-trainer-feast:2")
    assert Settings().trainer_feast_image.rsplit("/", 1)[-1].startswith("noria-trainer-feast:")


def test_the_version_lineage_names_the_repository_as_the_spec_does_and_the_digest_as_the_trainer_computed() -> None:
    from noria.api.model_version import ModelVersion
    from noria.training.results import check_summary, model_version

    digest = "sha256:" + "a" * 64
    raw = {"status": "succeeded", "runId": "churn-r1", "version": 1, "digest": "sha256:" + "b" * 64,
           "artifactUri": "file:///store/ml/churn/v1/model.skops", "verdict": "passed", "reason": "ok",
           # a test-bed trainer saw the repository at its local path: the lineage keeps the spec's
           "feast": {"repository": "file:///tmp/agent/store/datasets/repo", "featureService": "s",
                     "definitionsDigest": digest}}
    version = model_version(pipeline(FEAST), check_summary(raw, "churn-r1", 1), "manual", None)
    assert version["spec"]["lineage"]["data"]["feast"] == {
        "repository": "file:///store/datasets/repo", "featureService": "s", "definitionsDigest": digest}
    ModelVersion.model_validate(version)
    plain = model_version(pipeline({"source": "file:///store/datasets/churn/"}),
                          check_summary({k: v for k, v in raw.items() if k != "feast"}, "churn-r1", 1), "manual", None)
    assert "feast" not in plain["spec"]["lineage"]["data"]
