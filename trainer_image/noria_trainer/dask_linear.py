"""Linear models on the Dask engine: fitted by dask-ml, shipped as the Pipeline a single run writes.

``sklearn.linear_model.LogisticRegression`` (two classes), ``LinearRegression`` and ``Ridge`` with
``compute.engine: dask``. The window never comes to one process: every step below is a pass over the
parts (``dask_training.Part``) on the workers, and what comes back is counts, samples and coefficients.

1. **preparation statistics** — one pass: per numeric feature a uniform sample of its non-null values
   (every value while a part has at most ``MEDIAN_SAMPLE_PER_PART``; the median is then exact), per
   categorical feature the values seen and whether one is missing.
2. **scaling** — dask-ml's ``StandardScaler`` over a dask array of the numeric features with the
   medians filled in, one chunk per part: the exact mean and variance of the training rows.
3. **the Pipeline** — ``estimators.build_pipeline`` builds the single run's Pipeline (median
   imputation and scaling of numerics, ``__missing__`` and one-hot encoding of categoricals, then the
   estimator); its fitted state is set from steps 1-2, so the preprocessing *is* the single run's.
4. **the fit** — that Pipeline's ``prepare`` step turns each part into rows of the design matrix on a
   worker (a dask array with one chunk per part, kept in the workers' memory for the solver's
   iterations), and dask-ml's estimator (dask-glm's L-BFGS) fits it. Its coefficients become the
   scikit-learn estimator's ``coef_``/``intercept_``.

The artifact is that Pipeline written with skops, like a single run's ``model.skops``: the server
loads it against ``noria.trusted_types`` after the digest matches and needs no dask-ml.

Where it differs from a single run (docs/training-dask.md): the median is estimated from samples when
a part holds more than ``MEDIAN_SAMPLE_PER_PART`` values of a feature; dask-glm penalises the
intercept along with the coefficients (scikit-learn does not); LogisticRegression is binary only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
from noria import store
from noria.artifact import dumps_model, loads_verified, sha256_digest

from noria_trainer.estimators import DASK_LINEAR_PARAMS, MISSING_CATEGORY, build_pipeline, linear_params
from noria_trainer.spec import Task

MEDIAN_SAMPLE_PER_PART: Final = 20_000  # numeric values kept per part for the imputation median
ARTIFACT_FORMAT: Final = "skops"
MODEL_FILE: Final = store.MODEL_FILE


def is_linear(estimator: str) -> bool:
    return estimator in DASK_LINEAR_PARAMS


# --- 1. preparation statistics ------------------------------------------------------------------
@dataclass
class ColumnStats:
    """Per numeric feature: sampled values with the weight of each; per categorical: values seen."""

    samples: dict[str, list[tuple[np.ndarray, float]]]
    values: dict[str, set[Any]]
    missing: dict[str, bool]
    rows: int

    def merge(self, other: ColumnStats) -> ColumnStats:
        for name, sample in other.samples.items():
            self.samples.setdefault(name, []).extend(sample)
        for name, seen in other.values.items():
            self.values.setdefault(name, set()).update(seen)
        for name, flag in other.missing.items():
            self.missing[name] = self.missing.get(name, False) or flag
        self.rows += other.rows
        return self


def part_column_stats(
    reader: Any, part: Any, numeric: Sequence[str], categorical: Sequence[str], seed: int
) -> ColumnStats:
    frame = reader.load(part)
    rng = np.random.default_rng([seed, part.start, len(frame)])
    samples: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name in numeric:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        weight = 1.0
        if values.size > MEDIAN_SAMPLE_PER_PART:
            weight = values.size / MEDIAN_SAMPLE_PER_PART
            values = rng.choice(values, MEDIAN_SAMPLE_PER_PART, replace=False)
        samples[name] = [(values, weight)]
    return ColumnStats(
        samples,
        {name: set(frame[name].dropna().tolist()) for name in categorical},
        {name: bool(frame[name].isna().any()) for name in categorical},
        len(frame),
    )


def median_of(samples: Sequence[tuple[np.ndarray, float]]) -> float:
    """The median of the values (exact when no part was sampled, as scikit-learn's SimpleImputer
    computes it), else the weighted median of the samples."""
    kept = [(v, w) for v, w in samples if v.size]
    if not kept:
        return float("nan")
    if all(w == 1.0 for _, w in kept):
        return float(np.median(np.concatenate([v for v, _ in kept])))
    values = np.concatenate([v for v, _ in kept])
    weights = np.concatenate([np.full(v.size, w) for v, w in kept])
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def categories_of(stats: ColumnStats, name: str) -> list[Any]:
    """The categories the one-hot encoder learns: values seen, and ``__missing__`` if one was missing."""
    seen = set(stats.values.get(name, ()))
    if stats.missing.get(name):
        seen.add(MISSING_CATEGORY)
    return sorted(seen)


# --- 2.-3. the single run's Pipeline, fitted from statistics ------------------------------------
@dataclass(frozen=True)
class Prepared:
    """What the preprocessing learnt from the training rows (features in the Pipeline's order)."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    medians: tuple[float, ...]
    means: tuple[float, ...]
    variances: tuple[float, ...]
    scales: tuple[float, ...]
    categories: dict[str, tuple[Any, ...]]
    rows: int


def assemble(
    path: str,
    task: Task,
    params: dict[str, Any],
    features: Sequence[str],
    prepared: Prepared,
    coef: np.ndarray,
    intercept: float,
    classes: Sequence[Any] | None,
    seed: int,
) -> Any:
    """The fitted scikit-learn Pipeline of a single run with these statistics and coefficients.

    The Pipeline is fitted on a few synthetic rows (so every fitted attribute scikit-learn sets exists,
    with its own types), then the statistics and coefficients learnt on the cluster replace the
    synthetic ones."""
    import warnings

    pipeline = build_pipeline(path, task, params, list(prepared.numeric), list(prepared.categorical), seed)
    size = max(2, *(len(c) for c in prepared.categories.values())) if prepared.categories else 2
    synthetic = pd.DataFrame(
        {
            name: (
                np.arange(size, dtype=float)
                if name in prepared.numeric
                else pd.Series(
                    [prepared.categories[name][i % len(prepared.categories[name])] for i in range(size)],
                    dtype=object,
                )
            )
            for name in features
        }
    )
    if classes is not None:
        target = np.array([classes[i % len(classes)] for i in range(size)], dtype=np.asarray(classes).dtype)
    else:
        target = np.arange(size, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a synthetic fit does not converge; its numbers are replaced
        pipeline.fit(synthetic, target)
    prepare = pipeline.named_steps["prepare"]
    if prepared.numeric:
        steps = prepare.named_transformers_["numeric"].named_steps
        steps["impute"].statistics_ = np.asarray(prepared.medians, dtype=float)
        scaler = steps["scale"]
        scaler.mean_ = np.asarray(prepared.means, dtype=float)
        scaler.var_ = np.asarray(prepared.variances, dtype=float)
        scaler.scale_ = np.asarray(prepared.scales, dtype=float)
        scaler.n_samples_seen_ = type(scaler.n_samples_seen_)(prepared.rows)
    model = pipeline.named_steps["model"]
    if classes is not None:
        model.coef_ = np.asarray(coef, dtype=float).reshape(1, -1)
        model.intercept_ = np.array([intercept], dtype=float)
    else:
        model.coef_ = np.asarray(coef, dtype=float).reshape(-1)
        model.intercept_ = np.float64(intercept)
    return pipeline


def dask_ml_estimator(path: str, params: dict[str, Any]) -> Any:
    """dask-ml's estimator minimising what ``path`` minimises, with ``spec.model.params``.

    dask-glm minimises sum(loss) + (1/C)·penalty(β): LogisticRegression's C as it is; Ridge's
    ‖y − Xβ‖² + α‖w‖² is C = 1/(2α); LinearRegression (and Ridge α = 0) has no penalty. The
    penalty is ‖w‖²/2 over the coefficients, not the intercept, as in scikit-learn."""
    from dask_ml.linear_model import LinearRegression, LogisticRegression

    given = linear_params(path, params)
    fit_intercept = bool(given.get("fit_intercept", True))
    common = {
        "solver": "lbfgs",
        "fit_intercept": fit_intercept,
        "max_iter": int(given.get("max_iter", 100)),
        "tol": float(given.get("tol", 1e-4)),
        # dask-glm would standardise every column (the one-hot ones too) and penalise the standardised
        # coefficients; the Pipeline has scaled the numeric ones already, as scikit-learn sees them
        "solver_kwargs": {"normalize": False},
    }
    penalty = _l2_penalty(fit_intercept)
    if path.endswith(".LogisticRegression"):
        return LogisticRegression(penalty=penalty, C=float(given.get("C", 1.0)), **common)
    alpha = float(given.get("alpha", 1.0)) if path.endswith(".Ridge") else 0.0
    if alpha == 0.0:
        return LinearRegression(penalty=None, **common)
    return LinearRegression(penalty=penalty, C=1.0 / (2.0 * alpha), **common)


def _l2_penalty(fit_intercept: bool) -> Any:
    """dask-glm's L2 penalty, leaving out the intercept (the last coefficient dask-glm fits) when
    there is one: dask-glm's own "l2" penalises it too, which pulls it to 0 and moves its weight onto
    the one-hot columns (they add up to the intercept's column)."""
    from dask_glm.regularizers import L2

    if not fit_intercept:
        return L2()

    class L2WithoutIntercept(L2):  # type: ignore[misc]
        name = "l2-without-intercept"

        def f(self, beta: Any) -> Any:
            return (beta[:-1] ** 2).sum() / 2

        def gradient(self, beta: Any) -> Any:  # beta may be a dask array: stays lazy
            mask = np.ones(beta.shape[0])
            mask[-1] = 0.0
            return beta * mask

    return L2WithoutIntercept()


# --- the parts as dask arrays, on the workers ----------------------------------------------------
def _imputed_numeric(reader: Any, part: Any, numeric: Sequence[str], medians: Sequence[float]) -> np.ndarray:
    frame = reader.load(part)
    values = np.column_stack(
        [pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float) for name in numeric]
    )
    return np.where(np.isnan(values), np.asarray(medians, dtype=float), values)


def _design(reader: Any, part: Any, prepare: Any, features: Sequence[str]) -> np.ndarray:
    frame = reader.load(part)
    return np.asarray(prepare.transform(frame[list(features)]), dtype=float)


def _target(reader: Any, part: Any, positive: Any | None) -> np.ndarray:
    y = reader.load(part)[reader.target]
    if positive is None:
        return y.to_numpy(dtype=float)
    return (y == positive).to_numpy(dtype=float)


def _stacked(function: Any, parts: Sequence[Any], columns: int | None, *args: Any) -> Any:
    """One chunk per part, each made on a worker; the row counts are known from the split."""
    import dask
    import dask.array as da

    chunks = []
    for part in parts:
        rows = part.stop - part.start
        shape = (rows,) if columns is None else (rows, columns)
        chunks.append(
            da.from_delayed(
                dask.delayed(function, pure=False)(*args[:1], part, *args[1:]), shape=shape, dtype=float
            )
        )
    return da.concatenate(chunks)


# --- the fit ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearLearner:
    """How a Dask run fits ``path`` on a list of parts and writes it (``dask_training._stages``)."""

    path: str
    task: Task
    params: dict[str, Any]
    features: tuple[str, ...]
    kinds: dict[str, str]
    classes: tuple[Any, ...] | None
    seed: int
    model_file: str = MODEL_FILE
    artifact_format: str = ARTIFACT_FORMAT

    def fit(self, state: Any, parts: Sequence[Any]) -> Any:
        """The fitted Pipeline on ``parts`` (state: ``dask_training.DaskRun``, for its client and map)."""
        from dask_ml.preprocessing import StandardScaler

        numeric = tuple(f for f in self.features if self.kinds[f] == "numeric")
        categorical = tuple(f for f in self.features if self.kinds[f] != "numeric")
        stats = ColumnStats({}, {}, {}, 0)
        for partial in state.map(part_column_stats, parts, numeric, categorical, self.seed):
            stats.merge(partial)
        medians = tuple(median_of(stats.samples.get(name, [])) for name in numeric)
        empty = [name for name, m in zip(numeric, medians, strict=True) if np.isnan(m)]
        if empty:
            raise ValueError(
                f"numeric feature(s) {', '.join(map(repr, empty))} have no value in the training rows"
            )
        means: tuple[float, ...] = ()
        variances: tuple[float, ...] = ()
        scales: tuple[float, ...] = ()
        if numeric:
            imputed = _stacked(_imputed_numeric, parts, len(numeric), state.reader, numeric, medians)
            scaler = StandardScaler().fit(imputed)
            means = tuple(np.asarray(scaler.mean_, dtype=float).tolist())
            variances = tuple(np.asarray(scaler.var_, dtype=float).tolist())
            scales = tuple(np.asarray(scaler.scale_, dtype=float).tolist())
        prepared = Prepared(
            numeric,
            categorical,
            medians,
            means,
            variances,
            scales,
            {name: tuple(categories_of(stats, name)) for name in categorical},
            stats.rows,
        )
        placeholder = assemble(
            self.path,
            self.task,
            self.params,
            self.features,
            prepared,
            np.zeros(self.width(prepared)),
            0.0,
            self.classes,
            self.seed,
        )
        prepare = placeholder.named_steps["prepare"]
        positive = None if self.classes is None else self.classes[1]
        X = _stacked(_design, parts, self.width(prepared), state.reader, prepare, self.features)
        y = _stacked(_target, parts, None, state.reader, positive)
        X, y = state.client.persist([X, y])  # in the workers' memory for every solver iteration
        try:
            fitted = dask_ml_estimator(self.path, self.params).fit(X, y)
        finally:
            state.client.cancel([X, y])
        return assemble(
            self.path,
            self.task,
            self.params,
            self.features,
            prepared,
            np.asarray(fitted.coef_, dtype=float),
            float(fitted.intercept_),
            self.classes,
            self.seed,
        )

    @staticmethod
    def width(prepared: Prepared) -> int:
        return len(prepared.numeric) + sum(len(c) for c in prepared.categories.values())

    def dumps(self, model: Any) -> bytes:
        data, _ = dumps_model(model)
        return data

    @staticmethod
    def loads(data: bytes) -> Any:
        """As the server loads it: digest, then the trusted-type audit, then skops."""
        return loads_verified(data, sha256_digest(data))

    def record(self) -> dict[str, Any]:
        """What metadata.json's ``model`` says about the fit, beside the single run's fields."""
        estimator = dask_ml_estimator(self.path, self.params)
        return {
            "learner": f"dask_ml.linear_model.{type(estimator).__name__}",
            "learnerParams": {
                k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in estimator.get_params().items()
            },
        }


def classes_for(path: str, classes: Iterable[Any]) -> tuple[Any, ...]:
    """The classes in scikit-learn's order; dask-ml's LogisticRegression separates two only."""
    ordered = tuple(np.unique(np.asarray(list(classes), dtype=object)).tolist())
    if len(ordered) != 2:
        raise ValueError(
            f"{path} on compute.engine dask is fitted by dask-ml, which separates two classes; the target "
            f"has {len(ordered)} ({', '.join(map(str, ordered[:5]))}{', ...' if len(ordered) > 5 else ''}): "
            "use xgboost.XGBClassifier on Dask, or compute.engine single"
        )
    return ordered


__all__ = ["LinearLearner", "assemble", "classes_for", "is_linear", "median_of"]
