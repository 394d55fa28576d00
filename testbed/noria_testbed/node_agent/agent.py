"""The node agent itself: watches the pods bound to its node (one :class:`PodWorker` each), the
ConfigMaps and Secrets they read, the claims they mount and the Services they reach; posts
Events about pods as the kubelet does; serves its endpoints and keeps the Node registered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import sys
from pathlib import Path

import httpx

from noria_testbed.kubeapi import ApiError, KubeApi, inform
from noria_testbed.node_agent.addresses import PodAddresses
from noria_testbed.node_agent.common import LOGGER_NAME, NODE_NAME, STORE_CLAIM, Json, now
from noria_testbed.node_agent.endpoints import serve_http, serve_kubelet_logs
from noria_testbed.node_agent.node import NodeRegistration
from noria_testbed.node_agent.pod import PodWorker
from noria_testbed.node_agent.service_account import ClusterAccess
from noria_testbed.node_agent.service_proxy import ServiceProxy, service_links
from noria_testbed.node_agent.volumes import persistent_volume_for, persistent_volume_name, referenced_secrets
from noria_testbed.podspec import Sources

log = logging.getLogger(LOGGER_NAME)


class NodeAgent:
    def __init__(self, api: KubeApi, *, root: Path, store_dir: Path, node_name: str = NODE_NAME,
                 python: str = sys.executable, run_id: str = "", kubeconfig: Path | None = None,
                 kubelet_port: int = 0, tls: tuple[Path, Path] | None = None, pod_cidr: str = "127.0.0.0/17") -> None:
        self.kubelet_port, self.tls = kubelet_port, tls  # serves container logs to the apiserver
        self.api, self.root, self.store_dir, self.node_name = api, root, store_dir, node_name
        # Only its cluster (server, CA) reaches pods, with a token of their own ServiceAccount;
        # without it pods get no API credentials at all.
        self.access = ClusterAccess.from_kubeconfig(kubeconfig) if kubeconfig else None
        self.python, self.run_id = python, run_id or str(os.getpid())
        self.addresses = PodAddresses(pod_cidr)
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()  # uids whose worker ended; later events for them are ignored
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.http = httpx.AsyncClient(trust_env=False)  # probes go to pod addresses, never via a proxy
        self.synced = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.proxy = ServiceProxy(self)
        self.node = NodeRegistration(api, node_name, kubelet_port)
        self._event_tasks: set[asyncio.Task[None]] = set()

    # ---- events -----------------------------------------------------------------------------------
    def event(self, pod: Json, reason: str, message: str, *, warning: bool = False) -> None:
        """Post a Kubernetes Event about a pod, as the kubelet does (``kubectl describe`` shows
        them). Fire and forget: an event that cannot be posted is only logged."""
        meta = pod["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": "noria-node-agent", "reportingInstance": self.node_name,
        }

        async def post() -> None:
            try:
                await self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
            except (ApiError, httpx.HTTPError, OSError) as error:
                log.info("event %s for %s/%s not posted: %s", reason, meta["namespace"], meta["name"], error)

        task = asyncio.create_task(post())
        self._event_tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._event_tasks.discard)

    # ---- pods -----------------------------------------------------------------------------------
    async def on_pod(self, event: str, pod: Json) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event == "DELETED":
            self.finished.discard(uid)
            if worker:
                worker.removed()
            return
        if worker:
            worker.update(pod)
            return
        if uid in self.finished:
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            if pod["metadata"].get("deletionTimestamp"):  # terminal and deleted: nothing to stop
                with contextlib.suppress(ApiError):
                    await self.api.delete(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                          f"{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
            return
        self.workers[uid] = PodWorker(self, pod)

    def forget(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
            if not worker.removed_from_api:
                self.finished.add(worker.uid)
        if worker.ip:
            self.addresses.release(worker.ip)

    async def on_config_map(self, event: str, cm: Json) -> None:
        key = (cm["metadata"]["namespace"], cm["metadata"]["name"])
        if event == "DELETED":
            self.config_maps.pop(key, None)
            return
        data = dict(cm.get("data") or {})
        data.update({k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (cm.get("binaryData") or {}).items()})
        if self.config_maps.get(key) == data:
            return
        self.config_maps[key] = data
        for worker in list(self.workers.values()):
            if worker.namespace == key[0]:
                worker.refresh_config_map(key[1], data)

    async def sources_for(self, pod: Json) -> Sources:
        namespace = pod["metadata"]["namespace"]
        config_maps = {name: data for (ns, name), data in self.config_maps.items() if ns == namespace}
        secrets: dict[str, dict[str, str]] = {}
        for name in referenced_secrets(pod):
            secret = await self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
            if secret is not None:
                secrets[name] = {k: base64.b64decode(v).decode("utf-8", "replace")
                                 for k, v in (secret.get("data") or {}).items()}
        services = [svc for svc in self.proxy.services.values() if svc["metadata"]["namespace"] == namespace]
        return Sources(config_maps=config_maps, secrets=secrets, service_env=service_links(services))

    # ---- persistent volume claims ------------------------------------------------------------------
    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.store_dir if claim == STORE_CLAIM else self.root / "volumes" / namespace / claim

    async def on_claim(self, event: str, claim: Json) -> None:
        """Pre-bind a hostPath PersistentVolume to every pending claim (the PV controller binds it)."""
        meta, spec = claim["metadata"], claim.get("spec", {})
        pv_name = persistent_volume_name(claim)
        if event == "DELETED":
            await self.api.delete(f"/api/v1/persistentvolumes/{pv_name}")
            return
        if spec.get("volumeName") or claim.get("status", {}).get("phase") == "Bound":
            return
        local = self.claim_dir(meta["namespace"], meta["name"])
        local.mkdir(parents=True, exist_ok=True)
        try:
            await self.api.request("POST", "/api/v1/persistentvolumes", body=persistent_volume_for(claim, local))
            log.info("claim %s/%s: created PersistentVolume %s at %s", meta["namespace"], meta["name"], pv_name, local)
        except ApiError as error:
            if error.status != 409:
                log.warning("claim %s/%s: %s", meta["namespace"], meta["name"], error)

    # ---- service discovery --------------------------------------------------------------------------
    def sd_targets(self) -> list[Json]:
        return [group for worker in self.workers.values() for group in worker.running_targets()]

    # ---- main -----------------------------------------------------------------------------------------
    async def run(self, host: str, port: int) -> None:
        http_runner = await serve_http(self, host, port)
        logs_runner = await serve_kubelet_logs(self)
        try:
            await self.node.register()
            pods_synced, cms_synced, services_synced = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self.tasks = [
                asyncio.create_task(self.node.heartbeat(), name="heartbeat"),
                asyncio.create_task(inform(self.api, "/api/v1/configmaps", self.on_config_map,
                                           on_synced=cms_synced.set), name="configmaps"),
                asyncio.create_task(inform(self.api, "/api/v1/persistentvolumeclaims", self.on_claim), name="claims"),
                asyncio.create_task(inform(self.api, "/api/v1/services", self.proxy.on_service,
                                           on_synced=services_synced.set), name="services"),
            ]
            await cms_synced.wait()
            await services_synced.wait()  # pods may need ConfigMaps as soon as they are seen
            self.tasks.append(asyncio.create_task(inform(
                self.api, "/api/v1/pods", self.on_pod, params={"fieldSelector": f"spec.nodeName={self.node_name}"},
                on_synced=pods_synced.set), name="pods"))
            await pods_synced.wait()
            self.synced.set()
            log.info("node agent ready on %s:%d", host, port)
            await asyncio.gather(*self.tasks)
        finally:
            for task in self.tasks:
                task.cancel()
            workers = list(self.workers.values())
            for worker in workers:
                worker.task.cancel()
            await asyncio.gather(*(w.task for w in workers), return_exceptions=True)
            await asyncio.gather(*(w.stop_containers(1.0) for w in workers), return_exceptions=True)
            await self.proxy.close()
            if logs_runner is not None:
                await logs_runner.cleanup()
            await http_runner.cleanup()
            await self.http.aclose()
