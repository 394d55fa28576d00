"""The router's HTTP/1.1 client: one keep-alive connection pool per backend endpoint, on httptools.

Why not aiohttp's client: measured through the router on this 2-core machine (docs/serving/router.md),
the aiohttp client session was most of the router's CPU per request (request building, header
multidicts, a stream reader per answer, the timer handles). This client does only what the router
needs: it writes one request head (the caller's forwarded headers, already encoded) and the body
as received, untouched (JSON or the OIP binary tensor extension alike), and reads back status, the
headers the router passes on, and the body.

- Connections are kept alive per endpoint and reused newest first (a warm socket); an idle connection
  older than ``keepalive_seconds`` is closed instead of reused, which stays below the model server's
  own idle timeout (75 s), so a kept connection is never one the server is closing.
- The pool holds as many connections as requests in flight to that endpoint (the backends bound
  their own concurrency) and keeps up to ``max_idle`` of them when traffic drops.
- Timeouts: ``connect_timeout`` for the TCP connect, ``timeout`` for the whole exchange (connect
  included; kept by one sweeper task, not a timer per request); a timeout raises ``TimeoutError``,
  a refused or broken connection ``ConnectionError``/``OSError``.
- A kept-alive connection the server closed before it sent any byte of the answer is retried once
  on a new connection (the request was not processed: the server closes only idle connections).
- Two forms: ``Upstreams.request`` to await; ``Upstreams.send`` (the router's hot path) on a kept
  connection only, the outcome handed to a callback from the connection's own ``data_received``
  (no task, coroutine or future per request); without an idle connection it sends nothing and says
  so, and the caller awaits ``request``, which connects. Both keep every exchange in ``busy`` from
  the write on, so the sweeper ends it by its deadline whatever else happens.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

from .oip import HEADER_INFERENCE_HEADER_LENGTH

log = logging.getLogger(__name__)

# The answer headers the router passes on to its client (content type, and the OIP binary tensor
# extension's JSON-header length, without which a binary answer cannot be read).
PASSED_BACK_HEADERS = frozenset({b"content-type", HEADER_INFERENCE_HEADER_LENGTH.encode()})
# A request body up to this size is joined with its head into one write (one syscall); a larger one
# is written as it is, without a copy.
JOIN_BODY_BYTES = 64 * 1024


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # PASSED_BACK_HEADERS present in the answer, lower-case names
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _ServerClosed(ConnectionError):
    """The connection ended before any byte of the answer: safe to retry on a fresh connection."""


# Called once with the answer, or with the OSError (TimeoutError included) that ended the exchange.
Done = Callable[["UpstreamResponse | OSError"], None]
# The request headers to send: (name, value) pairs, lower-case names, encoded; or their lines already
# formatted (``b"name: value\r\n"`` each), as the router keeps them.
Headers = list[tuple[bytes, bytes]] | bytes
# Request-line + host prefixes kept per endpoint, by (method, target) (cleared when full: a target
# can carry any query string).
HEAD_PREFIXES = 64


def _call(done: Done, outcome: UpstreamResponse | OSError) -> None:
    try:
        done(outcome)
    except Exception:  # the caller's bug must not break the connection (or parser) that delivered
        log.exception("upstream answer callback failed")


class _CallBack:
    """A connection's waiter that hands the outcome on at once, from the connection's own callback
    (``Upstreams.send``): no future, task or coroutine per request, and the answer goes on in the
    loop iteration that read it. Same interface as the future the connection otherwise resolves."""

    __slots__ = ("_done", "finish")

    def __init__(self, finish: Callable[[UpstreamResponse | OSError], None]) -> None:
        self.finish = finish
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, answer: UpstreamResponse) -> None:
        self._done = True
        self.finish(answer)

    def set_exception(self, exc: OSError) -> None:
        self._done = True
        self.finish(exc)


class _UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "parser", "waiter", "headers", "body", "received", "complete", "closed",
                 "idle_since", "bodiless", "deadline")

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | _CallBack | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.received = False  # any byte of the current answer arrived
        self.complete = False
        self.closed = False
        self.idle_since = 0.0
        self.bodiless = False  # the answer to a HEAD request: headers only, whatever content-length says
        self.deadline = 0.0  # loop time by which the answer must be complete (Upstreams sweeps)

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            if not self.received:
                waiter.set_exception(_ServerClosed("the server closed the connection before answering"))
            else:
                waiter.set_exception(ConnectionError(f"the connection broke during the answer: {exc or 'closed'}"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close: the server will not answer more on this connection

    # --- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in PASSED_BACK_HEADERS:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.bodiless:
            # httptools cannot be told the answer has no body, so the answer ends here and the
            # connection, whose parser would wait for one, is not reused.
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return  # a bodiless answer, already complete at its headers
        self.complete = True
        waiter = self.waiter
        self.waiter = None
        keep_alive = not self.bodiless and self.parser.should_keep_alive()
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(self.parser.get_status_code(), self.headers, b"".join(self.body)))
        self.body = []
        if keep_alive:
            self.pool.release(self)
        else:
            self.close()

    # --- use ------------------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, bodiless: bool,
             waiter: _CallBack | None = None) -> asyncio.Future[UpstreamResponse] | _CallBack:
        if self.transport is None or self.transport.is_closing():
            # A new connection the server closed before the request was written (a killed backend):
            # the request was not sent, and the caller hears so now, not after its timeout.
            raise _ServerClosed("the connection closed before the request was written")
        self.waiter = waiter = self.pool.loop.create_future() if waiter is None else waiter
        self.received = False
        self.complete = False
        self.bodiless = bodiless
        if len(body) <= JOIN_BODY_BYTES:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return waiter

    def time_out(self) -> None:
        self._fail(TimeoutError("no complete answer before the deadline"))

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class EndpointPool:
    """Keep-alive connections to one ``http://host:port`` (or ``https://``: TLS verified against the
    system's trust store, ``SSL_CERT_FILE`` if set; the router's backends are plain HTTP, the online
    feature store may be either)."""

    def __init__(self, base_url: str, connect_timeout: float, keepalive_seconds: float = 30.0,
                 max_idle: int = 256) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.encode("idna")
        self.connect_timeout = connect_timeout
        self.keepalive_seconds = keepalive_seconds
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self.idle: deque[_UpstreamConnection] = deque()
        self.retrying: set[asyncio.Task[None]] = set()  # send_on_idle's retries on a new connection
        self.closed = False
        self._prefixes: dict[tuple[str, str], bytes] = {}

    def head(self, method: str, target: str, headers: Headers, body_length: int) -> bytes:
        """An HTTP/1.1 request head for this endpoint: the forwarded ``headers`` (encoded, lower-case
        pairs, or their lines already formatted) and the body's length; its request line and host
        formatted once per target."""
        key = (method, target)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= HEAD_PREFIXES:
                self._prefixes.clear()
            prefix = self._prefixes[key] = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (
                method.encode("ascii"), target.encode("latin-1"), self.host_header)
        lines = headers if isinstance(headers, bytes) else b"".join([b"%s: %s\r\n" % pair for pair in headers])
        return b"%scontent-length: %d\r\n%s\r\n" % (prefix, body_length, lines)

    def release(self, conn: _UpstreamConnection) -> None:
        if self.closed or conn.closed or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def _take_idle(self) -> _UpstreamConnection | None:
        too_old = self.loop.time() - self.keepalive_seconds
        idle = self.idle
        while idle:
            conn = idle.pop()  # newest first
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                # Closing already (the server's FIN read, connection_lost not yet run): a request
                # written there is lost and costs a retry.
                continue
            if conn.idle_since < too_old:
                conn.close()
                while idle:  # the rest are older still
                    idle.popleft().close()
                return None
            return conn
        return None

    async def _connect(self, deadline: float) -> _UpstreamConnection:
        wait = min(self.connect_timeout, deadline - self.loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _UpstreamConnection(self), self.host, self.port, ssl=self.tls),
                wait)
        except TimeoutError:
            raise TimeoutError(f"no TCP connection within {wait:g}s") from None
        return conn

    async def request(self, head: bytes, body: bytes, bodiless: bool, deadline: float,
                      busy: set[_UpstreamConnection], fresh: bool = False) -> UpstreamResponse:
        """Send one request (``head`` from ``head``) and read its answer by ``deadline`` (loop
        time; the connection waits in ``busy`` meanwhile, where ``Upstreams`` times it out); ``fresh``:
        on a new connection."""
        conn = None if fresh else self._take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(deadline)
            sent = conn
            waiter = sent.send(head, body, bodiless)
            sent.deadline = deadline
            busy.add(sent)
            try:
                return await waiter
            except _ServerClosed:
                if not reused:
                    raise
                # The server closed a kept-alive connection as we reused it: once more on a new one.
                conn, reused = None, False
            except BaseException:
                # Timed out or cancelled mid-answer: the connection's state is unknown, so it is not reused.
                if not sent.complete:
                    sent.close()
                raise
            finally:
                busy.discard(sent)

    def send_on_idle(self, head: bytes, body: bytes, bodiless: bool, deadline: float,
                     busy: set[_UpstreamConnection], done: Done) -> bool:
        """``request`` without a coroutine, on a kept connection: False (nothing sent) when none is
        idle. ``done`` gets the outcome from the connection's callback: the answer; ``TimeoutError``
        from the sweeper (the connection waits in ``busy``); ``ConnectionError`` when the connection
        breaks mid-answer. When the server had closed the kept connection before any byte of the
        answer (the request was not processed), it is sent once more on a new connection, in a task
        as ``request`` does, and ``done`` gets that outcome."""
        conn = self._take_idle()
        if conn is None:
            return False

        def finish(outcome: UpstreamResponse | OSError) -> None:
            busy.discard(conn)
            if isinstance(outcome, _ServerClosed):
                task = self.loop.create_task(self._retry(head, body, bodiless, deadline, busy, done))
                self.retrying.add(task)
                task.add_done_callback(self.retrying.discard)
            else:
                _call(done, outcome)

        conn.send(head, body, bodiless, _CallBack(finish))
        conn.deadline = deadline
        busy.add(conn)  # from now the sweeper fails it by its deadline, whatever else happens
        return True

    async def _retry(self, head: bytes, body: bytes, bodiless: bool, deadline: float,
                     busy: set[_UpstreamConnection], done: Done) -> None:
        try:
            answer = await self.request(head, body, bodiless, deadline, busy, fresh=True)
        except OSError as exc:  # TimeoutError included
            _call(done, exc)
        except asyncio.CancelledError:
            _call(done, ConnectionError("the client closed before the retry was answered"))
            raise
        except Exception as exc:  # not the endpoint's doing, but the caller must still hear of it
            log.exception("upstream retry failed")
            _call(done, ConnectionError(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            _call(done, answer)

    def close_expired(self) -> None:
        """Close the idle connections kept longer than ``keepalive_seconds`` (oldest are first)."""
        too_old = self.loop.time() - self.keepalive_seconds
        while self.idle and (self.idle[0].closed or self.idle[0].idle_since < too_old):
            self.idle.popleft().close()

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().close()
        for task in list(self.retrying):
            task.cancel()


class Upstreams:
    """One ``EndpointPool`` per base URL, created on first use; every exchange bounded by ``timeout``."""

    def __init__(self, timeout: float, connect_timeout: float, keepalive_seconds: float = 30.0,
                 max_idle: int = 256) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.keepalive_seconds = keepalive_seconds
        self.max_idle = max_idle
        self.pools: dict[str, EndpointPool] = {}
        # Connections waiting for an answer. Timeouts are one sweeper's work, not a timer per request
        # (asyncio.timeout() cost more CPU than the rest of the client together).
        self.busy: set[_UpstreamConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def pool(self, base_url: str) -> EndpointPool:
        pool = self.pools.get(base_url)
        if pool is None:
            pool = self.pools[base_url] = EndpointPool(base_url, self.connect_timeout, self.keepalive_seconds,
                                                       self.max_idle)
        return pool

    def request(self, base_url: str, method: str, target: str, headers: Headers,
                body: bytes) -> Coroutine[Any, Any, UpstreamResponse]:
        """``method target`` at ``base_url`` (``http://host:port``) with ``body`` as it is, to await;
        raises ``TimeoutError`` past ``timeout`` seconds, ``OSError`` when unreachable or broken. Not a
        coroutine itself: it hands back the pool's, so a request costs one coroutine frame, not two."""
        pool = self.pool(base_url)
        if self._sweeper is None:
            self._sweeper = pool.loop.create_task(self._sweep())
        head = pool.head(method, target, headers, len(body))
        return pool.request(head, body, method == "HEAD", pool.loop.time() + self.timeout, self.busy)

    def send(self, base_url: str, method: str, target: str, headers: Headers, body: bytes, done: Done) -> bool:
        """``request`` on a kept connection, answered through ``done`` (``EndpointPool.send_on_idle``):
        False, and nothing sent, when no connection is idle (then ``request``, which connects)."""
        pool = self.pool(base_url)
        if not pool.idle:
            return False
        if self._sweeper is None:
            self._sweeper = pool.loop.create_task(self._sweep())
        head = pool.head(method, target, headers, len(body))
        return pool.send_on_idle(head, body, method == "HEAD", pool.loop.time() + self.timeout, self.busy, done)

    async def _sweep(self) -> None:
        """Time out the overdue exchanges (within a twentieth of ``timeout``) and, every half
        ``keepalive_seconds``, close the expired idle connections."""
        loop = asyncio.get_running_loop()
        tick = min(max(self.timeout / 20, 0.01), 0.25)
        expire_at = loop.time() + self.keepalive_seconds / 2
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in [c for c in self.busy if c.deadline <= now]:
                self.busy.discard(conn)
                conn.time_out()
            if now >= expire_at:
                expire_at = now + self.keepalive_seconds / 2
                self.close_expired()

    def close_expired(self) -> None:
        """Close connections idle past ``keepalive_seconds`` and forget pools left with none (the
        endpoints of replaced pods are not kept forever)."""
        for url, pool in list(self.pools.items()):
            pool.close_expired()
            if not pool.idle:
                del self.pools[url]
                pool.close()  # a connection still in flight is closed when it comes back

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
