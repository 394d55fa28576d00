"""A linear model on the Dask engine, on the test bed (docs/training-dask.md, "Linear models (dask-ml)"):
the Dask operator's scheduler and 2 workers (node-agent pods running the trainer image) fit
sklearn.linear_model.LogisticRegression with dask-ml; the run registers a ModelVersion whose skops
artifact a real ``noria_server`` process loads (digest, trusted types, no dask-ml) and answers with the
model's own predictions. Small data on purpose: the run is about the learner and the artifact, not size."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from noria.artifact import load_verified
from noria_server import launch
from test_training_dask import dask_operator_for, explain, last_run  # noqa: F401 (fixture)
from training_helpers import POD_STORE, local_path, model_versions, status, wait_for

pytestmark = pytest.mark.integration

FEATURES = ["x1", "x2", "colour"]
# A dask-ml worker holds ~300 MiB resident once its tasks have imported scikit-learn, dask-ml and
# dask-glm (which imports sparse, numba and llvmlite): 299 MiB measured after the imports alone, 326
# MiB at the fit's peak here, 411 MiB on a CI run. Dask pauses a worker above 80 % of its memory
# limit, counting the file-backed pages too; with 512Mi both workers were paused on CI and the run
# stalled (it now fails after NORIA_DASK_STALL_SECONDS: tests/unit/test_dask_stall.py).
WORKER_MEMORY = "768Mi"


def write_window(store_dir: Path, namespace: str, name: str, parts: int = 3, rows: int = 2000) -> str:
    """A learnable binary problem with a categorical feature and gaps; the source URI as pods see it."""
    folder = store_dir / "datasets" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        rng = np.random.default_rng(part)
        x1, x2 = rng.normal(2.0, 3.0, rows), rng.normal(-10.0, 5.0, rows)
        colour = rng.choice(["red", "green", "blue"], rows).astype(object)
        score = (x1 - 2.0) / 3.0 + (x2 + 10.0) / 10.0 + (colour == "red") + rng.normal(0, 0.3, rows)
        frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "label": (score > 0.5).astype(np.int8)})
        frame.loc[::37, "x2"] = np.nan
        frame.loc[::41, "colour"] = None
        tmp = folder / f".part-{part:03d}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.rename(folder / f"part-{part:03d}.parquet")
    return f"file://{POD_STORE}/datasets/{namespace}/{name}/"


def pipeline(name: str, source: str) -> str:
    spec = {
        "model": {"task": "classification", "target": "label", "estimator": "sklearn.linear_model.LogisticRegression",
                  "params": {"C": 1.0}},
        "data": {"source": source, "format": "parquet"},
        "validation": {"minRows": 100},
        "evaluation": {"metric": "f1", "minScore": "0.6"},
        "approval": "automatic",
        "compute": {"engine": "dask",
                    "dask": {"workers": 2, "workerResources": {"limits": {"memory": WORKER_MEMORY}}}},
    }
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
                       "spec": spec})


def infer(url: str, frame: pd.DataFrame) -> list[Any]:
    inputs = [{"name": c, "shape": [len(frame)], "datatype": "BYTES" if c == "colour" else "FP64",
               "data": frame[c].tolist()} for c in FEATURES]
    request = urllib.request.Request(url, data=json.dumps({"id": "dask-linear", "inputs": inputs}).encode(),
                                     method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return next(o for o in answer["outputs"] if o["name"] == "predict")["data"]


def test_a_dask_ml_logistic_regression_registers_a_version_a_real_server_serves(
        cluster, namespace, store_claim, operator_factory, dask_operator_for, tmp_path: Path):  # noqa: ANN001, F811
    store_claim(namespace)
    source = write_window(cluster.store_dir, namespace, "lin")
    dask_op = dask_operator_for(namespace)
    op = operator_factory(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("lin", source))

    why = explain(cluster, namespace, "lin", [op, dask_op])
    wait_for("a ModelVersion registered or the run failed", lambda: model_versions(cluster, namespace)
             or last_run(cluster, namespace, "lin").get("outcome") == "Failed", timeout=240, on_timeout=why)
    versions = model_versions(cluster, namespace)
    assert versions, f"the run failed: {last_run(cluster, namespace, 'lin')}\n{why()}"
    (mv,) = versions
    artifact = mv["spec"]["artifact"]
    assert artifact["format"] == "skops" and artifact["uri"].endswith("/lin/v1/model.skops"), artifact
    run = (status(cluster, namespace, "lin").get("lastRuns") or [{}])[0]
    assert run.get("outcome") == "Succeeded", run

    path = local_path(cluster.store_dir, artifact["uri"])
    model = load_verified(f"file://{path}", artifact["digest"], f"file://{cluster.store_dir}")
    # complete rows (JSON has no NaN); the imputation is checked in tests/unit/test_dask_linear.py
    frame = pd.read_parquet(cluster.store_dir / "datasets" / namespace / "lin" / "part-002.parquet").dropna().head(200)
    expected = model.predict(frame[FEATURES]).tolist()
    profile = local_path(cluster.store_dir, mv["spec"]["profileUri"])  # says which features are categorical
    server = launch.serve(f"file://{path}", artifact["digest"], "lin", "lin-v1", str(tmp_path),
                          profile_uri=f"file://{profile}", extra=["--store-root", f"file://{cluster.store_dir}"])
    try:
        server.wait_ready(120)
        assert infer(f"{server.url}/v2/models/lin/infer", frame) == expected
    finally:
        server.stop()
