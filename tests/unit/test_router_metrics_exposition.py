"""The router's per-request series, counted without prometheus_client's locks, as Prometheus reads them.

Given the router (in process, on uvloop) in front of a raw backend, when clients send answered
requests, requests pinned to an unknown version and probes, then ``/metrics`` shows
``noria_request_duration_seconds`` (buckets, count, sum) by model and version and
``noria_router_requests_total`` by code exactly as many times as they happened (probes and scrapes
not counted), in the text format Prometheus parses.
"""

from __future__ import annotations

import asyncio

import uvloop
from noria import metrics as m
from noria.router_config import Backend, RouterConfig
from noria_server.route import Router, RouterSettings
from prometheus_client.parser import text_string_to_metric_families
from raw_http import read_request

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def _exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length"):
                length = int(line.split(b":")[1])
        return status, await reader.readexactly(length)
    finally:
        writer.close()


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def main() -> bytes:
        async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await read_request(reader)
                    writer.write(ANSWER)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, timeout=2))
        router.apply_config(RouterConfig("churn", "ml", (Backend("v1", None, 8080, weight=100, url=url),)))
        await router.start()
        try:
            infer = b"POST /v2/models/churn/infer HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n"
            for _ in range(7):
                assert (await _exchange(router.port, infer, b"{}"))[0] == 200
            pinned = infer + b"x-noria-version: nope\r\n"
            for _ in range(2):
                assert (await _exchange(router.port, pinned, b"{}"))[0] == 404
            assert (await _exchange(router.port, b"GET /v2/health/ready HTTP/1.1\r\nhost: r\r\n"))[0] == 200
            await _exchange(router.port, b"GET /metrics HTTP/1.1\r\nhost: r\r\n")
            return (await _exchange(router.port, b"GET /metrics HTTP/1.1\r\nhost: r\r\n"))[1]
        finally:
            await router.stop(drain=False)
            server.close()

    text = uvloop.run(main()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_durations_and_answer_codes_are_counted_once_each_and_parse() -> None:
    samples = _samples()
    series = (("model", "churn"), ("version", "v1"))
    assert samples[(m.REQUEST_DURATION_SECONDS + "_count", series)] == 7
    assert samples[(m.REQUEST_DURATION_SECONDS + "_bucket", (("le", "+Inf"), *series))] == 7
    assert 0 < samples[(m.REQUEST_DURATION_SECONDS + "_sum", series)] < 7 * 2
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in samples.items()
                     if name == m.REQUEST_DURATION_SECONDS + "_bucket")
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)  # cumulative
    assert samples[(m.ROUTER_REQUESTS_TOTAL, (("code", "200"),))] == 7
    assert samples[(m.ROUTER_REQUESTS_TOTAL, (("code", "404"),))] == 2
    assert samples[(m.ROUTER_REQUESTS_TOTAL, (("code", "502"),))] == 0  # present from the start
