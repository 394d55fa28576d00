"""An imported model (examples/02-model-version-import) end to end on the test bed: created by hand,
it is Registered (no run registered it, no gate scored it); a Rollout pinned to it says to approve it
(`kubectl noria approve`);
once a person approves it, the Rollout serves it and a real prediction comes back from it.

The example's manifest is applied as written except for what depends on this test's store: its
namespace folder in the artifact and profile URIs, and the digest of the model file saved there
(the example's own digest is of a model that exists only on its author's disk).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from rollout_helpers import (
    get,
    operator_env,
    rollout,
    rollout_status,
    sample_rows,
    save_model,
    service_url,
    stage_of,
    wait_for,
)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "02-model-version-import" / "modelversion.yaml"


def imported_manifest(namespace: str, saved: dict) -> dict:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    spec = manifest["spec"]
    spec["artifact"]["uri"] = spec["artifact"]["uri"].replace("/store/ml/", f"/store/{namespace}/")
    spec["profileUri"] = spec["profileUri"].replace("/store/ml/", f"/store/{namespace}/")
    spec["artifact"]["digest"] = saved["spec"]["artifact"]["digest"]
    assert spec["artifact"]["uri"] == saved["spec"]["artifact"]["uri"]  # where save_model put the file
    return manifest


def test_an_imported_model_version_is_registered_then_approved_and_served(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    manifest = imported_manifest(namespace, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    wait_for("churn-v1 Registered", lambda: stage_of(cluster, namespace, "churn-v1") == "Registered", timeout=30)
    mv = get(cluster, namespace, "modelversion", "churn-v1")
    assert [h["stage"] for h in mv["status"]["history"]] == ["Registered"]
    assert "kubectl noria approve churn-v1" in mv["status"]["message"]

    pinned = json.loads(rollout(namespace, {"immediate": {}}))
    pinned["spec"]["source"] = {"modelVersion": "churn-v1"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pinned))
    waiting = wait_for("the Rollout says to approve", lambda: "kubectl noria approve churn-v1" in json.dumps(
        rollout_status(cluster, namespace)) and rollout_status(cluster, namespace), timeout=60)
    assert waiting.get("stableVersion") is None

    cluster.kubectl("annotate", "-n", namespace, "modelversion", "churn-v1", "noria.dev/approve=alice")
    wait_for("churn-v1 served", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v1"
             and rollout_status(cluster, namespace).get("phase") == "Healthy", timeout=120,
             on_timeout=lambda: json.dumps(rollout_status(cluster, namespace), indent=1))
    history = get(cluster, namespace, "modelversion", "churn-v1")["status"]["history"]
    assert [h["stage"] for h in history][:2] == ["Registered", "Approved"] and history[1]["by"] == "user/alice"

    rows, _ = sample_rows(n=5)
    body = {"inputs": [{"name": "input", "shape": [1, rows.shape[1]], "datatype": "FP64", "data": [rows[0].tolist()]}]}
    url = service_url(cluster, namespace, "churn")

    def predict() -> dict | None:
        try:
            resp = httpx.post(f"{url}/v2/models/churn/infer", json=body, timeout=5.0)
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    answer = wait_for("a prediction from churn-v1", predict, timeout=60)
    assert answer["model_version"] == "churn-v1" and answer["outputs"][0]["data"]
