"""Dask runs against the single-pod trainer: rows/s, peak memory, and the largest window each trains.

    python benchmarks/train_dask_vs_single.py [--millions 0.5 1 2 4] [--limit-mib 512] [--features 20]
                                              [--rounds 10] [--json out.json]

For each size, ``--features`` float64 features and a binary label are written as Parquet files of
250 000 rows (the store's partitions), then trained twice with the same gate settings:

Memory is what a node's cgroup could not reclaim and the test bed's node agent counts against a
container's limit: ``RssAnon + RssShmem`` of ``/proc/<pid>/status`` (noria_testbed.node_agent.memory),
sampled every 5 ms by a thread in the process; file-backed pages (the libraries, XGBoost's paged
matrix read through mmap) are not counted, as a node reclaims them before it kills anything.

- **single**: ``python -m noria_trainer`` on ``sklearn.ensemble.HistGradientBoostingClassifier``
  (``max_iter`` = rounds) in a child process. A pod with a memory limit of ``--limit-mib`` is
  OOM-killed above it, so the largest size whose peak stays under the limit is the largest window
  the single engine can train.
- **dask**: the same data through ``noria_trainer.dask_training`` with ``xgboost.XGBClassifier``
  on a fresh ``LocalCluster`` of 2 worker processes with ``memory_limit`` = ``--limit-mib`` (spill
  and pause as in the pods). The nanny's own kill is off (the pods run without a nanny, and it counts
  file-backed pages); each worker's sampler SIGKILLs its process above the limit, as the node agent
  would. A killed worker fails the run: that size is beyond the engine.

On the test bed the cluster is made by the Dask Kubernetes operator instead (docs/training-dask.md);
this machine (2 cores shared with other jobs) runs the workers as local processes. rows/s is the
window's rows over the run's wall time, reading and validation included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROWS_PER_FILE = 250_000  # --rows-per-file: a Dask worker reads one file at a time


def write_data(root: Path, rows: int, features: int, rows_per_file: int = ROWS_PER_FILE) -> None:
    folder = root / "ml" / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    weights = rng.normal(size=features)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for i, first in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - first)
        x = rng.normal(size=(n, features))
        frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(features)])
        frame["label"] = (x @ weights + rng.normal(size=n) > 0).astype(int)
        frame["ts"] = start + pd.to_timedelta(np.arange(first, first + n), unit="s")
        frame.to_parquet(folder / f"part-{i:04d}.parquet")


def run_spec(root: Path, engine: str, rounds: int) -> dict[str, Any]:
    estimator, params = (
        ("xgboost.XGBClassifier", {"n_estimators": rounds, "max_depth": 6})
        if engine == "dask"
        else ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": rounds})
    )
    return {
        "runId": f"bench-r-{engine}",
        "trigger": "manual",
        "namespace": "ml",
        "pipeline": "bench",
        "version": 1,
        "storeRoot": f"file://{root}",
        "outputUri": f"file://{root}/ml/bench-{engine}/v1",
        "spec": {
            "model": {"task": "classification", "estimator": estimator, "target": "label", "params": params},
            "data": {"source": f"file://{root}/ml/data", "timestampColumn": "ts"},
            "compute": {"engine": engine},
        },
    }


def unreclaimable_kib() -> int:
    """RssAnon + RssShmem of this process, KiB (what the node agent counts)."""
    with open("/proc/self/status") as handle:
        return sum(int(line.split()[1]) for line in handle if line.startswith(("RssAnon:", "RssShmem:")))


# The trainer's own entry point, then the process's peak unreclaimable memory (KiB) as the last line.
SINGLE_POD = """
import sys, threading, time
from train_dask_vs_single import unreclaimable_kib
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], unreclaimable_kib())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
from noria_trainer.__main__ import main
code = main(["run", "--spec", sys.argv[1], "--termination-log", "/dev/null"])
print(max(peak[0], unreclaimable_kib()))
sys.exit(code)
"""


def single(root: Path, rows: int, rounds: int) -> dict[str, Any]:
    spec_path = root / "single.json"
    spec_path.write_text(json.dumps(run_spec(root, "single", rounds)))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SINGLE_POD, str(spec_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "NORIA_TRAINER_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)},
    )
    seconds = time.monotonic() - started
    lines = done.stdout.strip().splitlines()
    summary, peak_kib = json.loads(lines[-2]), int(lines[-1])
    return {
        "engine": "single",
        "rows": rows,
        "ok": done.returncode == 0,
        "seconds": round(seconds, 1),
        "rowsPerSecond": round(rows / seconds),
        "peakMiB": [round(peak_kib / 1024)],
        "f1": (summary.get("metrics") or {}).get("f1"),
        "reason": None if done.returncode == 0 else summary.get("reason"),
    }


def _start_sampler(dask_worker: Any, limit_kib: int) -> None:
    """In a worker: the peak of what the node agent counts, kept on the worker; above the limit the
    process is SIGKILLed, as the node agent kills a container."""
    import signal
    import threading

    peak = dask_worker.noria_peak_kib = [unreclaimable_kib()]

    def sample() -> None:
        while True:
            now = unreclaimable_kib()
            peak[0] = max(peak[0], now)
            if now > limit_kib:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True, name="noria-memory").start()


def _peak_kib(dask_worker: Any) -> int:
    return dask_worker.noria_peak_kib[0]


def dask(root: Path, rows: int, rounds: int, limit_mib: int) -> dict[str, Any]:
    import dask
    from distributed import Client, LocalCluster
    from noria_trainer import dask_training
    from noria_trainer import run as run_mod

    # The pods' worker environment (docs/training-dask.md "The pods"), inherited by the worker processes.
    os.environ.update(MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS="1", ARROW_DEFAULT_MEMORY_POOL="system")
    with (
        dask.config.set({"distributed.worker.memory.terminate": False}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=f"{limit_mib}MiB",
        ) as cluster,
    ):
        os.environ[dask_training.SCHEDULER_ENV] = cluster.scheduler_address
        with Client(cluster) as client:
            client.run(_start_sampler, limit_kib=limit_mib * 1024)
        started = time.monotonic()
        code, summary = run_mod.run_document(run_spec(root, "dask", rounds), io.StringIO())
        seconds = time.monotonic() - started
        with Client(cluster) as client:  # after the run: one client at a time in this process
            try:
                peaks = sorted(round(kib / 1024) for kib in client.run(_peak_kib).values())
            except Exception:  # a worker being restarted after a kill
                peaks = []
    return {
        "engine": "dask",
        "rows": rows,
        "ok": code == 0,
        "seconds": round(seconds, 1),
        "rowsPerSecond": round(rows / seconds),
        "peakMiB": peaks,
        "f1": (summary.get("metrics") or {}).get("f1"),
        "reason": None if code == 0 else summary.get("reason"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--millions", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--limit-mib", type=int, default=512)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engines", nargs="+", default=["single", "dask"])
    parser.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = []
    for millions in args.millions:
        rows = int(millions * 1_000_000)
        root = Path(tempfile.mkdtemp(prefix="noria-bench-dask-"))
        try:
            write_data(root, rows, args.features, args.rows_per_file)
            raw_mib = rows * (args.features + 2) * 8 / 2**20
            for engine in args.engines:
                result = (
                    single(root, rows, args.rounds)
                    if engine == "single"
                    else dask(root, rows, args.rounds, args.limit_mib)
                )
                result["rawMiB"] = round(raw_mib)
                result["fitsLimit"] = (
                    result["ok"]
                    and len(result["peakMiB"]) > 0
                    and all(p <= args.limit_mib for p in result["peakMiB"])
                )
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for engine in args.engines:
        fitting = [r["rows"] for r in results if r["engine"] == engine and r["fitsLimit"]]
        print(
            f"{engine}: largest window trained within {args.limit_mib} MiB per process: "
            f"{max(fitting) if fitting else 'none of the sizes tried'} rows"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
