"""PromQL pieces the alert rules and the dashboard share, built from the metric-name modules.

Every metric and label name below comes from ``noria.metrics`` (servers and routers),
``noria.opmetrics`` (the operator) or ``noria.scrape`` (the labels a pod's series get from the
PodMonitor), so a renamed metric changes the alerts and the dashboard with it.

Two facts shape these queries:

* The operator runs as several replicas, one acting (the Lease holder, ``noria_operator_leader`` 1).
  A replica that lost the Lease keeps exporting the gauges it set while it acted; ``acting()`` keeps
  the acting replica's series only, so a stale standby never shows an old phase or weight.
* Accuracy and F1 come from the feedback confusion counters ``{actual, predicted}``. PromQL cannot
  compare two labels of one series, so the correct answers (actual == predicted) are selected by
  matching each series with a copy of the per-``actual`` totals relabelled ``predicted = actual``.
  The formulas are ``noria.scoring``'s (macro F1 over the classes seen, 0 for a class with nothing
  to divide by), so the dashboard shows the number the analysis and the triggers judge.
"""

from __future__ import annotations

from noria import metrics as m
from noria import opmetrics as om
from noria.contracts import LABEL_COMPONENT, LABEL_PIPELINE, LABEL_ROLLOUT, LABEL_VERSION
from noria.scrape import series_label

# The series labels a server's or router's pod labels become (podTargetLabels).
COMPONENT = series_label(LABEL_COMPONENT)
ROLLOUT = series_label(LABEL_ROLLOUT)
POD_VERSION = series_label(LABEL_VERSION)
POD_PIPELINE = series_label(LABEL_PIPELINE)
# Target labels every scraped series carries (the Prometheus Operator sets them).
NAMESPACE, POD, INSTANCE = "namespace", "pod", "instance"
# Labels of the operator's own series (noria.opmetrics).
OP_ROLLOUT, OP_PIPELINE, OP_VERSION = "rollout", "pipeline", "version"


def name(metric: object) -> str:
    """The Prometheus name of a prometheus_client metric (a Counter's name without ``_total``)."""
    base = metric._name  # type: ignore[attr-defined]
    return base + "_total" if metric._type == "counter" else base  # type: ignore[attr-defined]


# Operator series names, from the objects themselves (nobody re-types a metric name).
LEADER = name(om.LEADER)
RECONCILE_DURATION = name(om.RECONCILE_DURATION)
RECONCILE_ERRORS = name(om.RECONCILE_ERRORS)
RUNS = name(om.RUNS)
TRIGGER_EVALUATIONS = name(om.TRIGGER_EVALUATIONS)
PROMETHEUS_QUERY_ERRORS = name(om.PROMETHEUS_QUERY_ERRORS)
PIPELINE_DRIFT = name(om.PIPELINE_DRIFT)
PIPELINE_DRIFT_THRESHOLD = name(om.PIPELINE_DRIFT_THRESHOLD)
PIPELINE_LIVE_METRIC = name(om.PIPELINE_LIVE_METRIC)
PIPELINE_LIVE_METRIC_BELOW = name(om.PIPELINE_LIVE_METRIC_BELOW)
ROLLOUT_PHASE = name(om.ROLLOUT_PHASE)
ROLLOUT_STEP = name(om.ROLLOUT_STEP)
ROLLOUT_WEIGHT = name(om.ROLLOUT_WEIGHT)
ANALYSIS_MEASUREMENTS = name(om.ANALYSIS_MEASUREMENTS)
ROLLOUT_PROMOTIONS = name(om.ROLLOUT_PROMOTIONS)
ROLLOUT_ABORTS = name(om.ROLLOUT_ABORTS)


def selector(**matchers: str) -> str:
    """``{a="x", b=~"y"}`` from keyword arguments; a value starting with ``~`` is a regex match,
    ``!`` a negative match. Keys are sorted so generated files do not churn."""
    parts = []
    for key, value in sorted(matchers.items()):
        op = "=~" if value.startswith("~") else "!=" if value.startswith("!") else "="
        parts.append(f'{key}{op}"{value.lstrip("~!")}"')
    return "{" + ", ".join(parts) + "}"


def acting(expr: str) -> str:
    """Only the series of the operator replica that acts (holds the leader Lease)."""
    return f"({expr} and on ({INSTANCE}) ({LEADER} == 1))"


def labelled(sel: str, window: str, fn: str = "increase") -> str:
    """Labels (feedback) counted per series in ``window`` (``fn``: increase or rate): the confusion
    counters of classifiers, or the absolute-error count of regressors."""
    return f"({fn}({m.FEEDBACK_TOTAL}{sel}[{window}]) or {fn}({m.FEEDBACK_ABS_ERROR_COUNT}{sel}[{window}]))"


def _confusion(sel: str, window: str) -> str:
    return f"increase({m.FEEDBACK_TOTAL}{sel}[{window}])"


def correct(sel: str, window: str, by: tuple[str, ...]) -> str:
    """Labels whose actual class equals the predicted one, summed by ``by`` (+ the class as ``actual``
    when asked)."""
    keys = (NAMESPACE, m.LABEL_MODEL, m.LABEL_VERSION)
    per_actual = f"sum by ({', '.join((*keys, m.LABEL_ACTUAL))}) ({_confusion(sel, window)})"
    as_predicted = f'label_replace({per_actual}, "{m.LABEL_PREDICTED}", "$1", "{m.LABEL_ACTUAL}", "(.*)")'
    on = ", ".join((*keys, m.LABEL_ACTUAL, m.LABEL_PREDICTED))
    return f"sum by ({', '.join(by)}) ({_confusion(sel, window)} and on ({on}) {as_predicted})"


def accuracy(sel: str, window: str, by: tuple[str, ...]) -> str:
    """Correct labels over all labels (``noria.scoring.accuracy``), by ``by``."""
    total = f"sum by ({', '.join(by)}) ({_confusion(sel, window)})"
    return f"{correct(sel, window, by)} / ({total} > 0)"


def macro_f1(sel: str, window: str, by: tuple[str, ...]) -> str:
    """Unweighted mean over the classes seen of 2·TP / (predicted + actual), 0 for a class with
    neither (``noria.scoring.macro_f1``), by ``by``."""
    cls = "noria_class"  # a working label: the class, whether it came from actual or predicted
    per_class = (*by, cls)
    group = ", ".join(per_class)

    def as_class(expr: str, source: str) -> str:
        return f'sum by ({group}) (label_replace({expr}, "{cls}", "$1", "{source}", "(.*)"))'

    tp = as_class(correct(sel, window, (*by, m.LABEL_ACTUAL)), m.LABEL_ACTUAL)
    actual = as_class(_confusion(sel, window), m.LABEL_ACTUAL)
    predicted = as_class(_confusion(sel, window), m.LABEL_PREDICTED)
    # A class seen only as predicted (or only as actual) has no series on the other side: "or" keeps it.
    both = f"(({actual} + on ({group}) {predicted}) or {actual} or {predicted})"
    f1 = f"((2 * {tp} / on ({group}) ({both} > 0)) or on ({group}) ({both} * 0))"
    return f"avg by ({', '.join(by)}) ({f1})"
