"""A TrainingPipeline whose spec.data.source is out of scope starts no run, is Degraded naming the
field (reason DataSourceOutOfScope) with one Warning Event when it becomes so, and trains once the
source is fixed. ``decide`` stays pure: the verdict arrives in the observation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from noria import conditions as c
from noria.settings import Settings
from noria.training import pipeline, runs

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = runs.RunSettings(trainer_image="img", store_root="file:///store", store_pvc="pvc",
                            store_mount_path="/var/lib/noria/store")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def new_pipeline() -> dict[str, Any]:
    return {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline",
            "metadata": {"name": "churn", "namespace": "ml", "uid": "u1", "generation": 1, "annotations": {}},
            "spec": {"model": {"task": "classification", "estimator": "a.B", "target": "y"},
                     "data": {"source": "file:///store/d/"}, "triggers": {}}}


REFUSED = ("spec.data.source 'file:///store/ml/churn/predictions/' is outside namespace ml2's store "
           "(file:///store/ml2/), the shared file:///store/datasets/ and every trusted data prefix")


class ScopedWorld:
    """The pipeline and its Jobs; each pass carries the handler's scope verdict (``refused``)."""

    def __init__(self, tp: dict) -> None:
        self.tp = tp
        self.refused: str | None = REFUSED
        self.jobs: dict[str, runs.JobOutcome] = {}
        self.created_jobs: list[str] = []

    def step(self, now: dt.datetime, settle: float = 0.0) -> pipeline.Plan:
        current = (self.tp.get("status") or {}).get("currentRun")
        job = self.jobs.get(current["id"], runs.JobOutcome(runs.MISSING)) if current else None
        plan = pipeline.decide(pipeline.Observation(
            pipeline=self.tp, now=now, model_versions=[], job=job, job_names=list(self.jobs),
            config_map_names=list(self.jobs), run_settings=SETTINGS, settle_seconds=settle,
            data_source_refused=self.refused))
        if plan.status:
            self.tp = {**self.tp, "status": pipeline.apply_merge_patch(self.tp.get("status") or {}, plan.status)}
        if plan.run_objects:
            self.created_jobs.append(plan.run_objects[1]["metadata"]["name"])
            self.jobs[plan.run_objects[1]["metadata"]["name"]] = runs.JobOutcome(runs.RUNNING)
        return plan


def degraded(world: ScopedWorld) -> dict:
    return c.get_condition(world.tp["status"]["conditions"], c.DEGRADED) or {}


def test_out_of_scope_source_starts_no_run_and_degrades_once_then_trains_when_fixed() -> None:
    world = ScopedWorld(new_pipeline())
    first = world.step(at(0))
    assert first.run_objects is None and world.created_jobs == []
    cond = degraded(world)
    assert (cond["status"], cond["reason"]) == (c.TRUE, c.DATA_SOURCE_OUT_OF_SCOPE)
    assert cond["message"].startswith("spec.data.source ")
    assert [(e.type, e.reason) for e in first.events] == [("Warning", c.DATA_SOURCE_OUT_OF_SCOPE)]
    assert "spec.data.source" in first.events[0].message
    assert world.tp["status"]["phase"] == pipeline.PHASE_DEGRADED
    training = c.get_condition(world.tp["status"]["conditions"], c.TRAINING)
    assert training is not None and training["reason"] == c.DATA_SOURCE_OUT_OF_SCOPE
    # the initial trigger waits; later passes neither write again nor post another Event
    assert [p["trigger"] for p in world.tp["status"]["pendingTriggers"]] == ["initial"]
    again = world.step(at(60))
    assert again.events == [] and again.status is None and again.run_objects is None

    world.refused = None  # the source was fixed
    fixed = world.step(at(120))
    assert fixed.run_objects is not None and world.created_jobs == ["churn-r1"]
    cond = degraded(world)
    assert (cond["status"], cond["reason"]) == (c.FALSE, c.DATA_SOURCE_IN_SCOPE)
    assert not [e for e in fixed.events if e.reason == c.DATA_SOURCE_OUT_OF_SCOPE]


def test_another_out_of_scope_source_is_announced_again() -> None:
    world = ScopedWorld(new_pipeline())
    world.step(at(0))
    world.refused = REFUSED.replace("ml/churn/predictions/", "etc/")
    plan = world.step(at(60))
    assert [e.reason for e in plan.events] == [c.DATA_SOURCE_OUT_OF_SCOPE]
    assert world.created_jobs == []


def test_a_run_lost_after_a_crash_is_not_recreated_while_the_source_is_out_of_scope() -> None:
    world = ScopedWorld(new_pipeline())
    world.refused = None
    world.step(at(0))
    assert world.created_jobs == ["churn-r1"]
    world.jobs.clear()  # the Job vanished (deleted, or the operator died before creating it)
    world.refused = REFUSED
    plan = world.step(at(30))
    assert plan.run_objects is None


def test_handler_scope_verdict_uses_the_operators_store_root() -> None:
    """The verdict the handler passes: Settings.data_scope() on the pipeline object as stored."""
    settings = Settings(store_root="file:///store")
    tp = {**new_pipeline(), "metadata": {**new_pipeline()["metadata"], "namespace": "ml2"}}
    tp["spec"]["data"]["source"] = "file:///store/ml/churn/predictions/"
    refused = settings.data_scope().check_data_source(tp)
    assert refused is not None and refused.message.startswith(REFUSED)
    tp["spec"]["data"]["source"] = "file:///store/datasets/churn/"
    assert settings.data_scope().check_data_source(tp) is None
