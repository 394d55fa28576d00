"""The prediction-log writer stores a flush in turns with rests between them, as it renders: a whole
second's lines written (or, for an object store, joined) in one stretch held the server's core or GIL."""

from __future__ import annotations

import datetime as dt
import os
import time

import fsspec
from noria_server import predlog
from noria_server.predlog import JsonlLog


class _RestCounting(JsonlLog):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.rests = 0
        super().__init__(*args, **kwargs)

    def _rest(self) -> None:
        self.rests += 1
        super()._rest()


def _filled(log: JsonlLog, chunks: list[bytes]) -> None:
    for chunk in chunks:  # as the writer's takes leave it: rendered, not yet stored
        log._buffer.append((1, chunk))
        log._buffered_bytes += len(chunk)


def _chunks(n: int, size: int) -> list[bytes]:
    return [(b'{"id":"%06d"}' % i).ljust(size - 1, b" ") + b"\n" for i in range(n)]


def test_a_local_flush_writes_its_pieces_in_turns_with_rests(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(predlog, "WRITE_PIECE_BYTES", 4096)
    log = _RestCounting(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", lambda n: None, flush_seconds=3600,
                        tick_seconds=3600, turn_seconds=0.0, rest_seconds=0.001)  # a turn of one piece: a rest before each
    chunks = _chunks(40, 1024)  # 40 KiB: ten pieces of 4 KiB
    try:
        _filled(log, chunks)
        started = time.perf_counter()
        log._flush(time.monotonic())  # the writer thread sleeps meanwhile (tick of an hour)
        took = time.perf_counter() - started
    finally:
        log.close()
    day = dt.datetime.now(dt.UTC).date().isoformat()
    assert (tmp_path / "p" / day / "pod-000000.jsonl").read_bytes() == b"".join(chunks)
    assert log.rests == 10 and took >= 0.01


def test_an_object_store_flush_is_assembled_in_turns_and_sent_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root = f"memory://predlog-turns-{os.getpid()}-{time.monotonic_ns()}"
    log = _RestCounting(lambda d: f"{root}/{d.isoformat()}", "pod", lambda n: None, flush_seconds=3600,
                        tick_seconds=3600, turn_seconds=0.0, rest_seconds=0.0005)
    chunks = _chunks(12, 300)
    try:
        _filled(log, chunks)
        log._flush(time.monotonic())
    finally:
        log.close()
    fs = fsspec.filesystem("memory")
    objects = fs.find(root)
    assert [o.rsplit("/", 1)[1] for o in objects] == ["pod-000000.jsonl"]
    assert fs.cat(objects[0]) == b"".join(chunks)
    assert log.rests == 12  # one before each chunk: never the whole buffer copied in one piece


def test_turns_of_real_length_rest_only_when_a_turn_is_used_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = _RestCounting(lambda d: f"file://{tmp_path}/p/{d.isoformat()}", "pod", lambda n: None, flush_seconds=3600,
                        tick_seconds=3600, turn_seconds=60.0, rest_seconds=0.001)
    try:
        _filled(log, _chunks(2000, 1024))  # 2 MB, eight pieces: far less than a minute's turn
        log._flush(time.monotonic())
    finally:
        log.close()
    assert log.rests == 0
