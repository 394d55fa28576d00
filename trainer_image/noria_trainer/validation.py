"""Data validation before training: a bad dataset fails here, with a reason, before any model exists.

Checks, in order (every one is reported; the first failing one is the run's reason):
columns present → target present and not all null → types (declared schema, the champion's
profile under ``schema: strict``, a numeric regression target, no column mixing numbers and
strings) → minimum rows → maximum missing fraction per feature → at least two classes.
Value ranges and category sets are compared with the champion's profile and reported per feature
(the drift of the new training data against the data the champion learnt from); they inform, they
do not fail the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from noria import drift
from noria.metrics import BIN_ABOVE, BIN_BELOW, BIN_MISSING, BIN_OTHER
from noria.profile import Kind, Profile

from noria_trainer.spec import PipelineSpec

NUMERIC_SCHEMA_TYPES = frozenset({"numeric", "float", "integer", "int"})
CATEGORICAL_SCHEMA_TYPES = frozenset({"string", "categorical", "category", "bool", "boolean"})


@dataclass
class ValidationOutcome:
    checks: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    data: pd.DataFrame | None = None  # rows kept (null targets dropped), features normalised
    kinds: dict[str, Kind] = field(default_factory=dict)
    dropped_null_target: int = 0
    drift_against_champion: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def check(self, name: str, passed: bool, detail: str, **extra: Any) -> bool:
        self.checks.append({"check": name, "passed": passed, "detail": detail, **extra})
        if not passed and self.reason is None:
            self.reason = detail
        return passed

    def report(self) -> dict[str, Any]:
        return {"passed": self.ok, "reason": self.reason, "checks": self.checks,
                "droppedNullTarget": self.dropped_null_target, "kinds": self.kinds,
                "driftAgainstChampion": self.drift_against_champion}


def feature_kind(values: pd.Series) -> Kind:
    return "numeric" if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
        else "categorical"


def declared_kind(declared: str | None) -> Kind | None:
    """A declared type decides how a feature is encoded: a numeric-looking code (a zip code, a
    product id) declared categorical is one-hot encoded, not treated as a magnitude."""
    if declared in NUMERIC_SCHEMA_TYPES:
        return "numeric"
    if declared in CATEGORICAL_SCHEMA_TYPES:
        return "categorical"
    return None


def _mixes_numbers_and_strings(values: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_string_dtype(values) and values.dtype != object:
        return False
    present = values.dropna()
    has_str = present.map(lambda v: isinstance(v, str)).any()
    has_num = present.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)).any()
    return bool(has_str and has_num)


def feature_names(data: pd.DataFrame, spec: PipelineSpec, extra_ignored: tuple[str, ...] = ()) -> list[str]:
    if spec.features:
        return list(spec.features)
    ignored = {spec.target, spec.timestamp_column, *extra_ignored}
    return [str(c) for c in data.columns if c not in ignored]


def validate(data: pd.DataFrame, spec: PipelineSpec, features: list[str],
             champion_profile: Profile | None) -> ValidationOutcome:
    out = ValidationOutcome()
    required = [*features, spec.target]
    missing = [c for c in required if c not in data.columns]
    if not out.check("columns", not missing,
                     f"missing column(s) {', '.join(map(repr, missing))}; the data has "
                     f"{', '.join(map(str, data.columns))}" if missing else f"all {len(required)} columns present"):
        return out

    target = data[spec.target]
    null_target = int(target.isna().sum())
    if not out.check("target", null_target < len(data),
                     f"target column {spec.target!r} is null in all {len(data)} rows" if null_target == len(data)
                     else f"target {spec.target!r} present; {null_target} null row(s) dropped"):
        return out
    kept = data.loc[target.notna()].reset_index(drop=True)
    out.dropped_null_target = null_target

    type_errors: list[str] = []
    for column, declared in spec.column_types.items():
        if column not in kept.columns:
            type_errors.append(f"{column!r} is declared in spec.validation.columns but is not in the data")
        elif declared in NUMERIC_SCHEMA_TYPES and not pd.api.types.is_numeric_dtype(kept[column]):
            sample = next((v for v in kept[column].dropna() if not _is_number(v)), None)
            type_errors.append(f"{column!r} must be {declared} but has non-numeric values such as {sample!r}")
        elif declared in ("integer", "int") and pd.api.types.is_float_dtype(kept[column]):
            present = kept[column].dropna()
            if not (present == present.round()).all():
                type_errors.append(f"{column!r} must be {declared} but has fractional values")
        elif declared == "datetime" and not pd.api.types.is_datetime64_any_dtype(kept[column]):
            try:
                pd.to_datetime(kept[column].dropna().head(1000), utc=True, format="mixed")
            except (ValueError, TypeError):
                type_errors.append(f"{column!r} must be a datetime but has values that are not times")
    for column in features:
        if _mixes_numbers_and_strings(kept[column]):
            type_errors.append(f"{column!r} mixes numbers and strings")
    if spec.schema == "strict" and champion_profile is not None:
        added = sorted(set(features) - set(champion_profile.features))
        removed = sorted(set(champion_profile.features) - set(features))
        if added or removed:
            type_errors.append("schema is strict and the features differ from the champion's: "
                               + "; ".join(part for part in (f"new {added}" if added else "",
                                                             f"gone {removed}" if removed else "") if part))
        for column in features:
            reference = champion_profile.features.get(column)
            if reference is not None and reference.kind != feature_kind(kept[column]):
                type_errors.append(f"{column!r} is {feature_kind(kept[column])} here but {reference.kind} in the "
                                   "champion's profile")
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(kept[spec.target]):
        type_errors.append(f"regression target {spec.target!r} is not numeric ({kept[spec.target].dtype})")
    if not out.check("types", not type_errors,
                     "wrong type(s): " + "; ".join(type_errors) if type_errors else "types as expected"):
        return out

    if not out.check("minRows", len(kept) >= spec.min_rows,
                     f"{len(kept)} usable row(s), fewer than spec.validation.minRows {spec.min_rows}"
                     if len(kept) < spec.min_rows else f"{len(kept)} rows ≥ minRows {spec.min_rows}",
                     rows=len(kept)):
        return out

    fractions = {c: float(kept[c].isna().mean()) for c in features}
    too_sparse = {c: f for c, f in fractions.items() if f > spec.max_missing_fraction}
    if not out.check("maxMissingFraction", not too_sparse,
                     "missing fraction above spec.validation.maxMissingFraction "
                     f"{spec.max_missing_fraction:g}: " + ", ".join(f"{c!r} {f:.3f}" for c, f in too_sparse.items())
                     if too_sparse else f"every feature at most {spec.max_missing_fraction:g} missing",
                     missingFraction={c: round(f, 6) for c, f in fractions.items()}):
        return out

    if spec.task == "classification":
        classes = kept[spec.target].nunique()
        if not out.check("classes", classes >= 2,
                         f"target {spec.target!r} has a single class; classification needs at least two"
                         if classes < 2 else f"{classes} classes"):
            return out

    out.kinds = {c: declared_kind(spec.column_types.get(c)) or feature_kind(kept[c]) for c in features}
    for column, kind in out.kinds.items():
        if kind == "categorical":
            # one missing marker (NaN) and object dtype, so imputation and encoding see one kind of gap
            kept[column] = kept[column].astype(object).where(kept[column].notna(), np.nan)
    out.data = kept
    if champion_profile is not None:
        out.drift_against_champion = compare_with_profile(kept, out.kinds, champion_profile)
    return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def compare_with_profile(data: pd.DataFrame, kinds: dict[str, Kind], profile: Profile) -> dict[str, dict[str, Any]]:
    """Per feature: PSI of the new data against the champion's reference bins, the share outside
    the champion's value range (numeric) or of unseen categories (categorical), and the missing share."""
    out: dict[str, dict[str, Any]] = {}
    for column, kind in kinds.items():
        reference = profile.features.get(column)
        if reference is None:
            out[column] = {"note": "new feature: not in the champion's profile"}
            continue
        if reference.kind != kind:
            out[column] = {"note": f"kind changed from {reference.kind} to {kind}"}
            continue
        values = data[column].to_numpy() if kind == "numeric" else data[column].tolist()
        counts = reference.counts(values)
        share = dict(zip(reference.labels, counts / max(counts.sum(), 1.0), strict=True))
        entry: dict[str, Any] = {
            "psi": round(float(drift.psi(reference.reference, counts)), 6),
            "missingShare": round(float(share.get(BIN_MISSING, 0.0)), 6),
        }
        if kind == "numeric":
            entry["outOfRangeShare"] = round(float(share.get(BIN_BELOW, 0.0) + share.get(BIN_ABOVE, 0.0)), 6)
            entry["championRange"] = [float(reference.edges[0]), float(reference.edges[-1])]  # type: ignore[index]
            present = data[column].dropna()
            if len(present):
                entry["range"] = [float(present.min()), float(present.max())]
        else:
            entry["unseenCategoryShare"] = round(float(share.get(BIN_OTHER, 0.0)), 6)
            seen = set(reference.categories)
            entry["unseenCategories"] = sorted({str(v) for v in data[column].dropna()} - seen)[:20]
        out[column] = entry
    return out
