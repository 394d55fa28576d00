"""Mirrors wait in the router's queue and leave together, after the answers they copy.

Given the router (noria_server.route, in process) with a 100 % shadow, ``mirror_when`` ``answered``
(the queue's mode) and ``mirror_delay`` 0.2 s in front of real HttpServers on localhost, when a
client sends three requests concurrently, then all three answers come back before any mirror
reaches the shadow, the three mirrors arrive together about ``mirror_delay`` after the first
answer, every comparison is counted, and queued mirrors count against ``max_shadow_in_flight`` (a
fourth request past the bound is dropped, not queued).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from noria import metrics as m
from noria.router_config import Backend, RouterConfig
from noria_server.httpserver import HttpServer, Request, Response
from noria_server.route import MIRROR_ANSWERED, Router, RouterSettings

MODEL = "churn"
ANSWER = b'{"model_version":"x","outputs":[{"name":"predict","datatype":"INT64","shape":[1],"data":[1]}]}'
DELAY = 0.2


async def _serve(arrived: list[float]) -> tuple[HttpServer, str]:
    def handle(request: Request) -> Response:
        arrived.append(time.monotonic())
        return Response(200, ANSWER)

    server = HttpServer(handle)
    return server, f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"


async def _run(max_in_flight: int, requests: int) -> dict[str, Any]:
    primary_arrived: list[float] = []
    shadow_arrived: list[float] = []
    primary, primary_url = await _serve(primary_arrived)
    shadow, shadow_url = await _serve(shadow_arrived)
    router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, mirror_delay=DELAY,
                                   mirror_when=MIRROR_ANSWERED, max_shadow_in_flight=max_in_flight))
    router.apply_config(RouterConfig(MODEL, "ml", (Backend("v1", None, 8080, weight=100, url=primary_url),),
                                     Backend("v2", None, 8080, url=shadow_url, mirror_percent=100)))
    await router.start()
    answered: list[float] = []
    url = f"http://127.0.0.1:{router.port}/v2/models/{MODEL}/infer"
    try:
        async with aiohttp.ClientSession() as session:
            async def post() -> None:
                async with session.post(url, data=b"{}", headers={"content-type": "application/json"}) as resp:
                    assert resp.status == 200 and await resp.read() == ANSWER
                answered.append(time.monotonic())

            await asyncio.gather(*(post() for _ in range(requests)))
            deadline = time.monotonic() + 5
            while router.shadow_in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert router.shadow_in_flight == 0
        overload = router.metrics.errors.labels(MODEL, "v2", m.ROUTER_ERROR_SHADOW_OVERLOAD)._value.get()
        return {"answered": answered, "shadow_arrived": shadow_arrived, "overload": overload,
                "agree": router.metrics.shadow_count(MODEL, "v1", "v2", m.OUTCOME_AGREE),
                "durations": router.metrics.shadow_duration(MODEL, "v2")}
    finally:
        await router.stop(drain=False)
        await primary.close(timeout=1)
        await shadow.close(timeout=1)


async def test_queued_mirrors_leave_together_after_every_answer_they_copy() -> None:
    got = await _run(max_in_flight=16, requests=3)
    assert len(got["shadow_arrived"]) == 3
    assert min(got["shadow_arrived"]) > max(got["answered"])  # every answer was out before any mirror
    assert min(got["shadow_arrived"]) - min(got["answered"]) > DELAY * 0.5  # they waited in the queue
    assert max(got["shadow_arrived"]) - min(got["shadow_arrived"]) < DELAY * 0.5  # and left together
    assert got["agree"] == 3 and got["durations"].count == 3
    assert got["durations"].sum < 3 * DELAY  # the shadow's latency counts from its send, not from queueing


async def test_queued_mirrors_count_against_the_bound() -> None:
    got = await _run(max_in_flight=2, requests=4)
    assert len(got["shadow_arrived"]) == 2
    assert got["overload"] == 2
    assert got["agree"] == 2
