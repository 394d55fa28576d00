"""The agent's HTTP endpoints: service discovery for Prometheus and health on ``--listen``, and
the kubelet's ``/containerLogs`` over TLS so ``kubectl logs`` works."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from noria_testbed.node_agent.common import HOST_IP

if TYPE_CHECKING:
    from noria_testbed.node_agent.agent import NodeAgent

_LOG_HEADER = re.compile(rb"^--- \S+ starting ")  # the agent's own line before each (re)start


async def serve_http(agent: NodeAgent, host: str, port: int) -> web.AppRunner:
    """``/sd`` (Prometheus http_sd targets of running pods), ``/healthz`` (200 once synced), ``/pods``."""
    async def sd(_: web.Request) -> web.Response:
        return web.json_response(agent.sd_targets())

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if agent.synced.is_set() else "starting", status=200 if agent.synced.is_set() else 503)

    async def pods(_: web.Request) -> web.Response:
        return web.json_response([{"namespace": w.namespace, "name": w.name, "ip": w.ip, "phase": w.phase}
                                  for w in agent.workers.values()])

    app = web.Application()
    app.add_routes([web.get("/sd", sd), web.get("/healthz", healthz), web.get("/pods", pods)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_kubelet_logs(agent: NodeAgent) -> web.AppRunner | None:
    """The kubelet's ``/containerLogs`` endpoint over TLS, so ``kubectl logs [-f]`` works: the
    apiserver reaches it at the node's InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``."""
    if not agent.kubelet_port or agent.tls is None:
        return None

    async def container_logs(request: web.Request) -> web.StreamResponse:
        namespace, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path = agent.root / "pods" / namespace / pod / f"{container}.log"
        if not path.exists():
            return web.Response(status=404, text=f"no log for container {container} of pod {namespace}/{pod}\n")
        data = path.read_bytes()
        lines = [line for line in data.splitlines(keepends=True) if not _LOG_HEADER.match(line)]
        if request.query.get("tailLines"):
            lines = lines[-int(request.query["tailLines"]):] if int(request.query["tailLines"]) > 0 else []
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"".join(lines))
        offset = len(data)
        while request.query.get("follow") == "true" and pod_running(agent, namespace, pod):
            await asyncio.sleep(0.5)
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            if chunk:
                await response.write(b"".join(x for x in chunk.splitlines(keepends=True) if not _LOG_HEADER.match(x)))
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/containerLogs/{namespace}/{pod}/{container}", container_logs)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(agent.tls[0]), str(agent.tls[1]))
    await web.TCPSite(runner, HOST_IP, agent.kubelet_port, ssl_context=context).start()
    return runner


def pod_running(agent: NodeAgent, namespace: str, name: str) -> bool:
    return any(w.namespace == namespace and w.name == name and w.phase in ("Pending", "Running")
               for w in agent.workers.values())
