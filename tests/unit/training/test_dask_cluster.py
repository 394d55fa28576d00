"""A dask run's cluster: the DaskCluster object, how the cluster is judged, and the run's passes over it
(docs/training-dask.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from noria import conditions as c
from noria.training import dask_cluster as dc
from noria.training import pipeline, runs

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = runs.RunSettings(
    trainer_image="noria-trainer:1",
    store_root="file:///store",
    store_pvc="pvc",
    store_mount_path="/var/lib/noria/store",
)
WORKER = {"limits": {"memory": "512Mi", "cpu": "1"}}


def dask_pipeline(workers: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "noria.dev/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "big", "namespace": "ml", "uid": "u1", "generation": 1, "annotations": {}},
        "spec": {
            "model": {"task": "classification", "estimator": "xgboost.XGBClassifier", "target": "y"},
            "data": {"source": "file:///store/d/"},
            "triggers": {},
            "compute": {"engine": "dask", "dask": {"workers": workers, "workerResources": WORKER}},
        },
    }


@pytest.mark.parametrize("compute", [{"engine": "dask"}, {"engine": "dask", "dask": {}},
                                     {"engine": "dask", "dask": {"workerResources": WORKER}}])
def test_a_spec_without_workers_gets_the_api_default(compute) -> None:
    from noria.api.training_pipeline import DaskCompute
    from noria.training.spec import read_pipeline_spec

    tp = dask_pipeline()
    tp["spec"]["compute"] = compute
    owner = {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "name": "big", "uid": "u1"}
    for spec in (tp["spec"], read_pipeline_spec(tp["spec"])):  # as stored, and as the pass reads it
        obj = dc.dask_cluster({**tp, "spec": spec}, owner, "big-r1", "noria-trainer:1", "IfNotPresent")
        assert obj["spec"]["worker"]["replicas"] == DaskCompute().workers


def scheduler_pod(uid: str = "s1", ready: bool = True, restarts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"big-r1-scheduler-{uid}"},
        "status": {
            "containerStatuses": [{"name": dc.SCHEDULER_CONTAINER, "ready": ready, "restartCount": restarts}]
        },
    }


CLUSTER = {"metadata": {"name": "big-r1"}, "status": {"phase": "Running"}}
SERVICE = {"spec": {"clusterIP": "10.0.0.7"}}


def test_the_cluster_runs_the_trainer_image_restricted_without_a_token_and_sized_by_the_spec() -> None:
    owner = {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "name": "big", "uid": "u1"}
    obj = dc.dask_cluster(dask_pipeline(workers=3), owner, "big-r1", "noria-trainer:1", "IfNotPresent")
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) == (
        "kubernetes.dask.org/v1",
        "DaskCluster",
        "big-r1",
    )
    assert obj["metadata"]["ownerReferences"] == [owner]
    assert obj["metadata"]["labels"]["noria.dev/run"] == "big-r1"
    worker, scheduler = obj["spec"]["worker"], obj["spec"]["scheduler"]
    assert worker["replicas"] == 3
    for pod in (worker["spec"], scheduler["spec"]):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]
        (container,) = pod["containers"]
        assert container["image"] == "noria-trainer:1"
        assert container["command"][:2] == ["python", "-m"]  # explicit: no foreign image, no entrypoint guess
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        }
    (wc,) = worker["spec"]["containers"]
    assert wc["resources"] == WORKER
    # One process per pod whose Dask memory limit is the container's, spilling to the pod's /tmp.
    assert "--no-nanny" in wc["command"]
    assert {"name": "MALLOC_TRIM_THRESHOLD_", "value": "65536"} in wc["env"]  # what a nanny would have set
    assert wc["command"][wc["command"].index("--memory-limit") + 1] == "512Mi"
    assert "tcp://$(BIG_R1_SCHEDULER_SERVICE_HOST):$(BIG_R1_SCHEDULER_SERVICE_PORT_TCP_COMM)" in wc["command"]
    assert worker["spec"]["enableServiceLinks"] is True  # the scheduler address comes from them
    assert scheduler["service"]["ports"][0]["name"] == "tcp-comm"
    assert scheduler["service"]["selector"] == {
        "dask.org/cluster-name": "big-r1",
        "dask.org/component": "scheduler",
    }


@pytest.mark.parametrize(
    ("cluster", "service", "pods", "recorded", "waited", "expected"),
    [
        (None, None, [], None, 10, dc.MISSING),
        (None, None, [], None, 400, dc.NOT_READY),
        (CLUSTER, None, [scheduler_pod()], None, 10, dc.STARTING),
        (CLUSTER, SERVICE, [scheduler_pod(ready=False)], None, 10, dc.STARTING),
        (CLUSTER, SERVICE, [scheduler_pod(ready=False)], None, 400, dc.NOT_READY),
        ({**CLUSTER, "status": {"phase": "Error"}}, None, [], None, 10, dc.NOT_READY),
        (CLUSTER, SERVICE, [scheduler_pod()], None, 10, dc.READY),
        (CLUSTER, SERVICE, [scheduler_pod()], "s1", 0, dc.READY),
        (CLUSTER, SERVICE, [scheduler_pod("s2")], "s1", 0, dc.LOST),
        (CLUSTER, SERVICE, [scheduler_pod(restarts=1)], "s1", 0, dc.LOST),
        (None, None, [], "s1", 0, dc.LOST),
    ],
    ids=[
        "not-created-yet",
        "never-created",
        "no-service-address",
        "scheduler-not-ready",
        "start-timed-out",
        "operator-refused",
        "ready",
        "job-running-same-scheduler",
        "scheduler-replaced",
        "scheduler-restarted",
        "cluster-deleted",
    ],
)
def test_judge(
    cluster: Any, service: Any, pods: list, recorded: str | None, waited: float, expected: str
) -> None:
    assert dc.judge(dc.observe(cluster, service, pods), recorded, waited).state == expected


def test_only_the_current_runs_cluster_is_kept() -> None:
    assert dc.clusters_to_delete(["big-r2", "big-r1", "big-r3"], "big-r3") == ["big-r1", "big-r2"]
    assert dc.clusters_to_delete(["big-r1"], None) == ["big-r1"]


# --- the run's passes -----------------------------------------------------------------------------------
class DaskWorld:
    """The pipeline plus what the cluster holds; ``step`` runs one pass and applies its status patch."""

    def __init__(self) -> None:
        self.tp = dask_pipeline()
        self.cluster: dict | None = None
        self.service: dict | None = None
        self.pods: list[dict] = []
        self.job: runs.JobOutcome | None = None
        self.clusters: list[str] = []

    def step(self, seconds: float) -> pipeline.Plan:
        current = (self.tp.get("status") or {}).get("currentRun")
        plan = pipeline.decide(
            pipeline.Observation(
                pipeline=self.tp,
                now=T0 + dt.timedelta(seconds=seconds),
                run_settings=SETTINGS,
                job=(self.job or runs.JobOutcome(runs.MISSING)) if current else None,
                dask_cluster=dc.observe(self.cluster, self.service, self.pods) if current else None,
                dask_cluster_names=list(self.clusters),
                job_names=["big-r1"] if self.job else [],
            )
        )
        if plan.status:
            self.tp["status"] = pipeline.apply_merge_patch(self.tp.get("status") or {}, plan.status)
        return plan


def test_a_dask_run_creates_its_cluster_then_its_job_with_the_scheduler_address_then_deletes_the_cluster() -> (
    None
):
    world = DaskWorld()
    plan = world.step(0)
    assert plan.run_objects is None  # no Job before the scheduler is ready
    assert plan.dask_objects is not None
    cm, cluster = plan.dask_objects
    assert (cm["kind"], cluster["kind"], cluster["metadata"]["name"]) == (
        "ConfigMap",
        "DaskCluster",
        "big-r1",
    )
    assert plan.requeue_after == pipeline.DASK_RECHECK_SECONDS
    world.cluster, world.clusters = cluster, ["big-r1"]
    assert world.step(5).run_objects is None  # created, the scheduler not ready yet
    world.service, world.pods = SERVICE, [scheduler_pod()]
    plan = world.step(10)
    assert plan.run_objects is not None
    job = plan.run_objects[1]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": dc.SCHEDULER_ENV, "value": "tcp://10.0.0.7:8786"} in env
    assert world.tp["status"]["currentRun"]["daskScheduler"] == "s1"
    assert plan.delete_dask_clusters == []  # the current run's cluster stays
    world.job = runs.JobOutcome(runs.RUNNING)
    assert world.step(20).delete_dask_clusters == []
    world.job = runs.JobOutcome(
        runs.FAILED, reason="BackoffLimitExceeded", message="x", finished_at="2026-11-23T12:01:00Z"
    )
    plan = world.step(80)
    assert world.tp["status"]["lastRuns"][0]["outcome"] == pipeline.OUTCOME_FAILED
    assert plan.delete_dask_clusters == ["big-r1"]  # the run ended: its cluster goes


def test_a_dask_run_whose_scheduler_never_gets_ready_fails_with_a_reason() -> None:
    world = DaskWorld()
    world.cluster, world.clusters = world.step(0).dask_objects[1], ["big-r1"]  # type: ignore[index]
    world.pods = [scheduler_pod(ready=False)]
    world.step(dc.CLUSTER_START_TIMEOUT_SECONDS - 1)
    assert world.tp["status"].get("currentRun")  # still starting
    plan = world.step(dc.CLUSTER_START_TIMEOUT_SECONDS + 1)
    last = world.tp["status"]["lastRuns"][0]
    assert (last["outcome"], last["reason"]) == (pipeline.OUTCOME_FAILED, c.DASK_CLUSTER_NOT_READY)
    assert "Dask Kubernetes operator" in last["message"]
    assert plan.delete_dask_clusters == ["big-r1"]
    assert c.get_condition(world.tp["status"]["conditions"], c.DEGRADED)["reason"] == c.DASK_CLUSTER_NOT_READY


def test_a_dask_run_whose_scheduler_is_replaced_under_its_job_fails_and_stops_the_job() -> None:
    world = DaskWorld()
    world.cluster, world.clusters = world.step(0).dask_objects[1], ["big-r1"]  # type: ignore[index]
    world.service, world.pods = SERVICE, [scheduler_pod("s1")]
    assert world.step(5).run_objects is not None
    world.job = runs.JobOutcome(runs.RUNNING)
    world.pods = [scheduler_pod("s2")]  # its Deployment made a new, empty scheduler
    plan = world.step(30)
    last = world.tp["status"]["lastRuns"][0]
    assert (last["outcome"], last["reason"]) == (pipeline.OUTCOME_FAILED, c.DASK_CLUSTER_LOST)
    assert "big-r1" in plan.prune_jobs
    assert plan.delete_dask_clusters == ["big-r1"]


def test_a_single_run_makes_no_cluster() -> None:
    tp = dask_pipeline()
    tp["spec"]["compute"] = {"engine": "single"}
    plan = pipeline.decide(pipeline.Observation(pipeline=tp, now=T0, run_settings=SETTINGS))
    assert plan.run_objects is not None and plan.dask_objects is None
    env = plan.run_objects[1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert dc.SCHEDULER_ENV not in {e["name"] for e in env}


def test_a_job_that_failed_because_its_scheduler_was_replaced_fails_the_run_as_a_lost_cluster() -> None:
    world = DaskWorld()
    world.cluster, world.clusters = world.step(0).dask_objects[1], ["big-r1"]  # type: ignore[index]
    world.service, world.pods = SERVICE, [scheduler_pod("s1")]
    world.step(5)
    world.pods = [scheduler_pod("s2")]
    world.job = runs.JobOutcome(runs.FAILED, reason="PodFailurePolicy", finished_at="2026-11-23T12:00:20Z")
    plan = world.step(30)
    last = world.tp["status"]["lastRuns"][0]
    assert (last["outcome"], last["reason"]) == (pipeline.OUTCOME_FAILED, c.DASK_CLUSTER_LOST)
    assert "big-r1" not in plan.prune_jobs  # a finished Job stays in the history
