"""Which ModelVersion a Rollout should serve, and why not when none may.

A Rollout that follows a pipeline serves its newest version in a serving stage (Approved or one it
already serves); a pinned Rollout serves exactly the version named, once it is approved. A version
rejected by this Rollout (an abort, a refused artifact, a rollback) stays rejected until
``noria.dev/retry``; a version whose artifact is out of scope is refused, not skipped for an older one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.deployment.spec import RolloutSpec

# Stages a Rollout may serve: approved, or already in one of the serving stages.
ROLLABLE_STAGES = frozenset({ct.APPROVED, ct.CANARY, ct.SHADOW, ct.PREVIEW, ct.PRODUCTION})
# Stages a person must approve first (`noria.dev/approve`): a gate-passed Candidate, an imported Registered.
AWAITING_APPROVAL_STAGES = frozenset(ct.APPROVABLE_STAGES)
CANDIDATE_STAGE = {"canary": ct.CANARY, "blueGreen": ct.PREVIEW, "shadow": ct.SHADOW, "immediate": ct.APPROVED}


def stage_of(mv: Mapping[str, Any] | None) -> str | None:
    return ((mv or {}).get("status") or {}).get("stage")


def version_number(mv: Mapping[str, Any]) -> int:
    try:
        return int((mv.get("spec") or {}).get("version", -1))
    except (TypeError, ValueError):
        return -1


def last_history(mv: Mapping[str, Any]) -> Mapping[str, Any]:
    history = ((mv.get("status") or {}).get("history")) or []
    return history[-1] if history else {}


def rejected_by(mv: Mapping[str, Any], rollout: str) -> bool:
    """Rejected by this Rollout (abort, refused artifact, rollback; not the training gate): a retry may bring it back."""
    return stage_of(mv) == ct.REJECTED and last_history(mv).get("by") == f"rollout/{rollout}"


def resolve_desired(spec: RolloutSpec, mvs: Mapping[str, Mapping[str, Any]],
                    out_of_scope: Mapping[str, str] | None = None,
                    rollout: str = "<rollout>") -> tuple[str | None, str, str]:
    """The version the Rollout should serve, or None with (reason, message) saying why not. A
    selected version whose artifact is out of scope is refused, not skipped for an older one: the
    person who made it must learn why it does not serve, and what serves stays."""
    desired, reason, message = _select(spec, mvs, rollout)
    if desired is not None and desired in (out_of_scope or {}):
        return None, c.ARTIFACT_OUT_OF_SCOPE, f"ModelVersion {desired} is not served: {(out_of_scope or {})[desired]}"
    return desired, reason, message


def _select(spec: RolloutSpec, mvs: Mapping[str, Mapping[str, Any]], rollout: str) -> tuple[str | None, str, str]:
    if spec.model_version:
        return _pinned(spec.model_version, mvs, rollout)
    mine = [mv for mv in mvs.values() if (mv.get("spec") or {}).get("pipeline") == spec.pipeline
            and stage_of(mv) in ROLLABLE_STAGES]
    if not mine:
        return None, c.ROLLOUT_NO_MODEL_VERSION, f"pipeline {spec.pipeline} has no approved ModelVersion yet"
    best = max(mine, key=version_number)
    return best["metadata"]["name"], "", ""


def _pinned(name: str, mvs: Mapping[str, Mapping[str, Any]], rollout: str) -> tuple[str | None, str, str]:
    """A pinned version serves once approved; otherwise the message names the real cause and what to do
    (the ``kubectl noria`` command; docs/rollouts.md gives the annotation each one writes)."""
    mv = mvs.get(name)
    if mv is None:
        return None, c.ROLLOUT_NO_MODEL_VERSION, f"ModelVersion {name} does not exist"
    stage = stage_of(mv)
    if stage in ROLLABLE_STAGES or stage == ct.RETIRED:  # pinning a retired version back is a rollback
        return name, "", ""
    if stage in AWAITING_APPROVAL_STAGES or stage is None:
        return None, c.ROLLOUT_MODEL_VERSION_REJECTED, (
            f"ModelVersion {name} is {stage or 'not staged yet'}, not approved yet: "
            f"`kubectl noria approve {name}`, or pin another version")
    why = last_history(mv).get("reason") or (mv.get("status") or {}).get("message") or ""
    return None, c.ROLLOUT_MODEL_VERSION_REJECTED, (
        f"ModelVersion {name} is {stage}" + (f": {why}" if why else "")
        + f"; pin another version, or `kubectl noria retry {rollout}` after fixing the cause")[:1000]


def retry_target(spec: RolloutSpec, rollout: str, mvs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The version a retry brings back: the pinned one, or the pipeline's newest one this Rollout rejected."""
    if spec.model_version:
        mv = mvs.get(spec.model_version)
        return spec.model_version if mv is not None and rejected_by(mv, rollout) else None
    aborted = [mv for mv in mvs.values() if (mv.get("spec") or {}).get("pipeline") == spec.pipeline
               and rejected_by(mv, rollout)]
    return max(aborted, key=version_number)["metadata"]["name"] if aborted else None
