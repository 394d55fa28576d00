"""The model server's Prometheus metrics (names from ``noria.metrics``, docs/architecture.md §6).

Nothing is counted per value: the feature-bin counts are vectorised passes over a buffer of the
batches' rows (``FeatureBinCounter``, binned when it fills and before every read) into a flat NumPy
array that a custom collector reads at scrape time. Counting 20 features through ``prometheus_client``
children would cost ~20 lock round trips per row; the buffered pass costs a copy per batch and a few
NumPy calls per few hundred rows, which keeps drift counting within a few percent of the server's
throughput.

Label cardinality is bounded by construction: feature bins come from the profile (top categories +
other), classes from the fitted model (a feedback label that is not one of them is refused, never counted),
refusal reasons from ``noria.metrics``, codes are HTTP
status codes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from noria import metrics as m
from noria.profile import FeatureProfile, Profile
from prometheus_client import CollectorRegistry, Counter, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .loopmon import FastHistogram

try:  # the _created series double the scrape size and nothing here reads them
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:  # pragma: no cover - older prometheus_client
    pass

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Stages and pauses run from microseconds (a parse) to the tens of milliseconds being hunted.
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
GC_GENERATIONS = (0, 1, 2)
MAX_CLASS_LABELS = 50
SMALL_BATCH_ROWS = 64  # predictions counted with a dict up to this many rows, with np.unique above
MAX_CONFUSION_PREDECLARED = 10  # classes² zero series at most 100


class FeatureBinCounter(Collector):
    """``noria_feature_bin_total{model,version,feature,bin}`` for the features in the profile.

    A numeric value's bin index is the number of inner edges <= x (exactly ``np.searchsorted(edges[1:-1],
    x, side="right")`` as in ``FeatureProfile.assign``), then ``below``/``above``/``missing`` override it.
    Numeric rows are not binned batch by batch: ``observe`` copies them into a kept buffer (feature-major,
    ``BUFFER_ROWS`` rows) and the buffer is binned whole when it fills, one ``np.searchsorted`` per
    feature over all its rows and one ``np.bincount``, and before every read (``counts``, ``collect``,
    so a scrape and the canary's drift check always see every observed row). Binning a batch alone cost
    ~8 µs of fixed NumPy calls per micro-batch (measured: 8 µs for one row, 14 for 11); a full buffer
    costs a few tens of µs for all its rows. Categorical values are counted at once (a dict per value).
    The buffer and the counts are behind one lock: ``collect`` runs on the scrape's worker thread.
    """

    BUFFER_ROWS = 256

    def __init__(self, model: str, version: str, features: Sequence[str], profile: Profile) -> None:
        self.model, self.version = model, version
        self.numeric: list[tuple[int, str, FeatureProfile]] = []
        self.categorical: list[tuple[int, str, FeatureProfile]] = []
        for j, name in enumerate(features):
            fp = profile.features.get(name)
            if fp is None:
                continue
            (self.numeric if fp.kind == "numeric" else self.categorical).append((j, name, fp))
        self.num_columns = np.array([j for j, _, _ in self.numeric], dtype=np.intp)
        sizes = [len(fp.labels) for _, _, fp in self.numeric] + [len(fp.labels) for _, _, fp in self.categorical]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self._counts = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        self.inner = [fp.edges[1:-1] for _, _, fp in self.numeric]  # type: ignore[index]
        self.low = np.array([fp.edges[0] for _, _, fp in self.numeric])[:, None]  # type: ignore[index]
        self.high = np.array([fp.edges[-1] for _, _, fp in self.numeric])[:, None]  # type: ignore[index]
        self.n_bins = np.array([fp.edges.size - 1 for _, _, fp in self.numeric],  # type: ignore[union-attr]
                               dtype=np.intp)[:, None]
        self.cat_positions = [{c: i for i, c in enumerate(fp.categories)} for _, _, fp in self.categorical]
        self.num_offsets = self.offsets[: len(self.numeric)][:, None]
        # The common case (every feature numeric, in model order) needs no column gather.
        self.all_columns_numeric = (not self.categorical
                                    and self.num_columns.tolist() == list(range(len(features))))
        self._buffer = np.empty((len(self.numeric), self.BUFFER_ROWS))  # feature-major: one row per feature
        self._held = 0
        self._lock = threading.Lock()

    @property
    def counts(self) -> np.ndarray:
        """Every observed value's count by flat bin (numeric features first, then categorical)."""
        with self._lock:
            self._count_held()
            return self._counts.copy()

    def numeric_bins(self, values: np.ndarray) -> np.ndarray:
        """Bin index (within each feature's labels) of an (F_num, n) float matrix, one row per feature."""
        idx = np.empty(values.shape, dtype=np.intp)
        for i, inner in enumerate(self.inner):
            idx[i] = np.searchsorted(inner, values[i], side="right")
        below, above, missing = values < self.low, values > self.high, np.isnan(values)
        if below.any() or above.any() or missing.any():  # rare in healthy traffic: skip the where()s
            idx = np.where(below, self.n_bins, idx)
            idx = np.where(above, self.n_bins + 1, idx)
            idx = np.where(missing, self.n_bins + 2, idx)
        return idx

    def _count_numeric(self, values: np.ndarray) -> None:
        flat = self.numeric_bins(values) + self.num_offsets
        self._counts += np.bincount(flat.ravel(), minlength=self._counts.size)

    def _count_held(self) -> None:
        if self._held:
            self._count_numeric(self._buffer[:, : self._held])
            self._held = 0

    def observe(self, rows: np.ndarray) -> None:
        with self._lock:
            if self.numeric:
                values = rows if self.all_columns_numeric else rows[:, self.num_columns]
                n = values.shape[0]
                if self._held + n > self.BUFFER_ROWS:
                    self._count_held()
                if n > self.BUFFER_ROWS:
                    self._count_numeric(values.T.astype(np.float64))
                else:
                    self._buffer[:, self._held: self._held + n] = values.T
                    self._held += n
            base = len(self.numeric)
            counts = self._counts
            for k, ((j, _, fp), positions) in enumerate(zip(self.categorical, self.cat_positions, strict=True)):
                other, missing = len(fp.labels) - 2, len(fp.labels) - 1
                offset = int(self.offsets[base + k])
                for v in rows[:, j]:
                    if v is None or (isinstance(v, float) and v != v):
                        counts[offset + missing] += 1
                    else:
                        counts[offset + positions.get(str(v), other)] += 1

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(m.FEATURE_BIN_TOTAL, "Input values counted into the reference profile's bins",
                                     labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_FEATURE, m.LABEL_BIN])
        counts = self.counts
        for k, (_, name, fp) in enumerate(self.numeric + self.categorical):
            offset = int(self.offsets[k])
            for b, label in enumerate(fp.labels):
                family.add_metric([self.model, self.version, name, label], float(counts[offset + b]))
        yield family


class HttpCollector(Collector):
    """``noria_http_limit_total{limit}`` and ``noria_http_connections``, read from the HTTP layer at scrape.

    The HTTP layer counts into a plain ``Counter`` (no Prometheus call per connection); ``labels``
    are constant labels (model and version on a model server, none on the router)."""

    def __init__(self, http: Any, labels: dict[str, str] | None = None) -> None:
        self.http = http
        self.names = list((labels or {}).keys())
        self.values = list((labels or {}).values())

    def collect(self) -> Iterable[Metric]:
        hits = CounterMetricFamily(m.HTTP_LIMIT_TOTAL, "Clients that hit a limit of the HTTP layer, by limit",
                                   labels=[*self.names, m.LABEL_LIMIT])
        for limit, count in sorted(self.http.limit_hits.items()):
            hits.add_metric([*self.values, limit], float(count))
        yield hits
        connections = GaugeMetricFamily(m.HTTP_CONNECTIONS, "Open client connections", labels=self.names)
        connections.add_metric(self.values, float(self.http.active))
        yield connections


class LatencyCollector(Collector):
    """Where the serving thread's time goes: ``noria_request_stage_seconds{stage}``,
    ``noria_batch_rows``, ``noria_event_loop_lag_seconds`` and ``noria_gc_pause_seconds{generation}``
    (docs/operations/latency.md). Observed lock-free on the loop thread (``FastHistogram``)."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = [model, version]
        self.stages = {stage: FastHistogram(STAGE_BUCKETS) for stage in m.STAGES}
        self.batch_rows = FastHistogram(BATCH_ROWS_BUCKETS)
        self.loop_lag = FastHistogram(STAGE_BUCKETS)
        self.gc_pauses = {generation: FastHistogram(STAGE_BUCKETS) for generation in GC_GENERATIONS}

    def observe_gc(self, generation: int, seconds: float) -> None:
        self.gc_pauses[min(generation, GC_GENERATIONS[-1])].observe(seconds)

    def collect(self) -> Iterable[Metric]:
        names = [m.LABEL_MODEL, m.LABEL_VERSION]
        stages = HistogramMetricFamily(m.REQUEST_STAGE_SECONDS, "Time per request stage (per micro-batch for "
                                       "predict; per settled group of answered batches for count and log)", labels=[*names, m.LABEL_STAGE])
        for stage, hist in self.stages.items():
            hist.add_to(stages, [*self.labels, stage])
        yield stages
        rows = HistogramMetricFamily(m.BATCH_ROWS, "Rows per predict call (micro-batch)", labels=names)
        self.batch_rows.add_to(rows, self.labels)
        yield rows
        lag = HistogramMetricFamily(m.EVENT_LOOP_LAG_SECONDS, "How late the event loop ran a timer: time it "
                                    "could serve nothing else", labels=names)
        self.loop_lag.add_to(lag, self.labels)
        yield lag
        gcs = HistogramMetricFamily(m.GC_PAUSE_SECONDS, "Garbage collection pauses by generation",
                                    labels=[*names, m.LABEL_GENERATION])
        for generation, hist in self.gc_pauses.items():
            hist.add_to(gcs, [*self.labels, str(generation)])
        yield gcs


class _HistogramCollector(Collector):
    """One ``FastHistogram`` with constant labels, exported as a histogram family."""

    def __init__(self, name: str, documentation: str, labels: dict[str, str], histogram: FastHistogram) -> None:
        self.name, self.documentation, self.histogram = name, documentation, histogram
        self.names, self.values = list(labels), list(labels.values())

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.names)
        self.histogram.add_to(family, self.values)
        yield family


class _CodeCollector(Collector):
    """``noria_requests_total{model,version,handler,code}`` from ``ServerMetrics.count_code``'s counts."""

    def __init__(self, model: str, version: str, counts: dict[tuple[str, int], int]) -> None:
        self.labels, self.counts = [model, version], counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(m.REQUESTS_TOTAL, "Answers by endpoint (infer, feedback, other) and HTTP status "
                                     "code", labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_ENDPOINT, m.LABEL_CODE])
        for (endpoint, code), count in list(self.counts.items()):  # one atomic copy: the loop thread adds keys
            family.add_metric([*self.labels, endpoint, str(code)], float(count))
        yield family


class ServerMetrics:
    def __init__(self, model: str, version: str, registry: CollectorRegistry | None = None) -> None:
        self.model, self.version = model, version
        self.registry = registry or CollectorRegistry(auto_describe=True)
        labels = [m.LABEL_MODEL, m.LABEL_VERSION]
        # Counted once per answer on the loop thread: plain ints (no lock), exported as prometheus_client's
        # Counter exported them (same name, labels and series order).
        self._code_counts: dict[tuple[str, int], int] = {}
        self.registry.register(_CodeCollector(model, version, self._code_counts))
        # Observed once per answer on the loop thread: lock-free (FastHistogram), exported as prometheus_client's
        # Histogram exported it (same name, labels, buckets and sample order).
        self.duration = FastHistogram(LATENCY_BUCKETS)
        self.registry.register(_HistogramCollector(m.REQUEST_DURATION_SECONDS, "Inference request latency inside "
                                                   "the server", {m.LABEL_MODEL: model, m.LABEL_VERSION: version},
                                                   self.duration))
        self.predictions = Counter(m.PREDICTIONS_TOTAL, "Predicted rows by class", labels + [m.LABEL_CLASS],
                                   registry=self.registry)
        self.feedback = Counter(m.FEEDBACK_TOTAL, "Feedback labels against the logged prediction",
                                labels + [m.LABEL_ACTUAL, m.LABEL_PREDICTED], registry=self.registry)
        # A summary without quantiles exports exactly noria_feedback_abs_error_sum and _count.
        abs_error_name = m.FEEDBACK_ABS_ERROR_SUM.removesuffix("_sum")
        assert m.FEEDBACK_ABS_ERROR_COUNT == abs_error_name + "_count"
        self.abs_error = Summary(abs_error_name, "Regression feedback: absolute error", labels,
                                 registry=self.registry).labels(model, version)
        self.feedback_refused = Counter(m.FEEDBACK_REFUSED_TOTAL,
                                        "Feedback labels that moved no counter, by reason (unauthorized: requests)",
                                        labels + [m.LABEL_REASON], registry=self.registry)
        self.log_dropped = Counter(m.PREDICTION_LOG_DROPPED_TOTAL, "Prediction/feedback log lines dropped",
                                   labels + [m.LABEL_KIND], registry=self.registry)
        self.latency = LatencyCollector(model, version)
        self.registry.register(self.latency)
        self._class_children: dict[Any, Any] = {}
        self.bins: FeatureBinCounter | None = None
        for kind in ("predictions", "feedback"):
            self.log_dropped.labels(model, version, kind)
        # Zero-valued series from the start: increase() ignores a series' first sample, so a counter
        # born at its first request would hide that request (and an analysis right after a weight
        # change would see "no requests"). 200 is errorRate's denominator, 500 its numerator.
        for code in (200, 500):
            self.count_code(code, m.ENDPOINT_INFER, by=0)

    def enable_feature_bins(self, features: Sequence[str], profile: Profile) -> None:
        self.bins = FeatureBinCounter(self.model, self.version, features, profile)
        self.registry.register(self.bins)

    def declare_classes(self, classes: Sequence[Any] | None) -> None:
        """Create the zero-valued series up front so ``increase()`` sees the first prediction."""
        declared = list(classes or [])[:MAX_CLASS_LABELS]
        for c in declared:
            self._class_child(c)
        if len(declared) <= MAX_CONFUSION_PREDECLARED:  # the accuracy check reads these from the first label on
            for actual in declared:
                for predicted in declared:
                    self.feedback.labels(self.model, self.version, str(actual), str(predicted))

    def feedback_counted(self, actual: Any, predicted: Any, classifier: bool) -> None:
        """One first-time label for a prediction this server made (``noria_server.ledger.judge`` said so)."""
        if classifier:
            self.feedback.labels(self.model, self.version, str(actual), str(predicted)).inc()
        else:
            self.abs_error.observe(abs(float(actual) - float(predicted)))

    def feedback_refused_by(self, reason: str, n: int = 1) -> None:
        self.feedback_refused.labels(self.model, self.version, reason).inc(n)

    def count_code(self, code: int, endpoint: str, by: int = 1) -> None:
        """One answer with HTTP status ``code`` to a request for ``endpoint`` (``m.ENDPOINT_*``)."""
        key = (endpoint, code)
        counts = self._code_counts
        counts[key] = counts.get(key, 0) + by

    def watch_http(self, http: Any) -> None:
        self.registry.register(HttpCollector(http, {m.LABEL_MODEL: self.model, m.LABEL_VERSION: self.version}))

    def _class_child(self, value: Any) -> Any:
        child = self._class_children.get(value)
        if child is None:
            label = str(value) if len(self._class_children) < MAX_CLASS_LABELS else m.BIN_OTHER
            child = self._class_children[value] = self.predictions.labels(self.model, self.version, label)
        return child

    def count_predictions(self, predictions: np.ndarray, classifier: bool) -> None:
        if not classifier:
            self._class_child("").inc(len(predictions))
            return
        if len(predictions) == 1:
            self._class_child(predictions[0].item() if hasattr(predictions[0], "item") else predictions[0]).inc()
            return
        if len(predictions) <= SMALL_BATCH_ROWS:  # a dict beats np.unique's sort on a micro-batch
            tally: dict[Any, int] = {}
            for v in predictions.tolist():
                tally[v] = tally.get(v, 0) + 1
            for v, c in tally.items():
                self._class_child(v).inc(c)
            return
        values, counts = np.unique(predictions, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            self._class_child(v).inc(c)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
