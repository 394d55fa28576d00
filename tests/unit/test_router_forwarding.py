"""What the router does to a request on its way through, with real HTTP servers as backends.

Given the router (noria_server.route, in process) in front of real HttpServers on localhost, when a
client sends OIP binary-extension requests, mirrored requests and more mirrors than the bound, then
the body and its ``inference-header-content-length`` reach the backend and come back byte for byte,
a mirror leaves only after the primary's answer (a slow shadow never delays it), and mirrors past
``max_shadow_in_flight`` are dropped and counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from noria import metrics as m
from noria.router_config import Backend, RouterConfig
from noria_server.httpserver import HttpServer, Request, Response
from noria_server.route import MIRROR_ANSWERED, Router, RouterSettings

MODEL = "churn"
BINARY_LENGTH = "inference-header-content-length"
ANSWER = b'{"outputs":[{"name":"predict","datatype":"INT64","shape":[1],"data":[1]}]}'


class RecordingBackend:
    """A real HTTP server that records when each request arrived and answers after ``delay``."""

    def __init__(self, delay: float = 0.0, answer: Callable[[Request], Response] | None = None) -> None:
        self.delay = delay
        self.answer = answer or (lambda request: Response(200, ANSWER))
        self.arrived: list[float] = []
        self.answered: list[float] = []
        self.server = HttpServer(self.handle)
        self.url = ""

    async def handle(self, request: Request) -> Response:
        self.arrived.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)
        self.answered.append(time.monotonic())
        return self.answer(request)

    async def start(self) -> RecordingBackend:
        self.url = f"http://127.0.0.1:{await self.server.start('127.0.0.1', 0)}"
        return self


def _echo(request: Request) -> Response:
    headers = [(BINARY_LENGTH.encode(), request.headers[BINARY_LENGTH].encode())] if BINARY_LENGTH in request.headers \
        else []
    return Response(200, request.body, request.headers["content-type"].encode(), headers)


@pytest.fixture
async def bed() -> AsyncIterator[dict[str, Any]]:
    backends = {"v1": await RecordingBackend(answer=_echo).start(), "v1-slow": await RecordingBackend(delay=0.05).start(),
                "shadow": await RecordingBackend(delay=0.5).start()}
    # Mirrors after the answer (the order test_a_mirror_leaves_after_the_primary_answered... checks).
    router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, max_shadow_in_flight=2,
                                   mirror_when=MIRROR_ANSWERED))
    await router.start()
    async with aiohttp.ClientSession() as session:
        try:
            yield {"router": router, "backends": backends, "session": session,
                   "url": f"http://127.0.0.1:{router.port}/v2/models/{MODEL}/infer"}
        finally:
            await router.stop(drain=False)
            for backend in backends.values():
                await backend.server.close(timeout=1)


def configure(bed: dict[str, Any], primary: str, shadow: str | None = None) -> None:
    urls = {name: b.url for name, b in bed["backends"].items()}
    bed["router"].apply_config(RouterConfig(MODEL, "ml", (Backend(primary, None, 8080, weight=100, url=urls[primary]),),
                                            None if shadow is None else
                                            Backend(shadow, None, 8080, url=urls[shadow], mirror_percent=100)))


async def test_binary_extension_bodies_and_their_header_pass_through_untouched(bed: dict[str, Any]) -> None:
    configure(bed, "v1")
    json_header = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}'
    body = json_header + os.urandom(16) + b"\r\n\r\n" + os.urandom(100_000)
    async with bed["session"].post(bed["url"], data=body, headers={
            "content-type": "application/octet-stream", BINARY_LENGTH: str(len(json_header))}) as resp:
        assert resp.status == 200
        assert await resp.read() == body
        assert resp.headers[BINARY_LENGTH] == str(len(json_header))
        assert resp.headers["content-type"] == "application/octet-stream"
        assert resp.headers["x-noria-version"] == "v1"


async def test_a_mirror_leaves_after_the_primary_answered_and_a_slow_shadow_never_delays_it(
        bed: dict[str, Any]) -> None:
    configure(bed, "v1-slow", shadow="shadow")
    primary, shadow = bed["backends"]["v1-slow"], bed["backends"]["shadow"]
    started = time.monotonic()
    async with bed["session"].post(bed["url"], data=b"{}", headers={"content-type": "application/json"}) as resp:
        assert resp.status == 200 and await resp.read() == ANSWER
    elapsed = time.monotonic() - started
    assert elapsed < 0.4, elapsed  # the shadow takes 0.5 s
    deadline = time.monotonic() + 2
    while not shadow.arrived and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert shadow.arrived and shadow.arrived[0] >= primary.answered[0]
    while bed["router"].shadow_in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert bed["router"].shadow_in_flight == 0
    agree = bed["router"].metrics.shadow_count(MODEL, "v1-slow", "shadow", m.OUTCOME_AGREE)
    assert agree == 1


async def test_mirrors_past_the_bound_are_dropped_and_counted(bed: dict[str, Any]) -> None:
    configure(bed, "v1-slow", shadow="shadow")
    for _ in range(5):  # one after another, while the shadow takes 0.5 s for each
        async with bed["session"].post(bed["url"], data=b"{}", headers={"content-type": "application/json"}) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.05)
    overload = bed["router"].metrics.errors.labels(MODEL, "shadow", m.ROUTER_ERROR_SHADOW_OVERLOAD)._value.get()
    assert overload == 3
    assert len(bed["backends"]["shadow"].arrived) == 2
