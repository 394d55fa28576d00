"""From a trainer summary to a ModelVersion, and a ModelVersion's approval (pure).

The summary is the trainer's word (docs/contracts.md, "Trainer summary"; typed in ``noria.runspec``); it is checked
against the run it claims to belong to before anything is registered, so a stale or foreign
termination message can never become a model. The ModelVersion's name is deterministic
(``<pipeline>-v<N>``): registering it twice is an AlreadyExists, which the caller treats as done.
Its spec is immutable; the stage lives in status with a history of who moved it, when and why.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria import conditions as c
from noria import runspec
from noria.api.training_pipeline import DEFAULT_METRIC
from noria.conditions import now_iso
from noria.contracts import (
    ANNOTATION_APPROVE,
    ANNOTATION_GATE_METRIC,
    ANNOTATION_INITIAL_REASON,
    ANNOTATION_INITIAL_STAGE,
    ANNOTATION_REJECT,
    API_VERSION,
    APPROVABLE_STAGES,
    APPROVED,
    CANARY,
    CANDIDATE,
    MANAGED_BY,
    PREVIEW,
    PRODUCTION,
    REGISTERED,
    REJECTED,
    SHADOW,
)

from . import runs

DIGEST_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")

# Stages of a version that passed the gate and was accepted (a champion can come from these).
ACCEPTED_STAGES: Final = (APPROVED, CANARY, SHADOW, PREVIEW, PRODUCTION)

# noria.dev/approve and noria.dev/reject are set by a person (the chart's admission policy admits only
# the approver group, with the value equal to the requester's user name), read here, never removed:
# the stage history keeps who and when. They act on APPROVABLE_STAGES (Registered, Candidate).


class InvalidSummary(ValueError):
    """The trainer's summary does not describe the run it was read for."""


@dataclass(frozen=True)
class Summary:
    status: str
    run_id: str
    version: int
    verdict: str | None
    reason: str
    raw: Mapping[str, Any]


def check_summary(raw: Any, run_id: str, version: int) -> Summary:
    """Read a summary for run ``run_id`` through its typed definition (``noria.runspec.read_summary``,
    the one the trainer writes by), then check it belongs to that run; raise ``InvalidSummary``
    naming what is wrong."""
    try:
        summary = runspec.read_summary(raw)
    except runspec.SummaryError as exc:
        raise InvalidSummary(str(exc)) from None
    if summary.get("runId") not in (None, run_id):
        raise InvalidSummary(f"summary.runId is {summary.get('runId')!r}, expected {run_id!r}")
    if summary.get("version") not in (None, version):
        raise InvalidSummary(f"summary.version is {summary.get('version')!r}, expected {version}")
    if summary["status"] == "succeeded":
        if not DIGEST_RE.match(summary["digest"]):
            raise InvalidSummary(f"summary.digest is {summary['digest']!r}, expected sha256:<64 hex>")
        if not summary["artifactUri"]:
            raise InvalidSummary("summary.artifactUri is missing")
    verdict = summary.get("verdict")
    return Summary(summary["status"], run_id, version, verdict if isinstance(verdict, str) else None,
                   str(summary.get("reason") or ""), summary)


def _metric_value(v: Any) -> str | int:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return f"{v:.6g}"  # never a float in spec (docs/contracts.md)
    return str(v)


def gate_metric(pipeline_spec: Mapping[str, Any]) -> str:
    """The metric the trainer's gate scored: spec.evaluation.metric, else the task's default from
    the API model (the trainer reads the same default)."""
    chosen = (pipeline_spec.get("evaluation") or {}).get("metric")
    task = (pipeline_spec.get("model") or {}).get("task", "classification")
    return chosen or DEFAULT_METRIC[task]


def _feast_lineage(spec_feast: Mapping[str, Any] | None, reported: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """lineage.data.feast: the repository and service as the pipeline spec names them (like
    data.source: the pod's view, not the URI a test-bed trainer saw), the digest as the trainer
    computed it from the registry."""
    if not spec_feast or not reported or not reported.get("definitionsDigest"):
        return None
    out = {"repository": spec_feast.get("repository"), "featureService": spec_feast.get("featureService"),
           "definitionsDigest": reported["definitionsDigest"]}
    return {k: v for k, v in out.items() if v is not None}


def model_version(pipeline: Mapping[str, Any], summary: Summary, trigger: str | None,
                  parent: str | None, pod_uri: Callable[[str | None], str | None] = lambda u: u) -> dict[str, Any]:
    """The ModelVersion a successful run registers (Candidate/Approved or Rejected via annotations,
    which ``initial_status`` turns into the first stage; kept there so a crash between create and
    the status write still ends in the right stage)."""
    meta, spec = pipeline["metadata"], pipeline["spec"]
    raw = summary.raw
    name = runs.version_name(meta["name"], summary.version)
    data = spec.get("data") or {}
    lineage: dict[str, Any] = {
        "run": summary.run_id,
        "trigger": trigger,
        "data": {k: v for k, v in {"source": data.get("source"), "rows": raw.get("rows"),
                                   "window": raw.get("window"), "feedbackRows": raw.get("feedbackRows"),
                                   "feast": _feast_lineage(data.get("feast"), raw.get("feast"))}.items()
                 if v is not None},
        "parent": parent,
        "trainedAt": raw.get("trainedAt"),
    }
    mv_spec: dict[str, Any] = {
        "pipeline": meta["name"],
        "version": summary.version,
        "artifact": {"uri": pod_uri(raw["artifactUri"]), "digest": raw["digest"],
                     "format": raw.get("artifactFormat", "skops")},
        "metrics": {str(k): _metric_value(v) for k, v in (raw.get("metrics") or {}).items()},
        "lineage": {k: v for k, v in lineage.items() if v is not None},
    }
    if raw.get("profileUri"):
        mv_spec["profileUri"] = pod_uri(raw["profileUri"])
    if summary.verdict == "rejected":
        stage, reason = REJECTED, summary.reason or "the quality gate rejected the model"
    elif spec.get("approval", "automatic") == "automatic":
        stage, reason = APPROVED, "the quality gate passed; approval is automatic"
    else:
        stage, reason = CANDIDATE, "the quality gate passed; waiting for manual approval"
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            # No owner reference: deleting a pipeline must not delete the model serving production.
            "labels": {runs.LABEL_PIPELINE: meta["name"], runs.LABEL_RUN: summary.run_id,
                       runs.LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": {ANNOTATION_INITIAL_STAGE: stage, ANNOTATION_INITIAL_REASON: reason[:1000],
                            ANNOTATION_GATE_METRIC: gate_metric(spec)},
        },
        "spec": mv_spec,
    }


def same_artifact(existing: Mapping[str, Any], registered: Mapping[str, Any]) -> bool:
    """Whether a ModelVersion found under the name a run registers is that run's (a re-run after a
    crash) rather than one someone created first, with another model, to have it staged."""
    def artifact(mv: Mapping[str, Any]) -> tuple[Any, Any]:
        found = (mv.get("spec") or {}).get("artifact") or {}
        return found.get("uri"), found.get("digest")

    return artifact(existing) == artifact(registered)


def initial_status(mv: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """First status of a registered ModelVersion, from its creation annotations; None when it
    already has a stage (so re-running this step changes nothing)."""
    if (mv.get("status") or {}).get("stage"):
        return None
    ann = mv["metadata"].get("annotations") or {}
    stage = ann.get(ANNOTATION_INITIAL_STAGE)
    if stage is None:
        return None  # imported by a user: not ours to stage
    reason = ann.get(ANNOTATION_INITIAL_REASON, "")
    pipeline = mv["spec"]["pipeline"]
    at = now_iso(now)
    history = [{"stage": CANDIDATE, "at": at, "reason": "trained", "by": f"pipeline/{pipeline}"}]
    if stage != CANDIDATE:
        history.append({"stage": stage, "at": at, "reason": reason, "by": f"pipeline/{pipeline}"})
    status: dict[str, Any] = {"stage": stage, "history": history, "message": reason}
    approved = {APPROVED: (c.TRUE, c.AUTO_APPROVED), CANDIDATE: (c.FALSE, c.AWAITING_APPROVAL),
                REJECTED: (c.FALSE, c.GATE_REJECTED)}.get(stage)
    if approved:
        status["conditions"] = c.set_condition(None, c.APPROVED, approved[0], approved[1], reason, now=now)
    metric = gate_metric_text(mv)
    if metric:
        status["metric"] = metric
    return status


def initial_stage_event(mv: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, str, str]:
    """The one Event on a version a run just registered, from its first status (``initial_status``):
    (type, reason, message), the reason that of its Approved condition -- AutoApproved,
    AwaitingApproval or GateRejected -- so the version's approval or rejection shows on the version
    itself, as a manual one does (and is notified: noria.notifications)."""
    approved = c.get_condition(status.get("conditions"), c.APPROVED) or {}
    stage = status.get("stage")
    message = f"{mv['metadata']['name']} is {stage}" + (f": {status['message']}" if status.get("message") else "")
    return ("Warning" if stage == REJECTED else "Normal"), approved.get("reason") or c.MODEL_VERSION_REGISTERED, message


def registered_by_a_run(mv: Mapping[str, Any]) -> bool:
    """Whether a training run registered the version: a run creates it with its initial stage in an
    annotation (``model_version``); a version created by hand has none."""
    return ANNOTATION_INITIAL_STAGE in (mv["metadata"].get("annotations") or {})


def registration(mv: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """First status of a ModelVersion created by hand (an imported model): stage Registered, not
    approved, until a person approves it (``approval``). None when it has a stage already or a
    run registered it (the run's pass stages it, ``initial_status``)."""
    if (mv.get("status") or {}).get("stage") or registered_by_a_run(mv):
        return None
    message = (f"created without a training run: `kubectl noria approve {mv['metadata']['name']}` "
               "before a Rollout serves it")
    status: dict[str, Any] = {
        "stage": REGISTERED, "message": message,
        "history": [{"stage": REGISTERED, "at": now_iso(now), "reason": "created by hand", "by": "user"}],
        "conditions": c.set_condition(None, c.APPROVED, c.FALSE, c.AWAITING_APPROVAL, message, now=now),
    }
    metric = gate_metric_text(mv)
    if metric:
        status["metric"] = metric
    return status


def gate_metric_text(mv: Mapping[str, Any]) -> str | None:
    metrics = mv["spec"].get("metrics") or {}
    if not metrics:
        return None
    preferred = (mv["metadata"].get("annotations") or {}).get(ANNOTATION_GATE_METRIC)
    key = preferred if preferred in metrics else next(iter(sorted(metrics)))
    return f"{key}={metrics[key]}"


def approval(mv: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """Manual decision on a Candidate or a Registered (imported) version: ``noria.dev/approve=<user>``
    moves it to Approved,
    ``noria.dev/reject=<user>`` to Rejected (a reject wins when both are set: the safe reading).
    The value is recorded as the actor, ``user/<value>``: with the chart's admission policy it is
    the user name of whoever wrote it (the API server refuses any other value). None when there is
    nothing to do."""
    status = mv.get("status") or {}
    annotations = mv["metadata"].get("annotations") or {}
    if status.get("stage") not in APPROVABLE_STAGES:
        return None
    for key, stage, approved, reason, verb in (
            (ANNOTATION_REJECT, REJECTED, c.FALSE, c.MANUALLY_REJECTED, "rejected"),
            (ANNOTATION_APPROVE, APPROVED, c.TRUE, c.MANUALLY_APPROVED, "approved")):
        value = annotations.get(key)
        if not value:
            continue
        by = f"user/{value[:200]}"
        history = list(status.get("history") or [])
        history.append({"stage": stage, "at": now_iso(now), "reason": f"{verb} manually ({key})", "by": by})
        message = f"{verb} manually by {by}"
        conds = c.set_condition(status.get("conditions"), c.APPROVED, approved, reason, message, now=now)
        return {"stage": stage, "history": history[-100:], "message": message, "conditions": conds}
    return None


def scope_status(mv: Mapping[str, Any], out_of_scope: Any, now: dt.datetime) -> dict[str, Any] | None:
    """The status patch recording whether the version's artifact is in scope (``out_of_scope`` is
    ``noria.artifact_scope.OutOfScope`` or None): Degraded=True, ArtifactOutOfScope, naming the
    field, while it is out; Degraded=False, ArtifactInScope once it is back (trust added). None when
    the status already says so (no write, no repeated Event)."""
    conditions = (mv.get("status") or {}).get("conditions")
    current = c.get_condition(conditions, c.DEGRADED)
    if out_of_scope is None:
        if not current or current.get("reason") != c.ARTIFACT_OUT_OF_SCOPE:
            return None
        message = "artifact and profile URIs are in scope"
        return {"conditions": c.set_condition(conditions, c.DEGRADED, c.FALSE, c.ARTIFACT_IN_SCOPE, message, now=now)}
    if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            c.TRUE, c.ARTIFACT_OUT_OF_SCOPE, out_of_scope.message):
        return None
    return {"conditions": c.set_condition(conditions, c.DEGRADED, c.TRUE, c.ARTIFACT_OUT_OF_SCOPE,
                                          out_of_scope.message, now=now)}


def out_of_scope(mv: Mapping[str, Any]) -> bool:
    """Whether the version is marked ArtifactOutOfScope (never a champion: the trainer would load it)."""
    cond = c.get_condition((mv.get("status") or {}).get("conditions"), c.DEGRADED)
    return bool(cond and cond.get("status") == c.TRUE and cond.get("reason") == c.ARTIFACT_OUT_OF_SCOPE)


def version_number(mv: Mapping[str, Any]) -> int:
    try:
        return int(mv["spec"]["version"])
    except (KeyError, TypeError, ValueError):
        return 0


def champion(mvs: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The version new models are compared with: the newest in Production; without a rollout,
    the newest accepted (Approved and later) one."""
    def stage(mv: Mapping[str, Any]) -> str | None:
        return (mv.get("status") or {}).get("stage")

    mvs = [mv for mv in mvs if not out_of_scope(mv)]
    in_production = [mv for mv in mvs if stage(mv) == PRODUCTION]
    pool = in_production or [mv for mv in mvs if stage(mv) in ACCEPTED_STAGES]
    return max(pool, key=version_number) if pool else None


def champion_ref(mv: Mapping[str, Any] | None) -> runspec.ChampionRef | None:
    """The run spec's ``champion`` entry."""
    if mv is None:
        return None
    spec = mv["spec"]
    return {"name": mv["metadata"]["name"], "artifactUri": spec["artifact"]["uri"],
            "digest": spec["artifact"]["digest"], "profileUri": spec.get("profileUri")}
