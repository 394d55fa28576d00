"""Conditions are Noria's API; every condition type and reason string is a constant here.

Tests, docs and `kubectl describe` name these; never spell a reason inline elsewhere. A phase is
a summary derived from conditions, never stored on its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

# --- condition types --------------------------------------------------------------------------
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
TRAINING: Final = "Training"
TRIGGERS_HEALTHY: Final = "TriggersHealthy"  # Unknown when Prometheus cannot be asked
APPROVED: Final = "Approved"
PAUSED: Final = "Paused"
ANALYSIS: Final = "Analysis"

TRUE: Final = "True"
FALSE: Final = "False"
UNKNOWN: Final = "Unknown"

# --- reasons: training (TrainingPipeline / ModelVersion) --------------------------------------
# (filled by the continuous-training work; keep CamelCase)

# --- reasons: deployment (Rollout) ------------------------------------------------------------
# (filled by the continuous-deployment work; keep CamelCase)


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
