"""Every ``resources`` field of the API reaches the container it names, requests and limits both, read
through the same spec reader the operator uses: a Rollout's ``spec.resources`` the model-server
container, a TrainingPipeline's ``spec.resources`` the trainer Job's container, and
``spec.compute.dask.{workerResources,schedulerResources}`` the Dask worker and scheduler containers."""

from __future__ import annotations

from typing import Any

from noria.deployment import objects
from noria.deployment.spec import parse_rollout_spec
from noria.settings import Settings
from noria.training import dask_cluster, runs
from noria.training.spec import read_pipeline_spec

REF = objects.RolloutRef(name="churn", namespace="ml", uid="u1")
MV = {"metadata": {"name": "churn-v7"},
      "spec": {"pipeline": "churn", "version": 7,
               "artifact": {"uri": "file:///s/model.skops", "digest": "sha256:" + "a" * 64}}}
SERVER = {"requests": {"cpu": "250m", "memory": "300Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
TRAINER = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
WORKER = {"requests": {"cpu": "1", "memory": "768Mi"}, "limits": {"memory": "768Mi"}}
SCHEDULER = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
OWNER = {"uid": "u-1", "name": "churn", "kind": "TrainingPipeline", "apiVersion": "noria.dev/v1alpha1"}
RUN_SETTINGS = runs.RunSettings(trainer_image="img:1", store_root="file:///var/lib/noria/store",
                                store_pvc="noria-store", store_mount_path="/var/lib/noria/store")


def _server(spec: dict[str, Any]) -> dict[str, Any]:
    read = parse_rollout_spec(spec)
    dep = objects.version_deployment(REF, MV, read.replicas, Settings(), read.resources)
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_a_rollouts_resources_are_the_model_servers() -> None:
    base = {"source": {"pipeline": "churn"}, "strategy": {"immediate": {}}}
    assert _server({**base, "resources": SERVER})["resources"] == SERVER
    assert _server(base)["resources"] == objects.DEFAULT_SERVER_RESOURCES  # unset: the default, not nothing


def _pipeline(**spec: Any) -> dict[str, Any]:
    raw = {"model": {"task": "classification", "estimator": "xgboost.XGBClassifier", "target": "y"},
           "data": {"source": "file:///var/lib/noria/store/ml/d/"}, **spec}
    return {"metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"}, "spec": read_pipeline_spec(raw)}


def test_a_pipelines_resources_are_the_trainers() -> None:
    tp = _pipeline(resources=TRAINER)
    job = runs.job(tp, OWNER, runs.run_spec(tp, 3, "manual", None, RUN_SETTINGS), "2026-12-03T08:00:00Z",
                   RUN_SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == TRAINER


def test_the_dask_worker_and_scheduler_resources_are_their_pods() -> None:
    tp = _pipeline(compute={"engine": "dask", "dask": {"workers": 2, "workerResources": WORKER,
                                                       "schedulerResources": SCHEDULER}})
    cluster = dask_cluster.dask_cluster(tp, OWNER, "churn-r3", "img:1", "IfNotPresent")
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert worker["resources"] == WORKER
    assert scheduler["resources"] == SCHEDULER
