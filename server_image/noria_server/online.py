"""Online features: the model server fills a request's feature columns from Feast before predicting.

With ``--feast-url`` (the Rollout's ``spec.onlineFeatures.feast``) a request may carry only the
entity keys (the inputs named by ``--feast-entity-keys``), plus any model feature the store does not
hold. The server asks Feast's own HTTP feature server (``feast serve``: ``POST /get-online-features``
with ``{"feature_service" | "features", "entities": {key: [values]}, "full_feature_names": false}``)
for the other features, fills the model's columns by feature name, and predicts as usual: the drift
counters, the prediction log and the ledger see the features the model actually received.

Why the model server and not the router (docs/serving/online-features.md): it owns the model's
feature list and the drift counters, and it works behind every traffic provider, router or not.
Why Feast's HTTP server and not Feast's Python SDK: the image stays free of Feast and pandas 2
(Feast pins pandas<3), and ``feast serve`` is Feast's standard serving component.

Requests that arrive in the same event-loop turn share one call (their entity rows concatenated, at
most ``max_rows`` per call); the client is the router's keep-alive HTTP/1.1 pool
(``noria_server.upstream``), every call bounded by ``timeout`` (connect included). Answers:

- a model feature the store has no value for: 404 naming the entity key(s) and the features
  (``on_missing="reject"``, the default), or the value goes to the model as missing, as a ``null`` in
  the request would (``on_missing="asMissing"``). "No value" is Feast's status NOT_FOUND,
  OUTSIDE_MAX_AGE or INVALID, or, as Feast 0.67's Redis store answers an unknown key, status PRESENT
  with a null value and the event timestamp 1970-01-01T00:00:00Z (recorded against the real server:
  docs/serving/online-features.md). A null with a real timestamp (NULL_VALUE, or PRESENT) is a
  stored null: a missing value, never a miss;
- no complete answer within ``timeout``: 504;
- the feature server refused the connection, broke it, or answered 5xx: 503 with ``Retry-After``;
- a 4xx answer (a feature service Feast does not know) or an unreadable body: 502.

Nothing is kept across calls, so the first request after the store recovers is served.
Metrics (``noria.metrics``): ``noria_online_feature_lookup_seconds`` per call,
``noria_online_feature_lookups_total{outcome}`` per call, ``noria_online_feature_misses_total{feature,status}``
per missing value.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from noria import metrics as m
from prometheus_client import CollectorRegistry, Counter, Histogram

from . import oip
from .upstream import Upstreams

log = logging.getLogger("noria_server.online")

ON_MISSING = ("reject", "asMissing")
DEFAULT_TIMEOUT_SECONDS = 0.1
MAX_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_ROWS = 1000  # entity rows per call to the feature server
RETRY_AFTER_SECONDS = 1
ENTITY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
FEATURE_REF_RE = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")
LOOKUP_PATH = "/get-online-features"
LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PRESENT = "PRESENT"
NOT_FOUND = "NOT_FOUND"
NULL_VALUE = "NULL_VALUE"
# Feast 0.67's Redis store answers an unknown key with PRESENT, null and this timestamp (no NOT_FOUND).
NEVER_WRITTEN = frozenset({"1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00+00:00"})
_MISS_STATUS = {"NOT_FOUND": m.MISS_NOT_FOUND, "OUTSIDE_MAX_AGE": m.MISS_OUTSIDE_MAX_AGE, "INVALID": m.MISS_INVALID}
MAX_NAMED_KEYS = 10  # entity keys named in one 404 message
_CONTENT_TYPE = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class OnlineFeatureSettings:
    url: str  # http://host[:port][/prefix] of `feast serve`
    entity_keys: tuple[str, ...]
    feature_service: str | None = None
    features: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    on_missing: str = "reject"
    max_rows: int = DEFAULT_MAX_ROWS

    def validate(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"--feast-url/NORIA_FEAST_URL must be http(s)://host[:port][/path], got {self.url!r}")
        if (self.feature_service is None) == (not self.features):
            raise ValueError("give exactly one of --feast-feature-service/NORIA_FEAST_FEATURE_SERVICE or "
                             "--feast-features/NORIA_FEAST_FEATURES")
        for ref in self.features:
            if not FEATURE_REF_RE.match(ref):
                raise ValueError(f"a Feast feature reference is <featureView>:<feature>, got {ref!r}")
        if not self.entity_keys:
            raise ValueError("--feast-entity-keys/NORIA_FEAST_ENTITY_KEYS names no entity key")
        for key in self.entity_keys:
            if not ENTITY_KEY_RE.match(key):
                raise ValueError(f"entity key {key!r} must be a name of letters, digits and '_'")
        if len(set(self.entity_keys)) != len(self.entity_keys):
            raise ValueError("--feast-entity-keys/NORIA_FEAST_ENTITY_KEYS names a key twice")
        if not 0 < self.timeout <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"--feast-timeout-ms/NORIA_FEAST_TIMEOUT_MS must be above 0 and at most "
                             f"{MAX_TIMEOUT_SECONDS * 1000:g} ms, got {self.timeout * 1000:g}")
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"--feast-on-missing/NORIA_FEAST_ON_MISSING must be one of {', '.join(ON_MISSING)}, "
                             f"got {self.on_missing!r}")
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def target(self) -> str:
        return urlsplit(self.url).path.rstrip("/") + LOOKUP_PATH


@dataclass(slots=True)
class KeyedRequest:
    """A request that names entities: its keys (one list per entity key, a value per row) and the
    model features it gave itself (columns of its n rows)."""

    request_id: str
    row_ids: list[str]
    outputs: tuple[oip.RequestedOutput, ...]
    n: int
    keys: dict[str, list[Any]]
    given: dict[str, np.ndarray]


class LookupFailed(Exception):
    """The lookup could not give this request its features: ``status`` and ``message`` for the client."""

    def __init__(self, status: int, message: str, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())] if self.retry_after else []


def parse_keyed(body: bytes, schema: oip.Schema, settings: OnlineFeatureSettings, header_id: str | None,
                header_length: str | None, available_outputs: Sequence[str]) -> KeyedRequest:
    """Read an OIP request of entity keys (one input per key, ``[n]`` or ``[n, 1]``; BYTES or integer
    values) and optional model features (one input each, as ``oip`` reads them)."""
    payload, inputs = oip.read_inputs(body, header_length)
    outputs = oip.requested_outputs(payload, available_outputs)
    by_name: dict[str, dict[str, Any]] = {}
    for tensor in inputs:
        if tensor["name"] in by_name:
            raise oip.RequestError(422, f"input '{tensor['name']}' is given twice")
        by_name[tensor["name"]] = tensor
    keys_named = settings.entity_keys
    missing = [k for k in keys_named if k not in by_name]
    if missing:
        raise oip.RequestError(422, f"missing entity key input(s) {', '.join(missing)}: this model's features come "
                                    f"from the feature store, looked up by {', '.join(keys_named)}")
    unknown = sorted(name for name in by_name if name not in keys_named and name not in schema.features)
    if unknown:
        raise oip.RequestError(422, f"unknown input(s) {', '.join(unknown)}; send the entity key(s) "
                                    f"{', '.join(keys_named)} and, optionally, model features the store does not "
                                    f"hold ({', '.join(schema.features)})")
    n: int | None = None
    first = ""
    for name, tensor in by_name.items():
        shape = oip.shape_of(tensor, 0)
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise oip.RequestError(422, f"input '{name}': shape {shape} is not [n] or [n, 1]")
        if n is None:
            n, first = shape[0], name
            if n == 0:
                raise oip.RequestError(422, f"input '{name}': no rows (shape {shape})")
        elif shape[0] != n:
            raise oip.RequestError(422, f"input '{name}' has {shape[0]} rows but '{first}' has {n}")
    assert n is not None
    keys = {k: _key_values(by_name[k], n) for k in keys_named}
    given = {f: oip.column_values(by_name[f], n, f in schema.categorical) for f in schema.features if f in by_name}
    request_id = oip.request_id_of(payload.get("id"), header_id)
    row_ids = oip.row_ids_of(payload.get("parameters"), request_id, n)
    return KeyedRequest(request_id, row_ids, outputs, n, keys, given)


def _key_values(tensor: dict[str, Any], n: int) -> list[Any]:
    """Entity key values as Feast takes them in JSON: strings (BYTES) or integers (any numeric
    datatype, integral values only: a float key would not match an INT64 join key)."""
    name, datatype, data = tensor["name"], tensor["datatype"], tensor["data"]
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list):
        raise oip.RequestError(422, f"entity key '{name}': data must be a list, got {type(data).__name__}")
    if data and isinstance(data[0], list):
        data = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if len(data) != n:
        raise oip.RequestError(422, f"entity key '{name}': shape {tensor['shape']} needs {n} values, got {len(data)}")
    out: list[Any] = []
    for j, v in enumerate(data):
        if datatype == "BYTES":
            if not isinstance(v, str) or not v or len(v) > oip.MAX_STRING_VALUE_LENGTH:
                raise oip.RequestError(422, f"entity key '{name}': value #{j} must be a non-empty string of at most "
                                            f"{oip.MAX_STRING_VALUE_LENGTH} characters")
            out.append(v)
        elif datatype in oip.NUMERIC_DATATYPES:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise oip.RequestError(422, f"entity key '{name}': value #{j} ({v!r:.40}) is not an integer")
            out.append(v)
        else:
            raise oip.RequestError(422, f"entity key '{name}': datatype {datatype!r:.40} is not an integer type or "
                                        f"BYTES")
    return out


@dataclass(slots=True)
class StoreColumns:
    """One call's answer: per feature name, a value and a status per entity row."""

    values: dict[str, list[Any]]
    statuses: dict[str, list[str]]


def read_answer(body: bytes, rows: int) -> StoreColumns:
    """Feast's answer ``{"metadata": {"feature_names": [...]}, "results": [{"values", "statuses",
    "event_timestamps"}, ...]}``: one result per name (the entity keys first), ``rows`` values each."""
    try:
        doc = orjson.loads(body)
        names = doc["metadata"]["feature_names"]
        results = doc["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise LookupFailed(502, f"the feature store's answer is not Feast's get-online-features answer "
                                f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(names, list) or not isinstance(results, list) or len(names) != len(results):
        raise LookupFailed(502, "the feature store's answer has feature_names and results of different lengths")
    values: dict[str, list[Any]] = {}
    statuses: dict[str, list[str]] = {}
    for name, result in zip(names, results, strict=True):
        column = result.get("values") if isinstance(result, dict) else None
        status = result.get("statuses") if isinstance(result, dict) else None
        stamps = result.get("event_timestamps") if isinstance(result, dict) else None
        if not isinstance(name, str) or not isinstance(column, list) or len(column) != rows:
            raise LookupFailed(502, f"the feature store's answer for {name!r:.80} does not have {rows} values")
        if not isinstance(status, list) or len(status) != rows:
            status = [PRESENT] * rows
        if not isinstance(stamps, list) or len(stamps) != rows:
            stamps = [None] * rows
        values[name] = column
        statuses[name] = [NOT_FOUND if v is None and s == PRESENT and t in NEVER_WRITTEN else str(s)
                          for v, s, t in zip(column, status, stamps, strict=True)]
    return StoreColumns(values, statuses)


class OnlineMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, version: str) -> None:
        labels = [m.LABEL_MODEL, m.LABEL_VERSION]
        self.model, self.version = model, version
        self.seconds = Histogram(m.ONLINE_LOOKUP_SECONDS, "Calls to the online feature store, whatever their outcome",
                                 labels, buckets=LOOKUP_BUCKETS, registry=registry).labels(model, version)
        lookups = Counter(m.ONLINE_LOOKUPS_TOTAL, "Calls to the online feature store by outcome",
                          labels + [m.LABEL_OUTCOME], registry=registry)
        self.lookups = {outcome: lookups.labels(model, version, outcome) for outcome in m.LOOKUP_OUTCOMES}
        self.misses = Counter(m.ONLINE_MISSES_TOTAL, "Feature values the model needed and the store did not have",
                              labels + [m.LABEL_FEATURE, m.LABEL_STATUS], registry=registry)

    def declare(self, features: Sequence[str]) -> None:
        """Zero series for every feature's not_found misses, so increase() sees the first one."""
        for feature in features:
            self.misses.labels(self.model, self.version, feature, m.MISS_NOT_FOUND)


Done = Callable[[KeyedRequest, "np.ndarray | LookupFailed"], None]


@dataclass(slots=True)
class _Waiting:
    request: KeyedRequest
    done: Done


@dataclass
class FeatureLookup:
    """Looks up the features of keyed requests, one call per loop turn's worth of rows."""

    settings: OnlineFeatureSettings
    schema: oip.Schema
    metrics: OnlineMetrics
    waiting: list[_Waiting] = field(default_factory=list)
    scheduled: bool = False
    calls: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        s = self.settings
        # connect_timeout = timeout: the whole call, connect included, is bounded by timeout anyway.
        self.client = Upstreams(s.timeout, s.timeout)
        selector: dict[str, Any] = ({"feature_service": s.feature_service} if s.feature_service is not None
                                    else {"features": list(s.features)})
        self._selector = selector
        self.metrics.declare(self.schema.features)

    def submit(self, request: KeyedRequest, done: Done) -> None:
        """``done(request, rows)`` with the (n, F) rows in the model's feature order, or ``done(request,
        error)``; called exactly once, from the event loop."""
        self.waiting.append(_Waiting(request, done))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        while self.waiting:
            batch: list[_Waiting] = []
            rows = 0
            while self.waiting and (not batch or rows + self.waiting[0].request.n <= self.settings.max_rows):
                item = self.waiting.pop(0)
                batch.append(item)
                rows += item.request.n
            task = asyncio.get_running_loop().create_task(self._call(batch, rows))
            self.calls.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self.calls.discard)

    async def _call(self, batch: list[_Waiting], rows: int) -> None:
        s = self.settings
        entities = {k: [v for item in batch for v in item.request.keys[k]] for k in s.entity_keys}
        body = orjson.dumps({**self._selector, "entities": entities, "full_feature_names": False})
        started = time.perf_counter()
        outcome = m.LOOKUP_OK
        try:
            try:
                answer = await self.client.request(s.base_url, "POST", s.target, _CONTENT_TYPE, body)
            except TimeoutError:
                outcome = m.LOOKUP_TIMEOUT
                raise LookupFailed(504, f"the feature store at {s.url} gave no answer within "
                                        f"{s.timeout * 1000:g} ms") from None
            except ssl.SSLError as exc:  # an untrusted certificate: retrying will not help
                outcome = m.LOOKUP_BAD_ANSWER
                raise LookupFailed(502, f"TLS with the feature store at {s.url} failed: {exc}") from None
            except OSError as exc:
                outcome = m.LOOKUP_UNAVAILABLE
                raise LookupFailed(503, f"the feature store at {s.url} is unavailable: {exc or type(exc).__name__}",
                                   retry_after=True) from None
            if answer.status >= 500:
                outcome = m.LOOKUP_UNAVAILABLE
                raise LookupFailed(503, f"the feature store at {s.url} answered {answer.status}: "
                                        f"{_detail(answer.body)}", retry_after=True)
            if answer.status != 200:
                outcome = m.LOOKUP_BAD_ANSWER
                raise LookupFailed(502, f"the feature store at {s.url} refused the lookup ({answer.status}): "
                                        f"{_detail(answer.body)}")
            try:
                columns = read_answer(answer.body, rows)
            except LookupFailed:
                outcome = m.LOOKUP_BAD_ANSWER
                raise
        except LookupFailed as error:
            self._observe(started, outcome)
            if outcome != m.LOOKUP_OK:
                log.warning("online feature lookup of %d row(s) failed: %s", rows, error.message)
            for item in batch:
                item.done(item.request, error)
            return
        self._observe(started, outcome)
        start = 0
        for item in batch:
            n = item.request.n
            try:
                filled: np.ndarray | LookupFailed = self.fill(item.request, columns, start)
            except LookupFailed as error:
                filled = error
            start += n
            item.done(item.request, filled)

    def _observe(self, started: float, outcome: str) -> None:
        self.metrics.seconds.observe(time.perf_counter() - started)
        self.metrics.lookups[outcome].inc()

    def fill(self, request: KeyedRequest, columns: StoreColumns, start: int) -> np.ndarray:
        """The request's rows ``start:start+n`` of the answer as the model's (n, F) matrix."""
        schema, n = self.schema, request.n
        stop = start + n
        keys = set(self.settings.entity_keys)
        stored = [f for f in schema.features if f in columns.values and f not in keys]
        both = [f for f in stored if f in request.given]
        if both:
            raise LookupFailed(422, f"input(s) {', '.join(both)} are features the feature store provides: send only "
                                    f"the entity key(s) and features the store does not hold")
        absent = [f for f in schema.features if f not in columns.values and f not in request.given]
        if absent:
            raise LookupFailed(422, f"missing feature(s): {', '.join(absent)}: neither in the request nor in the "
                                    f"feature store's answer")
        misses: dict[str, list[int]] = {}  # feature -> rows without a value
        out: list[np.ndarray] = []
        reject = self.settings.on_missing == "reject"
        for feature in schema.features:
            if feature in request.given:
                out.append(request.given[feature])
                continue
            categorical = feature in schema.categorical
            values = columns.values[feature][start:stop]
            statuses = columns.statuses[feature][start:stop]
            column = np.empty(n, dtype=object if categorical else np.float64)
            for i, (value, status) in enumerate(zip(values, statuses, strict=True)):
                if status != PRESENT and status != NULL_VALUE:
                    self.metrics.misses.labels(self.metrics.model, self.metrics.version, feature,
                                               _MISS_STATUS.get(status, m.MISS_OTHER)).inc()
                    misses.setdefault(feature, []).append(i)
                    value = None
                column[i] = _cell(feature, value, categorical)
            out.append(column)
        if misses and reject:
            rows_missing = sorted({i for found in misses.values() for i in found})
            named = ", ".join(
                " ".join(f"{k}={request.keys[k][i]!r}" for k in self.settings.entity_keys)
                for i in rows_missing[:MAX_NAMED_KEYS])
            more = f" and {len(rows_missing) - MAX_NAMED_KEYS} more" if len(rows_missing) > MAX_NAMED_KEYS else ""
            raise LookupFailed(404, f"the feature store has no value for {named}{more}: missing feature(s) "
                                    f"{', '.join(misses)}")
        if schema.all_numeric:
            return np.column_stack(out)
        return np.column_stack([c.astype(object) for c in out])

    def close(self) -> None:
        self.client.close()
        for task in self.calls:
            task.cancel()


def _cell(feature: str, value: Any, categorical: bool) -> Any:
    if categorical:
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            raise LookupFailed(502, f"the feature store's value for {feature} is not a scalar")
        return str(value)
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):  # bool is an int
        return float(value)
    if isinstance(value, str):  # int64 values in protobuf's JSON are strings
        try:
            return float(value)
        except ValueError:
            pass
    raise LookupFailed(502, f"the feature store's value for {feature} ({value!r:.40}) is not a number, and the "
                            f"model takes {feature} as a number")


def _detail(body: bytes) -> str:
    """The feature server's error text: Feast answers a JSON string (an exception's text, or JSON of
    {module, class, message} in a string), FastAPI {"detail": ...}."""
    doc: Any = body[:1000].decode("utf-8", errors="replace")
    for _ in range(2):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError:
            break
        if isinstance(doc, dict):
            doc = doc.get("message") or doc.get("detail") or doc
        if not isinstance(doc, str):
            break
    return str(doc)[:200] or "(no body)"
