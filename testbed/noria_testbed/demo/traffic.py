"""Users of the churn model: prediction requests now, the truth later.

The generator sends Open Inference Protocol v2 requests (one customer each) to the Rollout's entry
point at a steady rate and, ``label_delay`` seconds after each answer, posts the customer's true
outcome to ``POST /v2/models/{model}/feedback`` with the prediction id the server returned, the
way a CRM would report a churned customer weeks later. Every request and every label is written
to the timeline with what came back, so the report can score the model that actually answered
and, offline, the counterfactual model that would have answered had nothing been retrained.

The entry point is either a URL or the Service ``<rollout>``: with no kube-proxy or cluster DNS in
the test bed (and no need for them on a real cluster either) the generator reads the ready
addresses from the Service's EndpointSlices, as the router does for its backends, and refreshes
them every few seconds so a rescheduled router pod is found again.

``world`` and ``phase`` are plain attributes: the story changes them while traffic flows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
from noria.contracts import HEADER_VERSION

from noria_testbed.demo import dataset as D
from noria_testbed.demo.timeline import Timeline

log = logging.getLogger("noria_testbed.demo.traffic")

VERSION_HEADER = HEADER_VERSION  # the router's answer names the version that answered


# --- the wire format -----------------------------------------------------------------------------

def infer_request(features: dict[str, Any], request_id: str) -> dict[str, Any]:
    """OIP v2 request for one row: one named input per feature column (the KServe/MLServer
    convention for tabular models), BYTES for categories and FP64 for numbers."""
    inputs = []
    for name in D.FEATURES:
        value = features[name]
        if name in D.CATEGORICAL_FEATURES:
            inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [str(value)]})
        else:
            inputs.append({"name": name, "shape": [1], "datatype": "FP64", "data": [float(value)]})
    return {"id": request_id, "inputs": inputs}


@dataclass(frozen=True)
class Answer:
    id: str | None
    version: str | None
    prediction: int | None


def _as_label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_infer_response(body: dict[str, Any], headers: httpx.Headers | dict[str, str] | None = None) -> Answer:
    """Prediction id, answering version and the predicted class of a one-row OIP v2 response.

    The output holding the class is the one named ``predict``/``label``/``prediction`` if present,
    else the first output; ``model_version`` may be in the body or the version header."""
    outputs = body.get("outputs") or []
    chosen = None
    for out in outputs:
        if out.get("name") in ("predict", "label", "prediction", "predictions", "class"):
            chosen = out
            break
    if chosen is None and outputs:
        chosen = outputs[0]
    data = (chosen or {}).get("data") or []
    prediction = _as_label(data[0]) if data else None
    version = body.get("model_version")
    if not version and headers is not None:
        version = headers.get(VERSION_HEADER)
    return Answer(id=body.get("id"), version=version, prediction=prediction)


# --- where the requests go -----------------------------------------------------------------------

class Target(Protocol):
    async def base_urls(self) -> list[str]: ...


class UrlTarget:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    async def base_urls(self) -> list[str]:
        return [self.url]


def ready_endpoints(slices: Iterable[dict[str, Any]], port_name: str = "http") -> list[str]:
    """``http://ip:port`` of every ready endpoint in a Service's EndpointSlices (pure)."""
    urls = []
    for item in slices:
        ports = [p for p in item.get("ports") or [] if p.get("name") in (port_name, "", None)]
        if not ports:
            continue
        port = ports[0].get("port")
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                urls.append(f"http://{address}:{port}")
    return sorted(set(urls))


def ready_pod_endpoints(service: dict[str, Any], pods: Iterable[dict[str, Any]], port_name: str = "http") -> list[str]:
    """``http://ip:port`` of the ready, not terminating pods a Service selects (pure). Used where no
    EndpointSlice controller can publish the pods (the test bed's loopback pod IPs)."""
    ports = (service.get("spec") or {}).get("ports") or []
    chosen = next((p for p in ports if p.get("name") == port_name), ports[0] if ports else None)
    if chosen is None:
        return []
    target = chosen.get("targetPort", chosen.get("port"))
    urls = []
    for pod in pods:
        status = pod.get("status") or {}
        if pod.get("metadata", {}).get("deletionTimestamp") or not status.get("podIP"):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if not ready:
            continue
        port = target
        if isinstance(target, str) and not target.isdigit():
            port = next((cp.get("containerPort") for c in (pod.get("spec") or {}).get("containers") or []
                         for cp in c.get("ports") or [] if cp.get("name") == target), None)
        if port is not None:
            urls.append(f"http://{status['podIP']}:{port}")
    return sorted(set(urls))


class ServiceTarget:
    """The ready endpoints of Service ``namespace/service``, re-read every ``refresh`` seconds: from
    its EndpointSlices, or, when there are none, from the ready pods its selector picks."""

    def __init__(self, api: Any, namespace: str, service: str, refresh: float = 3.0) -> None:
        self.api, self.namespace, self.service, self.refresh = api, namespace, service, refresh
        self._urls: list[str] = []
        self._read_at = 0.0

    async def _read(self) -> list[str]:
        slices = await self.api.get(f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
                                    f"?labelSelector=kubernetes.io%2Fservice-name%3D{self.service}")
        urls = ready_endpoints((slices or {}).get("items") or [])
        if urls:
            return urls
        service = await self.api.get(f"/api/v1/namespaces/{self.namespace}/services/{self.service}")
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = await self.api.get(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={quote(query)}")
        return ready_pod_endpoints(service or {}, (pods or {}).get("items") or [])

    async def base_urls(self) -> list[str]:
        if not self._urls or time.monotonic() - self._read_at > self.refresh:
            try:
                urls = await self._read()
            except Exception as exc:  # keep the last known endpoints through an API hiccup
                log.warning("cannot read the endpoints of %s/%s: %s", self.namespace, self.service, exc)
                urls = []
            if urls:
                self._urls = urls
            self._read_at = time.monotonic()
        return list(self._urls)


# --- the generator -------------------------------------------------------------------------------

class RowSource:
    """Customers of the current ``world``, drawn in chunks from a seeded generator."""

    def __init__(self, world: D.World, seed: int = 0, chunk: int = 256) -> None:
        self.world = world
        self._rng = np.random.default_rng(seed)
        self._chunk = chunk
        self._rows: list[tuple[dict[str, Any], int]] = []
        self._drawn_for: D.World | None = None

    def next(self) -> tuple[dict[str, Any], int]:
        if self._drawn_for != self.world or not self._rows:
            features = D.sample_features(self._chunk, self.world, self._rng)
            labels = D.sample_labels(features, self.world, self._rng)
            self._rows = [(D.feature_row(features, i), int(labels[i])) for i in range(len(features))][::-1]
            self._drawn_for = self.world
        return self._rows.pop()


class TrafficGenerator:
    """Sends ``rate`` requests per second until stopped; labels follow ``label_delay`` seconds later."""

    def __init__(self, target: Target, model: str, timeline: Timeline, *, rate: float = 20.0,
                 label_delay: float = 2.0, world: D.World = D.REFERENCE_WORLD, phase: str = "start",
                 seed: int = 0, timeout: float = 30.0, label_fraction: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate}")
        self.target, self.model, self.timeline = target, model, timeline
        self.rate, self.label_delay, self.label_fraction = rate, label_delay, label_fraction
        self.rows = RowSource(world, seed)
        self.phase = phase
        self.timeout = timeout
        self._seq = itertools.count(1)
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        self._random = random.Random(seed)
        self.sent = 0
        self.failed = 0
        self.answered: collections.Counter[str] = collections.Counter()  # successful answers per phase
        # (ts, status, version, prediction, label) of recent answers, for live narration
        self.recent: collections.deque[tuple[float, int | None, str | None, int | None, int]] = (
            collections.deque(maxlen=20000))

    @property
    def world(self) -> D.World:
        return self.rows.world

    @world.setter
    def world(self, value: D.World) -> None:
        self.rows.world = value

    def stop(self) -> None:
        self._stop.set()

    async def run(self, duration: float | None = None) -> None:
        """Send until ``stop()`` (or for ``duration`` seconds), then wait for the labels in flight."""
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            started = time.monotonic()
            tick = 1.0 / self.rate
            next_at = started
            while not self._stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                self._spawn(self._one(client))
                next_at += tick
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                else:
                    next_at = time.monotonic()  # behind schedule: do not burst to catch up
            while self._pending:
                await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _one(self, client: httpx.AsyncClient) -> None:
        seq = next(self._seq)
        features, label = self.rows.next()
        phase = self.phase
        request_id = f"{phase}-{seq}-{self._random.getrandbits(32):08x}"
        urls = await self.target.base_urls()
        sent_at = time.time()
        status: int | None = None
        error: str | None = None
        answer = Answer(None, None, None)
        url = None
        if not urls:
            error = "no ready endpoint"
        else:
            url = urls[seq % len(urls)]
            try:
                response = await client.post(f"{url}/v2/models/{self.model}/infer",
                                              json=infer_request(features, request_id))
                status = response.status_code
                if status == 200:
                    answer = parse_infer_response(response.json(), response.headers)
                else:
                    error = response.text[:200]
            except (httpx.HTTPError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
        latency_ms = round((time.time() - sent_at) * 1000.0, 2)
        self.sent += 1
        if status != 200:
            self.failed += 1
        else:
            self.answered[phase] += 1
        self.recent.append((sent_at, status, answer.version, answer.prediction, label))
        self.timeline.write("request", ts=sent_at, phase=phase, seq=seq, request_id=request_id,
                            id=answer.id, status=status, error=error, version=answer.version,
                            prediction=answer.prediction, label=label, latency_ms=latency_ms,
                            features=features)
        if status == 200 and answer.id and url and self._random.random() < self.label_fraction:
            await asyncio.sleep(self.label_delay)
            await self._label(client, url, answer, label)

    def recent_frame(self, seconds: float) -> pd.DataFrame:
        """The answers of the last ``seconds`` (ts, status, version, prediction, label)."""
        since = time.time() - seconds
        rows = [r for r in list(self.recent) if r[0] >= since]
        return pd.DataFrame(rows, columns=["ts", "status", "version", "prediction", "label"])

    async def _label(self, client: httpx.AsyncClient, url: str, answer: Answer, label: int) -> None:
        status: int | None = None
        error: str | None = None
        # No version header: the router fans feedback out to every version's pods, and the pod that
        # made the prediction counts it; pinning it would 404 once that version is scaled down.
        try:
            response = await client.post(f"{url}/v2/models/{self.model}/feedback",
                                         json={"id": answer.id, "label": label})
            status = response.status_code
            if status >= 300:
                error = response.text[:200]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        self.timeline.write("feedback", id=answer.id, version=answer.version, label=label, status=status,
                            error=error)


def requests_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The ``request`` records of a timeline as a frame, one column per feature (for scoring)."""
    rows = [r for r in records if r.get("kind") == "request"]
    if not rows:
        return pd.DataFrame(columns=["ts", "phase", "status", "version", "prediction", "label", *D.FEATURES])
    frame = pd.DataFrame(
        {
            "ts": [r["ts"] for r in rows],
            "phase": [r.get("phase") for r in rows],
            "status": [r.get("status") for r in rows],
            "version": [r.get("version") for r in rows],
            "prediction": [r.get("prediction") for r in rows],
            "label": [r.get("label") for r in rows],
            "latency_ms": [r.get("latency_ms") for r in rows],
        }
    )
    features = pd.DataFrame([r.get("features") or {} for r in rows], columns=list(D.FEATURES))
    return pd.concat([frame, features], axis=1).sort_values("ts", kind="stable").reset_index(drop=True)
