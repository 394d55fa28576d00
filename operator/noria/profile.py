"""The drift reference profile (``profile.json``): per-feature bins and reference fractions.

Written by the trainer from the training data, read by the server (which counts every live input
value into the same bins, ``noria_feature_bin_total``) and by the operator (which compares the
summed live counts with the reference fractions). One definition of the bins keeps the three in
agreement; nothing here imports pandas or kopf.

Bin labels, in canonical order (the order of ``FeatureProfile.labels`` and ``reference``):
- numeric: ``"0" .. "k-1"`` for the quantile bins ``[edges[i], edges[i+1])`` (the last bin is
  closed), then ``below`` (< edges[0]), ``above`` (> edges[-1]), ``missing`` (NaN/None);
- categorical: the top categories as strings, then ``other``, then ``missing``.
Reference fractions for ``below``/``above`` are 0 by construction; statistics add a small epsilon.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from noria.metrics import BIN_ABOVE, BIN_BELOW, BIN_MISSING, BIN_OTHER

PROFILE_SCHEMA: Final = "noria.dev/profile/v1"
DEFAULT_NUMERIC_BINS: Final = 10
DEFAULT_TOP_CATEGORIES: Final = 20

Kind = Literal["numeric", "categorical"]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class FeatureProfile:
    kind: Kind
    labels: tuple[str, ...]
    reference: np.ndarray  # fractions in label order, summing to 1
    edges: np.ndarray | None = None  # numeric only: k+1 increasing edges
    categories: tuple[str, ...] = ()  # categorical only

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, values: Sequence[Any] | np.ndarray, kind: Kind, n_bins: int = DEFAULT_NUMERIC_BINS,
              top_categories: int = DEFAULT_TOP_CATEGORIES) -> FeatureProfile:
        if kind == "numeric":
            arr = np.asarray(values, dtype=float)
            present = arr[~np.isnan(arr)]
            if present.size == 0:
                edges = np.array([0.0, 0.0])
            else:
                edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, n_bins + 1)))
                if edges.size == 1:
                    edges = np.array([edges[0], edges[0]])
            profile = cls._numeric(edges, np.zeros(edges.size - 1 + 3))
            counts = profile.counts(arr)
        else:
            strings = [None if _is_missing(v) else str(v) for v in values]
            top = Counter(s for s in strings if s is not None).most_common(top_categories)
            profile = cls._categorical(tuple(sorted(c for c, _ in top)), np.zeros(len(top) + 2))
            counts = profile.counts(strings)
        total = counts.sum()
        reference = counts / total if total else counts
        return FeatureProfile(profile.kind, profile.labels, reference, profile.edges, profile.categories)

    @classmethod
    def _numeric(cls, edges: np.ndarray, reference: np.ndarray) -> FeatureProfile:
        labels = tuple(str(i) for i in range(edges.size - 1)) + (BIN_BELOW, BIN_ABOVE, BIN_MISSING)
        return cls("numeric", labels, np.asarray(reference, dtype=float), np.asarray(edges, dtype=float))

    @classmethod
    def _categorical(cls, categories: tuple[str, ...], reference: np.ndarray) -> FeatureProfile:
        return cls("categorical", categories + (BIN_OTHER, BIN_MISSING), np.asarray(reference, dtype=float),
                   None, categories)

    # --- binning ------------------------------------------------------------------------------
    def assign(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Index into ``labels`` of every value (vectorised for numeric features)."""
        n = len(self.labels)
        if self.kind == "numeric":
            assert self.edges is not None
            arr = np.asarray(values, dtype=float)
            idx = np.searchsorted(self.edges[1:-1], arr, side="right")
            idx = np.where(arr < self.edges[0], n - 3, idx)
            idx = np.where(arr > self.edges[-1], n - 2, idx)
            return np.where(np.isnan(arr), n - 1, idx)
        positions = {c: i for i, c in enumerate(self.categories)}
        other, missing = n - 2, n - 1
        return np.fromiter(
            (missing if _is_missing(v) else positions.get(str(v), other) for v in values),
            dtype=np.int64,
            count=len(values),
        )

    def counts(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        return np.bincount(self.assign(values), minlength=len(self.labels)).astype(float)

    def label_of(self, value: Any) -> str:
        """Bin label of one value (the server's per-request path)."""
        if self.kind == "numeric":
            if _is_missing(value):
                return BIN_MISSING
            try:
                x = float(value)
            except (TypeError, ValueError):
                return BIN_MISSING
            if math.isnan(x):
                return BIN_MISSING
            return self.labels[int(self.assign(np.array([x]))[0])]
        if _is_missing(value):
            return BIN_MISSING
        s = str(value)
        return s if s in self.categories else BIN_OTHER

    def vector(self, counts_by_label: dict[str, float]) -> np.ndarray:
        """Counts keyed by bin label (as Prometheus returns them) in this profile's label order."""
        return np.array([float(counts_by_label.get(label, 0.0)) for label in self.labels])

    # --- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "labels": list(self.labels),
                               "fractions": [round(float(x), 10) for x in self.reference]}
        if self.kind == "numeric":
            assert self.edges is not None
            out["edges"] = [float(x) for x in self.edges]
        else:
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureProfile:
        if data["kind"] == "numeric":
            return cls._numeric(np.asarray(data["edges"], dtype=float), np.asarray(data["fractions"], dtype=float))
        return cls._categorical(tuple(data["categories"]), np.asarray(data["fractions"], dtype=float))


@dataclass(frozen=True)
class Profile:
    features: dict[str, FeatureProfile]
    prediction: FeatureProfile | None
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "rows": self.rows,
            "features": {name: fp.to_dict() for name, fp in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("schema") != PROFILE_SCHEMA:
            raise ValueError(f"not a Noria profile (schema {data.get('schema')!r}, expected {PROFILE_SCHEMA!r})")
        pred = data.get("prediction")
        return cls(
            features={name: FeatureProfile.from_dict(fp) for name, fp in data["features"].items()},
            prediction=FeatureProfile.from_dict(pred) if pred else None,
            rows=int(data.get("rows", 0)),
        )

    @classmethod
    def load(cls, uri: str) -> Profile:
        """The profile at a ``file://`` or ``s3://`` URI, read within the profile size cap (an
        ``s3://`` one with this process's AWS credentials). Unreadable: ValueError naming why."""
        from noria.artifact import ArtifactError, read_bounded

        try:
            data = read_bounded(uri)
        except ArtifactError as exc:
            raise ValueError(f"cannot read the profile {uri}: {exc}") from None
        return cls.from_dict(json.loads(data))


def build_profile(columns: dict[str, Iterable[Any]], kinds: dict[str, Kind],
                  predictions: Sequence[Any] | None = None, prediction_kind: Kind = "categorical",
                  n_bins: int = DEFAULT_NUMERIC_BINS) -> Profile:
    """Profile of the training data: ``columns`` maps feature name to its values."""
    features = {name: FeatureProfile.build(list(vals) if not isinstance(vals, np.ndarray) else vals,
                                           kinds[name], n_bins=n_bins)
                for name, vals in columns.items()}
    prediction = FeatureProfile.build(predictions, prediction_kind, n_bins=n_bins) if predictions is not None else None
    rows = len(next(iter(columns.values()))) if columns else 0  # type: ignore[arg-type]
    return Profile(features, prediction, rows)
