"""Training-set build time from Feast against reading the same columns from Parquet (issue 18).

    make feast-venv && .venv-feast/bin/python benchmarks/feast_training_set.py [--entities 100000] [--customers 10000]

A copy of examples/feast-churn with ``--customers`` customers and a monthly snapshot of their
features over a year, and ``--entities`` labelled entity rows at random times. Three ways to the
same training set, each timed in CPU seconds of this process (robust to a shared machine) and
wall seconds:

1. feast: the trainer's own path (noria_trainer.feast_source.historical_rows: Feast's
   point-in-time join on the file offline store, every entity row kept);
2. merge_asof: the same point-in-time join written by hand with pandas (both Parquet files read,
   ``merge_asof(direction="backward")`` per customer, values older than the ttl dropped);
3. parquet: one Parquet file that already holds the joined columns (what a source without Feast
   reads), read with pandas.

The first two must agree value for value (checked); Feast's import is timed apart, since a
trainer pays it once per run."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["tenure_months", "monthly_charges", "support_calls"]
TTL = pd.Timedelta(days=90)


def build(folder: Path, customers: int, entities: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shutil.copytree(ROOT / "examples" / "feast-churn", folder, ignore=shutil.ignore_patterns("__pycache__"))
    start = pd.Timestamp("2026-01-01", tz="UTC")
    months = 12
    ids = np.repeat(np.arange(customers, dtype="int64"), months)
    stamps = start + pd.to_timedelta(np.tile(np.arange(months) * 30, customers), unit="D") + pd.to_timedelta(
        rng.integers(0, 86_400, customers * months), unit="s")
    stats = pd.DataFrame({"customer_id": ids, "event_timestamp": stamps,
                          "tenure_months": rng.integers(1, 72, len(ids)),
                          "monthly_charges": rng.uniform(20, 120, len(ids)).round(2),
                          "support_calls": rng.poisson(1.5, len(ids))})
    (folder / "data").mkdir(exist_ok=True)
    stats.to_parquet(folder / "data" / "customer_stats.parquet", index=False)
    labels = pd.DataFrame({"customer_id": rng.integers(0, customers, entities).astype("int64"),
                           "label_time": start + pd.to_timedelta(rng.integers(0, 365 * 86_400, entities), unit="s"),
                           "churned": rng.integers(0, 2, entities)})
    labels.to_parquet(folder / "labels.parquet", index=False)
    done = subprocess.run([str(Path(sys.executable).parent / "feast"), "apply"], cwd=folder, capture_output=True,
                          text=True, env={"FEAST_USAGE": "False", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def by_merge_asof(folder: Path) -> pd.DataFrame:
    labels = pd.read_parquet(folder / "labels.parquet")
    stats = pd.read_parquet(folder / "data" / "customer_stats.parquet")
    left = labels.assign(_row=np.arange(len(labels))).sort_values("label_time")
    right = stats.sort_values("event_timestamp")
    out = pd.merge_asof(left, right, left_on="label_time", right_on="event_timestamp", by="customer_id",
                        direction="backward")
    stale = out["event_timestamp"].isna() | (out["label_time"] - out["event_timestamp"] > TTL)
    out.loc[stale, FEATURES] = np.nan
    return out.sort_values("_row").drop(columns=["_row", "event_timestamp"]).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "repo"
        build(folder, args.customers, args.entities)
        _, import_cpu, import_wall = timed(lambda: __import__("feast"))
        from noria_trainer.feast_source import historical_rows
        from noria_trainer.spec import FeastData

        def feast_join() -> pd.DataFrame:
            labels = pd.read_parquet(folder / "labels.parquet")
            return historical_rows(labels, "label_time", FeastData(f"file://{folder}", "churn_v1", None)).frame

        joined, feast_cpu, feast_wall = timed(feast_join)
        manual, asof_cpu, asof_wall = timed(lambda: by_merge_asof(folder))
        for column in FEATURES:
            a, b = joined[column].astype("float64").to_numpy(), manual[column].astype("float64").to_numpy()
            assert np.array_equal(a, b, equal_nan=True), f"{column}: Feast and merge_asof differ"
        manual.to_parquet(folder / "joined.parquet", index=False)
        _, read_cpu, read_wall = timed(lambda: pd.read_parquet(folder / "joined.parquet",
                                                               columns=["customer_id", "label_time", "churned",
                                                                        *FEATURES]))
    result = {"entities": args.entities, "customers": args.customers, "featureRows": args.customers * 12,
              "rowsWithoutFeatures": int(joined[FEATURES[0]].isna().sum()),
              "feastImport": {"cpu": round(import_cpu, 2), "wall": round(import_wall, 2)},
              "feast": {"cpu": round(feast_cpu, 2), "wall": round(feast_wall, 2)},
              "mergeAsof": {"cpu": round(asof_cpu, 2), "wall": round(asof_wall, 2)},
              "parquet": {"cpu": round(read_cpu, 3), "wall": round(read_wall, 3)},
              "versions": {"pandas": pd.__version__, "feast": __import__("feast").__version__}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
