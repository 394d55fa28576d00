"""A TrainingPipeline training from Feast on the real test bed: the operator starts the run on the
noria-trainer-feast image (the node agent runs it on .venv-feast), the trainer joins the example
repository's features, and the ModelVersion's lineage names the feature definitions' digest."""

from __future__ import annotations

import json

import pytest
from feast_helpers import apply_repository, feast_python
from training_helpers import POD_STORE, get, jobs, status, wait_for

pytestmark = pytest.mark.integration


def test_a_feast_pipeline_registers_a_version_with_its_feature_definitions(
        cluster, namespace, store_claim, operator_factory):  # noqa: ANN001
    feast_python()
    store_claim(namespace)
    apply_repository(cluster.store_dir / "datasets" / namespace / "feast-churn")
    repository = f"file://{POD_STORE}/datasets/{namespace}/feast-churn"
    operator_factory(namespace)
    manifest = {
        "apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "churn"},
        "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                           "params": {"max_iter": 500}, "target": "churned"},
                 "data": {"source": f"{repository}/labels.parquet", "timestampColumn": "label_time",
                          "feast": {"repository": repository, "featureService": "churn_v1"}},
                 "evaluation": {"metric": "accuracy"}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    mv = wait_for("ModelVersion churn-v1", lambda: get(cluster, namespace, "modelversion", "churn-v1"),
                  timeout=300, on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1))
    feast = mv["spec"]["lineage"]["data"]["feast"]
    assert feast["repository"] == repository and feast["featureService"] == "churn_v1"
    assert feast["definitionsDigest"].startswith("sha256:") and len(feast["definitionsDigest"]) == 71
    [job] = jobs(cluster, namespace, "churn")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].rsplit("/", 1)[-1].startswith("noria-trainer-feast:")
