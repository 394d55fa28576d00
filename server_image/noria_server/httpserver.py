"""A small HTTP/1.1 server on asyncio + httptools, shared by the model server and the router.

Why not a framework: measured on this 2-core machine with wrk (16 connections, the same JSON
POST parsed with orjson, server pinned to one core), a raw ``asyncio.Protocol`` over httptools'
parser answered ~40,000 req/s, uvicorn + a raw ASGI app ~6,000-13,000, granian (ASGI) ~5,200,
aiohttp's low-level server ~4,300 and ``aiohttp.web`` ~3,000. The model server's budget per
request is a few hundred microseconds, so the framework's share matters; this file is the whole
HTTP layer and supports exactly what OIP v2 clients, Prometheus and kubelet probes use:
keep-alive, ``Connection: close``, HTTP/1.0, ``Expect: 100-continue``, content-length and chunked
request bodies, pipelined requests (answered in order), a body-size limit (413), and a graceful
close that finishes in-flight requests.

A handler is ``handler(request) -> Response | Awaitable[Response]``: answering synchronously
(health checks, metrics) skips creating a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
JSON = b"application/json"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: bytes
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), JSON, headers or [])


def error_response(status: int, message: str, **extra: Any) -> Response:
    return json_response(status, {"error": message, **extra})


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, dispatch, write answers in request order."""

    __slots__ = ("server", "transport", "parser", "url", "headers", "body", "body_size", "too_large",
                 "queue", "busy", "keep_alive", "closing")

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.queue: deque[tuple[Request, bool, bool]] = deque()
        self.busy = False
        self.keep_alive = True
        self.closing = False

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # --- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self.too_large = True
        elif self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(body)
        if self.body_size > self.server.max_body_bytes:
            self.too_large = True
            self.body = []
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        request = Request(self.parser.get_method().decode("ascii", "replace"), path.decode("utf-8", "replace"),
                          query, self.headers, b"".join(self.body))
        keep_alive = self.parser.should_keep_alive()
        if self.too_large:
            # The rest of the connection cannot be trusted to be framed as the client thinks.
            keep_alive = False
        self.queue.append((request, keep_alive, self.too_large))
        if not self.busy:
            self._next()

    # --- dispatch ----------------------------------------------------------------------------
    def _next(self) -> None:
        while self.queue and not self.closing:
            request, keep_alive, too_large = self.queue.popleft()
            if too_large:
                result: Response | Awaitable[Response] = error_response(
                    413, f"request body larger than {self.server.max_body_bytes} bytes", **self.server.error_fields())
            else:
                try:
                    result = self.server.handler(request)
                except Exception as exc:  # a handler bug must not kill the connection loop
                    log.exception("handler failed")
                    result = error_response(500, f"internal error: {type(exc).__name__}: {exc}",
                                            **self.server.error_fields())
            if isinstance(result, Response):
                self._write(result, keep_alive)
                continue
            self.busy = True
            self.server.in_flight += 1
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t, ka=keep_alive: self._done(t, ka))
            return
        self.busy = False

    def _done(self, task: asyncio.Future[Response], keep_alive: bool) -> None:
        self.server.in_flight -= 1
        try:
            response = task.result()
        except asyncio.CancelledError:
            response = error_response(503, "the server is shutting down")
        except Exception as exc:
            log.exception("handler failed")
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        self._write(response, keep_alive)
        self.busy = False
        self._next()
        if not self.busy and self.server.in_flight == 0 and self.server.drained is not None:
            self.server.drained.set()

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self.transport is None:
            return
        keep_alive = keep_alive and not self.server.stopping
        head = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                % (response.status, _REASONS.get(response.status, b"Unknown"), response.content_type,
                   len(response.body))]
        for name, value in response.headers:
            head.append(b"%s: %s\r\n" % (name, value))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(response.body)
        self.transport.write(b"".join(head))
        if not keep_alive:
            self.closing = True
            self.transport.close()

    def _fail(self, status: int, message: str) -> None:
        self.queue.clear()
        self._write(error_response(status, message, **self.server.error_fields()), keep_alive=False)

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Listen on ``host:port`` and answer with ``handler``; ``close()`` drains in-flight requests."""

    def __init__(self, handler: Handler, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 error_fields: Callable[[], dict[str, Any]] = dict) -> None:
        self.handler = handler
        self.error_fields = error_fields  # extra fields of the errors this layer answers itself (413, 400)
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.stopping = False
        self.drained: asyncio.Event | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=2048,
                                                reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), close connections."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.in_flight:
            self.drained = asyncio.Event()
            try:
                await asyncio.wait_for(self.drained.wait(), timeout)
            except TimeoutError:
                log.warning("%d requests still in flight after %.0fs; closing anyway", self.in_flight, timeout)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
