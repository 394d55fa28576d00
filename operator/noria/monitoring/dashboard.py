"""The Grafana dashboard: one pipeline and its Rollout at a time, and the operator's health.

Variables: ``datasource`` (a Prometheus), ``namespace``, ``pipeline`` (the servers' ``model`` label:
a model server serves a version of one pipeline), ``rollout`` (the pod label ``noria.dev/rollout``
of that pipeline's servers) and ``window`` (the range of rates and counts). Every query is built here
from the metric-name modules (``noria.monitoring.promql``); tests/integration/test_monitoring_dashboard.py
fills the variables in and checks that each returns data from the test bed's Prometheus.

Panels come in rows: the served model's quality (accuracy and F1 from feedback, the live metric
against the performance trigger's target, drift per feature against the drift threshold, labels
arriving), traffic and latency per version, the Rollout (phase, step, weights, analysis,
promotions and aborts), training, and the operator itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from noria import metrics as m
from noria.contracts import COMPONENT_ROUTER, COMPONENT_SERVER

from . import promql as q
from .promql import COMPONENT, NAMESPACE, OP_PIPELINE, OP_ROLLOUT, ROLLOUT, acting, selector

UID = "noria-overview"
TITLE = "Noria: pipelines, rollouts and the operator"
VARIABLES = ("namespace", "pipeline", "rollout", "window")
WINDOWS = ("1m", "5m", "15m", "1h", "6h", "1d")
DEFAULT_WINDOW = "15m"
W = "$window"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Selectors with the dashboard's variables.
MODEL = selector(**{NAMESPACE: "$namespace", m.LABEL_MODEL: "$pipeline"})
SERVER = selector(**{NAMESPACE: "$namespace", m.LABEL_MODEL: "$pipeline", COMPONENT: COMPONENT_SERVER})
INFER = selector(**{NAMESPACE: "$namespace", m.LABEL_MODEL: "$pipeline", m.LABEL_ENDPOINT: m.ENDPOINT_INFER})
INFER_5XX = selector(**{NAMESPACE: "$namespace", m.LABEL_MODEL: "$pipeline", m.LABEL_ENDPOINT: m.ENDPOINT_INFER,
                        m.LABEL_CODE: "~5.."})
ROUTER = selector(**{NAMESPACE: "$namespace", ROLLOUT: "$rollout", COMPONENT: COMPONENT_ROUTER})
PIPELINE = selector(**{NAMESPACE: "$namespace", OP_PIPELINE: "$pipeline"})
MRO = selector(**{NAMESPACE: "$namespace", OP_ROLLOUT: "$rollout"})
BY_VERSION = (m.LABEL_VERSION,)


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"


def _quantile(quantile: float, sel: str) -> str:
    return (f"histogram_quantile({quantile}, sum by ({m.LABEL_VERSION}, le) "
            f"(rate({m.REQUEST_DURATION_SECONDS}_bucket{sel}[{W}])))")


def _events() -> str:
    promoted = f'label_replace(sum(increase({q.ROLLOUT_PROMOTIONS}{MRO}[{W}])), "event", "promoted", "", "")'
    aborted = (f'label_replace(sum by (reason) (increase({q.ROLLOUT_ABORTS}{MRO}[{W}])), "event", "aborted: $1",'
               f' "reason", "(.+)")')
    return f"{promoted} or {aborted}"


def _operator_errors() -> str:
    """Errors by source; 0 for every kind that reconciles without errors (an error counter is born
    at its first error, so without the zeros a healthy operator would show no data)."""
    def tagged(expr: str, label: str, text: str) -> str:
        return f'label_replace({expr}, "source", "{text}", "{label}", "(.+)")'

    errors = tagged(f"sum by (kind) (rate({q.RECONCILE_ERRORS}[{W}]))", "kind", "reconcile $1")
    queries = tagged(f"sum by (purpose) (rate({q.PROMETHEUS_QUERY_ERRORS}[{W}]))", "purpose", "prometheus query $1")
    zeros = tagged(f"sum by (kind) (rate({q.RECONCILE_DURATION}_count[{W}])) * 0", "kind", "reconcile $1")
    return f"{errors} or {queries} or {zeros}"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Served model quality: $pipeline", (
        Panel("Served accuracy by version",
              "Correct over all feedback labels in the window, per version (noria.scoring.accuracy).",
              (Target(q.accuracy(MODEL, W, BY_VERSION), "{{version}}"),), "percentunit"),
        Panel("Served macro F1 by version",
              "Macro F1 over the classes seen in the window's feedback, per version (noria.scoring.macro_f1,"
              " the number the f1 analysis check and the performance trigger judge).",
              (Target(q.macro_f1(MODEL, W, BY_VERSION), "{{version}}"),), "percentunit"),
        Panel("Live metric against the performance trigger's target",
              "The champion's live metric as the operator last measured it over the trigger's window, and"
              " spec.triggers.performance.below.",
              (Target(f"max by (metric) ({acting(q.PIPELINE_LIVE_METRIC + PIPELINE)})", "live {{metric}}"),
               Target(f"max by (metric) ({acting(q.PIPELINE_LIVE_METRIC_BELOW + PIPELINE)})", "target {{metric}}")),
              "percentunit"),
        Panel("Drift per feature against the threshold",
              "The drift trigger's statistic per tested feature of the champion's live inputs against its"
              " training profile, and spec.triggers.drift.threshold.",
              (Target(f"max by (feature) ({acting(q.PIPELINE_DRIFT + PIPELINE)})", "{{feature}}"),
               Target(f"max({acting(q.PIPELINE_DRIFT_THRESHOLD + PIPELINE)})", "threshold"))),
        Panel("Feedback labels per second by version",
              "Labels counted against logged predictions (confusion counters, or the regression error count).",
              (Target(f"sum by ({m.LABEL_VERSION}) {q.labelled(MODEL, W, 'rate')}", "{{version}}"),), "reqps"),
        Panel("Prediction and feedback log lines dropped",
              "Lines the servers could not write to the store in the window (training on feedback loses them).",
              (Target(f"sum by ({m.LABEL_VERSION}, {m.LABEL_KIND}) (increase({m.PREDICTION_LOG_DROPPED_TOTAL}{MODEL}[{W}]))",
                      "{{version}} {{kind}}"),)),
    )),
    ("Traffic and latency: $pipeline", (
        Panel("Inference requests per second by version", "Answers of the model servers to inference requests.",
              (Target(f"sum by ({m.LABEL_VERSION}) (rate({m.REQUESTS_TOTAL}{INFER}[{W}]))", "{{version}}"),), "reqps"),
        Panel("Traffic weight by version",
              "The weight the router applies, and the weight the operator set (percent).",
              (Target(f"max by ({m.LABEL_VERSION}) ({m.ROUTER_WEIGHT}{ROUTER})", "router {{version}}"),
               Target(f"max by ({q.OP_VERSION}) ({acting(q.ROLLOUT_WEIGHT + MRO)})", "operator {{version}}"))),
        Panel("Error ratio by version", "Share of inference answers with a 5xx code.",
              (Target(f"sum by ({m.LABEL_VERSION}) (rate({m.REQUESTS_TOTAL}{INFER_5XX}[{W}])) / "
                      f"(sum by ({m.LABEL_VERSION}) (rate({m.REQUESTS_TOTAL}{INFER}[{W}])) > 0)", "{{version}}"),),
              "percentunit"),
        Panel("Latency inside the model server by version", "p50 and p99 of inference requests in the server.",
              (Target(_quantile(0.5, SERVER), "p50 {{version}}"), Target(_quantile(0.99, SERVER), "p99 {{version}}")),
              "s"),
        Panel("Latency through the router by version", "p99 of requests through the Rollout's router (its hop included).",
              (Target(_quantile(0.99, ROUTER), "p99 {{version}}"),), "s"),
    )),
    ("Rollout: $rollout", (
        Panel("Phase", "1 for the Rollout's current status.phase.",
              (Target(f"max by (phase) ({acting(q.ROLLOUT_PHASE + MRO)})", "{{phase}}"),)),
        Panel("Canary step", "Index of the current canary step (-1: no rollout under way).",
              (Target(f"max({acting(q.ROLLOUT_STEP + MRO)})", "step"),)),
        Panel("Analysis measurements by check and outcome", "Measurements taken in the window.",
              (Target(f"sum by (check, outcome) (increase({q.ANALYSIS_MEASUREMENTS}{MRO}[{W}]))",
                      "{{check}} {{outcome}}"),)),
        Panel("Promotions and aborts", "Full promotions, and aborts or rollbacks by reason, in the window.",
              (Target(_events(), "{{event}}"),)),
    )),
    ("Training: $pipeline", (
        Panel("Training runs by outcome", "Runs started and finished (Succeeded, Rejected, Failed) in the window.",
              (Target(f"sum by (outcome) (increase({q.RUNS}{PIPELINE}[{W}]))", "{{outcome}}"),)),
        Panel("Trigger evaluations by trigger and result (all pipelines)", "fired, quiet or unknown, per second.",
              (Target(f"sum by (trigger, result) (rate({q.TRIGGER_EVALUATIONS}[{W}]))", "{{trigger}} {{result}}"),),
              "ops"),
    )),
    ("Operator", (
        Panel("Leader per replica", "1 for the replica that holds the leader Lease and acts.",
              (Target(f"max by ({q.INSTANCE}) ({q.LEADER})", "{{instance}}"),)),
        Panel("Reconcile duration p99 by kind", "Time of one reconcile pass.",
              (Target(f"histogram_quantile(0.99, sum by (kind, le) (rate({q.RECONCILE_DURATION}_bucket[{W}])))",
                      "{{kind}}"),), "s"),
        Panel("Operator errors per second", "Failed reconcile passes by kind and failed Prometheus queries by purpose.",
              (Target(_operator_errors(), "{{source}}"),), "ops"),
    )),
)


def variable_queries() -> dict[str, tuple[str, str]]:
    """Variable -> (label, series selector) of Grafana's ``label_values(selector, label)``: the
    namespaces, pipelines and Rollouts that have model servers."""
    return {
        "namespace": (NAMESPACE, m.REQUESTS_TOTAL),
        "pipeline": (m.LABEL_MODEL, m.REQUESTS_TOTAL + selector(**{NAMESPACE: "$namespace"})),
        "rollout": (ROLLOUT, m.REQUESTS_TOTAL + selector(**{NAMESPACE: "$namespace", m.LABEL_MODEL: "$pipeline"})),
    }


def _variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, match: str) -> dict[str, Any]:
        expr = f"label_values({match}, {label})"
        return {"name": name, "label": name, "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
                "query": {"query": expr, "refId": f"{name}-values"}, "definition": expr,
                "includeAll": False, "multi": False}

    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        *(query(name, label, match) for name, (label, match) in variable_queries().items()),
        {"name": "window", "label": "window", "type": "custom", "query": ",".join(WINDOWS),
         "current": {"text": DEFAULT_WINDOW, "value": DEFAULT_WINDOW},
         "options": [{"text": w, "value": w, "selected": w == DEFAULT_WINDOW} for w in WINDOWS]},
    ]


def panels() -> list[Panel]:
    return [panel for _, row in ROWS for panel in row]


def dashboard() -> dict[str, Any]:
    """The dashboard JSON model (Grafana's schema)."""
    out: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, row in ROWS:
        out.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        for i, panel in enumerate(row):
            out.append({
                "id": next_id, "type": "timeseries", "title": panel.title, "description": panel.description,
                "datasource": DS, "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [{"datasource": DS, "expr": t.expr, "legendFormat": t.legend, "refId": chr(ord("A") + k)}
                            for k, t in enumerate(panel.targets)],
            })
            next_id += 1
        y += 8 * ((len(row) + 1) // 2)
    return {
        "uid": UID, "title": TITLE, "tags": ["noria"], "editable": True, "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": _variables()}, "panels": out,
        "description": "Generated by `python -m noria.monitoring` (operator/noria/monitoring/dashboard.py).",
    }
