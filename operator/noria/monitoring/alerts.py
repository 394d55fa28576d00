"""Noria's alert rules: what a platform team pages or tickets on, built from the metric-name modules.

Each alert carries a severity (``critical``: users are or soon will be served badly and nobody else
will act; ``warning``: a person should look today; ``info``), a summary and description with the
labels that name the object, a one-line ``runbook`` (the first thing to do), and ``runbook_url``: the
alert's section of docs/operations/alerts.md, or ``<monitoring.prometheusRule.runbookBaseUrl>#<alert
name in lower case>`` when the chart sets one.

Thresholds are the objects' own where the operator exports them: drift and the live metric are
compared with each pipeline's ``spec.triggers`` (``noria_operator_pipeline_drift_threshold``,
``noria_operator_pipeline_live_metric_below``), not with a number fixed here. The remaining numbers
(windows, ``for`` durations) are chosen below, each with its reason; docs/operations/alerts.md lists
them.

Annotations use ``$labels`` only (no ``$value``): the promtool tests (``alert_tests``) compare them
exactly, and the number is one click away on the dashboard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from noria import conditions as c
from noria import metrics as m
from noria.deployment.analysis import DISPLAY as ANALYSIS_OUTCOME
from noria.scrape import SCRAPED_COMPONENTS
from noria.training.pipeline import OUTCOME_FAILED

from . import promql as q
from .promql import COMPONENT, NAMESPACE, OP_PIPELINE, OP_ROLLOUT, POD, ROLLOUT, acting, selector

GROUP = "noria"
RUNBOOK_PAGE = "docs/operations/alerts.md"
CRITICAL, WARNING, INFO = "critical", "warning", "info"

SERVED = "~" + "|".join(SCRAPED_COMPONENTS)  # model servers and routers


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # one line: the first thing to do

    @property
    def anchor(self) -> str:
        """The heading anchor of the alert's section in docs/operations/alerts.md."""
        return self.name.lower()

    def rule(self, runbook_url: str) -> dict[str, Any]:
        return {
            "alert": self.name, "expr": self.expr, "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description, "runbook": self.runbook,
                            "runbook_url": runbook_url},
        }


def _l(label: str) -> str:
    return "{{ $labels." + label + " }}"


_OBJ_TP = f"TrainingPipeline {_l(NAMESPACE)}/{_l(OP_PIPELINE)}"
_OBJ_MRO = f"Rollout {_l(NAMESPACE)}/{_l(OP_ROLLOUT)}"

ALERTS: tuple[Alert, ...] = (
    Alert(
        "NoriaTrainingRunFailed",
        # A failed run leaves the champion serving, so this is a ticket, not a page. 1h: long enough that a
        # run failing at each retry of the initial trigger (1, 2, 4 ... minutes apart) keeps it firing.
        f"sum by ({NAMESPACE}, {OP_PIPELINE}) (increase({q.RUNS}{selector(outcome=OUTCOME_FAILED)}[1h])) > 0",
        "0m", WARNING,
        f"{_OBJ_TP}: a training run failed",
        f"A training run of {_OBJ_TP} failed in the last hour; the current champion keeps serving. "
        "The pipeline's Degraded condition and its lastRuns say why (e.g. the trainer was OOM-killed, the "
        "data failed validation, the Job hit its deadline).",
        "kubectl describe tp -n <namespace> <pipeline>; read lastRuns[0].reason and the run's pod log.",
    ),
    Alert(
        "NoriaDriftAboveThreshold",
        # Sustained: the trigger's own `for` and cooldown decide retraining; this alert says the inputs
        # have stayed away from the training data for half an hour (retraining did not fix it, or is
        # not configured to act).
        f"max by ({NAMESPACE}, {OP_PIPELINE}) ({acting(q.PIPELINE_DRIFT)}) "
        f"> on ({NAMESPACE}, {OP_PIPELINE}) max by ({NAMESPACE}, {OP_PIPELINE}) ({acting(q.PIPELINE_DRIFT_THRESHOLD)})",
        "30m", WARNING,
        f"{_OBJ_TP}: input drift above its threshold for 30 minutes",
        f"The drift statistic of at least one feature of {_OBJ_TP}'s serving version has stayed above "
        "spec.triggers.drift.threshold for 30 minutes. The drift trigger retrains when the drift is also "
        "significant and outlasts its `for`; if it did, the new version still sees drifted inputs.",
        "kubectl noria get pipeline <pipeline>: which features drift; check the upstream data, then retrain.",
    ),
    Alert(
        "NoriaLiveMetricBelowTarget",
        f"max by ({NAMESPACE}, {OP_PIPELINE}, metric) ({acting(q.PIPELINE_LIVE_METRIC)}) "
        f"< on ({NAMESPACE}, {OP_PIPELINE}, metric) "
        f"max by ({NAMESPACE}, {OP_PIPELINE}, metric) ({acting(q.PIPELINE_LIVE_METRIC_BELOW)})",
        "15m", CRITICAL,
        f"{_OBJ_TP}: live {_l('metric')} below its target",
        f"The live {_l('metric')} of {_OBJ_TP}'s serving version, computed from feedback labels, has been below "
        "spec.triggers.performance.below for 15 minutes: users are being served a model worse than the target.",
        "kubectl noria get pipeline <pipeline>: is a retrain running or held by cooldown? If none helps, roll "
        "back to an earlier version (pin spec.source.modelVersion).",
    ),
    Alert(
        "NoriaRolloutDegraded",
        f"max by ({NAMESPACE}, {OP_ROLLOUT}) ({acting(q.ROLLOUT_PHASE + selector(phase=c.DEGRADED))}) == 1",
        "1m", WARNING,
        f"{_OBJ_MRO} is Degraded",
        f"{_OBJ_MRO} is Degraded: a new version was aborted or rolled back (failed analysis, analysis errors, "
        "progressDeadline, unready pods) or the stable version's pods are unhealthy. Traffic went back to the "
        "stable version where there is one.",
        "kubectl noria get rollout <rollout>: read the Degraded condition; fix, then kubectl noria retry.",
    ),
    Alert(
        "NoriaRolloutStuck",
        # progressDeadline aborts a rollout that stalls on the operator's own account; this catches what it
        # cannot: a rollout Progressing for an hour whose step and weights have not moved in that hour (a
        # long progressDeadline, or an operator that no longer reconciles it).
        f"(max by ({NAMESPACE}, {OP_ROLLOUT}) "
        f"({acting(f'min_over_time({q.ROLLOUT_PHASE}{selector(phase=c.PROGRESSING)}[1h])')}) == 1) "
        f"unless on ({NAMESPACE}, {OP_ROLLOUT}) ("
        f"max by ({NAMESPACE}, {OP_ROLLOUT}) (changes({q.ROLLOUT_STEP}[1h])) > 0 or "
        f"max by ({NAMESPACE}, {OP_ROLLOUT}) (changes({q.ROLLOUT_WEIGHT}[1h])) > 0)",
        "15m", WARNING,
        f"{_OBJ_MRO} has made no progress for over an hour",
        f"{_OBJ_MRO} is Progressing but neither its step nor its weights changed in the last hour.",
        "kubectl noria get rollout <rollout>: what the step waits for (labels, analysis, pods); check the "
        "operator's log and its reconcile errors.",
    ),
    Alert(
        "NoriaAnalysisErrors",
        # Errors are the metric provider failing (Prometheus unreachable, a bad custom query): several in
        # 10 minutes is no blip, and consecutiveErrorLimit will abort the rollout soon.
        f"sum by ({NAMESPACE}, {OP_ROLLOUT}, check) "
        f"(increase({q.ANALYSIS_MEASUREMENTS}{selector(outcome=ANALYSIS_OUTCOME['error'])}[10m])) >= 3",
        "0m", WARNING,
        f"{_OBJ_MRO}: analysis check {_l('check')} cannot be measured",
        f"The analysis of {_OBJ_MRO} failed to measure check {_l('check')} at least 3 times in 10 minutes "
        "(the metric provider did not answer or the query is wrong). consecutiveErrorLimit aborts the rollout.",
        "kubectl noria get rollout <rollout>: read the check's last message; test its query against Prometheus.",
    ),
    Alert(
        "NoriaModelServerNotReady",
        # up == 0: the pod is there but its HTTP port does not answer (crash loop, a refused model exits,
        # hung). With kube-state-metrics, a pod that answers but reports not ready counts too.
        f"max by ({NAMESPACE}, {POD}, {ROLLOUT}, {COMPONENT}) (up{selector(**{COMPONENT: SERVED})} == 0) "
        f"or (max by ({NAMESPACE}, {POD}, {ROLLOUT}, {COMPONENT}) (up{selector(**{COMPONENT: SERVED})}) "
        f"and on ({NAMESPACE}, {POD}) "
        f'(max by ({NAMESPACE}, {POD}) (kube_pod_status_ready{selector(condition="true")}) == 0))',
        "5m", WARNING,
        f"Noria {_l(COMPONENT)} pod {_l(NAMESPACE)}/{_l(POD)} not ready",
        f"The {_l(COMPONENT)} pod {_l(NAMESPACE)}/{_l(POD)} of Rollout {_l(ROLLOUT)} has not been ready or "
        "reachable for 5 minutes. Its Rollout routes no traffic to it; if it is the only one, requests fail.",
        "kubectl describe pod -n <namespace> <pod> and kubectl logs: a refused artifact, OOM, or a probe failing.",
    ),
    Alert(
        "NoriaFeedbackStalled",
        # Stalled, not absent: feedback arrived in the 6 hours before the last one, predictions still flow,
        # and no label came in the last hour. A model without a feedback loop never fires it.
        f"(sum by ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}) "
        f"(increase({m.REQUESTS_TOTAL}{selector(**{m.LABEL_ENDPOINT: m.ENDPOINT_INFER, m.LABEL_CODE: '~2..'})}[1h])) > 0) "
        f"and on ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}) "
        f"(sum by ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}) "
        f"(increase({m.FEEDBACK_TOTAL}[6h] offset 1h) or increase({m.FEEDBACK_ABS_ERROR_COUNT}[6h] offset 1h)) > 0) "
        f"unless on ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}) "
        f"(sum by ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}) "
        f"(increase({m.FEEDBACK_TOTAL}[1h]) or increase({m.FEEDBACK_ABS_ERROR_COUNT}[1h])) > 0)",
        "15m", WARNING,
        f"Feedback for {_l(NAMESPACE)}/{_l(m.LABEL_MODEL)} {_l(m.LABEL_VERSION)} has stopped",
        f"Version {_l(m.LABEL_VERSION)} of {_l(NAMESPACE)}/{_l(m.LABEL_MODEL)} answers predictions but has "
        "counted no feedback label for an hour, after receiving labels before. Accuracy checks, the "
        "performance trigger and training on production feedback go blind.",
        "Check the client that posts labels (POST /v2/models/<model>/feedback) and "
        "noria_feedback_refused_total by reason (unknown_id, expired, unauthorized).",
    ),
    Alert(
        "NoriaPredictionLogDropping",
        f"sum by ({NAMESPACE}, {m.LABEL_MODEL}, {m.LABEL_VERSION}, {m.LABEL_KIND}) "
        f"(increase({m.PREDICTION_LOG_DROPPED_TOTAL}[10m])) > 0",
        "5m", WARNING,
        f"{_l(NAMESPACE)}/{_l(m.LABEL_MODEL)} {_l(m.LABEL_VERSION)} drops {_l(m.LABEL_KIND)} log lines",
        f"Model servers of {_l(NAMESPACE)}/{_l(m.LABEL_MODEL)} version {_l(m.LABEL_VERSION)} have been dropping "
        f"{_l(m.LABEL_KIND)} log lines for 5 minutes (the store is slow, full or read-only). Training on "
        "production feedback loses these rows.",
        "Check the store volume (free space, write errors in the server log) and the server's CPU.",
    ),
    Alert(
        "NoriaOperatorNoLeader",
        f"(sum({q.LEADER}) == 0) or absent({q.LEADER})",
        "5m", CRITICAL,
        "No Noria operator replica is acting",
        "For 5 minutes no operator replica has held the leader Lease (or none is scraped): nothing trains, "
        "promotes, or rolls back.",
        "kubectl get pods,lease -n <operator namespace>; read the operator's log.",
    ),
    Alert(
        "NoriaReconcileErrors",
        # A pass fails now and then (a conflict, a timeout) and the next one retries; failing for 15
        # minutes means something keeps it from working.
        f"sum by (kind) (rate({q.RECONCILE_ERRORS}[10m])) > 0",
        "15m", WARNING,
        f"Noria keeps failing to reconcile {_l('kind')} objects",
        f"Reconcile passes of {_l('kind')} objects have kept failing for 15 minutes.",
        "kubectl get tp,mro -A: objects with Reconciled=False say which API call failed; read the operator's log.",
    ),
)


def runbook_url(alert: Alert, base_url: str = "") -> str:
    """Where the alert's runbook is: ``<base_url>#<name>`` or the section of docs/operations/alerts.md."""
    return f"{base_url.rstrip('/')}#{alert.anchor}" if base_url else f"{RUNBOOK_PAGE}#{alert.anchor}"


def rules_file(base_url: str = "") -> dict[str, Any]:
    """The alerts as a Prometheus rule file (also the spec of the chart's PrometheusRule)."""
    return {"groups": [{"name": GROUP, "rules": [a.rule(runbook_url(a, base_url)) for a in ALERTS]}]}


_LABEL_REF = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def render(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it for an alert with ``labels`` (``$labels`` only)."""
    return _LABEL_REF.sub(lambda match: labels.get(match.group(1), ""), template)
