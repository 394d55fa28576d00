"""The binary tensor data extension and requested outputs (noria_server.oip), with bodies built and
answers read by tritonclient's own encoder and decoder (what real clients send and expect)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from noria_server import oip
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput, InferResult

NUMERIC = oip.Schema(("a", "b", "c"))
MIXED = oip.Schema(("a", "seg"), frozenset({"seg"}))
BOTH = oip.output_names(proba_is_free=True)


def triton_body(
    inputs: list[InferInput],
    outputs: list[InferRequestedOutput] | None = None,
) -> tuple[bytes, str | None]:
    body, json_size = InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, None if json_size is None else str(json_size)


def feature(name: str, values: np.ndarray, datatype: str, binary: bool = True) -> InferInput:
    tensor = InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=binary)
    return tensor


@pytest.mark.parametrize(
    "datatype, dtype",
    [
        ("FP32", np.float32),
        ("FP64", np.float64),
        ("INT64", np.int64),
        ("INT32", np.int32),
        ("BOOL", np.bool_),
    ],
)
def test_binary_per_feature_inputs_give_the_same_rows_as_json(datatype: str, dtype: type) -> None:
    columns = {name: np.array([1, 0, 1], dtype=dtype) * (i + 1) for i, name in enumerate(("a", "b", "c"))}
    if dtype is np.bool_:
        columns = {name: np.array([True, False, True]) for name in columns}
    body, length = triton_body([feature(n, v, datatype) for n, v in columns.items()])
    assert length is not None
    binary = oip.parse_infer(body, NUMERIC, header_length=length)
    as_json = oip.parse_infer(
        triton_body([feature(n, v, datatype, binary=False) for n, v in columns.items()])[0], NUMERIC
    )
    assert binary.rows.dtype == np.float64
    assert (
        binary.rows.tolist()
        == as_json.rows.tolist()
        == np.column_stack(list(columns.values())).astype(np.float64).tolist()
    )


def test_binary_matrix_and_bytes_columns() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = triton_body([feature("x", matrix, "FP32")])
    assert oip.parse_infer(body, NUMERIC, header_length=length).rows.tolist() == matrix.tolist()
    segments = np.array([b"gold", "sé".encode()], dtype=np.object_)
    body, length = triton_body(
        [feature("a", np.array([1.5, 2.5]), "FP64"), feature("seg", segments, "BYTES")]
    )
    rows = oip.parse_infer(body, MIXED, header_length=length).rows
    assert rows.tolist() == [[1.5, "gold"], [2.5, "sé"]]


@pytest.mark.parametrize(
    "mangle, header_length, message",
    [
        (lambda b: b, None, "binary tensor extension needs the inference-header-content-length header"),
        (lambda b: b + b"\0", "keep", "1 bytes of binary data no input claims"),
        (lambda b: b[:-1], "keep", "runs past the body"),
        (lambda b: b, "abc", "must be a number of bytes"),
        (lambda b: b, "100000", "but the body has"),
    ],
    ids=["no-header", "extra-bytes", "short-body", "length-not-a-number", "length-past-body"],
)
def test_malformed_binary_bodies_are_400_naming_the_problem(mangle, header_length, message) -> None:
    body, length = triton_body([feature("x", np.zeros((1, 3)), "FP64")])
    with pytest.raises(oip.RequestError, match=message) as refused:
        oip.parse_infer(
            mangle(body), NUMERIC, header_length=length if header_length == "keep" else header_length
        )
    assert refused.value.status == 400


def test_bytes_element_past_its_data_is_refused() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "seg", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
                {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
            ]
        }
    )
    with pytest.raises(oip.RequestError, match="claims 9 bytes"):
        oip.parse_infer(header + (9).to_bytes(4, "little") + b"ab", MIXED, header_length=str(len(header)))


def test_only_requested_outputs_in_the_requested_form() -> None:
    rows = [feature("x", np.zeros((2, 3)), "FP64")]
    everything = oip.parse_infer(
        triton_body(rows)[0], NUMERIC, header_length=triton_body(rows)[1], available_outputs=BOTH
    )
    # tritonclient asks for every output in binary when it names none (binary_data_output).
    assert everything.outputs == (
        oip.RequestedOutput("predict", True),
        oip.RequestedOutput("predict_proba", True),
    )
    only_predict = oip.parse_infer(
        *_with_length(triton_body(rows, [InferRequestedOutput("predict", False)])), available_outputs=BOTH
    )
    assert only_predict.outputs == (oip.RequestedOutput("predict", False),)
    json_request = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
    assert oip.parse_infer(orjson.dumps(json_request), NUMERIC, available_outputs=BOTH).outputs == (
        oip.RequestedOutput("predict", False),
        oip.RequestedOutput("predict_proba", False),
    )
    with pytest.raises(oip.RequestError, match="unknown output 'predict_proba'; this model answers predict"):
        oip.parse_infer(orjson.dumps({**json_request, "outputs": [{"name": "predict_proba"}]}), NUMERIC)


def _with_length(built: tuple[bytes, str | None]) -> tuple[bytes, oip.Schema, None, str | None]:
    return built[0], NUMERIC, None, built[1]


@pytest.mark.parametrize(
    "predictions",
    [
        np.array([0, 2]),
        np.array(["no", "yes"], dtype=object),
        np.array([0.25, -1.5]),
        np.array([True, False]),
    ],
    ids=["INT64", "BYTES", "FP64", "BOOL"],
)
def test_binary_answers_read_back_by_tritonclient(predictions: np.ndarray) -> None:
    proba = np.array([[0.9, 0.1], [0.3, 0.7]])
    request = oip.InferRequest(
        "r",
        ["r-0", "r-1"],
        np.zeros((2, 3)),
        (oip.RequestedOutput("predict_proba", True), oip.RequestedOutput("predict", True)),
    )
    body, header_length = oip.infer_response("m", "v1", request, predictions, proba, ["no", "yes"])
    assert header_length is not None
    result = InferResult.from_response_body(body, header_length=header_length)
    decoded = result.as_numpy("predict")
    expected = predictions.astype(object) if predictions.dtype == object else predictions
    assert [v.decode() if isinstance(v, bytes) else v for v in decoded.tolist()] == expected.tolist()
    assert result.as_numpy("predict_proba").tolist() == proba.tolist()
    assert oip.predictions_of(body) == predictions.tolist()  # the router's shadow comparison, header-less


def test_metadata_datatype_matches_the_answer() -> None:
    for classes, predictions in (
        ([0, 1], np.array([0, 1])),
        (["a", "b"], np.array(["a", "b"], dtype=object)),
        ([False, True], np.array([False, True])),
    ):
        assert oip.predict_datatype(True, classes) == oip.datatype_of(predictions)
    assert oip.predict_datatype(False, None) == oip.datatype_of(np.array([0.5])) == "FP64"
