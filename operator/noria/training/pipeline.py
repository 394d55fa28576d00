"""The TrainingPipeline's next step, decided purely from one frozen observation.

``decide(observation) -> Plan``. The handler gathers the observation (the pipeline, its
ModelVersions, the current run's Job and pods, the data source, Prometheus, ``now``) and carries
out the plan in a safe order: register the ModelVersion, write status (once, only if changed),
create the run's ConfigMap and Job, prune old runs.

Why that order survives a SIGKILL at any point:
- A new run is first written to status (``runCounter`` = N, ``currentRun`` = ``<p>-r<N>``), then
  its objects are created. Killed in between, the next pass sees ``currentRun`` with no Job and
  creates it under the same name; killed before the status write, nothing happened. A Job is
  never created for a run number status does not hold, so there is never a second Job.
- A finished run's ModelVersion (``<p>-v<N>``) is created before status forgets the run. Killed in
  between, the next pass creates it again, gets AlreadyExists, and carries on: registered once.

Coalescing: a trigger that fires adds its kind to ``pendingTriggers`` (one entry per kind, with a
count). A run starts when there is no run and the cooldown is over, and takes *all* pending
triggers with it. So a burst while idle is one run, and any number of firings during a run or a
cooldown is exactly one follow-up run. Drift and performance entries remember the champion they
were about, and are dropped when another version becomes the champion (their evidence was about
a model that no longer serves); on the pass that makes a new champion, the old version's live
counts are not judged under the new name (see ``_evaluate``). So a run's own completion never
starts the next run.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from noria import conditions as c
from noria.profile import Profile

from . import results, runs, triggers
from .triggers import DataObservation, MetricObservation, TriggerResult

# A Job that just succeeded may not yet show its pod's termination message: wait this long
# before concluding that there is no summary.
SUMMARY_GRACE_SECONDS: Final = 15.0
# Fallback re-check while a Job runs (Job watch events normally wake the operator first).
RUNNING_RECHECK_SECONDS: Final = 30.0
DEFAULT_HISTORY_LIMIT: Final = 10

PHASE_PENDING: Final = "Pending"
PHASE_TRAINING: Final = "Training"
PHASE_READY: Final = "Ready"
PHASE_DEGRADED: Final = "Degraded"

OUTCOME_SUCCEEDED: Final = "Succeeded"
OUTCOME_REJECTED: Final = "Rejected"
OUTCOME_FAILED: Final = "Failed"


@dataclass(frozen=True)
class Observation:
    pipeline: Mapping[str, Any]
    now: dt.datetime
    model_versions: list[Mapping[str, Any]] = field(default_factory=list)
    job: runs.JobOutcome | None = None  # of status.currentRun; None when there is no current run
    data: DataObservation | None = None
    # Live counts of the champion as observed (tagged with its version, see MetricObservation),
    # and the drift reference (training profile) of that same version.
    drift: MetricObservation | None = None
    performance: MetricObservation | None = None
    profile: Profile | None = None
    job_names: list[str] = field(default_factory=list)  # this pipeline's Jobs
    config_map_names: list[str] = field(default_factory=list)  # this pipeline's run ConfigMaps
    run_settings: runs.RunSettings | None = None
    settle_seconds: float = triggers.DEFAULT_SETTLE_SECONDS
    # Why spec.data.source may not be read (noria.artifact_scope, judged by the handler with the
    # operator's settings), or None when it is in scope. While set, no run starts.
    data_source_refused: str | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any] | None  # the whole new status, None when nothing changed
    register: dict[str, Any] | None = None  # ModelVersion manifest to create (AlreadyExists = done)
    run_objects: tuple[dict[str, Any], dict[str, Any]] | None = None  # (ConfigMap, Job) to create
    events: list[Event] = field(default_factory=list)
    prune_jobs: list[str] = field(default_factory=list)
    prune_config_maps: list[str] = field(default_factory=list)
    requeue_after: float | None = None
    evaluations: list[TriggerResult] = field(default_factory=list)
    finished: tuple[str, str] | None = None  # (trigger, outcome) of a run that ended in this pass
    started: str | None = None  # trigger of a run started in this pass


def _ts(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _duration_seconds(text: str | None) -> float:
    from noria.api.common import parse_duration

    return parse_duration(text).total_seconds() if text else 0.0


def _owner_ref(pipeline: Mapping[str, Any]) -> dict[str, Any]:
    meta = pipeline["metadata"]
    return {"apiVersion": pipeline.get("apiVersion", results.API_VERSION), "kind": "TrainingPipeline",
            "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def run_objects(pipeline: Mapping[str, Any], n: int, trigger: str, triggered_at: str,
                champion: Mapping[str, Any] | None, settings: runs.RunSettings) -> tuple[dict, dict]:
    spec = runs.run_spec(pipeline, n, trigger, results.champion_ref(champion), settings)
    owner = _owner_ref(pipeline)
    return runs.config_map(pipeline, owner, spec), runs.job(pipeline, owner, spec, triggered_at, settings)


def _finish(obs: Observation, current: Mapping[str, Any], parent: str | None
            ) -> tuple[str, str, str, dict[str, Any] | None] | None:
    """Outcome of a finished run: (outcome, reason, message, ModelVersion to register), or None
    when the run is still going (or its summary may still arrive)."""
    job = obs.job
    assert job is not None
    n = runs.run_number(obs.pipeline["metadata"]["name"], current["id"]) or 0
    if job.state in (runs.RUNNING, runs.MISSING):
        return None
    if job.summary is None:
        finished = _ts(job.finished_at)
        if job.state == runs.SUCCEEDED and finished and (obs.now - finished).total_seconds() < SUMMARY_GRACE_SECONDS:
            return None
        if job.state == runs.FAILED:
            return (OUTCOME_FAILED, c.JOB_FAILED,
                    f"the trainer Job failed without a summary: {job.reason or 'Failed'}: {job.message or ''}".strip(),
                    None)
        return OUTCOME_FAILED, c.SUMMARY_MISSING, f"Job {current['id']} succeeded but left no trainer summary", None
    try:
        summary = results.check_summary(job.summary, current["id"], n)
    except results.InvalidSummary as exc:
        return OUTCOME_FAILED, c.SUMMARY_INVALID, str(exc), None
    if summary.status == "failed" or job.state == runs.FAILED:
        stage = job.summary.get("failedStage")
        words = summary.reason or job.reason or "the trainer failed"
        return OUTCOME_FAILED, c.TRAINER_FAILED, (f"{stage}: {words}" if stage else words), None
    pod_uri = obs.run_settings.pod_uri if obs.run_settings else (lambda u: u)
    mv = results.model_version(obs.pipeline, summary, current.get("trigger"), parent, pod_uri)
    if summary.verdict == "rejected":
        return OUTCOME_REJECTED, c.GATE_REJECTED, summary.reason or "the quality gate rejected the model", mv
    return OUTCOME_SUCCEEDED, c.LAST_RUN_SUCCEEDED, summary.reason or "trained and passed the gate", mv


# Triggers whose evidence is about the serving version (its inputs, its labelled answers).
VERSION_BOUND: Final = (triggers.DRIFT, triggers.PERFORMANCE)


def _add_pending(pending: list[dict[str, Any]], result: TriggerResult, now: dt.datetime) -> list[dict[str, Any]]:
    out = [dict(p) for p in pending]
    for entry in out:
        if entry.get("trigger") == result.kind:
            entry["count"] = int(entry.get("count", 1)) + 1
            entry["reason"] = result.observed[:1000]
            return out
    entry = {"trigger": result.kind, "at": c.now_iso(now), "reason": result.observed[:1000], "count": 1}
    if result.kind in VERSION_BOUND and result.state.get("champion"):
        entry["champion"] = result.state["champion"]
    out.append(entry)
    return out


def pending_for_champion(pending: list[dict[str, Any]], champion: str | None
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, dropped): drift and performance triggers that fired about another version than the
    current champion are dropped. They fired while a run (or its rollout) was replacing that
    version; the new champion is judged on its own traffic from scratch, so running again on the
    old evidence would retrain for a problem the finished run was already answering."""
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for entry in pending:
        about = entry.get("champion")
        (dropped if about and about != champion else kept).append(entry)
    return kept, dropped


def _about(observation: MetricObservation | None, champion: str | None, observed_champion: str | None
           ) -> MetricObservation | None:
    """The observation if it is about ``champion``, else None (not observed for it yet). An
    untagged observation is about the champion of the observed ModelVersions."""
    if observation is None:
        return None
    version = observation.version if observation.version is not None else observed_champion
    return observation if version == champion else None


def _evaluate(obs: Observation, status: Mapping[str, Any], champion: Mapping[str, Any] | None,
              mvs: list[Mapping[str, Any]]) -> list[TriggerResult]:
    """Every trigger on this pass's observation. ``champion`` is the champion after this pass's
    registration; the drift and performance observations were made for the champion of
    ``obs.model_versions`` and count only if that is still the same version: on the pass that
    registers a new champion, the old version's counts must not be judged under its name (they
    would fire again at once with ``for`` unset, and a run's own completion would queue the next)."""
    meta, spec = obs.pipeline["metadata"], obs.pipeline["spec"]
    tspec = spec.get("triggers") or {}
    state = status.get("triggers") or {}
    champ = champion["metadata"]["name"] if champion else None
    observed = results.champion(list(obs.model_versions))
    observed_champ = observed["metadata"]["name"] if observed else None
    drift = _about(obs.drift, champ, observed_champ)
    profile = obs.profile if drift is not None else None
    performance = _about(obs.performance, champ, observed_champ)
    return [
        triggers.evaluate_initial(bool(mvs), int(status.get("runCounter") or 0),
                                  state.get(triggers.INITIAL), obs.now),
        triggers.evaluate_manual((meta.get("annotations") or {}).get(triggers.RETRAIN_ANNOTATION),
                                 state.get(triggers.MANUAL), obs.now, obs.settle_seconds),
        triggers.evaluate_schedule(tspec.get("schedule"), state.get(triggers.SCHEDULE), obs.now),
        triggers.evaluate_new_data((tspec.get("newData") or {}).get("minNewRows"), obs.data,
                                   state.get(triggers.NEW_DATA), obs.now),
        triggers.evaluate_drift(tspec.get("drift"), champ, profile, drift, state.get(triggers.DRIFT), obs.now),
        triggers.evaluate_performance(tspec.get("performance"), champ, performance,
                                      state.get(triggers.PERFORMANCE), obs.now),
    ]


def decide(obs: Observation) -> Plan:
    pipeline, now = obs.pipeline, obs.now
    meta, spec = pipeline["metadata"], pipeline["spec"]
    name = meta["name"]
    old_status: dict[str, Any] = copy.deepcopy(dict(pipeline.get("status") or {}))
    status = copy.deepcopy(old_status)
    generation = meta.get("generation")
    conds = status.get("conditions") or []
    events: list[Event] = []
    register: dict[str, Any] | None = None
    objects: tuple[dict, dict] | None = None
    finished: tuple[str, str] | None = None
    started: str | None = None
    recheck: list[float] = []
    history_limit = int(spec.get("historyLimit") or DEFAULT_HISTORY_LIMIT)
    mvs = list(obs.model_versions)
    champion = results.champion(mvs)
    by_name = {mv["metadata"]["name"]: mv for mv in mvs}

    # 1. The current run: finish it, keep waiting, or (after a crash) create its objects again.
    current = status.get("currentRun")
    if current:
        if obs.job is None or obs.job.state == runs.MISSING:
            if obs.run_settings is not None and obs.data_source_refused is None:
                n = runs.run_number(name, current["id"]) or int(status.get("runCounter") or 0)
                objects = run_objects(pipeline, n, current.get("trigger") or triggers.MANUAL,
                                      current.get("triggeredAt") or current.get("startedAt") or c.now_iso(now),
                                      by_name.get(current.get("parent") or ""), obs.run_settings)
            recheck.append(RUNNING_RECHECK_SECONDS)
        else:
            done = _finish(obs, current, current.get("parent"))
            if done is None:
                recheck.append(RUNNING_RECHECK_SECONDS if obs.job.state == runs.RUNNING else 3.0)
            else:
                outcome, reason, message, register = done
                started_at = _ts(current.get("startedAt")) or now
                ended = _ts(obs.job.finished_at) or now
                record = {
                    "id": current["id"], "trigger": current.get("trigger"), "outcome": outcome, "reason": reason,
                    "message": message[:1000], "startedAt": current.get("startedAt"), "finishedAt": c.now_iso(ended),
                    "duration": triggers.human_duration(max(0.0, (ended - started_at).total_seconds())),
                }
                if register is not None:
                    record["version"] = register["metadata"]["name"]
                    status["latestVersion"] = register["metadata"]["name"]
                status["lastRuns"] = ([record] + list(status.get("lastRuns") or []))[:history_limit]
                status["currentRun"] = None
                cooldown = _duration_seconds((spec.get("triggers") or {}).get("cooldown"))
                status["cooldownUntil"] = c.now_iso(now + dt.timedelta(seconds=cooldown)) if cooldown else None
                finished = (current.get("trigger") or "unknown", outcome)
                if outcome == OUTCOME_FAILED:
                    conds = c.set_condition(conds, c.DEGRADED, c.TRUE, reason,
                                            f"run {current['id']} failed: {message}"[:1000], generation, now)
                    events.append(Event("Warning", reason, f"run {current['id']} failed: {message}"))
                else:
                    conds = c.set_condition(conds, c.DEGRADED, c.FALSE, reason,
                                            f"run {current['id']}: {message}"[:1000], generation, now)
                    assert register is not None
                    stage = register["metadata"]["annotations"][results.ANNOTATION_INITIAL_STAGE]
                    events.append(Event("Normal" if outcome == OUTCOME_SUCCEEDED else "Warning",
                                        c.MODEL_VERSION_REGISTERED,
                                        f"run {current['id']} registered {register['metadata']['name']} as {stage}"
                                        + (f": {message}" if outcome == OUTCOME_REJECTED else "")))
                current = None

    if register is not None and register["metadata"]["name"] not in by_name:
        stage = register["metadata"]["annotations"][results.ANNOTATION_INITIAL_STAGE]
        mvs.append({**register, "status": {"stage": stage}})  # as it will be once registered
        champion = results.champion(mvs)

    # 2. Triggers: evaluated on every pass, during runs too (that is how they coalesce). Evidence
    # about a version that no longer is the champion is void, pending or not.
    evaluations = _evaluate(obs, status, champion, mvs)
    trigger_state = dict(status.get("triggers") or {})
    pending, dropped = pending_for_champion(list(status.get("pendingTriggers") or []),
                                            champion["metadata"]["name"] if champion else None)
    for entry in dropped:
        events.append(Event("Normal", c.PENDING_TRIGGER_DROPPED,
                            f"{entry['trigger']} about {entry['champion']} dropped: "
                            f"{champion['metadata']['name'] if champion else 'no version'} is the champion now"))
    for result in evaluations:
        if result.state:
            trigger_state[result.kind] = result.state
        else:
            trigger_state.pop(result.kind, None)
        if result.fired:
            pending = _add_pending(pending, result, now)
        if result.recheck_after is not None:
            recheck.append(max(0.5, result.recheck_after))
    status["triggers"] = trigger_state
    status["nextScheduledRun"] = (trigger_state.get(triggers.SCHEDULE) or {}).get("next")

    # 3. Start one run for everything pending, unless a run is going or the cooldown holds.
    cooldown_until = _ts(status.get("cooldownUntil"))
    cooling = cooldown_until is not None and now < cooldown_until
    if pending and current is None and cooling:
        recheck.append(max(0.5, (cooldown_until - now).total_seconds()))  # type: ignore[operator]
    refused = obs.data_source_refused
    if pending and current is None and not cooling and obs.run_settings is not None and refused is None:
        order = {k: i for i, k in enumerate(triggers.KINDS)}
        pending.sort(key=lambda p: order.get(p["trigger"], 99))
        first = pending[0]
        n = int(status.get("runCounter") or 0) + 1
        run_id = runs.run_name(name, n)
        triggered_at = min(p["at"] for p in pending)
        current = {
            "id": run_id, "trigger": first["trigger"], "job": run_id, "startedAt": c.now_iso(now),
            "triggeredAt": triggered_at, "version": runs.version_name(name, n),
            "parent": champion["metadata"]["name"] if champion else None,
            "triggers": [p["trigger"] for p in pending],
            "reason": "; ".join(f"{p['trigger']}: {p.get('reason', '')}" for p in pending)[:1000],
        }
        status["runCounter"] = n
        status["currentRun"] = current
        status["lastTrigger"] = first["trigger"]
        status["lastTriggerAt"] = first["at"]
        status["cooldownUntil"] = None
        pending = []
        objects = run_objects(pipeline, n, first["trigger"], triggered_at, champion, obs.run_settings)
        started = first["trigger"]
        events.append(Event("Normal", c.RUN_STARTED, f"run {run_id} started by {current['reason']}"))
        recheck.append(RUNNING_RECHECK_SECONDS)
    status["pendingTriggers"] = pending or None

    # 4. Conditions, then the phase that summarises them. An out-of-scope data source is Degraded
    # (one Warning Event when it becomes so, or names another source); once fixed, Degraded clears.
    was = c.get_condition(old_status.get("conditions"), c.DEGRADED) or {}
    was_refused = was.get("status") == c.TRUE and was.get("reason") == c.DATA_SOURCE_OUT_OF_SCOPE
    if refused is not None:
        conds = c.set_condition(conds, c.DEGRADED, c.TRUE, c.DATA_SOURCE_OUT_OF_SCOPE, refused[:1000], generation, now)
        if not was_refused or was.get("message") != refused[:1000]:
            events.append(Event("Warning", c.DATA_SOURCE_OUT_OF_SCOPE, f"no run starts: {refused}"))
    elif was_refused:
        conds = c.set_condition(conds, c.DEGRADED, c.FALSE, c.DATA_SOURCE_IN_SCOPE,
                                "spec.data.source is in scope", generation, now)
    if current:
        conds = c.set_condition(conds, c.TRAINING, c.TRUE, c.RUN_IN_PROGRESS,
                                f"run {current['id']} started by {current.get('trigger')}", generation, now)
    elif pending and refused is not None:
        conds = c.set_condition(conds, c.TRAINING, c.FALSE, c.DATA_SOURCE_OUT_OF_SCOPE,
                                f"{', '.join(p['trigger'] for p in pending)} waiting: spec.data.source is out of"
                                " scope", generation, now)
    elif pending:
        conds = c.set_condition(conds, c.TRAINING, c.FALSE, c.COOLING_DOWN,
                                f"{', '.join(p['trigger'] for p in pending)} waiting for the cooldown until "
                                f"{status.get('cooldownUntil')}", generation, now)
    else:
        conds = c.set_condition(conds, c.TRAINING, c.FALSE, c.IDLE, "no run in progress", generation, now)
    unknown = [r for r in evaluations if r.health == triggers.UNKNOWN]
    if unknown:
        prom = [r for r in unknown if r.kind in (triggers.DRIFT, triggers.PERFORMANCE)]
        reason = c.PROMETHEUS_UNAVAILABLE if prom else c.DATA_SOURCE_UNREADABLE
        conds = c.set_condition(conds, c.TRIGGERS_HEALTHY, c.UNKNOWN, reason,
                                "; ".join(f"{r.kind}: {r.observed}" for r in unknown)[:1000], generation, now)
    else:
        conds = c.set_condition(conds, c.TRIGGERS_HEALTHY, c.TRUE, c.TRIGGERS_EVALUATED,
                                "every configured trigger could be evaluated", generation, now)
    champion_name = champion["metadata"]["name"] if champion else None
    status["championVersion"] = champion_name
    if mvs and not status.get("latestVersion"):
        status["latestVersion"] = max(mvs, key=results.version_number)["metadata"]["name"]
    if champion_name:
        conds = c.set_condition(conds, c.READY, c.TRUE, c.CHAMPION_AVAILABLE, f"champion is {champion_name}",
                                generation, now)
    else:
        conds = c.set_condition(conds, c.READY, c.FALSE, c.NO_MODEL_YET, "no accepted ModelVersion yet",
                                generation, now)
    status["conditions"] = conds
    degraded = c.get_condition(conds, c.DEGRADED)
    if current:
        phase, message = PHASE_TRAINING, f"run {current['id']} ({current.get('trigger')}) in progress"
    elif degraded and degraded.get("status") == c.TRUE:
        phase, message = PHASE_DEGRADED, degraded.get("message", "")
    elif champion_name:
        phase, message = PHASE_READY, f"champion {champion_name}"
    else:
        phase, message = PHASE_PENDING, "no accepted ModelVersion yet"
    status["phase"], status["message"] = phase, message[:1000]
    status["observedGeneration"] = generation

    # 5. Prune old runs (never the current one).
    current_id = current["id"] if current else None
    prune_jobs = runs.runs_to_prune(name, obs.job_names, history_limit, current_id)
    prune_cms = runs.runs_to_prune(name, obs.config_map_names, history_limit, current_id)

    patch = merge_patch(old_status, status)
    return Plan(
        status=patch or None,
        register=register,
        run_objects=objects,
        events=events,
        prune_jobs=prune_jobs,
        prune_config_maps=prune_cms,
        requeue_after=min(recheck) if recheck else None,
        evaluations=evaluations,
        finished=finished,
        started=started,
    )


def _pruned(value: Any) -> Any:
    """``value`` without None entries in maps (absent and null mean the same in status)."""
    if isinstance(value, Mapping):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``; empty when they agree, so a
    pass that changed nothing writes nothing. Lists are replaced whole."""
    old_p, new_p = _pruned(old), _pruned(new)
    out: dict[str, Any] = {}
    for key in old_p.keys() - new_p.keys():
        out[key] = None
    for key, value in new_p.items():
        before = old_p.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                out[key] = sub
        elif value != before:
            out[key] = value
    return out


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a patch ``merge_patch`` made: None deletes, maps merge,
    anything else replaces. For the places that replay passes without an API server (the backtest,
    the unit tests' harnesses)."""
    out = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
