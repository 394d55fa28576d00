"""Provider ``gatewayAPI``: weights and a RequestMirror filter on a user's HTTPRoute.

The HTTPRoute is the user's (it names the Gateway, hostnames and matches); the operator owns only
each rule's ``backendRefs`` and its RequestMirror filter, and leaves every other filter in place.
Any Gateway API implementation (Envoy Gateway, Istio, Cilium, ...) then carries out the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noria import kube
from noria.deployment import objects
from noria.deployment.cluster import HTTPRoute  # noqa: F401  (registers the kind with lightkube)
from noria.deployment.providers.base import TrafficProviderError

API_VERSION = "gateway.networking.k8s.io/v1"
MIRROR = "RequestMirror"


def desired_rules(rules: list[dict[str, Any]], rollout: str, weights: Mapping[str, int],
                  mirror: tuple[str, int] | None) -> list[dict[str, Any]]:
    """Every rule of the route with our backendRefs and mirror filter; other fields untouched."""
    refs = [{"group": "", "kind": "Service", "name": objects.version_object_name(rollout, v),
             "port": objects.SERVER_PORT, "weight": int(w)} for v, w in sorted(weights.items())]
    out = []
    for rule in rules or [{}]:
        new = dict(rule)
        new["backendRefs"] = refs
        filters = [f for f in rule.get("filters") or [] if f.get("type") != MIRROR]
        if mirror is not None:
            filters.append({"type": MIRROR, "requestMirror": {
                "backendRef": {"group": "", "kind": "Service", "name": objects.version_object_name(rollout, mirror[0]),
                               "port": objects.SERVER_PORT},
                "percent": int(mirror[1])}})
        if filters:
            new["filters"] = filters
        else:
            new.pop("filters", None)
        out.append(new)
    return out


def weights_of(route: Mapping[str, Any], rollout: str) -> dict[str, int]:
    prefix = f"{rollout}-"
    rules = (route.get("spec") or {}).get("rules") or []
    refs = (rules[0].get("backendRefs") or []) if rules else []
    return {r["name"][len(prefix):]: int(r.get("weight", 1)) for r in refs if r.get("name", "").startswith(prefix)}


def mirror_of(route: Mapping[str, Any], rollout: str) -> tuple[str, int] | None:
    rules = (route.get("spec") or {}).get("rules") or []
    for f in (rules[0].get("filters") or []) if rules else []:
        if f.get("type") == MIRROR:
            ref = f["requestMirror"]["backendRef"]["name"]
            return ref[len(rollout) + 1:], int(f["requestMirror"].get("percent", 100))
    return None


class GatewayAPIProvider:
    name = "gatewayAPI"

    def __init__(self, ref: objects.RolloutRef, http_route: str) -> None:
        self.ref = ref
        self.http_route = http_route

    async def _route(self) -> dict[str, Any]:
        route = await kube.get(API_VERSION, "HTTPRoute", self.http_route, self.ref.namespace)
        if route is None:
            raise TrafficProviderError(f"HTTPRoute {self.ref.namespace}/{self.http_route} (spec.traffic.gatewayAPI."
                                       "httpRoute) does not exist; create it with a parentRef to your Gateway")
        return route

    async def ensure(self) -> None:
        await self._route()

    async def set_weights(self, weights: Mapping[str, int], mirror: tuple[str, int] | None) -> bool:
        if not weights:
            return False
        route = await self._route()
        rules = (route.get("spec") or {}).get("rules") or []
        desired = desired_rules(rules, self.ref.name, weights, mirror)
        if desired == rules:
            return False
        await kube.patch(API_VERSION, "HTTPRoute", self.http_route, self.ref.namespace, {"spec": {"rules": desired}})
        return True

    async def get_weights(self) -> dict[str, int] | None:
        return weights_of(await self._route(), self.ref.name)

    async def finalize(self, stable: str) -> None:
        await self.set_weights({stable: 100}, None)
