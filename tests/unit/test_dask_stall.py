"""A Dask run that cannot progress fails with a reason instead of waiting for its Job's deadline
(noria_trainer.dask_training.StallWatch): on a real dask.distributed LocalCluster whose workers Dask's
own memory monitor has paused (the CI failure of test_training_dask_linear.py: both 512 MiB workers
paused at 80 % of their limit, the run waited until the test gave up), and on one with no worker."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from noria_trainer import dask_training
from noria_trainer import run as run_mod
from test_dask_training import run_spec

PATIENCE = 3.0  # NORIA_DASK_STALL_SECONDS in these tests


def write_data(root: Path) -> None:
    folder = root / "ml" / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(2):
        x1, x2 = rng.normal(size=500), rng.normal(size=500)
        frame = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=500, freq="min"), "x1": x1, "x2": x2,
                              "label": (x1 + x2 > 0).astype(int)})
        frame.to_parquet(folder / f"part-{i:03d}.parquet")


@pytest.fixture
def stall_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(dask_training.STALL_SECONDS_ENV, str(PATIENCE))
    yield


def run_against(cluster: LocalCluster, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict, float]:
    """The run's (exit code, summary, seconds); in a thread, so that a run which hangs fails the test."""
    monkeypatch.setenv(dask_training.SCHEDULER_ENV, cluster.scheduler_address)
    box: dict[str, Any] = {}

    def run() -> None:
        box["result"] = run_mod.run_document(run_spec(root, "classification", "sklearn.linear_model.LogisticRegression", params={}),
                                               io.StringIO())

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(PATIENCE + 60)
    assert "result" in box, "the run neither finished nor failed: it hangs"
    code, summary = box["result"]
    return code, summary, time.monotonic() - started


def test_a_run_whose_workers_dask_paused_for_memory_fails_saying_so(
        tmp_path: Path, stall_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_data(tmp_path)
    # In-process workers: Dask's memory monitor measures this test process, far above 64 MiB, and
    # pauses both workers (as it paused the 512 MiB workers holding the dask-ml imports on CI).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      memory_limit="64MiB") as local:
        deadline = time.monotonic() + 30
        while {w.status.name for w in local.workers.values()} != {"paused"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {w.status.name for w in local.workers.values()} == {"paused"}
        code, summary, seconds = run_against(local, tmp_path, monkeypatch)
    assert code == run_mod.EXIT_TRAINING, summary
    assert summary["failedStage"] == "load", summary
    reason = summary["reason"]
    assert "stalled" in reason and "paused by Dask at its memory limit" in reason, reason
    assert "of 64 MiB" in reason and "workerResources" in reason, reason
    assert PATIENCE <= seconds < PATIENCE + 30, seconds


def test_a_run_no_worker_joins_fails_saying_so(
        tmp_path: Path, stall_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_data(tmp_path)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as local:
        code, summary, seconds = run_against(local, tmp_path, monkeypatch)
    assert code == run_mod.EXIT_TRAINING, summary
    assert "no Dask worker is connected to the scheduler" in summary["reason"], summary
    assert PATIENCE <= seconds < PATIENCE + 30, seconds


def test_why_stalled_needs_one_running_worker() -> None:
    running = {"status": "running", "name": "a", "metrics": {"memory": 300 * 2**20}, "memory_limit": 512 * 2**20}
    paused = {"status": "paused", "name": "b", "metrics": {"memory": 411 * 2**20}, "memory_limit": 512 * 2**20}
    closing = {"status": "closing_gracefully", "name": "c"}
    assert dask_training.why_stalled({"a": running, "b": paused}) is None
    assert dask_training.why_stalled({}) == "no Dask worker is connected to the scheduler"
    assert "b 411 MiB of 512 MiB" in (dask_training.why_stalled({"b": paused}) or "")
    assert "c: closing_gracefully" in (dask_training.why_stalled({"b": paused, "c": closing}) or "")


def test_the_stall_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dask_training.STALL_SECONDS_ENV, "45")
    assert dask_training.stall_seconds() == 45.0
    for bad in ("", "soon", "-1", "0"):
        monkeypatch.setenv(dask_training.STALL_SECONDS_ENV, bad)
        assert dask_training.stall_seconds() == dask_training.DEFAULT_STALL_SECONDS
