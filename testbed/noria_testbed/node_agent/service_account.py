"""A pod's service-account credentials, as the kubelet gives them.

The kubelet asks the TokenRequest API for a token of the pod's ``spec.serviceAccountName``, bound
to the pod (the API server stops accepting it once the pod is gone), with the API server's default
audience and a bounded lifetime, and refreshes it when 80% of that lifetime has passed. It mounts
``token``, ``ca.crt`` and ``namespace`` at ``/var/run/secrets/kubernetes.io/serviceaccount``. The
agent does the same into the pod's directory, and since a local process cannot use that fixed path
(Kopf's and lightkube's in-cluster logins read it verbatim), it also writes a kubeconfig holding
the same token and CA and points ``KUBECONFIG`` at it; both clients fall back to it. So a process
acts with exactly its ServiceAccount's RBAC — never the agent's administrator credentials — and a
permission its chart or Role forgot shows as a 403.

A pod gets no credentials at all when it, or (if the pod does not say) its ServiceAccount, sets
``automountServiceAccountToken: false``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from noria_testbed.kubeapi import ApiError, KubeApi
from noria_testbed.node_agent.common import LOGGER_NAME, Json
from noria_testbed.podspec import PodSpecError

log = logging.getLogger(LOGGER_NAME)

MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3607  # what the kubelet requests (an hour, plus a little so it is not "exactly 1h")
REFRESH_FRACTION = 0.8  # the kubelet renews a token once 80% of its lifetime has passed


@dataclass(frozen=True)
class ClusterAccess:
    """Where pods reach the API server: its URL and the CA that signed its serving certificate."""

    server: str
    ca_pem: bytes

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ClusterAccess:
        """The current context's cluster of a kubeconfig (CA embedded or as a file). Only the
        cluster is taken: the kubeconfig's user is the agent's own and is never handed on."""
        config = yaml.safe_load(path.read_text())
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
        context = contexts.get(config.get("current-context")) or next(iter(contexts.values()))
        cluster = clusters[context["cluster"]]
        if "certificate-authority-data" in cluster:
            ca = base64.b64decode(cluster["certificate-authority-data"])
        else:
            ca = (path.parent / cluster["certificate-authority"]).read_bytes()
        return cls(server=cluster["server"], ca_pem=ca)


def wants_token(pod: Json, service_account: Json | None) -> bool:
    """The pod's ``automountServiceAccountToken`` wins; unset, its ServiceAccount's; unset, True."""
    pod_says = pod.get("spec", {}).get("automountServiceAccountToken")
    if pod_says is not None:
        return bool(pod_says)
    account_says = (service_account or {}).get("automountServiceAccountToken")
    return True if account_says is None else bool(account_says)


def service_account_name(pod: Json) -> str:
    return pod.get("spec", {}).get("serviceAccountName") or "default"


def token_request(pod: Json, seconds: int = TOKEN_SECONDS) -> Json:
    """A TokenRequest bound to the pod, with the API server's default audience (none given)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": seconds,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}},
    }


def token_kubeconfig(access: ClusterAccess, token_file: Path, namespace: str, account: str) -> Json:
    """A kubeconfig that authenticates with the pod's token (named by file, so a refresh reaches
    clients that re-read it, and inline, for clients such as Kopf's that read only ``token``)."""
    user = f"system:serviceaccount:{namespace}:{account}"
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "pod",
        "clusters": [{"name": "cluster", "cluster": {
            "server": access.server,
            "certificate-authority-data": base64.b64encode(access.ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token_file.read_text().strip(), "tokenFile": str(token_file)}}],
        "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
    }


def refresh_delay(issued: dt.datetime, expires: dt.datetime) -> float:
    """Seconds from ``issued`` until the token should be renewed (80% of its lifetime)."""
    return max(1.0, (expires - issued).total_seconds() * REFRESH_FRACTION)


def _write(path: Path, content: str) -> None:
    """Atomically, readable by the owner only (a token is a credential)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    os.chmod(temporary, 0o600)
    temporary.replace(path)


class PodCredentials:
    """The token files and kubeconfig of one pod, under ``directory``, kept fresh by :meth:`refresh`."""

    def __init__(self, api: KubeApi, access: ClusterAccess, pod: Json, directory: Path) -> None:
        self.api, self.access, self.pod, self.directory = api, access, pod, directory
        self.namespace = pod["metadata"]["namespace"]
        self.account = service_account_name(pod)
        self.kubeconfig = directory / "kubeconfig"
        self.expires: dt.datetime | None = None
        self.issued: dt.datetime | None = None

    async def wanted(self) -> bool:
        """Whether the pod gets a token at all (reads its ServiceAccount when the pod does not say)."""
        if self.pod.get("spec", {}).get("automountServiceAccountToken") is not None:
            return wants_token(self.pod, None)
        try:
            account = await self.api.get(f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.account}")
        except (ApiError, httpx.HTTPError, OSError) as error:
            raise PodSpecError(f"serviceAccountName {self.account!r}: cannot read it: {error}") from error
        return wants_token(self.pod, account)

    async def issue(self) -> None:
        """Request a token and write ``token``, ``ca.crt``, ``namespace`` and ``kubeconfig``.
        Raises PodSpecError (the pod waits and retries, as the kubelet does) when refused."""
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.account}/token"
        try:
            answer = await self.api.request("POST", path, body=token_request(self.pod))
        except ApiError as error:
            raise PodSpecError(f"serviceAccountName {self.account!r}: token request refused: {error}") from error
        except (httpx.HTTPError, OSError) as error:
            raise PodSpecError(f"serviceAccountName {self.account!r}: token request failed: {error}") from error
        status = answer.get("status", {})
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        token_file = self.directory / "token"
        _write(token_file, status["token"])
        _write(self.directory / "ca.crt", self.access.ca_pem.decode())
        _write(self.directory / "namespace", self.namespace)
        config = token_kubeconfig(self.access, token_file, self.namespace, self.account)
        _write(self.kubeconfig, json.dumps(config, indent=1))
        self.issued = dt.datetime.now(dt.UTC)
        self.expires = dt.datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00"))

    async def refresh(self) -> None:
        """Renew the token at 80% of its lifetime, forever (cancelled with the pod); a refused
        renewal is retried every 10 s while the old token still works."""
        assert self.issued is not None and self.expires is not None
        delay = refresh_delay(self.issued, self.expires)
        while True:
            await asyncio.sleep(delay)
            try:
                await self.issue()
            except PodSpecError as error:
                log.warning("pod %s/%s: %s; retrying in 10s", self.namespace, self.pod["metadata"]["name"], error)
                delay = 10.0
                continue
            assert self.issued is not None and self.expires is not None
            delay = refresh_delay(self.issued, self.expires)
            log.info("pod %s/%s: service-account token renewed", self.namespace, self.pod["metadata"]["name"])
