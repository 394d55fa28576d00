"""Prediction and feedback logs for the feedback loop, written off the request path.

The request path only appends a batch to a bounded deque (``offer``: no lock, no I/O, no JSON,
and no wake-up: signalling a waiting thread on every batch hands it the GIL, which measured as
~0.4 ms per batch on the event loop); a writer thread wakes every ``flush_seconds``, turns batches
into JSON lines and appends them to
``<dir for today>/<pod>-<seq>.jsonl`` (``noria.store`` layout). If the store is slow the queue
fills (``capacity`` batches or ``max_queued_rows`` rows: a bulk request is a batch of up to
hundreds of thousands of rows) and further batches are dropped and counted; if it fails (full disk, read-only, gone) the
lines are dropped and counted, the file is reopened after a back-off, and predictions go on.
``seq`` starts past any file this pod name already wrote today, so a restarted pod never
appends into (or clobbers) its predecessor's file, and rolls over at ``max_file_bytes``.

A request cannot make the log grow by more than its rows allow: the request parser bounds ids and
values (``noria_server.oip``), and a batch whose rendering exceeds ``max_line_bytes`` per row on
average is dropped and counted rather than written (a backstop: with the parser's bounds it takes
a model with thousands of features to get near it).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from noria import store

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 64 * 1024
# Rows waiting for the writer, over all batches: a few MB of features and ids at most, where a
# bound in batches alone let four bulk requests queue a gigabyte.
DEFAULT_MAX_QUEUED_ROWS = 65_536

# A batch handed to the writer: (row count, function producing the JSON-lines bytes).
Entry = tuple[int, Callable[[], bytes]]


class JsonlLog:
    def __init__(self, directory_for: Callable[[dt.date], str], pod: str, on_drop: Callable[[int], None],
                 capacity: int = 4096, flush_seconds: float = 0.5, max_file_bytes: int = 256 << 20,
                 retry_seconds: float = 2.0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS) -> None:
        self.directory_for = directory_for
        self.pod = pod
        self.on_drop = on_drop
        self.queue: deque[Entry] = deque()
        self.capacity = capacity
        self.flush_seconds = flush_seconds
        self.max_file_bytes = max_file_bytes
        self.retry_seconds = retry_seconds
        self.max_line_bytes = max_line_bytes
        self.max_queued_rows = max_queued_rows
        # Rows queued = offered - taken; each counter has one writer thread, so neither needs a lock.
        self._offered_rows = 0
        self._taken_rows = 0
        self._file: Any = None
        self._day: dt.date | None = None
        self._written = 0
        self._broken_until = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{pod}", daemon=True)
        self._thread.start()

    # --- request path ------------------------------------------------------------------------
    def offer(self, rows: int, render: Callable[[], bytes]) -> None:
        if len(self.queue) >= self.capacity or rows > self.room():  # behind: drop rather than grow or block
            self.on_drop(rows)
        else:
            self._offered_rows += rows
            self.queue.append((rows, render))

    def room(self) -> int:
        """Rows the queue takes now (those queued or being written count until written)."""
        return self.max_queued_rows - (self._offered_rows - self._taken_rows)

    def drop(self, rows: int) -> None:
        """Count ``rows`` the caller did not offer for lack of room."""
        self.on_drop(rows)

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        self._thread.join(timeout)

    # --- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            closing = self._closing.wait(self.flush_seconds)
            while self.queue:
                rows, render = self.queue.popleft()
                self._write(rows, render)
                self._taken_rows += rows
            self._flush()
            if closing:
                break
        self._close_file()

    def _write(self, rows: int, render: Callable[[], bytes]) -> None:
        if time.monotonic() < self._broken_until:
            self.on_drop(rows)
            return
        try:
            data = render()
            if len(data) > rows * self.max_line_bytes:
                log.warning("prediction log %s: dropping %d rows rendered as %d bytes (over %d bytes a line)",
                            self.pod, rows, len(data), self.max_line_bytes)
                self.on_drop(rows)
                return
            self._ensure_file()
            self._file.write(data)
            self._written += len(data)
            if self._written >= self.max_file_bytes:
                self._close_file()
        except Exception as exc:  # OSError from the store, or anything else: never take the server down
            log.warning("prediction log %s: dropping %d rows: %s", self.pod, rows, exc)
            self.on_drop(rows)
            self._close_file()
            self._broken_until = time.monotonic() + self.retry_seconds

    def _ensure_file(self) -> None:
        today = dt.datetime.now(dt.UTC).date()
        if self._file is not None and today == self._day:
            return
        self._close_file()
        fs, path = store.filesystem(self.directory_for(today))
        fs.makedirs(path, exist_ok=True)
        prefix = f"{self.pod}-"
        seqs = []
        for name in fs.ls(path, detail=False):
            base = os.path.basename(str(name))
            if base.startswith(prefix) and base.endswith(".jsonl") and base[len(prefix):-6].isdigit():
                seqs.append(int(base[len(prefix):-6]))
        target = store.join(path, store.log_file_name(self.pod, max(seqs) + 1 if seqs else 0))
        self._file = fs.open(target, "ab")
        self._day = today
        self._written = 0

    def _flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except Exception as exc:
            log.warning("prediction log %s: flush failed: %s", self.pod, exc)
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the data is already counted as written or dropped
                pass
        self._file = None
