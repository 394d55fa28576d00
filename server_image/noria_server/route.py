"""``python -m noria_server route``: weighted split, version pinning and shadow mirroring.

One router Deployment per Rollout sits in front of the per-version model servers:

- every request goes to one backend version drawn by weight (``noria_router_weight``), or to the
  version named in the ``x-noria-version`` header (any backend or the shadow; unknown → 404);
- the answer is the backend's, unchanged, plus an ``x-noria-version`` header saying who answered;
- with a shadow configured, ``mirrorPercent`` % of ``/infer`` requests are also sent to the shadow,
  when ``mirror_when`` says: ``answered``, after the primary's answer is written (mirrors wait in one
  queue sent together on the loop's next turn, or ``mirror_delay`` seconds after the first of them;
  0 by default); ``sent``, right after the primary's request is written upstream, in the same loop
  turn (as nginx's ``mirror``). Either way the user's answer never waits for a mirror, nor fails with
  it (at most ``max_shadow_in_flight`` mirrors at once, queued ones and those waiting for the
  primary's answer included; past that they are dropped and counted as ``shadow_overload``). When
  both answers are in (whichever comes last), the ``predict``
  outputs are compared row by row into ``noria_shadow_comparisons_total{outcome=agree|disagree}``
  (a failed shadow call counts its rows as ``error``; answers whose outputs are the same bytes are
  counted without decoding the shadow's, with the same result) and the shadow's latency goes into
  ``noria_shadow_duration_seconds``. Mirrored requests carry one ``x-request-id`` so both
  versions log the same prediction ids;
- feedback (``POST /v2/models/{m}/feedback``) fans out to every ready endpoint of every version:
  only the replica that made a prediction holds it in its ledger and counts (and logs) the label,
  at most once per id (``noria_server.ledger``); labels no replica holds are then sent to one
  replica alone, which logs the valid ones for retraining. The answer merges the replicas' per-item outcomes (an item is
  ``counted`` if any replica counted it); when a replica could not be reached and some item was not
  counted, the answer is 502 and resending is safe (what was counted comes back ``duplicate``).
  With a feedback token configured the router checks it too and forwards ``Authorization``;
- a backend with no ready endpoints → 503, refused connection or error → 502, no answer within
  the timeout → 502 saying so; each also counted in ``noria_router_errors_total{reason}``.
  Timeouts are everywhere (connect, whole request), so nothing hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from noria import metrics as m
from noria.contracts import FEEDBACK_LOG_MATCHED, HEADER_FEEDBACK_FANOUT, HEADER_FEEDBACK_LOG, HEADER_VERSION
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import ledger, oip
from .bearer import CHALLENGE, BearerToken
from .discovery import ConfigMapSource, Endpoints, FileConfigSource
from .httpserver import JSON, HttpLimits, HttpServer, Reply, Request, Response, error_response, json_response
from .loopmon import FastHistogram
from .oip import compare, predictions_of
from .router_config import Backend, RouterConfig
from .telemetry import HttpCollector
from .upstream import Headers, UpstreamResponse, Upstreams

log = logging.getLogger("noria_server.route")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Request headers passed on to the backend; with the OIP binary tensor extension the body is a JSON
# header of ``inference-header-content-length`` bytes followed by raw tensor data, forwarded untouched.
_REQUEST_ID = "x-request-id"
FORWARDED_HEADERS = ("content-type", _REQUEST_ID, "accept", oip.HEADER_INFERENCE_HEADER_LENGTH)
_REQUEST_ID_BYTES = _REQUEST_ID.encode()
_FORWARDED = tuple((name, name.encode()) for name in FORWARDED_HEADERS)  # names encoded once
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
UNCOUNTED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})  # probes and scrapes
_VERSION_HEADER = HEADER_VERSION.encode()  # encoded once: it goes on every answer
# The forwarded headers other than x-request-id, in the order _header_lines keys them.
_BLOCK_NAMES = (b"content-type", b"accept", oip.HEADER_INFERENCE_HEADER_LENGTH.encode())
assert set(_BLOCK_NAMES) | {_REQUEST_ID_BYTES} == {encoded for _, encoded in _FORWARDED}
HEADER_BLOCKS = 256  # distinct forwarded header values whose lines are kept (cleared when full)
# How long a mirror waits in the queue, at most, before it is sent (with every mirror queued meanwhile).
# 0: on the loop's next turn, after the answer it copies is written. 1 ms was tried: at 500 req/s it
# cost ~17 us more CPU per mirror (a timer wake-up each) and its primary p99.9 was ~21 ms against
# 2.4 ms (docs/serving/router.md, not explained), so it stays an option.
MIRROR_DELAY_SECONDS = 0.0
# When a mirror leaves: after the primary's answer is written (queued, see above), or right after the
# primary's request is written upstream (the comparison then waits for whichever answer comes last).
MIRROR_ANSWERED = "answered"
MIRROR_SENT = "sent"
MIRROR_WHEN = MIRROR_SENT  # measured: docs/serving/router.md, "Mirrors sent alongside the primary"


_OUTPUTS_KEY = b'"outputs":'
_KEY_OPENERS = frozenset(b",{")
_UNSEEN: Any = object()
SAME_OUTPUTS_ENTRIES = 1024  # distinct outputs whose row counts are kept (cleared when full)
SAME_OUTPUTS_KEY_BYTES = 4096  # longer outputs are not kept (a many-row answer is rarely repeated)


def same_outputs(a: bytes, b: bytes) -> bytes | None:
    """The bytes of ``a`` from its ``"outputs":`` key to the end when ``b`` has the same from its own
    (the two answers differ only before it: ``model_version``), else None. The key must follow ``,``
    or ``{``, so it is a key, not text inside a string (a quote inside a JSON string is escaped)."""
    i = a.find(_OUTPUTS_KEY)
    if i <= 0 or a[i - 1] not in _KEY_OPENERS:
        return None
    j = b.find(_OUTPUTS_KEY)
    if j <= 0 or len(a) - i != len(b) - j or b[j - 1] not in _KEY_OPENERS:
        return None
    tail = a[i:]
    return tail if b.endswith(tail) else None


class _Mirror:
    """One mirrored request, from its send to its comparison: the primary's answer body once in (None:
    no 200 answer, nothing to compare), the shadow's (``_UNSEEN`` until it ends; None: failed);
    ``waiting``: how many of the two are still out (compared when none is)."""

    __slots__ = ("config", "primary", "shadow", "primary_body", "shadow_body", "waiting")

    def __init__(self, config: RouterConfig, primary: Backend, shadow: Backend, primary_body: bytes | None,
                 waiting: int) -> None:
        self.config = config
        self.primary = primary
        self.shadow = shadow
        self.primary_body = primary_body
        self.shadow_body: bytes | None = _UNSEEN
        self.waiting = waiting


def _self_agreement(body: bytes) -> tuple[int, int, int] | None:
    rows = predictions_of(body)
    return None if rows is None else (*compare(rows, rows), 0)


@dataclass
class RouterSettings:
    config_file: str | None = None
    configmap: str | None = None  # "<namespace>/<name>"
    host: str = "0.0.0.0"
    port: int = 8080
    timeout: float = 10.0
    connect_timeout: float = 1.0
    drain_seconds: float = 5.0
    http: HttpLimits = field(default_factory=HttpLimits)
    max_shadow_in_flight: int = 512
    # Mirrors are sent together this long after the first of them was queued (0: on the loop's next turn).
    mirror_delay: float = MIRROR_DELAY_SECONDS
    # "answered": mirrors leave after the primary's answer is written; "sent": with the primary's request.
    mirror_when: str = MIRROR_WHEN
    feedback_token: BearerToken | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mirror_when not in (MIRROR_ANSWERED, MIRROR_SENT):
            raise ValueError(f"mirror_when must be {MIRROR_ANSWERED!r} or {MIRROR_SENT!r}, got {self.mirror_when!r}")
        if not 0 <= self.mirror_delay < float("inf"):
            raise ValueError(f"mirror_delay must be a number of seconds >= 0, got {self.mirror_delay!r}")


class _PerRequestCollector(Collector):
    """The series every request or mirror moves, counted without a lock: ``noria_request_duration_seconds``
    by model and version, ``noria_router_requests_total`` by code, ``noria_shadow_comparisons_total``
    and ``noria_shadow_duration_seconds``. ``prometheus_client`` takes a lock
    per observation and per increment (1.5 us of the router's ~20 us of Python per request, measured);
    here the event loop thread is the only one that counts, and ``/metrics`` is rendered on it too."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str], FastHistogram] = {}
        self.codes: dict[int, int] = {200: 0, 500: 0, 502: 0}
        # Every mirror moves these two, also without a lock: comparisons by (model, stable, shadow,
        # outcome) and the shadow's latency by (model, shadow).
        self.shadow_counts: dict[tuple[str, str, str, str], int] = {}
        self.shadow_durations: dict[tuple[str, str], FastHistogram] = {}

    def collect(self) -> Iterable[Metric]:
        duration = HistogramMetricFamily(m.REQUEST_DURATION_SECONDS, "Request latency through the router",
                                         labels=[m.LABEL_MODEL, m.LABEL_VERSION])
        for (model, version), hist in list(self.durations.items()):
            hist.add_to(duration, [model, version])
        yield duration
        answers = CounterMetricFamily(m.ROUTER_REQUESTS_TOTAL, "Answers the router gave, by HTTP status code",
                                      labels=[m.LABEL_CODE])
        for code, count in sorted(self.codes.items()):
            answers.add_metric([str(code)], float(count))
        yield answers
        comparisons = CounterMetricFamily(m.SHADOW_COMPARISONS_TOTAL, "Shadow answers compared with the primary's, by row",
                                          labels=[m.LABEL_MODEL, m.LABEL_STABLE, m.LABEL_SHADOW, m.LABEL_OUTCOME])
        for labels, count in list(self.shadow_counts.items()):
            comparisons.add_metric(list(labels), float(count))
        yield comparisons
        shadow_duration = HistogramMetricFamily(m.SHADOW_DURATION_SECONDS, "Latency of the mirrored shadow calls",
                                                labels=[m.LABEL_MODEL, m.LABEL_SHADOW])
        for (model, shadow), hist in list(self.shadow_durations.items()):
            hist.add_to(shadow_duration, [model, shadow])
        yield shadow_duration


def _observe(histograms: dict[tuple[str, str], FastHistogram], key: tuple[str, str], seconds: float) -> None:
    """``seconds`` into the latency histogram of ``key``, made on first use."""
    hist = histograms.get(key)
    if hist is None:
        hist = histograms[key] = FastHistogram(LATENCY_BUCKETS)
    hist.observe(seconds)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.per_request = _PerRequestCollector()
        self.registry.register(self.per_request)
        self.weight = Gauge(m.ROUTER_WEIGHT, "Traffic weight of each version", [m.LABEL_MODEL, m.LABEL_VERSION],
                            registry=self.registry)
        self.errors = Counter(m.ROUTER_ERRORS_TOTAL, "Requests the router could not deliver, by reason",
                              [m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_REASON], registry=self.registry)
        self.feedback = Counter(m.ROUTER_FEEDBACK_TOTAL, "Feedback items by outcome, merged over every replica",
                                [m.LABEL_MODEL, m.LABEL_OUTCOME], registry=self.registry)
        self._codes = self.per_request.codes
        self._durations = self.per_request.durations
        self._shadow_counts = self.per_request.shadow_counts
        self._shadow_durations = self.per_request.shadow_durations

    def count_code(self, code: int) -> None:
        """Every answer the router gives, by code (its own refusals and errors, and the backends' answers)."""
        codes = self._codes
        codes[code] = codes.get(code, 0) + 1

    def count_shadow(self, model: str, stable: str, shadow: str, outcome: str, rows: int) -> None:
        """``rows`` more compared rows with ``outcome`` (``noria_shadow_comparisons_total``)."""
        counts = self._shadow_counts
        key = (model, stable, shadow, outcome)
        counts[key] = counts.get(key, 0) + rows

    def shadow_count(self, model: str, stable: str, shadow: str, outcome: str) -> int:
        return self._shadow_counts.get((model, stable, shadow, outcome), 0)

    def observe_shadow(self, model: str, shadow: str, seconds: float) -> None:
        """One mirror's latency (``noria_shadow_duration_seconds``)."""
        _observe(self._shadow_durations, (model, shadow), seconds)

    def shadow_duration(self, model: str, shadow: str) -> FastHistogram | None:
        return self._shadow_durations.get((model, shadow))

    def observe(self, model: str, version: str, seconds: float) -> None:
        _observe(self._durations, (model, version), seconds)


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.metrics = RouterMetrics()
        self.config: RouterConfig | None = None
        self.config_applied_at = 0.0
        self.endpoints: Endpoints | None = None
        self.http = HttpServer(self.handle, settings.http, on_response=self._count_response)
        self.metrics.registry.register(HttpCollector(self.http))
        self.upstreams = Upstreams(settings.timeout, settings.connect_timeout)
        self.sources: list[Any] = []
        self.shadow_in_flight = 0
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.stopped = asyncio.Event()
        self._rr: dict[str, itertools.count[int]] = {}
        self._random = random.random
        self.port = 0
        # (agree, disagree) or None, by the outputs both answers had byte for byte (see _agreement).
        self._same_outputs: dict[bytes, tuple[int, int, int] | None] = {}
        self._header_blocks: dict[tuple[str | None, ...], bytes] = {}
        # Mirrors waiting to be sent (_send_mirrors): already counted in shadow_in_flight.
        self._mirrors: list[tuple[_Mirror, Request, Headers]] = []
        self._mirror_sent = settings.mirror_when == MIRROR_SENT
        self._id_prefix = os.urandom(8).hex().encode()  # ids of mirrored requests that came without one
        self._ids = itertools.count()

    def _count_response(self, request: Request | None, status: int) -> None:
        if request is None or request.path not in UNCOUNTED_PATHS:
            self.metrics.count_code(status)

    # --- config ---------------------------------------------------------------------------------
    def apply_config(self, config: RouterConfig) -> None:
        old = self.config
        self.config = config
        self.config_applied_at = time.time()
        if old is not None:
            for b in old.backends:
                if config.by_version(b.version) is None or old.model != config.model:
                    try:
                        self.metrics.weight.remove(old.model, b.version)
                    except KeyError:
                        pass
        for b in config.backends:
            self.metrics.weight.labels(config.model, b.version).set(b.weight)
        if config.namespace and self.endpoints is None and any(b.url is None for b in config.all_backends()):
            log.warning("backends without url need EndpointSlice discovery, which runs only with --configmap")
        log.info("router config applied: %s", ", ".join(f"{b.version}={b.weight}" for b in config.backends)
                 + (f"; shadow {config.shadow.version} {config.shadow.mirror_percent:g}%" if config.shadow else ""))

    def urls_of(self, backend: Backend) -> list[str]:
        if backend.url:
            return [backend.url]
        if self.endpoints is not None and backend.service:
            return self.endpoints.endpoints(backend.service)
        return []

    def _endpoint(self, backend: Backend) -> str | None:
        if backend.url:  # a fixed URL (urls_of's first case), without a list per request
            return backend.url
        urls = self.urls_of(backend)
        if not urls:
            return None
        if len(urls) == 1:
            return urls[0]
        counter = self._rr.get(backend.version)
        if counter is None:
            counter = self._rr[backend.version] = itertools.count()
        return urls[next(counter) % len(urls)]

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self) -> int:
        s = self.settings
        if s.configmap:
            namespace, _, name = s.configmap.partition("/")
            if not namespace or not name:
                raise ValueError(f"--configmap must be <namespace>/<name>, got {s.configmap!r}")
            self.endpoints = Endpoints(namespace)
            self.sources = [self.endpoints, ConfigMapSource(namespace, name, self.apply_config)]
        elif s.config_file:
            self.sources = [FileConfigSource(s.config_file, self.apply_config)]
        for source in self.sources:
            await source.start()
        self.port = await self.http.start(s.host, s.port)
        log.info("router listening on %s:%d", s.host, self.port)
        return self.port

    async def stop(self, drain: bool = True) -> None:
        if self.stopping:
            return
        self.stopping = True
        if drain and self.settings.drain_seconds > 0:
            await asyncio.sleep(self.settings.drain_seconds)
        await self.http.close()
        for source in self.sources:
            await source.stop()
        # Mirrors still out (tasks, or callbacks on kept connections: both end by --timeout).
        deadline = time.monotonic() + self.settings.timeout
        while self.shadow_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.upstreams.close()
        self.stopped.set()

    # --- requests -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response | Any:
        path = request.path
        if path == "/v2/health/live":
            return json_response(200, {"live": True})
        if path == "/v2/health/ready":
            ok = self.config is not None and not self.stopping
            reason = "ready" if ok else ("draining" if self.stopping else "no router config yet")
            return json_response(200 if ok else 503, {"ready": ok, "reason": reason})
        if path == "/metrics":
            return Response(200, generate_latest(self.metrics.registry), PROMETHEUS_TEXT)
        if path == "/router/state":
            return self._state()
        config = self.config
        if config is None:
            return error_response(503, "the router has no config yet")
        if request.method == "POST" and path.endswith("/feedback") and HEADER_VERSION not in request.headers:
            return self._fan_out_feedback(config, request)
        pinned = request.headers.get(HEADER_VERSION)
        if pinned:
            backend = config.by_version(pinned)
            if backend is None:
                # One series for every unknown name: a label per client-chosen value would be a time
                # series kept forever for each (the name is in the 404 answer, not in the metric).
                self.metrics.errors.labels(config.model, "", m.ROUTER_ERROR_UNKNOWN_VERSION).inc()
                return error_response(404, f"{HEADER_VERSION} {pinned!r} is not served by this router; versions: "
                                           f"{', '.join(b.version for b in config.all_backends())}")
            return self._forward(config, backend, request, mirror=False)
        backends = config.backends
        backend = backends[0] if len(backends) == 1 else config.pick(self._random())
        mirror = (config.shadow is not None and request.method == "POST" and path.endswith("/infer")
                  and config.mirrors(self._random()))
        return self._forward(config, backend, request, mirror)

    def _state(self) -> Response:
        config = self.config
        if config is None:
            return json_response(200, {"config": None})
        return json_response(200, {
            "model": config.model, "appliedAt": self.config_applied_at,
            "backends": [{"version": b.version, "weight": b.weight, "endpoints": self.urls_of(b)}
                         for b in config.backends],
            "shadow": None if config.shadow is None else {
                "version": config.shadow.version, "mirrorPercent": config.shadow.mirror_percent,
                "endpoints": self.urls_of(config.shadow)}})

    def _headers(self, request: Request) -> list[tuple[bytes, bytes]]:
        got = request.headers
        return [(encoded, got[name].encode("latin-1")) for name, encoded in _FORWARDED if name in got]

    def _header_lines(self, request: Request, mirrored: bool) -> bytes:
        """The forwarded headers as lines of the upstream request head. Apart from ``x-request-id``
        their values repeat from request to request (the same clients, the same content type), so
        their lines are formatted once per distinct values; a mirrored request without an id gets a
        new one (both versions then log the same prediction ids)."""
        got = request.headers
        key = (got.get("content-type"), got.get("accept"), got.get(oip.HEADER_INFERENCE_HEADER_LENGTH))
        lines = self._header_blocks.get(key)
        if lines is None:
            lines = b"".join([b"%s: %s\r\n" % (encoded, value.encode("latin-1"))
                              for encoded, value in zip(_BLOCK_NAMES, key, strict=True) if value is not None])
            if len(self._header_blocks) >= HEADER_BLOCKS:
                self._header_blocks.clear()
            self._header_blocks[key] = lines
        request_id = got.get(_REQUEST_ID)
        if request_id is not None:
            return lines + b"x-request-id: %s\r\n" % request_id.encode("latin-1")
        if mirrored:
            return lines + self._request_id_line()
        return lines

    def _request_id_line(self) -> bytes:
        """A new ``x-request-id`` line: 24 hex digits as ``oip.new_id``'s, a random 64-bit prefix per
        process (drawn again every 2**32 ids) and a counter. ``os.urandom`` per mirrored request was
        a ``getrandom`` call each, ~3 us: a sixth of a mirror's Python (``--hot-path``, py-spy)."""
        n = next(self._ids)
        if n > 0xFFFFFFFF:
            self._id_prefix, self._ids = os.urandom(8).hex().encode(), itertools.count(1)
            n = 0
        return b"x-request-id: %s%08x\r\n" % (self._id_prefix, n)

    def _no_endpoints(self, config: RouterConfig, backend: Backend) -> Response:
        self.metrics.errors.labels(config.model, backend.version, m.ROUTER_ERROR_NO_ENDPOINTS).inc()
        return error_response(503, f"version {backend.version} has no ready endpoints "
                                   f"(service {backend.service or '-'})", model_version=backend.version)

    def _failed(self, config: RouterConfig, backend: Backend, base: str, exc: OSError) -> Response:
        """The 502 for an exchange that ended in ``exc`` (TimeoutError or another OSError), counted."""
        if isinstance(exc, TimeoutError):
            self.metrics.errors.labels(config.model, backend.version, m.ROUTER_ERROR_TIMEOUT).inc()
            return error_response(502, f"version {backend.version} at {base} did not answer within "
                                       f"{self.settings.timeout:g}s", model_version=backend.version)
        self.metrics.errors.labels(config.model, backend.version, m.ROUTER_ERROR_UNREACHABLE).inc()
        return error_response(502, f"version {backend.version} at {base} is unreachable: "
                                   f"{type(exc).__name__}: {exc}", model_version=backend.version)

    async def _send(self, config: RouterConfig, backend: Backend, request: Request,
                    headers: Headers) -> UpstreamResponse | Response:
        """The answer of one endpoint of ``backend``, or an error Response (counted)."""
        base = self._endpoint(backend)
        if base is None:
            return self._no_endpoints(config, backend)
        target = request.path + ("?" + request.query.decode("latin-1") if request.query else "")
        try:
            return await self.upstreams.request(base, request.method, target, headers, request.body)
        except OSError as exc:  # TimeoutError included
            return self._failed(config, backend, base, exc)

    def _take_shadow(self, config: RouterConfig, mirror: bool) -> Backend | None:
        """The shadow to mirror this request to, counted in ``shadow_in_flight`` from now (a mirror about
        to be sent counts against the bound); None when not mirrored, or past ``max_shadow_in_flight``
        (dropped and counted as ``shadow_overload``)."""
        shadow = config.shadow if mirror else None
        if shadow is None:
            return None
        if self.shadow_in_flight >= self.settings.max_shadow_in_flight:
            self.metrics.errors.labels(config.model, shadow.version, m.ROUTER_ERROR_SHADOW_OVERLOAD).inc()
            return None
        self.shadow_in_flight += 1
        return shadow

    def _forward(self, config: RouterConfig, backend: Backend, request: Request,
                 mirror: bool) -> Response | Reply | Coroutine[Any, Any, Response]:
        """Send ``request`` to one endpoint of ``backend``. On a kept connection (the steady state) the
        answer comes back through a ``Reply`` that the upstream connection sets from its own callback:
        no task, coroutine or future per request, and the answer is written in the loop iteration that
        read it. Without an idle connection, ``_forward_connecting`` (a coroutine: connecting waits),
        which takes the mirror's place in ``shadow_in_flight`` itself: a coroutine closed before it
        first runs (its client gone, the loop stopping) runs none of its code, so nothing taken here
        could be given back. With ``mirror_when`` ``sent`` the mirror is written right after the
        primary's request (``shadow`` then stays None: ``_answered`` queues nothing) and compared when
        both answers are in."""
        started = time.perf_counter()
        shadow = self._take_shadow(config, mirror)
        headers = self._header_lines(request, shadow is not None)
        along: _Mirror | None = None
        if shadow is not None and self._mirror_sent:
            along, shadow = _Mirror(config, backend, shadow, None, 2), None
        base = self._endpoint(backend)
        if base is None:
            if along is not None:
                self._start_shadow(along, request, headers)
                self._settle(along)  # the primary's part: no answer to compare with
            return self._answered(config, backend, request, headers, shadow, self._no_endpoints(config, backend),
                                  started)
        target = request.path + ("?" + request.query.decode("latin-1") if request.query else "")
        reply = Reply()

        def done(outcome: UpstreamResponse | OSError) -> None:
            result = outcome if isinstance(outcome, UpstreamResponse) else self._failed(config, backend, base,
                                                                                        outcome)
            try:
                reply.set_result(self._answered(config, backend, request, headers, shadow, result, started))
            finally:
                if along is not None:  # after the user's answer is written
                    self._primary_in(along, result)

        counted = shadow is not None or along is not None
        try:
            sent = self.upstreams.send(base, request.method, target, headers, request.body, done)
        except BaseException:
            if counted:
                self.shadow_in_flight -= 1
            raise
        if sent:
            if along is not None:
                self._start_shadow(along, request, headers)
            return reply
        if counted:
            self.shadow_in_flight -= 1  # nothing sent: _forward_connecting counts its own mirror
        return self._forward_connecting(config, backend, request, headers, counted, base, target, started)

    async def _forward_connecting(self, config: RouterConfig, backend: Backend, request: Request,
                                  headers: Headers, mirror: bool, base: str, target: str,
                                  started: float) -> Response:
        """``_forward`` on a new connection. The mirror's count is taken here, in the coroutine's first
        step, and every way out of it from there on gives it back (``_settle`` or the ``except``)."""
        shadow = self._take_shadow(config, mirror)
        along: _Mirror | None = None
        try:
            if shadow is not None and self._mirror_sent:
                along, shadow = _Mirror(config, backend, shadow, None, 2), None
                self._start_shadow(along, request, headers)  # as the primary's connection is made
            try:
                result: UpstreamResponse | Response = await self.upstreams.request(
                    base, request.method, target, headers, request.body)
            except OSError as exc:  # TimeoutError included
                result = self._failed(config, backend, base, exc)
        except BaseException:
            if along is not None:
                self._settle(along)  # no primary answer: the mirror is only timed
            elif shadow is not None:
                self.shadow_in_flight -= 1
            raise
        if along is not None:  # compared after this answer is written (the loop's next turn)
            asyncio.get_running_loop().call_soon(self._primary_in, along, result)
        return self._answered(config, backend, request, headers, shadow, result, started)

    def _answered(self, config: RouterConfig, backend: Backend, request: Request, headers: Headers,
                  shadow: Backend | None, result: UpstreamResponse | Response, started: float) -> Response:
        """The user's answer for the primary's ``result``; the mirror, if any, is sent after it."""
        if shadow is not None:
            # The mirror is queued and leaves with the others queued meanwhile (one handle per batch),
            # after this answer is written: the shadow never competes with the request it copies.
            primary_body = None if isinstance(result, Response) or result.status != 200 else result.body
            mirrors = self._mirrors
            if not mirrors:
                asyncio.get_running_loop().call_later(self.settings.mirror_delay, self._send_mirrors)
            mirrors.append((_Mirror(config, backend, shadow, primary_body, 1), request, headers))
        if isinstance(result, Response):
            return result
        self.metrics.observe(config.model, backend.version, time.perf_counter() - started)
        content_type = JSON
        passed_back = [(_VERSION_HEADER, backend.version.encode())]
        for name, value in result.headers:
            if name == b"content-type":
                content_type = value
            else:
                passed_back.append((name, value))
        return Response(result.status, result.body, content_type, passed_back)

    def _send_mirrors(self) -> None:
        mirrors, self._mirrors = self._mirrors, []
        for mirror, request, headers in mirrors:
            self._start_shadow(mirror, request, headers)

    def _start_shadow(self, mirror: _Mirror, request: Request, headers: Headers) -> None:
        """Send the mirror (``shadow_in_flight`` was counted for it by ``_forward``): on a kept connection
        through a callback, as the primary (no task, coroutine or future per mirror); without an idle
        connection in a task that connects (``_shadow``). Either way it ends in ``_shadow_done``."""
        started = time.perf_counter()
        shadow = mirror.shadow
        try:
            base = self._endpoint(shadow)
            if base is None:
                self._shadow_done(mirror, self._no_endpoints(mirror.config, shadow), started)
                return

            def done(outcome: UpstreamResponse | OSError) -> None:
                result = outcome if isinstance(outcome, UpstreamResponse) else self._failed(mirror.config, shadow,
                                                                                            base, outcome)
                self._shadow_done(mirror, result, started)

            target = request.path + ("?" + request.query.decode("latin-1") if request.query else "")
            if self.upstreams.send(base, request.method, target, headers, request.body, done):
                return
        except Exception:  # the shadow must never hurt the router
            log.exception("shadow request failed")
            self._settle(mirror)
            return
        task = asyncio.get_running_loop().create_task(self._shadow(mirror, request, headers, started))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, mirror: _Mirror, request: Request, headers: Headers, started: float) -> None:
        """The mirror on a new connection (none was idle)."""
        try:
            result = await self._send(mirror.config, mirror.shadow, request, headers)
        except BaseException:
            self._settle(mirror)  # cancelled: not compared
            raise
        self._shadow_done(mirror, result, started)

    def _shadow_done(self, mirror: _Mirror, result: UpstreamResponse | Response, started: float) -> None:
        """The mirror's outcome: its latency now; compared once the primary's answer is in too."""
        try:
            self.metrics.observe_shadow(mirror.config.model, mirror.shadow.version, time.perf_counter() - started)
            mirror.shadow_body = None if isinstance(result, Response) or result.status != 200 else result.body
        except Exception:  # the shadow must never hurt the router
            log.exception("shadow latency failed")
        self._settle(mirror)

    def _primary_in(self, mirror: _Mirror, result: UpstreamResponse | Response) -> None:
        """The primary's answer for a mirror sent alongside it (``mirror_when`` ``sent``)."""
        if not isinstance(result, Response) and result.status == 200:
            mirror.primary_body = result.body
        self._settle(mirror)

    def _settle(self, mirror: _Mirror) -> None:
        """One of the mirror's two parts is in; once both are, compare them, and it is no longer in flight."""
        mirror.waiting -= 1
        if mirror.waiting > 0:
            return
        try:
            primary_body, shadow_body = mirror.primary_body, mirror.shadow_body
            if primary_body is None or shadow_body is _UNSEEN:
                return  # nothing to compare against (the user's request itself failed), or cancelled
            counts = self._agreement(primary_body, shadow_body)
            if counts is None:
                return
            agree, disagree, errors = counts
            config, metrics = mirror.config, self.metrics
            stable, shadow = mirror.primary.version, mirror.shadow.version
            if errors:  # the shadow's answer had no predictions: the primary's rows count as errors
                metrics.count_shadow(config.model, stable, shadow, m.OUTCOME_ERROR, errors)
                return
            if agree:
                metrics.count_shadow(config.model, stable, shadow, m.OUTCOME_AGREE, agree)
            if disagree:
                metrics.count_shadow(config.model, stable, shadow, m.OUTCOME_DISAGREE, disagree)
        except Exception:  # the shadow must never hurt the router
            log.exception("shadow comparison failed")
        finally:
            self.shadow_in_flight -= 1

    def _agreement(self, primary_body: bytes, shadow_body: bytes | None) -> tuple[int, int, int] | None:
        """(agreeing, disagreeing, error) rows of the two answers: errors are the primary's rows (at
        least 1) when the shadow's answer has no predictions; None when the primary's has none
        (nothing counted)."""
        # Both answers' outputs the same bytes (everything from their "outputs": key on: versions' answers
        # differ in model_version before it), or the same bodies: the rows are the primary's compared with
        # themselves (compare: NaN != NaN, as before), without decoding the shadow's; that count is kept
        # per distinct outputs, so a repeated answer is not decoded at all.
        if shadow_body is not None:
            key = same_outputs(primary_body, shadow_body)
            if key is not None:
                cache = self._same_outputs
                counts = cache.get(key, _UNSEEN)
                if counts is _UNSEEN:
                    counts = _self_agreement(primary_body)
                    if len(key) <= SAME_OUTPUTS_KEY_BYTES:
                        if len(cache) >= SAME_OUTPUTS_ENTRIES:
                            cache.clear()
                        cache[key] = counts
                return counts  # type: ignore[no-any-return]
            if primary_body == shadow_body:
                return _self_agreement(primary_body)
        primary_rows = predictions_of(primary_body)
        if primary_rows is None:
            return None
        shadow_rows = None if shadow_body is None else predictions_of(shadow_body)
        if shadow_rows is None:
            return 0, 0, max(len(primary_rows), 1)
        return (*compare(primary_rows, shadow_rows), 0)

    async def _fan_out_feedback(self, config: RouterConfig, request: Request) -> Response:
        token = self.settings.feedback_token
        if token is not None and not token.matches(request.headers.get("authorization")):
            refused = error_response(401, "feedback needs 'Authorization: Bearer <token>' with the token of the "
                                          "Secret named in the Rollout's spec.feedback.tokenSecretRef")
            refused.headers.append(CHALLENGE)
            self.metrics.feedback.labels(config.model, m.FEEDBACK_UNAUTHORIZED).inc()
            return refused
        targets: list[tuple[Backend, str]] = []
        seen: set[str] = set()
        for backend in config.all_backends():  # a version can be both a (weight 0) backend and the shadow
            for url in self.urls_of(backend):
                if url not in seen:
                    seen.add(url)
                    targets.append((backend, url))
        if not targets:
            return error_response(503, "no ready endpoints to take feedback")
        base_headers = [*self._headers(request), (HEADER_FEEDBACK_FANOUT.encode(), b"1")]
        if "authorization" in request.headers:
            base_headers.append((b"authorization", request.headers["authorization"].encode("latin-1")))

        async def one(backend: Backend, url: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
            try:
                answer = await self.upstreams.request(url, "POST", request.path, headers, body)
                return answer.status, orjson.loads(answer.body)
            except Exception as exc:
                self.metrics.errors.labels(config.model, backend.version, m.ROUTER_ERROR_UNREACHABLE).inc()
                return 502, {"error": f"{backend.version} at {url}: {type(exc).__name__}: {exc}"}

        # Every pod judges every label, and logs only those it counted ("matched").
        matched_only = [*base_headers, (HEADER_FEEDBACK_LOG.encode(), FEEDBACK_LOG_MATCHED.encode())]
        answers = await asyncio.gather(*(one(b, u, request.body, matched_only) for b, u in targets))
        refusal = next((a for a in answers if 400 <= a[0] < 500), None)
        if refusal is not None:  # the body itself was refused (the same on every pod): say why
            return json_response(*refusal)
        answered = [i for i, (status, _) in enumerate(answers) if status == 200]
        if not answered:
            return json_response(*answers[0])
        merged = merge_feedback_answers([(b.version, status, answer) for (b, _), (status, answer)
                                         in zip(targets, answers, strict=True)])
        for outcome, n in merged["outcomes"].items():
            if n:
                self.metrics.feedback.labels(config.model, outcome).inc(n)
        missed = [k for k, r in enumerate(merged["results"]) if r.get("outcome") in (ledger.UNKNOWN_ID, ledger.EXPIRED)]
        if missed:
            # Labels no pod holds (a prediction from before a restart, or an expired one) are still
            # worth logging once for retraining: one pod gets just those, and logs the valid ones.
            items = oip.parse_feedback(request.body)
            backend, url = targets[answered[0]]
            unmatched = orjson.dumps({"feedback": [{"id": items[k].id, "label": items[k].label} for k in missed]})
            await one(backend, url, unmatched, base_headers)
        body = {**answers[answered[0]][1], **merged}
        if merged["unreachable"] and missed:
            body["error"] = (f"{len(merged['unreachable'])} replica(s) could not be reached and {len(missed)} "
                             f"label(s) were not counted; resending is safe: labels already counted come back as "
                             f"duplicate")
            return json_response(502, body)
        return json_response(200, body)


def merge_feedback_answers(answers: list[tuple[str, int, Any]]) -> dict[str, Any]:
    """One answer from every replica's ``(version, status, answer)``: each item takes the most telling
    outcome any replica gave it (counted > duplicate > invalid > expired > unknown_id, see
    ``ledger.OUTCOMES``), so a label counted by the pod that made the prediction reads ``counted``
    although every other pod answered ``unknown_id``. ``matched``/``matchedByVersion`` count the
    items counted (per version: a mirrored prediction is held by a pod of each version)."""
    rank = {outcome: i for i, outcome in enumerate(ledger.OUTCOMES)}
    best: list[dict[str, Any]] | None = None
    matched_by: dict[str, int] = {}
    unreachable: list[str] = []
    for version, status, answer in answers:
        matched_by.setdefault(version, 0)
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
            unreachable.append(str(answer.get("error", status)) if isinstance(answer, dict) else str(status))
            continue
        results = answer["results"]
        matched_by[version] += sum(1 for r in results if isinstance(r, dict) and r.get("outcome") == ledger.COUNTED)
        if best is None:
            best = [dict(r) for r in results]
            continue
        for i, r in enumerate(results[:len(best)]):
            if isinstance(r, dict) and rank.get(r.get("outcome"), len(rank)) < rank.get(best[i].get("outcome"),
                                                                                         len(rank)):
                best[i] = dict(r)
    results = best or []
    outcomes = ledger.tally(ledger.Judged(str(r.get("id")), r["outcome"]) for r in results
                            if r.get("outcome") in rank)
    return {"results": results, "outcomes": outcomes, "matched": sum(matched_by.values()),
            "matchedByVersion": matched_by, "unreachable": unreachable}


async def run(settings: RouterSettings) -> int:
    router = Router(settings)
    await router.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(router.stop()))
    await router.stopped.wait()
    return 0
