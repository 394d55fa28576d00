"""Splitting, fitting, tuning, evaluating, and the gate decision.

``decide_gate`` is pure (numbers in, verdict and words out) and table-tested; the rest wraps
scikit-learn. Every window is a suffix of the time-ordered rows (data and labelled feedback
together), so the holdout is the newest ``holdoutFraction`` of the *shortest* window: every
candidate window, the contender and the champion are scored on the same, most recent rows, which is
what production will look like next. Once the gate has decided, the model shipped is refit on the
whole chosen window, holdout included (``run``), so it also learns from those newest rows.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from noria import scoring

from noria_trainer.spec import LOWER_IS_BETTER, PipelineSpec

Progress = Callable[..., None]


# --- the gate (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    verdict: str  # "passed" | "rejected"
    reason: str


TIE_TOLERANCE = 1e-12  # scores equal up to float rounding are a tie


def decide_gate(metric: str, contender: float, champion: float | None, champion_name: str | None,
                min_score: float | None, max_score: float | None, must_beat_by: float | None,
                written: dict[str, str] | None = None) -> GateDecision:
    """Examples (f1, higher is better):
    - contender 0.83, minScore 0.70, no champion → passed.
    - contender 0.65, minScore 0.70 → rejected: "f1 0.6500 is below minScore 0.70".
    - contender 0.80, champion 0.82, mustBeatChampionBy 0.00 → rejected: does not beat the champion.
    - contender 0.5943, champion 0.5943, mustBeatChampionBy 0.00 → rejected: a tie keeps the
      champion (a swap that gains nothing still costs a rollout and risks what serves).
    - contender 0.5943, champion 0.5943, mustBeatChampionBy -0.01 → passed: the user allowed a
      contender up to 0.01 worse, so a tie too.
    - contender 0.60, champion 0.82, mustBeatChampionBy unset → passed; the reason reports the
      champion's score on the same holdout and says it was not compared (the CRD's "Unset: the
      champion is not compared").
    The champion rule is strict: the gain over the champion must be *more than* the margin.
    For rmse/mae (lower is better) the bound is maxScore and "beating" means lower by the margin."""
    written = written or {}
    lower = metric in LOWER_IS_BETTER
    value = f"{metric} {contender:.4f}"
    if contender is None or math.isnan(contender):
        return GateDecision("rejected", f"{metric} could not be computed on the holdout")
    parts: list[str] = []
    if lower and max_score is not None:
        bound = written.get("maxScore", f"{max_score:g}")
        if contender > max_score:
            return GateDecision("rejected", f"{value} is above maxScore {bound}")
        parts.append(f"{value} is within maxScore {bound}")
    if not lower and min_score is not None:
        bound = written.get("minScore", f"{min_score:g}")
        if contender < min_score:
            return GateDecision("rejected", f"{value} is below minScore {bound}")
        parts.append(f"{value} meets minScore {bound}")
    if champion is not None and not math.isnan(champion):
        gain = (champion - contender) if lower else (contender - champion)
        if must_beat_by is None:
            parts.append(f"champion {champion_name} has {champion:.4f} on the same holdout (difference "
                         f"{gain:+.4f}), not compared: mustBeatChampionBy is unset")
        else:
            margin = written.get("mustBeatChampionBy", f"{must_beat_by:g}")
            direction = "lower" if lower else "higher"
            facts = (f"champion {champion_name} has {champion:.4f}; the gain must be more than {margin} "
                     f"({direction} is better)")
            if gain <= must_beat_by + TIE_TOLERANCE:
                tie = " (a tie keeps the champion)" if abs(gain) <= TIE_TOLERANCE else ""
                return GateDecision("rejected", f"{value} does not beat {facts}; the difference is {gain:+.4f}{tie}")
            parts.append(f"beats {facts}; the difference is {gain:+.4f}")
    else:
        parts.append("no champion to compare with" if champion_name is None
                     else f"champion {champion_name} could not be scored")
    if not parts[0].startswith(metric):
        parts[0] = f"{value}: {parts[0]}"
    return GateDecision("passed", " and ".join(parts))


# --- splitting ------------------------------------------------------------------------------------
def holdout_size(rows: int, fraction: float) -> int:
    return max(1, min(rows - 1, int(round(rows * fraction))))


def split_random(data: pd.DataFrame, spec: PipelineSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    stratify = None
    if spec.task == "classification":
        counts = data[spec.target].value_counts()
        if counts.min() >= 2:
            stratify = data[spec.target]
    train, holdout = train_test_split(data, test_size=spec.holdout_fraction, random_state=spec.seed,
                                      stratify=stratify)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


# --- metrics ------------------------------------------------------------------------------------
# Precision, recall and F1 are noria.scoring's: macro averages over the classes seen as actual or
# predicted, the definition the Rollout's f1 check and the performance trigger use on live
# feedback. The holdout's predictions become the same confusion counts the feedback counters hold
# (labels as strings), so a ModelVersion's f1 and the live f1 that judges it are one metric.
def confusion_of(actual: Any, predicted: Any) -> dict[tuple[str, str], int]:
    """``{(actual, predicted): n}`` of the holdout, labels as strings (``noria.scoring.Confusion``)."""
    return dict(Counter(zip(map(str, actual), map(str, predicted), strict=True)))


def evaluate(model: Any, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float]:
    from sklearn import metrics as m

    predicted = model.predict(X)
    if task == "regression":
        return {
            "rmse": float(math.sqrt(m.mean_squared_error(y, predicted))),
            "mae": float(m.mean_absolute_error(y, predicted)),
            "r2": float(m.r2_score(y, predicted)) if len(y) > 1 else float("nan"),
        }
    confusion = confusion_of(y, predicted)
    out = {name: _defined(scoring.score(name, confusion)) for name in scoring.SCORES}
    classes = list(getattr(model, "classes_", np.unique(y)))
    binary = len(classes) == 2
    try:
        if hasattr(model, "predict_proba"):
            scores = model.predict_proba(X)
            out["roc_auc"] = float(m.roc_auc_score(y, scores[:, 1]) if binary else
                                   m.roc_auc_score(y, scores, multi_class="ovr", labels=classes))
        elif hasattr(model, "decision_function") and binary:
            out["roc_auc"] = float(m.roc_auc_score(y, model.decision_function(X)))
    except (ValueError, AttributeError):
        pass  # one class in the holdout, or an estimator without scores: ROC AUC is undefined
    return out


def _defined(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def scorer_name(metric: str, task: str, n_classes: int) -> str:
    """The scikit-learn scorer tuning's cross-validation uses for ``metric``: the same definitions as
    ``evaluate`` (macro precision, recall and F1 for any number of classes)."""
    if task == "regression":
        return {"rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error", "r2": "r2"}[metric]
    if metric == "accuracy":
        return "accuracy"
    if metric == "roc_auc":
        return "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    return f"{metric}_macro"


def better(metric: str, a: float, b: float) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    if math.isnan(a):
        return False
    return a < b if metric in LOWER_IS_BETTER else a > b


# --- tuning ---------------------------------------------------------------------------------------
def _param_key(name: str) -> str:
    return name if "__" in name else f"model__{name}"


def sample_space(space: dict[str, list[Any]], strategy: str, trials: int, seed: int) -> list[dict[str, Any]]:
    """Parameter sets to try. ``random``: a two-number list is a range (integers stay integers;
    a positive range spanning two decades or more is sampled log-uniformly), any other list is a
    set of choices. ``grid``: every combination of the lists, in order, up to ``trials``."""
    if strategy == "grid":
        names = list(space)
        combos = itertools.islice(itertools.product(*(space[n] for n in names)), trials)
        return [dict(zip(names, combo, strict=True)) for combo in combos]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        chosen: dict[str, Any] = {}
        for name, values in space.items():
            numeric = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric:
                lo, hi = sorted(values)
                if all(isinstance(v, int) for v in values):
                    chosen[name] = int(rng.integers(lo, hi + 1))
                elif lo > 0 and hi / lo >= 100:
                    chosen[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                else:
                    chosen[name] = float(rng.uniform(lo, hi))
            else:
                chosen[name] = values[int(rng.integers(0, len(values)))]
        out.append(chosen)
    return out


@dataclass
class TuningResult:
    best_params: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]]
    stopped_by_budget: bool


def tune(pipeline: Any, X: pd.DataFrame, y: pd.Series, spec: PipelineSpec, progress: Progress) -> TuningResult:
    """Cross-validated search; trial 0 is the user's own params so tuning can only help.
    Stops starting new trials once ``timeBudget`` is spent (a started trial is finished)."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    n_classes = int(y.nunique()) if spec.task == "classification" else 0
    scoring = scorer_name(spec.metric, spec.task, n_classes)
    folds = spec.tuning_cv
    if spec.task == "classification":
        folds = max(2, min(folds, int(y.value_counts().min())))
        cv: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=spec.seed)
    else:
        cv = KFold(n_splits=folds, shuffle=True, random_state=spec.seed)
    candidates: list[dict[str, Any]] = [{}] + sample_space(spec.tuning_space, spec.tuning_strategy or "random", spec.tuning_trials,
                                     spec.seed)
    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    stopped = False
    for i, params in enumerate(candidates):
        if i > 0 and spec.tuning_time_budget is not None and time.monotonic() - started >= spec.tuning_time_budget:
            stopped = True
            break
        model = clone(pipeline).set_params(**{_param_key(k): v for k, v in params.items()})
        t0 = time.monotonic()
        try:
            scores = cross_val_score(model, X, y, scoring=scoring, cv=cv, error_score="raise")
            score = float(np.mean(scores))
            # sklearn's scorers negate error metrics so that higher is better; report the metric itself
            if spec.metric in LOWER_IS_BETTER:
                score = -score
            error = None
        except (ValueError, TypeError) as exc:
            score, error = float("nan"), f"{type(exc).__name__}: {exc}"
        trial: dict[str, Any] = {"trial": i, "params": params, "cvScore": None if math.isnan(score) else round(score, 6),
                 "seconds": round(time.monotonic() - t0, 3)}
        if error:
            trial["error"] = error[:300]
        trials.append(trial)
        if best is None or better(spec.metric, score, best[0]):
            best = (score, params)
        progress("tuning", trial=i, trials=len(candidates), pct=round(100.0 * (i + 1) / len(candidates), 1),
                 cvScore=trial["cvScore"], best=None if best is None or math.isnan(best[0]) else round(best[0], 6))
    assert best is not None
    return TuningResult(best_params=best[1], best_score=best[0], trials=trials, stopped_by_budget=stopped)


def set_model_params(pipeline: Any, params: dict[str, Any]) -> Any:
    return pipeline.set_params(**{_param_key(k): v for k, v in params.items()})
