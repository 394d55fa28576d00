"""Live classification scores from feedback counts: the one definition of accuracy, precision,
recall and F1 that every live path uses.

A *confusion* is ``{(actual, predicted): n}`` — what the feedback counters
(``noria_feedback_total{actual, predicted}``) add up to over a window. Two places score one:

- the Rollout's ``accuracy`` and ``f1`` analysis checks (``noria.deployment.checks``), and
- the TrainingPipeline's performance trigger (``noria.training.triggers.live_metric``).

They must agree, or a rollout could promote a version on one F1 and the trigger retrain it on
another. The definition, for every number of classes (two included):

- the classes are the labels *seen*: every value that appears as an actual or as a predicted label
  in the counts (a class nobody sent and nobody predicted cannot be scored);
- per class c: precision = TP / predicted c, recall = TP / actual c, F1 = 2·TP / (actual c +
  predicted c) (the harmonic mean of the two; 0 when TP is 0);
- precision, recall and F1 are **macro** averages: the unweighted mean over the classes seen. Not
  the binary F1 of one "positive" class: which label is positive is not known to the operator (the
  counters carry strings), and a macro average does not hide a collapse on the rarer class;
- accuracy is correct labels over all labels.

Pure: no I/O, no Kubernetes, no Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping

Confusion = Mapping[tuple[str, str], float]

#: Scores this module can compute from a confusion; the names match the CRD's metric names.
SCORES = ("accuracy", "precision", "recall", "f1")


def classes_seen(confusion: Confusion) -> list[str]:
    """Every label that appears as actual or predicted, sorted."""
    return sorted({actual for actual, _ in confusion} | {predicted for _, predicted in confusion})


def labels(confusion: Confusion) -> float:
    """How many labelled predictions the counts hold."""
    return float(sum(confusion.values()))


def accuracy(confusion: Confusion) -> float | None:
    """Correct over all labels; None without labels."""
    total = labels(confusion)
    if total <= 0:
        return None
    return sum(n for (actual, predicted), n in confusion.items() if actual == predicted) / total


def per_class(confusion: Confusion, cls: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of one class; a ratio with nothing to divide by is 0."""
    tp = float(confusion.get((cls, cls), 0.0))
    predicted = sum(n for (_, p), n in confusion.items() if p == cls)
    actual = sum(n for (a, _), n in confusion.items() if a == cls)
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * tp / (predicted + actual) if predicted + actual else 0.0
    return precision, recall, f1


def _macro(confusion: Confusion, index: int) -> float | None:
    if labels(confusion) <= 0:
        return None
    classes = classes_seen(confusion)
    return sum(per_class(confusion, c)[index] for c in classes) / len(classes)


def macro_precision(confusion: Confusion) -> float | None:
    """Unweighted mean of per-class precision over the classes seen; None without labels."""
    return _macro(confusion, 0)


def macro_recall(confusion: Confusion) -> float | None:
    """Unweighted mean of per-class recall over the classes seen; None without labels."""
    return _macro(confusion, 1)


def macro_f1(confusion: Confusion) -> float | None:
    """Unweighted mean of per-class F1 over the classes seen (module docstring); None without labels."""
    return _macro(confusion, 2)


def score(metric: str, confusion: Confusion) -> float | None:
    """The named score (one of ``SCORES``) of the counts; None without labels."""
    scorers = {"accuracy": accuracy, "precision": macro_precision, "recall": macro_recall, "f1": macro_f1}
    if metric not in scorers:
        raise ValueError(f"{metric!r} cannot be computed from feedback counts; one of {', '.join(SCORES)}")
    return scorers[metric](confusion)
