"""Every training-side status write is conditional on the resourceVersion it was decided from.

A pass that read a TrainingPipeline (or a ModelVersion) which changed since -- an edit, a Rollout's
promotion, another replica's write, or a deposed leader waking up -- must fail with ``kube.Conflict``
and write nothing, never land a status decided from the old object. The API here is an in-memory
fake that keeps resourceVersions and refuses a stale precondition with a conflict, as the API server
does (the real one is exercised in tests/integration/test_leader_election.py)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from noria import kube, mvcache
from noria.contracts import ANNOTATION_APPROVE, API_VERSION
from noria.training import handlers, pipeline, results

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
SPEC = {
    "model": {
        "task": "classification",
        "estimator": "sklearn.linear_model.LogisticRegression",
        "target": "y",
    },
    "data": {"source": "file:///store/ml/churn.parquet"},
}


class VersionedApi:
    """The objects by (kind, namespace, name); every write moves the resourceVersion on."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.versions = itertools.count(100)
        self.events: list[str] = []
        self.created: list[str] = []

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, api_version, kind, name, namespace=None):
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, obj):
        existing = self.objects.get((obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]))
        if existing:
            return copy.deepcopy(existing), False
        self.created.append(obj["metadata"]["name"])
        return self.put(obj), True

    async def patch_status(self, api_version, kind, name, namespace, status, resource_version=None):
        current = self.objects[(kind, namespace, name)]
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise kube.Conflict(f"{name} changed since resourceVersion {resource_version}")
        return self.put(
            {**current, "status": pipeline.apply_merge_patch(current.get("status") or {}, status)}
        )

    async def post_event(self, involved, type_, reason, message):
        self.events.append(reason)

    async def delete(self, api_version, kind, name, namespace=None):
        return self.objects.pop((kind, namespace, name), None) is not None


@pytest.fixture
def api(monkeypatch):
    fake = VersionedApi()
    for name in ("get", "create", "patch_status", "post_event", "delete"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    monkeypatch.setattr(
        mvcache, "shared", lambda: SimpleNamespace(cache=SimpleNamespace(put=lambda mv: None))
    )
    return fake


def training_pipeline(api: VersionedApi) -> dict[str, Any]:
    return api.put(
        {
            "apiVersion": API_VERSION,
            "kind": "TrainingPipeline",
            "metadata": {"name": "churn", "namespace": "ml", "uid": "u1", "generation": 1},
            "spec": SPEC,
            "status": {"phase": "Idle"},
        }
    )


def a_run_starts() -> pipeline.Plan:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "churn-r1", "namespace": "ml"},
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "churn-r1", "namespace": "ml"}}
    return pipeline.Plan(
        status={"phase": "Training", "currentRun": {"id": "churn-r1"}},
        events=[pipeline.Event("Normal", "TrainingStarted", "run 1")],
        run_objects=(config_map, job),
    )


async def test_a_pass_decided_from_a_pipeline_that_changed_since_writes_nothing(api):
    read = training_pipeline(api)
    now_ = api.put(read)  # written since the pass read it (an edit, or another replica's status write)
    with pytest.raises(kube.Conflict):
        await handlers.execute(read, a_run_starts(), NOW)
    stored = api.objects[("TrainingPipeline", "ml", "churn")]
    assert (
        stored["status"] == {"phase": "Idle"}
        and stored["metadata"]["resourceVersion"] == now_["metadata"]["resourceVersion"]
    )
    assert api.events == [] and api.created == []  # no Event, no ConfigMap, no Job: nothing of the stale plan


async def test_a_pass_from_a_fresh_read_writes_and_returns_the_new_resource_version(api):
    read = training_pipeline(api)
    resource_version = await handlers.execute(read, a_run_starts(), NOW)
    stored = api.objects[("TrainingPipeline", "ml", "churn")]
    assert (
        stored["status"]["phase"] == "Training" and stored["metadata"]["resourceVersion"] == resource_version
    )
    assert api.events == ["TrainingStarted"] and api.created == ["churn-r1", "churn-r1"]


async def test_a_conflict_drops_the_pass_to_observe_again_soon_and_is_no_error(api, monkeypatch):
    read = training_pipeline(api)
    stale = copy.deepcopy(read)
    api.put(read)

    async def observe_stale(tp, now):  # the pipeline changes while the pass observes it
        return stale

    async def get_then_change(api_version, kind, name, namespace=None):
        return stale

    monkeypatch.setattr(handlers, "observe", observe_stale)
    monkeypatch.setattr(handlers.pipeline, "decide", lambda observation: a_run_starts())
    monkeypatch.setattr(kube, "get", get_then_change)
    assert await handlers.reconcile(("ml", "churn")) == handlers.CONFLICT_RETRY_SECONDS
    assert api.objects[("TrainingPipeline", "ml", "churn")]["status"] == {"phase": "Idle"}
    assert "ReconcileError" not in api.events and api.created == []


def model_version(api: VersionedApi, stage: str) -> dict[str, Any]:
    return api.put(
        {
            "apiVersion": API_VERSION,
            "kind": "ModelVersion",
            "metadata": {
                "name": "churn-v1",
                "namespace": "ml",
                "uid": "u2",
                "annotations": {ANNOTATION_APPROVE: "alice"},
            },
            "spec": {"pipeline": "churn"},
            "status": {"stage": stage},
        }
    )


@pytest.fixture
def in_scope(monkeypatch):
    scope = SimpleNamespace(check=lambda body: None)
    monkeypatch.setattr(
        handlers, "state", lambda: SimpleNamespace(settings=SimpleNamespace(artifact_scope=lambda: scope))
    )


async def test_an_approval_decided_from_a_model_version_that_changed_since_is_not_written(api, in_scope):
    seen = model_version(api, results.CANDIDATE)
    promoted = api.put({**seen, "status": {"stage": "Production"}})  # a Rollout promoted it meanwhile
    await handlers._judge_model_version(seen)
    stored = api.objects[("ModelVersion", "ml", "churn-v1")]
    assert stored["status"] == {"stage": "Production"} and stored["metadata"] == promoted["metadata"]
    assert api.events == []


async def test_an_approval_onto_the_model_version_as_seen_is_written_once(api, in_scope):
    seen = model_version(api, results.CANDIDATE)
    await handlers._judge_model_version(seen)
    assert api.objects[("ModelVersion", "ml", "churn-v1")]["status"]["stage"] == results.APPROVED
    assert api.events == ["ManuallyApproved"]
