"""Provider ``gatewayAPI``: weights and a RequestMirror filter on a user's HTTPRoute.

The HTTPRoute is the user's (it names the Gateway, hostnames and matches); the operator owns only
each rule's ``backendRefs`` and its RequestMirror filter, and leaves every other filter in place.
Any Gateway API implementation (Envoy Gateway, Istio, Cilium, ...) then carries out the split.

Before its first change to a route the provider records the backendRefs it replaces in the route's
annotation ``noria.dev/original-backends`` (in the same patch, so no change is ever unrecorded), and
``finalize`` (the Rollout is deleted) puts them back: the Services it pointed at go with the Rollout,
so leaving the route on them would send users to nothing. A route adopted without a record (or whose
rules changed in number since) keeps only the user's own backendRefs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from noria import kube
from noria.contracts import ANNOTATION_ORIGINAL_BACKENDS
from noria.deployment import objects
from noria.deployment.cluster import HTTPRoute  # noqa: F401  (registers the kind with lightkube)
from noria.deployment.providers.base import TrafficProviderError

API_VERSION = "gateway.networking.k8s.io/v1"
MIRROR = "RequestMirror"


def _ours(ref: Mapping[str, Any], rollout: str) -> bool:
    return str(ref.get("name", "")).startswith(f"{rollout}-") and ref.get("kind", "Service") == "Service"


def original_backends(rules: list[dict[str, Any]], rollout: str) -> list[list[dict[str, Any]]]:
    """Each rule's backendRefs that are not the operator's: what a route goes back to."""
    return [[r for r in rule.get("backendRefs") or [] if not _ours(r, rollout)] for rule in rules]


def restored_rules(rules: list[dict[str, Any]], rollout: str, recorded: Any) -> list[dict[str, Any]]:
    """The route's rules without the operator's backendRefs and mirror filter, with the recorded
    backendRefs back (when the record fits the rules)."""
    fits = isinstance(recorded, list) and len(recorded) == len(rules) and all(isinstance(r, list) for r in recorded)
    out = []
    for i, rule in enumerate(rules):
        refs = recorded[i] if fits else [r for r in rule.get("backendRefs") or [] if not _ours(r, rollout)]
        out.append(_rule_with(rule, refs, _users_filters(rule)))
    return out


def _users_filters(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rule's filters without the operator's mirror."""
    return [f for f in rule.get("filters") or [] if f.get("type") != MIRROR]


def _rule_with(rule: Mapping[str, Any], refs: list[Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    """``rule`` with these backendRefs and filters (no empty ``filters`` list); other fields untouched."""
    new = {k: v for k, v in rule.items() if k != "filters"}
    new["backendRefs"] = refs
    if filters:
        new["filters"] = filters
    return new


def desired_rules(rules: list[dict[str, Any]], rollout: str, weights: Mapping[str, int],
                  mirror: tuple[str, int] | None) -> list[dict[str, Any]]:
    """Every rule of the route with our backendRefs and mirror filter; other fields untouched."""
    refs = [{"group": "", "kind": "Service", "name": objects.version_object_name(rollout, v),
             "port": objects.SERVER_PORT, "weight": int(w)} for v, w in sorted(weights.items())]
    out = []
    for rule in rules or [{}]:
        filters = _users_filters(rule)
        if mirror is not None:
            filters.append({"type": MIRROR, "requestMirror": {
                "backendRef": {"group": "", "kind": "Service", "name": objects.version_object_name(rollout, mirror[0]),
                               "port": objects.SERVER_PORT},
                "percent": int(mirror[1])}})
        out.append(_rule_with(rule, refs, filters))
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
        body: dict[str, Any] = {"spec": {"rules": desired}}
        annotations = (route.get("metadata") or {}).get("annotations") or {}
        if ANNOTATION_ORIGINAL_BACKENDS not in annotations:
            body["metadata"] = {"annotations": {ANNOTATION_ORIGINAL_BACKENDS: json.dumps(
                original_backends(rules, self.ref.name), separators=(",", ":"))}}
        # Conditional on the route as read: a user's edit in between is never overwritten.
        await kube.patch(API_VERSION, "HTTPRoute", self.http_route, self.ref.namespace, body,
                         resource_version=(route.get("metadata") or {}).get("resourceVersion"))
        return True

    async def get_weights(self) -> dict[str, int] | None:
        return weights_of(await self._route(), self.ref.name)

    async def finalize(self, stable: str | None) -> None:
        """Give the route back as it was before the operator's first change (module docstring)."""
        route = await kube.get(API_VERSION, "HTTPRoute", self.http_route, self.ref.namespace)
        if route is None:
            return  # the user deleted it: nothing to restore
        meta = route.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        rules = (route.get("spec") or {}).get("rules") or []
        try:
            recorded = json.loads(annotations[ANNOTATION_ORIGINAL_BACKENDS])
        except (KeyError, ValueError):
            recorded = None
        restored = restored_rules(rules, self.ref.name, recorded)
        if restored == rules and ANNOTATION_ORIGINAL_BACKENDS not in annotations:
            return
        await kube.patch(API_VERSION, "HTTPRoute", self.http_route, self.ref.namespace,
                         {"metadata": {"annotations": {ANNOTATION_ORIGINAL_BACKENDS: None}},
                          "spec": {"rules": restored}},
                         resource_version=meta.get("resourceVersion"))
