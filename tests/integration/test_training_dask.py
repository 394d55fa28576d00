"""Dask runs on the test bed (docs/training-dask.md): the Dask Kubernetes operator runs as a test-bed
process, the node agent runs its scheduler and worker pods (the trainer image, with explicit commands),
and the trainer Job is the Dask client. A run whose scheduler dies fails with a reason, its Job is
stopped and its cluster deleted.

The Must-show of issue 16 (a window larger than a worker's memory training on 2 workers and serving
through a Rollout, a single run with the same limit killed for memory) is its own module,
test_dask_window_beyond_memory.py (`make dask-must-show`; docs/training-dask.md, "Memory of a worker").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from noria import conditions as c
from noria_testbed import dask_operator
from training_helpers import POD_STORE, get, status, wait_for

pytestmark = pytest.mark.integration

MEMORY_LIMIT = "768Mi"
FEATURES = 16
ROWS_PER_PART = 250_000  # 32 MB of float64 features per file


def write_window(store_dir: Path, namespace: str, name: str, parts: int) -> str:
    """``parts`` Parquet files of a learnable binary problem; the source URI as pods see it."""
    folder = store_dir / "datasets" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        rng = np.random.default_rng(part)
        x = rng.normal(0.0, 1.0, (ROWS_PER_PART, FEATURES))
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)])
        frame["label"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.3, ROWS_PER_PART) > 0).astype(np.int8)
        tmp = folder / f".part-{part:03d}.parquet.tmp"
        frame.to_parquet(tmp, index=False, compression=None)
        tmp.rename(folder / f"part-{part:03d}.parquet")
    return f"file://{POD_STORE}/datasets/{namespace}/{name}/"


def pipeline(name: str, source: str, compute: dict, trees: int = 5) -> str:
    single = compute["engine"] == "single"
    spec = {
        "model": {"task": "classification", "target": "label",
                  "estimator": "sklearn.linear_model.LogisticRegression" if single else "xgboost.XGBClassifier",
                  **({} if single else {"params": {"n_estimators": trees, "max_depth": 3}})},
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


def container_line(cs: dict) -> str:
    """One container status: state (reason, exit code), readiness, restarts and how the last one ended."""
    state = cs.get("state") or {}
    kind = next(iter(state), "unknown")
    detail = state.get(kind) or {}
    text = f"{cs.get('name')}: {kind}"
    if detail.get("reason"):
        text += f" {detail['reason']}"
    if "exitCode" in detail:
        text += f" exit {detail['exitCode']}"
    text += f", ready {bool(cs.get('ready'))}, restarts {cs.get('restartCount', 0)}"
    last = (cs.get("lastState") or {}).get("terminated")
    if last:
        text += f", last ended {last.get('reason')} exit {last.get('exitCode')}"
    return text


def pod_states(cluster, namespace: str) -> tuple[str, str]:  # noqa: ANN001
    """(the log tail of every pod in ``namespace``, one state line per pod and container)."""
    tails, lines = [], []
    for pod in get(cluster, namespace, "pods") or []:
        meta, st = pod["metadata"], pod.get("status") or {}
        name = meta["name"]
        component = (meta.get("labels") or {}).get("dask.org/component", "trainer")
        if cluster.node_agent is not None:
            log = cluster.node_agent.pod_log(namespace, name).splitlines()[-25:]
            tails.append(f"--- pod {name} ({component}) log (tail) ---\n" + "\n".join(log))
        containers = "; ".join(container_line(cs) for cs in st.get("containerStatuses") or []) or "no container yet"
        lines.append(f"{name} ({component}) {st.get('phase')}{' deleting' if meta.get('deletionTimestamp') else ''}: "
                     f"{containers}")
    return "\n".join(tails), "\n".join(lines) or "no pods"


def explain(cluster, namespace: str, name: str, operators: list) -> Callable[[], str]:  # noqa: ANN001
    """What a timed-out wait prints, the state last (CI output is read from its end): the operators'
    log tails, every pod's log tail, then the Jobs, the pipeline's status and every pod's container
    states (exit codes, restarts)."""
    def text() -> str:
        try:
            return gather()
        except Exception as error:  # noqa: BLE001 - a broken explanation must not hide the timeout
            return f"(explaining failed: {type(error).__name__}: {error})"

    def gather() -> str:
        logs = "\n".join(f"--- {p.log_path.name} (tail) ---\n{p.log()[-2000:]}" for p in operators)
        tails, states = pod_states(cluster, namespace)
        job_lines = "\n".join(
            f"{j['metadata']['name']}: {json.dumps((j.get('status') or {}), sort_keys=True)}"
            for j in get(cluster, namespace, "jobs") or []) or "no Jobs"
        return (f"{logs}\n{tails}\n--- Jobs ---\n{job_lines}\n--- TrainingPipeline {name} status ---\n"
                f"{json.dumps(status(cluster, namespace, name), indent=1)}\n--- pods ---\n{states}")
    return text


def test_a_dask_run_whose_scheduler_dies_fails_with_a_reason_and_its_cluster_is_deleted(
        cluster, namespace, store_claim, operator_factory, dask_operator_for):  # noqa: ANN001
    store_claim(namespace)
    source = write_window(cluster.store_dir, namespace, "lost", 8)
    dask_op = dask_operator_for(namespace)
    op = operator_factory(namespace, NORIA_TRAINER_BACKOFF_LIMIT="0")
    # Enough trees that the Job outlives the scheduler's deletion on a loaded machine: undisturbed, the Job
    # ran ~18 s after the scheduler was recorded with 5 trees and ~43 s with 150 (idle machine); a loaded CI
    # run once finished 5 trees before the deletion landed, and the run rightly succeeded.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline("lost", source, DASK, trees=300))
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
    # Stopped by the operator (deleted), or failed on its own first (kept in the history): never left running.
    wait_for("the Job stopped", lambda: not (job := get(cluster, namespace, "job", "lost-r1")) or any(
        cond["type"] == "Failed" and cond["status"] == "True" for cond in (job.get("status") or {}).get("conditions") or []),
        timeout=60, on_timeout=why)
