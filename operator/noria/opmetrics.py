"""The operator's own Prometheus metrics, served on ``/metrics`` at Settings.metrics_port.

Defined once here (and nowhere else) so dashboards and tests name the same series. They live in
their own registry: the operator process should expose what it does, not library defaults
scattered over the default registry by whatever else got imported.
"""

from __future__ import annotations

import logging
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REGISTRY: Final = CollectorRegistry(auto_describe=True)

RECONCILE_DURATION: Final = Histogram(
    "noria_operator_reconcile_duration_seconds", "Time of one reconcile pass.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
RECONCILE_ERRORS: Final = Counter(
    "noria_operator_reconcile_errors_total", "Reconcile passes that raised.", ["kind"], registry=REGISTRY,
)
RUNS: Final = Counter(
    "noria_operator_training_runs_total", "Training runs by pipeline, trigger and outcome (started, Succeeded,"
    " Rejected, Failed).", ["namespace", "pipeline", "trigger", "outcome"], registry=REGISTRY,
)
TRIGGER_EVALUATIONS: Final = Counter(
    "noria_operator_trigger_evaluations_total", "Trigger evaluations by kind and result (fired, quiet, unknown).",
    ["trigger", "result"], registry=REGISTRY,
)
PROMETHEUS_QUERY_ERRORS: Final = Counter(
    "noria_operator_prometheus_query_errors_total", "Prometheus queries that failed, by purpose.",
    ["purpose"], registry=REGISTRY,
)
LEADER: Final = Gauge(
    "noria_operator_leader", "1 while this replica holds the leader Lease and acts, 0 while it stands by "
    "(always 1 when run with --no-leader-election).", registry=REGISTRY,
)


# --- TrainingPipeline triggers (set by training/gauges.py from each pass's evaluations, as status.triggers
# shows them): alert rules and dashboards compare a pipeline's live values with its own thresholds, which
# live in its spec, and Prometheus can only compare what it scrapes ----------------------------------------
PIPELINE_DRIFT: Final = Gauge(
    "noria_operator_pipeline_drift", "The drift trigger's statistic (spec.triggers.drift.method) per tested feature"
    " of the champion's live inputs against its training profile (the most drifted features).",
    ["namespace", "pipeline", "feature"], registry=REGISTRY,
)
PIPELINE_DRIFT_THRESHOLD: Final = Gauge(
    "noria_operator_pipeline_drift_threshold", "spec.triggers.drift.threshold of the pipeline.",
    ["namespace", "pipeline"], registry=REGISTRY,
)
PIPELINE_LIVE_METRIC: Final = Gauge(
    "noria_operator_pipeline_live_metric", "The performance trigger's live metric of the champion, from feedback"
    " labels over the trigger's window.", ["namespace", "pipeline", "metric"], registry=REGISTRY,
)
PIPELINE_LIVE_METRIC_BELOW: Final = Gauge(
    "noria_operator_pipeline_live_metric_below", "spec.triggers.performance.below of the pipeline (the target the live"
    " metric must stay at or above).", ["namespace", "pipeline", "metric"], registry=REGISTRY,
)

# --- Rollouts (set by deployment/handlers.py after each status write; labels name the Rollout) --------
ROLLOUT_PHASE: Final = Gauge(
    "noria_operator_rollout_phase", "1 for the Rollout's current status.phase (Pending, Progressing, Paused, Healthy,"
    " Degraded), 0 for the others.", ["namespace", "rollout", "phase"], registry=REGISTRY,
)
ROLLOUT_STEP: Final = Gauge(
    "noria_operator_rollout_step", "Index of the current canary step (-1 when no rollout is under way).",
    ["namespace", "rollout"], registry=REGISTRY,
)
ROLLOUT_WEIGHT: Final = Gauge(
    "noria_operator_rollout_weight", "Traffic weight (percent) the operator set per served version.",
    ["namespace", "rollout", "version"], registry=REGISTRY,
)
ANALYSIS_MEASUREMENTS: Final = Counter(
    "noria_operator_analysis_measurements_total", "Analysis measurements by check and outcome (Successful, Failed,"
    " Error, Inconclusive, Waiting).", ["namespace", "rollout", "check", "outcome"], registry=REGISTRY,
)
ROLLOUT_PROMOTIONS: Final = Counter(
    "noria_operator_rollout_promotions_total", "Versions promoted to stable (full promotion).",
    ["namespace", "rollout"], registry=REGISTRY,
)
ROLLOUT_ABORTS: Final = Counter(
    "noria_operator_rollout_aborts_total", "Rollouts aborted or rolled back, by condition reason.",
    ["namespace", "rollout", "reason"], registry=REGISTRY,
)

# --- notifications (noria/notify.py) ------------------------------------------------------------------
NOTIFICATIONS: Final = Counter(
    "noria_operator_notifications_total", "Webhook notifications by event reason and outcome (sent, failed, dropped).",
    ["reason", "outcome"], registry=REGISTRY,
)

_started_port: int | None = None


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics server once (0 disables it)."""
    global _started_port
    if port <= 0 or _started_port is not None:
        return
    start_http_server(port, addr=addr, registry=REGISTRY)
    _started_port = port
    log.info("operator metrics on http://%s:%d/metrics", addr, port)
