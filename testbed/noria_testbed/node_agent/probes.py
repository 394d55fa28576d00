"""One probe (httpGet, tcpSocket or exec) against a running container, as the kubelet does it.
How often to probe and what a result means is the container runner's business."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeGuard

import httpx

from noria_testbed.node_agent.common import Json
from noria_testbed.podspec import PodSpecError, python_aware_argv

if TYPE_CHECKING:
    from noria_testbed.node_agent.launch import Launch

PROBE_KINDS = ("httpGet", "tcpSocket", "exec")


def has_probe(probe: Json | None) -> TypeGuard[Json]:
    """A probe with none of the kinds the agent runs counts as no probe at all."""
    return probe is not None and any(kind in probe for kind in PROBE_KINDS)


def container_port(container: Json, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's declared ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodSpecError(f"probe port {port!r} is not a declared container port")


async def probe_once(probe: Json, *, container: Json, pod_ip: str, launch: Launch, http: httpx.AsyncClient) -> bool:
    """True when the probe succeeds within its timeoutSeconds; any error is a failure."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or pod_ip
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{host}:{container_port(container, get['port'])}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            response = await http.get(url, headers=headers, timeout=timeout)
            return 200 <= response.status_code < 400
        if "tcpSocket" in probe:
            sock = probe["tcpSocket"]
            host = sock.get("host") or pod_ip
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, container_port(container, sock["port"])),
                                               timeout)
            writer.close()
            return True
        command = [launch.rewrite(part) for part in probe["exec"].get("command", [])]
        process = await asyncio.create_subprocess_exec(
            *python_aware_argv(command, []), env=launch.env, cwd=launch.cwd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(process.wait(), timeout) == 0
        except TimeoutError:
            process.kill()
            await process.wait()
            return False
    except (httpx.HTTPError, OSError, TimeoutError, PodSpecError):
        return False
