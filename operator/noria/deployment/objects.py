"""Kubernetes manifests for what a Rollout runs: per-version model servers, the router, the Services.

Pure functions of (rollout, spec, ModelVersion, settings) with deterministic names, applied with
server-side apply so a re-run after a crash changes nothing. Security: model-server pods run under
the ``restricted`` Pod Security profile with no service-account token (they never talk to the API);
the router gets a token only for a Role that reads its own ConfigMap and EndpointSlices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria import objectstore
from noria.api.common import S3Access, parse_duration
from noria.api.rollout import OnlineFeast
from noria.contracts import (
    API_VERSION,
    COMPONENT_ROUTER,
    COMPONENT_SERVER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_PIPELINE,
    LABEL_ROLLOUT,
    LABEL_VERSION,
    MANAGED_BY,
    POD_USER_ID,
)
from noria.deployment.spec import SecretKeyRef
from noria.router_config import CONFIG_KEY, Backend, RouterConfig
from noria.settings import Settings

FEEDBACK_TOKEN_ENV: Final = "NORIA_FEEDBACK_TOKEN"  # read by noria_server.bearer
# spec.onlineFeatures.feast as the model server reads it (noria_server.__main__, noria_server.online)
FEAST_URL_ENV: Final = "NORIA_FEAST_URL"
FEAST_FEATURE_SERVICE_ENV: Final = "NORIA_FEAST_FEATURE_SERVICE"
FEAST_FEATURES_ENV: Final = "NORIA_FEAST_FEATURES"
FEAST_ENTITY_KEYS_ENV: Final = "NORIA_FEAST_ENTITY_KEYS"
FEAST_TIMEOUT_MS_ENV: Final = "NORIA_FEAST_TIMEOUT_MS"
FEAST_ON_MISSING_ENV: Final = "NORIA_FEAST_ON_MISSING"
FEAST_FEEDBACK_PUSH_SOURCE_ENV: Final = "NORIA_FEAST_FEEDBACK_PUSH_SOURCE"
SERVER_CONTAINER: Final = "server"
# Where a server that refuses its artifact writes why (JSON, reason ArtifactVerificationFailed); the
# kubelet copies it into the pod's containerStatuses, where the operator reads it.
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
SERVER_PORT: Final = 8080
ROUTER_PORT: Final = 8080
FIELD_MANAGER: Final = "noria"

DEFAULT_SERVER_RESOURCES: Final = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
DEFAULT_ROUTER_RESOURCES: Final = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


@dataclass(frozen=True)
class RolloutRef:
    name: str
    namespace: str
    uid: str
    api_version: str = API_VERSION
    kind: str = "Rollout"

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def version_object_name(rollout: str, version: str) -> str:
    """``<rollout>-<version>``: the Deployment and Service serving one ModelVersion."""
    return f"{rollout}-{version}"


def router_name(rollout: str) -> str:
    return f"{rollout}-router"


def preview_service_name(rollout: str) -> str:
    return f"{rollout}-preview"


def _meta(ref: RolloutRef, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ref.namespace, "labels": dict(labels),
            "ownerReferences": [ref.owner_reference()]}


def version_labels(ref: RolloutRef, pipeline: str, version: str) -> dict[str, str]:
    return {LABEL_ROLLOUT: ref.name, LABEL_VERSION: version, LABEL_PIPELINE: pipeline,
            LABEL_COMPONENT: COMPONENT_SERVER, LABEL_MANAGED_BY: MANAGED_BY}


def router_labels(ref: RolloutRef) -> dict[str, str]:
    return {LABEL_ROLLOUT: ref.name, LABEL_COMPONENT: COMPONENT_ROUTER, LABEL_MANAGED_BY: MANAGED_BY}


def _restricted_container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _restricted_pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": POD_USER_ID, "runAsGroup": POD_USER_ID, "fsGroup": POD_USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def feedback_token_env(token: SecretKeyRef | None) -> list[dict[str, Any]]:
    """The feedback token as the kubelet resolves it: never a value in the manifest, so it is not in
    the Deployment, a ConfigMap or the operator's memory, and the operator needs no right to read
    Secrets. Not optional: a pod whose Secret or key is missing stays in CreateContainerConfigError
    rather than serving feedback without the token that was asked for."""
    if token is None:
        return []
    return [{"name": FEEDBACK_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}]


def online_features_env(feast: OnlineFeast | None) -> list[dict[str, Any]]:
    """spec.onlineFeatures.feast for the model server: nothing when unset (requests carry features)."""
    if feast is None:
        return []
    timeout_ms = parse_duration(feast.timeout).total_seconds() * 1000
    selector = ({"name": FEAST_FEATURE_SERVICE_ENV, "value": feast.feature_service}
                if feast.feature_service is not None else
                {"name": FEAST_FEATURES_ENV, "value": ",".join(feast.features or [])})
    return [
        {"name": FEAST_URL_ENV, "value": feast.url},
        selector,
        {"name": FEAST_ENTITY_KEYS_ENV, "value": ",".join(feast.entity_keys)},
        {"name": FEAST_TIMEOUT_MS_ENV, "value": f"{timeout_ms:g}"},
        {"name": FEAST_ON_MISSING_ENV, "value": feast.on_missing},
        *([{"name": FEAST_FEEDBACK_PUSH_SOURCE_ENV, "value": feast.feedback_push_source}]
          if feast.feedback_push_source else []),
    ]


def server_env(ref: RolloutRef, model_version: Mapping[str, Any], settings: Settings,
               prediction_log: bool, feedback_token: SecretKeyRef | None = None,
               store_access: S3Access | None = None, online_features: OnlineFeast | None = None,
               ) -> list[dict[str, Any]]:
    spec = model_version.get("spec") or {}
    artifact = spec.get("artifact") or {}
    name = model_version["metadata"]["name"]
    pipeline = spec.get("pipeline", "")
    return [
        {"name": "NORIA_ARTIFACT_URI", "value": str(artifact.get("uri", ""))},
        {"name": "NORIA_DIGEST", "value": str(artifact.get("digest", ""))},
        {"name": "NORIA_PROFILE_URI", "value": str(spec.get("profileUri") or "")},
        {"name": "NORIA_MODEL", "value": pipeline},
        {"name": "NORIA_VERSION", "value": name},
        _field_env("NORIA_HOST", "status.podIP"),
        {"name": "NORIA_PORT", "value": str(SERVER_PORT)},
        {"name": "NORIA_STORE_ROOT", "value": settings.store_root},
        {"name": "NORIA_NAMESPACE", "value": ref.namespace},
        {"name": "NORIA_PIPELINE", "value": pipeline},
        _field_env("POD_NAME", "metadata.name"),
        {"name": "NORIA_PREDICTION_LOG", "value": "on" if prediction_log else "off"},
        {"name": "NORIA_TERMINATION_LOG", "value": TERMINATION_MESSAGE_PATH},
        *feedback_token_env(feedback_token),
        *s3_env(settings, store_access),
        *online_features_env(online_features),
    ]


def s3_env(settings: Settings, store_access: S3Access | None) -> list[dict[str, Any]]:
    """How the server reaches an s3:// store or an s3:// artifact (the Rollout's spec.store.s3, else
    the operator's endpoint and region); nothing for a file:// store without spec.store."""
    if store_access is None and not objectstore.is_s3(settings.store_root):
        return []
    return objectstore.pod_env(store_access, settings.s3_endpoint, settings.s3_region)


def _store_volumes(ref: RolloutRef, pipeline: str, settings: Settings,
                   prediction_log: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(mounts, volumes) of the store claim: the artifacts read-only, this pipeline's logs
    writable. None on an s3:// store, which the server reaches over the network."""
    if objectstore.is_s3(settings.store_root):
        return [], []
    mount = settings.store_mount_path.rstrip("/")
    mounts: list[dict[str, Any]] = [{"name": "store", "mountPath": mount, "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "store", "persistentVolumeClaim": {"claimName": settings.store_pvc, "readOnly": True}},
    ]
    if prediction_log:
        for kind in ("predictions", "feedback"):
            sub = f"{ref.namespace}/{pipeline}/{kind}"
            mounts.append({"name": "store-logs", "mountPath": f"{mount}/{sub}", "subPath": sub})
        volumes.append({"name": "store-logs", "persistentVolumeClaim": {"claimName": settings.store_pvc}})
    return mounts, volumes


def version_deployment(ref: RolloutRef, model_version: Mapping[str, Any], replicas: int, settings: Settings,
                       resources: Mapping[str, Any] | None = None, prediction_log: bool = True,
                       feedback_token: SecretKeyRef | None = None,
                       store_access: S3Access | None = None, online_features: OnlineFeast | None = None,
                       ) -> dict[str, Any]:
    """The model-server Deployment ``<rollout>-<version>``."""
    version = model_version["metadata"]["name"]
    pipeline = (model_version.get("spec") or {}).get("pipeline", "")
    labels = version_labels(ref, pipeline, version)
    store_mounts, store_volumes = _store_volumes(ref, pipeline, settings, prediction_log)
    mounts = [*store_mounts, {"name": "tmp", "mountPath": "/tmp"}]
    volumes = [*store_volumes, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    probe_port = "http"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ref, version_object_name(ref.name, version), labels),
        "spec": {
            "replicas": int(replicas),
            "selector": {"matchLabels": {LABEL_ROLLOUT: ref.name, LABEL_VERSION: version}},
            # Never fewer ready pods than asked while a Deployment rolls its own pods.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": _restricted_pod_security(),
                    "containers": [{
                        "name": SERVER_CONTAINER,
                        "image": settings.server_image,
                        "command": ["python", "-m", "noria_server", "serve"],
                        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
                        "env": server_env(ref, model_version, settings, prediction_log, feedback_token,
                                          store_access, online_features),
                        # Tolerant readiness: a pod dropped from endpoints by one slow probe (a busy
                        # node) would reset in-flight connections; real unreadiness lasts longer.
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": probe_port},
                                           "periodSeconds": 2, "failureThreshold": 3, "timeoutSeconds": 3},
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": probe_port},
                                          "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
                        "resources": dict(resources or DEFAULT_SERVER_RESOURCES),
                        "securityContext": _restricted_container_security(),
                        "volumeMounts": mounts,
                        # A crash without a message leaves its log tail instead, for `kubectl describe`;
                        # only a JSON refusal in the file counts as ArtifactVerificationFailed.
                        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(ref: RolloutRef, name: str, labels: Mapping[str, str], selector: Mapping[str, str],
             port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ref, name, labels),
        "spec": {"type": "ClusterIP", "selector": dict(selector),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }


def version_service(ref: RolloutRef, pipeline: str, version: str) -> dict[str, Any]:
    """The Service ``<rollout>-<version>``: the router's backend for that version."""
    return _service(ref, version_object_name(ref.name, version), version_labels(ref, pipeline, version),
                    {LABEL_ROLLOUT: ref.name, LABEL_VERSION: version}, SERVER_PORT)


def entry_service(ref: RolloutRef, selector: Mapping[str, str]) -> dict[str, Any]:
    """The stable entry point ``<rollout>``: users call this one, whatever the provider."""
    labels = {LABEL_ROLLOUT: ref.name, LABEL_MANAGED_BY: MANAGED_BY}
    return _service(ref, ref.name, labels, selector, SERVER_PORT)


def preview_service(ref: RolloutRef, pipeline: str, version: str) -> dict[str, Any]:
    """``<rollout>-preview``: reaches the blue-green candidate before the switch."""
    labels = {LABEL_ROLLOUT: ref.name, LABEL_MANAGED_BY: MANAGED_BY}
    return _service(ref, preview_service_name(ref.name), labels, {LABEL_ROLLOUT: ref.name, LABEL_VERSION: version},
                    SERVER_PORT)


def router_config(model: str, namespace: str, rollout: str, weights: Mapping[str, int],
                  shadow: tuple[str, int] | None) -> dict[str, Any]:
    """The router's config.json (noria.router_config, contract in docs/contracts.md). Backends in a
    stable order, so an unchanged split is an unchanged ConfigMap."""
    backends = tuple(Backend(v, version_object_name(rollout, v), SERVER_PORT, weight=int(w))
                     for v, w in sorted(weights.items()))
    mirrored = None
    if shadow is not None:
        mirrored = Backend(shadow[0], version_object_name(rollout, shadow[0]), SERVER_PORT,
                           mirror_percent=float(int(shadow[1])))
    return RouterConfig(model, namespace, backends, mirrored).to_json()


def router_configmap(ref: RolloutRef, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ref, router_name(ref.name), router_labels(ref)),
        "data": {CONFIG_KEY: json.dumps(config, sort_keys=True, separators=(",", ":"))},
    }


def router_rbac(ref: RolloutRef) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding: the router reads its ConfigMap, and the EndpointSlices,
    Services and Pods of its namespace (noria_server.discovery: Pods behind a Service's selector
    are its backends where the slices have no endpoint), nothing else."""
    name = router_name(ref.name)
    labels = router_labels(ref)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ref, name, labels)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(ref, name, labels),
         "rules": [
             {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(ref, name, labels),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}]},
    ]


def router_deployment(ref: RolloutRef, settings: Settings, replicas: int = 1,
                      resources: Mapping[str, Any] | None = None,
                      feedback_token: SecretKeyRef | None = None) -> dict[str, Any]:
    name = router_name(ref.name)
    labels = router_labels(ref)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ref, name, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_ROLLOUT: ref.name, LABEL_COMPONENT: COMPONENT_ROUTER}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "enableServiceLinks": False,
                    "securityContext": _restricted_pod_security(),
                    "containers": [{
                        "name": "router",
                        "image": settings.server_image,
                        "command": ["python", "-m", "noria_server", "route",
                                    "--configmap", f"{ref.namespace}/{name}"],
                        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
                        "env": [_field_env("NORIA_HOST", "status.podIP"),
                                {"name": "NORIA_PORT", "value": str(ROUTER_PORT)},
                                _field_env("POD_NAME", "metadata.name"),
                                *feedback_token_env(feedback_token)],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                                           "periodSeconds": 2, "failureThreshold": 3, "timeoutSeconds": 3},
                        "resources": dict(resources or DEFAULT_ROUTER_RESOURCES),
                        "securityContext": _restricted_container_security(),
                    }],
                },
            },
        },
    }
