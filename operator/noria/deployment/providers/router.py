"""Provider ``router``: Noria's own router Deployment per Rollout, configured through a ConfigMap.

The router (``python -m noria_server route --configmap <ns>/<rollout>-router``) watches the
ConfigMap and each backend's EndpointSlices and applies new weights within a second; it is the one
provider that can mirror a share of requests and compare the shadow's answers row by row.

``NORIA_ROUTER_BACKEND_URLS=clusterIP`` makes the operator also write each backend's ``url`` as its
Service's ClusterIP: for clusters where EndpointSlices cannot be read (the test bed, whose apiserver
refuses loopback endpoint addresses and whose node agent proxies ClusterIPs instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from noria import kube
from noria.deployment import objects
from noria.deployment.cluster import apply, apply_onto
from noria.deployment.spec import SecretKeyRef
from noria.settings import Settings

_CLUSTER_IPS: dict[tuple[str, str], str] = {}  # a Service's ClusterIP never changes while it exists


def forget_service(namespace: str, name: str) -> None:
    """Drop a cached ClusterIP when its Service is deleted (a re-created one gets a new address)."""
    _CLUSTER_IPS.pop((namespace, name), None)


class RouterProvider:
    name = "router"

    def __init__(self, ref: objects.RolloutRef, model: str, settings: Settings,
                 feedback_token: SecretKeyRef | None = None) -> None:
        self.ref = ref
        self.model = model
        self.settings = settings
        self.feedback_token = feedback_token

    async def ensure(self) -> None:
        for obj in objects.router_rbac(self.ref):  # the same for every Rollout: nothing decided from a read
            await apply(obj)
        # The ConfigMap is created empty once; after that only set_weights writes it.
        await kube.create(objects.router_configmap(
            self.ref, objects.router_config(self.model, self.ref.namespace, self.ref.name, {}, None)))
        router_selector = {objects.LABEL_ROLLOUT: self.ref.name, objects.LABEL_COMPONENT: objects.COMPONENT_ROUTER}
        router_service = objects._service(self.ref, objects.router_name(self.ref.name), objects.router_labels(self.ref),
                                          router_selector, objects.ROUTER_PORT)
        for obj in (objects.router_deployment(self.ref, self.settings, feedback_token=self.feedback_token),
                    router_service, objects.entry_service(self.ref, router_selector)):
            await apply_onto(obj, await kube.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"],
                                                 self.ref.namespace))

    async def _configmap(self) -> dict | None:
        return await kube.get("v1", "ConfigMap", objects.router_name(self.ref.name), self.ref.namespace)

    @staticmethod
    def _config_of(cm: dict | None) -> dict | None:
        if cm is None:
            return None
        try:
            return json.loads((cm.get("data") or {}).get(objects.CONFIG_KEY, "null"))
        except ValueError:
            return None

    async def _cluster_ip_url(self, version: str) -> str | None:
        name = objects.version_object_name(self.ref.name, version)
        key = (self.ref.namespace, name)
        if key not in _CLUSTER_IPS:
            service = await kube.get("v1", "Service", name, self.ref.namespace)
            ip = ((service or {}).get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                return None
            _CLUSTER_IPS[key] = f"http://{ip}:{objects.SERVER_PORT}"
        return _CLUSTER_IPS[key]

    async def set_weights(self, weights: Mapping[str, int], mirror: tuple[str, int] | None) -> bool:
        desired = objects.router_config(self.model, self.ref.namespace, self.ref.name, weights, mirror)
        if os.environ.get("NORIA_ROUTER_BACKEND_URLS", "").lower() == "clusterip":
            for backend in [*desired["backends"], *([desired["shadow"]] if desired["shadow"] else [])]:
                backend["url"] = await self._cluster_ip_url(backend["version"])
        cm = await self._configmap()
        if self._config_of(cm) == desired:
            return False
        await apply_onto(objects.router_configmap(self.ref, desired), cm)  # conditional on the ConfigMap read
        return True

    async def get_weights(self) -> dict[str, int] | None:
        config = self._config_of(await self._configmap())
        if not config:
            return None
        return {b["version"]: int(b["weight"]) for b in config.get("backends") or []}

    async def finalize(self, stable: str | None) -> None:
        """Nothing outside the Rollout: the router, its ConfigMap, RBAC and Services are owned by the
        Rollout and go with it (garbage collection)."""
        return None
