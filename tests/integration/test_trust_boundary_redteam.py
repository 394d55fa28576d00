"""Red-team checks of issue #10 on the real processes: variants of the original attacks that the
hardening first missed, each reproduced against ``noria_server serve`` / ``route`` started as
subprocesses with a real trained model in a real store directory.

- A chunked request may end with a *trailer section* (header fields after the last chunk).
  httptools parses it with the header callbacks, but after the head's limits were checked: a
  trailer value of any size was buffered (and re-copied on every read) and any number of trailer
  bytes accepted, so one client could grow the server's memory without bound and stall its event
  loop. Trailers must be held to the header limits.
- The router labelled ``noria_router_errors_total`` with the client's ``x-noria-version`` header
  when it named no served version: every distinct value was a new time series kept forever.
- An artifact URI in namespace ``ml2``'s part of the store whose *directory* is a symlink into
  ``ml``'s part passed every check (the last component is a regular file, the resolved path is
  inside the store root): ``ml2`` served ``ml``'s model. The resolved path must stay in the same
  namespace directory as the path as written.
- A label posted for an id before the prediction was made (a guessed id) was logged, and the
  trainer keeps an id's first label: it replaced the true label in training.
- The prediction log's queue was bounded in batches, not rows: a few bulk requests held gigabytes.
- ``curl --http2`` offers ``Upgrade: h2c``: the router never answered, the server ran the request
  without its body.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from noria import artifact
from noria_server import launch
from noria_server.reference_models import train_and_save

MODEL = "redteam"
ROW = [0.1 * i - 1.0 for i in range(20)]
INFER = f"/v2/models/{MODEL}/infer"
FLAGS = ["--max-header-bytes", "4096", "--max-headers", "20", "--max-body-bytes", "65536",
         "--header-timeout", "2", "--body-timeout", "5", "--idle-timeout", "5"]


def infer_body() -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": ROW}]}).encode()


def send_and_read(port: int, parts: list[bytes], timeout: float = 10.0) -> bytes:
    """Send ``parts`` (stopping if the server closes), then read until it closes or ``timeout``."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        deadline = time.monotonic() + timeout
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


def status_of(answer: bytes) -> int | None:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else None


def chunked_head(path: str = INFER) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode()


def one_chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def saved(store: Path):  # noqa: ANN201
    return train_and_save("logistic", str(store / "ml" / "churn" / "v1"), rows=400)


@pytest.fixture(scope="module")
def processes(saved, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, launch.Process]]:  # noqa: ANN001
    logs = str(tmp_path_factory.mktemp("logs"))
    server = launch.serve(saved.artifact_uri, saved.digest, MODEL, "v1", logs, saved.profile_uri,
                          extra=[*FLAGS, "--store-root", f"file://{store}", "--prediction-log", "off"])
    router = None
    try:
        server.wait_ready(120)
        config = Path(logs) / "router.json"
        config.write_text(json.dumps({"model": MODEL, "backends": [{"version": "v1", "weight": 100,
                                                                    "url": server.url}]}))
        router = launch.route(str(config), logs, extra=FLAGS)
        router.wait_ready(60)
        yield {"server": server, "router": router}
    finally:
        if router is not None:
            router.stop()
        server.stop()


@pytest.mark.parametrize("target", ["server", "router"])
def test_one_huge_trailer_value_is_refused_not_buffered(processes: dict[str, launch.Process], target: str) -> None:
    proc = processes[target]
    body = infer_body()
    huge = [b"0\r\nx-trailer: "] + [b"a" * 65536] * 64 + [b"\r\n\r\n"]  # a 4 MiB trailer value
    answer = send_and_read(proc.port, [chunked_head(), one_chunk(body), *huge])
    assert status_of(answer) in (400, 431), answer[:300]
    ok = send_and_read(proc.port, [chunked_head(), one_chunk(body), b"0\r\n\r\n"])
    assert status_of(ok) == 200, ok[:300]


@pytest.mark.parametrize("target", ["server", "router"])
def test_trailer_fields_are_held_to_the_header_byte_limit(processes: dict[str, launch.Process], target: str) -> None:
    proc = processes[target]
    # 15 trailer fields (under the count limit) of 3,000 bytes each: 45 KB against a 4,096-byte limit.
    trailers = b"0\r\n" + b"".join(b"x-t%d: %s\r\n" % (i, b"b" * 3000) for i in range(15)) + b"\r\n"
    answer = send_and_read(proc.port, [chunked_head(), one_chunk(infer_body()), trailers])
    assert status_of(answer) in (400, 431), answer[:300]
    # A small trailer is still fine (HTTP allows them; OIP clients do not send them).
    ok = send_and_read(proc.port, [chunked_head(), one_chunk(infer_body()), b"0\r\nx-checksum: 1\r\n\r\n"])
    assert status_of(ok) == 200, ok[:300]


def test_unknown_pinned_versions_do_not_grow_the_router_metrics(processes: dict[str, launch.Process]) -> None:
    router = processes["router"]
    for i in range(200):
        request = (f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   f"x-noria-version: made-up-{i}\r\ncontent-length: {len(infer_body())}\r\n\r\n").encode()
        answer = send_and_read(router.port, [request + infer_body()], timeout=5)
        assert status_of(answer) == 404, answer[:300]
    status, text = launch.get(router.url + "/metrics")
    assert status == 200
    series = [line for line in text.decode().splitlines()
              if line.startswith("noria_router_errors_total{") and "unknown_version" in line]
    assert len(series) == 1, series[:5]
    assert float(series[0].rsplit(" ", 1)[1]) >= 200


def test_a_symlinked_directory_cannot_lead_into_another_namespace(saved, store: Path,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    # ml2 owns store/ml2/; a symlink there to ml's pipeline directory must not serve ml's model.
    (store / "ml2").mkdir(exist_ok=True)
    link = store / "ml2" / "borrowed"
    if not link.is_symlink():
        os.symlink(store / "ml" / "churn", link)
    borrowed = f"file://{link}/v1/model.skops"
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.load_verified(borrowed, saved.digest, f"file://{store}")
    assert refused.value.kind == artifact.OUTSIDE_STORE
    # The real server refuses it too, stays unready and exits with the OutsideStore code.
    server = launch.serve(borrowed, saved.digest, MODEL, "v1", str(tmp_path),
                          extra=["--store-root", f"file://{store}", "--namespace", "ml2",
                                 "--failure-exit-seconds", "0.5", "--prediction-log", "off"])
    try:
        assert server.proc is not None
        code = server.proc.wait(90)
        assert code == artifact.EXIT_CODES[artifact.OUTSIDE_STORE], server.log()[-2000:]
        assert "OutsideStore" in server.log()
    finally:
        server.stop()
    # The model itself, through its own namespace's path, still loads.
    assert artifact.load_verified(saved.artifact_uri, saved.digest, f"file://{store}") is not None


def test_a_trailer_does_not_pass_for_a_header(processes: dict[str, launch.Process]) -> None:
    # A trailer named like a routing header must not pin a version (a proxy in front that checks or
    # strips headers never sees trailers).
    router = processes["router"]
    answer = send_and_read(router.port, [chunked_head(), one_chunk(infer_body()), b"0\r\nx-noria-version: nope\r\n\r\n"])
    assert status_of(answer) == 200, answer[:300]


def test_a_label_posted_before_its_prediction_never_reaches_training(saved, store: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """A label for an id no pod holds is logged for retraining (it may be a prediction from before a
    restart). An attacker who can guess a prediction id (client-chosen, or a customer id) could post
    a label for it *before* the prediction was made; the trainer keeps an id's first label, so the
    planted label would replace the true one in training, although the live counters saw the true one."""
    from noria_trainer.data import merge_feedback

    namespace, pipeline = "ml", "churn"
    server = launch.serve(saved.artifact_uri, saved.digest, MODEL, "v1", str(tmp_path), saved.profile_uri,
                          extra=["--store-root", f"file://{store}", "--namespace", namespace, "--pipeline", pipeline])
    try:
        server.wait_ready(120)

        def post(path: str, payload: dict) -> dict:
            answer = send_and_read(server.port, [(
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(json.dumps(payload))}\r\n\r\n{json.dumps(payload)}").encode()])
            assert status_of(answer) == 200, answer[:300]
            return json.loads(answer.split(b"\r\n\r\n", 1)[1])

        body = json.loads(infer_body())
        predicted = int(post(INFER, body)["outputs"][0]["data"][0])  # what the model says for this row
        true_label = 1 - predicted
        planted = post(f"/v2/models/{MODEL}/feedback", {"id": "customer-42", "label": predicted})
        assert planted["outcomes"]["unknown_id"] == 1
        time.sleep(0.05)
        body["parameters"] = {"ids": ["customer-42"]}
        assert int(post(INFER, body)["outputs"][0]["data"][0]) == predicted
        counted = post(f"/v2/models/{MODEL}/feedback", {"id": "customer-42", "label": true_label})
        assert counted["outcomes"]["counted"] == 1  # the live counters took the true label
    finally:
        server.stop()  # flushes both logs
    merged = merge_feedback(f"file://{store}", namespace, pipeline, "target", saved.features, None)
    rows = merged.rows
    assert len(rows) == 1, rows
    assert int(rows["target"].iloc[0]) == true_label, "training took the label planted before the prediction"


def test_large_batches_cannot_make_the_prediction_log_hold_gigabytes(saved, store: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The log's queue was bounded in batches, not rows: a handful of requests of 100,000 rows (each
    about 4 MiB of JSON) queued hundreds of MB of rows and rendered each batch whole, and six
    15 MiB requests took the server from 260 MB to a 4 GB peak (3.2 GB kept). Queued rows are
    bounded (past it they are dropped and counted, as when the store is slow) and rendered in slices."""
    import psutil

    server = launch.serve(saved.artifact_uri, saved.digest, MODEL, "v1", str(tmp_path), saved.profile_uri,
                          extra=["--store-root", f"file://{store}", "--namespace", "ml", "--pipeline", "bulk"])
    try:
        server.wait_ready(120)
        assert server.proc is not None
        process = psutil.Process(server.proc.pid)
        rows = 100_000
        inputs = [{"name": f"f{i}", "shape": [rows], "datatype": "FP64", "data": [0] * rows} for i in range(20)]
        body = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
        request = (f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   f"content-length: {len(body)}\r\n\r\n").encode() + body
        baseline = process.memory_info().rss
        peak = baseline
        for _ in range(4):
            answer = send_and_read(server.port, [request], timeout=60)
            assert status_of(answer) == 200, answer[:300]
            peak = max(peak, process.memory_info().rss)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the writer thread catches up
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        assert peak - baseline < 400 << 20, f"server grew from {baseline >> 20} MB to a peak of {peak >> 20} MB"
        status, text = launch.get(server.url + "/metrics")
        dropped = sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                      if line.startswith("noria_prediction_log_dropped_total{") and "predictions" in line)
        assert dropped > 0  # what could not be queued is counted, not silently lost
    finally:
        server.stop()


@pytest.mark.parametrize("target", ["server", "router"])
def test_an_upgrade_offer_is_ignored_or_refused_never_left_unanswered(processes: dict[str, launch.Process],
                                                                       target: str) -> None:
    """``curl --http2`` on an http:// URL offers ``Upgrade: h2c``. httptools then skips the request's
    body (it would belong to the new protocol): the server answered such an infer "empty request
    body" and the router gave no answer at all. HTTP/1.1 lets a server ignore the offer: a request
    without a body is answered as usual, one with a body gets a 400 saying what to do."""
    proc = processes[target]
    upgrade = "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    body = infer_body()
    answer = send_and_read(proc.port, [(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                        f"{upgrade}content-length: {len(body)}\r\n\r\n").encode() + body], timeout=5)
    assert status_of(answer) == 400, answer[:300]
    assert b"--http1.1" in answer
    answer = send_and_read(proc.port, [f"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n{upgrade}\r\n".encode()], timeout=5)
    assert status_of(answer) == 200, answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:600]  # one answer, then the connection closes
    answer = send_and_read(proc.port, [f"GET /metrics HTTP/1.1\r\nhost: x\r\n{upgrade}\r\n".encode()], timeout=5)
    assert status_of(answer) == 200 and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
