"""Dask runs on the test bed (docs/training-dask.md): the Dask Kubernetes operator runs as a test-bed
process, the node agent runs its scheduler and worker pods (the trainer image, with explicit commands),
and the trainer Job is the Dask client.

The Must-show of issue 16: a window several times one worker's memory limit trains on 2 workers of
512 MiB each and the model serves through a Rollout, while a ``single`` run with the same limit is
killed for memory and fails with that reason; the cluster is deleted when the run ends; a run whose
scheduler dies fails with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from noria import conditions as c
from noria_testbed import dask_operator
from rollout_helpers import rollout_status, service_url
from training_helpers import POD_STORE, get, status, wait_for

pytestmark = pytest.mark.integration

MEMORY_LIMIT = "512Mi"
MEMORY_LIMIT_BYTES = 512 * 2**20
FEATURES = 16
ROWS_PER_PART = 250_000  # 32 MB of float64 features per file
PARTS = 48  # ~1.5 GB in memory: three times one worker's limit


def write_window(store_dir: Path, namespace: str, name: str, parts: int) -> tuple[str, int]:
    """``parts`` Parquet files of a learnable binary problem; (source URI as pods see it, bytes in memory)."""
    folder = store_dir / "datasets" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    in_memory = 0
    for part in range(parts):
        rng = np.random.default_rng(part)
        x = rng.normal(0.0, 1.0, (ROWS_PER_PART, FEATURES))
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)])
        frame["label"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.3, ROWS_PER_PART) > 0).astype(np.int8)
        in_memory += int(frame.memory_usage(index=False).sum())
        tmp = folder / f".part-{part:03d}.parquet.tmp"
        frame.to_parquet(tmp, index=False, compression=None)
        tmp.rename(folder / f"part-{part:03d}.parquet")
    return f"file://{POD_STORE}/datasets/{namespace}/{name}/", in_memory


def pipeline(name: str, source: str, compute: dict) -> str:
    single = compute["engine"] == "single"
    spec = {
        "model": {"task": "classification", "target": "label",
                  "estimator": "sklearn.linear_model.LogisticRegression" if single else "xgboost.XGBClassifier",
                  **({} if single else {"params": {"n_estimators": 8, "max_depth": 3}})},
        "data": {"source": source, "format": "parquet"},
        "validation": {"minRows": 100},
        "evaluation": {"metric": "f1", "minScore": "0.6"},
        "approval": "automatic",
        "compute": compute,
    }
    if single:
        spec["resources"] = {"limits": {"memory": MEMORY_LIMIT}}
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
                       "spec": spec})


DASK = {"engine": "dask", "dask": {"workers": 2, "workerResources": {"limits": {"memory": MEMORY_LIMIT}}}}


@pytest.fixture
def dask_operator_for(cluster) -> Iterator[Callable[[str], dask_operator.DaskOperatorProcess]]:  # noqa: ANN001
    started: list[dask_operator.DaskOperatorProcess] = []

    def start(namespace: str) -> dask_operator.DaskOperatorProcess:
        started.append(dask_operator.start(cluster, namespace))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def dask_clusters(cluster, namespace: str) -> list[str]:  # noqa: ANN001
    return [item["metadata"]["name"] for item in get(cluster, namespace, "daskclusters.kubernetes.dask.org") or []]


def last_run(cluster, namespace: str, name: str) -> dict:  # noqa: ANN001
    return (status(cluster, namespace, name).get("lastRuns") or [{}])[0]


def explain(cluster, namespace: str, name: str, operators: list) -> Callable[[], str]:  # noqa: ANN001
    def text() -> str:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        logs = "\n".join(p.log()[-2000:] for p in operators)
        return f"{json.dumps(status(cluster, namespace, name), indent=1)}\n{pods}\n{logs}"
    return text


def test_a_window_larger_than_a_worker_trains_on_dask_and_serves_while_a_single_pod_is_killed_for_memory(
        cluster, namespace, store_claim, operator_factory, dask_operator_for):  # noqa: ANN001
    store_claim(namespace)
    source, in_memory = write_window(cluster.store_dir, namespace, "big", PARTS)
    assert in_memory > 2.5 * MEMORY_LIMIT_BYTES  # the whole window cannot fit one worker, or one trainer pod
    dask_op = dask_operator_for(namespace)
    op = operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="0", NORIA_ROLLOUT_INTERVAL_SECONDS="0.5",
                          NORIA_ROUTER_BACKEND_URLS="clusterIP")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("big", source, DASK))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("single", source, {"engine": "single"}))
    why = explain(cluster, namespace, "big", [op, dask_op])

    # The single pod reads the whole window into memory: killed at its limit, the run says so.
    single = wait_for("the single run fails", lambda: last_run(cluster, namespace, "single").get("outcome"),
                      timeout=240, on_timeout=explain(cluster, namespace, "single", [op]))
    run = last_run(cluster, namespace, "single")
    assert (single, run["reason"]) == ("Failed", c.TRAINER_OOM_KILLED), run
    assert MEMORY_LIMIT in run["message"]

    # The dask run: a DaskCluster of 2 workers of 512 MiB, then the Job as its client.
    wait_for("the run's DaskCluster", lambda: "big-r1" in dask_clusters(cluster, namespace), timeout=60,
             on_timeout=why)
    workers = get(cluster, namespace, "pods", selector="dask.org/cluster-name=big-r1,dask.org/component=worker")
    mv = wait_for("ModelVersion big-v1", lambda: get(cluster, namespace, "modelversion", "big-v1"), timeout=600,
                  on_timeout=why)
    assert last_run(cluster, namespace, "big")["outcome"] == "Succeeded"
    assert mv["spec"]["artifact"]["format"] == "xgboost-json"
    # The workers ran with the limit and were never killed for it (a restart would show).
    for pod in workers or []:
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"]["memory"] == MEMORY_LIMIT
        assert pod["spec"]["automountServiceAccountToken"] is False
    # The cluster goes with the run.
    wait_for("the DaskCluster deleted", lambda: dask_clusters(cluster, namespace) == [], timeout=60, on_timeout=why)

    # The model serves through a Rollout.
    serve = {"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "big", "namespace": namespace},
             "spec": {"source": {"pipeline": "big"}, "replicas": 1, "strategy": {"immediate": {}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(serve))
    wait_for("big-v1 serves", lambda: rollout_status(cluster, namespace, "big").get("stableVersion") == "big-v1",
             timeout=180, on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "big")))
    url = service_url(cluster, namespace, "big")
    body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP64", "data": [[0.5] * FEATURES]}]}
    answer = wait_for("an answer from big-v1", lambda: (r := httpx.post(f"{url}/v2/models/big/infer", json=body,
                                                                          timeout=10)).status_code == 200 and r,
                      timeout=60)
    assert answer.json().get("model_version") == "big-v1", answer.text


def test_a_dask_run_whose_scheduler_dies_fails_with_a_reason_and_its_cluster_is_deleted(
        cluster, namespace, store_claim, operator_factory, dask_operator_for):  # noqa: ANN001
    store_claim(namespace)
    source, _ = write_window(cluster.store_dir, namespace, "lost", 8)
    dask_op = dask_operator_for(namespace)
    op = operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="0")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("lost", source, DASK))
    why = explain(cluster, namespace, "lost", [op, dask_op])
    scheduler = wait_for("the Job started against the scheduler",
                         lambda: (status(cluster, namespace, "lost").get("currentRun") or {}).get("daskScheduler"),
                         timeout=180, on_timeout=why)
    cluster.kubectl("delete", "pod", "-n", namespace, "-l", "dask.org/cluster-name=lost-r1,dask.org/component=scheduler",
                    "--wait=false")
    wait_for("the run fails", lambda: last_run(cluster, namespace, "lost").get("outcome"), timeout=120, on_timeout=why)
    run = last_run(cluster, namespace, "lost")
    assert (run["outcome"], run["reason"]) == ("Failed", c.DASK_CLUSTER_LOST), run
    assert scheduler in run["message"] or "scheduler" in run["message"]
    st = status(cluster, namespace, "lost")
    degraded = next(cond for cond in st["conditions"] if cond["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", c.DASK_CLUSTER_LOST)
    wait_for("the DaskCluster deleted", lambda: dask_clusters(cluster, namespace) == [], timeout=60, on_timeout=why)
    wait_for("the Job stopped", lambda: not get(cluster, namespace, "job", "lost-r1"), timeout=60, on_timeout=why)
