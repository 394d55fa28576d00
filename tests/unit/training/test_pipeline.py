"""The pipeline's decisions over several passes: runs, coalescing, cooldown, crash safety, results.

A tiny harness applies each plan's status patch to the object, as the API server would, so a
test reads as a sequence of passes over time.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import numpy as np
import pytest
from noria import conditions as c
from noria.profile import FeatureProfile, Profile
from noria.training import pipeline, runs
from noria.training.triggers import MetricObservation

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "b" * 64
SETTINGS = runs.RunSettings(trainer_image="img", store_root="file:///store", store_pvc="pvc",
                            store_mount_path="/var/lib/noria/store")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def new_pipeline(triggers: dict | None = None, **spec: Any) -> dict:
    return {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline",
            "metadata": {"name": "churn", "namespace": "ml", "uid": "u1", "generation": 1, "annotations": {}},
            "spec": {"model": {"task": "classification", "estimator": "a.B", "target": "y"},
                     "data": {"source": "file:///store/d/"}, "triggers": triggers or {}, **spec}}


class World:
    """The pipeline object plus what the cluster holds; ``step`` runs one pass."""

    def __init__(self, tp: dict) -> None:
        self.tp = tp
        self.mvs: list[dict] = []
        self.jobs: dict[str, runs.JobOutcome] = {}
        self.created_jobs: list[str] = []
        self.drift: MetricObservation | None = None
        self.performance: MetricObservation | None = None
        self.profile: Profile | None = None
        self.plans: list[pipeline.Plan] = []

    def step(self, now: dt.datetime, settle: float = 0.0) -> pipeline.Plan:
        current = (self.tp.get("status") or {}).get("currentRun")
        job = self.jobs.get(current["id"], runs.JobOutcome(runs.MISSING)) if current else None
        plan = pipeline.decide(pipeline.Observation(
            pipeline=self.tp, now=now, model_versions=list(self.mvs), job=job, drift=self.drift,
            performance=self.performance, profile=self.profile, job_names=list(self.jobs), config_map_names=list(self.jobs), run_settings=SETTINGS,
            settle_seconds=settle))
        if plan.register and plan.register["metadata"]["name"] not in {m["metadata"]["name"] for m in self.mvs}:
            stage = plan.register["metadata"]["annotations"]["noria.dev/initial-stage"]
            self.mvs.append({**plan.register, "status": {"stage": stage}})
        if plan.status:
            self.tp = {**self.tp, "status": pipeline.apply_merge_patch(self.tp.get("status") or {}, plan.status)}
        if plan.run_objects:
            name = plan.run_objects[1]["metadata"]["name"]
            if name not in self.jobs:
                self.created_jobs.append(name)
                self.jobs[name] = runs.JobOutcome(runs.RUNNING)
        self.plans.append(plan)
        return plan

    @property
    def status(self) -> dict:
        return self.tp.get("status") or {}

    def finish(self, run: str, summary: dict | None, state: str = runs.SUCCEEDED, when: dt.datetime = T0):
        self.jobs[run] = runs.JobOutcome(state, summary, finished_at=when.isoformat())

    def retrain(self, value: str) -> None:
        self.tp = copy.deepcopy(self.tp)
        self.tp["metadata"]["annotations"]["noria.dev/retrain"] = value


def mv(name: str, n: int, stage: str, **spec: Any) -> dict:
    return {"metadata": {"name": name}, "status": {"stage": stage},
            "spec": {"version": n, "artifact": {"uri": f"file:///store/{n}", "digest": DIGEST}, **spec}}


def ok(run: str, n: int, verdict: str = "passed", reason: str = "ok") -> dict:
    return {"status": "succeeded", "runId": run, "version": n, "digest": DIGEST, "verdict": verdict, "reason": reason,
            "artifactUri": f"file:///store/ml/churn/v{n}/model.skops", "metrics": {"f1": "0.9"}}


def test_new_pipeline_trains_once_and_registers_an_approved_version():
    w = World(new_pipeline())
    plan = w.step(at(0))
    assert w.created_jobs == ["churn-r1"] and w.status["runCounter"] == 1
    assert w.status["currentRun"]["trigger"] == "initial" and w.status["phase"] == "Training"
    assert plan.status["runCounter"] == 1  # persisted in the same pass, before the Job is created
    w.step(at(5))
    assert w.created_jobs == ["churn-r1"]  # a running Job: nothing new
    w.finish("churn-r1", ok("churn-r1", 1))
    plan = w.step(at(10))
    assert plan.register["metadata"]["name"] == "churn-v1"
    assert w.status["latestVersion"] == "churn-v1" and w.status["championVersion"] == "churn-v1"
    assert w.status["lastRuns"][0]["outcome"] == "Succeeded" and "currentRun" not in w.status
    assert w.status["phase"] == "Ready"
    assert w.step(at(20)).status is None  # nothing changed: no status write
    assert w.created_jobs == ["churn-r1"]


def test_burst_while_idle_is_one_run_and_burst_during_a_run_is_one_follow_up():
    w = World(new_pipeline())
    w.mvs.append(mv("churn-v0", 0, "Approved"))
    for i in range(50):  # fifty writes within a second, settle 2s
        w.retrain(f"a{i}")
        w.step(at(i * 0.02), settle=2)
    assert w.created_jobs == []
    w.step(at(3), settle=2)
    assert w.created_jobs == ["churn-r1"]
    for i in range(50):
        w.retrain(f"b{i}")
        w.step(at(4 + i * 0.02), settle=2)
    w.step(at(10), settle=2)
    assert w.created_jobs == ["churn-r1"] and w.status["pendingTriggers"][0]["trigger"] == "manual"
    w.finish("churn-r1", ok("churn-r1", 1))
    w.step(at(11), settle=2)
    assert w.created_jobs == ["churn-r1", "churn-r2"] and "pendingTriggers" not in w.status
    w.finish("churn-r2", ok("churn-r2", 2))
    for s in range(12, 30):
        w.step(at(s), settle=2)
    assert w.created_jobs == ["churn-r1", "churn-r2"]


def test_cooldown_holds_pending_triggers_then_starts_one_run():
    w = World(new_pipeline({"cooldown": "1h"}))
    w.step(at(0))
    w.finish("churn-r1", ok("churn-r1", 1))
    w.step(at(10))
    w.retrain("x")
    w.step(at(20))
    assert w.created_jobs == ["churn-r1"]
    training = c.get_condition(w.status["conditions"], c.TRAINING)
    assert training["reason"] == c.COOLING_DOWN
    assert w.plans[-1].requeue_after <= 3600
    w.step(at(3611))
    assert w.created_jobs == ["churn-r1", "churn-r2"] and w.status["currentRun"]["trigger"] == "manual"


def test_restart_after_sigkill_between_status_and_job_creates_the_same_job_once():
    w = World(new_pipeline())
    plan = w.step(at(0))
    # The operator died after writing status and before creating the Job: forget the Job.
    w.jobs.clear()
    w.created_jobs.clear()
    plan = w.step(at(30))
    assert plan.run_objects[1]["metadata"]["name"] == "churn-r1" and w.status["runCounter"] == 1
    w.step(at(31))
    assert w.created_jobs == ["churn-r1"]


def test_result_registered_again_after_a_crash_is_the_same_version():
    w = World(new_pipeline())
    w.step(at(0))
    w.finish("churn-r1", ok("churn-r1", 1))
    first = pipeline.decide(pipeline.Observation(pipeline=w.tp, now=at(10), job=w.jobs["churn-r1"],
                                                 run_settings=SETTINGS))
    # crashed after creating the ModelVersion, before the status write: the next pass registers the same name
    w.mvs.append({**first.register, "status": {"stage": "Approved"}})
    again = w.step(at(20))
    assert again.register["metadata"]["name"] == first.register["metadata"]["name"] == "churn-v1"
    assert len(w.mvs) == 1 and w.status["lastRuns"][0]["version"] == "churn-v1"


def test_failed_trainer_degrades_with_its_reason_and_keeps_the_champion():
    w = World(new_pipeline())
    w.mvs.append(mv("churn-v0", 0, "Production"))
    w.retrain("go")
    w.step(at(0))
    w.finish("churn-r1", {"status": "failed", "runId": "churn-r1", "version": 1, "failedStage": "validation",
                          "reason": "only 12 rows, minRows is 1000"}, state=runs.FAILED)
    plan = w.step(at(10))
    assert plan.register is None
    degraded = c.get_condition(w.status["conditions"], c.DEGRADED)
    assert degraded["status"] == "True" and degraded["reason"] == c.TRAINER_FAILED
    assert "only 12 rows" in degraded["message"] and "validation" in degraded["message"]
    assert w.status["phase"] == "Degraded" and w.status["championVersion"] == "churn-v0"
    assert [e.type for e in plan.events] == ["Warning"] and plan.finished == ("manual", "Failed")


def test_job_failed_without_summary_and_success_without_summary():
    w = World(new_pipeline())
    w.step(at(0))
    w.finish("churn-r1", None, state=runs.FAILED, when=at(5))
    w.step(at(6))
    assert c.get_condition(w.status["conditions"], c.DEGRADED)["reason"] == c.JOB_FAILED
    w.retrain("again")
    w.step(at(7))
    w.finish("churn-r2", None, state=runs.SUCCEEDED, when=at(8))
    assert w.step(at(9)).finished is None  # the summary may still arrive
    w.step(at(30))
    assert c.get_condition(w.status["conditions"], c.DEGRADED)["reason"] == c.SUMMARY_MISSING


def test_gate_rejection_registers_a_rejected_version_and_is_not_degraded():
    w = World(new_pipeline())
    w.step(at(0))
    w.finish("churn-r1", ok("churn-r1", 1, verdict="rejected", reason="f1 0.5 below minScore 0.7"))
    plan = w.step(at(10))
    assert plan.register["metadata"]["annotations"]["noria.dev/initial-stage"] == "Rejected"
    assert w.status["lastRuns"][0]["outcome"] == "Rejected"
    assert c.get_condition(w.status["conditions"], c.DEGRADED)["status"] == "False"
    assert "championVersion" not in w.status


def test_prometheus_unreachable_reports_unknown_and_starts_nothing():
    w = World(new_pipeline({"drift": {"method": "psi", "threshold": "0.1", "for": "0s"}}))
    w.mvs.append(mv("churn-v1", 1, "Production", profileUri="p"))
    w.drift = MetricObservation(error="Prometheus at http://x is unreachable")
    w.step(at(0))
    cond = c.get_condition(w.status["conditions"], c.TRIGGERS_HEALTHY)
    assert cond["status"] == "Unknown" and cond["reason"] == c.PROMETHEUS_UNAVAILABLE
    assert w.created_jobs == []


def test_history_is_pruned_to_the_limit():
    w = World(new_pipeline(historyLimit=2))
    w.step(at(0))
    for n in range(1, 5):
        w.finish(f"churn-r{n}", ok(f"churn-r{n}", n))
        w.retrain(f"r{n}")
        w.step(at(n * 10))
    assert len(w.status["lastRuns"]) == 2
    assert w.plans[-1].prune_jobs == ["churn-r2", "churn-r1"]


def test_merge_patch_deletes_removed_keys_and_is_empty_when_equal():
    assert pipeline.merge_patch({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"x": 1}}) == {"a": None, "b": {"y": None}}
    assert pipeline.merge_patch({"a": [1]}, {"a": [1], "n": None}) == {}


# --- defect 2: a run's finishing pass judged the old version's data under the new champion's name --
PROFILE = Profile({"x": FeatureProfile._numeric(np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.5, 0, 0, 0]))}, None,
                  10_000)


def drifted(version: str | None) -> MetricObservation:
    return MetricObservation({("x", "1"): 50, ("x", "above"): 450}, version=version)


def bad_answers(version: str | None) -> MetricObservation:
    return MetricObservation({("1", "0"): 300, ("1", "1"): 200}, version=version)


@pytest.mark.parametrize(
    ("given", "triggers", "observe"),
    [
        ("drift, for unset, counts tagged with v0", {"drift": {"threshold": "0.2"}}, "drift-tagged"),
        ("drift, for unset, untagged counts", {"drift": {"threshold": "0.2"}}, "drift-untagged"),
        ("drift, for 0s", {"drift": {"threshold": "0.2", "for": "0s"}}, "drift-tagged"),
        ("performance, for unset", {"performance": {"metric": "accuracy", "below": "0.8", "minLabels": 100}},
         "performance-tagged"),
        ("performance, untagged counts", {"performance": {"metric": "accuracy", "below": "0.8", "minLabels": 100}},
         "performance-untagged"),
    ],
)
def test_a_runs_own_completion_never_starts_the_next_run(given, triggers, observe):
    w = World(new_pipeline(triggers))
    w.mvs.append(mv("churn-v0", 0, "Approved", profileUri="p1"))
    kind, tagging = observe.split("-")
    version = "churn-v0" if tagging == "tagged" else None
    w.profile = PROFILE
    if kind == "drift":
        w.drift = drifted(version)
    else:
        w.performance = bad_answers(version)
    w.step(at(0))
    assert w.created_jobs == ["churn-r1"] and w.status["currentRun"]["trigger"] == kind, given
    # The run ends; this pass still holds what was observed about v0 before v1 existed.
    w.finish("churn-r1", ok("churn-r1", 1))
    plan = w.step(at(10))
    assert plan.register["metadata"]["name"] == "churn-v1" and w.status["championVersion"] == "churn-v1"
    assert w.created_jobs == ["churn-r1"] and "pendingTriggers" not in w.status, given
    assert w.status["triggers"][kind]["champion"] == "churn-v1" and w.status["triggers"][kind].get("since") is None
    # The next passes observe v1 itself: a few values after the swap are not evidence (defect 1).
    w.drift = MetricObservation({("x", "above"): 40}, version="churn-v1") if kind == "drift" else None
    w.performance = MetricObservation({("1", "0"): 20}, version="churn-v1") if kind == "performance" else None
    for s in range(11, 40):
        w.step(at(s))
    assert w.created_jobs == ["churn-r1"], given


@pytest.mark.parametrize(
    ("given", "verdict", "expected_jobs", "dropped_events"),
    [
        ("the run's version became champion: drift pending about v0 is void", "passed", ["churn-r1"], 1),
        ("the gate rejected it: v0 still serves, the pending drift runs", "rejected", ["churn-r1", "churn-r2"], 0),
    ],
)
def test_drift_pending_about_a_replaced_champion_is_dropped(given, verdict, expected_jobs, dropped_events):
    w = World(new_pipeline({"drift": {"threshold": "0.2", "for": "5s"}}))
    w.mvs.append(mv("churn-v0", 0, "Approved", profileUri="p1"))
    w.profile, w.drift = PROFILE, drifted("churn-v0")
    w.step(at(0))
    w.step(at(5))
    assert w.created_jobs == ["churn-r1"]
    w.step(at(6))
    w.step(at(11))  # drift on v0 held another "for" during the run: one pending follow-up
    assert w.status["pendingTriggers"] == [
        {"trigger": "drift", "at": w.status["pendingTriggers"][0]["at"], "reason": w.status["pendingTriggers"][0]["reason"],
         "count": 1, "champion": "churn-v0"}]
    w.finish("churn-r1", ok("churn-r1", 1, verdict=verdict))
    plan = w.step(at(20))
    assert w.created_jobs == expected_jobs, given
    dropped = [e for e in plan.events if e.reason == c.PENDING_TRIGGER_DROPPED]
    assert len(dropped) == dropped_events and all("churn-v0" in e.message for e in dropped)


# --- defect 1: after every swap, the new version's first small windows raised a false alarm --------
def _noise_profile(features: int = 10, rows: int = 10_000) -> Profile:
    rng = np.random.default_rng(21)
    return Profile({f"f{i}": FeatureProfile.build(rng.normal(0, 1, rows), "numeric") for i in range(features)}, None,
                   rows)


NOISE_PROFILE = _noise_profile()


def noise(version: str, n: int, seed: int) -> MetricObservation:
    """``n`` values per feature drawn from the version's own training profile: no drift at all."""
    rng = np.random.default_rng(seed)
    counts = {}
    for name, fp in NOISE_PROFILE.features.items():
        for label, k in zip(fp.labels, rng.multinomial(n, fp.reference), strict=True):
            if k:
                counts[(name, label)] = float(k)
    return MetricObservation(counts, version=version)


@pytest.mark.parametrize(
    ("given", "drift", "growth"),
    [
        ("for unset, the window fills 10 values a pass", {"threshold": "0.2"}, range(10, 400, 10)),
        ("for 0s, the window jumps to 50-60 values", {"threshold": "0.2", "for": "0s"}, [50, 55, 60, 60, 55, 50]),
        ("for unset, minSamples lowered to 50", {"threshold": "0.2", "minSamples": 50}, range(50, 300, 25)),
    ],
)
def test_no_false_alarm_while_a_new_versions_window_fills_after_a_swap(given, drift, growth):
    w = World(new_pipeline({"drift": drift}))
    w.mvs.append(mv("churn-v0", 0, "Approved", profileUri="p0"))
    w.profile = NOISE_PROFILE
    clock = 0
    for swap in range(1, 4):  # three swaps: each run's version starts from an empty window
        w.retrain(f"swap{swap}")
        w.step(at(clock))
        w.finish(f"churn-r{swap}", ok(f"churn-r{swap}", swap))
        clock += 5
        w.step(at(clock))
        champion = w.status["championVersion"]
        assert champion == f"churn-v{swap}"
        for i, n in enumerate(growth):
            w.drift = noise(champion, n, seed=100 * swap + i)
            clock += 30
            w.step(at(clock))
    assert w.created_jobs == ["churn-r1", "churn-r2", "churn-r3"], f"{given}: {w.status.get('lastRuns')}"
    assert "pendingTriggers" not in w.status
