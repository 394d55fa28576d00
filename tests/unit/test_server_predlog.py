"""Prediction/feedback logs (noria_server.predlog) and that a slow or broken store never fails a prediction."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time

import aiohttp
import orjson
from noria_server.predlog import JsonlLog
from noria_server.reference_models import train_and_save
from noria_server.serve import SETTLE_ROWS, ModelServer, ServeSettings


def _wait(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_lines_land_in_per_pod_files_and_a_restart_starts_a_new_seq(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dropped: list[int] = []
    directory = lambda day: f"file://{tmp_path}/preds/{day.isoformat()}"  # noqa: E731
    log = JsonlLog(directory, "pod-a", dropped.append, flush_seconds=0.05)
    log.offer(2, lambda: b'{"id":"1"}\n{"id":"2"}\n')
    log.close()
    day = dt.datetime.now(dt.UTC).date().isoformat()
    first = tmp_path / "preds" / day / "pod-a-000000.jsonl"
    assert first.read_text().splitlines() == ['{"id":"1"}', '{"id":"2"}']
    again = JsonlLog(directory, "pod-a", dropped.append, flush_seconds=0.05)
    again.offer(1, lambda: b'{"id":"3"}\n')
    again.close()
    assert (tmp_path / "preds" / day / "pod-a-000001.jsonl").read_text() == '{"id":"3"}\n'
    assert first.read_text().count("\n") == 2 and dropped == []


def test_unwritable_store_drops_and_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store expects a directory")
    dropped: list[int] = []
    log = JsonlLog(lambda day: f"file://{blocker}/x", "p", dropped.append, flush_seconds=0.05, retry_seconds=60)
    log.offer(3, lambda: b"{}\n{}\n{}\n")
    log.offer(2, lambda: b"{}\n{}\n")
    log.close()
    assert sum(dropped) == 5


def test_full_queue_drops_instead_of_blocking(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    dropped: list[int] = []

    def slow() -> bytes:
        gate.wait(10)
        return b"{}\n"

    log = JsonlLog(lambda day: f"file://{tmp_path}/q", "p", dropped.append, capacity=2)
    started = time.perf_counter()
    for _ in range(10):
        log.offer(1, slow)
    assert time.perf_counter() - started < 0.5
    assert _wait(lambda: sum(dropped) >= 7)
    gate.set()
    log.close()


async def test_a_stalled_prediction_log_never_delays_or_fails_predictions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    saved = train_and_save("logistic", str(tmp_path / "store/ml/churn/v1"), rows=400)  # artifacts live in the store
    settings = ServeSettings(artifact_uri=saved.artifact_uri, digest=saved.digest, profile_uri=saved.profile_uri,
                             model="churn", version="churn-v1", host="127.0.0.1", port=0,
                             store_root=f"file://{tmp_path}/store", namespace="ml", pipeline="churn", pod="p0",
                             drain_seconds=0)
    server = ModelServer(settings)
    port = await server.start()
    for _ in range(300):
        if server.state == "ready":
            break
        await asyncio.sleep(0.05)
    assert server.state == "ready"
    # Stall the writer: it blocks before taking the queue, as behind a hung network volume.
    gate = threading.Event()
    assert server.predictions_log is not None
    real_take = server.predictions_log._take

    def stalled_take():  # type: ignore[no-untyped-def]
        gate.wait(30)
        real_take()

    server.predictions_log._take = stalled_take  # type: ignore[method-assign]
    server.predictions_log.capacity = 4
    payload = {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": [0.1] * 20}]}
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> int:
            async with session.post(f"http://127.0.0.1:{port}/v2/models/churn/infer",
                                    data=orjson.dumps({**payload, "id": f"r{i}"})) as resp:
                await resp.read()
                return resp.status
        started = time.perf_counter()
        statuses = [await one(i) for i in range(50)]
        elapsed = time.perf_counter() - started
        assert statuses == [200] * 50
        assert elapsed < 10
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    dropped = [line for line in text.splitlines()
               if line.startswith('noria_prediction_log_dropped_total{kind="predictions"')]
    # The answers were settled in groups (ModelServer.settle), so the 4 queued batches hold a few rows each:
    # every row is either queued for the log or dropped and counted, and most are dropped.
    queued = server.predictions_log._offered_rows
    assert len(server.predictions_log.queue) == 4 and 4 <= queued <= 4 * SETTLE_ROWS
    assert dropped and float(dropped[0].split()[-1]) == 50 - queued >= 10
    gate.set()
    await server.stop(drain=False)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    logged = (tmp_path / "store/ml/churn/predictions/churn-v1" / day / "p0-000000.jsonl").read_text().splitlines()
    assert len(logged) == queued and os.path.exists(tmp_path / "store")


# --- one object per flush, kept and retried while the store is down --------------------------------
def test_each_flush_is_one_new_object_never_an_append(tmp_path) -> None:  # type: ignore[no-untyped-def]
    day = dt.datetime.now(dt.UTC).date().isoformat()
    log = JsonlLog(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", lambda n: None, flush_seconds=0.05)
    log.offer(1, lambda: b'{"id":"1"}\n')
    log.offer(1, lambda: b'{"id":"2"}\n')
    assert _wait(lambda: (tmp_path / "p" / day / "pod-000000.jsonl").exists())
    log.offer(1, lambda: b'{"id":"3"}\n')
    log.close()
    files = sorted(p.name for p in (tmp_path / "p" / day).iterdir())
    assert files == ["pod-000000.jsonl", "pod-000001.jsonl"]  # no hidden partial file left either
    assert (tmp_path / "p" / day / "pod-000000.jsonl").read_bytes() == b'{"id":"1"}\n{"id":"2"}\n'
    assert (tmp_path / "p" / day / "pod-000001.jsonl").read_bytes() == b'{"id":"3"}\n'


def test_an_object_store_gets_whole_objects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import fsspec

    root = f"memory://predlog-{os.getpid()}-{time.monotonic_ns()}"  # no rename, no append: objects only
    log = JsonlLog(lambda d: f"{root}/{d.isoformat()}", "pod", lambda n: None, flush_seconds=60)
    for i in range(100):
        log.offer(1, lambda i=i: b'{"id":"%d"}\n' % i)
    log.close()  # a graceful shutdown stores what is buffered
    fs = fsspec.filesystem("memory")
    objects = fs.find(root)
    assert [o.rsplit("/", 1)[1] for o in objects] == ["pod-000000.jsonl"]
    assert fs.cat(objects[0]).count(b"\n") == 100


def test_a_store_outage_keeps_the_buffer_and_retries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store expects a directory: every write fails")
    dropped: list[int] = []
    log = JsonlLog(lambda d: f"file://{blocker}/p", "pod", dropped.append, flush_seconds=0.05, retry_seconds=0.1)
    log.offer(2, lambda: b'{"id":"1"}\n{"id":"2"}\n')
    time.sleep(0.4)  # several failed attempts
    log.offer(1, lambda: b'{"id":"3"}\n')
    blocker.unlink()  # the store comes back
    assert _wait(lambda: (blocker / "p" / "pod-000000.jsonl").exists())
    log.close()
    written = b"".join(p.read_bytes() for p in sorted((blocker / "p").iterdir()))
    assert written == b'{"id":"1"}\n{"id":"2"}\n{"id":"3"}\n' and dropped == []


def test_past_its_bound_a_down_store_drops_the_oldest_lines_and_counts_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "store"
    blocker.write_text("down")
    dropped: list[int] = []
    log = JsonlLog(lambda d: f"file://{blocker}/p", "pod", dropped.append, flush_seconds=0.02, retry_seconds=0.05,
                   max_buffered_bytes=35)
    for i in range(5):  # 11 bytes each: three fit the bound
        log.offer(1, lambda i=i: b'{"id":"%d"}\n' % i)
        time.sleep(0.05)
    assert _wait(lambda: sum(dropped) == 2)
    blocker.unlink()
    assert _wait(lambda: (blocker / "p" / "pod-000000.jsonl").exists())
    log.close()
    assert (blocker / "p" / "pod-000000.jsonl").read_bytes() == b'{"id":"2"}\n{"id":"3"}\n{"id":"4"}\n'
    assert sum(dropped) == 2
