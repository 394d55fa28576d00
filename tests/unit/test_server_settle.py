"""An answer goes out before its bookkeeping (drift bins, class counts, ledger, prediction log), which is
settled for several batches at once (``ModelServer.settle``): within SETTLE_SECONDS, at once when a group
fills, and always before a label is judged, a scrape is rendered or the server stops. In process, on a
real fitted model, no sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from noria import metrics as m
from noria_server import serve
from noria_server.httpserver import Request
from noria_server.serve import SETTLE_ROWS, SETTLE_SECONDS, ModelServer
from server_helpers import fitted_server, handled


def _server() -> ModelServer:
    server = fitted_server("classifier")
    server.metrics.declare_classes(server.model.classes)
    return server


def _infer(ids: list[str]) -> Request:
    rows = [[0.5 * i - 1.0, 0.1, -0.2] for i in range(len(ids))]
    body = {"inputs": [{"name": "x", "shape": [len(ids), 3], "datatype": "FP64", "data": rows}],
            "parameters": {"ids": ids}}
    return Request(method="POST", path="/v2/models/m/infer", query=b"", headers={}, body=orjson.dumps(body))


def _predictions_counted(server: ModelServer) -> float:
    classes = [str(c) for c in server.model.classes or []]  # type: ignore[union-attr]
    return sum(server.metrics.registry.get_sample_value(m.PREDICTIONS_TOTAL, {"model": "m", "version": "m-v1",
                                                                               "class": c}) or 0.0
               for c in classes)


class _RecordingLog:
    """Takes the prediction log's offers as ``JsonlLog`` does, keeping the rendered lines."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.offers = 0

    def offer_rendered(self, n: int, render: Any) -> None:
        self.offers += 1
        self.lines.extend(orjson.loads(line) for line in render().splitlines())


def test_a_scrape_counts_every_answer_given_before_it() -> None:
    async def scenario() -> None:
        server = _server()
        for i in range(3):
            assert (await handled(server, _infer([f"a{i}"]))).status == 200
        assert server.unsettled_rows == 3 and len(server.ledger) == 0  # answered, not yet booked
        scrape = await server.handle(Request("GET", "/metrics", b"", {}, b""))  # type: ignore[misc]
        assert scrape.status == 200
        assert _predictions_counted(server) == 3 and len(server.ledger) == 3
        assert f'{m.PREDICTIONS_TOTAL}{{'.encode() in scrape.body

    asyncio.run(scenario())


def test_the_bookkeeping_is_done_within_settle_seconds_without_a_scrape() -> None:
    async def scenario() -> None:
        server = _server()
        await handled(server, _infer(["t0"]))
        await handled(server, _infer(["t1"]))
        await asyncio.sleep(SETTLE_SECONDS * 10)
        assert server.unsettled == [] and "t0" in server.ledger and "t1" in server.ledger
        assert _predictions_counted(server) == 2

    asyncio.run(scenario())


def test_a_label_posted_right_after_its_answer_counts() -> None:
    async def scenario() -> None:
        server = _server()
        predicted = orjson.loads((await handled(server, _infer(["f0"]))).body)["outputs"][0]["data"][0]
        body = orjson.dumps({"feedback": [{"id": "f0", "label": predicted}]})
        answer = await handled(server, Request("POST", "/v2/models/m/feedback", b"", {}, body))
        assert orjson.loads(answer.body)["outcomes"]["counted"] == 1

    asyncio.run(scenario())


def test_a_full_group_is_settled_at_once_and_each_line_keeps_its_batch_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        server = _server()
        log = _RecordingLog()
        server.predictions_log = log  # type: ignore[assignment]
        clock = iter([1_780_000_000.001, 1_780_000_000.002, 1_780_000_000.003])
        monkeypatch.setattr(serve.time, "time", lambda: next(clock))
        first, second = SETTLE_ROWS // 2, SETTLE_ROWS // 2 - 1
        await handled(server, _infer([f"g{i}" for i in range(first)]))
        await handled(server, _infer([f"h{i}" for i in range(second)]))
        assert log.offers == 0 and server.unsettled_rows == first + second
        await handled(server, _infer(["x0", "x1"]))  # would pass SETTLE_ROWS: the two before are settled first
        assert log.offers == 1 and server.unsettled_rows == 2
        assert [line["id"] for line in log.lines] == [f"g{i}" for i in range(first)] + [f"h{i}" for i in range(second)]
        stamps = {line["id"][0]: line["ts"] for line in log.lines}
        assert stamps == {"g": "2026-05-28T20:26:40.001Z", "h": "2026-05-28T20:26:40.002Z"}
        assert _predictions_counted(server) == first + second and len(server.ledger) == first + second

    asyncio.run(scenario())


def test_a_failed_bookkeeping_is_logged_and_the_next_batches_are_booked(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server = _server()
        record = server.ledger.record

        def broken(*args: Any, **kwargs: Any) -> None:
            server.ledger.record = record  # type: ignore[method-assign]
            raise RuntimeError("ledger bug")

        server.ledger.record = broken  # type: ignore[method-assign]
        assert (await handled(server, _infer(["b0"]))).status == 200
        server.settle()
        assert "b0" not in server.ledger
        assert (await handled(server, _infer(["b1"]))).status == 200
        server.settle()
        assert "b1" in server.ledger

    with caplog.at_level(logging.ERROR, logger="noria_server.serve"):
        asyncio.run(scenario())
    assert "bookkeeping of 1 answered rows failed" in caplog.text and "ledger bug" in caplog.text


def test_stopping_books_what_was_answered() -> None:
    async def scenario() -> None:
        server = _server()
        await handled(server, _infer(["s0"]))
        await server.stop(drain=False)
        assert "s0" in server.ledger and _predictions_counted(server) == 1

    asyncio.run(scenario())
