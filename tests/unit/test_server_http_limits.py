"""The HTTP layer's limits, in process: a real ``HttpServer`` on loopback with a trivial handler.

Given small limits, when a client oversteps one, then it gets the documented status (or a close),
the response hook sees every answer, and the server goes on serving well-behaved clients. Also the
pure parts: limit validation, the flags/environment that set the limits, the infer request's field
bounds (every malformed field is a ``RequestError``, never another exception), and the prediction
log's line bound.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from noria_server import oip
from noria_server.httpserver import HttpLimits, HttpServer, Request, Response, json_response
from noria_server.predlog import JsonlLog

SMALL = HttpLimits(max_url_bytes=256, max_header_bytes=1024, max_headers=8, max_body_bytes=4096,
                   header_timeout=0.3, body_timeout=0.3, idle_timeout=0.5, max_connections=4,
                   max_buffered_body_bytes=64 * 1024)


def run_with_server(limits: HttpLimits, scenario: Callable[[int, list[tuple[str | None, int]]], Awaitable[None]],
                    slow: bool = False) -> list[tuple[str | None, int]]:
    """Start a server answering ``{"path", "bytes"}``, run ``scenario(port, answers)``, stop it."""
    answers: list[tuple[str | None, int]] = []

    async def handler(request: Request) -> Response:
        if slow:
            await asyncio.sleep(0.05)
        return json_response(200, {"path": request.path, "bytes": len(request.body)})

    def sync_or_async(request: Request) -> Response | Awaitable[Response]:
        if request.path == "/sync":
            return json_response(200, {"path": request.path, "bytes": len(request.body)})
        return handler(request)

    async def main() -> None:
        server = HttpServer(sync_or_async, limits, on_response=lambda r, s: answers.append(
            (r.path if r is not None else None, s)))
        port = await server.start("127.0.0.1", 0)
        try:
            await scenario(port, answers)
        finally:
            await server.close(timeout=2)

    asyncio.run(main())
    return answers


async def talk(port: int, data: bytes, half_close: bool = False, timeout: float = 3.0) -> tuple[bytes, float]:
    """Send ``data``; read until the server closes. Returns (bytes read, seconds until closed)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    if half_close:
        writer.write_eof()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    writer.close()
    return out, loop.time() - started


def post(path: str = "/x", body: bytes = b"{}", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n").encode() + body


def statuses(data: bytes) -> list[int]:
    import re

    return [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


# --- limits ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["max_url_bytes", "max_headers", "header_timeout", "max_connections",
                                   "max_buffered_body_bytes"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        HttpLimits(**{field: 0}).validate()
    HttpLimits().validate()


def test_each_oversized_part_gets_its_status_and_every_answer_reaches_the_hook() -> None:
    got: dict[str, bytes] = {}

    async def scenario(port: int, answers: list[tuple[str | None, int]]) -> None:
        got["url"], _ = await talk(port, post("/" + "u" * 300))
        got["header bytes"], _ = await talk(port, post(extra="x-big: " + "b" * 2000 + "\r\n"))
        got["header count"], _ = await talk(port, post(extra="".join(f"x-{i}: 1\r\n" for i in range(12))))
        got["declared body"], _ = await talk(port, post(body=b"") .replace(b"content-length: 0",
                                                                         b"content-length: 999999"))
        got["expect"], _ = await talk(port, b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 99999\r\n"
                                            b"expect: 100-continue\r\n\r\n")
        got["chunked"], _ = await talk(port, b"POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                                             + b"1000\r\n" + b"c" * 4096 + b"\r\n" + b"10\r\n" + b"c" * 16 + b"\r\n")
        got["malformed"], _ = await talk(port, b"GET / HTTP/9.9 nonsense\r\n\r\n")
        got["ok"], _ = await talk(port, post("/sync", extra="connection: close\r\n"))

    answers = run_with_server(SMALL, scenario)
    expected = {"url": 414, "header bytes": 431, "header count": 431, "declared body": 413, "expect": 413,
                "chunked": 413, "malformed": 400, "ok": 200}
    assert {k: statuses(v) for k, v in got.items()} == {k: [s] for k, s in expected.items()}
    assert b"100 Continue" not in got["expect"]
    assert sorted(s for _, s in answers) == sorted(expected.values())
    assert [p for p, s in answers if s != 200] == [None] * 7  # refused before a request existed


def test_half_closed_client_gets_every_pipelined_answer_in_order() -> None:
    out: dict[str, bytes] = {}

    async def scenario(port: int, answers: list[tuple[str | None, int]]) -> None:
        out["data"], out["seconds"] = await talk(port, post("/a") + post("/sync") + post("/c"),  # type: ignore[assignment]
                                                 half_close=True)

    run_with_server(SMALL, scenario, slow=True)
    data = out["data"]
    assert statuses(data) == [200, 200, 200]
    assert data.index(b'"/a"') < data.index(b'"/sync"') < data.index(b'"/c"')
    assert data.count(b"connection: close") == 1  # only on the last answer


def test_partial_headers_silence_and_idle_keep_alive_are_closed_within_their_bounds() -> None:
    seen: dict[str, tuple[bytes, float]] = {}

    async def scenario(port: int, answers: list[tuple[str | None, int]]) -> None:
        seen["partial headers"] = await talk(port, b"POST /x HTTP/1.1\r\nhost: t\r\n")
        seen["partial body"] = await talk(port, post(body=b"{}").replace(b"content-length: 2", b"content-length: 9"))
        seen["silent"] = await talk(port, b"")
        seen["idle"] = await talk(port, post("/sync"))

    run_with_server(SMALL, scenario)
    assert statuses(seen["partial headers"][0]) == [408] and seen["partial headers"][1] < 0.3 + 0.5
    assert statuses(seen["partial body"][0]) == [408] and seen["partial body"][1] < 0.3 + 0.5
    assert seen["silent"][0] == b"" and seen["silent"][1] < 0.3 + 0.5
    assert statuses(seen["idle"][0]) == [200] and 0.4 < seen["idle"][1] < 0.5 + 0.5


def test_connections_past_the_cap_are_answered_503_and_counted() -> None:
    result: dict[str, Any] = {}

    async def scenario(port: int, answers: list[tuple[str | None, int]]) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.05)
        result["refused"], _ = await talk(port, post("/sync"))
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        result["after"], _ = await talk(port, post("/sync", extra="connection: close\r\n"))

    answers = run_with_server(SMALL, scenario)
    assert statuses(result["refused"]) == [503] and b"4 open connections" in result["refused"]
    assert statuses(result["after"]) == [200]
    assert (None, 503) in answers


def test_the_body_budget_refuses_large_bodies_but_not_small_ones() -> None:
    limits = HttpLimits(max_body_bytes=60_000, max_buffered_body_bytes=100_000, body_timeout=1.0)
    result: dict[str, Any] = {}

    async def scenario(port: int, answers: list[tuple[str | None, int]]) -> None:
        writers = []
        for _ in range(3):  # three half-sent 60 kB bodies: 150 kB held, over the 100 kB budget
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 60000\r\n\r\n" + b" " * 50_000)
            await writer.drain()
            writers.append((reader, writer))
        await asyncio.sleep(0.1)
        result["small"], _ = await talk(port, post("/sync", body=b"{}" * 100, extra="connection: close\r\n"))
        result["large"] = [await asyncio.wait_for(r.read(4096), 2) for r, _ in writers]
        for _, w in writers:
            w.close()

    run_with_server(limits, scenario)
    assert statuses(result["small"]) == [200]
    refused = [r for r in result["large"] if statuses(r) == [503]]
    assert len(refused) >= 1 and b"bytes of request bodies" in refused[0]


# --- flags ---------------------------------------------------------------------------------------------
def test_limits_come_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from noria_server import __main__ as cli

    monkeypatch.setenv("NORIA_MAX_CONNECTIONS", "77")
    monkeypatch.setenv("NORIA_HEADER_TIMEOUT_SECONDS", "2.5")
    args = cli.parser().parse_args(["route", "--config", "x.json", "--max-body-bytes", "1000"])
    limits = cli._http_limits(args)
    assert (limits.max_connections, limits.header_timeout, limits.max_body_bytes) == (77, 2.5, 1000)
    assert limits.idle_timeout == HttpLimits().idle_timeout
    with pytest.raises(SystemExit, match="max_headers must be positive"):
        cli._http_limits(cli.parser().parse_args(["serve", "--max-headers", "0"]))
    monkeypatch.setenv("NORIA_MAX_HEADERS", "many")
    with pytest.raises(SystemExit, match="NORIA_MAX_HEADERS"):
        cli.parser()


# --- infer request bounds ------------------------------------------------------------------------------
SCHEMA = oip.Schema(tuple(f"f{i}" for i in range(3)))
MIXED = oip.Schema(("f0", "colour"), frozenset({"colour"}))


def matrix(**extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6]]}], **extra}


@pytest.mark.parametrize(("payload", "schema", "fragment"), [
    ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": 5, "data": [1] * 6}]}, SCHEMA, "datatype must be a string"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": ["BYTES"], "data": [1, "a"]}]}, MIXED,
     "datatype must be a string"),
    ({"inputs": [{"name": f, "shape": [1], "datatype": None, "data": [1]} for f in SCHEMA.features]}, SCHEMA,
     "datatype must be a string"),
    ({"inputs": [{"name": "f0", "shape": [1], "datatype": "FP64", "data": [1]},
                 {"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["c" * 1025]}]}, MIXED,
     "longer than 1024"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": [1, "c" * 1025]}]}, MIXED,
     "longer than 1024"),
    (matrix(parameters={"ids": ["a"]}), SCHEMA, "list of 2 strings"),
    (matrix(parameters={"ids": ["a", "b" * 129]}), SCHEMA, "parameters.ids[1] must be 1 to 128"),
    (matrix(parameters={"ids": ["a", ""]}), SCHEMA, "parameters.ids[1]"),
    (matrix(parameters={"ids": ["a", "b\x00"]}), SCHEMA, "printable"),
    (matrix(parameters={"ids": ["a", ["b"]]}), SCHEMA, "parameters.ids[1] must be a string"),
    (matrix(id="r" * 113), SCHEMA, "longer than 112"),
    (matrix(id="r\n"), SCHEMA, "printable"),
    ({"inputs": [{"name": "n" * 300, "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, SCHEMA,
     "longer than 256"),
])
def test_malformed_fields_are_422_naming_the_field(payload: dict[str, Any], schema: oip.Schema,
                                                   fragment: str) -> None:
    with pytest.raises(oip.RequestError) as err:
        oip.parse_infer(json.dumps(payload).encode(), schema)
    assert err.value.status == 422 and fragment in err.value.message


def test_ids_at_their_bounds_are_accepted_and_derived_ids_fit() -> None:
    parsed = oip.parse_infer(json.dumps(matrix(parameters={"ids": ["a" * 128, "b"]})).encode(), SCHEMA)
    assert parsed.row_ids == ["a" * 128, "b"]
    derived = oip.parse_infer(json.dumps(matrix(id="r" * 112)).encode(), SCHEMA)
    assert all(len(i) <= oip.MAX_ID_LENGTH for i in derived.row_ids)
    header = oip.parse_infer(json.dumps(matrix()).encode(), SCHEMA, "h" * 112)
    assert header.request_id == "h" * 112
    with pytest.raises(oip.RequestError, match="x-request-id header"):
        oip.parse_infer(json.dumps(matrix()).encode(), SCHEMA, "h" * 113)


def test_random_mutations_of_a_valid_request_never_raise_anything_but_a_request_error() -> None:
    rng = random.Random(7)
    odd_values: list[Any] = [None, True, 0, -1, 1.5, "", "FP64", "x" * 2000, [], [1], [[1]], {}, {"a": 1},
                             [None] * 3, [1, "a", None], 10**30, -0.0]
    base = {"id": "r", "parameters": {"ids": ["a"]}, "inputs": [
        {"name": "f0", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "colour", "shape": [1, 1], "datatype": "BYTES", "data": [["red"]]}]}
    paths = [("id",), ("parameters",), ("parameters", "ids"), ("inputs",), ("inputs", 0), ("inputs", 1, "name"),
             ("inputs", 0, "shape"), ("inputs", 0, "datatype"), ("inputs", 0, "data"), ("inputs", 1, "shape"),
             ("inputs", 1, "datatype"), ("inputs", 1, "data"), ("inputs", 1, "data", 0)]
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(3000):
        payload = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            node = payload
            try:
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = json.loads(json.dumps(rng.choice(odd_values)))
            except (KeyError, IndexError, TypeError):
                continue
        try:
            parsed = oip.parse_infer(json.dumps(payload).encode(), MIXED)
            assert parsed.rows.shape[1] == 2 and all(len(i) <= oip.MAX_ID_LENGTH for i in parsed.row_ids)
            outcomes["ok"] += 1
        except oip.RequestError as exc:
            assert exc.status in (400, 422) and exc.message
            outcomes["refused"] += 1
    assert outcomes["ok"] > 0 and outcomes["refused"] > 1000


# --- prediction log ------------------------------------------------------------------------------------
def test_a_batch_rendered_over_the_line_bound_is_dropped_and_counted(tmp_path: Any) -> None:
    dropped: list[int] = []
    log = JsonlLog(lambda day: str(tmp_path / "p" / day.isoformat()), "pod", dropped.append, flush_seconds=0.05,
                   max_line_bytes=100)
    log.offer(2, lambda: b'{"a": 1}\n{"a": 2}\n')
    log.offer(1, lambda: b'{"a": "' + b"x" * 500 + b'"}\n')
    log.close()
    written = b"".join(p.read_bytes() for p in (tmp_path / "p").rglob("*.jsonl"))
    assert written == b'{"a": 1}\n{"a": 2}\n'
    assert dropped == [1]


def test_served_answers_are_counted_except_probes_and_scrapes() -> None:
    from noria_server.serve import ModelServer, ServeSettings

    server = ModelServer(ServeSettings(artifact_uri="file:///nowhere/model.skops", digest="sha256:" + "0" * 64,
                                       model="m", version="v1"))
    for path in ("/v2/health/ready", "/v2/health/live", "/metrics"):
        server._count_response(Request("GET", path, b"", {}), 200)
    server._count_response(Request("POST", "/v2/models/m/infer", b"", {}), 200)
    server._count_response(None, 431)
    server._count_response(Request("POST", "/v2/models/m/infer", b"", {}), 500)
    text = server.metrics.exposition().decode()
    counts = {line.split('code="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("noria_requests_total{")}
    assert counts == {"200": 1.0, "500": 1.0, "431": 1.0}
    assert 'noria_http_limit_total{limit="connections",model="m",version="v1"} 0.0' in text
    assert np.isfinite(float(text.split("noria_http_connections{")[1].split("} ")[1].split()[0]))
