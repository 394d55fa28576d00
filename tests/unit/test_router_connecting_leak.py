"""A mirrored request whose primary must connect, dropped before its coroutine first runs, gives its
mirror's place back.

Given the router (noria_server.route, in process) with a 100 % shadow, ``max_shadow_in_flight`` 1 and
no kept connection to the primary yet, when a mirrored request's handler coroutine (the one that
connects) is closed, or its task cancelled, before its first step (its client gone at that instant,
the loop stopping), then ``shadow_in_flight`` is back to 0 and the next request is mirrored: the
bound's room is whole. Before the fix the count was taken outside the coroutine, where no code of
the coroutine's could give it back, and each such request lowered the room by one for good.
"""

from __future__ import annotations

import asyncio
import inspect
from contextlib import suppress

import pytest
from noria.router_config import Backend, RouterConfig
from noria_server.httpserver import HttpServer, Request, Response
from noria_server.route import MIRROR_ANSWERED, MIRROR_SENT, Router, RouterSettings

MODEL = "churn"
ANSWER = b'{"model_version":"v","outputs":[{"name":"predict","shape":[1],"datatype":"INT64","data":[1]}]}'


def _request() -> Request:
    return Request("POST", f"/v2/models/{MODEL}/infer", b"", {"content-type": "application/json"}, b'{"inputs":[]}')


async def _scenario(mirror_when: str, drop: str) -> None:
    mirrored: list[Request] = []

    def shadow_answer(request: Request) -> Response:
        mirrored.append(request)
        return Response(200, ANSWER)

    primary, shadow = HttpServer(lambda request: Response(200, ANSWER)), HttpServer(shadow_answer)
    urls = [f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}" for server in (primary, shadow)]
    router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, timeout=2, max_shadow_in_flight=1,
                                   mirror_when=mirror_when))
    router.apply_config(RouterConfig(MODEL, "ml", (Backend("v1", None, 8080, weight=100, url=urls[0]),),
                                     Backend("v2", None, 8080, url=urls[1], mirror_percent=100)))
    try:
        dropped = router.handle(_request())
        assert inspect.iscoroutine(dropped), "no kept connection yet: the request must connect"
        if drop == "close":
            dropped.close()
        else:  # as the HTTP server wraps it, cancelled before the loop ran it
            task = asyncio.ensure_future(dropped)
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        for _ in range(50):  # whatever the dropped request had sent has come back
            await asyncio.sleep(0.01)
        assert router.shadow_in_flight == 0

        answered = router.handle(_request())
        response = await answered if inspect.iscoroutine(answered) else answered
        assert response.status == 200
        for _ in range(200):
            if mirrored and router.shadow_in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert len(mirrored) == 1, "the next request was not mirrored: the bound's room was lowered"
        assert router.shadow_in_flight == 0
    finally:
        router.upstreams.close()
        for server in (primary, shadow):
            await server.close(timeout=1)


@pytest.mark.parametrize("mirror_when", [MIRROR_SENT, MIRROR_ANSWERED])
@pytest.mark.parametrize("drop", ["close", "cancel"])
def test_a_connecting_request_dropped_before_it_ran_gives_its_mirror_back(mirror_when: str, drop: str) -> None:
    asyncio.run(_scenario(mirror_when, drop))
