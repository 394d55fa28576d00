"""Labelled production rows back into Feast (issue 18 item 3; docs/serving/online-features.md, "Feedback into Feast").

With a push source (``--feast-feedback-push-source``, a Rollout's
``spec.onlineFeatures.feast.feedbackPushSource``) every label that ``POST /feedback`` counts for a
keyed request this pod served becomes one row: the entity keys, the model's features *as served*
(after the online fill), the prediction, the label, the prediction id, the model version, the
prediction time (``event_timestamp``) and the label time (``labelled_at``). A background task posts
the rows in batches to the same ``feast serve`` the lookup uses: ``POST <url>/push`` with
``{"push_source_name": …, "df": {column: [values]}, "to": "offline"}``. Feast's offline store appends
them to the push source's batch source, where a TrainingPipeline's
``spec.data.feast.feedbackPushSource`` selects them for the next run.

Off the request path: the feedback answer never waits for Feast. The buffer is bounded (``max_rows``);
a row that does not fit is counted ``dropped``. A batch Feast does not take is retried with doubling
back-off (``retry_seconds`` up to ``max_retry_seconds``) up to ``attempts`` times when the failure may
pass (a timeout, a refused or broken connection, a 5xx: ``failed`` after the last), and not at all
after a 4xx (``rejected``). On stop the buffer gets one last push bounded by ``stop_seconds``; what is
still in it is ``lost``. A restart therefore loses at most the unflushed buffer (at most
``flush_seconds`` of labels when Feast is up). Every row ends in exactly one outcome of
``noria_feedback_sink_rows_total``.

"to": "offline" only: the rows are training data (labels, predictions), not features to serve.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from noria import metrics as m
from prometheus_client import CollectorRegistry, Counter

from .upstream import Upstreams

log = logging.getLogger("noria_server.feast_sink")

PUSH_PATH = "/push"
PUSH_TO = "offline"
_CONTENT_TYPE = [(b"content-type", b"application/json")]
# The push source's columns besides the entity keys and the model's features (examples/feast-churn).
PREDICTION, LABEL, PREDICTION_ID, MODEL_VERSION = "prediction", "label", "prediction_id", "model_version"
EVENT_TIMESTAMP, LABELLED_AT = "event_timestamp", "labelled_at"


@dataclass(frozen=True)
class SinkSettings:
    push_source: str
    max_rows: int = 10_000  # rows buffered at most; more are dropped (counted)
    batch_rows: int = 500  # rows per push
    flush_seconds: float = 1.0  # a push at least this often while rows wait
    timeout: float = 10.0  # one push, connect included (Feast's file store rewrites the file: not instant)
    attempts: int = 6  # pushes of one batch before it is given up (timeouts, refusals, 5xx)
    retry_seconds: float = 0.5  # first back-off, doubled per attempt
    max_retry_seconds: float = 30.0
    stop_seconds: float = 5.0  # the last push on stop

    def validate(self) -> None:
        if not self.push_source:
            raise ValueError("the feedback push source has no name")
        if self.max_rows < 1 or self.batch_rows < 1 or self.attempts < 1:
            raise ValueError("max_rows, batch_rows and attempts must be at least 1")
        if not (self.flush_seconds > 0 and self.timeout > 0 and self.retry_seconds > 0):
            raise ValueError("flush_seconds, timeout and retry_seconds must be positive")


# What the ledger keeps per keyed prediction for the sink: one flat tuple ``(predicted_at, *keys,
# *features)``: when (time.time()), the entity key values (in the settings' key order) and the feature
# values the model received (in its feature order). A plain tuple of atomic values, because the ledger
# holds one per keyed row for minutes: the collector stops tracking such a tuple at its first young
# collection, where an object (the slots dataclass this was) stays tracked, reaches the oldest
# generation and is walked again by every full collection.
Served = tuple[Any, ...]


def served(keys: Sequence[Any], features: Sequence[Any], predicted_at: float) -> Served:
    return (predicted_at, *keys, *features)


@dataclass(frozen=True, slots=True)
class Row:
    served: Served
    prediction: Any
    label: Any
    prediction_id: str
    labelled_at: float


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, version: str) -> None:
        rows = Counter(m.FEEDBACK_SINK_ROWS_TOTAL, "Labelled rows for Feast's push source, by what became of them",
                       [m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_OUTCOME], registry=registry)
        self.rows = {outcome: rows.labels(model, version, outcome) for outcome in m.SINK_OUTCOMES}


class _Rejected(Exception):
    pass


class FeedbackSink:
    """A bounded buffer of labelled rows and the task that pushes them to Feast."""

    def __init__(self, settings: SinkSettings, base_url: str, url_path: str, entity_keys: Sequence[str],
                 features: Sequence[str], version: str, metrics: SinkMetrics) -> None:
        settings.validate()
        self.settings = settings
        self.base_url = base_url
        self.target = url_path.rstrip("/") + PUSH_PATH
        self.entity_keys = tuple(entity_keys)
        self.features = tuple(features)
        self.version = version
        self.metrics = metrics
        self.buffer: deque[Row] = deque()
        self.client = Upstreams(settings.timeout, settings.timeout)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- the request side (event loop, never waits) ---------------------------------------------
    def offer(self, rows: Sequence[Row]) -> None:
        room = self.settings.max_rows - len(self.buffer)
        if room < len(rows):
            self.metrics.rows[m.SINK_DROPPED].inc(len(rows) - max(room, 0))
            rows = rows[:max(room, 0)]
        self.buffer.extend(rows)
        if self._task is None and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self.buffer) >= self.settings.batch_rows:
            self._wake.set()

    # --- the pushing side -----------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.settings
        while not self._stopping:
            if not self.buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self.buffer) < s.batch_rows:  # let a batch gather, at most flush_seconds
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), s.flush_seconds)
                except TimeoutError:
                    pass
            if self._stopping:
                break
            await self._push_with_retries()

    async def _push_with_retries(self) -> None:
        s = self.settings
        batch = [self.buffer[i] for i in range(min(s.batch_rows, len(self.buffer)))]
        delay = s.retry_seconds
        for attempt in range(1, s.attempts + 1):
            try:
                await self._push(batch)
            except _Rejected as exc:
                self._settle(len(batch), m.SINK_REJECTED)
                log.error("Feast refused %d labelled row(s) for push source %s: %s", len(batch), s.push_source, exc)
                return
            except Exception as exc:  # timeouts, refusals, 5xx: may pass
                if attempt == s.attempts or self._stopping:
                    if not self._stopping:
                        self._settle(len(batch), m.SINK_FAILED)
                        log.error("gave up pushing %d labelled row(s) to push source %s after %d attempts: %s",
                                  len(batch), s.push_source, attempt, exc)
                    return
                log.warning("pushing %d labelled row(s) to Feast failed (attempt %d of %d, next in %.1f s): %s",
                            len(batch), attempt, s.attempts, delay, exc)
                await self._sleep(delay)
                delay = min(delay * 2, s.max_retry_seconds)
                continue
            self._settle(len(batch), m.SINK_PUSHED)
            return

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:  # a stop wakes it early
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _settle(self, n: int, outcome: str) -> None:
        for _ in range(n):
            self.buffer.popleft()
        self.metrics.rows[outcome].inc(n)

    async def _push(self, batch: Sequence[Row]) -> None:
        body = orjson.dumps({"push_source_name": self.settings.push_source, "df": self.columns(batch),
                             "to": PUSH_TO})
        answer = await self.client.request(self.base_url, "POST", self.target, _CONTENT_TYPE, body)
        if answer.status in (200, 202):
            return
        detail = answer.body[:300].decode("utf-8", errors="replace")
        if 400 <= answer.status < 500:
            raise _Rejected(f"{answer.status}: {detail}")
        raise ConnectionError(f"Feast answered {answer.status}: {detail}")

    def columns(self, batch: Sequence[Row]) -> dict[str, list[Any]]:
        """The push's ``df``: one list per column of the push source."""
        out: dict[str, list[Any]] = {k: [r.served[1 + i] for r in batch] for i, k in enumerate(self.entity_keys)}
        first = 1 + len(self.entity_keys)  # Served: (predicted_at, *keys, *features)
        for i, name in enumerate(self.features):
            if name not in out:  # a model feature that is also a key is pushed once
                out[name] = [_json_value(r.served[first + i]) for r in batch]
        out[PREDICTION] = [r.prediction for r in batch]
        out[LABEL] = [r.label for r in batch]
        out[PREDICTION_ID] = [r.prediction_id for r in batch]
        out[MODEL_VERSION] = [self.version] * len(batch)
        out[EVENT_TIMESTAMP] = [timestamp(r.served[0]) for r in batch]
        out[LABELLED_AT] = [timestamp(r.labelled_at) for r in batch]
        return out

    async def stop(self) -> None:
        """One last push of what is buffered (bounded by ``stop_seconds``); the rest is ``lost``."""
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is not None:
            try:
                await asyncio.wait_for(task, self.settings.stop_seconds)
            except (TimeoutError, asyncio.CancelledError):
                pass
        deadline = time.monotonic() + self.settings.stop_seconds
        while self.buffer and time.monotonic() < deadline:
            batch = [self.buffer[i] for i in range(min(self.settings.batch_rows, len(self.buffer)))]
            try:
                await asyncio.wait_for(self._push(batch), max(deadline - time.monotonic(), 0.001))
            except _Rejected:
                self._settle(len(batch), m.SINK_REJECTED)
                continue
            except Exception as exc:
                log.warning("the last push of %d labelled row(s) failed: %s", len(self.buffer), exc)
                break
            self._settle(len(batch), m.SINK_PUSHED)
        if self.buffer:
            log.warning("%d labelled row(s) not pushed to Feast before the stop are lost", len(self.buffer))
            self._settle(len(self.buffer), m.SINK_LOST)
        self.client.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def timestamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
