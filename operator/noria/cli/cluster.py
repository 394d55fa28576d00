"""The CLI's only Kubernetes I/O: kubeconfig and context as kubectl reads them, reads, merge patches, and
who the API server says the caller is.

It uses lightkube, the client the operator uses (``noria.kube``), and its resource classes for
Noria's kinds, so there is one client stack; but synchronously, since a command makes a handful of
requests and exits. Objects come back as plain dicts, the shape the pure views and actions take.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client, KubeConfig
from lightkube.config.kubeconfig import DEFAULT_KUBECONFIG
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.resources.authentication_v1 import SelfSubjectReview
from lightkube.types import PatchType

from noria import kube
from noria.api import resources

FIELD_MANAGER = "kubectl-noria"  # how the CLI's writes show in managedFields

# Kind -> the name kubectl takes (plural.group). Noria's come from the CRD registry, as the CRDs do.
RESOURCE_NAMES: Mapping[str, str] = {
    **{kind.kind: kind.crd_name for kind in resources.KINDS},
    "Deployment": "deployments.apps",
    "Pod": "pods",
    "Job": "jobs.batch",
}


class CliError(Exception):
    """A failure to tell the person in one message (no traceback); exit status 1."""


class Conflict(CliError):
    """A write refused with 409: the object changed since the read the write was decided from."""


@dataclass(frozen=True)
class Target:
    """Where commands go: the kubeconfig context and the namespace (-n, else the context's)."""

    config: Any  # lightkube SingleConfig
    namespace: str
    context: str


def _merged_kubeconfig(paths: list[Path]) -> KubeConfig:
    """kubectl's rule for KUBECONFIG=a:b: the first file to define a name wins, and the first
    current-context set wins."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": [], "current-context": None}
    seen: dict[str, set[str]] = {"clusters": set(), "contexts": set(), "users": set()}
    for path in paths:
        if not path.is_file():
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for key in ("clusters", "contexts", "users"):
            for entry in data.get(key) or []:
                if entry.get("name") not in seen[key]:
                    seen[key].add(entry.get("name"))
                    merged[key].append(entry)
        merged["current-context"] = merged["current-context"] or data.get("current-context")
    found = [p for p in paths if p.is_file()]
    if not found:
        raise CliError(f"no kubeconfig found at {':'.join(map(str, paths))}: give --kubeconfig or set KUBECONFIG")
    return KubeConfig.from_dict(merged, fname=found[0])


def load_target(kubeconfig: str | None, context: str | None, namespace: str | None) -> Target:
    """The kubeconfig as kubectl picks it: --kubeconfig, else $KUBECONFIG (a list, merged), else
    ~/.kube/config, else the in-cluster service account."""
    try:
        if kubeconfig:
            config = KubeConfig.from_file(kubeconfig)
        elif os.environ.get("KUBECONFIG"):
            config = _merged_kubeconfig([Path(p).expanduser() for p in os.environ["KUBECONFIG"].split(os.pathsep) if p])
        elif Path(DEFAULT_KUBECONFIG).expanduser().is_file():
            config = KubeConfig.from_file(DEFAULT_KUBECONFIG)
        else:
            config = KubeConfig.from_service_account()
        single = config.get(context_name=context)
        if single is None:
            raise ConfigError("no current context: give --context")
    except ConfigError as exc:
        raise CliError(f"kubeconfig: {exc}") from exc
    except (OSError, KeyError) as exc:
        raise CliError(f"kubeconfig: cannot read it ({exc}); give --kubeconfig or set KUBECONFIG") from exc
    return Target(single, namespace or single.namespace, single.context_name)


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def explain(exc: Exception, what: str) -> CliError:
    """An API error in the server's own words, with what the CLI was doing."""
    status = getattr(exc, "status", None)
    code = getattr(status, "code", None)
    message = getattr(status, "message", None) or str(exc)
    if code == 404:
        return CliError(f"{what}: not found")
    if code == 403:
        return CliError(f"{what}: forbidden: {message}")
    return CliError(f"{what}: {message}")


class Cluster:
    """One API server, one namespace. Every method raises CliError with what it was doing."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.namespace = target.namespace
        try:
            self.client = Client(config=target.config, namespace=target.namespace, field_manager=FIELD_MANAGER)
        except ConfigError as exc:
            raise CliError(f"kubeconfig context {target.context}: {exc}") from exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            raise explain(exc, what) from exc
        except kube.HTTPError as exc:  # type: ignore[misc] # an answer lightkube could not read as a Status
            raise CliError(f"{what}: {exc}") from exc
        except OSError as exc:
            raise CliError(f"{what}: cannot reach the API server of context {self.target.context} ({exc})") from exc

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ns = namespace or self.namespace
        res = kube.resource(*_api(kind))
        try:
            return _as_dict(self.client.get(res, name, namespace=ns))
        except ApiError as exc:
            if getattr(exc.status, "code", None) == 404:
                return None
            raise explain(exc, f"get {RESOURCE_NAMES[kind]} {name} in {ns}") from exc
        except OSError as exc:
            raise CliError(f"get {name}: cannot reach the API server of context {self.target.context} ({exc})") from exc

    def require(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj = self.get(kind, name, namespace)
        if obj is None:
            ns = namespace or self.namespace
            raise CliError(f'{RESOURCE_NAMES[kind]} "{name}" not found in namespace {ns}'
                           f" (kubectl get {RESOURCE_NAMES[kind]} -n {ns} lists them; -n picks another namespace)")
        return obj

    def list(self, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None,
             all_namespaces: bool = False) -> list[dict[str, Any]]:
        ns = "*" if all_namespaces else (namespace or self.namespace)
        res = kube.resource(*_api(kind))
        where = "all namespaces" if all_namespaces else f"namespace {ns}"
        items = self._call(f"list {RESOURCE_NAMES[kind]} in {where}",
                           lambda: list(self.client.list(res, namespace=ns, labels=dict(labels) if labels else None)))
        return [_as_dict(i) for i in items]

    def merge_patch(self, kind: str, name: str, body: Mapping[str, Any], resource_version: str | None = None
                    ) -> dict[str, Any]:
        """A JSON merge patch; with ``resource_version``, refused (409) if the object changed since the
        read the decision was made from."""
        patch = dict(body)
        if resource_version:
            patch["metadata"] = {**(patch.get("metadata") or {}), "resourceVersion": resource_version}
        res = kube.resource(*_api(kind))
        try:
            out = self.client.patch(res, name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if getattr(exc.status, "code", None) == 409:
                raise Conflict(f"{RESOURCE_NAMES[kind]} {name} changed while this command ran: run it again") from exc
            raise explain(exc, f"patch {RESOURCE_NAMES[kind]} {name} in {self.namespace}") from exc
        except OSError as exc:
            raise CliError(f"patch {name}: cannot reach the API server of context {self.target.context} ({exc})") from exc
        return _as_dict(out)

    def whoami(self) -> str:
        """The caller's user name as the API server authenticated it (what `kubectl auth whoami`
        asks: a SelfSubjectReview, authentication.k8s.io/v1, GA since Kubernetes 1.28)."""
        review = self._call("who am I (SelfSubjectReview, as `kubectl auth whoami`)",
                            self.client.create, SelfSubjectReview())
        user = ((_as_dict(review).get("status") or {}).get("userInfo") or {}).get("username")
        if not user:
            raise CliError("the API server did not say who you are (SelfSubjectReview without a user name)")
        return str(user)


def _api(kind: str) -> tuple[str, str]:
    return {
        "TrainingPipeline": (kube.API_VERSION, "TrainingPipeline"),
        "ModelVersion": (kube.API_VERSION, "ModelVersion"),
        "Rollout": (kube.API_VERSION, "Rollout"),
        "Deployment": ("apps/v1", "Deployment"),
        "Pod": ("v1", "Pod"),
        "Job": ("batch/v1", "Job"),
    }[kind]
