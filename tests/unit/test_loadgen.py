"""benchmarks/loadgen, the open-loop generator of the latency benchmark: a server stall shows in full
in its latencies (counted from each request's scheduled send, not from when a free connection let
it go: no coordinated omission), against a real local HTTP server that stalls once."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STALL_SECONDS = 0.3


def _serve(listener: socket.socket, stall_at: float) -> None:
    """Answers each request at once, except that from the first request after ``stall_at`` every
    connection stops answering for STALL_SECONDS (a stalled event loop)."""
    lock = threading.Lock()
    stall_end = 0.0

    def handle(conn: socket.socket) -> None:
        nonlocal stall_end
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                with lock:
                    now = time.monotonic()
                    if not stall_end and now >= stall_at:
                        stall_end = now + STALL_SECONDS
                    wait = stall_end - now
                if wait > 0:
                    time.sleep(wait)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def test_a_stall_shows_in_full_even_for_requests_that_waited_for_a_connection(tmp_path: Path) -> None:
    built = subprocess.run(["bash", str(ROOT / "benchmarks" / "loadgen" / "build.sh")], capture_output=True,
                           text=True, check=False, timeout=600)
    assert built.returncode == 0, f"building benchmarks/loadgen failed:\n{built.stderr[-3000:]}"
    binary = built.stdout.strip().splitlines()[-1]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    threading.Thread(target=_serve, args=(listener, time.monotonic() + 0.5), daemon=True).start()
    body = tmp_path / "body.json"
    body.write_text("{}")
    try:
        # 2 connections at 200 req/s for 1.5 s: during the stall both are busy, so ~60 requests (20 %)
        # wait for one. Counted from when they were finally sent, only the 2 in flight would be slow.
        out = subprocess.run([binary, "-url", f"http://127.0.0.1:{port}/v2/models/m/infer", "-body", str(body),
                              "-rate", "200", "-seconds", "1.5", "-connections", "2"],
                             capture_output=True, text=True, check=True, timeout=60)
    finally:
        listener.close()
    result = json.loads(out.stdout)
    assert (result["sent"], result["answered"], result["errors"]) == (300, 300, 0)
    assert result["p50_ms"] < 50  # most requests never met the stall
    assert result["p99_ms"] >= 200 and result["max_ms"] >= 250  # those that did carry all of it
    assert result["wait_p99_ms"] >= 200  # and most of that was waiting for a connection
