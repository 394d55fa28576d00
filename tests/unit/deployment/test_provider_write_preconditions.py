"""The traffic providers write an object only onto the version of it they read.

Each provider reads the object it is about to change (the entry Service's selector, the router's
ConfigMap, Deployment and Services) and decides from that read; the write carries the read's
resourceVersion, so the API server refuses it if anyone wrote the object in between (a concurrent
pass, or the new leader while this replica was deposed). Here the API is an in-memory fake that
checks the precondition the way the API server does; the real one is in
tests/integration/test_owned_object_fencing.py."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import httpx2  # lightkube's HTTP client: what kube.HTTPError is
import pytest
from noria import kube
from noria.deployment import cluster, objects
from noria.deployment.providers import router, service
from noria.settings import Settings

REF = objects.RolloutRef(name="churn", namespace="ml", uid="u1")


class VersionedApi:
    """Objects by (kind, name); ``written_after_read`` names one object that another writer changes
    right after this process reads it."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.written_after_read: str | None = None

    def store(self, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj

    async def get(self, api_version, kind, name, namespace=None):
        found = copy.deepcopy(self.objects.get((kind, name)))
        if found is not None and name == self.written_after_read:
            self.written_after_read = None
            self.store(
                {**found, "metadata": {**found["metadata"], "labels": {"written-by": "the-new-leader"}}}
            )
        return found

    async def create(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        self.store(obj)
        return copy.deepcopy(self.objects[key]), True

    async def apply(self, obj):
        current = self.objects.get((obj["kind"], obj["metadata"]["name"]))
        precondition = obj["metadata"].get("resourceVersion")
        if current is not None and precondition and precondition != current["metadata"]["resourceVersion"]:
            raise httpx2.HTTPStatusError(
                "409 Conflict", request=httpx2.Request("PATCH", "https://api"), response=httpx2.Response(409)
            )
        self.store(obj)
        return copy.deepcopy(self.objects[(obj["kind"], obj["metadata"]["name"])])


@pytest.fixture
def api(monkeypatch):
    fake = VersionedApi()
    monkeypatch.setattr(kube, "get", fake.get)
    monkeypatch.setattr(kube, "create", fake.create)
    monkeypatch.setattr(cluster, "apply", fake.apply)
    for module in (router, service):  # wherever a provider calls apply, it is the fake's
        monkeypatch.setattr(module, "apply", fake.apply, raising=False)
    return fake


def selector(api: VersionedApi) -> dict[str, str]:
    return api.objects[("Service", "churn")]["spec"]["selector"]


async def test_a_service_switch_onto_a_service_written_since_it_was_read_is_refused(api):
    api.store(objects.entry_service(REF, service.selector_for("churn", {"v1": 100})))
    api.written_after_read = "churn"
    with pytest.raises(kube.Conflict):
        await service.ServiceProvider(REF).set_weights({"v2": 100}, None)
    assert selector(api)[objects.LABEL_VERSION] == "v1"
    assert api.objects[("Service", "churn")]["metadata"]["labels"] == {"written-by": "the-new-leader"}


async def test_a_service_switch_onto_the_service_as_read_lands(api):
    api.store(objects.entry_service(REF, service.selector_for("churn", {"v1": 100})))
    assert await service.ServiceProvider(REF).set_weights({"v2": 100}, None) is True
    assert selector(api)[objects.LABEL_VERSION] == "v2"


def router_provider() -> router.RouterProvider:
    return router.RouterProvider(REF, "churn", Settings.from_env())


async def test_router_weights_onto_a_configmap_written_since_it_was_read_are_refused(api):
    provider = router_provider()
    await provider.ensure()
    assert await provider.set_weights({"v1": 100}, None) is True
    api.written_after_read = objects.router_name("churn")
    with pytest.raises(kube.Conflict):
        await provider.set_weights({"v1": 50, "v2": 50}, None)
    assert await provider.get_weights() == {"v1": 100}


@pytest.mark.parametrize(
    "name", [objects.router_name("churn"), "churn"], ids=["router-deployment", "entry-service"]
)
async def test_the_router_objects_are_applied_onto_the_versions_read(api, name):
    provider = router_provider()
    await provider.ensure()
    api.written_after_read = name
    with pytest.raises(kube.Conflict):
        await provider.ensure()
    api.written_after_read = None
    await provider.ensure()  # observed again: lands
