"""Where the router learns its config and its backends' addresses.

- ``FileConfigSource``: ``--config <file>`` re-read when its mtime/size changes (polled every
  250 ms, so a change is live well within a second). For local runs, tests and benchmarks.
- ``ConfigMapSource``: ``--configmap <ns>/<name>``: a watch on that one ConfigMap (key
  ``config.json``) through the Kubernetes API; the operator's write is live as soon as the watch
  event arrives (tens of milliseconds). Credentials: ``KUBECONFIG`` if set, else in-cluster.
- ``EndpointSliceWatcher``: ready endpoints of every Service in the namespace, from EndpointSlices
  labelled ``kubernetes.io/service-name``. The router connects to pod IPs directly: the test bed
  has no cluster DNS or kube-proxy, and in real clusters it saves a hop.
- ``PodEndpointWatcher``: the same answer computed from the Services' selectors and the ready Pods'
  IPs. Used for a Service that has no EndpointSlice endpoints: the API server refuses loopback
  addresses in EndpointSlices, and the local test bed's pods have loopback IPs, so there the
  EndpointSlice controller cannot publish them. ``Endpoints`` combines the two, slices first.

Each watch first LISTs (a complete, consistent state swapped in at once) and then WATCHes from
that list's resourceVersion; on any error it waits a second and starts over, keeping the last
good state meanwhile. RBAC the router needs in its namespace: get/list/watch on configmaps and
on discovery.k8s.io endpointslices, services and pods.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from noria.router_config import CONFIG_KEY, ConfigError, RouterConfig, parse_config

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RETRY_SECONDS = 1.0

OnConfig = Callable[[RouterConfig], None]


class FileConfigSource:
    def __init__(self, path: str, on_config: OnConfig, poll_seconds: float = 0.25) -> None:
        self.path, self.on_config, self.poll_seconds = path, on_config, poll_seconds
        self._seen: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def load_once(self) -> bool:
        """Apply the file if it changed since the last look; True when a new config was applied."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._seen is not None:
                log.warning("router config %s: %s (keeping the last good config)", self.path, exc)
            self._seen = None
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            with open(self.path, "rb") as f:
                config = parse_config(f.read())
        except (OSError, ConfigError) as exc:
            log.error("router config %s refused, keeping the last good config: %s", self.path, exc)
            return False
        self.on_config(config)
        return True

    async def start(self) -> None:
        self.load_once()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            self.load_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _client() -> Any:
    from lightkube import AsyncClient, KubeConfig

    return AsyncClient(config=KubeConfig.from_env())


async def _list_then_watch(name: str, list_call: Callable[[], Any], watch_call: Callable[[str], Any],
                           on_list: Callable[[list[Any]], None], on_event: Callable[[str, Any], None],
                           stopped: asyncio.Event) -> None:
    while not stopped.is_set():
        try:
            listing = list_call()
            items = [item async for item in listing]
            on_list(items)
            async for op, obj in watch_call(listing.resourceVersion):
                on_event(op, obj)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # API server restarts, expired resourceVersion, RBAC: retry, keep state
            log.warning("%s watch interrupted (%s: %s); retrying in %.0fs", name, type(exc).__name__, exc,
                        RETRY_SECONDS)
        await asyncio.sleep(RETRY_SECONDS)


class ConfigMapSource:
    def __init__(self, namespace: str, name: str, on_config: OnConfig) -> None:
        self.namespace, self.name, self.on_config = namespace, name, on_config
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: str | None = None

    def _apply(self, obj: Any) -> None:
        text = (obj.data or {}).get(CONFIG_KEY) if obj is not None else None
        if text is None:
            log.error("ConfigMap %s/%s has no %s key; keeping the last good config", self.namespace, self.name,
                      CONFIG_KEY)
            return
        if text == self._last:
            return
        try:
            config = parse_config(text)
        except ConfigError as exc:
            log.error("ConfigMap %s/%s refused, keeping the last good config: %s", self.namespace, self.name, exc)
            return
        self._last = text
        self.on_config(config)

    async def start(self) -> None:
        from lightkube.resources.core_v1 import ConfigMap

        client = _client()
        fields = {"metadata.name": self.name}

        def on_list(items: list[Any]) -> None:
            if items:
                self._apply(items[0])
            else:
                log.warning("ConfigMap %s/%s does not exist yet", self.namespace, self.name)

        def on_event(op: str, obj: Any) -> None:
            if op in ("ADDED", "MODIFIED"):
                self._apply(obj)
            elif op == "DELETED":
                log.warning("ConfigMap %s/%s deleted; keeping the last config", self.namespace, self.name)

        self._task = asyncio.get_running_loop().create_task(_list_then_watch(
            f"ConfigMap {self.namespace}/{self.name}",
            lambda: client.list(ConfigMap, namespace=self.namespace, fields=fields),
            lambda rv: client.watch(ConfigMap, namespace=self.namespace, fields=fields, resource_version=rv),
            on_list, on_event, self._stopped))

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()


def ready_endpoints(slice_obj: Any) -> list[str]:
    """``http://ip:port`` of the ready endpoints of one EndpointSlice (port named ``http`` if any)."""
    ports = slice_obj.ports or []
    port = next((p.port for p in ports if p.name == "http"), None) or (ports[0].port if ports else None)
    if port is None:
        return []
    out = []
    for ep in slice_obj.endpoints or []:
        conditions = ep.conditions
        if conditions is not None and conditions.ready is False:
            continue
        for address in ep.addresses or []:
            host = f"[{address}]" if ":" in address else address
            out.append(f"http://{host}:{port}")
    return sorted(out)


class EndpointSliceWatcher:
    """Ready endpoint URLs by Service name, for one namespace."""

    def __init__(self, namespace: str, on_change: Callable[[], None] | None = None) -> None:
        self.namespace = namespace
        self.on_change = on_change
        self.by_slice: dict[str, tuple[str, list[str]]] = {}  # slice name -> (service, urls)
        self.by_service: dict[str, list[str]] = {}
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def endpoints(self, service: str) -> list[str]:
        return self.by_service.get(service, [])

    def _rebuild(self) -> None:
        by_service: dict[str, list[str]] = {}
        for service, urls in self.by_slice.values():
            by_service.setdefault(service, []).extend(urls)
        self.by_service = {s: sorted(set(u)) for s, u in by_service.items()}
        if self.on_change:
            self.on_change()

    def _put(self, obj: Any) -> None:
        service = (obj.metadata.labels or {}).get(SERVICE_NAME_LABEL)
        if service:
            self.by_slice[obj.metadata.name] = (service, ready_endpoints(obj))

    async def start(self) -> None:
        from lightkube import operators
        from lightkube.resources.discovery_v1 import EndpointSlice

        client = _client()
        labels = {SERVICE_NAME_LABEL: operators.exists()}

        def on_list(items: list[Any]) -> None:
            self.by_slice = {}
            for obj in items:
                self._put(obj)
            self._rebuild()

        def on_event(op: str, obj: Any) -> None:
            if op == "DELETED":
                self.by_slice.pop(obj.metadata.name, None)
            elif op in ("ADDED", "MODIFIED"):
                self._put(obj)
            else:
                return
            self._rebuild()

        self._task = asyncio.get_running_loop().create_task(_list_then_watch(
            f"EndpointSlices in {self.namespace}",
            lambda: client.list(EndpointSlice, namespace=self.namespace, labels=labels),
            lambda rv: client.watch(EndpointSlice, namespace=self.namespace, labels=labels, resource_version=rv),
            on_list, on_event, self._stopped))

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class PodEndpointWatcher:
    """Ready endpoint URLs by Service name from Services' selectors and Pods' status, for one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.services: dict[str, tuple[dict[str, str], list[Any]]] = {}  # name -> (selector, ports)
        self.pods: dict[str, Any] = {}
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def endpoints(self, service: str) -> list[str]:
        entry = self.services.get(service)
        if entry is None:
            return []
        selector, ports = entry
        out = []
        for pod in self.pods.values():
            labels = pod.metadata.labels or {}
            status = pod.status
            if not _matches(selector, labels) or status is None or not status.podIP or pod.metadata.deletionTimestamp:
                continue
            if not any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])):
                continue
            port = self._target_port(ports, pod)
            if port:
                host = f"[{status.podIP}]" if ":" in status.podIP else status.podIP
                out.append(f"http://{host}:{port}")
        return sorted(out)

    @staticmethod
    def _target_port(ports: list[Any], pod: Any) -> int | None:
        if not ports:
            return None
        chosen = next((p for p in ports if p.name == "http"), ports[0])
        target = chosen.targetPort if chosen.targetPort is not None else chosen.port
        if isinstance(target, int):
            return target
        for container in pod.spec.containers or []:
            for cp in container.ports or []:
                if cp.name == target:
                    return int(cp.containerPort)
        return None

    async def start(self) -> None:
        from lightkube.resources.core_v1 import Pod, Service

        client = _client()

        def put_service(obj: Any) -> None:
            self.services[obj.metadata.name] = (dict(obj.spec.selector or {}), list(obj.spec.ports or []))

        def services_listed(items: list[Any]) -> None:
            self.services = {}
            for obj in items:
                put_service(obj)

        def service_event(op: str, obj: Any) -> None:
            if op == "DELETED":
                self.services.pop(obj.metadata.name, None)
            elif op in ("ADDED", "MODIFIED"):
                put_service(obj)

        def pods_listed(items: list[Any]) -> None:
            self.pods = {obj.metadata.name: obj for obj in items}

        def pod_event(op: str, obj: Any) -> None:
            if op == "DELETED":
                self.pods.pop(obj.metadata.name, None)
            elif op in ("ADDED", "MODIFIED"):
                self.pods[obj.metadata.name] = obj

        loop = asyncio.get_running_loop()
        ns = self.namespace
        self._tasks = [
            loop.create_task(_list_then_watch(
                f"Services in {ns}", lambda: client.list(Service, namespace=ns),
                lambda rv: client.watch(Service, namespace=ns, resource_version=rv),
                services_listed, service_event, self._stopped)),
            loop.create_task(_list_then_watch(
                f"Pods in {ns}", lambda: client.list(Pod, namespace=ns),
                lambda rv: client.watch(Pod, namespace=ns, resource_version=rv),
                pods_listed, pod_event, self._stopped)),
        ]

    async def stop(self) -> None:
        self._stopped.set()
        for task in self._tasks:
            task.cancel()


class Endpoints:
    """EndpointSlices first; Pods behind the Service's selector when the slices have no endpoint."""

    def __init__(self, namespace: str) -> None:
        self.slices = EndpointSliceWatcher(namespace)
        self.pods = PodEndpointWatcher(namespace)

    def endpoints(self, service: str) -> list[str]:
        return self.slices.endpoints(service) or self.pods.endpoints(service)

    async def start(self) -> None:
        await self.slices.start()
        await self.pods.start()

    async def stop(self) -> None:
        await self.slices.stop()
        await self.pods.stop()
