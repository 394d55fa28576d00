"""Conditions are Noria's API; every condition type and reason string is a constant here.

Tests, docs and `kubectl describe` name these; never spell a reason inline elsewhere. A phase is
a summary derived from conditions, never stored on its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from noria.api.common import format_timestamp

# --- condition types --------------------------------------------------------------------------
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
TRAINING: Final = "Training"
TRIGGERS_HEALTHY: Final = "TriggersHealthy"  # Unknown when Prometheus cannot be asked
APPROVED: Final = "Approved"
PAUSED: Final = "Paused"
ANALYSIS: Final = "Analysis"
# False while the object's passes fail (reason ReconcileError, the cause in the message): kept apart
# from Degraded so a failing pass never overwrites a verdict (an abort's Degraded) it did not make.
RECONCILED: Final = "Reconciled"

TRUE: Final = "True"
FALSE: Final = "False"
UNKNOWN: Final = "Unknown"

# --- reasons: training (TrainingPipeline / ModelVersion) --------------------------------------
# Training
RUN_IN_PROGRESS: Final = "RunInProgress"
IDLE: Final = "Idle"
COOLING_DOWN: Final = "CoolingDown"
# Event: a drift/performance trigger pending about a version that is no longer the champion
PENDING_TRIGGER_DROPPED: Final = "PendingTriggerDropped"
# Degraded (and RunRecord.reason)
TRAINER_FAILED: Final = "TrainerFailed"  # the trainer said why (its summary's reason)
JOB_FAILED: Final = "JobFailed"  # the Job failed without a summary (deadline, eviction, crash)
SUMMARY_MISSING: Final = "SummaryMissing"  # the Job succeeded but no pod left a summary
SUMMARY_INVALID: Final = "SummaryInvalid"  # the summary does not describe this run
TRAINER_OOM_KILLED: Final = "TrainerOOMKilled"  # the run's pods were killed for memory until its retries ran out
DASK_CLUSTER_NOT_READY: Final = "DaskClusterNotReady"  # a dask run's scheduler did not start in time
DASK_CLUSTER_LOST: Final = "DaskClusterLost"  # a dask run's cluster or scheduler went away under its Job
LAST_RUN_SUCCEEDED: Final = "LastRunSucceeded"
GATE_REJECTED: Final = "GateRejected"
# TriggersHealthy
TRIGGERS_EVALUATED: Final = "TriggersEvaluated"
PROMETHEUS_UNAVAILABLE: Final = "PrometheusUnavailable"
DATA_SOURCE_UNREADABLE: Final = "DataSourceUnreadable"
# Degraded (and its Warning Event): spec.data.source lies outside the namespace's store, the shared
# datasets/ folder and every trusted data prefix; no run starts until it is fixed.
DATA_SOURCE_OUT_OF_SCOPE: Final = "DataSourceOutOfScope"
DATA_SOURCE_IN_SCOPE: Final = "DataSourceInScope"
# Ready
CHAMPION_AVAILABLE: Final = "ChampionAvailable"
NO_MODEL_YET: Final = "NoModelYet"
# Events and ModelVersion Approved condition
RUN_STARTED: Final = "RunStarted"
MODEL_VERSION_REGISTERED: Final = "ModelVersionRegistered"
MODEL_VERSION_CONFLICT: Final = "ModelVersionConflict"  # the name a run registers holds another model
AUTO_APPROVED: Final = "AutoApproved"
MANUALLY_APPROVED: Final = "ManuallyApproved"
AWAITING_APPROVAL: Final = "AwaitingApproval"
MANUALLY_REJECTED: Final = "ManuallyRejected"  # noria.dev/reject=<user> on a Candidate

# --- reasons: artifacts (ModelVersion Degraded, Rollout Degraded/Ready, Events) -----------------
# A URI field of the ModelVersion names a place outside its namespace's store and every trusted prefix.
ARTIFACT_OUT_OF_SCOPE: Final = "ArtifactOutOfScope"
ARTIFACT_IN_SCOPE: Final = "ArtifactInScope"
# A server refused the artifact (digest, type, size, ...): its termination message says which check.
ARTIFACT_VERIFICATION_FAILED: Final = "ArtifactVerificationFailed"

# --- reasons: deployment (Rollout) ------------------------------------------------------------
ROLLOUT_INVALID_SPEC: Final = "InvalidSpec"  # Degraded: the spec cannot be carried out
ROLLOUT_NO_MODEL_VERSION: Final = "NoModelVersion"  # nothing approved to serve yet
ROLLOUT_MODEL_VERSION_REJECTED: Final = "ModelVersionRejected"  # the pinned version was rejected
ROLLOUT_FIRST_DEPLOYMENT: Final = "FirstDeployment"  # nothing served yet: the first version goes straight in
ROLLOUT_WAITING_FOR_PODS: Final = "WaitingForPods"  # a version's pods are not all ready
ROLLOUT_WAITING_FOR_ROUTER: Final = "WaitingForRouter"  # the router has no ready pod: no traffic gets through
ROLLOUT_STEP_IN_PROGRESS: Final = "StepInProgress"
ROLLOUT_PAUSED_FOR_PROMOTION: Final = "PausedForPromotion"  # indefinite pause: annotate noria.dev/promote
ROLLOUT_RESUMED_BY_USER: Final = "ResumedByUser"
ROLLOUT_PAUSED_BY_USER: Final = "PausedByUser"  # spec.paused: held at the current step until resumed
ROLLOUT_STABLE_SERVING: Final = "StableServing"  # Ready: the stable version takes all traffic
ROLLOUT_PROMOTED: Final = "Promoted"
ROLLOUT_FAST_ROLLBACK: Final = "FastRollback"  # back to a still-running previous version, no steps
ROLLOUT_SUPERSEDED: Final = "Superseded"  # a newer version arrived mid-rollout; the old candidate is dropped
ROLLOUT_ABORTED_BY_USER: Final = "AbortedByUser"
ROLLOUT_RETRIED: Final = "Retried"
ROLLOUT_ANALYSIS_PASSED: Final = "AnalysisPassed"
ROLLOUT_ANALYSIS_FAILED: Final = "AnalysisFailed"
ROLLOUT_ANALYSIS_ERRORS: Final = "AnalysisErrors"  # the metric provider could not be asked
ROLLOUT_ANALYSIS_INCONCLUSIVE: Final = "AnalysisInconclusive"  # no data: paused, never promoted
ROLLOUT_SCALED_DOWN: Final = "ScaledDown"
ROLLOUT_PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"  # no progress within spec.progressDeadline
ROLLOUT_CANDIDATE_UNREADY: Final = "CandidateUnready"  # the candidate's pods stopped being ready: weight 0
ROLLOUT_STABLE_UNHEALTHY: Final = "StableUnhealthy"  # the stable's pods are not ready during a rollout
ROLLOUT_ROLLED_BACK: Final = "RolledBack"  # analysis failed inside rollbackWindow after promotion
ROLLOUT_WAITING_FOR_LABELS: Final = "WaitingForLabels"  # a label-needing check has fewer than minLabels yet
ROLLOUT_DELETED: Final = "RolloutDeleted"  # stage history entry of versions a deleted Rollout served

# --- reasons: any resource ----------------------------------------------------------------------
RECONCILE_ERROR: Final = "ReconcileError"  # a pass failed (API error, provider error): the message says which
RECONCILE_RECOVERED: Final = "ReconcileRecovered"  # Reconciled True again: the pass after a ReconcileError succeeded
SPEC_VALID: Final = "SpecValid"  # Degraded False again once an InvalidSpec was fixed
INVALID_SPEC: Final = ROLLOUT_INVALID_SPEC  # the spec cannot be carried out (TrainingPipeline and Rollout)
# Warning Event on ConfigMap noria-notifications: a receiver or its Secret key is unusable (noria.notify)
NOTIFICATIONS_INVALID: Final = "NotificationsInvalid"


def now_iso(now: dt.datetime | None = None) -> str:
    """The API's timestamp format, defined once in noria.api.common.format_timestamp."""
    return format_timestamp(now)


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    observed_generation: int | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with condition ``type_`` set. ``lastTransitionTime`` moves only when the
    status changes, so re-applying the same condition is a no-op (no status write, no hot loop)."""
    out = [dict(c) for c in (conditions or [])]
    for cond in out:
        if cond.get("type") == type_:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now_iso(now)
            cond.update(status=status, reason=reason, message=message)
            if observed_generation is not None:
                cond["observedGeneration"] = observed_generation
            return out
    new: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(now),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    out.append(new)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
