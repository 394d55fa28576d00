"""The model server's online lookup (issue 18 item 2) against the real thing: Feast's feature server
(``feast serve`` from .venv-feast) over the test bed's Redis, the example repository applied and
materialized (the fixtures of test_feast_online_store.py), and the real model server on a real port.
Keys only in, the model's own predictions on the stored features out; an unknown key is a 404 naming
it; Redis frozen (a slow store) or killed is a 504 within the timeout; once Redis is back requests are served again; the
feature server gone is a 503 with Retry-After (docs/serving/online-features.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import served_model_server
from noria import metrics as m
from noria_server import online
from noria_server.model import ServedModel
from noria_server.serve import ModelServer, ServeSettings
from sklearn.linear_model import LogisticRegression
from test_feast_online_store import FEATURES, UNKNOWN, feature_server, newest, redis, repository  # noqa: F401

pytestmark = pytest.mark.integration

TIMEOUT_MS = 100
BOUND_S = TIMEOUT_MS / 1000 + 0.9  # the timeout plus scheduling slack on a loaded 2-core machine


def model_server(url: str) -> ModelServer:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"tenure_months": rng.integers(1, 72, 300), "monthly_charges": rng.normal(60, 25, 300),
                          "support_calls": rng.integers(0, 8, 300)}).astype(float)
    estimator = LogisticRegression().fit(frame, (frame["support_calls"] > 3) | (frame["tenure_months"] < 6))
    server = ModelServer(ServeSettings(
        artifact_uri="file:///unused", digest="sha256:0", model="churn", version="churn-v1", prediction_log=False,
        online_features=online.OnlineFeatureSettings(url=url, entity_keys=("customer_id",),
                                                     feature_service="churn_v1", timeout=TIMEOUT_MS / 1000)))
    server.model = ServedModel.from_estimator(estimator, None)
    server.state = server.reason = "ready"
    return server


class Served(served_model_server.Served):
    def __init__(self, server: ModelServer) -> None:
        super().__init__(server, timeout=30)

    async def infer(self, keys: list[int]) -> tuple[int, dict[str, Any], httpx.Headers, float]:
        started = time.perf_counter()
        answer = await self.client.post("/v2/models/churn/infer", json={
            "inputs": [{"name": "customer_id", "shape": [len(keys)], "datatype": "INT64", "data": keys}]})
        return answer.status_code, answer.json(), answer.headers, time.perf_counter() - started


def sample(server: ModelServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, {"model": "churn", "version": "churn-v1", **labels}) or 0.0


async def test_keys_in_the_models_predictions_on_the_stored_features_out(feature_server, repository: Path,  # noqa: F811
                                                                          ) -> None:
    keys = [9001, 0, 1, 49]
    stored = newest(repository)
    server = model_server(feature_server.url)
    async with Served(server) as s:
        status, answer, _, _ = await s.infer(keys)
        assert status == 200, answer
        rows = stored.loc[keys, FEATURES].to_numpy(dtype=np.float64)
        assert answer["outputs"][0]["data"] == server.model.predict(rows)[0].tolist()  # type: ignore[union-attr]

        status, answer, _, elapsed = await s.infer([9001, UNKNOWN])
        assert status == 404, answer
        assert f"customer_id={UNKNOWN}" in answer["error"] and "9001" not in answer["error"]
        assert all(f in answer["error"] for f in FEATURES)
        assert elapsed < BOUND_S
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_OK) == 2
    assert sample(server, m.ONLINE_MISSES_TOTAL, feature="tenure_months", status=m.MISS_NOT_FOUND) == 1


async def test_redis_down_is_504_within_the_timeout_and_requests_are_served_once_it_is_back(
        feature_server, redis) -> None:  # noqa: F811
    server = model_server(feature_server.url)
    async with Served(server) as s:
        assert (await s.infer([9001]))[0] == 200
        redis.kill()
        for _ in range(3):
            status, answer, _, elapsed = await s.infer([9001])
            assert status == 504 and f"no answer within {TIMEOUT_MS} ms" in answer["error"], answer
            assert elapsed < BOUND_S
        redis.start()  # same port, what was materialized read back from its append-only file
        # Feast's worker may still be inside redis-py's retries of the requests above: until it is out,
        # requests get 504 (a clear answer, never a hang); from the first 200 on, every request is served.
        deadline = time.monotonic() + 60
        while True:
            status, answer, _, elapsed = await s.infer([9001])
            assert elapsed < BOUND_S and status in (200, 504), answer
            if status == 200:
                break
            assert time.monotonic() < deadline, "the lookup did not recover within 60 s of Redis being back"
        for _ in range(10):
            assert (await s.infer([9001, 0]))[0] == 200
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_TIMEOUT) >= 3


async def test_a_frozen_store_is_504_within_the_timeout_and_no_request_is_lost_when_it_thaws(
        feature_server, redis) -> None:  # noqa: F811
    # A slow store, not a dead one: Redis is frozen (SIGSTOP), so Feast's connection stays open and its
    # reads wait. Every request sent meanwhile, 8 at once, is answered 504 within the bound; once Redis
    # thaws, requests sent concurrently with the thaw are each answered (200 or 504, none hangs), and
    # from then on every request is served.
    server = model_server(feature_server.url)
    async with Served(server) as s:
        assert (await s.infer([9001]))[0] == 200
        os.kill(redis.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            frozen = await asyncio.gather(*(s.infer([9001, key]) for key in range(8)))
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        for status, answer, _, elapsed in frozen:
            assert status == 504 and f"no answer within {TIMEOUT_MS} ms" in answer["error"], answer
            assert elapsed < BOUND_S
        thawing = await asyncio.gather(*(s.infer([9001, key]) for key in range(8)))
        assert all(status in (200, 504) and elapsed < BOUND_S for status, _, _, elapsed in thawing), thawing
        deadline = time.monotonic() + 30
        while (await s.infer([9001]))[0] != 200:
            assert time.monotonic() < deadline, "the lookup did not recover within 30 s of Redis thawing"
        served = await asyncio.gather(*(s.infer([9001, key]) for key in range(8)))
        assert [status for status, *_ in served] == [200] * 8, served
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_TIMEOUT) >= 8


async def test_the_feature_server_gone_is_503_with_retry_after(feature_server) -> None:  # noqa: F811
    # Last in the module: the feature server is not started again.
    server = model_server(feature_server.url)
    async with Served(server) as s:
        assert (await s.infer([9001]))[0] == 200
        feature_server.stop()
        status, answer, headers, elapsed = await s.infer([9001])
    assert status == 503 and "is unavailable" in answer["error"], answer
    assert headers["retry-after"] == str(online.RETRY_AFTER_SECONDS)
    assert elapsed < BOUND_S
