"""Provider ``service``: no proxy at all, only the entry Service's selector and pod counts.

Blue-green and full switches move the selector of ``<rollout>`` from one version's pods to the
other's (atomic: one object update). A canary split selects both versions' pods and approximates
the weight by their ratio, so its precision is bounded by the replica count. Mirroring is
impossible: a shadow strategy with this provider is refused by the API server (CRD rule) and here.
"""

from __future__ import annotations

from collections.abc import Mapping

from noria import kube
from noria.deployment import objects
from noria.deployment.cluster import apply_onto
from noria.deployment.providers.base import TrafficProviderError


def selector_for(rollout: str, weights: Mapping[str, int]) -> dict[str, str]:
    full = [v for v, w in weights.items() if w >= 100]
    if full:
        return {objects.LABEL_ROLLOUT: rollout, objects.LABEL_VERSION: full[0]}
    live = [v for v, w in weights.items() if w > 0]
    if len(live) == 1:
        return {objects.LABEL_ROLLOUT: rollout, objects.LABEL_VERSION: live[0]}
    return {objects.LABEL_ROLLOUT: rollout, objects.LABEL_COMPONENT: objects.COMPONENT_SERVER}


class ServiceProvider:
    name = "service"

    def __init__(self, ref: objects.RolloutRef) -> None:
        self.ref = ref

    async def ensure(self) -> None:
        return None

    async def set_weights(self, weights: Mapping[str, int], mirror: tuple[str, int] | None) -> bool:
        if mirror is not None:
            raise TrafficProviderError("provider service cannot mirror requests; use router or gatewayAPI")
        if not weights:
            return False
        selector = selector_for(self.ref.name, weights)
        current = await kube.get("v1", "Service", self.ref.name, self.ref.namespace)
        if current is not None and (current.get("spec") or {}).get("selector") == selector:
            return False
        await apply_onto(objects.entry_service(self.ref, selector), current)  # conditional on the Service read
        return True

    async def get_weights(self) -> dict[str, int] | None:
        current = await kube.get("v1", "Service", self.ref.name, self.ref.namespace)
        if current is None:
            return None
        version = ((current.get("spec") or {}).get("selector") or {}).get(objects.LABEL_VERSION)
        return {version: 100} if version else None

    async def finalize(self, stable: str | None) -> None:
        """Nothing outside the Rollout: the entry Service is owned by the Rollout and goes with it."""
        return None
