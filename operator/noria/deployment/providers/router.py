"""Provider ``router``: Noria's own router Deployment per Rollout, configured through a ConfigMap.

The router (``python -m noria_server route --configmap <ns>/<rollout>-router``) watches the
ConfigMap and each backend's EndpointSlices and applies new weights within a second; it is the one
provider that can mirror a share of requests and compare the shadow's answers row by row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from noria import kube
from noria.deployment import objects
from noria.deployment.cluster import apply
from noria.settings import Settings


class RouterProvider:
    name = "router"

    def __init__(self, ref: objects.RolloutRef, model: str, settings: Settings) -> None:
        self.ref = ref
        self.model = model
        self.settings = settings

    async def ensure(self) -> None:
        for obj in objects.router_rbac(self.ref):
            await apply(obj)
        # The ConfigMap is created empty once; after that only set_weights writes it.
        await kube.create(objects.router_configmap(
            self.ref, objects.router_config(self.model, self.ref.namespace, self.ref.name, {}, None)))
        await apply(objects.router_deployment(self.ref, self.settings))
        router_selector = {objects.LABEL_ROLLOUT: self.ref.name, objects.LABEL_COMPONENT: objects.COMPONENT_ROUTER}
        router_service = objects._service(self.ref, objects.router_name(self.ref.name), objects.router_labels(self.ref),
                                          router_selector, objects.ROUTER_PORT)
        await apply(router_service)
        await apply(objects.entry_service(self.ref, router_selector))

    async def _current(self) -> dict | None:
        cm = await kube.get("v1", "ConfigMap", objects.router_name(self.ref.name), self.ref.namespace)
        if cm is None:
            return None
        try:
            return json.loads((cm.get("data") or {}).get(objects.CONFIG_KEY, "null"))
        except ValueError:
            return None

    async def set_weights(self, weights: Mapping[str, int], mirror: tuple[str, int] | None) -> bool:
        desired = objects.router_config(self.model, self.ref.namespace, self.ref.name, weights, mirror)
        if await self._current() == desired:
            return False
        await apply(objects.router_configmap(self.ref, desired))
        return True

    async def get_weights(self) -> dict[str, int] | None:
        config = await self._current()
        if not config:
            return None
        return {b["version"]: int(b["weight"]) for b in config.get("backends") or []}

    async def finalize(self, stable: str) -> None:
        await self.set_weights({stable: 100}, None)
