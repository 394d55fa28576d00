"""The router's shadow comparison without decoding answers whose outputs are the same bytes.

Given pairs of primary/shadow answers (byte-identical, differing only in ``model_version``, differing
outputs, binary tensor answers, NaN predictions, no predictions, a failed shadow), when the router
counts their agreement, then the counts are exactly those of decoding both answers and comparing
their rows (the way it was done before), and an outputs part seen before is not decoded again.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
from noria_server import route
from noria_server.oip import compare, predictions_of
from noria_server.route import Router, RouterSettings, same_outputs


def answer(version: str, data: list[Any], request_id: str = "r-1", datatype: str = "INT64") -> bytes:
    return orjson.dumps({"model_name": "churn", "model_version": version, "id": request_id,
                         "parameters": {"ids": orjson.dumps([f"{request_id}-{i}" for i in range(len(data))]).decode()},
                         "outputs": [{"name": "predict", "shape": [len(data)], "datatype": datatype, "data": data}]})


def binary_answer(version: str, values: list[float]) -> bytes:
    raw = struct.pack(f"<{len(values)}d", *values)
    header = orjson.dumps({"model_name": "churn", "model_version": version, "outputs": [
        {"name": "predict", "shape": [len(values)], "datatype": "FP64", "parameters": {"binary_data_size": len(raw)}}]})
    return header + raw


def before(primary: bytes, shadow: bytes | None) -> tuple[int, int, int] | None:
    """The comparison as the router made it before: decode both, compare the rows."""
    primary_rows = predictions_of(primary)
    if primary_rows is None:
        return None
    shadow_rows = None if shadow is None else predictions_of(shadow)
    if shadow_rows is None:
        return 0, 0, max(len(primary_rows), 1)
    return (*compare(primary_rows, shadow_rows), 0)


CASES = {
    "byte-identical": (answer("v1", [1, 0, 1]), answer("v1", [1, 0, 1])),
    "other version, same outputs": (answer("v1", [1, 0, 1]), answer("churn-v3-longer", [1, 0, 1])),
    "other version, other outputs": (answer("v1", [1, 0, 1]), answer("v3", [1, 1, 1])),
    "other row count": (answer("v1", [1, 0]), answer("v3", [1, 0, 1])),
    "other request id": (answer("v1", [1], "a"), answer("v3", [1], "b")),
    "floats within tolerance": (answer("v1", [0.5], datatype="FP64"), answer("v3", [0.5 * (1 + 1e-9)], datatype="FP64")),
    "binary, same outputs": (binary_answer("v1", [1.0, 2.0]), binary_answer("v3", [1.0, 2.0])),
    "binary, other outputs": (binary_answer("v1", [1.0, 2.0]), binary_answer("v3", [1.0, 3.0])),
    "binary NaN, same bytes": (binary_answer("v1", [math.nan, 2.0]), binary_answer("v3", [math.nan, 2.0])),
    "no predictions": (b'{"outputs":[{"name":"predict_proba","data":[0.1]}]}',
                       b'{"outputs":[{"name":"predict_proba","data":[0.1]}]}'),
    "empty rows": (answer("v1", []), answer("v3", [])),
    "shadow failed": (answer("v1", [1, 0]), None),
    "shadow answered an error": (answer("v1", [1, 0]), b'{"error":"boom"}'),
    "identical, pretty-printed": (b'{"outputs" : [{"name": "predict", "data": [1, 2]}]}',) * 2,
    "outputs text inside a string": (b'{"model_version":"x\\"outputs\\":","outputs":[{"name":"predict","data":[1]}]}',
                                     b'{"outputs":[{"name":"predict","data":[2]}]}'),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_counts_are_those_of_decoding_both_answers(name: str) -> None:
    primary, shadow = CASES[name]
    router = Router(RouterSettings())
    expected = before(primary, shadow)
    assert router._agreement(primary, shadow) == expected
    assert router._agreement(primary, shadow) == expected  # again, from what was kept


def test_the_nan_case_still_disagrees_and_the_cases_differ() -> None:
    primary, shadow = CASES["binary NaN, same bytes"]
    assert Router(RouterSettings())._agreement(primary, shadow) == (1, 1, 0)
    primary, shadow = CASES["other version, other outputs"]
    assert Router(RouterSettings())._agreement(primary, shadow) == (2, 1, 0)


def test_repeated_outputs_are_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []

    def counting(body: bytes) -> list[Any] | None:
        decoded.append(body)
        return predictions_of(body)

    monkeypatch.setattr(route, "predictions_of", counting)
    router = Router(RouterSettings())
    for request_id in ("a", "b", "c"):  # same rows, differing version and request id before "outputs"
        assert router._agreement(answer("v1", [1], request_id), answer("v3", [1], request_id)) == (1, 0, 0)
    assert len(decoded) == 1
    router._agreement(answer("v1", [1]), answer("v3", [0]))
    assert len(decoded) == 3  # differing outputs: both decoded


def test_same_outputs_needs_the_key_and_equal_tails() -> None:
    assert same_outputs(b'{"a":1,"outputs":[1]}', b'{"b":22,"outputs":[1]}') == b'"outputs":[1]}'
    assert same_outputs(b'{"a":1,"outputs":[1]}', b'{"a":1,"outputs":[2]}') is None
    assert same_outputs(b'{"a":1,"outputs":[1]}', b'{"a":1,"outputs":[1,2]}') is None
    assert same_outputs(b'{"a":"x outputs":[1]}', b'{"a":"x outputs":[1]}') is None  # no key here
    assert same_outputs(b'"outputs":[1]', b'"outputs":[1]') is None
