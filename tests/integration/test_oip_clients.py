"""Real OIP v2 clients, unchanged and with their defaults, against real servers and a real router.

Given models trained and saved the trainer's way and served by ``python -m noria_server serve``
(one also behind ``python -m noria_server route``), when tritonclient's HTTP client, the kserve
SDK's REST client and MLServer's codecs call them the way their users do, then health and metadata
answer as the clients expect, and predictions — FP32/FP64/INT64/BYTES inputs, one row or a batch,
binary or JSON, all outputs or only those requested — equal the model's own ``predict`` /
``predict_proba`` on the same rows.

tritonclient and the kserve SDK send tensors in the binary tensor extension by default
(``set_data_from_numpy(..., binary_data=True)``), and tritonclient asks for binary outputs when it
names none. The kserve SDK runs from .venv-kserve (``make kserve-client``): its pins conflict with
the dev venv's. Missing, the kserve tests fail (they never skip).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from mlserver.codecs import NumpyCodec, NumpyRequestCodec, PandasCodec
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
    RequestOutput,
)
from noria import metrics as m
from noria_server import launch, oip
from noria_server.reference_models import SavedModel, dataset, train_and_save
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_SCRIPT = Path(__file__).with_name("oip_kserve_client.py")
KINDS = ("logistic", "regressor", "mixed")
NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
BATCH = 7


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("oip-clients")
    models: dict[str, SavedModel] = {
        kind: train_and_save(kind, str(root / "store" / kind), rows=600) for kind in KINDS
    }
    servers: dict[str, launch.Process] = {}
    router: launch.Process | None = None
    try:
        for kind, saved in models.items():
            servers[kind] = launch.serve(
                saved.artifact_uri,
                saved.digest,
                kind,
                f"{kind}-v1",
                str(root),
                saved.profile_uri,
                ["--store-root", f"file://{root}/store"],
            )
        config = root / "router.json"
        config.write_text(
            json.dumps(
                {
                    "model": "logistic",
                    "namespace": "ml",
                    # The shadow is the same server under another name: every mirrored row agrees.
                    "shadow": {
                        "version": "logistic-v2",
                        "service": "logistic-v2",
                        "port": 8080,
                        "mirrorPercent": 100,
                        "url": servers["logistic"].url,
                    },
                    "backends": [
                        {
                            "version": "logistic-v1",
                            "service": "logistic-v1",
                            "port": 8080,
                            "weight": 100,
                            "url": servers["logistic"].url,
                        }
                    ],
                }
            )
        )
        router = launch.route(str(config), str(root), extra=["--timeout", "10"])
        for proc in servers.values():
            proc.wait_ready(300)
        router.wait_ready(300)
        yield {"models": models, "servers": servers, "router": router}
    finally:
        if router is not None:
            router.stop()
        for proc in servers.values():
            proc.stop()


def rows(kind: str, n: int, seed: int = 7) -> pd.DataFrame:
    frame, _ = dataset(kind, rows=n, seed=seed)  # type: ignore[arg-type]
    return frame


def as_sent(frame: pd.DataFrame, datatype: str) -> pd.DataFrame:
    """The rows the server sees when the numeric features are sent as ``datatype``."""
    numeric = [c for c in frame.columns if c != "segment"]
    sent = frame.copy()
    sent[numeric] = frame[numeric].to_numpy().astype(NUMPY_TYPES[datatype]).astype(np.float64)
    return sent


def assert_model_answer(
    saved: SavedModel, frame: pd.DataFrame, predict: np.ndarray, proba: np.ndarray | None
) -> None:
    expected = saved.estimator.predict(frame)
    if predict.dtype.kind == "f":
        np.testing.assert_allclose(predict.ravel(), expected, rtol=1e-9)
    else:
        assert predict.ravel().tolist() == expected.tolist()
    if proba is not None:
        np.testing.assert_allclose(proba, saved.estimator.predict_proba(frame), rtol=1e-9)


# --- tritonclient -----------------------------------------------------------------------------
def triton_client(proc: launch.Process) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(proc.url.removeprefix("http://"))


def test_triton_health_and_metadata_match_the_answers(bed: dict[str, Any]) -> None:
    client = triton_client(bed["servers"]["logistic"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("logistic")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("logistic")
    frame = rows("logistic", 3)
    tensor = triton.InferInput("x", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy())
    answer = client.infer("logistic", [tensor]).get_response()
    declared = {o["name"]: (o["datatype"], len(o["shape"])) for o in metadata["outputs"]}
    assert declared == {o["name"]: (o["datatype"], len(o["shape"])) for o in answer["outputs"]}
    assert declared["predict"] == ("INT64", 1) and declared["predict_proba"] == ("FP64", 2)
    assert all(isinstance(v, (str, int, float, bool)) for v in metadata["parameters"].values())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("n", [1, BATCH], ids=["one-row", "batch"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
def test_triton_infer_matrix_equals_the_model(
    bed: dict[str, Any], datatype: str, n: int, binary: bool
) -> None:
    frame = rows("logistic", n) * (10 if datatype == "INT64" else 1)
    tensor = triton.InferInput("input", list(frame.shape), datatype)
    tensor.set_data_from_numpy(frame.to_numpy().astype(NUMPY_TYPES[datatype]), binary_data=binary)
    result = triton_client(bed["servers"]["logistic"]).infer("logistic", [tensor])
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])  # its default
    assert_model_answer(
        bed["models"]["logistic"],
        as_sent(frame, datatype),
        result.as_numpy("predict"),
        result.as_numpy("predict_proba"),
    )


def test_triton_requested_outputs_only_in_the_requested_form(bed: dict[str, Any]) -> None:
    frame = rows("logistic", BATCH)
    tensor = triton.InferInput("input", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy())
    client = triton_client(bed["servers"]["logistic"])
    only = client.infer("logistic", [tensor], outputs=[triton.InferRequestedOutput("predict")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["predict"]
    assert_model_answer(bed["models"]["logistic"], frame, only.as_numpy("predict"), None)
    as_json = client.infer(
        "logistic", [tensor], outputs=[triton.InferRequestedOutput("predict_proba", False)]
    )
    (output,) = as_json.get_response()["outputs"]
    assert output["name"] == "predict_proba" and len(output["data"]) == BATCH * 2
    np.testing.assert_allclose(
        as_json.as_numpy("predict_proba"), bed["models"]["logistic"].estimator.predict_proba(frame), rtol=1e-9
    )
    with pytest.raises(InferenceServerException, match="unknown output 'label'"):
        client.infer("logistic", [tensor], outputs=[triton.InferRequestedOutput("label")])


def test_row_ids_sent_and_answered_as_parameters_typed_clients_take(bed: dict[str, Any]) -> None:
    """The clients' own prediction ids go in as a JSON array in a string (a parameter kind the
    protocol has) and come back in the same form, through tritonclient and MLServer's types."""
    frame = rows("logistic", BATCH)
    ids = [f"order-{i}" for i in range(BATCH)]
    tensor = triton.InferInput("input", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy())
    result = triton_client(bed["servers"]["logistic"]).infer(
        "logistic", [tensor], parameters={"ids": json.dumps(ids)}
    )
    answer = result.get_response()
    assert all(isinstance(v, (str, int, float, bool)) for v in answer["parameters"].values())
    assert oip.row_ids(answer) == ids
    request = NumpyRequestCodec.encode_request(frame.to_numpy())
    request.parameters = Parameters(ids=json.dumps(ids))
    typed = post_request(bed["router"].url, "logistic", request)
    assert typed.parameters is not None
    assert all(
        isinstance(v, (str, int, float, bool))
        for v in typed.parameters.model_dump(exclude_none=True).values()
    )
    assert oip.row_ids(typed.model_dump()) == ids


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_per_feature_inputs_with_bytes(bed: dict[str, Any], binary: bool) -> None:
    frame = rows("mixed", BATCH)
    inputs = []
    for column in frame.columns:
        values = frame[column].to_numpy()
        datatype = "BYTES" if column == "segment" else "FP64"
        tensor = triton.InferInput(column, [len(values)], datatype)
        tensor.set_data_from_numpy(
            values.astype(object) if datatype == "BYTES" else values, binary_data=binary
        )
        inputs.append(tensor)
    result = triton_client(bed["servers"]["mixed"]).infer("mixed", inputs)
    assert_model_answer(
        bed["models"]["mixed"], frame, result.as_numpy("predict"), result.as_numpy("predict_proba")
    )


def test_triton_regressor_and_errors(bed: dict[str, Any]) -> None:
    frame = rows("regressor", BATCH)
    tensor = triton.InferInput("input", list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame.to_numpy().astype(np.float32))
    client = triton_client(bed["servers"]["regressor"])
    result = client.infer("regressor", [tensor])
    assert client.get_model_metadata("regressor")["outputs"] == [
        {"name": "predict", "shape": [-1], "datatype": "FP64"}
    ]
    assert_model_answer(bed["models"]["regressor"], as_sent(frame, "FP32"), result.as_numpy("predict"), None)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nosuchmodel", [tensor])
    assert unknown.value.status() == "404" and "unknown model 'nosuchmodel'" in unknown.value.message()
    assert not client.is_model_ready("nosuchmodel")


def shadow_agreements(router: launch.Process) -> float:
    status, body = launch.get(router.url + "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(m.SHADOW_COMPARISONS_TOTAL + "{") and f'outcome="{m.OUTCOME_AGREE}"' in line
    )


def test_triton_binary_through_the_router_and_its_shadow_comparison(bed: dict[str, Any]) -> None:
    frame = rows("logistic", BATCH, seed=11)
    tensor = triton.InferInput("input", list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame.to_numpy().astype(np.float32))
    agreed = shadow_agreements(bed["router"])
    result = triton_client(bed["router"]).infer("logistic", [tensor])
    assert_model_answer(
        bed["models"]["logistic"],
        as_sent(frame, "FP32"),
        result.as_numpy("predict"),
        result.as_numpy("predict_proba"),
    )
    # The mirrored answer is binary too: the router still compares its predict rows with the primary's.
    deadline = time.monotonic() + 10
    while shadow_agreements(bed["router"]) < agreed + BATCH and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shadow_agreements(bed["router"]) == agreed + BATCH


# --- the kserve SDK ---------------------------------------------------------------------------
def kserve_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert KSERVE_PYTHON.exists(), "the kserve SDK's venv is missing: run `make kserve-client`"
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(KSERVE_SCRIPT)],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert len(results) == len(calls)
    return results


def kserve_infer(
    url: str, model: str, frame: pd.DataFrame, datatype: str, binary: bool, outputs: list[str] | None = None
) -> dict[str, Any]:
    if model == "mixed":
        inputs = [
            {
                "name": c,
                "datatype": "BYTES" if c == "segment" else datatype,
                "shape": [len(frame)],
                "data": frame[c].tolist(),
            }
            for c in frame.columns
        ]
    else:
        inputs = [
            {
                "name": "input",
                "datatype": datatype,
                "shape": list(frame.shape),
                "data": frame.to_numpy().astype(NUMPY_TYPES[datatype]).tolist(),
            }
        ]
    return {
        "call": "infer",
        "url": url,
        "model": model,
        "inputs": inputs,
        "binary": binary,
        "outputs": outputs,
    }


def test_kserve_rest_client(bed: dict[str, Any]) -> None:
    servers, models = bed["servers"], bed["models"]
    logistic = servers["logistic"].url
    cases: list[tuple[str, str, pd.DataFrame, str, bool, list[str] | None]] = [
        (
            logistic,
            "logistic",
            rows("logistic", n) * (10 if datatype == "INT64" else 1),
            datatype,
            binary,
            None,
        )
        for datatype in ("FP32", "FP64", "INT64")
        for n in (1, BATCH)
        for binary in (True, False)
    ]
    cases += [
        (logistic, "logistic", rows("logistic", BATCH), "FP64", True, ["predict"]),
        (servers["mixed"].url, "mixed", rows("mixed", BATCH), "FP64", True, None),
        (servers["mixed"].url, "mixed", rows("mixed", 1), "FP64", False, None),
        (servers["regressor"].url, "regressor", rows("regressor", BATCH), "FP32", True, None),
        (bed["router"].url, "logistic", rows("logistic", BATCH, seed=3), "FP32", True, None),
    ]
    health = [
        {"call": "live", "url": logistic},
        {"call": "ready", "url": logistic},
        {"call": "model_ready", "url": logistic, "model": "logistic"},
    ]
    results = kserve_calls(health + [kserve_infer(*case) for case in cases])
    assert [r.get("value") for r in results[:3]] == [True, True, True], results[:3]
    for (_, model, frame, datatype, _binary, outputs), result in zip(cases, results[3:], strict=True):
        assert "outputs" in result, result
        answered = result["outputs"]
        assert list(answered) == (
            outputs or (["predict"] if model == "regressor" else ["predict", "predict_proba"])
        )
        proba = answered.get("predict_proba")
        assert_model_answer(
            models[model],
            as_sent(frame, datatype),
            np.array(answered["predict"]["data"]),
            None if proba is None else np.array(proba["data"]).reshape(proba["shape"]),
        )


# --- MLServer's codecs ------------------------------------------------------------------------
def post_request(url: str, model: str, request: InferenceRequest) -> InferenceResponse:
    http = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=request.model_dump_json().encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(http, timeout=30) as answer:
        return InferenceResponse.model_validate_json(answer.read())


@pytest.mark.parametrize(
    "kind, n", [("logistic", 1), ("logistic", BATCH), ("mixed", BATCH), ("regressor", BATCH)]
)
def test_mlserver_pandas_codec(bed: dict[str, Any], kind: str, n: int) -> None:
    frame = rows(kind, n)
    request = PandasCodec.encode_request(frame)
    request.outputs = [RequestOutput(name="predict")]
    decoded = PandasCodec.decode_response(post_request(bed["servers"][kind].url, kind, request))
    assert list(decoded.columns) == ["predict"] and not decoded.isna().any().any()  # no NaN padding
    assert_model_answer(bed["models"][kind], frame, decoded["predict"].to_numpy(), None)


def test_mlserver_numpy_codec_through_the_router(bed: dict[str, Any]) -> None:
    frame = rows("logistic", BATCH, seed=5)
    answer = post_request(bed["router"].url, "logistic", NumpyRequestCodec.encode_request(frame.to_numpy()))
    outputs = {o.name: NumpyCodec.decode_output(o) for o in answer.outputs}
    assert_model_answer(bed["models"]["logistic"], frame, outputs["predict"], outputs["predict_proba"])


@pytest.mark.parametrize("kind", KINDS)
def test_mlserver_types_read_the_metadata(bed: dict[str, Any], kind: str) -> None:
    status, body = launch.get(f"{bed['servers'][kind].url}/v2/models/{kind}")
    assert status == 200
    metadata = MetadataModelResponse.model_validate_json(body)
    assert [i.name for i in metadata.inputs or []] == bed["models"][kind].features
    parameters = (metadata.parameters.model_dump(exclude_none=True) if metadata.parameters else {}).values()
    assert all(isinstance(v, (str, int, float, bool)) for v in parameters)  # the protocol's parameter kinds
    frame = rows(kind, 2)
    answer = post_request(bed["servers"][kind].url, kind, PandasCodec.encode_request(frame))
    assert [(o.name, o.datatype, len(o.shape)) for o in metadata.outputs or []] == [
        (o.name, o.datatype, len(o.shape)) for o in answer.outputs
    ]
