"""Mirrored requests carry one ``x-request-id`` to both versions.

Given the router (noria_server.route, in process) with a 100 % shadow in front of two real
HttpServers, when requests without an ``x-request-id`` are mirrored, then the primary and the shadow
get the same id for each request, 24 hex digits, a different one per request; a request that came
with an id passes it on unchanged to both; and when the id counter wraps a new random prefix is
drawn, so ids do not repeat.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re

from noria.router_config import Backend, RouterConfig
from noria_server.httpserver import HttpServer, Request, Response
from noria_server.route import MIRROR_ANSWERED, MIRROR_SENT, Router, RouterSettings

MODEL = "churn"
ANSWER = b'{"model_version":"v","outputs":[{"name":"predict","shape":[1],"datatype":"INT64","data":[1]}]}'


async def _ids(mirror_when: str, given: list[str | None], wrap_before: int | None = None) -> tuple[list[str], list[str]]:
    seen: tuple[list[str], list[str]] = ([], [])

    def recorder(into: list[str]):  # noqa: ANN202
        def handle(request: Request) -> Response:
            into.append(request.headers.get("x-request-id", ""))
            return Response(200, ANSWER)
        return handle

    servers = [HttpServer(recorder(seen[0])), HttpServer(recorder(seen[1]))]
    urls = [f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}" for server in servers]
    router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, timeout=2, mirror_when=mirror_when))
    router.apply_config(RouterConfig(MODEL, "ml", (Backend("v1", None, 8080, weight=100, url=urls[0]),),
                                     Backend("v2", None, 8080, url=urls[1], mirror_percent=100)))
    try:
        for k, request_id in enumerate(given):
            if k == wrap_before:
                router._ids = itertools.count(0xFFFFFFFF + 1)  # as after 2**32 ids
            headers = {"content-type": "application/json"} | ({"x-request-id": request_id} if request_id else {})
            answer = router.handle(Request("POST", f"/v2/models/{MODEL}/infer", b"", headers, b'{"inputs":[]}'))
            if inspect.iscoroutine(answer):
                answer = await answer
            else:
                done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                answer.on_done(done.set_result)
                answer = await done
            assert answer.status == 200
        for _ in range(200):
            if len(seen[1]) == len(given) and router.shadow_in_flight == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        router.upstreams.close()
        for server in servers:
            await server.close(timeout=1)
    return seen


def test_one_new_id_per_mirrored_request_on_both_versions() -> None:
    for mirror_when in (MIRROR_SENT, MIRROR_ANSWERED):
        primary, shadow = asyncio.run(_ids(mirror_when, [None] * 5 + ["client-id"]))
        assert sorted(primary) == sorted(shadow), mirror_when  # mirrors may arrive in another order
        assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in primary[:5]), primary
        assert len(set(primary[:5])) == 5
        assert primary[5] == "client-id"


def test_a_wrapped_counter_draws_a_new_prefix() -> None:
    primary, shadow = asyncio.run(_ids(MIRROR_SENT, [None] * 4, wrap_before=2))
    assert sorted(primary) == sorted(shadow)
    assert len(set(primary)) == 4
    assert primary[0][:16] == primary[1][:16] != primary[2][:16] == primary[3][:16]
    assert primary[2][16:] == "00000000"
