"""The router's upstream client (noria_server.upstream) against real sockets.

Given real HTTP servers on localhost (Noria's own HttpServer, or a raw asyncio server that
misbehaves on purpose), when the router's client sends requests through its keep-alive pool, then
connections are reused, bodies and the binary-extension header go through byte for byte, a
kept-alive connection the server closed is retried once on a new one, answers that say
``connection: close`` are not reused, and refused, silent and slow backends end in ``OSError`` or
``TimeoutError`` within the configured bounds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
from noria_server.httpserver import HttpServer, Request, Response
from noria_server.launch import free_port
from noria_server.upstream import Upstreams

BINARY_LENGTH = b"inference-header-content-length"


def _echo(request: Request) -> Response:
    """Answer the request's body as it came, with its binary-extension header echoed back."""
    headers = [(BINARY_LENGTH, request.headers[BINARY_LENGTH.decode()].encode())] \
        if BINARY_LENGTH.decode() in request.headers else []
    return Response(200, request.body, request.headers.get("content-type", "").encode() or b"application/json",
                    headers)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, HttpServer]]:
    server = HttpServer(_echo)
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        await server.close(timeout=1)


async def test_sequential_requests_share_one_kept_alive_connection(echo: tuple[str, HttpServer]) -> None:
    url, server = echo
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        for i in range(20):
            answer = await upstreams.request(url, "POST", "/echo", [], b'{"n": %d}' % i)
            assert answer.status == 200 and answer.body == b'{"n": %d}' % i
        assert len(server.connections) == 1
        assert len(upstreams.pool(url).idle) == 1
    finally:
        upstreams.close()


async def test_concurrent_requests_open_one_connection_each_and_keep_them(echo: tuple[str, HttpServer]) -> None:
    url, server = echo
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        answers = await asyncio.gather(*(upstreams.request(url, "POST", "/echo", [], b"x" * i) for i in range(8)))
        assert [a.body for a in answers] == [b"x" * i for i in range(8)]
        assert len(upstreams.pool(url).idle) == 8
        await asyncio.gather(*(upstreams.request(url, "POST", "/echo", [], b"y") for _ in range(8)))
        assert len(server.connections) == 8  # reused, none opened
    finally:
        upstreams.close()


async def test_binary_bodies_and_their_header_go_through_byte_for_byte(echo: tuple[str, HttpServer]) -> None:
    url, _ = echo
    json_header = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}'
    body = json_header + os.urandom(16) + b"\r\n\r\n\x00" + os.urandom(200_000)  # larger than one joined write
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        answer = await upstreams.request(url, "POST", "/v2/models/m/infer",
                                         [(b"content-type", b"application/octet-stream"),
                                          (BINARY_LENGTH, str(len(json_header)).encode())], body)
        assert answer.body == body
        assert answer.header(b"content-type") == b"application/octet-stream"
        assert answer.header(BINARY_LENGTH) == str(len(json_header)).encode()
    finally:
        upstreams.close()


async def _raw_server(handle: object) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def test_a_kept_connection_the_server_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    connections = 0

    async def answer_once_then_close_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        try:
            await _read_request(reader)  # the next request on this connection: closed without a byte
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server, url = await _raw_server(answer_once_then_close_unanswered)
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        assert (await upstreams.request(url, "POST", "/", [], b"1")).status == 200
        assert (await upstreams.request(url, "POST", "/", [], b"2")).status == 200
        assert connections == 2
    finally:
        upstreams.close()
        server.close()


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry() -> None:
    connections = 0

    async def close_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.close()

    server, url = await _raw_server(close_unanswered)
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        with pytest.raises(ConnectionError):
            await upstreams.request(url, "POST", "/", [], b"1")
        assert connections == 1
    finally:
        upstreams.close()
        server.close()


async def test_an_answer_saying_connection_close_is_not_reused() -> None:
    connections = 0

    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        await writer.drain()
        writer.close()

    server, url = await _raw_server(answer_and_close)
    upstreams = Upstreams(timeout=2, connect_timeout=1)
    try:
        for _ in range(3):
            assert (await upstreams.request(url, "POST", "/", [], b"x")).body == b"{}"
        assert connections == 3
        assert not upstreams.pool(url).idle
    finally:
        upstreams.close()
        server.close()


async def test_refused_silent_and_broken_backends_fail_within_their_bounds() -> None:
    upstreams = Upstreams(timeout=0.5, connect_timeout=0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK[:-1])  # one byte short, then gone
        await writer.drain()
        writer.close()

    silent_server, silent_url = await _raw_server(silent)
    broken_server, broken_url = await _raw_server(half_answer)
    try:
        with pytest.raises(OSError):
            await upstreams.request(f"http://127.0.0.1:{free_port()}", "POST", "/", [], b"x")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await upstreams.request(silent_url, "POST", "/", [], b"x")
        assert 0.4 < time.monotonic() - started < 1.5
        assert not upstreams.pool(silent_url).idle  # a timed-out connection is never reused
        with pytest.raises(ConnectionError, match="during the answer"):
            await upstreams.request(broken_url, "POST", "/", [], b"x")
    finally:
        upstreams.close()
        silent_server.close()
        broken_server.close()


async def test_idle_connections_past_keepalive_are_closed_and_their_pool_forgotten(
        echo: tuple[str, HttpServer]) -> None:
    url, server = echo
    upstreams = Upstreams(timeout=2, connect_timeout=1, keepalive_seconds=0.1)
    try:
        await upstreams.request(url, "POST", "/", [], b"x")
        upstreams.close_expired()
        assert url in upstreams.pools  # still fresh
        await asyncio.sleep(0.15)
        upstreams.close_expired()
        assert url not in upstreams.pools
        await asyncio.sleep(0.05)
        assert not server.connections
    finally:
        upstreams.close()


async def test_an_answer_to_head_ends_at_its_headers_whatever_content_length_says() -> None:
    async def answer_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(2)  # the 20 bytes never come: they are the size a GET would have had
        writer.close()

    server, url = await _raw_server(answer_head)
    upstreams = Upstreams(timeout=1, connect_timeout=1)
    try:
        answer = await upstreams.request(url, "HEAD", "/v2/health/ready", [], b"")
        assert answer.status == 200 and answer.body == b""
        assert not upstreams.pool(url).idle  # its parser would wait for a body: not reused
    finally:
        upstreams.close()
        server.close()
