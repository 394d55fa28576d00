"""API I/O the deployment handler needs beyond ``noria.kube``: server-side apply of whole manifests.

Server-side apply with one field manager makes every "create or bring to shape" step idempotent:
applying the same manifest twice changes nothing (no new resourceVersion), and fields another
manager owns (an HPA's replicas, a user's extra labels) are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from noria import kube

FIELD_MANAGER = "noria-rollouts"

# Gateway API (not in lightkube's models): registered here so kube.resource() finds it.
HTTPRoute = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")


async def apply(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    res = kube.resource(obj["apiVersion"], obj["kind"])
    out = await kube.client().patch(res, meta["name"], dict(obj), namespace=meta.get("namespace"),
                                    patch_type=PatchType.APPLY, field_manager=FIELD_MANAGER, force=True)
    return out.to_dict() if hasattr(out, "to_dict") else dict(out)


async def apply_onto(obj: Mapping[str, Any], observed: Mapping[str, Any] | None) -> dict[str, Any]:
    """Bring ``obj`` to shape onto the object the write was decided from: a server-side apply that
    carries ``observed``'s resourceVersion, so the API server refuses it (409, ``kube.Conflict``)
    if anyone wrote the object since it was read -- a concurrent writer, or the new leader while
    this replica was deposed. ``observed`` None (it did not exist) is a plain apply, which creates
    it: one field manager owns every field, so a later apply that drops a selector key removes it."""
    version = ((observed or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return await apply(kube.with_precondition(obj, version))
    except kube.HTTPError as exc:
        if version and kube.is_status(exc, 409):  # force=True: a 409 is never a field-manager conflict
            raise kube.Conflict(f"{obj['kind']} {obj['metadata']['name']} changed since resourceVersion "
                                f"{version}") from exc
        raise
