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
from noria.api.common import parse_timestamp
from noria.profile import Profile

from . import dask_cluster, results, runs, triggers
from .triggers import DataObservation, MetricObservation, TriggerResult

# A Job that just succeeded may not yet show its pod's termination message: wait this long
# before concluding that there is no summary.
SUMMARY_GRACE_SECONDS: Final = 15.0
# Fallback re-check while a Job runs (Job watch events normally wake the operator first).
RUNNING_RECHECK_SECONDS: Final = 30.0
# While a dask run's cluster starts, and while its Job runs (a lost scheduler has no event of ours).
DASK_RECHECK_SECONDS: Final = 5.0
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
    # A pipeline with no ModelVersion retries its first run this long after a failure, doubling
    # per attempt up to triggers.MAX_INITIAL_RETRY_SECONDS (NORIA_INITIAL_RETRY_SECONDS).
    initial_retry_seconds: float = triggers.DEFAULT_INITIAL_RETRY_SECONDS
    # A dask run's cluster (of status.currentRun; None for a single run or no run) and the names of
    # every DaskCluster of this pipeline (dask_cluster.clusters_to_delete).
    dask_cluster: dask_cluster.ClusterObservation | None = None
    dask_cluster_names: list[str] = field(default_factory=list)


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
    # A dask run's (ConfigMap, DaskCluster) to create before its Job (docs/training-dask.md); the
    # DaskClusters to delete (of runs that ended).
    dask_objects: tuple[dict[str, Any], dict[str, Any]] | None = None
    delete_dask_clusters: list[str] = field(default_factory=list)


def _ts(text: str | None) -> dt.datetime | None:
    return parse_timestamp(text) if text else None


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
        if job.state == runs.FAILED and job.oom_killed:
            limit = f"its memory limit is {job.memory_limit}" if job.memory_limit else "it has no memory limit"
            return (OUTCOME_FAILED, c.TRAINER_OOM_KILLED,
                    f"the trainer ran out of memory (OOMKilled) in {job.oom_killed} pod(s), {limit}: raise "
                    f"spec.resources.limits.memory, or shorten spec.data.window ({job.reason or 'Failed'})", None)
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


def _last_failure(status: Mapping[str, Any]) -> dt.datetime | None:
    """When the latest run ended, if it failed and no run is going."""
    if status.get("currentRun"):
        return None
    last = (status.get("lastRuns") or [{}])[0]
    return _ts(last.get("finishedAt")) if last.get("outcome") == OUTCOME_FAILED else None


def _evaluate(obs: Observation, status: Mapping[str, Any], champion: Mapping[str, Any] | None,
              mvs: list[Mapping[str, Any]], schedule_valid: bool = True) -> list[TriggerResult]:
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
                                  state.get(triggers.INITIAL), obs.now, _last_failure(status),
                                  obs.initial_retry_seconds),
        triggers.evaluate_manual((meta.get("annotations") or {}).get(triggers.RETRAIN_ANNOTATION),
                                 state.get(triggers.MANUAL), obs.now, obs.settle_seconds),
        # An invalid schedule is reported by spec_problem (InvalidSpec), never evaluated.
        triggers.evaluate_schedule(tspec.get("schedule") if schedule_valid else None,
                                   state.get(triggers.SCHEDULE), obs.now),
        triggers.evaluate_new_data((tspec.get("newData") or {}).get("minNewRows"), obs.data,
                                   state.get(triggers.NEW_DATA), obs.now),
        triggers.evaluate_drift(tspec.get("drift"), champ, profile, drift, state.get(triggers.DRIFT), obs.now),
        triggers.evaluate_performance(tspec.get("performance"), champ, performance,
                                      state.get(triggers.PERFORMANCE), obs.now),
    ]


@dataclass
class _Pass:
    """What one pass of ``decide`` has decided so far; its stages fill it in order."""

    obs: Observation
    old_status: dict[str, Any]
    status: dict[str, Any]
    conds: list[dict[str, Any]]
    mvs: list[Mapping[str, Any]]
    champion: Mapping[str, Any] | None
    current: dict[str, Any] | None
    events: list[Event] = field(default_factory=list)
    recheck: list[float] = field(default_factory=list)
    register: dict[str, Any] | None = None
    objects: tuple[dict, dict] | None = None
    dask_objects: tuple[dict, dict] | None = None
    stop_jobs: list[str] = field(default_factory=list)
    finished: tuple[str, str] | None = None
    started: str | None = None

    @property
    def name(self) -> str:
        return self.obs.pipeline["metadata"]["name"]

    @property
    def generation(self) -> Any:
        return self.obs.pipeline["metadata"].get("generation")

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        self.conds = c.set_condition(self.conds, type_, status, reason, message[:1000], self.generation, self.obs.now)


def spec_problem(spec: Mapping[str, Any]) -> str | None:
    """What in the spec the operator cannot carry out although the API server accepted it (the
    message names the field and what to write), or None. While there is one, no run starts."""
    return triggers.schedule_problem((spec.get("triggers") or {}).get("schedule"))


def _cooldown_until(status: Mapping[str, Any], spec: Mapping[str, Any]) -> dt.datetime | None:
    """The end of the cooldown after the latest run, from the cooldown the spec says *now*: its
    start (the run's end) is what status keeps, so lowering spec.triggers.cooldown shortens a
    cooldown that is already running, and raising it lengthens it."""
    cooldown = _duration_seconds((spec.get("triggers") or {}).get("cooldown"))
    last = (status.get("lastRuns") or [{}])[0]
    ended = _ts(last.get("finishedAt"))
    return ended + dt.timedelta(seconds=cooldown) if cooldown and ended else None


def _objects_for_run(p: _Pass, n: int, trigger: str, triggered_at: str,
                     champion: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The current run's objects to create: (ConfigMap, Job) of a single run; of a dask run, (ConfigMap,
    DaskCluster) until its scheduler is ready, then (ConfigMap, Job) with the scheduler's address, whose
    scheduler pod is recorded in ``currentRun.daskScheduler``. (reason, message) when a dask run's cluster
    did not start in time: the run fails."""
    obs, current = p.obs, p.current
    assert obs.run_settings is not None and current is not None
    cm, job = run_objects(obs.pipeline, n, trigger, triggered_at, champion, obs.run_settings)
    if not dask_cluster.is_dask(obs.pipeline["spec"]):
        p.objects = (cm, job)
        return None
    started = _ts(current.get("startedAt")) or obs.now
    verdict = dask_cluster.judge(obs.dask_cluster, None, (obs.now - started).total_seconds())
    if verdict.state == dask_cluster.NOT_READY:
        return c.DASK_CLUSTER_NOT_READY, verdict.message
    if verdict.state == dask_cluster.READY:
        assert obs.dask_cluster is not None and obs.dask_cluster.scheduler_address is not None
        p.objects = (cm, dask_cluster.with_scheduler(job, obs.dask_cluster.scheduler_address))
        current["daskScheduler"] = verdict.scheduler_uid
        return None
    cluster = dask_cluster.dask_cluster(obs.pipeline, _owner_ref(obs.pipeline), current["id"],
                                        obs.run_settings.trainer_image, obs.run_settings.image_pull_policy)
    p.dask_objects = (cm, cluster)
    return None


def _dask_cluster_lost(p: _Pass) -> tuple[str, str] | None:
    """(reason, message) when the cluster of the current dask run's Job is gone or restarted while the Job ran
    or as it failed (the trainer may notice a lost scheduler before this pass does: the cause is the cluster)."""
    obs, current = p.obs, p.current
    if current is None or not current.get("daskScheduler") or obs.job is None:
        return None
    if obs.job.state not in (runs.RUNNING, runs.FAILED):
        return None
    verdict = dask_cluster.judge(obs.dask_cluster, current["daskScheduler"], 0.0)
    return (c.DASK_CLUSTER_LOST, verdict.message) if verdict.state == dask_cluster.LOST else None


def _follow_current_run(p: _Pass) -> None:
    """Stage 1: finish the current run, keep waiting for it, or (after a crash) create its objects again."""
    obs, current, status, name = p.obs, p.current, p.status, p.name
    if not current:
        return
    if obs.job is None or obs.job.state == runs.MISSING:
        failed = None
        if obs.run_settings is not None and obs.data_source_refused is None:
            n = runs.run_number(name, current["id"]) or int(status.get("runCounter") or 0)
            by_name = {mv["metadata"]["name"]: mv for mv in p.mvs}
            failed = _objects_for_run(p, n, current.get("trigger") or triggers.MANUAL,
                                      current.get("triggeredAt") or current.get("startedAt") or c.now_iso(obs.now),
                                      by_name.get(current.get("parent") or ""))
        if failed is None:
            p.recheck.append(RUNNING_RECHECK_SECONDS if p.objects else DASK_RECHECK_SECONDS)
            return
        _end_run(p, (OUTCOME_FAILED, *failed, None), obs.now)
        return
    lost = _dask_cluster_lost(p)
    if lost is not None:
        if obs.job.state == runs.RUNNING:
            p.stop_jobs.append(current.get("job") or current["id"])
        _end_run(p, (OUTCOME_FAILED, *lost, None), obs.now)
        return
    done = _finish(obs, current, current.get("parent"))
    if done is None:
        running = obs.job.state == runs.RUNNING
        recheck = RUNNING_RECHECK_SECONDS if running else 3.0
        if running and current.get("daskScheduler"):
            recheck = DASK_RECHECK_SECONDS  # a lost cluster is seen by polling its scheduler pod
        p.recheck.append(recheck)
        return
    _end_run(p, done, _ts(obs.job.finished_at) or obs.now)


def _end_run(p: _Pass, done: tuple[str, str, str, dict[str, Any] | None], ended: dt.datetime) -> None:
    """Record the current run as ended with ``done`` = (outcome, reason, message, ModelVersion to register)."""
    obs, current, status = p.obs, p.current, p.status
    assert current is not None
    outcome, reason, message, register = done
    started_at = _ts(current.get("startedAt")) or obs.now
    record = {
        "id": current["id"], "trigger": current.get("trigger"), "outcome": outcome, "reason": reason,
        "message": message[:1000], "startedAt": current.get("startedAt"), "finishedAt": c.now_iso(ended),
        "duration": triggers.human_duration(max(0.0, (ended - started_at).total_seconds())),
    }
    if register is not None:
        record["version"] = register["metadata"]["name"]
        status["latestVersion"] = register["metadata"]["name"]
    history_limit = int(obs.pipeline["spec"].get("historyLimit") or DEFAULT_HISTORY_LIMIT)
    status["lastRuns"] = ([record] + list(status.get("lastRuns") or []))[:history_limit]
    status["currentRun"] = None
    p.finished = (current.get("trigger") or "unknown", outcome)
    if outcome == OUTCOME_FAILED:
        p.condition(c.DEGRADED, c.TRUE, reason, f"run {current['id']} failed: {message}")
        p.events.append(Event("Warning", reason, f"run {current['id']} failed: {message}"))
    else:
        p.condition(c.DEGRADED, c.FALSE, reason, f"run {current['id']}: {message}")
        assert register is not None
        stage = register["metadata"]["annotations"][results.ANNOTATION_INITIAL_STAGE]
        p.events.append(Event("Normal" if outcome == OUTCOME_SUCCEEDED else "Warning", c.MODEL_VERSION_REGISTERED,
                              f"run {current['id']} registered {register['metadata']['name']} as {stage}"
                              + (f": {message}" if outcome == OUTCOME_REJECTED else "")))
    p.register, p.current = register, None
    if register is not None and register["metadata"]["name"] not in {mv["metadata"]["name"] for mv in p.mvs}:
        stage = register["metadata"]["annotations"][results.ANNOTATION_INITIAL_STAGE]
        p.mvs.append({**register, "status": {"stage": stage}})  # as it will be once registered
        p.champion = results.champion(p.mvs)


def _collect_triggers(p: _Pass, schedule_valid: bool) -> tuple[list[TriggerResult], list[dict[str, Any]]]:
    """Stage 2: every trigger, evaluated on every pass, during runs too (that is how they
    coalesce); the pending set after them. Evidence about a version that no longer is the champion
    is void, pending or not."""
    obs, status, champion = p.obs, p.status, p.champion
    evaluations = _evaluate(obs, status, champion, p.mvs, schedule_valid)
    trigger_state = dict(status.get("triggers") or {})
    pending, dropped = pending_for_champion(list(status.get("pendingTriggers") or []),
                                            champion["metadata"]["name"] if champion else None)
    for entry in dropped:
        p.events.append(Event("Normal", c.PENDING_TRIGGER_DROPPED,
                              f"{entry['trigger']} about {entry['champion']} dropped: "
                              f"{champion['metadata']['name'] if champion else 'no version'} is the champion now"))
    for result in evaluations:
        if result.state:
            trigger_state[result.kind] = result.state
        else:
            trigger_state.pop(result.kind, None)
        if result.fired:
            pending = _add_pending(pending, result, obs.now)
        if result.recheck_after is not None:
            p.recheck.append(max(0.5, result.recheck_after))
    status["triggers"] = trigger_state
    status["nextScheduledRun"] = (trigger_state.get(triggers.SCHEDULE) or {}).get("next")
    return evaluations, pending


def _start_run(p: _Pass, pending: list[dict[str, Any]], blocked: bool) -> list[dict[str, Any]]:
    """Stage 3: one run for everything pending, unless a run is going, the cooldown holds or the
    pipeline is blocked (an invalid spec, an out-of-scope source). Returns what stays pending."""
    obs, status, now = p.obs, p.status, p.obs.now
    cooldown_until = None if p.current else _cooldown_until(status, obs.pipeline["spec"])
    status["cooldownUntil"] = c.now_iso(cooldown_until) if cooldown_until else None
    cooling = cooldown_until is not None and now < cooldown_until
    if pending and p.current is None and cooling:
        p.recheck.append(max(0.5, (cooldown_until - now).total_seconds()))  # type: ignore[operator]
    if not pending or p.current is not None or cooling or obs.run_settings is None or blocked:
        return pending
    order = {k: i for i, k in enumerate(triggers.KINDS)}
    pending.sort(key=lambda entry: order.get(entry["trigger"], 99))
    first = pending[0]
    n = int(status.get("runCounter") or 0) + 1
    run_id = runs.run_name(p.name, n)
    triggered_at = min(entry["at"] for entry in pending)
    champion = p.champion
    p.current = {
        "id": run_id, "trigger": first["trigger"], "job": run_id, "startedAt": c.now_iso(now),
        "triggeredAt": triggered_at, "version": runs.version_name(p.name, n),
        "parent": champion["metadata"]["name"] if champion else None,
        "triggers": [entry["trigger"] for entry in pending],
        "reason": "; ".join(f"{entry['trigger']}: {entry.get('reason', '')}" for entry in pending)[:1000],
    }
    status["runCounter"] = n
    status["currentRun"] = p.current
    status["lastTrigger"] = first["trigger"]
    status["lastTriggerAt"] = first["at"]
    status["cooldownUntil"] = None
    _objects_for_run(p, n, first["trigger"], triggered_at, champion)  # a run that just started cannot time out
    p.started = first["trigger"]
    p.events.append(Event("Normal", c.RUN_STARTED, f"run {run_id} started by {p.current['reason']}"))
    p.recheck.append(RUNNING_RECHECK_SECONDS if p.objects else DASK_RECHECK_SECONDS)
    return []


def _set_degraded_for_blocks(p: _Pass, invalid: str | None, refused: str | None) -> None:
    """Degraded while the spec cannot be carried out (InvalidSpec) or its source may not be read
    (DataSourceOutOfScope), with one Warning Event when it becomes so or the message changes, never
    one per pass; cleared once fixed."""
    was = c.get_condition(p.old_status.get("conditions"), c.DEGRADED) or {}
    now_degraded = c.get_condition(p.conds, c.DEGRADED) or {}
    untouched = now_degraded == was  # no run that finished in this pass rewrote Degraded
    was_true = was.get("status") == c.TRUE
    for reason, problem, words in ((c.INVALID_SPEC, invalid, "the spec cannot be carried out"),
                                   (c.DATA_SOURCE_OUT_OF_SCOPE, refused, "no run starts")):
        if problem is None:
            continue
        p.condition(c.DEGRADED, c.TRUE, reason, problem)
        if not (was_true and was.get("reason") == reason and was.get("message") == problem[:1000]):
            p.events.append(Event("Warning", reason, f"{words}: {problem}"))
        return
    if not (untouched and was_true):
        return
    if was.get("reason") == c.DATA_SOURCE_OUT_OF_SCOPE:
        p.condition(c.DEGRADED, c.FALSE, c.DATA_SOURCE_IN_SCOPE, "spec.data.source is in scope")
    elif was.get("reason") == c.INVALID_SPEC:
        p.condition(c.DEGRADED, c.FALSE, c.SPEC_VALID, "the spec can be carried out")


def _set_conditions(p: _Pass, evaluations: list[TriggerResult], pending: list[dict[str, Any]],
                    invalid: str | None, refused: str | None) -> None:
    """Stage 4: the conditions, then the phase that summarises them."""
    status, current, mvs = p.status, p.current, p.mvs
    _set_degraded_for_blocks(p, invalid, refused)
    waiting = ", ".join(entry["trigger"] for entry in pending)
    if current:
        p.condition(c.TRAINING, c.TRUE, c.RUN_IN_PROGRESS, f"run {current['id']} started by {current.get('trigger')}")
    elif pending and invalid is not None:
        p.condition(c.TRAINING, c.FALSE, c.INVALID_SPEC, f"{waiting} waiting: {invalid}")
    elif pending and refused is not None:
        p.condition(c.TRAINING, c.FALSE, c.DATA_SOURCE_OUT_OF_SCOPE,
                    f"{waiting} waiting: spec.data.source is out of scope")
    elif pending:
        p.condition(c.TRAINING, c.FALSE, c.COOLING_DOWN,
                    f"{waiting} waiting for the cooldown until {status.get('cooldownUntil')}")
    else:
        p.condition(c.TRAINING, c.FALSE, c.IDLE, "no run in progress")
    unknown = [r for r in evaluations if r.health == triggers.UNKNOWN]
    if unknown:
        prom = [r for r in unknown if r.kind in (triggers.DRIFT, triggers.PERFORMANCE)]
        reason = c.PROMETHEUS_UNAVAILABLE if prom else c.DATA_SOURCE_UNREADABLE
        p.condition(c.TRIGGERS_HEALTHY, c.UNKNOWN, reason, "; ".join(f"{r.kind}: {r.observed}" for r in unknown))
    else:
        p.condition(c.TRIGGERS_HEALTHY, c.TRUE, c.TRIGGERS_EVALUATED, "every configured trigger could be evaluated")
    champion_name = p.champion["metadata"]["name"] if p.champion else None
    status["championVersion"] = champion_name
    if mvs and not status.get("latestVersion"):
        status["latestVersion"] = max(mvs, key=results.version_number)["metadata"]["name"]
    if champion_name:
        p.condition(c.READY, c.TRUE, c.CHAMPION_AVAILABLE, f"champion is {champion_name}")
    else:
        p.condition(c.READY, c.FALSE, c.NO_MODEL_YET, "no accepted ModelVersion yet")
    status["conditions"] = p.conds
    degraded = c.get_condition(p.conds, c.DEGRADED)
    if current:
        phase, message = PHASE_TRAINING, f"run {current['id']} ({current.get('trigger')}) in progress"
    elif degraded and degraded.get("status") == c.TRUE:
        phase, message = PHASE_DEGRADED, degraded.get("message", "")
    elif champion_name:
        phase, message = PHASE_READY, f"champion {champion_name}"
    else:
        phase, message = PHASE_PENDING, "no accepted ModelVersion yet"
    status["phase"], status["message"] = phase, message[:1000]
    status["observedGeneration"] = p.generation


def decide(obs: Observation) -> Plan:
    """One pass, in five stages: follow the current run, evaluate the triggers, start a run,
    set the conditions, prune old runs."""
    pipeline = obs.pipeline
    old_status: dict[str, Any] = copy.deepcopy(dict(pipeline.get("status") or {}))
    status = copy.deepcopy(old_status)
    mvs = list(obs.model_versions)
    p = _Pass(obs=obs, old_status=old_status, status=status, conds=status.get("conditions") or [], mvs=mvs,
              champion=results.champion(mvs), current=status.get("currentRun"))
    invalid = spec_problem(pipeline["spec"])
    refused = obs.data_source_refused

    _follow_current_run(p)
    evaluations, pending = _collect_triggers(p, schedule_valid=invalid is None)
    pending = _start_run(p, pending, blocked=invalid is not None or refused is not None)
    status["pendingTriggers"] = pending or None
    _set_conditions(p, evaluations, pending, invalid, refused)

    # Stage 5: prune old runs (never the current one).
    history_limit = int(pipeline["spec"].get("historyLimit") or DEFAULT_HISTORY_LIMIT)
    current_id = p.current["id"] if p.current else None
    # A Job whose dask cluster was lost is stopped now (its run is over); old ones are pruned.
    prune_jobs = p.stop_jobs + runs.runs_to_prune(p.name, obs.job_names, history_limit, current_id)
    prune_cms = runs.runs_to_prune(p.name, obs.config_map_names, history_limit, current_id)

    patch = merge_patch(old_status, status)
    return Plan(
        status=patch or None,
        register=p.register,
        run_objects=p.objects,
        dask_objects=p.dask_objects,
        delete_dask_clusters=dask_cluster.clusters_to_delete(obs.dask_cluster_names, current_id),
        events=p.events,
        prune_jobs=prune_jobs,
        prune_config_maps=prune_cms,
        requeue_after=min(p.recheck) if p.recheck else None,
        evaluations=evaluations,
        finished=p.finished,
        started=p.started,
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
