"""Helpers of the continuous-training integration tests: data written to the test bed's store,
pipeline manifests, and reading the objects the operator made."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from noria_testbed.processes import wait_until

POD_STORE = "/var/lib/noria/store"


def start_trainer(tmp_path: Path, spec: dict, name: str, stderr: int = subprocess.PIPE) -> tuple[subprocess.Popen, Path]:
    """``python -m noria_trainer run`` as a Job runs it (one native thread), on ``spec`` written to
    ``<name>.json``; the process (stdout piped, text) and where its termination log will be."""
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    log = tmp_path / f"{name}.termination-log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NORIA_TRAINER_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "noria_trainer", "run", "--spec", str(spec_path),
                             "--termination-log", str(log)], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env)
    return proc, log


def classification_frame(rows: int, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A learnable binary problem: label = x1 + 0.5*x2 > 0 (with noise); ``shift`` moves x1."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    label = (x1 - shift + 0.5 * x2 + rng.normal(0, 0.3, rows) > 0).astype(int)
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label})


def write_data(store_dir: Path, namespace: str, name: str, frame: pd.DataFrame, part: int = 0) -> str:
    """Write one parquet partition under the store; the data source URI as pods see it."""
    folder = store_dir / "datasets" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".part-{part}.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.rename(folder / f"part-{part}.parquet")
    return f"file://{POD_STORE}/datasets/{namespace}/{name}/"


def pipeline_yaml(name: str, source: str, *, triggers: dict | None = None, min_score: str = "0.5",
                  min_rows: int = 100, approval: str = "automatic", extra: dict | None = None) -> str:
    spec: dict[str, Any] = {
        "model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                  "target": "label"},
        "data": {"source": source, "format": "parquet"},
        "validation": {"minRows": min_rows},
        "evaluation": {"metric": "f1", "minScore": min_score},
        "approval": approval,
    }
    if triggers:
        spec["triggers"] = triggers
    spec.update(extra or {})
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline",
                       "metadata": {"name": name}, "spec": spec})


def get(cluster, namespace: str, kind: str, name: str | None = None, selector: str | None = None) -> Any:  # noqa: ANN001
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    out = cluster.kubectl(*args, check=False)
    if out.returncode != 0:
        return None
    data = json.loads(out.stdout)
    return data if name else data["items"]


def status(cluster, namespace: str, pipeline: str) -> dict:  # noqa: ANN001
    return (get(cluster, namespace, "trainingpipeline", pipeline) or {}).get("status") or {}


def condition(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def wait_for(what: str, check, timeout: float = 120.0, on_timeout=None):  # noqa: ANN001, ANN201
    """wait_until returning the last truthy value of ``check``."""
    box: dict[str, Any] = {}

    def probe() -> bool:
        box["value"] = check()
        return bool(box["value"])

    wait_until(what, probe, timeout=timeout, on_timeout=on_timeout)
    return box["value"]


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def local_path(store_dir: Path, uri: str) -> Path:
    assert uri.startswith(f"file://{POD_STORE}/"), uri
    return store_dir / uri[len(f"file://{POD_STORE}/"):]


def jobs(cluster, namespace: str, pipeline: str) -> list[dict]:  # noqa: ANN001
    return get(cluster, namespace, "jobs", selector=f"noria.dev/pipeline={pipeline}") or []


def model_versions(cluster, namespace: str) -> list[dict]:  # noqa: ANN001
    return get(cluster, namespace, "modelversions") or []


def finished_runs(cluster, namespace: str, pipeline: str) -> list[dict]:  # noqa: ANN001
    return status(cluster, namespace, pipeline).get("lastRuns") or []


def settle(seconds: float) -> None:
    """Let the operator make (or not make) a decision; used only to show that nothing happens."""
    time.sleep(seconds)
