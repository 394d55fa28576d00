"""Real data for trainer runs: sklearn's bundled datasets and a generated time-stamped dataset
with an abrupt concept drift, written as real CSV and Parquet files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets

NOW = dt.datetime(2026, 6, 30, tzinfo=dt.UTC)
DRIFT_DAYS_AGO = 25


def sklearn_frame(name: str) -> pd.DataFrame:
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
              "diabetes": datasets.load_diabetes}[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def drifting_frame(days: int = 180, per_day: int = 40, seed: int = 11) -> pd.DataFrame:
    """Binary labels whose rule changes abruptly DRIFT_DAYS_AGO days before NOW: before, the label
    follows x1 + x3; after, it follows x2 - x1. Also a categorical feature and some missing values."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    age_days = np.sort(rng.uniform(0, days, n))[::-1]
    stamps = pd.Timestamp(NOW) - pd.to_timedelta(age_days, unit="D")
    x1, x2, x3 = rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(-1, 1, n)
    segment = rng.choice(["north", "south", "east"], n)
    noise = rng.normal(0, 0.3, n)
    before = x1 + x3 + noise > 0
    after = x2 - x1 + noise > 0
    label = np.where(age_days > DRIFT_DAYS_AGO, before, after).astype(int)
    x3_with_gaps = np.where(rng.uniform(size=n) < 0.02, np.nan, x3)
    return pd.DataFrame({"event_time": stamps, "x1": x1, "x2": x2, "x3": x3_with_gaps, "segment": segment,
                         "label": label})


def write_partitions(frame: pd.DataFrame, root: Path) -> Path:
    """Hive-style monthly Parquet partitions: root/month=YYYY-MM/part-0.parquet."""
    months = frame["event_time"].dt.strftime("%Y-%m")
    for month, part in frame.groupby(months):
        folder = root / f"month={month}"
        folder.mkdir(parents=True, exist_ok=True)
        part.to_parquet(folder / "part-0.parquet", index=False)
    return root


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


def classifier_spec(target: str, estimator: str = "sklearn.ensemble.HistGradientBoostingClassifier",
                    **model: Any) -> dict[str, Any]:
    return {"task": "classification", "estimator": estimator, "target": target, **model}
