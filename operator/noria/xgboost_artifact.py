"""XGBoost models in Noria's artifact envelope: what a Dask run ships, loaded without running code.

A Dask run trains with ``xgboost`` (issue 16). Its model is not a scikit-learn object, so it is not
a skops file; it is one JSON document, the *envelope*::

    {"format": "noria.dev/xgboost-json/v1", "task": ..., "features": [...], "kinds": {...},
     "categories": {feature: [category, ...]}, "classes": [...] | null, "booster": "<XGBoost JSON>"}

The preprocessing is declarative: numeric features are read as floats (missing stays NaN, which the
trees route by their learnt default direction) and a categorical feature becomes the index of its
value in ``categories`` (an unseen or missing value is NaN). ``classes`` maps the booster's class
index back to the label. ``booster`` is XGBoost's own JSON model format, parsed by XGBoost's JSON
reader; nothing in the envelope names code.

The envelope travels exactly like a skops file: ``noria.artifact`` does steps 1-3 (where, what,
sha256 before a byte is parsed) and hands the verified bytes here when they start with
``ENVELOPE_PREFIX``. Here, before XGBoost sees the booster:

- every envelope field has its type and a size cap (features, categories, classes);
- the booster kind and objective must be on the exact lists in ``noria.trusted_types``;
- ``num_feature`` must equal the envelope's feature count and ``num_class`` its class count;
- every tree's arrays must have ``num_nodes`` entries, every child index must point to a later
  node (so a walk down always ends inside the array), every split feature must be below
  ``num_feature``, and only numerical splits are accepted (Noria never writes categorical ones).

XGBoost's predictor indexes these arrays without further checks, so this is what keeps a crafted
file (whose digest an attacker with store access can also write) from reading outside them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from noria.artifact import DEFAULT_LIMITS, MALFORMED, UNTRUSTED_TYPE, UNUSABLE_MODEL, ArtifactError, Limits
from noria.contracts import GROUP
from noria.trusted_types import TRUSTED_XGBOOST_BOOSTERS, TRUSTED_XGBOOST_OBJECTIVES

FORMAT: Final = f"{GROUP}/xgboost-json/v1"
# The ModelVersion's spec.artifact.format for this envelope (skops files say "skops").
ARTIFACT_FORMAT: Final = "xgboost-json"
MODEL_FILE: Final = "model.xgboost.json"
ENVELOPE_PREFIX: Final = b'{"format":"' + FORMAT.encode() + b'"'
MAX_FEATURES: Final = 10_000
MAX_CATEGORIES: Final = 100_000  # per categorical feature
MAX_CLASSES: Final = 10_000
MAX_TREES: Final = 100_000
MAX_NODES: Final = 5_000_000  # over all trees
_TREE_ARRAYS: Final = (
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "default_left",
    "base_weights",
)


def is_envelope(data: bytes) -> bool:
    return data.startswith(ENVELOPE_PREFIX)


# --- the declarative preprocessing ------------------------------------------------------------
@dataclass(frozen=True)
class Encoding:
    """How raw feature values become the booster's float matrix (the same in training and serving)."""

    features: tuple[str, ...]
    kinds: dict[str, str]  # feature -> "numeric" | "categorical"
    categories: dict[str, tuple[str, ...]]  # categorical feature -> its values, in code order

    def matrix(self, rows: Any) -> np.ndarray:
        """Rows (a DataFrame with the features as columns, or an (n, F) array in feature order) as floats."""
        columns = [self._column(rows, j, f) for j, f in enumerate(self.features)]
        if not columns:
            return np.empty((len(rows), 0))
        return np.column_stack(columns)

    def _column(self, rows: Any, j: int, feature: str) -> np.ndarray:
        values = rows[:, j] if isinstance(rows, np.ndarray) else rows[feature].to_numpy()
        if self.kinds[feature] == "categorical":
            codes: dict[str | None, float] = {
                c: float(i) for i, c in enumerate(self.categories.get(feature, ()))
            }
            return np.fromiter(
                (codes.get(_category(v), math.nan) for v in values), dtype=float, count=len(values)
            )
        if values.dtype.kind in "fiub":
            return values.astype(float)
        return np.array([_number(v) for v in values], dtype=float)


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --- the served model ---------------------------------------------------------------------------
class XGBoostModel:
    """A booster with its encoding and classes: ``predict``/``predict_proba`` on raw rows, and
    ``feature_names_in_`` and ``classes_`` as the server and the trainer read them from sklearn models."""

    def __init__(self, booster: Any, task: str, encoding: Encoding, classes: list[Any] | None) -> None:
        self.booster, self.task, self.encoding = booster, task, encoding
        self.feature_names_in_ = np.asarray(encoding.features, dtype=object)
        if classes is not None:
            self.classes_ = np.asarray(classes)
        self._estimator_type = "classifier" if task == "classification" else "regressor"

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        if self.task == "classification":
            return Tags(
                estimator_type="classifier",
                target_tags=TargetTags(required=True),
                classifier_tags=ClassifierTags(),
            )
        return Tags(
            estimator_type="regressor", target_tags=TargetTags(required=True), regressor_tags=RegressorTags()
        )

    def raw(self, rows: Any) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(self.encoding.matrix(rows)))

    def predict_proba(self, rows: Any) -> np.ndarray:
        if self.task != "classification":
            raise AttributeError("a regression model has no predict_proba")
        out = self.raw(rows)
        if out.ndim == 1:  # binary:logistic gives P(class 1)
            return np.column_stack([1.0 - out, out])
        return out

    def predict(self, rows: Any) -> np.ndarray:
        if self.task == "classification":
            return self.classes_[np.argmax(self.predict_proba(rows), axis=1)]
        return self.raw(rows)


# --- writing ------------------------------------------------------------------------------------
def dumps(booster: Any, task: str, encoding: Encoding, classes: Sequence[Any] | None) -> bytes:
    """The envelope of a trained booster (``ENVELOPE_PREFIX`` first, as the loader's dispatch reads it)."""
    document = {
        "format": FORMAT,
        "task": task,
        "features": list(encoding.features),
        "kinds": {f: encoding.kinds[f] for f in encoding.features},
        "categories": {f: list(values) for f, values in encoding.categories.items()},
        "classes": None if classes is None else [_plain(c) for c in classes],
        "booster": bytes(booster.save_raw(raw_format="json")).decode(),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- reading ------------------------------------------------------------------------------------
def loads(data: bytes, limits: Limits = DEFAULT_LIMITS) -> XGBoostModel:
    """The model in verified envelope bytes, after every check in the module docstring."""
    if len(data) > limits.max_file_bytes:
        raise ArtifactError(
            MALFORMED, f"the envelope has {len(data)} bytes, more than the cap of {limits.max_file_bytes}"
        )
    document = _json_object(data, "the XGBoost envelope")
    task, encoding, classes = _envelope_fields(document)
    booster_text = document.get("booster")
    if not isinstance(booster_text, str):
        raise ArtifactError(MALFORMED, "the envelope's booster is not a string of XGBoost JSON")
    audit_booster(
        _json_object(booster_text.encode(), "the booster"),
        len(encoding.features),
        0 if classes is None else len(classes),
    )
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(booster_text.encode()))
    except xgb.core.XGBoostError as exc:
        raise ArtifactError(MALFORMED, f"XGBoost could not read the booster: {str(exc)[:300]}") from exc
    return XGBoostModel(booster, task, encoding, classes)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(MALFORMED, f"{what} is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise ArtifactError(MALFORMED, f"{what} is not a JSON object")
    return document


def _envelope_fields(document: dict[str, Any]) -> tuple[str, Encoding, list[Any] | None]:
    if document.get("format") != FORMAT:
        raise ArtifactError(MALFORMED, f"the envelope's format is {document.get('format')!r}, not {FORMAT}")
    task = document.get("task")
    if task not in ("classification", "regression"):
        raise ArtifactError(
            MALFORMED, f"the envelope's task {task!r} is neither classification nor regression"
        )
    features = _strings(document.get("features"), "features", MAX_FEATURES)
    if len(set(features)) != len(features):
        raise ArtifactError(MALFORMED, "the envelope names a feature twice")
    kinds = document.get("kinds")
    if (
        not isinstance(kinds, dict)
        or set(kinds) != set(features)
        or not all(k in ("numeric", "categorical") for k in kinds.values())
    ):
        raise ArtifactError(MALFORMED, "the envelope's kinds must give every feature numeric or categorical")
    raw_categories = document.get("categories")
    if not isinstance(raw_categories, dict) or set(raw_categories) != {
        f for f in features if kinds[f] == "categorical"
    }:
        raise ArtifactError(
            MALFORMED, "the envelope's categories must list the values of every categorical feature"
        )
    categories = {
        f: tuple(_strings(v, f"categories of {f}", MAX_CATEGORIES)) for f, v in raw_categories.items()
    }
    classes = document.get("classes")
    if task == "regression" and classes is not None:
        raise ArtifactError(MALFORMED, "a regression envelope has no classes")
    if task == "classification":
        if (
            not isinstance(classes, list)
            or not 2 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, (str, int, float, bool)) for c in classes)
        ):
            raise ArtifactError(
                MALFORMED,
                f"a classification envelope needs 2 to {MAX_CLASSES} class labels (strings or numbers)",
            )
    return task, Encoding(tuple(features), dict(kinds), categories), classes


def _strings(value: Any, what: str, cap: int) -> list[str]:
    if not isinstance(value, list) or len(value) > cap or not all(isinstance(v, str) for v in value):
        raise ArtifactError(MALFORMED, f"the envelope's {what} must be a list of at most {cap} strings")
    return value


def audit_booster(model: dict[str, Any], n_features: int, n_classes: int) -> None:
    """Refuse a booster Noria does not write, or whose trees index outside their arrays."""
    try:
        learner = model["learner"]
        booster = learner["gradient_booster"]
        objective = learner["objective"]["name"]
        params = learner["learner_model_param"]
        num_feature, num_class = int(params["num_feature"]), int(params.get("num_class", "0"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(MALFORMED, f"the booster lacks XGBoost's learner fields: {exc}") from exc
    kind = booster.get("name") if isinstance(booster, dict) else None
    if kind not in TRUSTED_XGBOOST_BOOSTERS:
        raise ArtifactError(
            UNTRUSTED_TYPE,
            f"booster {kind!r} is not one Noria writes ({', '.join(sorted(TRUSTED_XGBOOST_BOOSTERS))})",
        )
    if objective not in TRUSTED_XGBOOST_OBJECTIVES:
        raise ArtifactError(
            UNTRUSTED_TYPE,
            f"objective {objective!r} is not one Noria writes "
            f"({', '.join(sorted(TRUSTED_XGBOOST_OBJECTIVES))})",
        )
    if num_feature != n_features:
        raise ArtifactError(
            MALFORMED, f"the booster has {num_feature} features, the envelope names {n_features}"
        )
    expected_classes = n_classes if n_classes > 2 else 0
    if num_class != expected_classes:
        raise ArtifactError(
            UNUSABLE_MODEL, f"the booster predicts {num_class} classes, the envelope lists {n_classes} labels"
        )
    if kind == "gbtree":
        _audit_trees(booster, num_feature)


def _audit_trees(booster: dict[str, Any], num_feature: int) -> None:
    try:
        trees = booster["model"]["trees"]
    except (KeyError, TypeError) as exc:
        raise ArtifactError(MALFORMED, "the gbtree booster has no trees list") from exc
    if not isinstance(trees, list) or len(trees) > MAX_TREES:
        raise ArtifactError(MALFORMED, f"the booster's trees are not a list of at most {MAX_TREES}")
    total = 0
    for index, tree in enumerate(trees):
        total += _audit_tree(index, tree, num_feature)
        if total > MAX_NODES:
            raise ArtifactError(MALFORMED, f"the booster has more than {MAX_NODES} nodes")


def _audit_tree(index: int, tree: Any, num_feature: int) -> int:
    where = f"tree {index}"
    try:
        nodes = int(tree["tree_param"]["num_nodes"])
        arrays = {name: tree[name] for name in _TREE_ARRAYS}
        split_types = tree.get("split_type", [])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(MALFORMED, f"{where} lacks XGBoost's tree fields: {exc}") from exc
    if nodes < 1:
        raise ArtifactError(MALFORMED, f"{where} has {nodes} nodes")
    for name, values in arrays.items():
        if not isinstance(values, list) or len(values) != nodes:
            raise ArtifactError(MALFORMED, f"{where}: {name} does not have num_nodes ({nodes}) entries")
    if any(t != 0 for t in split_types):
        raise ArtifactError(UNTRUSTED_TYPE, f"{where} has categorical splits, which Noria never writes")
    left, right, features = arrays["left_children"], arrays["right_children"], arrays["split_indices"]
    for node in range(nodes):
        lc, rc = left[node], right[node]
        if not (isinstance(lc, int) and isinstance(rc, int)):
            raise ArtifactError(MALFORMED, f"{where} node {node}: child indices are not integers")
        if lc == -1 and rc == -1:
            continue  # a leaf
        if not (node < lc < nodes and node < rc < nodes):
            raise ArtifactError(
                MALFORMED, f"{where} node {node}: children {lc}, {rc} are not later nodes of the {nodes}"
            )
        feature = features[node]
        if not isinstance(feature, int) or not 0 <= feature < num_feature:
            raise ArtifactError(
                MALFORMED,
                f"{where} node {node} splits on feature {feature!r}, outside the {num_feature} features",
            )
    return nodes
