"""A small HTTP/1.1 server on asyncio + httptools, shared by the model server and the router.

Why not a framework: measured on this 2-core machine with wrk (16 connections, the same JSON
POST parsed with orjson, server pinned to one core), a raw ``asyncio.Protocol`` over httptools'
parser answered ~40,000 req/s, uvicorn + a raw ASGI app ~6,000-13,000, granian (ASGI) ~5,200,
aiohttp's low-level server ~4,300 and ``aiohttp.web`` ~3,000; granian's RSGI interface, measured
again against this layer with its limits on, is in docs/security/http.md. The model server's
budget per request is a few hundred microseconds, so the framework's share matters; this file is
the whole HTTP layer and supports exactly what OIP v2 clients, Prometheus and kubelet probes use:
keep-alive, ``Connection: close``, HTTP/1.0, ``Expect: 100-continue``, content-length and chunked
request bodies, pipelined requests (answered in order), half-closed clients, and a graceful close
that finishes in-flight requests.

Everything a client sends is bounded (``HttpLimits``, docs/security/http.md): the request line,
the header section (bytes and count), the body (413 decided from ``Content-Length`` before any of
it is read, and before ``100 Continue`` is sent), the time to send the headers and the body, the
time a kept-alive connection may sit idle, the number of connections, the request bodies held by
all connections together until they are answered (past it: 503, so connections × body limit is
never what memory must hold), and the number of pipelined requests buffered (reading pauses, as
it does while the client does not read our answers). A
refused request gets a JSON error and ``connection: close``; the connection then discards input
for a moment before closing ("lingering close"), so the client reads the answer instead of a
reset. Every answer this layer or the handler gives goes through ``on_response`` (the servers
count it in ``noria_requests_total{code}``), and every limit hit is counted by reason in
``HttpServer.limit_hits`` (``noria_http_limit_total``).

Deadlines are not timers per request: each connection holds one deadline (loop time), updated at
state changes, and one sweeper task per server closes the expired ones every fraction of the
shortest timeout, which keeps the per-request cost to two attribute writes.

A handler is ``handler(request) -> Response | Reply | Awaitable[Response]``: answering synchronously
(health checks, metrics) skips creating a task, and a ``Reply`` is written the moment it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from functools import partial
from http import HTTPStatus
from typing import Any

import httptools
import orjson

log = logging.getLogger(__name__)

JSON = b"application/json"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Requests parsed ahead of the one being answered (pipelining) before reading pauses.
MAX_PIPELINED = 32
# After a refusal: how long to discard what the client still sends before closing, so the
# refusal is read instead of lost to a TCP reset.
LINGER_SECONDS = 1.0
# A connection holding no more than this of unanswered bodies is never refused by the body budget:
# ordinary requests go on being served while large ones fill it (memory stays under the budget plus
# connections x this).
SMALL_BODY_BYTES = 32 * 1024
# Bodies held at some point above this, then all released: give the freed heap back (malloc_trim).
TRIM_AFTER_BYTES = 8 * 1024 * 1024
# Raw bytes of a request head beyond the URL and header limits before it is cut off regardless
# (method, version, separators and line ends).
HEAD_SLACK_BYTES = 4096

# Reasons in noria_http_limit_total{limit}.
LIMIT_URL = "url"
LIMIT_HEADER_BYTES = "header_bytes"
LIMIT_HEADER_COUNT = "header_count"
LIMIT_BODY = "body"
LIMIT_HEADER_TIMEOUT = "header_timeout"
LIMIT_BODY_TIMEOUT = "body_timeout"
LIMIT_IDLE_TIMEOUT = "idle_timeout"
LIMIT_WRITE_TIMEOUT = "write_timeout"
LIMIT_CONNECTIONS = "connections"
LIMIT_BODY_BUDGET = "body_budget"
LIMIT_MALFORMED = "malformed"
LIMITS = (LIMIT_URL, LIMIT_HEADER_BYTES, LIMIT_HEADER_COUNT, LIMIT_BODY, LIMIT_HEADER_TIMEOUT, LIMIT_BODY_TIMEOUT,
          LIMIT_IDLE_TIMEOUT, LIMIT_WRITE_TIMEOUT, LIMIT_CONNECTIONS, LIMIT_BODY_BUDGET, LIMIT_MALFORMED)


@dataclass(frozen=True)
class HttpLimits:
    """What one client may cost the server. Defaults suit OIP clients, probes and Prometheus."""

    max_url_bytes: int = 8 * 1024  # request target (path + query)
    max_header_bytes: int = 32 * 1024  # sum of header names and values
    max_headers: int = 100
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0  # first byte of a request (or the connection) -> end of its headers
    body_timeout: float = 30.0  # end of headers -> end of body
    # Longer than the router's client keep-alive (30 s) so it never reuses a connection we just closed.
    idle_timeout: float = 75.0
    max_connections: int = 1024
    # Request bodies held by all connections until answered (received, queued or being handled).
    max_buffered_body_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"HTTP limit {f.name} must be positive, got {value!r}")

    @property
    def max_head_bytes(self) -> int:
        return self.max_url_bytes + self.max_header_bytes + HEAD_SLACK_BYTES


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


class Reply:
    """An answer the handler gives later (the model server's micro-batch), written the moment it is
    set. An asyncio future runs its callbacks in the loop's next iteration, after the loop has polled
    for I/O and parsed every request that arrived meanwhile: a micro-batch's answers waited for the
    next batch's parsing (~0.1 ms of CPU per request, measured) and for the ledger and log work
    after them."""

    __slots__ = ("_callback", "_response")

    def __init__(self) -> None:
        self._callback: Callable[[Response], None] | None = None
        self._response: Response | None = None

    def done(self) -> bool:
        return self._response is not None

    def set_result(self, response: Response) -> None:
        if self._response is not None:
            raise RuntimeError("the reply was already given")
        self._response = response
        callback, self._callback = self._callback, None
        if callback is not None:
            try:
                callback(response)
            except Exception:  # as the loop does for a future's callback: the caller's batch goes on
                log.exception("writing an answer failed")

    def on_done(self, callback: Callable[[Response], None]) -> None:
        """``callback(response)`` once the reply is set (at once if it is)."""
        if self._response is not None:
            callback(self._response)
        else:
            self._callback = callback


Handler = Callable[[Request], "Response | Reply | Awaitable[Response]"]
# Called once per answer with the request it answers (None for answers given before a request
# was complete: malformed, over a limit, timed out, refused at accept) and the status code.
ResponseHook = Callable[["Request | None", int], None]


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing after the refusal was written."""


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, dispatch, write answers in request order."""

    __slots__ = ("server", "limits", "clock", "transport", "parser", "url", "headers", "header_count", "header_bytes",
                 "head_bytes", "body", "body_size", "held", "chunk_body", "completed_in_chunk", "queue", "busy",
                 "reading", "deadline", "eof", "closing", "discarding", "read_paused", "write_paused", "counted")

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.clock = server.now  # the loop's clock, bound once
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_count = 0
        self.header_bytes = 0
        self.head_bytes = 0  # raw bytes of the current request's unfinished head, as far as known
        self.body: list[bytes] = []
        self.body_size = 0
        self.held = 0  # body bytes of this connection's unanswered requests (in server.buffered too)
        self.chunk_body = 0  # body bytes of the chunk being fed
        self.completed_in_chunk = False
        self.queue: deque[tuple[Request, bool]] = deque()
        self.busy = False
        self.reading = "idle"  # idle (between requests) | head | body
        self.deadline = 0.0  # loop time at which on_deadline runs; 0 = none (a request is being answered)
        self.eof = False  # the client shut down its sending side
        self.closing = False
        self.discarding = False  # refused: input is dropped until the client closes or LINGER_SECONDS pass
        self.read_paused = False
        self.write_paused = False
        self.counted = False  # in server.active (refused connections are not)

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self.server
        server.connections.add(self)
        if server.active >= self.limits.max_connections:
            server.limit_hits[LIMIT_CONNECTIONS] += 1
            if len(server.connections) > 2 * self.limits.max_connections:
                transport.abort()  # type: ignore[attr-defined]  # even refusals are capped
                return
            self._refuse(503, f"the server has {self.limits.max_connections} open connections, its limit; "
                              f"retry later")
            return
        server.active += 1
        self.counted = True
        self.deadline = self.clock() + self.limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._release()
        # The parser and this protocol refer to each other, so the object waits for the cyclic GC;
        # what a half-sent request holds is dropped now rather than then.
        self.body = []
        self.headers = {}
        self.url = b""
        self.queue.clear()
        if self.counted:
            self.counted = False
            self.server.active -= 1
        self.closing = True
        self.transport = None

    def eof_received(self) -> bool:
        self.eof = True
        # Keep the sending side open while an answer is still owed (a client may send a request,
        # shut down its write side and wait for the answer); _next closes after the last one.
        return bool(not self.discarding and (self.busy or self.queue))

    def pause_writing(self) -> None:  # the client does not read our answers: stop reading its requests
        self.write_paused = True
        self._pause_reading()
        self.deadline = self.clock() + self.limits.idle_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        if len(self.queue) < MAX_PIPELINED:
            self._resume_reading()
        self._rearm()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.chunk_body = 0
        self.completed_in_chunk = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A request offering an upgrade (h2c from `curl --http2`, websocket, CONNECT) is complete and
            # dispatched: it is answered in HTTP/1.1 (a server may ignore the offer), and what follows it
            # belongs to a protocol this server does not speak, so reading stops and the connection
            # closes once the answers are written, as after a half-close.
            self.eof = True
            self._pause_reading()
            if not self.busy and not self.queue:
                self._close()
            return
        except httptools.HttpParserError as exc:
            if not self.closing:  # not one of our own refusals raised through a callback
                if isinstance(exc, httptools.HttpParserCallbackError):
                    log.exception("HTTP parser callback failed")
                self._refuse_request(400, f"malformed HTTP request: {exc}", LIMIT_MALFORMED)
            return
        if self.reading != "idle" and not self.closing:
            # httptools buffers a header -- or a trailer after a chunked body -- internally until its
            # value is complete, so the raw bytes that are not body (head, chunk framing, trailers)
            # are bounded here, chunk by chunk (when a request ended inside this chunk the split is
            # unknown: the next chunks count in full).
            if not self.completed_in_chunk:
                self.head_bytes += len(data) - self.chunk_body
            if self.reading == "head" and self.head_bytes > self.limits.max_head_bytes:
                self._refuse_request(431, f"request head larger than {self.limits.max_head_bytes} bytes",
                                     LIMIT_HEADER_BYTES)
            elif self.head_bytes > self.limits.max_head_bytes + self.body_size:
                self._refuse_request(431, f"chunk framing and trailers larger than the body plus "
                                          f"{self.limits.max_head_bytes} bytes", LIMIT_HEADER_BYTES)

    # --- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.header_count = 0
        self.header_bytes = 0
        self.head_bytes = 0
        self.body = []
        self.body_size = 0
        self.reading = "head"
        self.deadline = self.clock() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse_request(414, f"request target longer than {self.limits.max_url_bytes} bytes", LIMIT_URL)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:  # before the dict grows: one read can hold 20,000
            self._refuse_request(431, f"more than {self.limits.max_headers} header fields", LIMIT_HEADER_COUNT)
            raise _Refused
        # The sum is checked once the headers are complete (the raw head bound in data_received
        # keeps what can arrive before that to one read).
        self.header_bytes += len(name) + len(value)
        if self.reading == "body":
            # A trailer field (after a chunked body): held to the header limits (the head's own check
            # has run already) and dropped, never merged into the headers, where it could pass for a
            # header that a proxy in front checked or removed (x-noria-version, authorization).
            if self.header_bytes > self.limits.max_header_bytes:
                self._refuse_request(431, f"header and trailer fields larger than {self.limits.max_header_bytes} "
                                          f"bytes in total", LIMIT_HEADER_BYTES)
                raise _Refused
            return
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        limits = self.limits
        if self.header_bytes > limits.max_header_bytes:
            self._refuse_request(431, f"header fields larger than {limits.max_header_bytes} bytes in total",
                                 LIMIT_HEADER_BYTES)
            raise _Refused
        self.reading = "body"
        self.deadline = self.clock() + self.limits.body_timeout
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            # Refused from the declared length: no body byte is read, no 100 Continue is sent.
            self._refuse_request(413, f"request body of {length} bytes is larger than the limit of "
                                      f"{self.limits.max_body_bytes} bytes", LIMIT_BODY)
            raise _Refused
        if self.parser.should_upgrade() and (length not in (None, "0") or "transfer-encoding" in self.headers):
            # httptools skips the body of a request that offers an upgrade (it would be the new
            # protocol's): refuse the request whole rather than run it without its body.
            self._refuse_request(400, "this server speaks HTTP/1.1 only: a request with a body cannot offer "
                                      "'Upgrade'; send it without (curl: --http1.1 rather than --http2)",
                                 LIMIT_MALFORMED)
            raise _Refused
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.chunk_body += len(body)
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_bytes:  # chunked, or more than Content-Length said
            self.body = []
            self._refuse_request(413, f"request body larger than the limit of {self.limits.max_body_bytes} bytes",
                                 LIMIT_BODY)
            raise _Refused
        self.held += len(body)
        server = self.server
        server.buffered += len(body)
        if server.buffered > self.limits.max_buffered_body_bytes and self.held > SMALL_BODY_BYTES:
            self._refuse_request(503, f"the server holds {self.limits.max_buffered_body_bytes} bytes of request "
                                      f"bodies, its limit; retry later", LIMIT_BODY_BUDGET)
            raise _Refused
        self.body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        request = Request(self.parser.get_method().decode("ascii", "replace"), path.decode("utf-8", "replace"),
                          query, self.headers, b"".join(self.body))
        self.body = []
        self.reading = "idle"
        self.deadline = 0.0
        self.completed_in_chunk = True
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) >= MAX_PIPELINED:
            self._pause_reading()
        if not self.busy:
            self._next()

    # --- dispatch ----------------------------------------------------------------------------
    def _next(self) -> None:
        while self.queue and not self.closing:
            request, keep_alive = self.queue.popleft()
            try:
                result = self.server.handler(request)
            except Exception as exc:  # a handler bug must not kill the connection loop
                log.exception("handler failed")
                result = error_response(500, f"internal error: {type(exc).__name__}: {exc}",
                                        **self.server.error_fields())
            if isinstance(result, Response):
                self._write(result, keep_alive, request)
                continue
            self.busy = True
            self.server.in_flight += 1
            if isinstance(result, Reply):
                result.on_done(partial(self._answered, request=request, keep_alive=keep_alive))
                return
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t, r=request, ka=keep_alive: self._done(t, r, ka))
            return
        self.busy = False
        if self.closing:
            return
        if self.eof:  # a half-closed client got every answer it asked for
            self._close()
            return
        if self.read_paused and not self.write_paused:
            self._resume_reading()
        if self.reading == "idle":
            self.deadline = self.clock() + self.limits.idle_timeout

    def _done(self, task: asyncio.Future[Response], request: Request, keep_alive: bool) -> None:
        try:
            response = task.result()
        except asyncio.CancelledError:
            response = error_response(503, "the server is shutting down")
        except Exception as exc:
            log.exception("handler failed")
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}",
                                      **self.server.error_fields())
        self._answered(response, request, keep_alive)

    def _answered(self, response: Response, request: Request, keep_alive: bool) -> None:
        self.server.in_flight -= 1
        self._write(response, keep_alive, request)
        self.busy = False
        self._next()
        if not self.busy and self.server.in_flight == 0 and self.server.drained is not None:
            self.server.drained.set()

    def _write(self, response: Response, keep_alive: bool, request: Request | None) -> None:
        self.server.on_response(request, response.status)
        if request is not None and request.body:
            released = min(len(request.body), self.held)  # 0 if already released by an abort
            self.held -= released
            self.server.buffered -= released
        if self.transport is None or self.closing:
            return
        keep_alive = keep_alive and not self.server.stopping and not (self.eof and not self.queue)
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
            self._linger()

    # --- refusals, closing ---------------------------------------------------------------------
    def _refuse_request(self, status: int, message: str, limit: str) -> None:
        """Answer ``status`` for the request being read (or close if earlier answers are owed)."""
        self.server.limit_hits[limit] += 1
        self.server.log_refusal("refused a request from %s: %s", self._peer(), message)
        if self.busy or self.queue:
            # Earlier pipelined requests are still being answered; an answer now would be out of order.
            self.queue.clear()
            self.body = []
            self._release()
            self._close(abort=True)
            return
        self._refuse(status, message)

    def _refuse(self, status: int, message: str) -> None:
        self.queue.clear()
        self.body = []
        self._release()
        self.reading = "idle"
        self._write(error_response(status, message, **self.server.error_fields()), False, None)

    def _linger(self) -> None:
        """Stop reading requests; drop input until the client closes or LINGER_SECONDS pass."""
        self.closing = True
        self.discarding = True
        self.deadline = self.clock() + LINGER_SECONDS
        transport = self.transport
        if transport is None:
            return
        if self.eof:
            transport.close()
            return
        self._resume_reading()  # read (and drop) so the client's send buffer empties and it sees our FIN
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()

    def _close(self, abort: bool = False) -> None:
        self.closing = True
        self.deadline = 0.0
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    def on_deadline(self) -> None:
        """Called by the sweeper when ``deadline`` passed."""
        self.deadline = 0.0
        if self.discarding or self.closing:
            self._close()
            return
        limits, hits = self.limits, self.server.limit_hits
        if self.reading != "idle":
            header = self.reading == "head"
            hits[LIMIT_HEADER_TIMEOUT if header else LIMIT_BODY_TIMEOUT] += 1
            message = (f"request headers not complete within {limits.header_timeout:g}s" if header
                       else f"request body not complete within {limits.body_timeout:g}s")
            self.server.log_refusal("closing a connection from %s: %s", self._peer(), message)
            if self.busy or self.queue:
                self._close(abort=True)
            else:
                self._refuse(408, message)
        elif self.write_paused:
            hits[LIMIT_WRITE_TIMEOUT] += 1
            self._close(abort=True)
        elif not self.busy and not self.queue:
            hits[LIMIT_IDLE_TIMEOUT] += 1
            self._close()

    def _release(self) -> None:
        """Forget this connection's share of the buffered bodies (refused, or gone)."""
        self.server.buffered -= self.held
        self.held = 0

    def _rearm(self) -> None:
        now = self.clock()
        if self.reading == "head":
            self.deadline = now + self.limits.header_timeout
        elif self.reading == "body":
            self.deadline = now + self.limits.body_timeout
        elif not self.busy and not self.queue:
            self.deadline = now + self.limits.idle_timeout
        else:
            self.deadline = 0.0

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def _peer(self) -> str:
        info = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{info[0]}:{info[1]}" if isinstance(info, tuple) and len(info) >= 2 else "?"

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and self.transport is not None:
            self.transport.close()


def _no_hook(request: Request | None, status: int) -> None:
    return None


class HttpServer:
    """Listen on ``host:port`` and answer with ``handler``; ``close()`` drains in-flight requests."""

    def __init__(self, handler: Handler, limits: HttpLimits | None = None,
                 error_fields: Callable[[], dict[str, Any]] = dict, on_response: ResponseHook = _no_hook) -> None:
        self.handler = handler
        self.limits = limits or HttpLimits()
        self.limits.validate()
        self.error_fields = error_fields  # extra fields of the errors this layer answers itself (413, 400)
        self.on_response = on_response
        self.connections: set[_Connection] = set()
        self.active = 0  # connections being served (not counting refused ones lingering)
        self.buffered = 0  # request body bytes held until answered, over all connections
        self.buffered_peak = 0  # highest ``buffered`` the sweeper saw since the last trim
        self._logged_at = 0.0
        self._unlogged = 0
        self.limit_hits: Counter[str] = Counter({name: 0 for name in LIMITS})
        self.in_flight = 0
        self.stopping = False
        self.drained: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def log_refusal(self, fmt: str, *args: Any) -> None:
        """One log line per second at most: a flood of refusals is counted in metrics, not logged each."""
        now = time.monotonic()
        if now - self._logged_at < 1.0:
            self._unlogged += 1
            return
        if self._unlogged:
            fmt += " (and %d more refusals in the last second or so; see noria_http_limit_total)"
            args = (*args, self._unlogged)
        log.info(fmt, *args)
        self._logged_at, self._unlogged = now, 0

    def now(self) -> float:  # replaced by the loop's own clock in start()
        raise RuntimeError("the server is not started")

    async def start(self, host: str, port: int) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self.now = loop.time  # type: ignore[method-assign]
        _raise_open_files_limit(2 * self.limits.max_connections + 256)
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=2048,
                                                reuse_address=True)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        limits = self.limits
        tick = min(max(min(limits.header_timeout, limits.body_timeout, limits.idle_timeout, LINGER_SECONDS) / 4,
                       0.02), 0.5)
        while True:
            await asyncio.sleep(tick)
            now = self.now()
            expired = [c for c in self.connections if 0.0 < c.deadline <= now]
            for conn in expired:
                try:
                    conn.on_deadline()
                except Exception:  # one broken connection must not stop the sweeper
                    log.exception("closing an expired connection failed")
            if self.buffered > self.buffered_peak:
                self.buffered_peak = self.buffered
            elif self.buffered == 0 and self.buffered_peak > TRIM_AFTER_BYTES:
                # Large bodies were held and are all released: hand the freed heap back to the
                # system, or the process keeps the attack's high-water mark as resident memory.
                self.buffered_peak = 0
                _malloc_trim()

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
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()


def _load_malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return lambda: None
    return lambda: None if trim(0) else None


_malloc_trim = _load_malloc_trim()


def _raise_open_files_limit(wanted: int) -> None:
    """The connection cap is only a cap if the process can open that many sockets."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            if target < wanted:
                log.warning("open-files limit %d is below what %d connections need (%d)", target,
                            (wanted - 256) // 2, wanted)
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit: %s", exc)
