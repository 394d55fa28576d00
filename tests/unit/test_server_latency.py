"""What keeps the serving thread short, and the metrics that show when it is not (issue 19):
noria_server.loopmon, model.BatchSizer, the stage histograms of a real server answering real requests."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

import aiohttp
import numpy as np
import orjson
import pytest
from noria import metrics as m
from noria_server import loopmon
from noria_server.httpserver import HttpLimits, HttpServer, Reply, Request, Response, json_response
from noria_server.model import BatchSizer
from noria_server.reference_models import train_and_save
from noria_server.serve import ModelServer, ServeSettings


@pytest.mark.parametrize(
    ("observed", "expected_limit"),
    [
        ([], 64),  # nothing learned: the configured bound
        ([(1, 0.0005)], 64),  # one-row calls teach the fixed cost only
        ([(11, 0.0016)] * 30, 46),  # 0.11 ms a row beyond the call's 0.5 ms: 1 + int(5 ms / 0.11 ms)
        ([(5, 0.0049)] * 30, 16),  # 1.1 ms a row: 5 rows fit, but never under the floor
        ([(1, 0.010)] * 60 + [(16, 0.01165)] * 30, 46),  # every call slow (a busy CPU), rows cheap: batches stay big
        ([(2, 0.5)] * 30, 16),  # one slow call (a descheduled process) never locks batching out
        ([(64, 0.0006)] * 30, 64),  # cheap rows: never past max_batch
    ],
    ids=["unlearned", "fixed-cost-only", "steady", "expensive-rows", "slow-machine", "no-lockout", "ceiling"],
)
def test_batch_sizer_budgets_what_the_rows_add_to_a_call(observed, expected_limit) -> None:  # type: ignore[no-untyped-def]
    sizer = BatchSizer(max_rows=64, budget_seconds=0.005)
    sizer.call_seconds = 0.0005  # as the warm-up measured
    for rows, seconds in observed:
        sizer.observe(rows, seconds)
    assert sizer.limit() == expected_limit


def test_batch_sizer_floor_is_bounded_by_max_batch_and_reaches_one_row() -> None:
    sizer = BatchSizer(max_rows=4, budget_seconds=0.005, min_rows=1)
    sizer.observe(3, 0.05)
    assert sizer.limit() == 1  # rows dearer than the budget, floor 1: one row per call
    assert BatchSizer(max_rows=4, budget_seconds=0.005).min_rows == 4


def test_batch_budget_and_log_flush_come_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from noria_server import __main__ as cli

    required = ["serve", "--artifact", "file:///m", "--digest", "sha256:0", "--model", "m", "--version", "m-v1"]
    defaults = cli.serve_settings(cli.parser().parse_args(required), None)
    assert (defaults.batch_budget_ms, defaults.log_flush_seconds, defaults.batch_hold_us) == (
        ServeSettings.batch_budget_ms, ServeSettings.log_flush_seconds, ServeSettings.batch_hold_us)
    monkeypatch.setenv("NORIA_BATCH_BUDGET_MS", "7.5")
    monkeypatch.setenv("NORIA_LOG_FLUSH_SECONDS", "4")
    monkeypatch.setenv("NORIA_BATCH_HOLD_US", "80")
    from_env = cli.serve_settings(cli.parser().parse_args(required), None)
    assert (from_env.batch_budget_ms, from_env.log_flush_seconds, from_env.batch_hold_us) == (7.5, 4.0, 80.0)
    flags = [*required, "--batch-budget-ms", "3", "--log-flush-seconds", "0.5", "--batch-hold-us", "0"]
    from_flags = cli.serve_settings(cli.parser().parse_args(flags), None)  # flags win over the environment
    assert (from_flags.batch_budget_ms, from_flags.log_flush_seconds, from_flags.batch_hold_us) == (3.0, 0.5, 0.0)


def test_fast_histogram_buckets_are_inclusive_upper_bounds() -> None:
    hist = loopmon.FastHistogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 0.01, 5.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.001", 2.0), ("0.01", 4.0), ("+Inf", 5.0)]
    assert hist.count == 5 and hist.sum == pytest.approx(5.0135)


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    lags: list[float] = []
    monitor = loopmon.LoopLagMonitor(lags.append, interval=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.08)  # the serving thread held by something that does not yield
    await asyncio.sleep(0.05)
    monitor.stop()
    assert max(lags) >= 0.06
    assert sorted(lags)[len(lags) // 2] < 0.03  # the other wake-ups were on time


def test_gc_pauses_are_timed_by_generation_and_the_heap_settles() -> None:
    pauses: list[tuple[int, float]] = []
    watcher = loopmon.GcPauses(lambda generation, seconds: pauses.append((generation, seconds)))
    threshold = gc.get_threshold()
    watcher.install()
    try:
        gc.collect(1)
        assert (1, pytest.approx(pauses[-1][1])) == pauses[-1] and pauses[-1][1] > 0
        frozen = loopmon.settle_heap(young_threshold=12_345)
        assert frozen > 1000 and gc.get_threshold()[0] == 12_345
        assert pauses[-1][0] == 2  # settle_heap's own full collection was seen too
    finally:
        watcher.uninstall()
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert watcher._callback not in gc.callbacks


def test_gil_turns_are_shortened() -> None:
    before = sys.getswitchinterval()
    try:
        loopmon.shorten_gil_turns()
        assert sys.getswitchinterval() == pytest.approx(loopmon.GIL_SWITCH_INTERVAL_SECONDS)
    finally:
        sys.setswitchinterval(before)


def _histogram_count(text: str, metric: str, label: str | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(f"{metric}_count{{") and (label is None or f'="{label}"' in line):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {metric}_count for {label} in the exposition")


async def test_a_real_server_reports_every_stage_the_batch_size_and_loop_lag(tmp_path) -> None:  # type: ignore[no-untyped-def]
    saved = train_and_save("logistic", str(tmp_path / "store/ml/churn/v1"), rows=400)
    settings = ServeSettings(artifact_uri=saved.artifact_uri, digest=saved.digest, profile_uri=saved.profile_uri,
                             model="churn", version="churn-v1", host="127.0.0.1", port=0,
                             store_root=f"file://{tmp_path}/store", namespace="ml", pipeline="churn", pod="p0",
                             drain_seconds=0)
    server = ModelServer(settings)
    scraped_on: list[int] = []  # the scrape (~5 ms of CPU with a profile) must not run on the loop thread
    exposition = server.metrics.exposition

    def exposition_noting_its_thread() -> bytes:
        scraped_on.append(threading.get_ident())
        return exposition()

    server.metrics.exposition = exposition_noting_its_thread  # type: ignore[method-assign]
    threshold = gc.get_threshold()
    port = await server.start()
    try:
        for _ in range(300):
            if server.state == "ready":
                break
            await asyncio.sleep(0.05)
        assert server.state == "ready"
        assert gc.get_threshold()[0] == loopmon.YOUNG_THRESHOLD and gc.get_freeze_count() > 1000
        payload = {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": [0.1] * 20}]}
        url = f"http://127.0.0.1:{port}/v2/models/churn/infer"
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> int:
                async with session.post(url, data=orjson.dumps({**payload, "id": f"r{i}"})) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(one(i) for i in range(40))) == [200] * 40
            await asyncio.sleep(0.1)  # a few loop-lag wake-ups
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
    finally:
        await server.stop(drain=False)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    for stage in (m.STAGE_PARSE, m.STAGE_BATCH_WAIT, m.STAGE_SERIALISE):  # once per request
        assert _histogram_count(text, m.REQUEST_STAGE_SECONDS, stage) == 40
    batches = _histogram_count(text, m.BATCH_ROWS)
    assert 1 <= batches <= 40  # concurrent requests share batches
    for stage in (m.STAGE_PREDICT, m.STAGE_COUNT, m.STAGE_LOG):  # once per batch
        assert _histogram_count(text, m.REQUEST_STAGE_SECONDS, stage) == batches
    rows_sum = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(f"{m.BATCH_ROWS}_sum{{"))
    assert rows_sum == 40
    assert _histogram_count(text, m.EVENT_LOOP_LAG_SECONDS) >= 2
    assert f'{m.GC_PAUSE_SECONDS}_count{{generation="2"' in text
    assert scraped_on and threading.get_ident() not in scraped_on


async def test_a_bulk_request_is_predicted_in_slices_and_answered_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    saved = train_and_save("logistic", str(tmp_path / "store/ml/churn/v1"), rows=400)
    settings = ServeSettings(artifact_uri=saved.artifact_uri, digest=saved.digest, profile_uri=saved.profile_uri,
                             model="churn", version="churn-v1", host="127.0.0.1", port=0, max_batch=64,
                             store_root=f"file://{tmp_path}/store", namespace="ml", pipeline="churn", pod="p0",
                             drain_seconds=0)
    server = ModelServer(settings)
    threshold = gc.get_threshold()
    port = await server.start()
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(1000, 20))
    try:
        for _ in range(300):
            if server.state == "ready":
                break
            await asyncio.sleep(0.05)
        assert server.state == "ready" and server.model is not None
        expected = server.model.predict(rows)[0].tolist()
        calls_before = server.metrics.latency.batch_rows.count
        bulk = {"inputs": [{"name": "x", "shape": [1000, 20], "datatype": "FP64", "data": rows.tolist()}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v2/models/churn/infer", data=orjson.dumps(bulk)) as r:
                assert r.status == 200
                answer = await r.json()
    finally:
        await server.stop(drain=False)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert answer["outputs"][0]["data"] == expected
    calls = server.metrics.latency.batch_rows.count - calls_before
    assert calls >= 1000 // 64  # sliced
    cumulative = dict(server.metrics.latency.batch_rows.cumulative())
    assert cumulative["64"] == cumulative["+Inf"]  # never one predict over the batch limit


async def test_a_reply_is_written_the_moment_it_is_set_not_a_loop_iteration_later() -> None:
    """A micro-batch's answers go out as the batch sets them: nothing the loop runs next (the next
    batch's parsing, the ledger and log work after them) comes first. Pipelined requests on one
    connection stay in order."""
    replies: list[Reply] = []
    written: list[str] = []

    def handler(request: Request) -> Reply:
        reply = Reply()
        replies.append(reply)
        return reply

    server = HttpServer(handler, HttpLimits(), on_response=lambda request, status: written.append(request.path))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        for _ in range(100):
            if replies:
                break
            await asyncio.sleep(0.01)
        assert len(replies) == 1 and written == []  # the second request waits for the first's answer

        replies[0].set_result(json_response(200, {"n": 1}))  # no await: the loop runs nothing in between
        assert written == ["/a"] and len(replies) == 2  # written, and the next pipelined request dispatched
        replies[1].set_result(json_response(200, {"n": 2}))
        assert written == ["/a", "/b"]
        with pytest.raises(RuntimeError):
            replies[1].set_result(json_response(200, {"n": 3}))
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += await asyncio.wait_for(reader.read(65536), 3)
        assert data.index(b'{"n":1}') < data.index(b'{"n":2}')
        writer.close()
    finally:
        await server.close(timeout=2)


def test_a_reply_set_before_anyone_waits_is_delivered_on_registration_and_a_failing_writer_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    reply = Reply()
    got: list[Response] = []
    reply.set_result(json_response(200, {}))
    reply.on_done(got.append)
    assert len(got) == 1 and got[0].status == 200

    def broken(response: Response) -> None:
        raise OSError("socket gone")

    other = Reply()
    other.on_done(broken)
    other.set_result(json_response(200, {}))  # the batch setting it goes on
    assert other.done() and "writing an answer failed" in caplog.text
