"""Mirrors sent alongside the primary (``mirror_when="sent"``), against real sockets, on uvloop.

Given the router (noria_server.route, in process, on uvloop) with a 100 % shadow and ``mirror_when``
``sent``, in front of a raw primary and a raw shadow that keep connections alive:

- when the primary takes 0.3 s to answer, each mirror reaches the shadow while the primary is still
  working (right after the primary's request), not after the user's answer; the comparison is made
  when the primary's answer comes, and its rows are exact (agree and disagree);
- when the shadow answers last, the comparison is made then, and the user's answer did not wait;
- a shadow that never answers or that resets the connection never delays or fails the user's
  answer: its rows count as ``error`` (by the timeout, or at once), and no mirror stays in flight;
- mirrors waiting for the primary's answer count against ``max_shadow_in_flight``;
- a primary that fails leaves nothing to compare: the shadow is only timed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from noria import metrics as m
from noria.router_config import Backend, RouterConfig
from noria_server.route import MIRROR_SENT, Router, RouterSettings
from raw_http import post_once, read_request

PREDICT = b'{"model_version":"%s","outputs":[{"name":"predict","shape":[2],"datatype":"INT64","data":[1,0]}]}'
OTHER = PREDICT.replace(b"[1,0]", b"[1,1]")  # one row of two differs
TIMEOUT = 1.0
SLOW = 0.3

# One request's turn on a backend: (writer, n-th request on that backend) -> False to stop answering.
Turn = Callable[[asyncio.StreamWriter, int], Awaitable[bool]]


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def answers(body: bytes, delay: float = 0.0, other_on: int = 0) -> Turn:
    async def turn(writer: asyncio.StreamWriter, n: int) -> bool:
        if delay:
            await asyncio.sleep(delay)
        writer.write(_answer(OTHER % b"v2" if n == other_on else body))
        return True

    return turn


def _backend(turn: Turn, arrived: list[float]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                           Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                arrived.append(time.monotonic())
                if not await turn(writer, len(arrived)):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve


def _run(primary: Turn, shadow: Turn, requests: int, concurrent: bool = False, max_in_flight: int = 512,
         mirror_when: str = MIRROR_SENT) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        primary_arrived: list[float] = []
        shadow_arrived: list[float] = []
        servers = [await asyncio.start_server(_backend(turn, arrived), "127.0.0.1", 0)
                   for turn, arrived in ((primary, primary_arrived), (shadow, shadow_arrived))]
        urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
        router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, timeout=TIMEOUT,
                                       connect_timeout=0.5, max_shadow_in_flight=max_in_flight,
                                       mirror_when=mirror_when))
        router.apply_config(RouterConfig("churn", "ml", (Backend("v1", None, 8080, weight=100, url=urls[0]),),
                                         Backend("v2", None, 8080, url=urls[1], mirror_percent=100)))
        await router.start()
        most_in_flight = 0

        async def watch() -> None:
            nonlocal most_in_flight
            while True:
                most_in_flight = max(most_in_flight, router.shadow_in_flight)
                await asyncio.sleep(0.002)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            got: list[tuple[int, float, float]] = []  # (status, seconds, answered at)

            async def one() -> None:
                status, seconds = await post_once(router.port)
                got.append((status, seconds, time.monotonic()))

            if concurrent:
                await asyncio.gather(*(one() for _ in range(requests)))
            else:
                for _ in range(requests):
                    await one()
            in_flight_after_answers = router.shadow_in_flight
            deadline = time.monotonic() + TIMEOUT + 2
            while router.shadow_in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            outcomes = {outcome: router.metrics.shadow_count("churn", "v1", "v2", outcome)
                        for outcome in (m.OUTCOME_AGREE, m.OUTCOME_DISAGREE, m.OUTCOME_ERROR)}
            durations = router.metrics.shadow_duration("churn", "v2")
            overload = router.metrics.errors.labels("churn", "v2", m.ROUTER_ERROR_SHADOW_OVERLOAD)._value.get()
            return {"answers": got, "outcomes": outcomes, "in_flight": router.shadow_in_flight,
                    "in_flight_after_answers": in_flight_after_answers, "most_in_flight": most_in_flight,
                    "primary_arrived": primary_arrived, "shadow_arrived": shadow_arrived,
                    "timed": durations.count if durations else 0, "overload": overload,
                    "busy": len(router.upstreams.busy)}
        finally:
            watcher.cancel()
            await router.stop(drain=False)
            for server in servers:
                server.close()

    return uvloop.run(main())


def outcomes(agree: int, disagree: int = 0, error: int = 0) -> dict[str, int]:
    return {m.OUTCOME_AGREE: agree, m.OUTCOME_DISAGREE: disagree, m.OUTCOME_ERROR: error}


def test_the_mirror_leaves_with_the_primary_request_and_is_compared_when_the_primary_answers() -> None:
    # Three requests one after another: the first connects (to both), the next ones use kept connections.
    got = _run(answers(PREDICT % b"v1", delay=SLOW), answers(PREDICT % b"v2", other_on=2), 3)
    assert [status for status, _, _ in got["answers"]] == [200, 200, 200]
    assert len(got["shadow_arrived"]) == 3
    for primary_at, shadow_at, (_, _, answered_at) in zip(got["primary_arrived"], got["shadow_arrived"],
                                                         got["answers"], strict=True):
        assert abs(shadow_at - primary_at) < SLOW / 2  # sent with the primary's request ...
        assert shadow_at < answered_at - SLOW / 2  # ... long before the user's answer
    # Every shadow answered first; each comparison waited for the primary's answer: 2 rows each, exact.
    assert got["outcomes"] == outcomes(agree=5, disagree=1)
    assert got["timed"] == 3 and got["in_flight"] == 0 and got["busy"] == 0


def test_the_default_still_mirrors_after_the_answer() -> None:
    got = _run(answers(PREDICT % b"v1", delay=SLOW), answers(PREDICT % b"v2"), 2, mirror_when="answered")
    assert all(shadow_at > answered_at - 0.05 for shadow_at, (_, _, answered_at)
               in zip(got["shadow_arrived"], got["answers"], strict=True))
    assert got["outcomes"] == outcomes(agree=4)


def test_a_shadow_answering_last_is_compared_then_and_never_delays_the_user() -> None:
    got = _run(answers(PREDICT % b"v1"), answers(PREDICT % b"v2", delay=SLOW, other_on=1), 3)
    assert [status for status, _, _ in got["answers"]] == [200, 200, 200]
    assert all(seconds < SLOW / 2 for _, seconds, _ in got["answers"]), got["answers"]
    assert got["in_flight_after_answers"] >= 1  # the last mirror was still out when its user had the answer
    assert got["outcomes"] == outcomes(agree=5, disagree=1)
    assert got["in_flight"] == 0


def test_a_shadow_that_never_answers_neither_delays_nor_fails_the_user() -> None:
    async def silent(writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(TIMEOUT * 3)
        return False

    started = time.monotonic()
    got = _run(answers(PREDICT % b"v1"), silent, 2)
    assert [status for status, _, _ in got["answers"]] == [200, 200]
    assert all(seconds < TIMEOUT / 2 for _, seconds, _ in got["answers"]), got["answers"]
    assert got["outcomes"] == outcomes(agree=0, error=4)  # by the timeout, 2 rows each
    assert got["in_flight"] == 0 and got["busy"] == 0
    assert time.monotonic() - started < TIMEOUT * 3


def test_a_shadow_that_resets_neither_delays_nor_fails_the_user() -> None:
    async def resets(writer: asyncio.StreamWriter, n: int) -> bool:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, no answer
        return False

    got = _run(answers(PREDICT % b"v1", delay=0.05), resets, 3)
    assert [status for status, _, _ in got["answers"]] == [200, 200, 200]
    assert all(seconds < TIMEOUT / 2 for _, seconds, _ in got["answers"]), got["answers"]
    assert got["outcomes"] == outcomes(agree=0, error=6)
    assert got["timed"] == 3 and got["in_flight"] == 0


def test_mirrors_waiting_for_the_primary_count_against_the_bound() -> None:
    got = _run(answers(PREDICT % b"v1", delay=SLOW), answers(PREDICT % b"v2"), 4, concurrent=True,
               max_in_flight=2)
    assert [status for status, _, _ in got["answers"]] == [200] * 4
    assert len(got["shadow_arrived"]) == 2 and got["overload"] == 2
    assert got["most_in_flight"] == 2
    assert got["outcomes"] == outcomes(agree=4) and got["in_flight"] == 0


def test_a_failed_primary_leaves_nothing_to_compare() -> None:
    async def fails(writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\n{}")
        return True

    got = _run(fails, answers(PREDICT % b"v2"), 2)
    assert [status for status, _, _ in got["answers"]] == [500, 500]
    assert got["outcomes"] == outcomes(agree=0)
    assert got["timed"] == 2 and got["in_flight"] == 0


def test_mirror_when_is_checked() -> None:
    with pytest.raises(ValueError, match="mirror_when"):
        RouterSettings(mirror_when="later")
