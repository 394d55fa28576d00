"""Services on this node: a small kube-proxy (ClusterIP:port → a ready pod) and the service
environment variables the kubelet gives pods."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from noria_testbed.node_agent.common import LOGGER_NAME, Json

if TYPE_CHECKING:
    from noria_testbed.node_agent.agent import NodeAgent

log = logging.getLogger(LOGGER_NAME)


class ServiceProxy:
    """kube-proxy in miniature: listens on each Service's ClusterIP:port (a loopback address in
    the testbed's service range) and forwards every TCP connection to a ready pod selected by the
    Service, round-robin. The apiserver refuses loopback addresses in EndpointSlices, so the
    endpoints come straight from the agent's own pods instead."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.services: dict[str, Json] = {}  # uid → latest Service
        self.servers: dict[str, list[asyncio.AbstractServer]] = {}
        self.listening: dict[str, tuple] = {}  # uid → (clusterIP, ports) currently bound
        self.turn = 0

    async def on_service(self, event: str, service: Json) -> None:
        uid = service["metadata"]["uid"]
        spec = service.get("spec", {})
        wanted = (spec.get("clusterIP"), tuple((p.get("port"), p.get("protocol", "TCP")) for p in spec.get("ports") or []))
        if event == "DELETED" or not spec.get("selector") or spec.get("clusterIP") in (None, "", "None"):
            self.services.pop(uid, None)
            await self._close(uid)
            return
        self.services[uid] = service
        if self.listening.get(uid) == wanted:
            return
        await self._close(uid)
        servers = []
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            try:
                servers.append(await asyncio.start_server(
                    lambda r, w, uid=uid, port=port: self._forward(uid, port, r, w), spec["clusterIP"], port["port"]))
            except OSError as error:
                log.warning("service %s/%s: cannot listen on %s:%s: %s", service["metadata"]["namespace"],
                            service["metadata"]["name"], spec["clusterIP"], port["port"], error)
        self.servers[uid], self.listening[uid] = servers, wanted

    async def _close(self, uid: str) -> None:
        for server in self.servers.pop(uid, []):
            server.close()
        self.listening.pop(uid, None)

    async def close(self) -> None:
        for uid in list(self.servers):
            await self._close(uid)

    def endpoints(self, service: Json, port: Json) -> list[tuple[str, int]]:
        """(pod IP, port) of every ready, not terminating pod the Service selects."""
        namespace, selector = service["metadata"]["namespace"], service["spec"]["selector"]
        target = port.get("targetPort", port["port"])
        found = []
        for worker in self.agent.workers.values():
            labels = worker.pod["metadata"].get("labels") or {}
            if worker.namespace != namespace or not worker.serving() or \
                    any(labels.get(k) != v for k, v in selector.items()):
                continue
            number = resolve_port(worker.pod, target)
            if number is not None:
                found.append((worker.ip, number))
        return sorted(found)

    async def _forward(self, uid: str, port: Json, client_reader: asyncio.StreamReader,
                       client_writer: asyncio.StreamWriter) -> None:
        service = self.services.get(uid)
        candidates = self.endpoints(service, port) if service else []
        if not candidates:
            client_writer.close()  # like a Service without endpoints: the connection is refused
            return
        self.turn += 1
        host, number = candidates[self.turn % len(candidates)]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, number)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the agent is stopping with this connection open
            pass
        for writer in (client_writer, upstream_writer):
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close, so request/response protocols see the end of the request
    except (ConnectionError, OSError):
        writer.close()


def resolve_port(pod: Json, target: int | str) -> int | None:
    """A Service targetPort (number or container port name) for this pod."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers", []):
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


def service_links(services: list[Json]) -> dict[str, str]:
    """The ``<NAME>_SERVICE_HOST``/``_PORT`` variables the kubelet gives pods (enableServiceLinks)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec", {})
        if spec.get("clusterIP") in (None, "", "None") or not spec.get("ports"):
            continue
        name = service["metadata"]["name"].upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = spec["clusterIP"]
        env[f"{name}_SERVICE_PORT"] = str(spec["ports"][0]["port"])
        for port in spec["ports"]:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    return env
