"""``python -m noria_server serve``: one verified ModelVersion over Open Inference Protocol v2.

Life cycle: the HTTP port opens at once (live = 200, ready = 503 "loading"); a worker thread
verifies and loads the artifact (``noria.artifact.load_verified``: a bounded read of a regular
file inside the store, its digest, the zip's shape, the exact trusted-type list, then skops),
reads the drift profile and warms the model up; only then is the server ready. A refused artifact
leaves it not-ready with the reason in the readiness answer and the log, writes the termination
message ``{"reason": "ArtifactVerificationFailed", "kind": ..., "message": ...}`` (read by the
operator to abort the Rollout), and the process exits with the kind's code
(``noria.artifact.EXIT_CODES``; 3 for a failure without a kind) after ``failure_exit_seconds``
(long enough for a person or the operator to read the reason; kubelet's restarts then show it as
CrashLoopBackOff).
On SIGTERM/SIGINT it turns not-ready, keeps serving for ``drain_seconds`` (endpoints take a
moment to drop the pod), then stops accepting, finishes in-flight requests, flushes the logs,
and exits 0.

Micro-batching: ``predict`` runs on the event loop thread, so while it runs new requests wait in
the socket buffers; they are parsed in the next loop iteration and all go into the next
``predict`` call. Under load batches grow by themselves, at low load a request is predicted
alone with no added wait. ``batch_wait_ms`` > 0 adds a bounded wait before each batch, and
``max_batch`` bounds its rows; within that bound ``model.BatchSizer`` keeps what the rows add to one
``predict`` within ``batch_budget_ms`` (learned per-row cost), and a bulk request over the limit is
predicted in slices with the loop serving in between, so no batch holds the loop for long. Each answer
is written to its connection the moment its batch sets it (``httpserver.Reply``), before the loop parses
the requests that arrived during the predict. What an answer does not wait for (drift bins, class counts,
the ledger and the prediction log) is settled for several batches at once, at most ``SETTLE_SECONDS``
later or once ``SETTLE_ROWS`` rows wait, and always before a feedback post is judged, a scrape is
rendered or the server stops (``ModelServer.settle``). Each stage
(parse, batch wait, predict, count, log, serialise), the loop's lag and GC pauses are histograms in
the metrics (docs/operations/latency.md); after warm-up the heap is frozen (``loopmon.settle_heap``). A batch whose ``predict`` raises is re-run request by request so one
bad request fails alone.

Online features (``--feast-url``, a Rollout's ``spec.onlineFeatures``): a request of entity keys is
parsed, its features are looked up in Feast (``noria_server.online``, one call per loop turn), and
it then joins the micro-batch queue like any other; a failed lookup is answered with its own status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from noria import metrics as m
from noria import store
from noria.artifact import EXIT_REFUSED_GENERIC, UNUSABLE_MODEL, ArtifactError, Limits
from noria.conditions import ARTIFACT_VERIFICATION_FAILED
from noria.contracts import FEEDBACK_LOG_MATCHED, HEADER_FEEDBACK_FANOUT, HEADER_FEEDBACK_LOG

from . import feast_sink, ledger, oip, online
from .bearer import CHALLENGE, BearerToken
from .httpserver import HttpLimits, HttpServer, Reply, Request, Response, json_response
from .loopmon import GcPauses, LoopLagMonitor, precise_sleeps, settle_heap, shorten_gil_turns
from .model import DEFAULT_BATCH_BUDGET_MS, DEFAULT_BATCH_HOLD_US, BatchHold, BatchSizer, ServedModel
from .predlog import DEFAULT_FLUSH_SECONDS, JsonlLog
from .telemetry import ServerMetrics

log = logging.getLogger("noria_server.serve")

EXIT_REFUSED = EXIT_REFUSED_GENERIC  # a refusal without a kind; each kind has its own code (noria.artifact)
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 1024  # bytes of the human message in the termination message
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
# Answers not counted in noria_requests_total: kubelet probes and Prometheus scrapes are not user
# traffic, and counting their 200s would dilute the errorRate check's ratio on a quiet version.
UNCOUNTED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
# Rows of a bulk request handed to the prediction log per batch: each rendered alone (a few MB).
LOG_SLICE_ROWS = 4096
# A batch of at most this many rows has its prediction-log lines rendered on the loop thread, after its
# answers are written (~2.3 µs a row of 20 features: ~0.15 ms at 64 rows); larger ones by the log's
# writer thread in turns (docs/operations/latency.md, eighth pass).
LOG_INLINE_ROWS = 64
# Answered batches wait at most this long, and while fewer than SETTLE_ROWS rows wait, for their drift bins,
# class counts, ledger entries and prediction-log lines (ModelServer.settle): done for one-row batches one
# by one, that bookkeeping cost ~22 µs a request (logistic, benchmarks/batch_cpu.py), most of it per call,
# not per row. 2 ms is ~20 rows at 10,000 req/s; SETTLE_ROWS keeps a settled group's log lines inline.
SETTLE_SECONDS = 0.002
SETTLE_ROWS = LOG_INLINE_ROWS
# A held batch waits for at most this many rows (or max_batch): what 16 clients in a closed loop batch.
MIN_HOLD_TARGET_ROWS = 16


@dataclass
class ServeSettings:
    artifact_uri: str
    digest: str
    model: str
    version: str
    profile_uri: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    store_root: str | None = None
    namespace: str | None = None
    pipeline: str | None = None
    pod: str = "local"
    prediction_log: bool = True
    log_flush_seconds: float = DEFAULT_FLUSH_SECONDS  # one prediction-log object per flush (noria_server.predlog)
    feature_counting: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 0.0
    batch_budget_ms: float = DEFAULT_BATCH_BUDGET_MS  # what batching may add to one predict call
    batch_hold_us: float = DEFAULT_BATCH_HOLD_US  # longest hold of a small batch near the maximum (model.BatchHold)
    http: HttpLimits = field(default_factory=HttpLimits)
    feedback_ledger_bytes: int = ledger.DEFAULT_MAX_BYTES
    feedback_retention_seconds: float = ledger.DEFAULT_RETENTION_SECONDS
    feedback_max_abs_label: float = ledger.DEFAULT_MAX_ABS_LABEL
    feedback_token: BearerToken | None = field(default=None, repr=False)
    drain_seconds: float = 5.0
    failure_exit_seconds: float = 30.0
    artifact_limits: Limits = field(default_factory=Limits)
    termination_log: str | None = None  # where a refusal is written for the operator; None = nowhere
    online_features: online.OnlineFeatureSettings | None = None  # fill features from Feast (noria_server.online)
    feedback_sink: feast_sink.SinkSettings | None = None  # labelled rows back to Feast (noria_server.feast_sink)

    def validate(self) -> None:
        missing = [name for name, value in (("--artifact/NORIA_ARTIFACT_URI", self.artifact_uri),
                                            ("--digest/NORIA_DIGEST", self.digest),
                                            ("--model/NORIA_MODEL", self.model),
                                            ("--version/NORIA_VERSION", self.version)) if not value]
        if missing:
            raise ValueError(f"missing required setting(s): {', '.join(missing)}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if not self.log_flush_seconds > 0:
            raise ValueError(f"log_flush_seconds must be positive, got {self.log_flush_seconds}")
        if not self.batch_budget_ms > 0:
            raise ValueError(f"batch_budget_ms must be positive, got {self.batch_budget_ms}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must not be negative, got {self.batch_wait_ms}")
        if not 0 <= self.batch_hold_us <= 1000:
            raise ValueError(f"batch_hold_us must be within 0..1000, got {self.batch_hold_us}")
        self.http.validate()
        if self.online_features is not None:
            self.online_features.validate()
        if self.feedback_sink is not None:
            if self.online_features is None:
                raise ValueError("--feast-feedback-push-source/NORIA_FEAST_FEEDBACK_PUSH_SOURCE needs --feast-url: "
                                 "the rows pushed to Feast are those of requests of entity keys")
            self.feedback_sink.validate()
        if self.feedback_ledger_bytes < 1 << 20:
            raise ValueError(f"--feedback-ledger-bytes/NORIA_FEEDBACK_LEDGER_BYTES must be at least 1 MiB, "
                             f"got {self.feedback_ledger_bytes}")
        if not self.feedback_retention_seconds > 0:
            raise ValueError(f"--feedback-retention-seconds/NORIA_FEEDBACK_RETENTION_SECONDS must be positive, "
                             f"got {self.feedback_retention_seconds}")
        if not 0 < self.feedback_max_abs_label < 1e300:
            raise ValueError(f"--feedback-max-abs-label/NORIA_FEEDBACK_MAX_ABS_LABEL must be a positive finite "
                             f"number, got {self.feedback_max_abs_label}")


@dataclass(slots=True)
class _Pending:
    request: oip.InferRequest
    future: Reply  # written to the client as soon as it is set, before the batch's ledger and log work
    started: float
    parsed: float  # perf_counter when it joined the queue (batch_wait starts)
    keys: dict[str, list[Any]] | None = None  # a keyed request's entity keys (for the feedback sink)


class ModelServer:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(settings.model, settings.version)
        self.model: ServedModel | None = None
        self.state = "loading"
        self.reason = "loading and verifying the model"
        self.http = HttpServer(self.handle, settings.http,
                               error_fields=lambda: {"id": oip.new_id(), "model_name": settings.model,
                                                     "model_version": settings.version},
                               on_response=self._count_response)
        self.metrics.watch_http(self.http)
        # Which predictions a label may count for, and which ids were labelled (noria_server.ledger).
        self.ledger = ledger.PredictionLedger(settings.feedback_ledger_bytes, settings.feedback_retention_seconds)
        self.label_rules: ledger.LabelRules | None = None
        self.pending: list[_Pending] = []
        self.pending_rows = 0
        self.flush_scheduled = False
        self.sizer = BatchSizer(settings.max_batch, settings.batch_budget_ms / 1000.0)
        # A small batch held back a few tens of µs near the maximum (never with batch_wait_ms, its own wait).
        self.hold = BatchHold(settings.batch_hold_us / 1e6 if settings.batch_wait_ms == 0 else 0.0,
                              min(settings.max_batch, MIN_HOLD_TARGET_ROWS))
        self.held = False  # the batch queued now was held once already
        # Answered batches whose bookkeeping is not done yet (see settle): (batch, rows, predictions, time).
        self.unsettled: list[tuple[list[_Pending], np.ndarray, np.ndarray, float]] = []
        self.unsettled_rows = 0
        self.settle_scheduled = False
        self.slicing: set[asyncio.Task[None]] = set()  # bulk requests being predicted in slices
        self.loop_lag = LoopLagMonitor(self.metrics.latency.loop_lag.observe)
        self.gc_pauses = GcPauses(self.metrics.latency.observe_gc)
        self.predictions_log: JsonlLog | None = None
        self.feedback_log: JsonlLog | None = None
        self.online_metrics = (online.OnlineMetrics(self.metrics.registry, settings.model, settings.version)
                               if settings.online_features is not None else None)
        self.lookup: online.FeatureLookup | None = None  # made at the first request, for the model's features
        self.sink: feast_sink.FeedbackSink | None = None  # made when the model is loaded (its features)
        self._classes_by_text: dict[str, Any] = {}
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.port = 0
        self._model_path = f"/v2/models/{settings.model}"
        self._version_path = f"{self._model_path}/versions/{settings.version}"
        self._endpoints = {f"{base}/{name}": name for base in (self._model_path, self._version_path)
                           for name in (m.ENDPOINT_INFER, m.ENDPOINT_FEEDBACK)}

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        self.port = await self.http.start(self.settings.host, self.settings.port)
        log.info("listening on %s:%d; loading %s", self.settings.host, self.port, self.settings.artifact_uri)
        self.loop_lag.start()
        self.gc_pauses.install()
        shorten_gil_turns()
        if self.hold.hold_seconds:
            precise_sleeps()  # this thread's: a 30 µs hold slept ~100 µs at the default slack
        asyncio.get_running_loop().create_task(self._load())
        return self.port

    async def _load(self) -> None:
        s = self.settings
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, self._load_and_warm)
        except Exception as exc:
            refusal = exc if isinstance(exc, ArtifactError) else \
                ArtifactError(UNUSABLE_MODEL, f"loading or warming up failed: {type(exc).__name__}: {exc}")
            self.state, self.reason = "failed", f"model refused: {refusal}"
            log.error("%s; not ready, exiting with code %d in %.0fs", self.reason, refusal.exit_code,
                      s.failure_exit_seconds)
            write_termination_message(s.termination_log, refusal)
            await asyncio.sleep(s.failure_exit_seconds)
            self.exit_code = refusal.exit_code
            await self.stop(drain=False)
            return
        self.model = model
        if self.online_metrics is not None:
            self.online_metrics.declare(model.schema.features)
        self.make_feedback_sink()
        self.sizer.call_seconds = model.single_row_seconds  # until one-row calls under traffic say more
        if s.feature_counting and model.profile is not None:
            self.metrics.enable_feature_bins(model.schema.features, model.profile)
        self.metrics.declare_classes(model.classes)
        if s.prediction_log and s.store_root and s.namespace and s.pipeline:
            root, ns, pipeline = s.store_root, s.namespace, s.pipeline
            self.predictions_log = JsonlLog(
                lambda day: store.predictions_dir(root, ns, pipeline, s.version, day), s.pod,
                lambda n: self.metrics.log_dropped.labels(s.model, s.version, "predictions").inc(n),
                flush_seconds=s.log_flush_seconds)
            self.feedback_log = JsonlLog(
                lambda day: store.feedback_dir(root, ns, pipeline, day), s.pod,
                lambda n: self.metrics.log_dropped.labels(s.model, s.version, "feedback").inc(n),
                flush_seconds=s.log_flush_seconds)
        elif s.prediction_log:
            log.info("prediction log off: set NORIA_STORE_ROOT, NORIA_NAMESPACE and NORIA_PIPELINE to enable it")
        frozen = settle_heap()  # after everything serving needs exists: full collections skip it
        self.state, self.reason = "ready", "ready"
        log.info("heap settled: %d objects frozen out of garbage collection", frozen)
        log.info("ready: %s %s, %d features, %s", s.model, s.version, len(model.schema.features),
                 "classifier" if model.is_classifier else "regressor")

    def _load_and_warm(self) -> ServedModel:
        s = self.settings
        model = ServedModel.load(s.artifact_uri, s.digest, s.profile_uri, s.store_root or None, s.artifact_limits)
        try:
            single = model.warm_up(s.max_batch)
        except Exception as exc:  # a model that cannot predict plausible rows is not served
            raise ArtifactError(UNUSABLE_MODEL, f"the model failed its warm-up predictions: "
                                               f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        log.info("warmed up: one-row predict %.0f µs, predict_proba in answers: %s", single * 1e6,
                 model.proba_is_free)
        return model

    async def stop(self, drain: bool = True) -> None:
        if self.state == "stopping":
            return
        was_ready = self.state == "ready"
        self.state, self.reason = "stopping", "draining: the server is shutting down"
        if drain and was_ready and self.settings.drain_seconds > 0:
            await asyncio.sleep(self.settings.drain_seconds)
        await self.http.close()
        if self.lookup is not None:
            self.lookup.close()
        if self.sink is not None:
            await self.sink.stop()
        self.settle()  # what was answered reaches the counters, the ledger and the log before it closes
        self.loop_lag.stop()
        self.gc_pauses.uninstall()
        for jsonl in (self.predictions_log, self.feedback_log):
            if jsonl is not None:
                await asyncio.get_running_loop().run_in_executor(None, jsonl.close)
        self.stopped.set()

    # --- routing -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response | Reply:
        path, method = request.path, request.method
        if path.startswith(self._model_path):
            rest = path[len(self._model_path):]
            if rest.startswith("/versions/"):
                if not path.startswith(self._version_path):
                    return self._error(404, f"model {self.settings.model} has no version "
                                            f"{rest[len('/versions/'):].split('/')[0]!r}; "
                                            f"it serves {self.settings.version}", request)
                rest = path[len(self._version_path):]
            if rest == "/infer":
                return self._infer(request) if method == "POST" else self._method(request, "POST")
            if rest == "/feedback":
                return self._feedback(request) if method == "POST" else self._method(request, "POST")
            if rest in ("", "/"):
                return self._metadata() if method == "GET" else self._method(request, "GET")
            if rest == "/ready":
                return self._ready()
        elif path.startswith("/v2/models/"):
            name = path[len("/v2/models/"):].split("/")[0]
            return self._error(404, f"unknown model {name!r}; this server serves {self.settings.model!r}", request)
        elif path == "/v2/health/ready":
            return self._ready()
        elif path == "/v2/health/live":
            return json_response(200, {"live": True, "model_version": self.settings.version})
        elif path == "/metrics":
            return self._exposition()
        elif path in ("/v2", "/v2/"):
            return json_response(200, {"name": "noria-server", "version": "0.1.0",
                                       "extensions": ["feedback", "binary_tensor_data"],
                                       "model_version": self.settings.version})
        return self._error(404, f"no route for {method} {path}", request)

    async def _exposition(self) -> Response:
        """The scrape, rendered by a worker thread: with 20 drift-counted features it is ~40 KB and
        5-7 ms of CPU (``prometheus_client.generate_latest``), one pause per scrape on the loop
        thread; from a thread it takes the GIL in turns of at most 0.5 ms (``shorten_gil_turns``).
        Every prediction answered before the scrape is counted in it (``settle``)."""
        self.settle()
        body = await asyncio.get_running_loop().run_in_executor(None, self.metrics.exposition)
        return Response(200, body, PROMETHEUS_TEXT)

    def _method(self, request: Request, allowed: str) -> Response:
        return self._error(405, f"{request.path} takes {allowed}, not {request.method}", request)

    def _count_response(self, request: Request | None, status: int) -> None:
        """Every answer, by endpoint and status, whoever gave it (the handler or the HTTP layer's own
        refusals, which come with no request). Only ``infer`` answers are errorRate's: feedback fans
        out to every pod of every version behind the router, and metadata or unknown paths cost a
        client nothing, so either would dilute a failing candidate's error rate (docs/analysis.md)."""
        if request is None:
            self.metrics.count_code(status, m.ENDPOINT_OTHER)
        elif request.path not in UNCOUNTED_PATHS:
            self.metrics.count_code(status, self._endpoints.get(request.path, m.ENDPOINT_OTHER))

    def _error(self, status: int, message: str, request: Request | None = None, request_id: str | None = None,
               started: float | None = None) -> Response:
        if started is not None:  # an inference answered with an error: its latency counts too
            self.metrics.duration.observe(time.perf_counter() - started)
        rid = request_id or (request.headers.get("x-request-id") if request else None) or oip.new_id()
        return json_response(status, {"error": message, "id": rid, "model_name": self.settings.model,
                                      "model_version": self.settings.version})

    def _ready(self) -> Response:
        ok = self.state == "ready"
        return json_response(200 if ok else 503, {"ready": ok, "state": self.state, "reason": self.reason,
                                                  "model_version": self.settings.version})

    def _metadata(self) -> Response:
        model = self.model
        body: dict[str, Any] = {"name": self.settings.model, "versions": [self.settings.version],
                                "platform": "sklearn", "model_version": self.settings.version,
                                "ready": self.state == "ready"}
        if model is not None:
            body["inputs"] = [{"name": f, "datatype": "BYTES" if f in model.schema.categorical else "FP64",
                               "shape": [-1, 1]} for f in model.schema.features]
            # The datatypes and shapes /infer answers (oip.infer_response), so clients can plan on them.
            body["outputs"] = [{"name": oip.OUTPUT_PREDICT, "shape": [-1],
                                "datatype": oip.predict_datatype(model.is_classifier, model.classes)}]
            if model.proba_is_free:
                body["outputs"].append({"name": oip.OUTPUT_PROBA, "datatype": "FP64",
                                        "shape": [-1, len(model.classes or [])]})
            body["parameters"] = {"task": "classification" if model.is_classifier else "regression"}
            if model.classes is not None:
                body["parameters"]["classes"] = oip.classes_parameter(model.classes)
        return json_response(200, body)

    # --- inference -----------------------------------------------------------------------------
    def _infer(self, request: Request) -> Response | Reply:
        started = time.perf_counter()
        model = self.model
        if model is None or self.state not in ("ready", "stopping"):
            return self._error(503, f"model not ready: {self.reason}", request, started=started)
        if self.settings.online_features is not None:
            return self._infer_keyed(request, model, self._lookup(model), started)
        try:
            parsed = oip.parse_infer(request.body, model.schema, request.headers.get("x-request-id"),
                                     request.headers.get(oip.HEADER_INFERENCE_HEADER_LENGTH),
                                     oip.output_names(model.proba_is_free))
        except oip.RequestError as exc:
            return self._error(exc.status, exc.message, request, started=started)
        queued = time.perf_counter()
        self.metrics.latency.stages[m.STAGE_PARSE].observe(queued - started)
        future = Reply()
        self._enqueue(parsed, future, started, queued)
        return future

    def _infer_keyed(self, request: Request, model: ServedModel, lookup: online.FeatureLookup,
                     started: float) -> Response | Reply:
        """A request of entity keys: its features are looked up (noria_server.online), then it joins
        the micro-batch queue like any other; a failed lookup is answered with its own status."""
        try:
            keyed = online.parse_keyed(request.body, model.schema, lookup.settings, request.headers.get("x-request-id"),
                                       request.headers.get(oip.HEADER_INFERENCE_HEADER_LENGTH),
                                       oip.output_names(model.proba_is_free))
        except oip.RequestError as exc:
            return self._error(exc.status, exc.message, request, started=started)
        self.metrics.latency.stages[m.STAGE_PARSE].observe(time.perf_counter() - started)
        future = Reply()

        def filled(keyed: online.KeyedRequest, rows: np.ndarray | online.LookupFailed) -> None:
            if isinstance(rows, online.LookupFailed):
                response = self._error(rows.status, rows.message, request_id=keyed.request_id, started=started)
                response.headers.extend(rows.headers())
                future.set_result(response)
                return
            parsed = oip.InferRequest(keyed.request_id, keyed.row_ids, rows, keyed.outputs)
            self._enqueue(parsed, future, started, time.perf_counter(), keyed.keys)

        lookup.submit(keyed, filled)
        return future

    def _lookup(self, model: ServedModel) -> online.FeatureLookup:
        if self.lookup is None:
            assert self.settings.online_features is not None and self.online_metrics is not None
            self.lookup = online.FeatureLookup(self.settings.online_features, model.schema, self.online_metrics)
        return self.lookup

    def make_feedback_sink(self) -> feast_sink.FeedbackSink | None:
        """The sink of labelled rows for Feast, made once the model, whose features it pushes, is set
        (at load; a test that sets ``model`` itself calls this after), never on the request path."""
        s, model = self.settings, self.model
        if self.sink is None and s.feedback_sink is not None and s.online_features is not None and model is not None:
            self.sink = feast_sink.FeedbackSink(
                s.feedback_sink, s.online_features.base_url, urlsplit(s.online_features.url).path,
                s.online_features.entity_keys, model.schema.features, s.version,
                feast_sink.SinkMetrics(self.metrics.registry, s.model, s.version))
            self._classes_by_text = {ledger.class_text(c): c.item() if hasattr(c, "item") else c
                                     for c in (model.classes or [])}
        return self.sink

    def _enqueue(self, parsed: oip.InferRequest, future: Reply, started: float, queued: float,
                 keys: dict[str, list[Any]] | None = None) -> None:
        self.pending.append(_Pending(parsed, future, started, queued, keys))
        self.pending_rows += parsed.rows.shape[0]
        self.hold.arrive()
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop = asyncio.get_running_loop()
            if self.settings.batch_wait_ms > 0 and self.pending_rows < self.settings.max_batch:
                loop.call_later(self.settings.batch_wait_ms / 1000.0, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.hold.hold_seconds and self._held_back():
            return
        batch: list[_Pending] = []
        rows = 0
        limit = self.sizer.limit()
        batch_wait = self.metrics.latency.stages[m.STAGE_BATCH_WAIT]
        now = time.perf_counter()
        while self.pending and (not batch or rows + self.pending[0].request.rows.shape[0] <= limit):
            item = self.pending.pop(0)
            rows += item.request.rows.shape[0]
            batch.append(item)
            batch_wait.observe(now - item.parsed)
        self.pending_rows -= rows
        if self.pending:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        batch = [b for b in batch if not b.future.done()]
        if not batch:
            return
        if rows > limit:  # one bulk request over the limit: predicted in slices, the loop serving in between
            task = asyncio.get_running_loop().create_task(self._predict_in_slices(batch[0], limit))
            self.slicing.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self.slicing.discard)
            return
        try:
            self._predict_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                item = batch[0]
                log.info("predict failed for request %s: %s", item.request.request_id, exc)
                item.future.set_result(self._unpredictable(item, exc))
                return
            for item in batch:  # isolate the offending request(s)
                if item.future.done():
                    continue
                try:
                    self._predict_batch([item])
                except Exception as one_exc:
                    item.future.set_result(self._unpredictable(item, one_exc))

    def _held_back(self) -> bool:
        """Hold a small batch near the maximum (``model.BatchHold``): sleep the hold on the loop thread
        (the requests arriving meanwhile wait in the sockets) and take the batch after the loop's next
        poll has read them. Once per batch; True if held."""
        if self.held:
            self.held = False
            return False
        hold = self.hold
        hold.tick(time.perf_counter(), time.thread_time)
        seconds = hold.seconds(self.pending_rows)
        if seconds <= 0:
            return False
        time.sleep(seconds)
        self.held = True
        self.flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _unpredictable(self, item: _Pending, exc: Exception) -> Response:
        return self._error(422, f"the model could not predict these rows: {type(exc).__name__}: {exc}",
                           request_id=item.request.request_id, started=item.started)

    def _predict_batch(self, batch: list[_Pending]) -> None:
        model = self.model
        assert model is not None
        rows = batch[0].request.rows if len(batch) == 1 else np.concatenate([b.request.rows for b in batch])
        predictions, proba = self._timed_predict(model, rows)
        self._answer(batch, rows, predictions, proba)

    def _timed_predict(self, model: ServedModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        predictions, proba = model.predict(rows)
        seconds = time.perf_counter() - t0
        self.sizer.observe(len(rows), seconds)
        self.metrics.latency.stages[m.STAGE_PREDICT].observe(seconds)
        self.metrics.latency.batch_rows.observe(len(rows))
        return predictions, proba

    async def _predict_in_slices(self, item: _Pending, limit: int) -> None:
        """A request with more rows than one batch may take: ``limit`` rows per ``predict``, other
        requests answered in between, then answered whole (or 422 whole if a slice fails)."""
        model = self.model
        assert model is not None
        rows = item.request.rows
        parts: list[tuple[np.ndarray, np.ndarray | None]] = []
        try:
            start = 0
            while start < len(rows):
                parts.append(self._timed_predict(model, rows[start:start + limit]))
                start += limit
                await asyncio.sleep(0)
                limit = self.sizer.limit()
        except Exception as exc:
            log.info("predict failed for request %s: %s", item.request.request_id, exc)
            item.future.set_result(self._unpredictable(item, exc))
            return
        predictions = np.concatenate([p for p, _ in parts])
        proba = None if parts[0][1] is None else np.concatenate([q for _, q in parts])  # type: ignore[misc]
        try:
            self._answer([item], rows, predictions, proba)
        except Exception as exc:  # as _flush does for a batch: the request fails alone, never hangs
            if not item.future.done():
                item.future.set_result(self._unpredictable(item, exc))

    def _answer(self, batch: list[_Pending], rows: np.ndarray, predictions: np.ndarray,
                proba: np.ndarray | None) -> None:
        """Answer a predicted batch; its bookkeeping waits to be settled with the next ones (``settle``)."""
        model = self.model
        assert model is not None
        metrics = self.metrics
        t2 = time.perf_counter()
        start = 0
        s = self.settings
        serialise = metrics.latency.stages[m.STAGE_SERIALISE]
        for item in batch:
            n = item.request.rows.shape[0]
            pred = predictions[start:start + n]
            body, header_length = oip.infer_response(s.model, s.version, item.request, pred,
                                                     proba[start:start + n] if proba is not None else None,
                                                     model.classes)
            start += n
            item.future.set_result(_infer_answer(body, header_length))
            t3 = time.perf_counter()
            serialise.observe(t3 - t2)
            metrics.duration.observe(t3 - item.started)
            t2 = t3
        self._defer(batch, rows, predictions)

    def _defer(self, batch: list[_Pending], rows: np.ndarray, predictions: np.ndarray) -> None:
        """Queue an answered batch for ``settle``: at once if it fills a group, else within SETTLE_SECONDS."""
        n = len(rows)
        if self.unsettled_rows + n > SETTLE_ROWS:
            self.settle()  # groups stay within SETTLE_ROWS (their log lines rendered inline) unless one batch is more
        self.unsettled.append((batch, rows, predictions, time.time()))
        self.unsettled_rows += n
        if self.unsettled_rows >= SETTLE_ROWS:
            self.settle()
        elif not self.settle_scheduled:
            self.settle_scheduled = True
            asyncio.get_running_loop().call_later(SETTLE_SECONDS, self._settle_due)

    def _settle_due(self) -> None:
        self.settle_scheduled = False
        self.settle()

    def settle(self) -> None:
        """The bookkeeping of every answered batch not yet settled, in one go: drift bins and class
        counts (the ``count`` stage), then the ledger and the prediction log (the ``log`` stage). A
        failure here is logged and loses only that bookkeeping: the answers are out already."""
        if not self.unsettled:
            return
        answered, self.unsettled, self.unsettled_rows = self.unsettled, [], 0
        model = self.model
        assert model is not None
        if len(answered) == 1:
            batch, rows, predictions, _ = answered[0]
        else:
            batch = [item for group in answered for item in group[0]]
            rows = np.concatenate([group[1] for group in answered])
            predictions = np.concatenate([group[2] for group in answered])
        stamps = [(len(group[1]), group[3]) for group in answered]
        metrics, stages = self.metrics, self.metrics.latency.stages
        try:
            t0 = time.perf_counter()
            if metrics.bins is not None:
                metrics.bins.observe(rows)
            metrics.count_predictions(predictions, model.is_classifier)
            t1 = time.perf_counter()
            stages[m.STAGE_COUNT].observe(t1 - t0)
            self._remember_and_log(batch, rows, predictions, stamps)
            stages[m.STAGE_LOG].observe(time.perf_counter() - t1)
        except Exception:  # a bug here must not stop later batches' bookkeeping
            log.exception("the bookkeeping of %d answered rows failed", len(rows))

    def _remember_and_log(self, batch: list[_Pending], rows: np.ndarray, predictions: np.ndarray,
                          stamps: list[tuple[int, float]]) -> None:
        """Ledger entries and prediction-log lines for answered rows; ``stamps`` (rows, time.time())
        say when each batch of them was answered."""
        ids = [rid for item in batch for rid in item.request.row_ids]
        values = predictions.tolist()
        sink = self.sink
        if sink is None:
            self.ledger.record(ids, values, time.monotonic())
        else:
            served = _served(batch, rows, sink.entity_keys, stamps[0][1])
            self.ledger.record(ids, values, time.monotonic(), served, _served_cost(served[0]) if served else 0)
        log_ = self.predictions_log
        if log_ is not None:
            version, names = self.settings.version, self.model.schema.features  # type: ignore[union-attr]
            n = len(ids)
            if n <= LOG_INLINE_ROWS:
                log_.offer_rendered(n, partial(_render_predictions, stamps, version, names, ids, rows, values))
                return
            if n <= LOG_SLICE_ROWS:
                log_.offer(n, partial(_render_predictions, stamps, version, names, ids, rows, values))
                return
            # A bulk request: queued in slices, each its own copy (a view would keep the whole batch
            # alive), and only while the log has room, so it never holds or renders more rows than its
            # bound at once; what does not fit is dropped and counted.
            for start in range(0, n, LOG_SLICE_ROWS):
                stop = min(start + LOG_SLICE_ROWS, n)
                if log_.room() < stop - start:
                    log_.drop(n - start)
                    return
                log_.offer(stop - start, partial(_render_predictions, [(stop - start, stamps[0][1])], version, names,
                                                 ids[start:stop], rows[start:stop].copy(), values[start:stop]))

    # --- feedback ------------------------------------------------------------------------------
    def _feedback(self, request: Request) -> Response:
        """Count each label at most once, and only for a prediction this pod made (``ledger.judge``).

        Behind the router every replica of every version gets every label, marked
        ``x-noria-feedback-fanout`` (then an id this pod never saw is not a refusal worth counting
        here: another pod may hold it) and ``x-noria-feedback-log: matched`` (log only what this pod
        counted). Labels no pod held are then sent again to one pod without ``matched``, which logs
        the valid ones for retraining, as it does for a client that posts to it directly."""
        s, metrics = self.settings, self.metrics
        if s.feedback_token is not None and not s.feedback_token.matches(request.headers.get("authorization")):
            metrics.feedback_refused_by(m.FEEDBACK_UNAUTHORIZED)
            response = self._error(401, "feedback needs 'Authorization: Bearer <token>' with the token of the "
                                        "Secret named in the Rollout's spec.feedback.tokenSecretRef", request)
            response.headers.append(CHALLENGE)
            return response
        model = self.model
        if model is None:
            return self._error(503, f"model not ready: {self.reason}", request)
        try:
            items = oip.parse_feedback(request.body)
        except oip.RequestError as exc:
            return self._error(exc.status, exc.message, request)
        if not model.is_classifier:
            for i, item in enumerate(items):
                if isinstance(item.label, bool) or not isinstance(item.label, (int, float)):
                    return self._error(422, f"feedback[{i}].label must be a number for a regression model, "
                                            f"got {item.label!r:.80}", request, request_id=item.id)
        rules = self.label_rules
        if rules is None:
            rules = self.label_rules = ledger.LabelRules.for_model(model.classes, s.feedback_max_abs_label)
        fanned_out = HEADER_FEEDBACK_FANOUT in request.headers
        designated = request.headers.get(HEADER_FEEDBACK_LOG) != FEEDBACK_LOG_MATCHED
        self.settle()  # every prediction answered so far is in the ledger before a label is judged
        judged = ledger.judge(((f.id, f.label) for f in items), self.ledger, rules, time.monotonic())
        refused: dict[str, int] = {}
        logged: list[oip.Feedback] = []
        for item, verdict in zip(items, judged, strict=True):
            outcome = verdict.outcome
            if outcome == ledger.COUNTED:
                metrics.feedback_counted(verdict.actual, verdict.predicted, model.is_classifier)
                logged.append(item)
                continue
            reason = verdict.reason if outcome == ledger.INVALID else outcome
            if outcome not in (ledger.UNKNOWN_ID, ledger.EXPIRED) or not fanned_out:
                refused[reason] = refused.get(reason, 0) + 1  # type: ignore[index]
            # A label for a prediction no pod holds any more (a restart, an old prediction) is still
            # worth logging once for retraining, which joins it with the prediction log by id.
            if outcome in (ledger.UNKNOWN_ID, ledger.EXPIRED) and designated and rules.check(item.label)[1] is None:
                logged.append(item)
        for reason, n in refused.items():
            metrics.feedback_refused_by(reason, n)
        if self.sink is not None:
            self._to_sink(judged, model.is_classifier)
        if self.feedback_log is not None and logged:
            ts = time.time()

            def render() -> bytes:
                stamp = _timestamp(ts)
                return b"".join(orjson.dumps({"id": f.id, "ts": stamp, "label": f.label},
                                             option=orjson.OPT_APPEND_NEWLINE) for f in logged)

            self.feedback_log.offer(len(logged), render)
        outcomes = ledger.tally(judged)
        ids = [f.id for f in items]
        return json_response(200, {"model_name": s.model, "model_version": s.version, "id": ids[0], "ids": ids,
                                   "accepted": len(items), "matched": outcomes[ledger.COUNTED],
                                   "outcomes": outcomes, "results": [j.answer() for j in judged]})


    def _to_sink(self, judged: list[ledger.Judged], classifier: bool) -> None:
        """Counted labels of keyed predictions, queued for Feast's push source (never waits)."""
        assert self.sink is not None
        now = time.time()
        rows = [feast_sink.Row(j.served, j.predicted,
                               self._classes_by_text.get(j.actual, j.actual) if classifier else j.actual, j.id, now)
                for j in judged if j.outcome == ledger.COUNTED and j.served is not None]
        if rows:
            self.sink.offer(rows)


def _served(batch: list[_Pending], rows: np.ndarray, entity_keys: tuple[str, ...],
            now: float) -> list[feast_sink.Served | None]:
    """Per predicted row, what the feedback sink will need if a label comes: the keys and the
    features as the model received them (None for a row of a request that named no keys)."""
    out: list[feast_sink.Served | None] = []
    values = rows.tolist()
    start = 0
    for item in batch:
        n = item.request.rows.shape[0]
        keys = item.keys
        if keys is None:
            out.extend([None] * n)
        else:
            for i in range(n):
                out.append(feast_sink.served([keys[k][i] for k in entity_keys], values[start + i], now))
        start += n
    return out


def _served_cost(first: feast_sink.Served | None) -> int:
    """Bytes one kept Served costs the ledger (its tuple and its values, about)."""
    if first is None:
        return 0
    return sys.getsizeof(first) + 32 * (len(first) - 1)


def _infer_answer(body: bytes, header_length: int | None) -> Response:
    if header_length is None:
        return Response(200, body)
    return Response(200, body, oip.BINARY_CONTENT_TYPE,
                    [(oip.HEADER_INFERENCE_HEADER_LENGTH.encode(), str(header_length).encode())])


def default_termination_log() -> str | None:
    """Kubernetes' termination-message file when the container has one we may write; else None."""
    path = DEFAULT_TERMINATION_LOG
    return path if os.path.isfile(path) and os.access(path, os.W_OK) else None


def termination_message(refusal: ArtifactError) -> str:
    """The JSON the operator reads from the terminated container (contract with the Rollout
    controller): reason, the refusal kind, and the human message cut to 1 KiB."""
    message = refusal.message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")
    return json.dumps({"reason": ARTIFACT_VERIFICATION_FAILED, "kind": refusal.kind, "message": message},
                      separators=(",", ":"))


def write_termination_message(path: str | None, refusal: ArtifactError) -> None:
    if not path:
        return
    try:
        with open(path, "w") as handle:
            handle.write(termination_message(refusal))
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def _render_predictions(stamps: list[tuple[int, float]], version: str, names: tuple[str, ...], ids: list[str],
                        rows: np.ndarray, values: list[Any]) -> bytes:
    """The prediction-log lines of settled rows, each stamped with when its batch was answered
    (``stamps``: (rows, time.time()) per batch, in order)."""
    texts = chain.from_iterable(repeat(_timestamp(ts), n) for n, ts in stamps)
    return b"".join(
        orjson.dumps({"id": rid, "ts": stamp, "model_version": version,
                      "features": dict(zip(names, row, strict=True)), "prediction": value},
                     option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
        for rid, stamp, row, value in zip(ids, texts, rows.tolist(), values, strict=True))


def _timestamp(ts: float) -> str:
    """``ts`` as ISO 8601 in UTC to the millisecond. Each micro-batch's log lines need one, and
    formatting a datetime costs ~1.5 µs; the text up to the second is kept for its second and the
    milliseconds are added to it. Only well inside a millisecond (>= 10 µs from either edge, where no
    rounding of ``ts`` to the microsecond can move it across), so the text is always
    ``_format_timestamp(ts)``. One tuple, replaced whole: the log's writer thread formats too."""
    global _STAMP
    ms = ts * 1000.0
    key = int(ms // 1.0)
    if not 0.01 < ms - key < 0.99 or key < 0:
        return _format_timestamp(ts)
    second, milli = divmod(key, 1000)
    kept = _STAMP
    if kept[0] != second:
        kept = _STAMP = (second, _format_timestamp(second + 0.5)[:-4])  # "...T12:34:56." (0.5: far from edges)
    return f"{kept[1]}{milli:03d}Z"


_STAMP: tuple[int, str] = (-1, "")


def _format_timestamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run(settings: ServeSettings) -> int:
    server = ModelServer(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))
    await server.stopped.wait()
    log.info("stopped (exit code %d)", server.exit_code)
    return server.exit_code
