"""Writes data/customer_stats.parquet (the feature source) and labels.parquet (an entity source)
for a quick try: ``python make_data.py && feast apply``. Synthetic, seeded: churn is likelier with
few tenure months, high charges and many support calls. Tests write their own exact rows instead."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write(folder: Path, customers: int = 500, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    stats = []
    for month in range(6):  # a snapshot per customer per month, known at the start of the month
        stats.append(pd.DataFrame({
            "customer_id": np.arange(customers, dtype="int64"),
            "event_timestamp": start + pd.DateOffset(months=month),
            "tenure_months": rng.integers(1, 72, customers),
            "monthly_charges": rng.uniform(20, 120, customers).round(2),
            "support_calls": rng.poisson(1.5, customers),
        }))
    frame = pd.concat(stats, ignore_index=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "data" / "customer_stats.parquet", index=False)
    # One label per customer, some days into the last month: the features it gets are that month's.
    last = frame[frame["event_timestamp"] == frame["event_timestamp"].max()].reset_index(drop=True)
    risk = -0.04 * last["tenure_months"] + 0.02 * last["monthly_charges"] + 0.5 * last["support_calls"] - 1.0
    labels = pd.DataFrame({
        "customer_id": last["customer_id"],
        "label_time": last["event_timestamp"] + pd.to_timedelta(rng.integers(1, 27, len(last)), unit="D"),
        "churned": (rng.random(len(last)) < 1 / (1 + np.exp(-risk))).astype("int64"),
    })
    labels.to_parquet(folder / "labels.parquet", index=False)
    write_empty_feedback(folder)


# The push source's batch file (features.py, churn_feedback): Feast's file offline store appends pushed
# rows to it and refuses a push whose columns are not exactly these, so it exists from the start, empty.
FEEDBACK_SCHEMA = pa.schema([
    ("customer_id", pa.int64()),
    ("tenure_months", pa.float64()),
    ("monthly_charges", pa.float64()),
    ("support_calls", pa.float64()),
    ("prediction", pa.int64()),
    ("label", pa.int64()),
    ("prediction_id", pa.string()),
    ("model_version", pa.string()),
    ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ("labelled_at", pa.timestamp("us", tz="UTC")),
])


def write_empty_feedback(folder: Path) -> None:
    path = folder / "data" / "churn_feedback.parquet"
    if not path.exists():  # never overwrite rows already pushed
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(FEEDBACK_SCHEMA.empty_table(), path)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
