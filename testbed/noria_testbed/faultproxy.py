"""A fault-injecting HTTPS proxy between one client (the operator) and the test bed's API server.

The fault suite must show that the operator survives what a real API server does on a bad day:
watches that end with ``410 Gone`` (resource version too old), connections that are accepted and
never answered, watches that go silent, connections reset mid-request, and bursts of 5xx and 429
(with ``Retry-After``). None of these can be produced on demand by a healthy kube-apiserver, so the
operator's kubeconfig points here instead, and a test turns faults on and off.

The proxy terminates TLS with the test bed's serving certificate (issued by the test bed's CA for
127.0.0.1, so the client's kubeconfig keeps the same CA) and talks to the real API server over a
fresh TLS connection authenticated with the test bed's admin client certificate. It is HTTP-aware,
which is what makes the faults precise: it knows which requests are watches, can end a watch stream
with a well-formed ``ERROR`` event, and answers injected errors with a Kubernetes ``Status`` body.

    proxy = FaultProxy.for_testbed(cluster).start()
    env = {"KUBECONFIG": str(proxy.kubeconfig)}     # the operator now goes through the proxy
    proxy.inject(Fault.status(429, retry_after=1), count=20)
    proxy.expire_watches()                           # every open watch ends with ERROR 410
    proxy.inject(Fault.stall(), duration=10)         # accepted, never answered; watches go silent
    proxy.stop()

Every request is recorded (``proxy.requests``) with what the proxy did with it, so a test can
count the client's requests during and after a fault (e.g. "no 429 storm of its own").

It runs its own event loop in a daemon thread so synchronous tests can drive it. Only for tests:
it accepts any client without checking its certificate and acts with the admin's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from yarl import URL

from noria_testbed.processes import free_port

# Headers that describe one hop of a connection and must not be copied to the next one.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "content-encoding", "host"})


@dataclass(frozen=True)
class Fault:
    """What the proxy does with a request while the fault is active.

    kind: ``status`` (answer ``code`` with a Kubernetes Status body, and ``Retry-After`` when given),
    ``gone`` (watch requests only: answer 200 with one ``ERROR`` event of code 410, then end — what
    the API server does when the requested resourceVersion is too old), ``stall`` (accept, never
    answer; open watches go silent), ``reset`` (close the TCP connection with a RST).
    ``only`` restricts the fault to watch requests (``"watch"``) or to other requests (``"request"``).
    """

    kind: str
    code: int = 0
    retry_after: int | None = None
    only: str | None = None

    @staticmethod
    def status(code: int, *, retry_after: int | None = None, only: str | None = None) -> Fault:
        return Fault("status", code, retry_after, only)

    @staticmethod
    def gone() -> Fault:
        return Fault("gone", 410, only="watch")

    @staticmethod
    def stall(only: str | None = None) -> Fault:
        return Fault("stall", only=only)

    @staticmethod
    def reset(only: str | None = None) -> Fault:
        return Fault("reset", only=only)

    def applies_to(self, is_watch: bool) -> bool:
        return self.only is None or (self.only == "watch") == is_watch


@dataclass
class Seen:
    """One request through the proxy: when, what, and what the proxy did (``passed`` or the fault)."""

    at: float  # time.monotonic()
    method: str
    path: str
    watch: bool
    outcome: str
    status: int | None = None


@dataclass
class _Active:
    fault: Fault
    remaining: int | None  # requests left to hit; None = until cleared or until ``until``
    until: float | None  # time.monotonic() after which it is over
    hits: int = 0


@dataclass(eq=False)  # kept in a set by identity
class _Watch:
    """An open watch stream: the proxy can end it with an ERROR 410, silence it, or reset it."""

    request: web.Request
    expire: asyncio.Event = field(default_factory=asyncio.Event)
    silent: bool = False


def status_body(code: int, message: str) -> dict[str, Any]:
    reasons = {410: "Expired", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
               504: "Timeout"}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reasons.get(code, "InternalError"), "code": code}


def expired_event() -> bytes:
    """The event a watch gets when its resourceVersion is too old (the client must relist)."""
    event = {"type": "ERROR", "object": status_body(410, "too old resource version (injected by the fault proxy)")}
    return json.dumps(event).encode() + b"\n"


def is_watch_request(query: dict[str, str] | Any) -> bool:
    return str(query.get("watch", "")).lower() in ("1", "true")


class FaultProxy:
    def __init__(self, upstream: str, upstream_ssl: ssl.SSLContext, serving_cert: Path, serving_key: Path,
                 *, client_kubeconfig: Path | None = None, workdir: Path | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_ssl = upstream_ssl
        self.serving_cert, self.serving_key = serving_cert, serving_key
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._client_kubeconfig, self._workdir = client_kubeconfig, workdir
        self.kubeconfig: Path | None = None
        self.requests: list[Seen] = []
        self._faults: list[_Active] = []
        self._watches: set[_Watch] = set()
        self._released: asyncio.Event | None = None  # set by clear(): stalled requests end unanswered
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_testbed(cls, cluster: Any, workdir: Path | None = None) -> FaultProxy:  # noqa: ANN401 - LocalTestbed
        """A proxy in front of ``cluster``'s API server, with a kubeconfig (``.kubeconfig``) like the
        test bed's but pointing at the proxy."""
        from noria_testbed.kubeapi import _ssl_context_from_kubeconfig

        server, context = _ssl_context_from_kubeconfig(Path(cluster.kubeconfig))
        pki = cluster.control_plane.pki
        return cls(server, context, pki.serving_cert, pki.serving_key, client_kubeconfig=Path(cluster.kubeconfig),
                   workdir=workdir or Path(cluster.workdir) / "faultproxy")

    # ---- lifecycle (called from the test's thread) ----------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:  # reported to start() below
                errors.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise RuntimeError(f"fault proxy did not start: {errors[0]!r}")
        if self._client_kubeconfig is not None:
            self.kubeconfig = self._write_kubeconfig(self._client_kubeconfig)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _write_kubeconfig(self, original: Path) -> Path:
        config = yaml.safe_load(original.read_text())
        for entry in config.get("clusters", []):
            entry["cluster"]["server"] = self.url
        directory = self._workdir or original.parent
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"kubeconfig-proxy-{self.port}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # ---- fault controls (called from the test's thread) ------------------------------------------
    def inject(self, fault: Fault, *, count: int | None = None, duration: float | None = None) -> None:
        """Apply ``fault`` to the next ``count`` matching requests, or for ``duration`` seconds, or
        until :meth:`clear`. Faults injected together apply in the order they were injected."""
        until = time.monotonic() + duration if duration is not None else None
        with self._lock:
            self._faults.append(_Active(fault, count, until))
        if fault.kind == "stall":
            self._on_loop(self._begin_stall if fault.applies_to(True) else self._released_clear)

    def clear(self) -> None:
        """End every fault: stalled requests are dropped (never answered), silent watches end."""
        with self._lock:
            self._faults.clear()
        self._on_loop(self._end_stall)

    def expire_watches(self) -> int:
        """End every open watch with an ``ERROR`` event of code 410. Returns how many were open."""
        count = len(self._watches)
        self._on_loop(lambda: [w.expire.set() for w in list(self._watches)])
        return count

    def reset_connections(self) -> int:
        """Reset (TCP RST) the connections of every open watch. Returns how many were open."""
        count = len(self._watches)
        self._on_loop(lambda: [_reset(w.request) for w in list(self._watches)])
        return count

    def open_watches(self) -> int:
        return len(self._watches)

    def seen(self, since: float = 0.0, *, outcome: str | None = None, watch: bool | None = None) -> list[Seen]:
        return [s for s in list(self.requests) if s.at >= since and (outcome is None or s.outcome == outcome)
                and (watch is None or s.watch == watch)]

    def _on_loop(self, action: Callable[[], Any]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(action)

    def _released_clear(self) -> None:
        assert self._released is not None
        self._released.clear()

    def _begin_stall(self) -> None:
        self._released_clear()
        for watch in self._watches:
            watch.silent = True

    def _end_stall(self) -> None:
        assert self._released is not None
        self._released.set()
        # A watch silenced by a stall is one the client has (or should have) given up on: end it
        # without a word, as a dead connection would.
        for watch in list(self._watches):
            if watch.silent:
                _reset(watch.request)

    def _stalling(self, is_watch: bool) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(f.fault.kind == "stall" and f.fault.applies_to(is_watch) and (f.until is None or now < f.until)
                       and (f.remaining is None or f.remaining > 0) for f in self._faults)

    def _fault_for(self, is_watch: bool) -> _Active | None:
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults
                            if (f.remaining is None or f.remaining > 0) and (f.until is None or now < f.until)]
            for active in self._faults:
                if active.fault.applies_to(is_watch):
                    active.hits += 1
                    if active.remaining is not None:
                        active.remaining -= 1
                    return active
        return None

    # ---- the server (on the proxy's loop) --------------------------------------------------------
    async def _serve(self) -> None:
        self._released = asyncio.Event()
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(str(self.serving_cert), str(self.serving_key))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.upstream_ssl, limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), trust_env=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=server_ssl).start()

    async def _shutdown(self) -> None:
        for watch in list(self._watches):
            watch.expire.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        is_watch = is_watch_request(request.query)
        active = self._fault_for(is_watch)
        seen = Seen(time.monotonic(), request.method, request.path, is_watch, "passed")
        self.requests.append(seen)
        if active is not None:
            seen.outcome = active.fault.kind
            return await self._inject(request, active, seen)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Accept-Encoding"] = "identity"  # the proxy reads watch streams line by line
        try:
            upstream = await self._session.request(  # type: ignore[union-attr]
                request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
                data=body or None, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as error:
            seen.outcome, seen.status = "upstream-error", 502
            return web.json_response(status_body(502, f"fault proxy: API server unreachable: {error}"), status=502)
        seen.status = upstream.status
        reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            if not is_watch or upstream.status != 200:
                payload = await upstream.read()
                return web.Response(status=upstream.status, headers=reply_headers, body=payload)
            return await self._stream_watch(request, upstream, reply_headers)
        finally:
            upstream.release()

    async def _inject(self, request: web.Request, active: _Active, seen: Seen) -> web.StreamResponse:
        fault = active.fault
        if fault.kind == "status":
            seen.status = fault.code
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return web.json_response(status_body(fault.code, f"injected {fault.code} by the fault proxy"),
                                     status=fault.code, headers=headers)
        if fault.kind == "gone":
            seen.status = 200
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(expired_event())
            await response.write_eof()
            return response
        if fault.kind == "stall":
            assert self._released is not None
            # Held until clear(), the end of the stall's duration, or the client giving up.
            while not self._released.is_set() and (active.until is None or time.monotonic() < active.until):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), timeout=0.5)
        _reset(request)  # a stall ends as a dead connection; a reset is one at once
        return web.Response(status=499)  # never reaches the client: the connection is gone

    async def _stream_watch(self, request: web.Request, upstream: aiohttp.ClientResponse,
                            headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        watch = _Watch(request, silent=any(f.fault.kind == "stall" and f.fault.applies_to(True)
                                           for f in self._faults))
        self._watches.add(watch)
        expired = asyncio.create_task(watch.expire.wait())
        line: asyncio.Future[bytes] = asyncio.create_task(upstream.content.readline())
        try:
            while True:
                done, _ = await asyncio.wait({line, expired}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if watch.silent and not self._stalling(True):
                    line.cancel()
                    _reset(request)  # the stall is over: the silent stream ends as a dead connection
                    break
                if not done:
                    continue
                if expired in done:
                    line.cancel()
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await response.write(expired_event())
                    break
                data = line.result()
                if not data:  # the API server ended the watch (its timeoutSeconds)
                    if watch.silent:  # a silent stream says nothing, not even goodbye
                        line = asyncio.get_running_loop().create_future()
                        continue
                    break
                if not watch.silent:
                    await response.write(data)
                line = asyncio.create_task(upstream.content.readline())
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        except (ConnectionError, aiohttp.ClientError):
            pass
        finally:
            expired.cancel()
            line.cancel()
            self._watches.discard(watch)
        return response


def _reset(request: web.Request) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
