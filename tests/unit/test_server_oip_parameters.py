"""OIP v2 parameters in the model server's answers are of the protocol's kinds only (string, number,
boolean; no list, object or null), and the row ids travel as a JSON array in a string that
``oip.row_ids`` reads back. In-process ModelServer with real fitted models, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from noria_server import oip
from noria_server.httpserver import Request
from noria_server.serve import ModelServer
from server_helpers import fitted_server, handled

ROWS = [[0.5, 0.1, -0.2], [-1.0, 0.3, 0.7], [2.0, -0.4, 0.0]]


def _server(kind: str) -> ModelServer:
    server = fitted_server(kind)
    server.model.warm_up(max_batch=8, rounds=1)  # decides whether predict_proba is answered
    return server


def _call(
    server: ModelServer, method: str, path: str, payload: Any = None
) -> tuple[int, Any, dict[bytes, bytes]]:
    request = Request(
        method=method,
        path=path,
        query=b"",
        headers={},
        body=orjson.dumps(payload) if payload is not None else b"",
    )

    response = asyncio.run(handled(server, request))
    headers = dict(response.headers)
    length = headers.get(oip.HEADER_INFERENCE_HEADER_LENGTH.encode())
    header = response.body[: int(length)] if length is not None else response.body
    return response.status, orjson.loads(header), headers


def _parameter_values(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """Every value of every ``parameters`` object anywhere in a JSON document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "parameters":
                assert isinstance(value, dict), f"{path}.parameters is a {type(value).__name__}"
                for name, item in value.items():
                    yield f"{path}.parameters.{name}", item
            else:
                yield from _parameter_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _parameter_values(value, f"{path}[{i}]")


def _assert_protocol_kinds(document: Any) -> int:
    values = list(_parameter_values(document))
    wrong = [(where, v) for where, v in values if not isinstance(v, (str, int, float, bool))]
    assert not wrong, f"parameter values the protocol does not have (list, object, null): {wrong}"
    return len(values)


def _infer_body(outputs: list[dict[str, Any]], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "r",
        "inputs": [{"name": "x", "shape": [len(ROWS), 3], "datatype": "FP64", "data": ROWS}],
        "outputs": outputs,
    }
    if parameters:
        body["parameters"] = parameters
    return body


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_metadata_parameters_are_strings_numbers_or_booleans(kind: str) -> None:
    status, metadata, _ = _call(_server(kind), "GET", "/v2/models/m")
    assert status == 200
    assert _assert_protocol_kinds(metadata) >= 1


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_infer_answer_parameters_are_strings_numbers_or_booleans(kind: str, binary: bool) -> None:
    server = _server(kind)
    names = [oip.OUTPUT_PREDICT] + ([oip.OUTPUT_PROBA] if kind == "classifier" else [])
    status, answer, headers = _call(
        server,
        "POST",
        "/v2/models/m/infer",
        _infer_body([{"name": n, "parameters": {"binary_data": binary}} for n in names]),
    )
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == names
    assert (oip.HEADER_INFERENCE_HEADER_LENGTH.encode() in headers) is binary
    assert _assert_protocol_kinds(answer) >= 1
    assert isinstance(answer["parameters"]["ids"], str)
    assert oip.row_ids(answer) == ["r-0", "r-1", "r-2"]


@pytest.mark.parametrize("sent", [["u1", "u2", "u3"], '["u1","u2","u3"]'], ids=["list", "json-string"])
def test_client_ids_as_a_list_or_a_json_string_come_back_as_a_json_string(sent: Any) -> None:
    status, answer, _ = _call(
        _server("classifier"),
        "POST",
        "/v2/models/m/infer",
        _infer_body([{"name": oip.OUTPUT_PREDICT}], ids=sent),
    )
    assert status == 200, answer
    assert answer["parameters"]["ids"] == '["u1","u2","u3"]'
    assert oip.row_ids(answer) == ["u1", "u2", "u3"]


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        ("u1", "list of 3 strings"),  # a plain string is not a JSON array
        ('["u1","u2"]', "list of 3 strings.*; got 2"),
        ('["u1","u2",', "list of 3 strings"),
        ('{"a": 1}', "list of 3 strings"),
        ('["u1","u2",3.5]', r"parameters.ids\[2\] must be a string"),
    ],
)
def test_malformed_string_ids_are_422_naming_them(sent: str, message: str) -> None:
    with pytest.raises(oip.RequestError, match=message) as refused:
        oip.parse_infer(orjson.dumps(_infer_body([], ids=sent)), oip.Schema(("a", "b", "c")))
    assert refused.value.status == 422


def test_row_ids_reads_both_forms_and_refuses_an_answer_without_ids() -> None:
    assert oip.row_ids({"parameters": {"ids": '["a","b"]'}}) == ["a", "b"]
    assert oip.row_ids({"parameters": {"ids": ["a", "b"]}}) == ["a", "b"]  # servers before the string form
    for answer in ({}, {"parameters": {}}, {"parameters": {"ids": "a"}}, {"parameters": {"ids": "[1]"}}):
        with pytest.raises(ValueError, match="parameters.ids"):
            oip.row_ids(answer)
