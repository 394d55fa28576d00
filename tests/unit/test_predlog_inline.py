"""A micro-batch's prediction-log lines are rendered on the loop thread (``JsonlLog.offer_rendered``),
a bulk request's by the writer thread; the lines stored are the same bytes either way."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import numpy as np
from noria_server import oip
from noria_server.predlog import JsonlLog
from noria_server.serve import LOG_INLINE_ROWS, ModelServer, ServeSettings, _Pending, _render_predictions


def _stored(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    day = dt.datetime.now(dt.UTC).date().isoformat()
    return b"".join(p.read_bytes() for p in sorted((tmp_path / "p" / day).glob("pod-*.jsonl")))


def _log(tmp_path, dropped: list[int], **kw: Any) -> JsonlLog:  # type: ignore[no-untyped-def]
    return JsonlLog(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", dropped.append, flush_seconds=60, **kw)


def test_offer_rendered_renders_on_the_callers_thread_and_stores_the_same_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    threads: list[int] = []

    def render(i: int) -> bytes:
        threads.append(threading.get_ident())
        return b'{"id":"%d"}\n' % i

    dropped: list[int] = []
    log = _log(tmp_path, dropped)
    log.offer_rendered(1, lambda: render(1))
    assert threads == [threading.get_ident()]  # rendered before offer_rendered returned, here
    log.offer(1, lambda: render(2))  # a deferred one in between keeps its place
    log.offer_rendered(2, lambda: render(3) + render(4))
    log.close()
    assert _stored(tmp_path) == b'{"id":"1"}\n{"id":"2"}\n{"id":"3"}\n{"id":"4"}\n'
    # 1, 3 and 4 here, as offered; 2 by the writer, when it took the queue
    assert threads[:3] == [threading.get_ident()] * 3 and threads[3] != threading.get_ident()
    assert dropped == []


def test_offer_rendered_renders_nothing_the_queue_would_drop_and_counts_a_failed_render(tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    dropped: list[int] = []
    log = _log(tmp_path, dropped, max_queued_rows=3, tick_seconds=30)  # the writer takes nothing meanwhile
    try:
        log.offer_rendered(3, lambda: calls.append(3) or b"{}\n{}\n{}\n")
        log.offer_rendered(2, lambda: calls.append(2) or b"{}\n{}\n")  # no room: dropped, never rendered
        assert calls == [3] and dropped == [2] and log.room() == 0

        def broken() -> bytes:
            raise ValueError("cannot render")

        log.max_queued_rows = 10
        log.offer_rendered(4, broken)
        assert dropped == [2, 4] and log.room() == 7  # a failed render holds no room
    finally:
        log.close()
    assert _stored(tmp_path) == b"{}\n{}\n{}\n"


class _RecordingLog:
    """Stands in for the JsonlLog: which entry point each batch took, and its bytes."""

    def __init__(self) -> None:
        self.inline: list[bytes] = []
        self.deferred: list[bytes] = []

    def offer_rendered(self, rows: int, render: Any) -> None:
        self.inline.append(render())

    def offer(self, rows: int, render: Any) -> None:
        self.deferred.append(render())

    def room(self) -> int:
        return 1 << 30


def _server_with(log: _RecordingLog, features: tuple[str, ...]) -> ModelServer:
    server = ModelServer(ServeSettings(artifact_uri="file:///none", digest="sha256:x", model="m", version="v1"))

    class _Schema:
        pass

    class _Model:
        schema = _Schema()

    _Model.schema.features = features  # type: ignore[attr-defined]
    server.model = _Model()  # type: ignore[assignment]
    server.predictions_log = log  # type: ignore[assignment]
    return server


def test_micro_batches_render_inline_and_bulk_requests_on_the_writer() -> None:
    features = ("a", "b")
    log = _RecordingLog()
    server = _server_with(log, features)
    for n in (1, LOG_INLINE_ROWS, LOG_INLINE_ROWS + 1):
        rows = np.arange(2 * n, dtype=np.float64).reshape(n, 2) / 8
        ids = [f"r{n}-{i}" for i in range(n)]
        request = oip.InferRequest("q", ids, rows, ("predict",))
        pending = _Pending(request, None, 0.0, 0.0)  # type: ignore[arg-type]
        values = list(range(n))
        stamps = [(n, 1_700_000_000.25)]
        server._remember_and_log([pending], rows, np.array(values), stamps)
        expected = _render_predictions(stamps, "v1", features, ids, rows, values)
        assert (log.inline if n <= LOG_INLINE_ROWS else log.deferred)[-1] == expected
    assert len(log.inline) == 2 and len(log.deferred) == 1
    first = log.inline[0]
    assert first == (b'{"id":"r1-0","ts":"2023-11-14T22:13:20.250Z","model_version":"v1",'
                     b'"features":{"a":0.0,"b":0.125},"prediction":0}\n')
