"""Issue 16's Must-show on the test bed: a window 2.67 times one worker's memory limit (its decoded
float64 features and int8 label, ``pyarrow.Table.nbytes``) trains on a Dask run of 2 workers of 512 MiB each, passes the gate, registers a ModelVersion and
serves through a Rollout (the router answers what the model itself predicts), while a ``single`` run
with the same limit on the same data is killed for memory (``TrainerOOMKilled``).

The node agent enforces the limit on what a cgroup could not reclaim (RssAnon + RssShmem,
noria_testbed.node_agent.memory). The data is generated fast and written straight into the store:
128 float64 features (XGBoost keeps one byte per feature and row, so many features per row is the
case it compresses), in files of 50 000 rows (51 MB: a worker reads a whole file at once, about
twice its size at the peak; docs/training-dask.md, "Memory of a worker").

What a worker holds (measured in one process running a worker's share of the refit, 700 000 rows:
``benchmarks/dask_worker_share.py``): XGBoost's matrix is paged to the worker's /tmp
(``ExtMemQuantileDMatrix``) and its histogram cuts come from the stats stage's sample instead of a
sketch of every row, so the peak is the libraries, one file being read and one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from noria import conditions as c
from noria.artifact import load_verified
from rollout_helpers import rollout_status, service_url
from test_training_dask import dask_clusters, dask_operator_for, explain, last_run  # noqa: F401 (fixture)
from training_helpers import POD_STORE, get, wait_for

pytestmark = pytest.mark.integration

MEMORY_LIMIT, LIMIT_BYTES = "512Mi", 512 * 2**20
FEATURES, ROWS_PER_FILE, FILES = 128, 50_000, 28  # 1.43 GB of float64 features: 2.67 times the limit


def write_window(store_dir: Path, namespace: str, name: str) -> tuple[str, int]:
    """``FILES`` Parquet files of a learnable binary problem (plain encoding, no compression: fast to
    write); the source URI as pods see it and the window's raw bytes in memory."""
    folder = store_dir / "datasets" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    raw = 0
    names = [f"x{i}" for i in range(FEATURES)]
    for part in range(FILES):
        rng = np.random.default_rng(part)
        x = rng.random((ROWS_PER_FILE, FEATURES))
        label = (x[:, 0] + 0.5 * x[:, 1] + 0.2 * rng.random(ROWS_PER_FILE) > 0.85).astype(np.int8)
        table = pa.table([*x.T, label], names=[*names, "label"])
        raw += table.nbytes
        tmp = folder / f".part-{part:03d}.parquet.tmp"
        pq.write_table(table, tmp, compression="none", use_dictionary=False, write_statistics=False)
        tmp.rename(folder / f"part-{part:03d}.parquet")
    return f"file://{POD_STORE}/datasets/{namespace}/{name}/", raw


def pipeline(name: str, source: str, engine: str) -> str:
    spec: dict = {
        "model": {"task": "classification", "target": "label", "estimator": "xgboost.XGBClassifier",
                  "params": {"n_estimators": 5, "max_depth": 3}},
        "data": {"source": source, "format": "parquet"},
        "validation": {"minRows": 100},
        "evaluation": {"metric": "f1", "minScore": "0.6"},
        "approval": "automatic",
    }
    if engine == "single":
        spec["model"] = {"task": "classification", "target": "label",
                         "estimator": "sklearn.linear_model.LogisticRegression"}
        spec["resources"] = {"limits": {"memory": MEMORY_LIMIT}}
    else:
        spec["compute"] = {"engine": "dask", "dask": {"workers": 2,
                                                      "workerResources": {"limits": {"memory": MEMORY_LIMIT}}}}
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
                       "spec": spec})


def test_a_window_beyond_a_workers_memory_trains_on_dask_and_serves_while_a_single_pod_is_killed(
        cluster, namespace, store_claim, operator_factory, dask_operator_for):  # noqa: ANN001, F811
    store_claim(namespace)
    source, raw = write_window(cluster.store_dir, namespace, "big")
    assert raw > 2.5 * LIMIT_BYTES
    dask_op = dask_operator_for(namespace)
    op = operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="0", NORIA_ROLLOUT_INTERVAL_SECONDS="0.5",
                          NORIA_ROUTER_BACKEND_URLS="clusterIP")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("big", source, "dask"))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("single", source, "single"))
    why = explain(cluster, namespace, "big", [op, dask_op])

    # The single pod reads the whole window into memory: killed at its limit, and the run says so.
    wait_for("the single run ends", lambda: last_run(cluster, namespace, "single").get("outcome"), timeout=180,
             on_timeout=explain(cluster, namespace, "single", [op]))
    run = last_run(cluster, namespace, "single")
    assert (run["outcome"], run["reason"]) == ("Failed", c.TRAINER_OOM_KILLED), run

    # The dask run trains on 2 workers of 512 MiB, passes the gate, registers big-v1.
    mv = wait_for("ModelVersion big-v1", lambda: get(cluster, namespace, "modelversion", "big-v1"), timeout=600,
                  on_timeout=why)
    assert last_run(cluster, namespace, "big")["outcome"] == "Succeeded", why()
    assert mv["spec"]["artifact"]["format"] == "xgboost-json"
    workers = get(cluster, namespace, "pods", selector="dask.org/cluster-name=big-r1,dask.org/component=worker")
    for pod in workers or []:  # still listed when the run ends: the limit they ran with, never restarted for it
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"]["memory"] == MEMORY_LIMIT
        assert all(s.get("restartCount", 0) == 0 for s in pod["status"].get("containerStatuses") or []), pod["status"]
    wait_for("the DaskCluster deleted", lambda: dask_clusters(cluster, namespace) == [], timeout=60, on_timeout=why)

    # Served through a Rollout: the router answers what the registered model predicts on the same rows.
    serve = {"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "big", "namespace": namespace},
             "spec": {"source": {"pipeline": "big"}, "replicas": 1, "strategy": {"immediate": {}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(serve))
    wait_for("big-v1 serves", lambda: rollout_status(cluster, namespace, "big").get("stableVersion") == "big-v1",
             timeout=180, on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "big")))
    rows = np.random.default_rng(99).random((20, FEATURES))
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}]}
    url = service_url(cluster, namespace, "big")
    answer = wait_for("an answer from big-v1", lambda: (r := httpx.post(f"{url}/v2/models/big/infer", json=body,
                                                                          timeout=10)).status_code == 200 and r,
                      timeout=60)
    assert answer.json().get("model_version") == "big-v1", answer.text
    artifact = mv["spec"]["artifact"]
    local = artifact["uri"].replace(f"file://{POD_STORE}", f"file://{cluster.store_dir}")
    model = load_verified(local, artifact["digest"], f"file://{cluster.store_dir}")
    assert [int(v) for v in answer.json()["outputs"][0]["data"]] == [int(v) for v in model.predict(rows)]
