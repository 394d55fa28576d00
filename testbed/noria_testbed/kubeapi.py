"""A small async Kubernetes API client for the node agent: plain JSON over httpx.

The agent only needs get/list/create/patch/delete and watches on a handful of core resources,
and it wants plain dicts (pod specs are walked generically), so this is simpler than a typed
client. It reads the kubeconfig written by the testbed (client certificate, embedded or as files).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

log = logging.getLogger("noria_testbed.kubeapi")

Json = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


def _ssl_context_from_kubeconfig(path: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(path.read_text())
    context_name = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    users = {u["name"]: u["user"] for u in config.get("users", [])}
    context = contexts.get(context_name) or next(iter(contexts.values()))
    cluster, user = clusters[context["cluster"]], users[context["user"]]

    secrets_dir = Path(tempfile.mkdtemp(prefix="noria-kubeapi-"))

    def material(kind: str, owner: Json) -> str | None:
        if f"{kind}-data" in owner:
            file = secrets_dir / kind
            file.write_bytes(base64.b64decode(owner[f"{kind}-data"]))
            os.chmod(file, 0o600)
            return str(file)
        value = owner.get(kind)
        return str((path.parent / value).resolve()) if value else None

    ca = material("certificate-authority", cluster)
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    cert, key = material("client-certificate", user), material("client-key", user)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    for file in secrets_dir.iterdir():  # loaded into the context; nothing needs the files now
        file.unlink()
    secrets_dir.rmdir()
    return cluster["server"].rstrip("/"), ctx


class KubeApi:
    def __init__(self, kubeconfig: Path, *, timeout: float = 30.0) -> None:
        self.server, context = _ssl_context_from_kubeconfig(kubeconfig)
        self._client = httpx.AsyncClient(base_url=self.server, verify=context, trust_env=False,
                                         timeout=httpx.Timeout(timeout, connect=10.0))

    async def close(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Json:
        content = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else {}
        response = await self._client.request(method, path, content=content, params=params, headers=headers)
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, f"{method} {path}")
        return response.json() if response.content else {}

    async def get(self, path: str) -> Json | None:
        try:
            return await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch(self, path: str, body: Json, *, strategic: bool = False) -> Json:
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        return await self.request("PATCH", path, body=body, content_type=f"application/{kind}+json")

    async def delete(self, path: str, body: Json | None = None) -> Json | None:
        try:
            return await self.request("DELETE", path, body=body)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def watch_events(self, path: str, params: dict[str, str]) -> AsyncIterator[Json]:
        """One watch request; yields its events until the server closes it."""
        query = {**params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "240"}
        timeout = httpx.Timeout(30.0, read=300.0)
        async with self._client.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, (await response.aread()).decode(), f"WATCH {path}")
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)


Handler = Callable[[str, Json], Awaitable[None]]


async def inform(api: KubeApi, path: str, handler: Handler, *, params: dict[str, str] | None = None,
                 on_synced: Callable[[], None] | None = None) -> None:
    """List then watch ``path`` forever, calling ``handler(event_type, object)`` for every change.

    A reflector in miniature: after every (re)list the handler sees ADDED for each object present
    and DELETED for each previously known object that vanished, so no change is lost across a
    dropped connection or an expired resourceVersion (HTTP 410 → relist).
    """
    params = dict(params or {})
    known: dict[str, Json] = {}
    while True:
        try:
            listing = await api.request("GET", path, params=params)
            resource_version = listing["metadata"]["resourceVersion"]
            present = {item["metadata"]["uid"]: item for item in listing.get("items", [])}
            for uid, obj in list(known.items()):
                if uid not in present:
                    known.pop(uid)
                    await handler("DELETED", obj)
            for uid, obj in present.items():
                known[uid] = obj
                await handler("ADDED", obj)
            if on_synced:
                on_synced()
                on_synced = None
            while True:
                async for event in api.watch_events(path, {**params, "resourceVersion": resource_version}):
                    kind, obj = event.get("type"), event.get("object", {})
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise _Relist()
                        log.warning("watch %s error: %s", path, obj)
                        raise _Relist()
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        known.pop(uid, None)
                    else:
                        known[uid] = obj
                    await handler(kind, obj)
        except _Relist:
            continue
        except asyncio.CancelledError:
            raise
        except ApiError as error:
            if error.status != 410:
                log.warning("%s; relisting in 1s", error)
                await asyncio.sleep(1)
        except (httpx.HTTPError, OSError, json.JSONDecodeError) as error:
            log.warning("watch %s interrupted (%s: %s); relisting in 1s", path, type(error).__name__, error)
            await asyncio.sleep(1)


class _Relist(Exception):
    pass
