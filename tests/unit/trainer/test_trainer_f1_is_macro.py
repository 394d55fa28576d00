"""One F1 everywhere: the trainer's holdout f1 (and precision, recall) is noria.scoring's macro
average over the classes seen, the definition the Rollout's f1 check and the performance trigger
apply to live feedback counts, and tuning's cross-validation scores the same metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from noria import scoring
from noria_trainer import training
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import get_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from trainer_datasets import sklearn_frame


class Answers:
    """Fixed predictions for a holdout (a unit-test stand-in for a fitted model)."""

    def __init__(self, predicted: list, classes: list):
        self.predicted, self.classes_ = np.asarray(predicted), np.asarray(classes)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.predicted


CASES = {
    # binary 0/1 with rare positives: binary F1 of class 1 is 0.40, the macro F1 0.64
    "rare positives": ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                       [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1]),
    "string labels": (["yes", "no", "no", "yes", "no", "no"], ["yes", "yes", "no", "no", "no", "no"], ["no", "yes"]),
    "three classes": ([0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 2, 1, 1, 0], [0, 1, 2]),
    # a class nobody predicted still counts (it was seen as an actual label)
    "a class never predicted": ([0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2]),
    "booleans": ([True, False, False, False, True], [True, True, False, False, False], [False, True]),
}


@pytest.mark.parametrize("actual,predicted,classes", CASES.values(), ids=CASES.keys())
def test_the_trainers_scores_are_noria_scoring_on_the_same_predictions(actual, predicted, classes):
    holdout = pd.DataFrame({"x": range(len(actual))})
    metrics = training.evaluate(Answers(predicted, classes), holdout, pd.Series(actual), "classification")
    confusion = {}
    for a, p in zip(actual, predicted, strict=True):  # what the feedback counters would hold
        confusion[(str(a), str(p))] = confusion.get((str(a), str(p)), 0) + 1
    for name in ("accuracy", "precision", "recall", "f1"):
        assert metrics[name] == pytest.approx(scoring.score(name, confusion), abs=1e-12), name


def test_binary_f1_is_macro_not_the_f1_of_one_positive_class():
    actual, predicted, classes = CASES["rare positives"]
    metrics = training.evaluate(Answers(predicted, classes), pd.DataFrame({"x": actual}), pd.Series(actual),
                                "classification")
    f1_positive = 2 * 1 / (4 + 2)  # class 1: TP 1, actual 4, predicted 2
    f1_negative = 2 * 15 / (16 + 18)  # class 0: TP 15, actual 16, predicted 18
    assert metrics["f1"] == pytest.approx((f1_positive + f1_negative) / 2)
    assert metrics["f1"] != pytest.approx(f1_positive)  # scikit-learn's average="binary", the old trainer f1


@pytest.mark.parametrize("metric", ["f1", "precision", "recall"])
def test_tuning_cross_validates_the_metric_the_gate_scores(metric):
    """A real model on real data: the scorer tuning uses gives the gate's number on the same rows."""
    frame = sklearn_frame("breast_cancer")
    X, y = frame.drop(columns=["target"]), frame["target"]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X.iloc[:300], y.iloc[:300])
    X_hold, y_hold = X.iloc[300:], y.iloc[300:]
    gate = training.evaluate(model, X_hold, y_hold, "classification")[metric]
    scorer = get_scorer(training.scorer_name(metric, "classification", 2))
    assert scorer(model, X_hold, y_hold) == pytest.approx(gate, abs=1e-12)
    confusion = training.confusion_of(y_hold, model.predict(X_hold))
    assert gate == pytest.approx(scoring.score(metric, confusion), abs=1e-12)
