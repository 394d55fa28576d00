"""The training side's crash points cover every side effect: each write of a TrainingPipeline pass
and of a ModelVersion judgement (a create, a status write, a delete, an Event) is followed at once by
a crash point, before any other write, and every name in ``failpoints.TRAINING_NAMES`` is one of them.

The API is an in-memory fake that records each write; ``failpoints.hit`` is replaced by a recorder,
so the test reads the exact interleaving of writes and points (the integration test
tests/integration/test_training_crash_points.py kills a real operator at each of them). Also: the
``name@key`` arming of the variable fires only for that key."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from noria import failpoints as fp
from noria import kube, mvcache
from noria.contracts import ANNOTATION_APPROVE, API_VERSION
from noria.training import handlers, pipeline, results

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
NS = "ml"


class RecordingApi:
    """Objects by (kind, name); ``log`` holds ("write", what) and ("hit", point, key) in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(100)
        self.log: list[tuple] = []

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, api_version, kind, name, namespace=None):  # noqa: ANN001, ANN201
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found else None

    async def create(self, obj):  # noqa: ANN001, ANN201
        existing = self.objects.get((obj["kind"], obj["metadata"]["name"]))
        if existing:
            return copy.deepcopy(existing), False
        self.log.append(("write", f"create {obj['kind']} {obj['metadata']['name']}"))
        return self.put(obj), True

    async def patch_status(self, api_version, kind, name, namespace, status, resource_version=None):  # noqa: ANN001, ANN201
        self.log.append(("write", f"status {kind} {name}"))
        current = self.objects[(kind, name)]
        return self.put({**current, "status": pipeline.apply_merge_patch(current.get("status") or {}, status)})

    async def post_event(self, involved, type_, reason, message):  # noqa: ANN001, ANN201
        self.log.append(("write", f"event {reason} on {involved['metadata']['name']}"))

    async def delete(self, api_version, kind, name, namespace=None):  # noqa: ANN001, ANN201
        gone = self.objects.pop((kind, name), None) is not None
        if gone:
            self.log.append(("write", f"delete {kind} {name}"))
        return gone

    def hit(self, name: str, key: str | None = None) -> None:
        self.log.append(("hit", name, key))


@pytest.fixture
def api(monkeypatch):  # noqa: ANN001, ANN201
    fake = RecordingApi()
    for name in ("get", "create", "patch_status", "post_event", "delete"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    monkeypatch.setattr(fp, "hit", fake.hit)
    monkeypatch.setattr(mvcache, "shared", lambda: SimpleNamespace(cache=SimpleNamespace(put=lambda mv: None)))
    return fake


def obj(api_version: str, kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": NS}, **extra}


def the_pipeline(api: RecordingApi, status: dict | None = None) -> dict[str, Any]:
    return api.put({**obj(API_VERSION, "TrainingPipeline", "churn"),
                    "metadata": {"name": "churn", "namespace": NS, "uid": "u1", "generation": 1},
                    "spec": {"model": {}}, "status": status or {"phase": "Training"}})


def a_run_ends_and_the_next_starts() -> pipeline.Plan:
    """Every write a pass can make: a ModelVersion registered and staged, status, Events, a dask
    run's ConfigMap and DaskCluster, a single run's ConfigMap and Job, old runs pruned."""
    version = obj(API_VERSION, "ModelVersion", "churn-v1", spec={"pipeline": "churn", "artifact": {"uri": "u"}})
    version["metadata"]["annotations"] = {results.ANNOTATION_INITIAL_STAGE: results.APPROVED,
                                          results.ANNOTATION_INITIAL_REASON: "passed the gate"}
    return pipeline.Plan(
        status={"phase": "Training", "currentRun": {"id": "churn-r2"}},
        register=version,
        events=[pipeline.Event("Normal", "ModelVersionRegistered", "v1"), pipeline.Event("Normal", "RunStarted", "r2")],
        dask_objects=(obj("v1", "ConfigMap", "churn-r2"), obj("kubernetes.dask.org/v1", "DaskCluster", "churn-r2")),
        run_objects=(obj("v1", "ConfigMap", "churn-r3"), obj("batch/v1", "Job", "churn-r3")),
        prune_jobs=["churn-r0"], prune_config_maps=["churn-r0"], delete_dask_clusters=["churn-r0"],
        finished=("initial", pipeline.OUTCOME_SUCCEEDED),
    )


def old_run_objects(api: RecordingApi) -> None:
    for api_version, kind in (("batch/v1", "Job"), ("v1", "ConfigMap"), ("kubernetes.dask.org/v1", "DaskCluster")):
        api.put(obj(api_version, kind, "churn-r0"))


def unguarded(log: list[tuple]) -> list[str]:
    """Writes not followed at once by a crash point."""
    return [entry[1] for entry, after in zip(log, log[1:] + [("end",)], strict=True)
            if entry[0] == "write" and after[0] != "hit"]


def points(log: list[tuple]) -> list[tuple[str, str | None]]:
    return [(entry[1], entry[2]) for entry in log if entry[0] == "hit"]


async def a_pass_that_recovers(monkeypatch) -> None:  # noqa: ANN001
    """``handlers.reconcile`` of churn with nothing to do (observation, plan and bookkeeping stubbed):
    after a reported error, its only write is the recovery (Reconciled=True)."""
    async def observe(tp, now):  # noqa: ANN001, ANN202
        return None

    monkeypatch.setattr(handlers, "observe", observe)
    monkeypatch.setattr(handlers.pipeline, "decide", lambda observation: pipeline.Plan(status=None))
    monkeypatch.setattr(handlers, "read_pipeline_spec", lambda spec: spec)
    monkeypatch.setattr(handlers, "_count", lambda *args: None)
    monkeypatch.setattr(handlers, "state", lambda: SimpleNamespace(resync=2.0, idle_resync=600.0))
    await handlers.reconcile((NS, "churn"))


async def test_every_write_of_a_pass_that_ends_a_run_and_starts_another_is_followed_by_its_crash_point(api):
    tp = the_pipeline(api)
    old_run_objects(api)
    await handlers.execute(tp, a_run_ends_and_the_next_starts(), NOW)
    assert unguarded(api.log) == []
    assert points(api.log) == [
        (fp.TRAINING_VERSION_CREATED, "churn"), (fp.TRAINING_VERSION_STAGED, "churn"),
        (fp.TRAINING_VERSION_EVENT, "churn"), (fp.TRAINING_RUN_RECORDED, "churn"),
        (fp.TRAINING_EVENTS_POSTED, "churn"), (fp.TRAINING_EVENTS_POSTED, "churn"),
        (fp.TRAINING_CONFIG_MAP_CREATED, "churn"),
        (fp.TRAINING_DASK_CLUSTER_CREATED, "churn"), (fp.TRAINING_CONFIG_MAP_CREATED, "churn"),
        (fp.TRAINING_JOB_CREATED, "churn"), (fp.TRAINING_PRUNED, "churn"), (fp.TRAINING_PRUNED, "churn"),
        (fp.TRAINING_DASK_CLUSTER_DELETED, "churn")]


async def test_a_pass_repeated_after_a_crash_fires_only_where_it_writes_again(api):
    """AlreadyExists (a create) and NotFound (a delete) change nothing: no crash point there, so an
    operator armed at a point idles until a pass really makes that write."""
    tp = the_pipeline(api)
    old_run_objects(api)
    await handlers.execute(tp, a_run_ends_and_the_next_starts(), NOW)
    api.log.clear()
    await handlers.execute(api.objects[("TrainingPipeline", "churn")], a_run_ends_and_the_next_starts(), NOW)
    assert unguarded(api.log) == []
    assert points(api.log) == [(fp.TRAINING_RUN_RECORDED, "churn"), (fp.TRAINING_EVENTS_POSTED, "churn"),
                               (fp.TRAINING_EVENTS_POSTED, "churn")]


async def test_a_status_write_of_a_pass_that_finished_no_run_has_its_own_point(api):
    tp = the_pipeline(api)
    await handlers.execute(tp, pipeline.Plan(status={"phase": "Training", "currentRun": {"id": "churn-r1"}}), NOW)
    assert unguarded(api.log) == [] and points(api.log) == [(fp.TRAINING_STATUS_WRITTEN, "churn")]


async def test_the_error_report_and_the_recovery_writes_are_followed_by_their_crash_points(api, monkeypatch):
    tp = the_pipeline(api)
    await handlers._report_error(tp, RuntimeError("quota exceeded"))
    assert unguarded(api.log) == []
    assert points(api.log) == [(fp.TRAINING_ERROR_REPORTED, "churn"), (fp.TRAINING_EVENTS_POSTED, "churn")]

    api.log.clear()

    await a_pass_that_recovers(monkeypatch)
    assert unguarded(api.log) == [] and points(api.log) == [(fp.TRAINING_RECOVERED, "churn")]


def a_hand_made_version(api: RecordingApi, name: str, **annotations: str) -> dict[str, Any]:
    version = obj(API_VERSION, "ModelVersion", name, spec={"artifact": {"uri": "file:///etc/x"}})
    version["metadata"]["annotations"] = annotations
    return api.put(version)


def scope(monkeypatch, refused: bool) -> None:  # noqa: ANN001
    out = SimpleNamespace(message="spec.artifact.uri is out of scope") if refused else None
    checker = SimpleNamespace(check=lambda body: out)
    monkeypatch.setattr(handlers, "state", lambda: SimpleNamespace(
        settings=SimpleNamespace(artifact_scope=lambda: checker)))


async def test_every_write_of_a_model_version_judgement_is_followed_by_its_crash_point(api, monkeypatch):
    scope(monkeypatch, refused=True)
    await handlers._judge_model_version(a_hand_made_version(api, "outside"))
    scope(monkeypatch, refused=False)
    await handlers._judge_model_version(a_hand_made_version(api, "imported", **{ANNOTATION_APPROVE: "alice"}))
    assert unguarded(api.log) == []
    assert points(api.log) == [
        (fp.VERSION_SCOPE_WRITTEN, "outside"), (fp.VERSION_EVENT_POSTED, "outside"),
        (fp.VERSION_REGISTRATION_WRITTEN, "outside"), (fp.VERSION_EVENT_POSTED, "outside"),
        (fp.VERSION_REGISTRATION_WRITTEN, "imported"), (fp.VERSION_EVENT_POSTED, "imported"),
        (fp.VERSION_APPROVAL_WRITTEN, "imported"), (fp.VERSION_EVENT_POSTED, "imported")]


async def test_the_crash_points_above_are_every_training_name(api, monkeypatch):
    """Together the writes above reach every name in TRAINING_NAMES, and no name is unreachable."""
    tp = the_pipeline(api)
    old_run_objects(api)
    await handlers.execute(tp, a_run_ends_and_the_next_starts(), NOW)
    await handlers.execute(api.objects[("TrainingPipeline", "churn")], pipeline.Plan(status={"phase": "Ready"}), NOW)
    await handlers._report_error(api.objects[("TrainingPipeline", "churn")], RuntimeError("boom"))

    await a_pass_that_recovers(monkeypatch)
    scope(monkeypatch, refused=True)
    await handlers._judge_model_version(a_hand_made_version(api, "outside", **{ANNOTATION_APPROVE: "alice"}))
    scope(monkeypatch, refused=False)
    await handlers._judge_model_version(a_hand_made_version(api, "imported", **{ANNOTATION_APPROVE: "alice"}))
    assert unguarded(api.log) == []
    assert {name for name, _ in points(api.log)} == set(fp.TRAINING_NAMES)
    assert len(set(fp.TRAINING_NAMES)) == len(fp.TRAINING_NAMES)
    assert set(fp.TRAINING_NAMES).isdisjoint(fp.NAMES)


def test_a_keyed_point_fires_only_for_its_key_and_an_unkeyed_one_for_any(monkeypatch):
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(fp.os, "_exit", fake_exit)
    try:
        fp.arm(f"{fp.TRAINING_JOB_CREATED}@churn, {fp.TRAFFIC_SET}")
        fp.hit(fp.TRAINING_JOB_CREATED, "other")  # another pipeline: nothing
        fp.hit(fp.TRAINING_JOB_CREATED)  # no key: nothing
        fp.hit(fp.TRAINING_CONFIG_MAP_CREATED, "churn")  # not armed: nothing
        assert exits == []
        with pytest.raises(SystemExit):
            fp.hit(fp.TRAINING_JOB_CREATED, "churn")
        with pytest.raises(SystemExit):
            fp.hit(fp.TRAFFIC_SET)  # the Rollout side's points, unkeyed, as before
        with pytest.raises(SystemExit):
            fp.hit(fp.TRAFFIC_SET, "any")
        assert exits == [fp.EXIT_CODE] * 3
        fp.arm(None)
        fp.hit(fp.TRAINING_JOB_CREATED, "churn")
        fp.arm("")
        fp.hit(fp.TRAFFIC_SET)
        assert len(exits) == 3
    finally:
        fp.arm(None)
