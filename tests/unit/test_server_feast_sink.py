"""The feedback sink (noria_server.feast_sink): a label counted for a keyed prediction becomes one row
pushed to Feast's push source, through the real model server's real port, against a real local HTTP
server answering as ``feast serve`` 0.67 does (POST /get-online-features for the lookup, POST /push:
200 when taken, a JSON string with 500 when Feast's write raised, 404 with Feast's error for an
unknown push source). The feedback answer never waits for Feast; Feast down is retried until it is
back; a refusal is not retried; a full buffer, a give-up and a stop are counted, never silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import served_model_server
from fake_feast import STORE, FakeFeast
from noria import metrics as m
from noria_server import feast_sink, online
from noria_server.__main__ import parser, serve_settings
from noria_server.serve import ModelServer
from noria_testbed.processes import free_port
from server_helpers import FEATURES, fitted_server

PUSH_COLUMNS = ["customer_id", *FEATURES, "prediction", "label", "prediction_id", "model_version",
                "event_timestamp", "labelled_at"]


@pytest.fixture
def feast() -> Iterator[FakeFeast]:
    fake = FakeFeast()
    yield fake
    fake.stop()


def sink_server(url: str, kind: str = "classifier", push_source: str = "churn_feedback", **sink: Any) -> ModelServer:
    settings = {"push_source": push_source, "flush_seconds": 0.05, "retry_seconds": 0.05, "timeout": 2.0, **sink}
    return fitted_server(kind, online_features=online.OnlineFeatureSettings(
        url=url, entity_keys=("customer_id",), feature_service="churn_v1", timeout=1.0),
        feedback_sink=feast_sink.SinkSettings(**settings))


def sample(server: ModelServer, outcome: str) -> float:
    return server.metrics.registry.get_sample_value(
        m.FEEDBACK_SINK_ROWS_TOTAL, {"model": "m", "version": "m-v1", "outcome": outcome}) or 0.0


class Served(served_model_server.Served):
    async def infer(self, ids: list[int], rid: str) -> dict[str, Any]:
        body = {"id": rid, "inputs": [{"name": "customer_id", "shape": [len(ids)], "datatype": "INT64", "data": ids}]}
        answer = await self.client.post("/v2/models/m/infer", content=orjson.dumps(body))
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def feedback(self, items: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        answer = await self.client.post("/v2/models/m/feedback", content=orjson.dumps({"feedback": items}))
        assert answer.status_code == 200, answer.text
        return answer.json(), time.perf_counter() - t0

    async def __aexit__(self, *exc: Any) -> None:
        if self.server.sink is not None:
            await self.server.sink.stop()
        await super().__aexit__(*exc)


async def until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def test_a_counted_label_is_pushed_with_the_served_features_prediction_label_and_times(feast) -> None:
    server = sink_server(feast.url)
    async with Served(server) as s:
        t0 = time.time()
        answer = await s.infer([1001, 1002, 1003], "r1")
        predicted = answer["outputs"][0]["data"]
        ids = ["r1-0", "r1-1", "r1-2"]  # oip.row_ids_of: <request id>-<row> (one row: the request id)
        result, _ = await s.feedback([{"id": ids[0], "label": 1}, {"id": ids[1], "label": 0.0},
                                      {"id": ids[2], "label": 7},  # not a class: invalid, never pushed
                                      {"id": ids[0], "label": 0}])  # duplicate: the first label wins
        assert result["outcomes"]["counted"] == 2, result
        await until(lambda: len(feast.rows()) == 2)
        t1 = time.time()
    (push,) = feast.pushes
    assert push["push_source_name"] == "churn_feedback" and push["to"] == "offline"
    assert list(push["df"]) == PUSH_COLUMNS
    first, second = feast.rows()
    assert first["customer_id"] == 1001 and second["customer_id"] == 1002
    assert [first[f] for f in FEATURES] == list(STORE[1001])  # the features as the model received them
    assert [second[f] for f in FEATURES] == list(STORE[1002])
    assert (first["prediction"], second["prediction"]) == (predicted[0], predicted[1])
    assert (first["label"], second["label"]) == (1, 0)  # the model's class (int), not the text "1" nor 0.0
    assert (first["prediction_id"], first["model_version"]) == (ids[0], "m-v1")
    for row in (first, second):
        predicted_at = time.mktime(time.strptime(row["event_timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert row["event_timestamp"].endswith("Z") and t0 - 1 <= predicted_at <= t1
        assert row["labelled_at"] >= row["event_timestamp"]
    assert sample(server, m.SINK_PUSHED) == 2 and sample(server, m.SINK_DROPPED) == 0


async def test_the_feedback_answer_never_waits_for_a_slow_feast(feast) -> None:
    server = sink_server(feast.url)
    feast.push_delay = 1.5
    async with Served(server) as s:
        await s.infer([1001], "slow")
        _, elapsed = await s.feedback([{"id": "slow", "label": 1}])
        assert elapsed < 0.5  # answered while the push waits on Feast
        await until(lambda: sample(server, m.SINK_PUSHED) == 1)
    assert feast.rows()[0]["prediction_id"] == "slow"


async def test_feast_down_is_retried_with_backoff_and_the_rows_pushed_once_it_is_back() -> None:
    port = free_port()
    server = sink_server(f"http://127.0.0.1:{port}", attempts=50)
    # the lookup needs a store: give the request its features through a first Feast, then kill it
    first = FakeFeast(port)
    async with Served(server) as s:
        await s.infer([1001, 1002], "down")
        first.stop()
        result, elapsed = await s.feedback([{"id": "down-0", "label": 1}, {"id": "down-1", "label": 0}])
        assert result["outcomes"]["counted"] == 2 and elapsed < 0.5
        await asyncio.sleep(0.5)  # several refused attempts
        assert sample(server, m.SINK_PUSHED) == 0 and len(server.sink.buffer) == 2  # type: ignore[union-attr]
        back = FakeFeast(port)
        try:
            await until(lambda: len(back.rows()) == 2)
        finally:
            back.stop()
    assert [r["prediction_id"] for r in back.rows()] == ["down-0", "down-1"]
    assert sample(server, m.SINK_PUSHED) == 2 and sample(server, m.SINK_FAILED) == 0


async def test_a_refusal_is_counted_rejected_and_not_retried(feast) -> None:
    server = sink_server(feast.url, push_source="churn_feedbak")
    async with Served(server) as s:
        await s.infer([1001], "typo")
        await s.feedback([{"id": "typo", "label": 1}])
        await until(lambda: sample(server, m.SINK_REJECTED) == 1)
        await asyncio.sleep(0.3)
    assert feast.push_calls == 1 and sample(server, m.SINK_PUSHED) == 0


async def test_a_failing_write_is_retried_then_given_up_as_failed(feast) -> None:
    feast.push_mode = "error"
    server = sink_server(feast.url, attempts=3)
    async with Served(server) as s:
        await s.infer([1001], "bad")
        await s.feedback([{"id": "bad", "label": 1}])
        await until(lambda: sample(server, m.SINK_FAILED) == 1)
    assert feast.push_calls == 3 and sample(server, m.SINK_LOST) == 0


async def test_a_full_buffer_drops_and_counts_and_a_stop_counts_what_is_left_as_lost() -> None:
    port = free_port()
    first = FakeFeast(port)
    server = sink_server(f"http://127.0.0.1:{port}", max_rows=2, attempts=1000, stop_seconds=0.3)
    async with Served(server) as s:
        await s.infer([1001, 1002, 1003], "full")
        first.stop()
        await s.feedback([{"id": f"full-{i}", "label": 1} for i in range(3)])
        assert sample(server, m.SINK_DROPPED) == 1
    # leaving Served stopped the sink with Feast still down
    assert sample(server, m.SINK_LOST) == 2 and sample(server, m.SINK_PUSHED) == 0


async def test_no_push_without_a_push_source_and_none_for_a_regressor_label_mismatch(feast) -> None:
    server = fitted_server("classifier", online_features=online.OnlineFeatureSettings(
        url=feast.url, entity_keys=("customer_id",), feature_service="churn_v1", timeout=1.0))
    async with Served(server) as s:
        await s.infer([1001], "off")
        result, _ = await s.feedback([{"id": "off", "label": 1}])
        assert result["outcomes"]["counted"] == 1
        await asyncio.sleep(0.2)
    assert server.sink is None and feast.push_calls == 0


async def test_a_regressor_label_is_pushed_as_a_number(feast) -> None:
    server = sink_server(feast.url, kind="regressor")
    async with Served(server) as s:
        answer = await s.infer([1003], "reg")
        await s.feedback([{"id": "reg", "label": 2.5}])
        await until(lambda: len(feast.rows()) == 1)
    (row,) = feast.rows()
    assert row["label"] == 2.5 and row["prediction"] == answer["outputs"][0]["data"][0]


def test_the_push_source_flag_and_its_variable(monkeypatch) -> None:
    base = ["serve", "--artifact", "file:///a", "--digest", "sha256:0", "--model", "m", "--version", "v"]
    monkeypatch.setenv("NORIA_FEAST_URL", "http://feast:6566")
    monkeypatch.setenv("NORIA_FEAST_FEATURE_SERVICE", "churn_v1")
    monkeypatch.setenv("NORIA_FEAST_ENTITY_KEYS", "customer_id")
    monkeypatch.setenv("NORIA_FEAST_FEEDBACK_PUSH_SOURCE", "churn_feedback")
    settings = serve_settings(parser().parse_args(base), None)
    assert settings.feedback_sink == feast_sink.SinkSettings(push_source="churn_feedback")
    settings.validate()
    monkeypatch.delenv("NORIA_FEAST_FEEDBACK_PUSH_SOURCE")
    assert serve_settings(parser().parse_args(base), None).feedback_sink is None
    monkeypatch.delenv("NORIA_FEAST_URL")
    lone = serve_settings(parser().parse_args([*base, "--feast-feedback-push-source", "churn_feedback"]), None)
    with pytest.raises(ValueError, match="needs --feast-url"):
        lone.validate()
