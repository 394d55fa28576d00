"""Runs the kserve SDK's REST client, unchanged, for tests/integration/test_oip_clients.py.

The SDK lives in .venv-kserve (its pins conflict with the dev venv's; Makefile ``kserve-client``),
so the test runs this script with that venv's python: the calls to make are a JSON list on stdin,
their results a JSON list on stdout. An infer call is ``{"call": "infer", "url", "model", "inputs":
[{"name", "datatype", "shape", "data"}], "binary": bool, "outputs": [names] | null}``; ``binary``
false sends JSON (``set_data_from_numpy(..., binary_data=False)``), true the SDK's default.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

NUMPY_TYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BYTES": np.object_,
}


async def infer(client: InferenceRESTClient, call: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for spec in call["inputs"]:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        values = np.array(spec["data"], dtype=NUMPY_TYPES[spec["datatype"]]).reshape(spec["shape"])
        if call["binary"]:
            tensor.set_data_from_numpy(values)
        else:
            tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    outputs = [RequestedOutput(name) for name in call["outputs"]] if call.get("outputs") else None
    request = InferRequest(model_name=call["model"], infer_inputs=inputs, request_outputs=outputs)
    response = await client.infer(call["url"], request, model_name=call["model"])
    return {
        "outputs": {
            out.name: {
                "datatype": out.datatype,
                "shape": list(out.shape),
                "data": [v.decode() if isinstance(v, bytes) else v for v in out.as_numpy().ravel().tolist()],
            }
            for out in response.outputs
        }
    }


async def run(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    results = []
    for call in calls:
        try:
            if call["call"] == "live":
                results.append({"value": await client.is_server_live(call["url"])})
            elif call["call"] == "ready":
                results.append({"value": await client.is_server_ready(call["url"])})
            elif call["call"] == "model_ready":
                results.append({"value": await client.is_model_ready(call["url"], call["model"])})
            else:
                results.append(await infer(client, call))
        except httpx.HTTPStatusError as exc:
            results.append({"status": exc.response.status_code, "error": exc.response.text})
    return results


if __name__ == "__main__":
    json.dump(asyncio.run(run(json.load(sys.stdin))), sys.stdout)
