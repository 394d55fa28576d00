"""A one-call prediction for the common fitted models, without scikit-learn's per-call checks.

A one-row ``predict`` through scikit-learn spends most of its time checking its input (``validate_data``
in every step of a Pipeline, ``check_is_fitted``, dataframe-library probes), not computing. For the
models the trainer writes most, the same numbers come from the fitted arrays with a handful of NumPy
operations:

- **linear**: ``SimpleImputer`` (NaN, numeric), ``StandardScaler``, ``"passthrough"``, a
  ``ColumnTransformer`` or ``Pipeline`` of those, in front of ``LogisticRegression`` (labels and
  probabilities) or ``LinearRegression`` / ``Ridge`` / ``Lasso`` / ``ElasticNet`` (one output);
- **HistGradientBoosting** (classifier, or regressor with an identity or log link), numeric features
  only, alone or behind the steps above: every tree's nodes are flattened into arrays once, and a
  batch walks all trees a level at a time.

Nothing here runs code from the artifact: it reads fitted arrays (NumPy) of the exact scikit-learn
types that ``noria.artifact`` already allows, and refuses (``Unsupported``) any other type,
subclass, parameter or shape it does not model. Recognising a model is not enough to use it:
``ServedModel.warm_up`` compares the result with the estimator's own ``predict`` /
``predict_proba`` on a few hundred rows (``verify``) and keeps scikit-learn on any difference.

A compiled predictor returns ``None`` for rows it leaves to scikit-learn, so that they get exactly
scikit-learn's answer or error: non-finite values where a step would reject them (``inf`` anywhere in
a linear pipeline, ``NaN`` without an imputer in front of it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Output = tuple[np.ndarray, np.ndarray | None]  # predictions, class probabilities (classifiers)
Transform = Callable[[np.ndarray], np.ndarray | None]

# How close probabilities (and a regressor's values) must be to scikit-learn's. The fast path does the
# same floating-point operations in the same order (measured: bit-identical on the benchmark models),
# so any difference would come from a different summation order in a BLAS or ufunc kernel: a few
# units in the last place, ~1e-16 relative. 1e-12 admits that and nothing a modelling error makes.
RTOL = 1e-12
ATOL = 1e-15
# A HistGradientBoosting batch walks every tree to the deepest leaf's depth, so its cost grows with
# rows x trees x levels, where scikit-learn's per-tree loop mostly pays a fixed ~0.5 ms. Measured on
# the benchmark model (100 trees, 18 levels, one thread; the walk against scikit-learn's loop over the
# fitted predictors without any input checks): 84 µs vs 390 for one row, 446 vs 718 for 64, 1,570 vs
# 1,789 for 256 (scikit-learn's predict_proba on a DataFrame: 2,594). Batches with more node visits
# than this (rows x the sum of the trees' depths; the benchmark model's is 1,108) go to scikit-learn.
HGB_MAX_NODE_VISITS = 300_000
HGB_SMALL_ROWS = 4  # batches of at most this many rows compare every node (_hgb)


class Unsupported(Exception):
    """The model (or one of its steps) is not one the fast path models."""


@dataclass(frozen=True)
class FastPredictor:
    description: str
    n_features: int
    is_classifier: bool
    classes: np.ndarray | None
    _run: Callable[[np.ndarray], Output | None]
    max_rows: int | None = None  # larger batches are faster through scikit-learn

    def __call__(self, rows: np.ndarray) -> Output | None:
        """Predictions (and probabilities for a classifier) for float64 ``rows`` of shape (n, F), or
        ``None`` when these rows must go through scikit-learn."""
        if rows.dtype != np.float64 or rows.ndim != 2 or rows.shape[1] != self.n_features:
            return None
        if self.max_rows is not None and rows.shape[0] > self.max_rows:
            return None
        return self._run(rows)


def _exact(obj: Any, module: str, name: str) -> bool:
    cls = type(obj)
    return cls.__name__ == name and (cls.__module__ == module or cls.__module__.startswith(module + "."))


def _float_vector(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.float64 or arr.shape != (n,):
        raise Unsupported(f"{what} is {arr.dtype} {arr.shape}, expected float64 ({n},)")
    return arr


# --- preprocessing steps -------------------------------------------------------------------------
def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _imputer(step: Any, n_in: int) -> tuple[Transform, int]:
    missing = step.missing_values
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise Unsupported(f"SimpleImputer(missing_values={missing!r}) is not NaN")
    if step.add_indicator or getattr(step, "indicator_", None) is not None:
        raise Unsupported("SimpleImputer with add_indicator")
    if np.dtype(getattr(step, "_fit_dtype", np.float64)).kind != "f":
        raise Unsupported("SimpleImputer fitted on non-float data")
    stats = _float_vector(step.statistics_, n_in, "SimpleImputer.statistics_")
    if not np.isfinite(stats).all():
        raise Unsupported("SimpleImputer drops or keeps empty features (a statistic is not finite)")

    def impute(x: np.ndarray) -> np.ndarray | None:
        nan = np.isnan(x)
        if nan.any():
            x = x.copy()
            x[nan] = np.broadcast_to(stats, x.shape)[nan]
        if not np.isfinite(x).all():  # scikit-learn rejects inf here
            return None
        return x

    return impute, n_in


def _scaler(step: Any, n_in: int) -> tuple[Transform, int]:
    mean = _float_vector(step.mean_, n_in, "StandardScaler.mean_") if step.with_mean else None
    scale = _float_vector(step.scale_, n_in, "StandardScaler.scale_") if step.with_std else None

    def standardise(x: np.ndarray) -> np.ndarray | None:
        if np.isinf(x).any():  # scikit-learn rejects inf (NaN passes through a scaler)
            return None
        if mean is not None:
            x = x - mean
        if scale is not None:
            x = x / scale
        return x

    return standardise, n_in


def _column_indices(columns: Any, names: list[str] | None, n_in: int) -> np.ndarray:
    if isinstance(columns, slice):
        return np.arange(n_in)[columns]
    cols = np.asarray(columns)
    if cols.ndim != 1:
        raise Unsupported(f"column selection {columns!r}")
    if cols.dtype == bool:
        if cols.size != n_in:
            raise Unsupported("boolean column mask of the wrong length")
        return np.flatnonzero(cols)
    if cols.dtype.kind in "iu":
        return cols.astype(np.intp)
    if cols.dtype.kind in "UO" and names is not None:
        position = {n: i for i, n in enumerate(names)}
        try:
            return np.array([position[str(c)] for c in cols], dtype=np.intp)
        except KeyError as exc:
            raise Unsupported(f"column {exc} is not an input feature") from exc
    raise Unsupported(f"column selection {columns!r}")


def _column_transformer(step: Any, n_in: int) -> tuple[Transform, int]:
    if getattr(step, "sparse_output_", False):
        raise Unsupported("ColumnTransformer with sparse output")
    names = [str(n) for n in step.feature_names_in_] if hasattr(step, "feature_names_in_") else None
    parts: list[tuple[np.ndarray, Transform]] = []
    n_out = 0
    for _name, trans, columns in step.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        idx = _column_indices(columns, names, n_in)
        if idx.size and (idx.min() < 0 or idx.max() >= n_in):
            raise Unsupported("column index out of range")
        fn, width = _transform(trans, idx.size)
        parts.append((idx, fn))
        n_out += width

    def transform(x: np.ndarray) -> np.ndarray | None:
        outs = []
        for idx, fn in parts:
            out = fn(x[:, idx])
            if out is None:
                return None
            outs.append(out)
        return np.hstack(outs) if outs else np.empty((x.shape[0], 0))

    return transform, n_out


def _chain(steps: list[Any], n_in: int) -> tuple[Transform, int]:
    fns: list[Transform] = []
    width = n_in
    for step in steps:
        fn, width = _transform(step, width)
        if fn is not _identity:
            fns.append(fn)
    if not fns:
        return _identity, width

    def run(x: np.ndarray) -> np.ndarray | None:
        out: np.ndarray | None = x
        for fn in fns:
            out = fn(out)  # type: ignore[arg-type]
            if out is None:
                return None
        return out

    return run, width


def _transform(step: Any, n_in: int) -> tuple[Transform, int]:
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return _identity, n_in
    if _exact(step, "sklearn.impute", "SimpleImputer"):
        return _imputer(step, n_in)
    if _exact(step, "sklearn.preprocessing", "StandardScaler"):
        return _scaler(step, n_in)
    if _exact(step, "sklearn.compose", "ColumnTransformer"):
        return _column_transformer(step, n_in)
    if _exact(step, "sklearn.pipeline", "Pipeline"):
        return _chain([s for _, s in step.steps], n_in)
    raise Unsupported(f"step {type(step).__module__}.{type(step).__name__}")


# --- final estimators ----------------------------------------------------------------------------
_EXPIT: Any = None


def _expit(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    global _EXPIT
    if _EXPIT is None:  # imported once, not per call (an import statement costs ~0.5 µs even when loaded)
        from scipy.special import expit

        _EXPIT = expit
    return _EXPIT(z, out=out) if out is not None else _EXPIT(z)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _class_output(raw: np.ndarray, classes: np.ndarray) -> Output:
    """Labels as scikit-learn's classifiers pick them (binary: score > 0; else argmax) and
    probabilities (expit / softmax)."""
    if raw.shape[1] == 1:
        score = raw[:, 0]
        proba = np.empty((score.shape[0], 2))  # [1 - p1, p1] by column (np.stack costs ~2 µs more)
        p1 = proba[:, 1]
        _expit(score, out=p1)  # into its column: no temporary and copy
        np.subtract(1.0, p1, out=proba[:, 0])
        return classes[(score > 0).astype(np.intp)], proba
    return classes[np.argmax(raw, axis=1)], _softmax(raw)


LINEAR_REGRESSORS = ("LinearRegression", "Ridge", "Lasso", "ElasticNet")


Final = tuple[Callable[[np.ndarray], Output | None], np.ndarray | None, int | None]  # run, classes, max rows
# A linear model's output from its already transformed input, checked only at the end: ``None`` when a
# score is not finite (see ``_affine_path``).
Unchecked = Callable[[np.ndarray], Output | None]


def _linear(est: Any, n_in: int) -> Final:
    name = type(est).__name__
    coef = np.asarray(est.coef_)
    intercept = np.asarray(est.intercept_, dtype=np.float64) if np.ndim(est.intercept_) else float(est.intercept_)
    if coef.dtype != np.float64:
        raise Unsupported(f"{name}.coef_ is {coef.dtype}")
    if name == "LogisticRegression":
        classes = np.asarray(est.classes_)
        k = 1 if classes.size == 2 else classes.size
        if coef.shape != (k, n_in) or np.shape(intercept) != (k,):
            raise Unsupported(f"LogisticRegression.coef_ {coef.shape} for {classes.size} classes and {n_in} inputs")
        coef_t = coef.T

        def classify(x: np.ndarray) -> Output | None:
            if not np.isfinite(x).all():
                return None
            return _class_output(x @ coef_t + intercept, classes)

        return classify, classes, None
    if coef.shape != (n_in,) or np.ndim(intercept) != 0:
        raise Unsupported(f"{name} with coef_ {coef.shape}: one output only")

    def regress(x: np.ndarray) -> Output | None:
        if not np.isfinite(x).all():
            return None
        return x @ coef + intercept, None

    return regress, None, None


def _linear_unchecked(est: Any) -> Unchecked:
    """``_linear``'s output (which it has checked) with the input check moved to the scores: the same
    operations in the same order, ``None`` when a score is not finite."""
    if type(est).__name__ == "LogisticRegression":
        coef_t, intercept, classes = np.asarray(est.coef_).T, np.asarray(est.intercept_, dtype=np.float64), \
            np.asarray(est.classes_)

        def classify(x: np.ndarray) -> Output | None:
            raw = x @ coef_t + intercept
            return _class_output(raw, classes) if np.isfinite(raw).all() else None

        return classify
    coef = np.asarray(est.coef_)
    offset = float(est.intercept_)

    def regress(x: np.ndarray) -> Output | None:
        value = x @ coef + offset
        return (value, None) if np.isfinite(value).all() else None

    return regress


def _affine_path(steps: list[Any], final_est: Any, n_in: int, checked: Callable[[np.ndarray], Output | None]
                 ) -> Callable[[np.ndarray], Output | None] | None:
    """One pass for ``SimpleImputer`` / ``StandardScaler`` / ``"passthrough"`` steps in front of a linear
    model, with one finiteness check of the scores in place of a check per step (8 of the ~20 NumPy calls
    of a micro-batch's predict; each costs ~0.5-1 µs and more with cold caches in the server).

    Exact, not approximate: on finite input the imputer returns its input unchanged and the scaler and
    the model do the same ``x - mean``, ``/ scale``, ``@ coef + intercept`` as the checked path, so
    finite scores are that path's scores. A NaN or ±inf in the input, or one a scaler made by overflow,
    makes every score of its row NaN or ±inf (IEEE: NaN and inf survive subtraction, division, any
    product, 0 x inf included, and sums), so a batch whose scores are not all finite takes ``checked``
    (which imputes, or leaves the rows to scikit-learn) and gets exactly its answer. ``None`` when a
    step is not one of these (a ColumnTransformer, a nested Pipeline): the checked path alone serves."""
    if not any(_exact(final_est, "sklearn.linear_model", n) for n in ("LogisticRegression", *LINEAR_REGRESSORS)):
        return None
    affine: list[tuple[np.ndarray | None, np.ndarray | None]] = []
    for step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        if _exact(step, "sklearn.impute", "SimpleImputer"):
            _imputer(step, n_in)  # refuses what the checked path refuses
            continue
        if _exact(step, "sklearn.preprocessing", "StandardScaler"):
            _scaler(step, n_in)
            affine.append((np.asarray(step.mean_) if step.with_mean else None,
                           np.asarray(step.scale_) if step.with_std else None))
            continue
        return None
    unchecked = _linear_unchecked(final_est)

    def run(x: np.ndarray) -> Output | None:
        z = x
        for mean, scale in affine:
            if mean is not None:
                z = z - mean
            if scale is not None:
                z = z / scale
        out = unchecked(z)
        return out if out is not None else checked(x)

    return run


def _hgb(est: Any, n_in: int) -> Final:
    name = type(est).__name__
    if getattr(est, "_preprocessor", None) is not None or getattr(est, "is_categorical_", None) is not None:
        raise Unsupported(f"{name} with categorical features")
    if getattr(est, "n_features_in_", n_in) != n_in:
        raise Unsupported(f"{name} expects {est.n_features_in_} features, gets {n_in}")
    k = int(est.n_trees_per_iteration_)
    baseline = np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1)
    if baseline.shape != (k,):
        raise Unsupported(f"{name} baseline of shape {baseline.shape}")
    iterations = est._predictors
    if not iterations or any(len(it) != k for it in iterations):
        raise Unsupported(f"{name}: not {k} trees per iteration")
    trees = [p.nodes for it in iterations for p in it]  # iteration-major: tree i*k + j is class j's
    needed = {"value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf",
              "is_categorical", "depth"}
    for nodes in trees:
        if nodes.dtype.names is None or not needed <= set(nodes.dtype.names):
            raise Unsupported(f"{name} tree nodes without {sorted(needed)}")
        if nodes["is_categorical"].any():
            raise Unsupported(f"{name} with a categorical split")
    sizes = np.array([len(n) for n in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    feature = np.concatenate([n["feature_idx"] for n in trees]).astype(np.intp)
    threshold = np.concatenate([n["num_threshold"] for n in trees]).astype(np.float64)
    nan_left = np.concatenate([n["missing_go_to_left"] for n in trees]).astype(bool)
    leaf = np.concatenate([n["is_leaf"] for n in trees]).astype(bool)
    left = np.concatenate([n["left"].astype(np.intp) + o for n, o in zip(trees, offsets, strict=True)])
    right = np.concatenate([n["right"].astype(np.intp) + o for n, o in zip(trees, offsets, strict=True)])
    value = np.concatenate([n["value"] for n in trees]).astype(np.float64)
    split = ~leaf
    if split.any() and (feature[split].min() < 0 or feature[split].max() >= n_in):
        raise Unsupported(f"{name} splits on a feature outside the input")
    # A leaf is its own child, so every tree can take the same number of steps.
    here = np.arange(feature.size, dtype=np.intp)
    left[leaf], right[leaf], feature[leaf], threshold[leaf] = here[leaf], here[leaf], 0, np.inf
    if left.max() >= feature.size or right.max() >= feature.size:
        raise Unsupported(f"{name} tree links out of range")
    # Node i's data at 2i and 2i+1 so that the next node is child[2i + went_left]: 7 array operations
    # per level for the whole batch and all trees.
    child2 = np.empty(2 * feature.size, dtype=np.intp)
    child2[0::2], child2[1::2] = 2 * right, 2 * left
    feature2, threshold2, nan_left2 = (np.repeat(a, 2) for a in (feature, threshold, nan_left))
    # Trees deepest first: at level l only the first active[l] trees (those deeper than l) still move.
    depth = np.array([int(n["depth"].max()) for n in trees])
    order = np.argsort(-depth, kind="stable")
    unorder = np.argsort(order)
    roots2 = 2 * offsets[order]
    levels = int(depth.max())
    active = [int(np.sum(depth > level)) for level in range(levels)]
    n_iter = len(iterations)
    max_rows = max(1, HGB_MAX_NODE_VISITS // max(1, int(depth.sum())))

    # A small batch (every batch at low rates: one row): each node's comparison for each row at once,
    # then one take a level for all trees and rows, where the walk below makes ~9 array calls a level
    # (HGB's one-row predict was most of a request's CPU below ~50 % of the maximum). A leaf is its own
    # child here too, so the same leaves and the same running sum: the same answers bit for bit.
    n_nodes = feature.size

    def raw_predict_small(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        v = x.ravel().take(feature) if n == 1 else x.take(feature, axis=1)
        went_left = v <= threshold
        if np.isnan(x).any():
            went_left |= np.isnan(v) & nan_left
        nxt = np.where(went_left, left, right)
        if n == 1:
            cur = offsets
            for _ in range(levels):
                cur = nxt.take(cur)
        else:
            base_n = np.arange(0, n * n_nodes, n_nodes, dtype=np.intp)[:, None]
            nxt += base_n
            cur = offsets + base_n
            for _ in range(levels):
                cur = nxt.take(cur)
            cur -= base_n
        leaves = value.take(cur).reshape(n, n_iter, k)
        total = np.concatenate([np.broadcast_to(baseline, (n, 1, k)), leaves], axis=1)
        return np.cumsum(total, axis=1)[:, -1, :]

    def raw_predict(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n <= HGB_SMALL_ROWS:
            return raw_predict_small(x)
        flat = np.ascontiguousarray(x).ravel()
        base: Any = np.arange(n, dtype=np.intp)[:, None] * n_in if n > 1 else 0
        cur = np.repeat(roots2[None, :], n, axis=0)
        with_nan = bool(np.isnan(flat).any())
        for m in active:
            now = cur[:, :m]
            v = flat.take(feature2.take(now) + base)
            went_left = v <= threshold2.take(now)
            if with_nan:
                went_left |= np.isnan(v) & nan_left2.take(now)
            cur[:, :m] = child2.take(now + went_left)
        leaves = value.take(cur >> 1).take(unorder, axis=1).reshape(n, n_iter, k)
        # scikit-learn adds tree after tree to the baseline: a running sum in the same order.
        total = np.concatenate([np.broadcast_to(baseline, (n, 1, k)), leaves], axis=1)
        return np.cumsum(total, axis=1)[:, -1, :]

    if name == "HistGradientBoostingClassifier":
        classes = np.asarray(est.classes_)
        if (k == 1) != (classes.size == 2):
            raise Unsupported(f"{name}: {k} trees per iteration for {classes.size} classes")
        return (lambda x: _class_output(raw_predict(x), classes)), classes, max_rows
    link = type(est._loss.link).__name__
    if k != 1 or link not in ("IdentityLink", "LogLink"):
        raise Unsupported(f"{name} with {k} outputs and link {link}")
    if link == "IdentityLink":
        return (lambda x: (raw_predict(x)[:, 0], None)), None, max_rows
    return (lambda x: (np.exp(raw_predict(x)[:, 0]), None)), None, max_rows


def _final(est: Any, n_in: int) -> Final:
    module = type(est).__module__
    name = type(est).__name__
    if any(_exact(est, "sklearn.linear_model", n) for n in ("LogisticRegression", *LINEAR_REGRESSORS)):
        return _linear(est, n_in)
    if any(_exact(est, "sklearn.ensemble", n) for n in ("HistGradientBoostingClassifier",
                                                        "HistGradientBoostingRegressor")):
        return _hgb(est, n_in)
    raise Unsupported(f"estimator {module}.{name}")


def compile_model(estimator: Any, n_features: int) -> FastPredictor:
    """The fast predictor for ``estimator`` (fed ``n_features`` float columns in the order of its
    ``feature_names_in_``); raises ``Unsupported`` with the reason when it is not modelled."""
    if _exact(estimator, "sklearn.pipeline", "Pipeline"):
        steps = [s for _, s in estimator.steps]
        pre = steps[:-1]
        transform, width = _chain(pre, n_features)
        final_est = steps[-1]
        names = [type(s).__name__ if s is not None and not isinstance(s, str) else str(s) for s in steps]
    else:
        transform, width, final_est, names = _identity, n_features, estimator, [type(estimator).__name__]
        pre = []
    final, classes, max_rows = _final(final_est, width)

    if transform is _identity:
        run = final
    else:
        def run(x: np.ndarray) -> Output | None:
            t = transform(x)
            return None if t is None else final(t)

    affine = _affine_path(pre, final_est, n_features, run)
    if affine is not None:
        return FastPredictor(" > ".join(names), n_features, classes is not None, classes, affine, max_rows)
    return FastPredictor(" > ".join(names), n_features, classes is not None, classes, run, max_rows)


def verify(fast: FastPredictor, estimator: Any, frame_of: Callable[[np.ndarray], Any], rows: np.ndarray,
           with_proba: bool, singles: int = 8) -> str | None:
    """Why ``fast`` may not replace ``estimator`` on ``rows`` (``None``: it may). ``frame_of`` turns
    rows into what the estimator is normally given. Labels must be identical; probabilities and a
    regressor's values within RTOL/ATOL; where scikit-learn raises, the fast path must leave the
    rows to it, and it must answer every batch of at most ``max_rows`` that scikit-learn answers.
    Checked on the whole batch and on its first ``singles`` rows one by one (a one-row product may
    take another BLAS kernel)."""
    batches = [rows] + [rows[i:i + 1] for i in range(min(singles, rows.shape[0]))]
    for batch in batches:
        try:
            expected = np.asarray(estimator.predict(frame_of(batch)))
            expected_proba = np.asarray(estimator.predict_proba(frame_of(batch))) if with_proba else None
        except Exception:  # noqa: BLE001 - scikit-learn's own refusal: the fast path must refuse too
            if fast(batch) is not None:
                return f"scikit-learn rejects {batch.shape[0]} rows the fast path answers"
            continue
        got = fast(batch)
        if got is None:
            if fast.max_rows is not None and batch.shape[0] > fast.max_rows:
                continue
            return f"the fast path leaves {batch.shape[0]} rows to scikit-learn that it answers"
        labels, proba = got
        if fast.is_classifier:
            if labels.dtype != expected.dtype or not np.array_equal(labels, expected):
                return f"labels differ on {int(np.sum(labels != expected))} of {batch.shape[0]} rows"
        elif not np.allclose(labels, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
            return f"values differ by up to {float(np.nanmax(np.abs(labels - expected))):.3g}"
        if expected_proba is not None:
            if proba is None or proba.shape != expected_proba.shape:
                return "probabilities missing or of another shape"
            if not np.allclose(proba, expected_proba, rtol=RTOL, atol=ATOL, equal_nan=True):
                return f"probabilities differ by up to {float(np.nanmax(np.abs(proba - expected_proba))):.3g}"
    return None
