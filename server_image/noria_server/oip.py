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
request id; n rows → ``<id>-<i>``, unless ``parameters.ids`` gives n ids.

What a request can make the server keep is bounded here (docs/security/http.md): every prediction
id is at most ``MAX_ID_LENGTH`` printable characters (a request ``id`` at most
``MAX_REQUEST_ID_LENGTH``, so ``<id>-<i>`` fits), ``parameters.ids`` has exactly one id per row, and
a categorical value is at most ``MAX_STRING_VALUE_LENGTH`` characters; the prediction log and the
feedback ledger keep nothing longer. Every malformed field is a 400/422 naming it, never a 500.

Answer: ``{"model_name", "model_version", "id", "parameters": {"ids": [...]}, "outputs":
[{"name": "predict", "shape": [n], "datatype", "data"}, {"name": "predict_proba", "shape": [n, C],
"datatype": "FP64", "data", "parameters": {"classes": [...]}}]}`` — ``predict_proba`` only for
classifiers whose ``predict`` equals the argmax of ``predict_proba`` (checked at warm-up), which
makes it free.
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


@dataclass(slots=True)
class InferRequest:
    request_id: str
    row_ids: list[str]
    rows: np.ndarray  # shape (n, F) in schema order; float64 when all features are numeric, else object


def new_id() -> str:
    return os.urandom(12).hex()


def parse_infer(body: bytes, schema: Schema, header_id: str | None = None) -> InferRequest:
    if not body:
        raise RequestError(400, "empty request body: expected a JSON object with an 'inputs' list")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(payload).__name__}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors")
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype, data")
        for key in ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise RequestError(400, f"inputs[{i}] has no '{key}'")
        if not isinstance(tensor["name"], str):
            raise RequestError(400, f"inputs[{i}].name must be a string, got {type(tensor['name']).__name__}")
        if len(tensor["name"]) > MAX_NAME_LENGTH:
            raise RequestError(422, f"inputs[{i}].name is longer than {MAX_NAME_LENGTH} characters")
        if not isinstance(tensor["datatype"], str):
            raise RequestError(422, f"inputs[{i}].datatype must be a string such as \"FP64\", "
                                    f"got {type(tensor['datatype']).__name__}")

    single = inputs[0]
    shape0 = _shape(single, 0)
    if len(inputs) == 1 and len(shape0) == 2 and (single["name"] not in schema.features or shape0[1] > 1):
        rows = _matrix_input(single, shape0, schema)
    else:
        rows = _per_feature_inputs(inputs, schema)

    request_id = _request_id(payload.get("id"), header_id)
    row_ids = _row_ids(payload.get("parameters"), request_id, rows.shape[0])
    return InferRequest(request_id, row_ids, rows)


def _shape(tensor: dict[str, Any], index: int) -> list[int]:
    shape = tensor["shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError(422, f"input '{tensor['name']}': shape must be a non-empty list of non-negative "
                                f"integers, got {shape!r}")
    return shape


def _values(tensor: dict[str, Any], expected: int, categorical: bool) -> np.ndarray:
    """The tensor's data as a flat array, checked against its datatype and element count."""
    name, datatype, data = tensor["name"], tensor["datatype"], tensor["data"]
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
    for j, v in enumerate(data):
        if not (v is None or isinstance(v, (int, float))):
            raise RequestError(422, f"input '{name}': value #{j} ({v!r:.80}) is not a number (datatype {datatype})")
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
        flat = _values(tensor, n * width, categorical=False)
        return flat.reshape(n, width)
    # Mixed feature kinds in one tensor: check column by column.
    if not isinstance(tensor["datatype"], str) or tensor["datatype"] not in NUMERIC_DATATYPES | STRING_DATATYPES:
        raise RequestError(422, f"input '{tensor['name']}': unknown datatype {tensor['datatype']!r:.80}; a table with "
                                f"categorical columns is sent as BYTES")
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
        shape = _shape(tensor, 0)
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(422, f"input '{feature}': shape {shape} is not [n] or [n, 1]")
        if n is None:
            n = shape[0]
            if n == 0:
                raise RequestError(422, f"input '{feature}': no rows (shape {shape})")
        elif shape[0] != n:
            raise RequestError(422, f"input '{feature}' has {shape[0]} rows but '{schema.features[0]}' has {n}")
        columns.append(_values(tensor, shape[0], feature in schema.categorical))
    if schema.all_numeric:
        return np.column_stack(columns)
    return np.column_stack([c.astype(object) for c in columns])


def _request_id(value: Any, header_id: str | None) -> str:
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


def _row_ids(parameters: Any, request_id: str, n: int) -> list[str]:
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(400, f"'parameters' must be an object, got {type(parameters).__name__}")
    ids = parameters.get("ids") if parameters else None
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != n:
            raise RequestError(422, f"parameters.ids must be a list of {n} strings, one per row"
                                    + (f"; got {len(ids)}" if isinstance(ids, list) else ""))
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


def infer_response(model_name: str, model_version: str, request: InferRequest, predictions: np.ndarray,
                   proba: np.ndarray | None, classes: Sequence[Any] | None) -> dict[str, Any]:
    n = len(request.row_ids)
    outputs: list[dict[str, Any]] = [
        {"name": "predict", "shape": [n], "datatype": datatype_of(predictions), "data": predictions.tolist()}]
    if proba is not None:
        outputs.append({"name": "predict_proba", "shape": [n, proba.shape[1]], "datatype": "FP64",
                        "data": proba.ravel().tolist(), "parameters": {"classes": list(classes or [])}})
    return {"model_name": model_name, "model_version": model_version, "id": request.request_id,
            "parameters": {"ids": request.row_ids}, "outputs": outputs}


# --- comparing a shadow's answer with the primary's -------------------------------------------
def predictions_of(body: bytes) -> list[Any] | None:
    """The ``predict`` output's data of an OIP v2 answer, or None when there is none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    for output in payload.get("outputs") or ():
        if isinstance(output, dict) and output.get("name") == "predict" and isinstance(output.get("data"), list):
            return output["data"]
    return None


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
