"""Scoring what users got, and what they would have got: pure functions over the request frame.

The served score uses the prediction each user actually received (whatever version answered).
The counterfactual score replays the same requests through a fixed model -- "v1 kept serving" --
loaded from the store with ``noria.artifact.load_verified`` (the digest is checked, as the server
checks it), so the two curves differ only by what Noria did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from noria.artifact import load_verified
from noria.drift import psi
from noria.profile import Profile

from noria_testbed.demo import dataset as D


def load_model(artifact_uri: str, digest: str) -> Any:
    return load_verified(artifact_uri, digest)


def predict_rows(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Class predictions (0/1) of ``model`` for the feature columns of ``frame``."""
    if frame.empty:
        return np.zeros(0, dtype=np.int64)
    features = frame[list(D.FEATURES)].copy()
    for name in D.NUMERIC_FEATURES:
        features[name] = features[name].astype(float)
    for name in D.CATEGORICAL_FEATURES:
        features[name] = features[name].astype(str)
    raw = np.asarray(model.predict(features))
    return np.array([int(float(x)) for x in raw], dtype=np.int64)


@dataclass(frozen=True)
class Score:
    n: int
    accuracy: float | None
    f1: float | None

    def text(self) -> str:
        if self.accuracy is None:
            return "no labelled answers"
        return f"accuracy {self.accuracy:.3f}, F1 {self.f1:.3f} over {self.n} requests"


def score(labels: np.ndarray | pd.Series, predictions: np.ndarray | pd.Series) -> Score:
    """Accuracy and F1 (positive class: churned) of the pairs where both are known."""
    y = pd.to_numeric(pd.Series(np.asarray(labels)), errors="coerce")
    p = pd.to_numeric(pd.Series(np.asarray(predictions)), errors="coerce")
    known = y.notna() & p.notna()
    y, p = y[known].astype(int).to_numpy(), p[known].astype(int).to_numpy()
    if y.size == 0:
        return Score(0, None, None)
    tp = int(np.sum((y == 1) & (p == 1)))
    fp = int(np.sum((y == 0) & (p == 1)))
    fn = int(np.sum((y == 1) & (p == 0)))
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return Score(int(y.size), float(np.mean(y == p)), float(f1))


def between(frame: pd.DataFrame, start: float | None = None, end: float | None = None) -> pd.DataFrame:
    """Requests sent in [start, end) (seconds since the epoch; None = open)."""
    mask = np.ones(len(frame), dtype=bool)
    if start is not None:
        mask &= frame["ts"].to_numpy(float) >= start
    if end is not None:
        mask &= frame["ts"].to_numpy(float) < end
    return frame[mask]


def over_time(frame: pd.DataFrame, prediction_column: str, bucket_seconds: float,
              origin: float | None = None, min_n: int = 10) -> pd.DataFrame:
    """Accuracy and F1 of ``prediction_column`` per time bucket: columns t (seconds since
    ``origin``, bucket middle), n, accuracy, f1. Buckets with fewer than ``min_n`` labelled answers
    (the ragged last one) are left out: their accuracy is mostly noise."""
    if bucket_seconds <= 0:
        raise ValueError(f"bucket_seconds must be > 0, got {bucket_seconds}")
    columns = ["t", "n", "accuracy", "f1"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    t0 = float(frame["ts"].min()) if origin is None else origin
    bucket = np.floor((frame["ts"].to_numpy(float) - t0) / bucket_seconds).astype(int)
    rows = []
    for b in np.unique(bucket):
        part = frame[bucket == b]
        s = score(part["label"], part[prediction_column])
        if s.accuracy is not None and s.n >= min_n:
            rows.append({"t": (b + 0.5) * bucket_seconds, "n": s.n, "accuracy": s.accuracy, "f1": s.f1})
    return pd.DataFrame(rows, columns=columns)


def drift_over_time(frame: pd.DataFrame, profile: Profile, bucket_seconds: float,
                    origin: float | None = None, min_n: int = 100) -> pd.DataFrame:
    """Largest per-feature PSI of the inputs sent in each bucket against ``profile`` (the same
    binning the server counts into and the operator compares): columns t, psi, feature. Buckets
    with fewer than ``min_n`` inputs are left out (PSI of a small sample is biased upwards)."""
    columns = ["t", "psi", "feature"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    t0 = float(frame["ts"].min()) if origin is None else origin
    bucket = np.floor((frame["ts"].to_numpy(float) - t0) / bucket_seconds).astype(int)
    rows = []
    for b in np.unique(bucket):
        part = frame[bucket == b]
        if len(part) < min_n:
            continue
        worst, worst_feature = 0.0, None
        for name, fp in profile.features.items():
            if name not in part.columns:
                continue
            values = part[name].to_numpy(float) if fp.kind == "numeric" else part[name].tolist()
            value = float(psi(fp.reference, fp.counts(values)))
            if value > worst:
                worst, worst_feature = value, name
        rows.append({"t": (b + 0.5) * bucket_seconds, "psi": worst, "feature": worst_feature})
    return pd.DataFrame(rows, columns=columns)
