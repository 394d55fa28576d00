"""Small reference models saved the way the trainer saves them, for tests and benchmarks.

A scikit-learn estimator fitted on a pandas DataFrame of raw features (so ``feature_names_in_``
exists), serialised with ``noria.artifact.dumps_model`` (skops), with a drift profile from
``noria.profile.build_profile``. Needs scikit-learn and pandas (both in the ``server`` extra).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from noria.artifact import dumps_model, sha256_digest
from noria.profile import build_profile

Kind = Literal["logistic", "hgb", "regressor", "mixed"]
N_FEATURES = 20


@dataclass
class SavedModel:
    estimator: Any
    frame: Any  # the training DataFrame (features only)
    target: np.ndarray
    artifact_path: str
    profile_path: str
    digest: str
    untrusted_types: list[str]

    @property
    def artifact_uri(self) -> str:
        return "file://" + self.artifact_path

    @property
    def profile_uri(self) -> str:
        return "file://" + self.profile_path

    @property
    def features(self) -> list[str]:
        return [str(c) for c in self.frame.columns]


def dataset(kind: Kind, rows: int = 2000, seed: int = 0) -> tuple[Any, np.ndarray]:
    """Features ``f0..f19`` (plus a categorical ``segment`` for ``mixed``) and a target."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
    score = x[:, 0] + 0.5 * x[:, 1] - 0.8 * x[:, 2] + 0.3 * x[:, 3] * x[:, 4]
    if kind == "mixed":
        segment = rng.choice(["gold", "silver", "bronze"], size=rows)
        frame["segment"] = pd.Series(segment, dtype=object)
        score = score + np.where(segment == "gold", 1.0, 0.0)
    if kind == "regressor":
        return frame, score + rng.normal(scale=0.1, size=rows)
    return frame, (score + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)


def estimator_for(kind: Kind) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f"f{i}" for i in range(N_FEATURES)]
    if kind == "logistic":
        return Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                         ("model", LogisticRegression(max_iter=500))])
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=100, random_state=0)
    if kind == "regressor":
        return Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()), ("model", Ridge())])
    pre = ColumnTransformer([("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["segment"])])
    return Pipeline([("pre", pre), ("model", LogisticRegression(max_iter=500))])


def train_and_save(kind: Kind, directory: str, rows: int = 2000, seed: int = 0) -> SavedModel:
    frame, target = dataset(kind, rows, seed)
    estimator = estimator_for(kind).fit(frame, target)
    data, untrusted = dumps_model(estimator)
    os.makedirs(directory, exist_ok=True)
    artifact_path = os.path.join(directory, "model.skops")
    with open(artifact_path, "wb") as f:
        f.write(data)
    kinds = {c: ("categorical" if c == "segment" else "numeric") for c in frame.columns}
    predictions = estimator.predict(frame)
    profile = build_profile({c: frame[c].to_numpy() for c in frame.columns}, kinds,  # type: ignore[arg-type]
                            predictions=list(predictions),
                            prediction_kind="numeric" if kind == "regressor" else "categorical")
    profile_path = os.path.join(directory, "profile.json")
    with open(profile_path, "w") as f:
        f.write(profile.to_json())
    with open(os.path.join(directory, "metadata.json"), "w") as f:
        json.dump({"kind": kind, "features": list(frame.columns), "untrustedTypes": untrusted}, f)
    return SavedModel(estimator, frame, target, artifact_path, profile_path, sha256_digest(data), untrusted)
