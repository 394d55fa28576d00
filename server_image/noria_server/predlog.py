"""Prediction and feedback logs for the feedback loop, written off the request path, one object per flush.

The request path only appends a batch to a bounded deque (``offer``: no lock, no I/O, no JSON,
and no wake-up: signalling a waiting thread on every batch hands it the GIL, which measured as
~0.4 ms per batch on the event loop); a micro-batch is rendered first, on the caller's thread
(``offer_rendered``, a few µs a row: the writer's turns cost the loop more than that, see the method),
a bulk request is rendered by the writer. A writer thread wakes every ``tick_seconds``, turns the queued
batches into JSON lines in turns of at most ``turn_seconds`` of rendering (whole batches; ~2.4 us a
row of 20 features) with a rest of ``rest_seconds`` between two turns, so the event loop waits for
the GIL at most one short turn at a time instead of running at half speed through a burst, and
every ``flush_seconds`` (or once ``max_file_bytes`` are rendered) hands the WHOLE buffer to the
store as ONE new object ``<dir for today>/<pod>-<seq>.jsonl`` (``noria.store`` layout, through
``noria.store.filesystem``, so ``s3://`` works as ``file://`` does). An object is never appended
to (object stores have no append) and never one per request; ``seq`` starts past any object this
pod name already wrote today, so a restarted pod never overwrites its predecessor's. A local file
is written under a hidden temporary name and renamed, so a reader never sees half of one; it is
written in pieces of ``WRITE_PIECE_BYTES``, in turns with rests between them as rendering is (an object
for an object store is assembled the same way, a chunk at a time, and sent in one PUT), and the writer
thread runs at a lower priority (``WRITER_NICE``), so neither a join of the whole buffer under the GIL
nor the kernel's work on the file holds the event loop back for more than a turn.

Nothing is lost to a store outage within a bound: a failed write keeps the buffer and is retried
after ``retry_seconds``; while the store stays down, rendered lines past ``max_buffered_bytes`` are
dropped oldest first and counted (``on_drop``). Closing flushes what is buffered (a graceful
shutdown loses nothing the store accepts). Two more bounds keep memory flat when the writer falls
behind: the queue holds at most ``capacity`` batches and ``max_queued_rows`` rows (a bulk request
is a batch of up to hundreds of thousands of rows), and further batches are dropped and counted.

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
from collections.abc import Callable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
from noria import store

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 64 * 1024
# Rows waiting for the writer, over all batches: a few MB of features and ids at most, where a
# bound in batches alone let four bulk requests queue a gigabyte.
DEFAULT_MAX_QUEUED_ROWS = 65_536
# Rendered lines kept for a store that is down (~60,000 rows of 20 features): past it, oldest first out.
DEFAULT_MAX_BUFFERED_BYTES = 32 << 20
# One object per flush: at most 86,400 a day per pod under steady traffic (1 s), each a second of
# predictions; a crash loses at most that second. Bigger objects: raise it (ServeSettings.log_flush_seconds).
DEFAULT_FLUSH_SECONDS = 1.0
# The writer's wake-ups, and how it renders what it finds: each take was a burst of ~5 ms of CPU at
# 16,000 rows/s every 0.1 s (the loop thread and the writer alternating in 0.5 ms GIL turns, so the
# loop served at half speed through it). Taken every 20 ms, rendered in 0.25 ms turns with 1 ms rests
# (up to ~19 % of a core, ~80,000 rows/s), the loop waits for the GIL at most ~0.3 ms at a time.
DEFAULT_TICK_SECONDS = 0.02
DEFAULT_TURN_SECONDS = 0.00025
DEFAULT_REST_SECONDS = 0.001

# A local flush writes the buffer in pieces of about this size: one b"".join of a second's lines
# (12 MB at 16,000 rows/s of 20 features) held the GIL, and so the event loop, for 7-8.5 ms. The pieces
# are written in turns of ``turn_seconds`` with rests between them: written at once, a second's lines at
# 20,000 rows/s (15 MB) were ~4-5 ms of the writer's CPU (mostly the kernel's, GIL free) in one stretch on
# the core the loop thread runs on, which the scheduler hands out in slices of a millisecond or more.
WRITE_PIECE_BYTES = 256 << 10
# The writer thread's nice value above the server's (Linux: per thread). Writing a second's lines
# costs the kernel 17-66 ms of CPU on a server pinned to one core (ext4, measured); the GIL is free
# meanwhile, so at equal priority the loop thread ran at about half speed for that long. At +10 the
# loop gets ~90 % of the core while both want it; whenever the loop waits for the GIL the writer
# holds, it is not runnable, so rendering does not starve at any load.
WRITER_NICE = 10
# And it runs under SCHED_BATCH (Linux): the scheduler never lets its wake-ups preempt a running task, so
# after each rest it waits for the loop thread to block on input (or for a tick) instead of taking the core
# from a runnable loop for a turn (~0.25 ms, ~15 turns a second at 20,000 rows/s). It keeps its nice +10
# share of the core when both want it, so it never starves (SCHED_IDLE, measured as well, did as well for
# the loop but leaves the writer ~0.3 % of a busy core, less than a second's lines need at the maximum).

# A batch handed to the writer: (row count, function producing the JSON-lines bytes, or the bytes
# already rendered by ``offer_rendered``).
Entry = tuple[int, "Callable[[], bytes] | bytes"]


class JsonlLog:
    def __init__(self, directory_for: Callable[[dt.date], str], pod: str, on_drop: Callable[[int], None],
                 capacity: int = 4096, flush_seconds: float = DEFAULT_FLUSH_SECONDS, max_file_bytes: int = 16 << 20,
                 retry_seconds: float = 2.0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
                 tick_seconds: float = DEFAULT_TICK_SECONDS, turn_seconds: float = DEFAULT_TURN_SECONDS,
                 rest_seconds: float = DEFAULT_REST_SECONDS) -> None:
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
        self.max_buffered_bytes = max_buffered_bytes
        self.tick_seconds = min(tick_seconds, flush_seconds)
        self.turn_seconds = turn_seconds
        self.rest_seconds = rest_seconds
        # Rows queued = offered - taken; each counter has one writer thread, so neither needs a lock.
        self._offered_rows = 0
        self._taken_rows = 0
        # Rendered, not yet stored: (rows, bytes) oldest first. Only the writer thread touches these.
        self._buffer: deque[tuple[int, bytes]] = deque()
        self._buffered_bytes = 0
        self._next_seq: dict[str, int] = {}  # directory -> next free seq for this pod
        self._next_flush = time.monotonic() + flush_seconds
        self._failing = False
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

    def offer_rendered(self, rows: int, render: Callable[[], bytes]) -> None:
        """``offer``, but rendered now, on the caller's thread (a micro-batch, a few µs a row): the writer
        then only moves the bytes to its buffer and stores them. Rendering on the writer thread cost the
        event loop more than rendering inline does: each of the writer's turns took the core and the GIL
        from the loop for ~0.25 ms (and the scheduler gave it runs of up to ~3.8 ms), ~7 % of the time at
        20,000 req/s, and the thread hand-overs cost CPU of their own. Nothing is rendered for a batch the
        queue would drop; a batch whose rendering fails is dropped and counted, as on the writer."""
        if len(self.queue) >= self.capacity or rows > self.room():
            self.on_drop(rows)
            return
        try:
            data = render()
        except Exception as exc:  # a rendering bug must not fail the batch's requests (already answered)
            log.warning("prediction log %s: dropping %d rows that did not render: %s", self.pod, rows, exc)
            self.on_drop(rows)
            return
        self._offered_rows += rows
        self.queue.append((rows, data))

    def room(self) -> int:
        """Rows the queue takes now (those queued or being rendered count until rendered)."""
        return self.max_queued_rows - (self._offered_rows - self._taken_rows)

    def drop(self, rows: int) -> None:
        """Count ``rows`` the caller did not offer for lack of room."""
        self.on_drop(rows)

    def close(self, timeout: float = 5.0) -> None:
        """Render and store what is queued, then stop (what the store refuses by then is counted as dropped)."""
        self._closing.set()
        self._thread.join(timeout)

    # --- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority(WRITER_NICE)
        while True:
            closing = self._closing.wait(self.tick_seconds)
            self._take()
            now = time.monotonic()
            if self._buffer and (closing or now >= self._next_flush or self._buffered_bytes >= self.max_file_bytes):
                self._flush(now)
            if closing:
                break
        lost = sum(rows for rows, _ in self._buffer)
        if lost:
            log.warning("prediction log %s: %d rows not stored at shutdown (the store refused them)", self.pod, lost)
            self.on_drop(lost)
            self._buffer.clear()

    def _take(self) -> None:
        turn_ends = time.perf_counter() + self.turn_seconds
        while self.queue:
            turn_ends = self._rest_if_due(turn_ends)
            rows, render = self.queue.popleft()
            try:
                data = render if isinstance(render, bytes) else render()
            except Exception as exc:  # a rendering bug must not stop the writer
                log.warning("prediction log %s: dropping %d rows that did not render: %s", self.pod, rows, exc)
                data = None
            self._taken_rows += rows
            if data is None:
                self.on_drop(rows)
            elif len(data) > rows * self.max_line_bytes:
                log.warning("prediction log %s: dropping %d rows rendered as %d bytes (over %d bytes a line)",
                            self.pod, rows, len(data), self.max_line_bytes)
                self.on_drop(rows)
            else:
                self._buffer.append((rows, data))
                self._buffered_bytes += len(data)
        while self._buffered_bytes > self.max_buffered_bytes and len(self._buffer) > 1:  # store down: oldest out
            rows, data = self._buffer.popleft()
            self._buffered_bytes -= len(data)
            self.on_drop(rows)

    def _flush(self, now: float) -> None:
        """Store the whole buffer as one new object; on failure keep it for the next try."""
        try:
            fs, directory = store.filesystem(self.directory_for(dt.datetime.now(dt.UTC).date()))
            seq = self._seq(fs, directory)
            target = store.join(directory, store.log_file_name(self.pod, seq))
            if isinstance(fs, LocalFileSystem):  # a rename is atomic here: readers never see half a file
                partial = store.join(directory, "." + store.log_file_name(self.pod, seq) + ".partial")
                with fs.open(partial, "wb") as f:  # in pieces: no GIL-holding join of the whole buffer
                    turn_ends = time.perf_counter() + self.turn_seconds
                    for piece in _pieces(self._buffer, WRITE_PIECE_BYTES):
                        turn_ends = self._rest_if_due(turn_ends)  # the kernel's work in turns, too
                        f.write(piece)
                fs.mv(partial, target)
            else:  # one PUT: the object appears whole or not at all
                fs.pipe_file(target, self._assembled())
        except Exception as exc:  # OSError from the store, or anything else: never take the server down
            if not self._failing:
                log.warning("prediction log %s: storing %d bytes failed, keeping them and retrying every %gs: %s",
                            self.pod, self._buffered_bytes, self.retry_seconds, exc)
            self._failing = True
            self._next_flush = now + self.retry_seconds
            return
        if self._failing:
            log.info("prediction log %s: the store takes writes again", self.pod)
        self._failing = False
        self._next_seq[directory] = seq + 1
        self._buffer.clear()
        self._buffered_bytes = 0
        self._next_flush = now + self.flush_seconds

    def _rest_if_due(self, turn_ends: float) -> float:
        """Rest ``rest_seconds`` if the turn that ends at ``turn_ends`` (perf_counter) is over, so the
        loop thread has the GIL and the core; returns when the current turn ends. No rest once closing."""
        if time.perf_counter() < turn_ends:
            return turn_ends
        self._rest()
        return time.perf_counter() + self.turn_seconds

    def _rest(self) -> None:
        self._closing.wait(self.rest_seconds)

    def _assembled(self) -> bytearray:
        """The whole buffer as one object's bytes, copied a chunk at a time in turns: one ``b"".join``
        of a second's lines (12 MB at 16,000 rows/s) held the GIL, and so the event loop, for 7-8.5 ms."""
        out = bytearray(sum(len(chunk) for _, chunk in self._buffer))
        view = memoryview(out)
        at = 0
        turn_ends = time.perf_counter() + self.turn_seconds
        for _, chunk in self._buffer:
            turn_ends = self._rest_if_due(turn_ends)
            view[at:at + len(chunk)] = chunk
            at += len(chunk)
        view.release()
        return out

    def _seq(self, fs: fsspec.AbstractFileSystem, directory: str) -> int:
        """The next free ``seq`` of this pod in ``directory`` (listed once per directory, then counted)."""
        known = self._next_seq.get(directory)
        if known is not None:
            return known
        fs.makedirs(directory, exist_ok=True)
        prefix = f"{self.pod}-"
        seqs = [-1]
        try:
            names = fs.ls(directory, detail=False)
        except FileNotFoundError:  # an object store has no empty folders: nothing written here yet
            names = []
        for name in names:
            base = os.path.basename(str(name).rstrip("/"))
            if base.startswith(prefix) and base.endswith(".jsonl") and base[len(prefix):-6].isdigit():
                seqs.append(int(base[len(prefix):-6]))
        return max(seqs) + 1


def _pieces(buffer: deque[tuple[int, bytes]], size: int) -> Iterator[bytes]:
    """The buffer's chunks joined into pieces of at least ``size`` bytes (the last may be smaller;
    a chunk larger than ``size`` is a piece by itself, not copied)."""
    group: list[bytes] = []
    held = 0
    for _, chunk in buffer:
        group.append(chunk)
        held += len(chunk)
        if held >= size:
            yield group[0] if len(group) == 1 else b"".join(group)
            group, held = [], 0
    if group:
        yield b"".join(group)


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value by ``nice`` and put it under SCHED_BATCH (Linux; elsewhere, or if
    refused, nothing). Neither needs a privilege."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        log.debug("prediction log writer keeps its priority: %s", exc)
