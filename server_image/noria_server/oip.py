"""Open Inference Protocol v2 (REST) for tabular models: request parsing and answer building.

Pure functions, no I/O, so every malformed-request rule has a unit test.

Accepted ``POST /v2/models/{name}/infer`` bodies (the KServe / MLServer / Triton REST shape):

- **one input per feature** — ``{"inputs": [{"name": "<feature>", "shape": [n] or [n, 1],
  "datatype": "FP64", "data": [...]}, ...]}``; every feature the model was fitted on must be
  present (order does not matter), and no unknown names. This is what MLServer's pandas codec sends.
- **one 2-D input** — ``{"inputs": [{"name": "<anything>", "shape": [n, F], "datatype": "FP64",
  "data": [[...], ...] or flat}]}`` with the F columns in the model's feature order
  (``GET /v2/models/{name}`` lists it).

Numeric features take FP16/FP32/FP64/INT*/UINT*/BOOL data, ``null`` meaning missing (NaN, which
the model's imputer, if any, handles). Categorical features (per the drift profile) take BYTES
(strings). ``data`` is row-major, flat or nested to match ``shape``.

The request ``id`` (string) is echoed; when absent the server uses the ``x-request-id`` header or
makes one. Each row has its own prediction id, the key that feedback refers to: one row → the
request id; n rows → ``<id>-<i>``, unless ``parameters.ids`` gives n ids (a JSON array of strings
in a string, the form answers use, or, as older clients send it, a list).

What a request can make the server keep is bounded here (docs/security/http.md): every prediction
id is at most ``MAX_ID_LENGTH`` printable characters (a request ``id`` at most
``MAX_REQUEST_ID_LENGTH``, so ``<id>-<i>`` fits), ``parameters.ids`` has exactly one id per row, and
a categorical value is at most ``MAX_STRING_VALUE_LENGTH`` characters; the prediction log and the
feedback ledger keep nothing longer. Every malformed field is a 400/422 naming it, never a 500.

Tensors may come in the binary tensor data extension instead (``Inference-Header-Content-Length``
header, ``parameters.binary_data_size`` per input; what tritonclient and the kserve SDK send by
default): numeric ones are decoded with ``numpy.frombuffer`` (no per-value Python work), BYTES
ones are 4-byte little-endian lengths each followed by UTF-8 text.

Answer: ``{"model_name", "model_version", "id", "parameters": {"ids": "<JSON array>"}, "outputs":
[{"name": "predict", "shape": [n], "datatype", "data"}, {"name": "predict_proba", "shape": [n, C],
"datatype": "FP64", "data", "parameters": {"classes": "<JSON array>"}}]}`` — ``predict_proba`` only
for classifiers whose ``predict`` equals the argmax of ``predict_proba`` (checked at warm-up), which
makes it free. Only the requested ``outputs`` are answered, each as JSON ``data`` or binary (per
output ``parameters.binary_data``, or the request's ``parameters.binary_data_output``). Every
parameter value is a string, number or boolean, the only kinds the protocol has, so lists travel
as JSON in a string; ``row_ids`` reads an answer's ids back. What we support and why:
docs/serving/protocol.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

NUMERIC_DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                               "FP16", "FP32", "FP64"})
STRING_DATATYPES = frozenset({"BYTES"})
MAX_ID_LENGTH = 128  # any prediction id (a row's key for feedback)
MAX_REQUEST_ID_LENGTH = MAX_ID_LENGTH - 16  # room for "-<row>" in the ids derived from it
MAX_STRING_VALUE_LENGTH = 1024  # a categorical value; the model maps anything unknown to one bin anyway
MAX_NAME_LENGTH = 256  # an input tensor's name

# The binary tensor data extension: the JSON header's length in bytes; the tensors' bytes follow it.
HEADER_INFERENCE_HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = b"application/octet-stream"
OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"
# Little-endian, as the extension specifies; BYTES elements are a 4-byte little-endian length, then the bytes.
BINARY_DTYPES = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
                 "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_BYTES_LENGTH = 4


class RequestError(Exception):
    """A request the server will not run: ``status`` is 400 (unparsable) or 422 (does not fit the model)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Schema:
    """What the model expects: feature names in fit order, and which are categorical."""

    features: tuple[str, ...]
    categorical: frozenset[str] = frozenset()

    @property
    def all_numeric(self) -> bool:
        return not self.categorical


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool  # answered in the binary tensor data extension rather than as JSON ``data``


# A request that names no outputs gets every output the model answers: one shared tuple per
# (outputs, binary_data_output), at most a handful of keys.
_EVERY_OUTPUT: dict[tuple[tuple[str, ...], bool], tuple[RequestedOutput, ...]] = {}
_JSON_NUMBER_TYPES = frozenset({int, float, bool, type(None)})  # every one passes column_values' number check


@dataclass(slots=True)
class InferRequest:
    request_id: str
    row_ids: list[str]
    rows: np.ndarray  # shape (n, F) in schema order; float64 when all features are numeric, else object
    outputs: tuple[RequestedOutput, ...] = (RequestedOutput(OUTPUT_PREDICT, False),)


def new_id() -> str:
    return os.urandom(12).hex()


def output_names(proba_is_free: bool) -> tuple[str, ...]:
    """The outputs a model answers: ``predict_proba`` only where it is free (see the module doc)."""
    return (OUTPUT_PREDICT, OUTPUT_PROBA) if proba_is_free else (OUTPUT_PREDICT,)


def parse_infer(body: bytes, schema: Schema, header_id: str | None = None, header_length: str | None = None,
                available_outputs: Sequence[str] = (OUTPUT_PREDICT,)) -> InferRequest:
    """``header_length`` is the ``Inference-Header-Content-Length`` header: the JSON header is that
    many bytes and the binary tensors follow it, in input order, each ``binary_data_size`` bytes."""
    payload, inputs = read_inputs(body, header_length)
    outputs = requested_outputs(payload, available_outputs)

    single = inputs[0]
    shape0 = shape_of(single, 0)
    if len(inputs) == 1 and len(shape0) == 2 and (single["name"] not in schema.features or shape0[1] > 1):
        rows = _matrix_input(single, shape0, schema)
    else:
        rows = _per_feature_inputs(inputs, schema)

    request_id = request_id_of(payload.get("id"), header_id)
    row_ids = row_ids_of(payload.get("parameters"), request_id, rows.shape[0])
    return InferRequest(request_id, row_ids, rows, outputs)


def read_inputs(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request's JSON object and its checked ``inputs`` (each with name, shape, datatype and its
    ``data``, binary tensors decoded), before they are matched with the model's features."""
    if not body:
        raise RequestError(400, "empty request body: expected a JSON object with an 'inputs' list")
    header, binary = _split_binary(body, header_length)
    try:
        payload = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = ("" if header_length is not None else
                f"; a body in the binary tensor extension needs the {HEADER_INFERENCE_HEADER_LENGTH} header")
        raise RequestError(400, f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(payload).__name__}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors")
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype, data")
        for key in ("name", "shape", "datatype"):
            if key not in tensor:
                raise RequestError(400, f"inputs[{i}] has no '{key}'")
        if "data" not in tensor and _binary_size(tensor, i) is None:
            raise RequestError(400, f"inputs[{i}] has no 'data' (nor parameters.binary_data_size)")
        if not isinstance(tensor["name"], str):
            raise RequestError(400, f"inputs[{i}].name must be a string, got {type(tensor['name']).__name__}")
        if len(tensor["name"]) > MAX_NAME_LENGTH:
            raise RequestError(422, f"inputs[{i}].name is longer than {MAX_NAME_LENGTH} characters")
        if not isinstance(tensor["datatype"], str):
            raise RequestError(422, f"inputs[{i}].datatype must be a string such as \"FP64\", "
                                    f"got {type(tensor['datatype']).__name__}")

    _attach_binary(inputs, binary)
    return payload, inputs


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise RequestError(400, f"{HEADER_INFERENCE_HEADER_LENGTH} must be a number of bytes, "
                                f"got {header_length!r:.40}") from None
    if not 0 < length <= len(body):
        raise RequestError(400, f"{HEADER_INFERENCE_HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
    view = memoryview(body)
    return view[:length], view[length:]


def _binary_size(tensor: dict[str, Any], index: int) -> int | None:
    parameters = tensor.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise RequestError(400, f"inputs[{index}].parameters must be an object, got {type(parameters).__name__}")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(400, f"inputs[{index}].parameters.binary_data_size must be a non-negative integer, "
                                f"got {size!r:.40}")
    return size


def _attach_binary(inputs: list[dict[str, Any]], binary: memoryview) -> None:
    """Give every input sent as binary its ``data``: the next ``binary_data_size`` bytes, decoded
    (numeric: an array over the body's bytes, no copy; BYTES: a list of strings)."""
    offset = 0
    for i, tensor in enumerate(inputs):
        size = _binary_size(tensor, i)
        if size is None:
            continue
        if "data" in tensor:
            raise RequestError(400, f"input '{tensor['name']}' has both 'data' and parameters.binary_data_size")
        if offset + size > len(binary):
            raise RequestError(400, f"input '{tensor['name']}': binary_data_size {size} runs past the body's "
                                    f"{len(binary)} bytes of binary data")
        tensor["data"] = _decode_binary(tensor, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise RequestError(400, f"the body has {len(binary) - offset} bytes of binary data no input claims "
                                f"(binary_data_size)")


def _decode_binary(tensor: dict[str, Any], raw: memoryview) -> np.ndarray | list[Any]:
    name, datatype = tensor["name"], tensor["datatype"]
    if datatype == "BYTES":
        return _decode_bytes_elements(name, raw)
    dtype = BINARY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(422, f"input '{name}': datatype {datatype!r:.40} cannot be sent as binary data; use one "
                                f"of {', '.join(BINARY_DTYPES)} or BYTES")
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise RequestError(422, f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(raw, dtype=dtype)


def _decode_bytes_elements(name: str, raw: memoryview) -> list[Any]:
    values: list[Any] = []
    offset = 0
    while offset < len(raw):
        if offset + _BYTES_LENGTH > len(raw):
            raise RequestError(422, f"input '{name}': BYTES data ends inside an element's 4-byte length")
        length = int.from_bytes(raw[offset:offset + _BYTES_LENGTH], "little")
        offset += _BYTES_LENGTH
        if offset + length > len(raw):
            raise RequestError(422, f"input '{name}': BYTES element #{len(values)} claims {length} bytes, "
                                    f"past the end of its data")
        try:
            values.append(bytes(raw[offset:offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(422, f"input '{name}': BYTES element #{len(values)} is not UTF-8 text") from None
        offset += length
    return values


def requested_outputs(payload: dict[str, Any], available: Sequence[str]) -> tuple[RequestedOutput, ...]:
    """The outputs to answer, each JSON or binary: the request's ``outputs`` (all when absent or
    empty); an output's ``parameters.binary_data`` wins over the request's ``binary_data_output``."""
    parameters = payload.get("parameters")
    default_binary = parameters.get("binary_data_output", False) if isinstance(parameters, dict) else False
    if not isinstance(default_binary, bool):
        raise RequestError(400, f"parameters.binary_data_output must be true or false, got {default_binary!r:.40}")
    requested = payload.get("outputs")
    if not requested:
        key = (tuple(available), default_binary)
        every = _EVERY_OUTPUT.get(key)
        if every is None:
            every = _EVERY_OUTPUT[key] = tuple(RequestedOutput(name, default_binary) for name in available)
        return every
    if not isinstance(requested, list):
        raise RequestError(400, f"'outputs' must be a list of {{\"name\": ...}} objects, got "
                                f"{type(requested).__name__}")
    outputs: list[RequestedOutput] = []
    for i, output in enumerate(requested):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise RequestError(400, f"outputs[{i}] must be an object with a string 'name'")
        if name not in available:
            raise RequestError(400, f"unknown output {name!r:.80}; this model answers {', '.join(available)}")
        if any(o.name == name for o in outputs):
            raise RequestError(400, f"output {name!r} is requested twice")
        out_parameters = output.get("parameters") or {}
        binary = out_parameters.get("binary_data", default_binary) if isinstance(out_parameters, dict) else None
        if not isinstance(binary, bool):
            raise RequestError(400, f"outputs[{i}].parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(name, binary))
    return tuple(outputs)


def shape_of(tensor: dict[str, Any], index: int) -> list[int]:
    shape = tensor["shape"]
    if type(shape) is list and len(shape) == 2 and type(shape[0]) is int and type(shape[1]) is int \
            and shape[0] >= 0 and shape[1] >= 0:  # the common [n, F] without a generator
        return shape
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError(422, f"input '{tensor['name']}': shape must be a non-empty list of non-negative "
                                f"integers, got {shape!r}")
    return shape


def column_values(tensor: dict[str, Any], expected: int, categorical: bool) -> np.ndarray:
    """The tensor's data as a flat array, checked against its datatype and element count."""
    name, datatype, data = tensor["name"], tensor["datatype"], tensor["data"]
    if isinstance(data, np.ndarray):  # numeric binary data, already checked against its datatype
        if data.size != expected:
            raise RequestError(422, f"input '{name}': shape {tensor['shape']} needs {expected} values, "
                                    f"got {data.size}")
        if categorical:
            raise RequestError(422, f"input '{name}' is a categorical feature: send datatype BYTES (strings), "
                                    f"not {datatype}")
        return data.astype(np.float64)
    if not isinstance(data, list):
        raise RequestError(422, f"input '{name}': data must be a list, got {type(data).__name__}")
    if data and isinstance(data[0], list):
        try:
            data = [v for row in data for v in row]
        except TypeError:
            raise RequestError(422, f"input '{name}': data mixes nested lists and scalars") from None
    if len(data) != expected:
        raise RequestError(422, f"input '{name}': shape {tensor['shape']} needs {expected} values, got {len(data)}")
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES | STRING_DATATYPES:
        raise RequestError(422, f"input '{name}': unknown datatype {datatype!r:.80}; use one of FP64, FP32, "
                                f"INT64, INT32, BOOL, BYTES, ...")
    if categorical:
        if datatype not in STRING_DATATYPES:
            raise RequestError(422, f"input '{name}' is a categorical feature: send datatype BYTES (strings), "
                                    f"not {datatype}")
        for j, v in enumerate(data):
            if v is not None and not isinstance(v, str):
                raise RequestError(422, f"input '{name}': value #{j} ({v!r:.80}) is not a string")
            if v is not None and len(v) > MAX_STRING_VALUE_LENGTH:
                raise RequestError(422, f"input '{name}': value #{j} is longer than {MAX_STRING_VALUE_LENGTH} "
                                        f"characters")
        return np.array(data, dtype=object)
    if datatype in STRING_DATATYPES:
        raise RequestError(422, f"input '{name}' is a numeric feature: send a numeric datatype (FP64, INT64, ...), "
                                f"not BYTES")
    if not _JSON_NUMBER_TYPES.issuperset(map(type, data)):  # what JSON gives; anything else checked one by one
        for j, v in enumerate(data):
            if not (v is None or isinstance(v, (int, float))):
                raise RequestError(422, f"input '{name}': value #{j} ({v!r:.80}) is not a number "
                                        f"(datatype {datatype})")
    return np.array(data, dtype=np.float64)


def _matrix_input(tensor: dict[str, Any], shape: list[int], schema: Schema) -> np.ndarray:
    n, width = shape
    if width != len(schema.features):
        raise RequestError(422, f"input '{tensor['name']}': shape [{n}, {width}] has {width} columns but the "
                                f"model takes {len(schema.features)} features: {', '.join(schema.features)}")
    if n == 0:
        raise RequestError(422, f"input '{tensor['name']}': no rows (shape {shape})")
    data = tensor["data"]
    if schema.all_numeric:
        flat = column_values(tensor, n * width, categorical=False)
        return flat.reshape(n, width)
    # Mixed feature kinds in one tensor: check column by column.
    if not isinstance(tensor["datatype"], str) or tensor["datatype"] not in NUMERIC_DATATYPES | STRING_DATATYPES:
        raise RequestError(422, f"input '{tensor['name']}': unknown datatype {tensor['datatype']!r:.80}; a table with "
                                f"categorical columns is sent as BYTES")
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list):
        raise RequestError(422, f"input '{tensor['name']}': data must be a list, got {type(data).__name__}")
    if data and isinstance(data[0], list):
        data = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if len(data) != n * width:
        raise RequestError(422, f"input '{tensor['name']}': shape {shape} needs {n * width} values, got {len(data)}")
    rows = np.empty((n, width), dtype=object)
    for j, feature in enumerate(schema.features):
        column = data[j::width]
        is_cat = feature in schema.categorical
        for i, v in enumerate(column):
            if v is None:
                continue
            if is_cat and not isinstance(v, str):
                raise RequestError(422, f"input '{tensor['name']}': row {i} column {j} ('{feature}', categorical) "
                                        f"is {v!r:.80}, not a string")
            if is_cat and len(v) > MAX_STRING_VALUE_LENGTH:
                raise RequestError(422, f"input '{tensor['name']}': row {i} column {j} ('{feature}', categorical) "
                                        f"is longer than {MAX_STRING_VALUE_LENGTH} characters")
            if not is_cat and (isinstance(v, str) or not isinstance(v, (int, float))):
                raise RequestError(422, f"input '{tensor['name']}': row {i} column {j} ('{feature}', numeric) "
                                        f"is {v!r:.80}, not a number")
        rows[:, j] = column if is_cat else [math.nan if v is None else float(v) for v in column]
    return rows


def _per_feature_inputs(inputs: list[dict[str, Any]], schema: Schema) -> np.ndarray:
    by_name: dict[str, dict[str, Any]] = {}
    for tensor in inputs:
        if tensor["name"] in by_name:
            raise RequestError(422, f"input '{tensor['name']}' is given twice")
        by_name[tensor["name"]] = tensor
    unknown = [name for name in by_name if name not in schema.features]
    if unknown:
        raise RequestError(422, f"unknown input(s) {', '.join(sorted(unknown))}; the model's features are "
                                f"{', '.join(schema.features)} (or send one [n, {len(schema.features)}] input)")
    missing = [f for f in schema.features if f not in by_name]
    if missing:
        raise RequestError(422, f"missing feature(s): {', '.join(missing)}")
    n: int | None = None
    columns = []
    for feature in schema.features:
        tensor = by_name[feature]
        shape = shape_of(tensor, 0)
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(422, f"input '{feature}': shape {shape} is not [n] or [n, 1]")
        if n is None:
            n = shape[0]
            if n == 0:
                raise RequestError(422, f"input '{feature}': no rows (shape {shape})")
        elif shape[0] != n:
            raise RequestError(422, f"input '{feature}' has {shape[0]} rows but '{schema.features[0]}' has {n}")
        columns.append(column_values(tensor, shape[0], feature in schema.categorical))
    if schema.all_numeric:
        return np.column_stack(columns)
    return np.column_stack([c.astype(object) for c in columns])


def request_id_of(value: Any, header_id: str | None) -> str:
    if value is None:
        value = header_id
    if value is None or value == "":
        return new_id()
    source = "'id'" if value is not header_id else "the x-request-id header"
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RequestError(422, f"{source} must be a string, got {type(value).__name__}")
    value = str(value)
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise RequestError(422, f"{source} is longer than {MAX_REQUEST_ID_LENGTH} characters")
    if not value.isprintable():
        raise RequestError(422, f"{source} must be printable characters only")
    return value


def row_ids_of(parameters: Any, request_id: str, n: int) -> list[str]:
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(400, f"'parameters' must be an object, got {type(parameters).__name__}")
    given = parameters.get("ids") if parameters else None
    if given is not None:
        ids = _json_array(given) if isinstance(given, str) else given
        if not isinstance(ids, list) or len(ids) != n:
            raise RequestError(422, f"parameters.ids must be a list of {n} strings, one per row, or that list "
                                    "as JSON in a string" + (f"; got {len(ids)}" if isinstance(ids, list) else ""))
        out = []
        for i, rid in enumerate(ids):
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                raise RequestError(422, f"parameters.ids[{i}] must be a string, got {type(rid).__name__}")
            text = str(rid)
            if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
                raise RequestError(422, f"parameters.ids[{i}] must be 1 to {MAX_ID_LENGTH} printable characters")
            out.append(text)
        return out
    if n == 1:
        return [request_id]
    return [f"{request_id}-{i}" for i in range(n)]


def _json_array(text: str) -> Any:
    """``text`` parsed when it is a JSON array, else None (which the caller refuses)."""
    if not text.startswith("["):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


# --- answers ----------------------------------------------------------------------------------
def datatype_of(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def predict_datatype(is_classifier: bool, classes: Sequence[Any] | None) -> str:
    """The ``predict`` output's datatype, as ``infer_response`` will answer it: a classifier
    predicts one of its classes, a regressor a float."""
    if not is_classifier:
        return "FP64"
    return datatype_of(np.asarray(list(classes or [])))


def classes_parameter(classes: Sequence[Any]) -> str:
    """The class labels in ``predict_proba``'s column order as one parameter: a JSON array in a
    string, since parameter values are strings, numbers or booleans only."""
    return orjson.dumps(list(classes), option=orjson.OPT_SERIALIZE_NUMPY).decode()


_CLASSES_TEXT: list[tuple[Sequence[Any], str]] = []  # the last classes list answered, and its text


def _classes_text(classes: Sequence[Any]) -> str:
    """``classes_parameter`` of a model's classes list, rendered once per list object (a server
    answers every request with the same list)."""
    last = _CLASSES_TEXT[0] if _CLASSES_TEXT else None
    if last is not None and last[0] is classes:
        return last[1]
    text = classes_parameter(classes)
    _CLASSES_TEXT[:] = [(classes, text)]
    return text


def ids_parameter(row_ids: Sequence[str]) -> str:
    """Each row's prediction id as one parameter: a JSON array in a string, like ``classes``."""
    return orjson.dumps(list(row_ids)).decode()


def row_ids(answer: dict[str, Any]) -> list[str]:
    """The prediction ids of an infer answer's rows (the ids feedback labels), in row order: its
    ``parameters.ids``, a JSON array in a string (or a list, as servers before it answered).
    ValueError when the answer has none."""
    ids = (answer.get("parameters") or {}).get("ids")
    if isinstance(ids, str):
        ids = _json_array(ids)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"an infer answer without parameters.ids as a JSON array of strings: {ids!r:.80}")
    return ids


def infer_response(model_name: str, model_version: str, request: InferRequest, predictions: np.ndarray,
                   proba: np.ndarray | None, classes: Sequence[Any] | None) -> tuple[bytes, int | None]:
    """The answer's body, and the JSON header's length when some output is binary (the
    ``Inference-Header-Content-Length`` to send; None: the body is all JSON). Only the requested
    outputs, each in the form asked."""
    n = len(request.row_ids)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for requested in request.outputs:
        if requested.name == OUTPUT_PROBA:
            if proba is None:
                continue  # not answerable: parse_infer refuses it unless the model's outputs include it
            tensor: dict[str, Any] = {"name": OUTPUT_PROBA, "shape": [n, proba.shape[1]], "datatype": "FP64",
                                      "parameters": {"classes": _classes_text(classes or [])}}
            values = proba
        else:
            tensor = {"name": OUTPUT_PREDICT, "shape": [n], "datatype": datatype_of(predictions)}
            values = predictions
        if requested.binary:
            raw = encode_binary(values, tensor["datatype"])
            tensor.setdefault("parameters", {})["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            tensor["data"] = values.ravel().tolist()
        outputs.append(tensor)
    header = orjson.dumps({"model_name": model_name, "model_version": model_version, "id": request.request_id,
                           "parameters": {"ids": ids_parameter(request.row_ids)}, "outputs": outputs})
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def encode_binary(values: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes in the binary extension: little-endian, row-major; BYTES as length-prefixed UTF-8."""
    if datatype != "BYTES":
        return np.ascontiguousarray(values, dtype=BINARY_DTYPES[datatype]).tobytes()
    parts = []
    for value in values.ravel().tolist():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(len(raw).to_bytes(_BYTES_LENGTH, "little"))
        parts.append(raw)
    return b"".join(parts)


# --- comparing a shadow's answer with the primary's -------------------------------------------
def predictions_of(body: bytes) -> list[Any] | None:
    """The ``predict`` output's data of an OIP v2 answer, JSON or binary, or None when there is none.

    A binary answer's JSON header is found without the ``Inference-Header-Content-Length`` header:
    it is the shortest prefix that parses (an object's earlier closing braces close inner objects,
    so no shorter prefix is valid JSON); the router's shadow comparison gets only the body."""
    header, binary = _answer_parts(body)
    if not isinstance(header, dict):
        return None
    offset = 0
    for output in header.get("outputs") or ():
        if not isinstance(output, dict):
            return None
        parameters = output.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if output.get("name") == OUTPUT_PREDICT:
            if size is None:
                return output["data"] if isinstance(output.get("data"), list) else None
            return _decoded_output(output, binary[offset:offset + size]) if isinstance(size, int) else None
        if isinstance(size, int):
            offset += size
    return None


def _answer_parts(body: bytes) -> tuple[Any, memoryview]:
    try:
        return orjson.loads(body), memoryview(b"")
    except orjson.JSONDecodeError:
        pass
    if not body.startswith(b"{"):
        return None, memoryview(b"")
    end = body.find(b"}")
    while end != -1:
        try:
            return orjson.loads(body[:end + 1]), memoryview(body)[end + 1:]
        except orjson.JSONDecodeError:
            end = body.find(b"}", end + 1)
    return None, memoryview(b"")


def _decoded_output(output: dict[str, Any], raw: memoryview) -> list[Any] | None:
    if not isinstance(output.get("datatype"), str):
        return None
    try:
        values = _decode_binary(output, raw)
    except RequestError:
        return None
    return values.tolist() if isinstance(values, np.ndarray) else values


def compare(primary: list[Any], shadow: list[Any], rel_tol: float = 1e-6) -> tuple[int, int]:
    """(agreeing rows, disagreeing rows). Numbers agree within ``rel_tol`` (regressors rarely match
    to the last bit across versions); everything else must be equal. A length mismatch makes every
    row of the longer answer disagree."""
    agree = 0
    for p, s in zip(primary, shadow, strict=False):
        if isinstance(p, float) or isinstance(s, float):
            try:
                same = math.isclose(float(p), float(s), rel_tol=rel_tol, abs_tol=1e-12)
            except (TypeError, ValueError):
                same = False
        else:
            same = p == s
        agree += same
    return agree, max(len(primary), len(shadow)) - agree


# --- feedback ---------------------------------------------------------------------------------
MAX_FEEDBACK_ITEMS = 10_000  # per request: the answer lists every item, so it stays as small as the request


@dataclass(frozen=True, slots=True)
class Feedback:
    id: str
    label: Any


def parse_feedback(body: bytes) -> list[Feedback]:
    """``{"id": "...", "label": x}``, or ``{"feedback": [{"id", "label"}, ...]}``, or a bare list of those.

    Only the shape is checked here (a malformed body is refused whole: 400/422 naming the item);
    whether each label counts is decided item by item against the prediction ledger and the model
    (``noria_server.ledger``)."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if isinstance(payload, dict) and "feedback" in payload:
        items = payload["feedback"]
    elif isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict):
        items = [payload]
    else:
        raise RequestError(400, "expected {\"id\": ..., \"label\": ...} or {\"feedback\": [...]}")
    if not isinstance(items, list) or not items:
        raise RequestError(400, "'feedback' must be a non-empty list of {id, label} objects")
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise RequestError(422, f"'feedback' has {len(items)} items; send at most {MAX_FEEDBACK_ITEMS} per request")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item or "label" not in item:
            raise RequestError(422, f"feedback[{i}] must be an object with 'id' and 'label'")
        fid, label = item["id"], item["label"]
        if not isinstance(fid, (str, int)) or isinstance(fid, bool) or str(fid) == "":
            raise RequestError(422, f"feedback[{i}].id must be a non-empty string")
        fid = str(fid)
        if len(fid) > MAX_ID_LENGTH:
            raise RequestError(422, f"feedback[{i}].id is longer than {MAX_ID_LENGTH} characters; prediction ids "
                                    f"are never longer")
        if label is None or isinstance(label, (dict, list)):
            raise RequestError(422, f"feedback[{i}].label must be a scalar (class or number), got {label!r:.80}")
        out.append(Feedback(fid, label))
    return out
