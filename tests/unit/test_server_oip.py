"""OIP v2 request parsing and answers (noria_server.oip): every malformed kind names what is wrong."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from noria_server import oip

NUMERIC = oip.Schema(("a", "b", "c"))
MIXED = oip.Schema(("a", "seg"), frozenset({"seg"}))


def body(**payload: object) -> bytes:
    return orjson.dumps(payload)


def test_one_input_per_feature_in_any_order_gives_rows_in_model_order() -> None:
    req = oip.parse_infer(body(id="r1", inputs=[
        {"name": "c", "shape": [2], "datatype": "FP64", "data": [3, 30]},
        {"name": "a", "shape": [2, 1], "datatype": "FP32", "data": [[1], [10]]},
        {"name": "b", "shape": [2], "datatype": "INT64", "data": [2, None]},
    ]), NUMERIC)
    assert req.request_id == "r1"
    assert req.row_ids == ["r1-0", "r1-1"]
    assert req.rows.dtype == np.float64
    assert req.rows[0].tolist() == [1, 2, 3]
    assert req.rows[1, 0] == 10 and math.isnan(req.rows[1, 1]) and req.rows[1, 2] == 30


def test_single_2d_input_flat_or_nested() -> None:
    nested = oip.parse_infer(body(inputs=[{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                           "data": [[1, 2, 3], [4, 5, 6]]}]), NUMERIC)
    flat = oip.parse_infer(body(inputs=[{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                         "data": [1, 2, 3, 4, 5, 6]}]), NUMERIC)
    assert nested.rows.tolist() == flat.rows.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_one_row_uses_the_request_id_and_header_id_is_the_fallback() -> None:
    req = oip.parse_infer(body(inputs=[{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]),
                          NUMERIC, header_id="from-header")
    assert req.request_id == "from-header" and req.row_ids == ["from-header"]
    generated = oip.parse_infer(body(inputs=[{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                              "data": [1, 2, 3]}]), NUMERIC)
    assert len(generated.request_id) == 24 and generated.row_ids == [generated.request_id]


def test_client_row_ids_are_used() -> None:
    req = oip.parse_infer(body(parameters={"ids": ["u1", "u2"]}, inputs=[
        {"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]), NUMERIC)
    assert req.row_ids == ["u1", "u2"]


def test_mixed_schema_keeps_strings_and_floats() -> None:
    req = oip.parse_infer(body(inputs=[
        {"name": "seg", "shape": [2], "datatype": "BYTES", "data": ["gold", None]},
        {"name": "a", "shape": [2], "datatype": "FP64", "data": [1.5, 2]},
    ]), MIXED)
    assert req.rows.dtype == object
    assert req.rows[:, 1].tolist() == ["gold", None] and req.rows[:, 0].tolist() == [1.5, 2.0]
    matrix = oip.parse_infer(body(inputs=[{"name": "x", "shape": [1, 2], "datatype": "BYTES",
                                           "data": [[3, "silver"]]}]), MIXED)
    assert matrix.rows.tolist() == [[3.0, "silver"]]


MALFORMED = [
    (b"", 400, "empty request body"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (body(), 400, "'inputs' must be a non-empty list"),
    (body(inputs=[]), 400, "'inputs' must be a non-empty list"),
    (body(inputs=["a"]), 400, "inputs[0] must be an object"),
    (body(inputs=[{"name": "a", "shape": [1], "datatype": "FP64"}]), 400, "inputs[0] has no 'data'"),
    (body(inputs=[{"name": 3, "shape": [1], "datatype": "FP64", "data": [1]}]), 400, "name must be a string"),
    (body(inputs=[{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]), 422,
     "has 2 columns but the model takes 3 features"),
    (body(inputs=[{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "needs 6 values, got 3"),
    (body(inputs=[{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, "two", 3]}]), 422,
     "value #1 ('two') is not a number"),
    (body(inputs=[{"name": "x", "shape": [1, 3], "datatype": "FLOAT", "data": [1, 2, 3]}]), 422,
     "unknown datatype 'FLOAT'"),
    (body(inputs=[{"name": "x", "shape": "1,3", "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "shape must be a non-empty list"),
    (body(inputs=[{"name": "x", "shape": [-1, 3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "shape must be a non-empty list of non-negative"),
    (body(inputs=[{"name": "x", "shape": [1, -3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "shape must be a non-empty list of non-negative"),
    (body(inputs=[{"name": "x", "shape": [True, 3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "shape must be a non-empty list of non-negative"),
    (body(inputs=[{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, {"v": 2}, 3]}]), 422,
     "value #1 ({'v': 2}) is not a number"),
    (body(inputs=[{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                  {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]), 422, "missing feature(s): c"),
    (body(inputs=[{"name": n, "shape": [1], "datatype": "FP64", "data": [1]} for n in ("a", "b", "c", "zz")]),
     422, "unknown input(s) zz"),
    (body(inputs=[{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                  {"name": "b", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                  {"name": "c", "shape": [1], "datatype": "FP64", "data": [1]}]), 422, "'b' has 2 rows but 'a' has 1"),
    (body(inputs=[{"name": n, "shape": [1, 2], "datatype": "FP64", "data": [1, 2]} for n in ("a", "b", "c")]),
     422, "is not [n] or [n, 1]"),
    (body(inputs=[{"name": n, "shape": [1], "datatype": "BYTES", "data": ["x"]} for n in ("a", "b", "c")]),
     422, "numeric feature: send a numeric datatype"),
    (body(inputs=[{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}] * 2), 422, "given twice"),
    (body(id={"x": 1}, inputs=[{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     "'id' must be a string"),
    (body(parameters={"ids": ["only-one"]}, inputs=[{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                                      "data": [1, 2, 3, 4, 5, 6]}]), 422, "parameters.ids"),
    (body(inputs=[{"name": "x", "shape": [0, 3], "datatype": "FP64", "data": []}]), 422, "no rows"),
    (body(inputs=[{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], 4, 5, 6]}]), 422,
     "mixes nested lists and scalars"),
]


@pytest.mark.parametrize(("payload", "status", "message"), MALFORMED, ids=[m for _, _, m in MALFORMED])
def test_malformed_requests_are_refused_with_a_message_naming_the_problem(payload: bytes, status: int,
                                                                          message: str) -> None:
    with pytest.raises(oip.RequestError) as err:
        oip.parse_infer(payload, NUMERIC)
    assert err.value.status == status
    assert message in err.value.message


def test_categorical_feature_refuses_numbers() -> None:
    with pytest.raises(oip.RequestError, match="categorical feature: send datatype BYTES"):
        oip.parse_infer(body(inputs=[{"name": "seg", "shape": [1], "datatype": "FP64", "data": [1]},
                                     {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}]), MIXED)


def test_answer_carries_ids_version_and_typed_outputs() -> None:
    both = (oip.RequestedOutput("predict", False), oip.RequestedOutput("predict_proba", False))
    req = oip.InferRequest("r", ["r-0", "r-1"], np.zeros((2, 3)), both)
    answer, header_length = oip.infer_response("churn", "churn-v3", req, np.array([0, 1]),
                                               np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 1])
    assert header_length is None
    out = orjson.loads(answer)
    assert out["id"] == "r" and out["model_version"] == "churn-v3" and oip.row_ids(out) == ["r-0", "r-1"]
    assert out["outputs"][0] == {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 1]}
    assert out["outputs"][1]["shape"] == [2, 2] and out["outputs"][1]["data"] == [0.9, 0.1, 0.2, 0.8]
    assert out["outputs"][1]["parameters"] == {"classes": "[0,1]"}  # parameter values are scalars
    assert oip.datatype_of(np.array(["a"], dtype=object)) == "BYTES"
    assert oip.datatype_of(np.array([1.5])) == "FP64"


def test_feedback_forms() -> None:
    assert oip.parse_feedback(b'{"id": "a", "label": 1}') == [oip.Feedback("a", 1)]
    assert oip.parse_feedback(b'{"feedback": [{"id": "a", "label": "x"}, {"id": 7, "label": 2.5}]}') == [
        oip.Feedback("a", "x"), oip.Feedback("7", 2.5)]
    assert oip.parse_feedback(b'[{"id": "a", "label": 0}]') == [oip.Feedback("a", 0)]
    for bad, message in ((b'{"id": "a"}', "'id' and 'label'"), (b'{"feedback": []}', "non-empty list"),
                         (b'{"id": "", "label": 1}', "non-empty string"), (b'{"id": "a", "label": [1]}', "scalar"),
                         (b'nope', "not valid JSON")):
        with pytest.raises(oip.RequestError, match=message.replace("[", r"\[")):
            oip.parse_feedback(bad)
