"""Small async Kubernetes I/O helpers on lightkube, shared by the training and deployment operators.

Everything here takes and returns plain dicts (the shape Kopf hands to handlers and the shape the
pure decision code builds), so the decision code never sees a client type. Each helper is one
idempotent step: ``get`` answers None for a missing object, ``create`` treats AlreadyExists as
"already done" and returns what is there, ``delete`` treats NotFound as done. Status is written
only through the ``/status`` subresource with a merge patch (strict CRD schemas prune anything
else), and lists inside a merge patch replace the whole list, so callers send complete lists.

Kinds are named by ``(apiVersion, kind)``; Noria's own kinds are registered below as lightkube
generic resources.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import CascadeType, PatchType

from noria import notify
from noria.api.common import format_timestamp
from noria.contracts import API_VERSION as API_VERSION  # re-exported: callers name kinds by kube.API_VERSION
from noria.contracts import GROUP, VERSION

log = logging.getLogger(__name__)

TrainingPipeline = create_namespaced_resource(GROUP, VERSION, "TrainingPipeline", "trainingpipelines")
ModelVersion = create_namespaced_resource(GROUP, VERSION, "ModelVersion", "modelversions")
Rollout = create_namespaced_resource(GROUP, VERSION, "Rollout", "rollouts")

FIELD_MANAGER = "noria-operator"

_client: AsyncClient | None = None


def client() -> AsyncClient:
    """One client per process; lightkube reads KUBECONFIG (or the in-cluster service account)."""
    global _client
    if _client is None:
        _client = AsyncClient(field_manager=FIELD_MANAGER, timeout=float(os.environ.get("NORIA_REQUEST_TIMEOUT", "30")))
    return _client


def set_client(new: AsyncClient | None) -> None:
    """Swap the process client (tests point it at a kmock server)."""
    global _client
    _client = new


def resource(api_version: str, kind: str) -> Any:
    """The lightkube resource class of ``(apiVersion, kind)``."""
    return resource_registry.load(api_version, kind)


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


# lightkube turns an error answer into ApiError only when its Content-Type is exactly
# application/json; anything else (a proxy, or "application/json; charset=utf-8") stays the plain
# HTTP error of the httpx flavour lightkube is built on. Both are handled by status code.
HTTPError = ApiError.__bases__[0]


def is_status(exc: Exception, code: int) -> bool:
    if isinstance(exc, ApiError) and getattr(exc.status, "code", None) is not None:
        return exc.status.code == code
    response = getattr(exc, "response", None)
    return response is not None and response.status_code == code


async def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    try:
        obj = await client().get(resource(api_version, kind), name, namespace=namespace)
    except HTTPError as exc:
        if is_status(exc, 404):
            return None
        raise
    return _as_dict(obj)


async def list_objects(api_version: str, kind: str, namespace: str | None = None,
                       labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    out = []
    async for obj in client().list(resource(api_version, kind), namespace=namespace or "*",
                                   labels=dict(labels) if labels else None):
        out.append(_as_dict(obj))
    return out


async def create(obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create ``obj``; if an object of that name exists, return it instead. ``(object, created)``."""
    meta = obj["metadata"]
    try:
        created = await client().create(codecs.from_dict(dict(obj)), namespace=meta.get("namespace"))
        return _as_dict(created), True
    except HTTPError as exc:
        if not is_status(exc, 409):
            raise
    existing = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    if existing is None:  # deleted between our create and get: a later pass creates it again
        raise RuntimeError(f"{obj['kind']} {meta['name']} exists and vanished while being read")
    return existing, False


class Conflict(Exception):
    """A write made with a ``resource_version`` precondition found the object changed since (HTTP 409).

    The caller decided from a stale read: it must re-observe, never retry the same write."""


def with_precondition(body: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
    """``body`` carrying ``metadata.resourceVersion``: the API server applies a merge patch that names
    a resourceVersion only if the object still has that version (optimistic concurrency), else 409."""
    out = dict(body)
    if resource_version:
        out["metadata"] = {**(body.get("metadata") or {}), "resourceVersion": resource_version}
    return out


async def _merge_patch(res: Any, name: str, namespace: str | None, body: Mapping[str, Any],
                       resource_version: str | None) -> dict[str, Any]:
    try:
        out = await client().patch(res, name, with_precondition(body, resource_version), namespace=namespace,
                                   patch_type=PatchType.MERGE)
    except HTTPError as exc:
        if resource_version and is_status(exc, 409):
            raise Conflict(f"{name} changed since resourceVersion {resource_version}") from exc
        raise
    return _as_dict(out)


async def patch(api_version: str, kind: str, name: str, namespace: str | None,
                body: Mapping[str, Any], resource_version: str | None = None) -> dict[str, Any]:
    """JSON merge patch of the object (metadata, spec, ...). With ``resource_version``, only if the
    object is still at that version (else ``Conflict``)."""
    return await _merge_patch(resource(api_version, kind), name, namespace, body, resource_version)


async def create_or_patch(obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create ``obj`` or bring an existing one to its labels, annotations and top-level fields (spec,
    data, ...) with a merge patch. ``(object, created)``."""
    current, created = await create(obj)
    if created:
        return current, True
    meta = obj["metadata"]
    desired: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    desired["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    if _is_subset(desired, current):
        return current, False
    return await patch(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), desired), False


def _is_subset(part: Any, whole: Any) -> bool:
    if isinstance(part, Mapping):
        return isinstance(whole, Mapping) and all(_is_subset(v, whole.get(k)) for k, v in part.items())
    return part == whole


async def patch_status(api_version: str, kind: str, name: str, namespace: str | None,
                       status: Mapping[str, Any], resource_version: str | None = None) -> dict[str, Any]:
    """Merge-patch ``status`` through the status subresource (``None`` values delete fields). With
    ``resource_version``, only if the object is still at that version (else ``Conflict``): this is
    how a writer that decided from a stale read -- or a deposed leader -- fails instead of landing."""
    return await _merge_patch(resource(api_version, kind).Status, name, namespace, {"status": dict(status)},
                              resource_version)


async def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete with background propagation (a Job takes its pods); NotFound counts as done."""
    try:
        await client().delete(resource(api_version, kind), name, namespace=namespace, cascade=CascadeType.BACKGROUND)
    except HTTPError as exc:
        if is_status(exc, 404):
            return False
        raise
    return True


def describe_error(exc: BaseException) -> str:
    """One line naming what failed, for a condition message: the API server's own words when it gave
    any (``422 Invalid: Deployment.apps "..." is invalid: metadata.name: ...``)."""
    if isinstance(exc, ApiError) and getattr(exc, "status", None) is not None:
        st = exc.status
        return f"{st.code} {st.reason or ''}: {st.message or exc}".replace(" :", ":")[:900]
    response = getattr(exc, "response", None)
    if response is not None:
        return f"{response.status_code}: {response.text[:300]}"
    return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:900]


def owner_reference(owner: Mapping[str, Any], controller: bool = True) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def event_manifest(involved: Mapping[str, Any], type_: str, reason: str, message: str,
                   component: str = FIELD_MANAGER, now: dt.datetime | None = None) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (what ``kubectl describe`` lists under Events)."""
    meta = involved["metadata"]
    stamp = format_timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": component,
    }


async def post_event(involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Best effort: an Event that cannot be posted is logged, never fails the reconcile. Its webhook
    notification (noria.notify) follows, queued, never waited for."""
    try:
        await create(event_manifest(involved, type_, reason, message))
    except (HTTPError, OSError) as exc:
        log.warning("could not post event %s on %s: %s", reason, involved["metadata"]["name"], exc)
    notify.publish(involved, type_, reason, message)
