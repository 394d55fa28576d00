"""On the real API server: a write decided from a read that is no longer current is refused.

Each test reads an object as a pass would, lets another writer (kubectl, standing in for the new
leader or a user) change it, then makes the write the pass decided: it must fail with
``kube.Conflict`` and leave the object exactly as the other writer left it; the same write from a
fresh read lands. This is the fencing docs/operations/high-availability.md describes for writes
already on the wire when a leader is deposed."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import pytest
from noria import kube
from noria.contracts import API_VERSION
from noria.deployment import objects
from noria.deployment.cluster import apply_onto
from noria.deployment.providers import router, service
from noria.settings import Settings
from noria.training import handlers, pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(cluster) -> AsyncIterator[None]:  # noqa: ANN001 - a client on this test's event loop
    kube.set_client(None)
    yield
    await kube.client().close()
    kube.set_client(None)


def owner(cluster, namespace: str) -> objects.RolloutRef:  # noqa: ANN001
    """A real owner for the objects (a ConfigMap): the garbage collector removes objects whose owner is gone."""
    cluster.kubectl("create", "configmap", "churn", "-n", namespace)
    uid = cluster.kubectl(
        "get", "configmap", "churn", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    return objects.RolloutRef(name="churn", namespace=namespace, uid=uid, api_version="v1", kind="ConfigMap")


def written_by_someone_else(cluster, namespace: str, kind: str, name: str) -> None:  # noqa: ANN001
    cluster.kubectl("annotate", kind, name, "-n", namespace, "someone-else=wrote-this", "--overwrite")


async def test_a_service_switch_decided_from_a_stale_read_is_refused(cluster, namespace, api):  # noqa: ANN001
    ref = owner(cluster, namespace)
    provider = service.ServiceProvider(ref)
    assert await provider.set_weights({"v1": 100}, None)  # observed missing: created by apply
    stale = await kube.get("v1", "Service", "churn", namespace)
    written_by_someone_else(cluster, namespace, "service", "churn")
    with pytest.raises(kube.Conflict):
        await apply_onto(objects.entry_service(ref, service.selector_for("churn", {"v2": 100})), stale)
    now = await kube.get("v1", "Service", "churn", namespace)
    assert now["spec"]["selector"][objects.LABEL_VERSION] == "v1"
    assert now["metadata"]["annotations"]["someone-else"] == "wrote-this"
    # From a fresh read the switch lands, and a split drops the version key (one field manager owns it).
    assert await provider.set_weights({"v2": 100}, None)
    assert (await kube.get("v1", "Service", "churn", namespace))["spec"]["selector"][
        objects.LABEL_VERSION
    ] == "v2"
    assert await provider.set_weights({"v1": 50, "v2": 50}, None)
    split = (await kube.get("v1", "Service", "churn", namespace))["spec"]["selector"]
    assert split == {objects.LABEL_ROLLOUT: "churn", objects.LABEL_COMPONENT: objects.COMPONENT_SERVER}


async def test_router_weights_decided_from_a_stale_read_are_refused(cluster, namespace, api, monkeypatch):  # noqa: ANN001
    ref = owner(cluster, namespace)
    provider = router.RouterProvider(ref, "churn", Settings.from_env())
    config = objects.router_config("churn", namespace, "churn", {}, None)
    await kube.create(objects.router_configmap(ref, config))
    assert await provider.set_weights({"v1": 100}, None)
    read = kube.get

    async def read_then_someone_writes(api_version, kind, name, namespace_=None):  # noqa: ANN001, ANN202
        found = await read(api_version, kind, name, namespace_)
        if kind == "ConfigMap":
            written_by_someone_else(cluster, namespace, "configmap", name)
        return found

    monkeypatch.setattr(kube, "get", read_then_someone_writes)
    with pytest.raises(kube.Conflict):
        await provider.set_weights({"v1": 50, "v2": 50}, None)
    monkeypatch.setattr(kube, "get", read)
    cm = await kube.get("v1", "ConfigMap", objects.router_name("churn"), namespace)
    assert [b["weight"] for b in json.loads(cm["data"][objects.CONFIG_KEY])["backends"]] == [100]
    assert await provider.get_weights() == {"v1": 100}
    assert await provider.set_weights({"v1": 50, "v2": 50}, None)  # from a fresh read: lands
    assert await provider.get_weights() == {"v1": 50, "v2": 50}


async def test_a_training_status_write_decided_from_a_stale_read_is_refused(cluster, namespace, api):  # noqa: ANN001
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": API_VERSION,
                "kind": "TrainingPipeline",
                "metadata": {"name": "churn"},
                "spec": {
                    "model": {
                        "task": "classification",
                        "estimator": "sklearn.linear_model.LogisticRegression",
                        "target": "y",
                    },
                    "data": {"source": "file:///store/ml/churn.parquet"},
                },
            }
        ),
    )
    stale = await kube.get(API_VERSION, "TrainingPipeline", "churn", namespace)
    written_by_someone_else(cluster, namespace, "trainingpipeline", "churn")
    plan = pipeline.Plan(
        status={"phase": "Training"},
        events=[pipeline.Event("Normal", "TrainingStarted", "run 1 (a deposed replica's)")],
    )
    with pytest.raises(kube.Conflict):
        await handlers.execute(stale, plan, dt.datetime.now(dt.UTC))
    now = await kube.get(API_VERSION, "TrainingPipeline", "churn", namespace)
    assert "phase" not in (now.get("status") or {})
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "TrainingStarted" not in events
    fresh_version = await handlers.execute(now, plan, dt.datetime.now(dt.UTC))
    landed = await kube.get(API_VERSION, "TrainingPipeline", "churn", namespace)
    assert landed["status"]["phase"] == "Training" and landed["metadata"]["resourceVersion"] == fresh_version
