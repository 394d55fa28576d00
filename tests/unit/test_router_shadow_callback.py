"""Mirrors on kept connections (the router's callback path for the shadow), against real sockets, on uvloop.

Given the router (noria_server.route, in process, on uvloop) in front of a raw primary and a raw
shadow that keep connections alive, when clients send requests one after another, then only the
first mirror takes the task that connects; the next ones go out on the kept connection through a
callback, and their rows are counted as they were; when the shadow then breaks mid-answer or falls
silent on that kept connection, the mirror ends as an ``error`` row (at once, or by the timeout), the
user's answers are never delayed, and no mirror is left in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from noria import metrics as m
from noria.router_config import Backend, RouterConfig
from noria_server.route import Router, RouterSettings
from raw_http import post_once, read_request

PREDICT = b'{"model_version":"%s","outputs":[{"name":"predict","shape":[2],"datatype":"INT64","data":[1,0]}]}'
TIMEOUT = 1.0


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


ShadowTurn = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


def _mirrored(shadow_turn: ShadowTurn, requests: int) -> dict[str, Any]:
    """``requests`` one after another through a router mirroring 100 % to a shadow whose n-th request
    (on any connection) runs ``shadow_turn(.., n)`` (False: stop answering on that connection)."""

    async def main() -> dict[str, Any]:
        shadow_connections = 0
        shadow_requests = 0

        async def primary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await read_request(reader)
                    writer.write(_answer(PREDICT % b"v1"))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def shadow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal shadow_connections, shadow_requests
            shadow_connections += 1
            try:
                while True:
                    await read_request(reader)
                    shadow_requests += 1
                    if not await shadow_turn(reader, writer, shadow_requests):
                        return
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        servers = [await asyncio.start_server(handler, "127.0.0.1", 0) for handler in (primary, shadow)]
        urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
        router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, timeout=TIMEOUT,
                                       connect_timeout=0.5))
        router.apply_config(RouterConfig("churn", "ml", (Backend("v1", None, 8080, weight=100, url=urls[0]),),
                                         Backend("v2", None, 8080, url=urls[1], mirror_percent=100)))
        connecting = 0
        awaitable_shadow = router._shadow

        def counted_shadow(*args: Any) -> Any:
            nonlocal connecting
            connecting += 1
            return awaitable_shadow(*args)

        router._shadow = counted_shadow  # type: ignore[method-assign]
        await router.start()
        try:
            answers = []
            for _ in range(requests):
                answers.append(await post_once(router.port))
                deadline = time.monotonic() + TIMEOUT + 2
                while router.shadow_in_flight and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                assert router.shadow_in_flight == 0
            outcomes = {outcome: router.metrics.shadow_count("churn", "v1", "v2", outcome)
                        for outcome in (m.OUTCOME_AGREE, m.OUTCOME_DISAGREE, m.OUTCOME_ERROR)}
            return {"answers": answers, "outcomes": outcomes, "connecting": connecting,
                    "shadow_connections": shadow_connections, "busy": len(router.upstreams.busy),
                    "durations": router.metrics.shadow_duration("churn", "v2").sum}
        finally:
            await router.stop(drain=False)
            for server in servers:
                server.close()

    return uvloop.run(main())


def test_mirrors_after_the_first_go_out_on_the_kept_connection_and_are_counted() -> None:
    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(PREDICT % b"v2" if n != 2 else PREDICT.replace(b"[1,0]", b"[1,1]") % b"v2"))
        return True

    got = _mirrored(answers, 3)
    assert [status for status, _ in got["answers"]] == [200, 200, 200]
    assert got["connecting"] == 1 and got["shadow_connections"] == 1, got
    assert got["outcomes"] == {m.OUTCOME_AGREE: 5, m.OUTCOME_DISAGREE: 1, m.OUTCOME_ERROR: 0}
    assert got["busy"] == 0 and got["durations"] > 0


def test_a_shadow_broken_mid_answer_on_the_kept_connection_counts_errors_at_once() -> None:
    async def then_breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(_answer(PREDICT % b"v2"))
            return True
        writer.write(_answer(PREDICT % b"v2")[:30])  # half an answer, then the connection closes
        await writer.drain()
        return False

    started = time.monotonic()
    got = _mirrored(then_breaks, 2)
    assert [status for status, _ in got["answers"]] == [200, 200]
    assert got["connecting"] == 1
    assert got["outcomes"] == {m.OUTCOME_AGREE: 2, m.OUTCOME_DISAGREE: 0, m.OUTCOME_ERROR: 2}
    assert time.monotonic() - started < TIMEOUT + 1.5  # not held to the timeout


def test_a_silent_shadow_on_the_kept_connection_ends_by_the_timeout_and_never_delays_the_user() -> None:
    async def then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(_answer(PREDICT % b"v2"))
            return True
        await asyncio.sleep(TIMEOUT * 3)
        return False

    got = _mirrored(then_silent, 2)
    assert [status for status, _ in got["answers"]] == [200, 200]
    assert all(seconds < TIMEOUT / 2 for _, seconds in got["answers"]), got["answers"]
    assert got["connecting"] == 1
    assert got["outcomes"] == {m.OUTCOME_AGREE: 2, m.OUTCOME_DISAGREE: 0, m.OUTCOME_ERROR: 2}
    assert got["busy"] == 0
