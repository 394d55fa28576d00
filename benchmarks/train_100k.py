"""One real training run on 100,000 rows × 20 features: wall time and peak memory per stage.

    python benchmarks/train_100k.py [--rows 100000] [--features 20] [--estimator ...] [--tuning-trials 0]

Writes a time-stamped dataset (16 numeric + 4 categorical features, 2 % missing values, monthly
Parquet partitions), runs ``python -m noria_trainer run`` as a real process (as the Job does), and
prints the per-stage table from its progress lines: seconds and peak RSS of the stage (the
trainer resets the kernel's high-water mark at every stage start). Also the whole process's wall
time and max RSS, and the machine load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_frame(rows: int, features: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_cat = min(4, features // 5)
    numeric = rng.normal(size=(rows, features - n_cat))
    frame = pd.DataFrame(numeric, columns=[f"n{i}" for i in range(features - n_cat)])
    for i in range(n_cat):
        frame[f"c{i}"] = rng.choice([f"v{k}" for k in range(8 + 4 * i)], rows)
    score = numeric[:, 0] + 0.5 * numeric[:, 1] * numeric[:, 2] - 0.3 * numeric[:, 3] + \
        (frame["c0"].isin(["v1", "v2", "v3"]) if n_cat else 0) + rng.normal(0, 0.7, rows)
    frame["label"] = (score > 0).astype(int)
    for col in frame.columns[:-1]:
        frame.loc[rng.uniform(size=rows) < 0.02, col] = np.nan
    now = dt.datetime(2026, 6, 30, tzinfo=dt.UTC)
    frame["event_time"] = pd.Timestamp(now) - pd.to_timedelta(np.sort(rng.uniform(0, 180, rows))[::-1], unit="D")
    return frame


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--estimator", default="sklearn.ensemble.HistGradientBoostingClassifier")
    parser.add_argument("--tuning-trials", type=int, default=0, help="random search trials (0 = no tuning)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", default="1",
                        help="NORIA_TRAINER_THREADS for the run ('' = library defaults; 1 suits a shared machine)")
    args = parser.parse_args()

    print(f"load before: {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame = make_frame(args.rows, args.features, args.seed)
        data = root / "data"
        for month, part in frame.groupby(frame["event_time"].dt.strftime("%Y-%m")):
            (data / f"month={month}").mkdir(parents=True)
            part.to_parquet(data / f"month={month}" / "part-0.parquet", index=False)
        spec = {
            "runId": "bench-r1", "trigger": "manual", "namespace": "bench", "pipeline": "bench", "version": 1,
            "champion": None, "storeRoot": f"file://{root}/store", "outputUri": f"file://{root}/store/bench/bench/v1",
            "trustedDataPrefixes": [f"file://{data}/"],  # the generated data lies beside the store
            "now": "2026-06-30T00:00:00Z",
            "spec": {
                "model": {"task": "classification", "estimator": args.estimator, "target": "label"},
                "data": {"source": f"file://{data}/", "format": "parquet", "timestampColumn": "event_time",
                         "window": {"last": "180d"}},
                "validation": {"minRows": 1000, "maxMissingFraction": "0.05"},
                "evaluation": {"metric": "f1", "holdoutFraction": "0.2", "minScore": "0.5"},
            },
        }
        if args.tuning_trials:
            spec["spec"]["tuning"] = {"strategy": "random", "trials": args.tuning_trials,
                                      "space": {"learning_rate": [0.01, 0.3], "max_leaf_nodes": [15, 63]}}
        partitions = len(list(data.glob("month=*")))
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "noria_trainer", "run", "--spec", str(spec_path),
                               "--termination-log", str(root / "termination-log")],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "NORIA_TRAINER_THREADS": args.threads})
        wall = time.perf_counter() - t0
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1] if lines else {}
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        print(json.dumps(summary, indent=1))
        return 1
    print(f"data: {args.rows} rows × {args.features} features ({partitions} Parquet partitions), "
          f"estimator {args.estimator}, tuning trials {args.tuning_trials}, "
          f"NORIA_TRAINER_THREADS={args.threads!r}")
    print(f"{'stage':16} {'seconds':>9} {'peak RSS MB':>12}")
    for line in lines[:-1]:
        if line.get("event") == "done":
            print(f"{line['stage']:16} {line['seconds']:9.3f} {line['peakRssMB'] or 0:12.1f}")
    print(f"{'process total':16} {wall:9.3f} {child.ru_maxrss / 1024:12.1f}   (wall incl. interpreter start; max RSS)")
    print(f"result: {summary['verdict']}, f1 {summary['metrics']['f1']}, rows {summary['rows']}, "
          f"window {summary['window']}")
    print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
