"""noria.kube against kmock's in-memory Kubernetes API: each helper is an idempotent step."""

from __future__ import annotations

import pytest
from lightkube import AsyncClient, KubeConfig
from noria import kube


@pytest.fixture
async def api(kmock):
    kmock.resources["v1/configmaps"] = {"kind": "ConfigMap", "namespaced": True}
    config = KubeConfig.from_dict({
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url)}}],
        "users": [{"name": "anonymous", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "anonymous"}}],
        "current-context": "kmock"})
    client = AsyncClient(config, field_manager=kube.FIELD_MANAGER)
    kube.set_client(client)
    yield kmock
    kube.set_client(None)
    await client.close()


def configmap(name: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ml"},
            "data": {"k": value}}


async def test_get_of_a_missing_object_is_none(api):
    assert await kube.get("v1", "ConfigMap", "nope", "ml") is None


async def test_create_twice_returns_the_existing_object_instead_of_failing(api):
    first, created = await kube.create(configmap("run", "one"))
    assert created and first["data"] == {"k": "one"}
    again, created = await kube.create(configmap("run", "two"))
    assert not created and again["data"] == {"k": "one"}  # what is there, not what was asked


async def test_delete_of_a_missing_object_is_done(api):
    await kube.create(configmap("gone", "x"))
    assert await kube.delete("v1", "ConfigMap", "gone", "ml") is True
    assert await kube.delete("v1", "ConfigMap", "gone", "ml") is False


def test_event_manifest_names_the_object_and_bounds_the_message():
    involved = {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline",
                "metadata": {"name": "churn", "namespace": "ml", "uid": "u"}}
    event = kube.event_manifest(involved, "Warning", "TrainerFailed", "x" * 5000)
    assert event["involvedObject"]["name"] == "churn" and event["involvedObject"]["uid"] == "u"
    assert event["metadata"]["name"].startswith("churn.") and len(event["message"]) == 1024
