"""The Rollout state machine as one pure function: ``decide(Observation) -> Plan``.

The handler observes (the Rollout, the namespace's ModelVersions, the per-version Deployments, the
user's annotations, one analysis measurement when one is due, ``now``), calls ``decide``, and
carries out the plan in the safe order: scale up, set traffic, mark and delete what is no longer
served, move ModelVersion stages, then write status. Everything a later pass needs is in status
(``stableVersion``, ``canaryVersion``, ``currentStep``, ``stepStartedAt``, analysis tallies and the
conditions) or on the objects themselves (a replaced version's Deployment carries its own
scale-down deadline in an annotation), so an operator killed at any point resumes the same step:
a step already carried out is re-applied, which changes nothing, and never skipped.

Rules (ARCHITECTURE.md §7): the first version ever served goes straight in; a new version walks
the strategy's steps (``strategies.plan_steps``); analysis failures beyond ``failureLimit`` or errors
beyond ``consecutiveErrorLimit`` abort; inconclusive analysis pauses; an abort moves traffic to stable
first, then schedules the candidate's scale-down, then rejects the ModelVersion; a version still
running from before (inside ``rollbackWindow`` / ``scaleDownDelay``) is switched back to at once.

Artifacts (issue #10): a version whose URIs lie outside its namespace's store and every trusted
prefix (``Observation.out_of_scope``, judged by ``noria.artifact_scope``) is never selected: the
Rollout is Degraded with ``ArtifactOutOfScope`` and the field named, and its Deployment is never
made. A candidate whose server refused its artifact (the server's JSON termination message,
``VersionPods.refusal``) is aborted like a failed analysis, with ``ArtifactVerificationFailed``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from noria import conditions as c
from noria.deployment.analysis import DISPLAY, CheckResult, Outcome, Tallies, judge_run
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import RolloutSpec
from noria.deployment.strategies import Step, Traffic, plan_steps, split_replicas, traffic_at

# Stages a Rollout may serve: approved, or already in one of the serving stages.
ROLLABLE_STAGES = frozenset({"Approved", "Canary", "Shadow", "Preview", "Production"})
CANDIDATE_STAGE = {"canary": "Canary", "blueGreen": "Preview", "shadow": "Shadow", "immediate": "Approved"}
ABORT_REASONS = frozenset({c.ROLLOUT_ANALYSIS_FAILED, c.ROLLOUT_ANALYSIS_ERRORS, c.ROLLOUT_ABORTED_BY_USER,
                           c.ARTIFACT_VERIFICATION_FAILED})

PROMOTE = "promote"
ABORT = "abort"
RETRY = "retry"


@dataclass(frozen=True)
class ArtifactRefusal:
    """A server of the version refused its artifact, in its own words (its termination message)."""

    kind: str  # which check, e.g. DigestMismatch, UntrustedType, TooLarge
    message: str
    exit_code: int | None = None
    pod: str = ""

    def describe(self) -> str:
        code = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        where = f" (pod {self.pod}{code})" if self.pod else ""
        return f"the server refused the artifact: {self.kind}: {self.message}{where}"[:900]


@dataclass(frozen=True)
class VersionPods:
    """A per-version Deployment as observed."""

    version: str
    replicas: int
    ready: int
    up_to_date: bool = True  # the Deployment controller has seen the latest spec
    scale_down_at: dt.datetime | None = None
    refusal: ArtifactRefusal | None = None  # a pod of this version refused its artifact

    def ready_for(self, want: int) -> bool:
        return self.up_to_date and self.replicas == want and self.ready >= want


@dataclass(frozen=True)
class Measurement:
    outcome: Outcome
    results: tuple[CheckResult, ...]
    at: dt.datetime


@dataclass(frozen=True)
class Observation:
    rollout: RolloutRef
    generation: int
    spec: RolloutSpec | None
    spec_error: str | None
    status: Mapping[str, Any]
    model_versions: Mapping[str, Mapping[str, Any]]  # every ModelVersion of the namespace, by name
    pods: Mapping[str, VersionPods]  # by version
    now: dt.datetime
    # Whether the provider's entry point can carry traffic (provider router: a router pod is ready, which
    # it is only once it has its config). Ready waits for it, so Healthy means users get answers.
    entry_ready: bool = True
    promote: bool = False
    abort: bool = False
    retry: bool = False
    measurement: Measurement | None = None
    # ModelVersions whose artifact or profile URI is out of scope: name -> message naming the field.
    out_of_scope: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageChange:
    version: str
    stage: str
    reason: str
    traffic: int


@dataclass(frozen=True)
class Plan:
    replicas: dict[str, int] = field(default_factory=dict)  # versions to run, and how many pods each
    weights: dict[str, int] | None = None  # None: leave traffic as it is
    mirror: tuple[str, int] | None = None  # (version, percent)
    preview: str | None = None  # version behind the preview Service
    scale_down: dict[str, dt.datetime] = field(default_factory=dict)  # deadlines to stamp on Deployments
    delete: tuple[str, ...] = ()  # versions whose Deployment and Service go now
    stage_changes: tuple[StageChange, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, str, str], ...] = ()  # (type Normal|Warning, reason, message)
    consume_first: tuple[str, ...] = ()  # annotations removed before acting (a lost promote is safe)
    consume_last: tuple[str, ...] = ()  # annotations removed after the status write (a repeated abort is a no-op)


# --- helpers ----------------------------------------------------------------------------------------
def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _stage(mv: Mapping[str, Any] | None) -> str | None:
    return ((mv or {}).get("status") or {}).get("stage")


def _version_number(mv: Mapping[str, Any]) -> int:
    try:
        return int((mv.get("spec") or {}).get("version", -1))
    except (TypeError, ValueError):
        return -1


def rejected_by(mv: Mapping[str, Any], rollout: str) -> bool:
    """Rejected by this Rollout's abort (not by the training gate): a retry may bring it back."""
    history = ((mv.get("status") or {}).get("history")) or []
    return _stage(mv) == "Rejected" and bool(history) and history[-1].get("by") == f"rollout/{rollout}"


def resolve_desired(spec: RolloutSpec, mvs: Mapping[str, Mapping[str, Any]],
                    out_of_scope: Mapping[str, str] | None = None) -> tuple[str | None, str, str]:
    """The version the Rollout should serve, or None with (reason, message) saying why not. A
    selected version whose artifact is out of scope is refused, not skipped for an older one: the
    person who made it must learn why it does not serve, and what serves stays."""
    desired, reason, message = _select(spec, mvs)
    if desired is not None and desired in (out_of_scope or {}):
        return None, c.ARTIFACT_OUT_OF_SCOPE, f"ModelVersion {desired} is not served: {(out_of_scope or {})[desired]}"
    return desired, reason, message


def _select(spec: RolloutSpec, mvs: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, str, str]:
    if spec.model_version:
        mv = mvs.get(spec.model_version)
        if mv is None:
            return None, c.ROLLOUT_NO_MODEL_VERSION, f"ModelVersion {spec.model_version} does not exist"
        if _stage(mv) not in ROLLABLE_STAGES | {"Retired"}:  # pinning a retired version back is a rollback
            return None, c.ROLLOUT_MODEL_VERSION_REJECTED, (
                f"ModelVersion {spec.model_version} is {_stage(mv) or 'not approved'}; "
                "approve it, pin another version, or annotate noria.dev/retry after an abort")
        return spec.model_version, "", ""
    mine = [mv for mv in mvs.values() if (mv.get("spec") or {}).get("pipeline") == spec.pipeline
            and _stage(mv) in ROLLABLE_STAGES]
    if not mine:
        return None, c.ROLLOUT_NO_MODEL_VERSION, f"pipeline {spec.pipeline} has no approved ModelVersion yet"
    best = max(mine, key=_version_number)
    return best["metadata"]["name"], "", ""


def retry_target(spec: RolloutSpec, rollout: str, mvs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The version a retry brings back: the pinned one, or the pipeline's newest aborted one."""
    if spec.model_version:
        mv = mvs.get(spec.model_version)
        return spec.model_version if mv is not None and rejected_by(mv, rollout) else None
    aborted = [mv for mv in mvs.values() if (mv.get("spec") or {}).get("pipeline") == spec.pipeline
               and rejected_by(mv, rollout)]
    return max(aborted, key=_version_number)["metadata"]["name"] if aborted else None


def candidate_replicas(spec: RolloutSpec, traffic: Traffic) -> int:
    """Pods of the candidate while ``traffic`` holds: all of them, except where pod counts are the
    split itself (provider ``service`` during a canary)."""
    if spec.provider == "service" and spec.strategy == "canary" and traffic.weight < 100:
        return max(1, split_replicas(traffic.weight, spec.replicas))
    return spec.replicas


def analysis_due(obs: Observation) -> bool:
    """Whether this pass should take a measurement (the handler asks Prometheus only then)."""
    spec, st = obs.spec, obs.status
    if spec is None or not spec.analysis.checks:
        return False
    cand, stable = st.get("canaryVersion"), st.get("stableVersion")
    if not cand or not stable or obs.abort:
        return False
    steps = plan_steps(spec)
    i = min(int(st.get("currentStep") or 0), len(steps) - 1)
    traffic = traffic_at(steps, i)
    pods = obs.pods.get(cand)
    if pods is None or not pods.ready_for(candidate_replicas(spec, traffic)):
        return False
    paused = c.get_condition(st.get("conditions"), c.PAUSED)
    if paused and paused.get("status") == c.TRUE and paused.get("reason") == c.ROLLOUT_ANALYSIS_INCONCLUSIVE:
        return False
    if steps[i].kind != "analysis" and not int(st.get("canaryWeight") or 0):
        return False  # no traffic applied yet (canaryWeight is what was last applied): nothing to measure
    last = parse_time(((st.get("analysis") or {}).get("last") or {}).get("at"))
    if last is None:
        # The first measurement waits one interval into the step, so that the metrics have samples
        # of the traffic the step just moved (no false "inconclusive" from an empty window).
        last = parse_time(st.get("stepStartedAt")) or obs.now
    return (obs.now - last).total_seconds() >= spec.analysis.interval


# --- the decision -----------------------------------------------------------------------------------
class _Builder:
    """Accumulates one pass's plan; the decision functions below read like the rules."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.spec = obs.spec
        self.now = obs.now
        self.status: dict[str, Any] = {k: v for k, v in obs.status.items()}
        self.conditions = [dict(x) for x in obs.status.get("conditions") or []]
        self.replicas: dict[str, int] = {}
        self.weights: dict[str, int] | None = None
        self.mirror: tuple[str, int] | None = None
        self.preview: str | None = None
        self.scale_down: dict[str, dt.datetime] = {}
        self.stages: dict[str, StageChange] = {}
        self.events: list[tuple[str, str, str]] = []
        self.consume_first: list[str] = []
        self.consume_last: list[str] = []
        self.mv_overrides: dict[str, str] = {}

    # conditions and events
    def cond(self, type_: str, status: str, reason: str, message: str) -> None:
        self.conditions = c.set_condition(self.conditions, type_, status, reason, message,
                                          self.obs.generation, self.now)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message))

    def stage(self, version: str, stage: str, reason: str, traffic: int) -> None:
        self.stages[version] = StageChange(version, stage, reason, traffic)

    def delay(self) -> float:
        assert self.spec is not None
        return self.spec.scale_down_delay

    # shared moves
    def abandon(self, cand: str, reason: str, message: str) -> None:
        """Drop an unfinished candidate that is not failing (superseded, unpinned): back to Approved."""
        self.replicas.pop(cand, None)
        self.scale_down[cand] = self.now + dt.timedelta(seconds=self.delay())
        if cand in self.obs.model_versions and _stage(self.obs.model_versions[cand]) in ROLLABLE_STAGES:
            self.stage(cand, "Approved", message, 0)
        self.event(reason, message)
        self._clear_candidate()

    def _clear_candidate(self) -> None:
        for key in ("canaryVersion", "currentStep", "stepStartedAt", "canaryWeight"):
            self.status[key] = None
        self.cond(c.PAUSED, c.FALSE, c.ROLLOUT_STEP_IN_PROGRESS, "not paused")

    def serve_only(self, stable: str) -> None:
        assert self.spec is not None
        self.replicas[stable] = self.spec.replicas
        self.weights = {stable: 100}
        self.status["weights"] = {stable: 100}
        self.stage(stable, "Production", "serving all traffic", 100)

    def abort(self, cand: str, stable: str | None, reason: str, message: str) -> None:
        """Traffic to stable, candidate scheduled for scale-down, ModelVersion rejected (kept), Degraded."""
        if stable:
            self.serve_only(stable)
        else:
            self.weights = {}
            self.status["weights"] = {}
        self.replicas.pop(cand, None)
        self.scale_down[cand] = self.now + dt.timedelta(seconds=self.delay())
        self.stage(cand, "Rejected", message, 0)
        self._clear_candidate()
        self.cond(c.DEGRADED, c.TRUE, reason, f"{cand} aborted: {message}")
        self.cond(c.PROGRESSING, c.FALSE, reason, f"{cand} aborted; {stable or 'nothing'} serves all traffic")
        self.event(reason, f"aborted {cand}: {message}; traffic back on {stable or 'nothing'}", warning=True)

    def start_candidate(self, cand: str, stable: str) -> None:
        assert self.spec is not None
        self.status.update(canaryVersion=cand, currentStep=0, stepStartedAt=c.now_iso(self.now), canaryWeight=0,
                           analysis={**Tallies().to_status(), "last": None})
        self.replicas[stable] = self.spec.replicas
        self.replicas[cand] = self.spec.replicas
        self.weights = {stable: 100}
        self.status["weights"] = {stable: 100}
        self.stage(cand, CANDIDATE_STAGE[self.spec.strategy], f"{self.spec.strategy} by rollout started", 0)
        self.cond(c.DEGRADED, c.FALSE, c.ROLLOUT_STEP_IN_PROGRESS, "no failure")
        self.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_STEP_IN_PROGRESS, f"rolling out {cand} ({self.spec.strategy})")
        self.event(c.ROLLOUT_STEP_IN_PROGRESS, f"rolling out {cand} over {stable} ({self.spec.strategy})")

    def promote(self, cand: str, stable: str | None, reason: str, message: str) -> None:
        assert self.spec is not None
        self.serve_only(cand)
        self.stage(cand, "Production", message, 100)
        if stable and stable != cand:
            keep = max(self.delay(), self.spec.rollback_window)
            self.scale_down[stable] = self.now + dt.timedelta(seconds=keep)
            self.stage(stable, "Retired", f"replaced by {cand}", 0)
        self.status["stableVersion"] = cand
        self._clear_candidate()
        self.cond(c.PROGRESSING, c.FALSE, reason, f"{cand} serves all traffic")
        self.cond(c.DEGRADED, c.FALSE, reason, "no failure")
        self.event(reason, message)

    # the status summary
    def finish(self) -> Plan:
        obs, spec = self.obs, self.spec
        stable, cand = self.status.get("stableVersion"), self.status.get("canaryVersion")
        if spec is not None and stable:
            pods = obs.pods.get(stable)
            if pods is not None and pods.refusal is not None:
                # Nothing to fall back to: keep what runs, and say loudly why it is not ready.
                message = f"stable {stable}: {pods.refusal.describe()}"
                self.cond(c.READY, c.FALSE, c.ARTIFACT_VERIFICATION_FAILED, message)
                self.cond(c.DEGRADED, c.TRUE, c.ARTIFACT_VERIFICATION_FAILED, message)
            elif pods is None or not pods.ready_for(spec.replicas):
                self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_PODS, f"{stable}'s pods are not all ready")
            elif not obs.entry_ready:
                self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_ROUTER, f"{stable} is ready; the router is not yet")
            else:
                self.cond(c.READY, c.TRUE, c.ROLLOUT_STABLE_SERVING, f"{stable} is serving")
        elif spec is not None:
            self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_PODS, "no version serves yet")
        # Versions that are neither stable nor candidate get a scale-down deadline, then go.
        keep = {v for v in (stable, cand) if v}
        delete = []
        if spec is not None:
            for version, pods in obs.pods.items():
                if version in keep or version in self.scale_down:
                    continue
                if pods.scale_down_at is None:
                    self.scale_down[version] = self.now + dt.timedelta(seconds=self.delay())
                elif pods.scale_down_at <= self.now:
                    delete.append(version)
            for version in keep:
                self.scale_down.pop(version, None)
        for name in delete:
            self.event(c.ROLLOUT_SCALED_DOWN, f"scaled down {name}: no longer served")
        self.status["conditions"] = self.conditions
        self.status["observedGeneration"] = obs.generation
        self.status["phase"], self.status["message"] = summarise(self.conditions)
        return Plan(
            replicas=self.replicas, weights=self.weights, mirror=self.mirror, preview=self.preview,
            scale_down=self.scale_down, delete=tuple(sorted(delete)), stage_changes=tuple(self.stages.values()),
            status=self.status, events=tuple(self.events), consume_first=tuple(self.consume_first),
            consume_last=tuple(self.consume_last),
        )


def summarise(conditions: list[dict[str, Any]]) -> tuple[str, str]:
    """Phase from conditions: Degraded > Paused > Progressing > Healthy."""
    for type_, phase in ((c.DEGRADED, "Degraded"), (c.PAUSED, "Paused"), (c.PROGRESSING, "Progressing")):
        cond = c.get_condition(conditions, type_)
        if cond and cond.get("status") == c.TRUE:
            return phase, cond.get("message", "")
    ready = c.get_condition(conditions, c.READY)
    if ready and ready.get("status") == c.TRUE:
        return "Healthy", ready.get("message", "")
    return "Progressing", (ready or {}).get("message", "")


def decide(obs: Observation) -> Plan:
    b = _Builder(obs)
    if obs.spec is None:
        b.cond(c.DEGRADED, c.TRUE, c.ROLLOUT_INVALID_SPEC, obs.spec_error or "invalid spec")
        b.event(c.ROLLOUT_INVALID_SPEC, obs.spec_error or "invalid spec", warning=True)
        return b.finish()
    spec = obs.spec
    st = obs.status
    stable, cand = st.get("stableVersion"), st.get("canaryVersion")
    if obs.promote:
        b.consume_first.append(PROMOTE)
    if obs.abort:
        b.consume_last.append(ABORT)
    if obs.retry:
        b.consume_last.append(RETRY)
    if stable and stable not in obs.pods and stable not in obs.model_versions:
        stable = None  # the stable version vanished entirely: start as on a first deployment
        b.status["stableVersion"] = None

    mvs = dict(obs.model_versions)
    if obs.retry:
        target = retry_target(spec, obs.rollout.name, mvs)
        if target:
            b.stage(target, "Approved", "retry requested with noria.dev/retry", 0)
            mvs[target] = {**mvs[target], "status": {**(mvs[target].get("status") or {}), "stage": "Approved"}}
            b.cond(c.DEGRADED, c.FALSE, c.ROLLOUT_RETRIED, f"retrying {target}")
            b.event(c.ROLLOUT_RETRIED, f"retrying {target}")

    if obs.abort and cand:
        b.abort(cand, stable, c.ROLLOUT_ABORTED_BY_USER, "aborted by the noria.dev/abort annotation")
        return b.finish()

    desired, why_reason, why = resolve_desired(spec, mvs, obs.out_of_scope)
    if desired is None:
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"{cand} is no longer selected: {why}")
        if stable:
            b.serve_only(stable)
        degraded = c.get_condition(b.conditions, c.DEGRADED)
        if not (degraded and degraded.get("status") == c.TRUE and degraded.get("reason") in ABORT_REASONS):
            b.cond(c.DEGRADED, c.TRUE, why_reason, why)
        b.cond(c.PROGRESSING, c.FALSE, why_reason, why)
        return b.finish()

    if not stable:
        return _first_deployment(b, desired, cand)
    if desired == stable:
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"the source selects {stable} again; {cand} dropped")
        b.serve_only(stable)
        b.cond(c.PROGRESSING, c.FALSE, c.ROLLOUT_STABLE_SERVING, f"{stable} serves all traffic")
        pods = obs.pods.get(stable)
        if pods is None or not pods.ready_for(spec.replicas):
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_PODS, f"waiting for {stable}'s pods")
        return b.finish()
    previous = obs.pods.get(desired)
    served_before = _stage(mvs.get(desired)) in ("Retired", "Production")  # never an aborted or retried candidate
    if (desired != cand and served_before and previous is not None and previous.scale_down_at
            and previous.ready_for(spec.replicas)):
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"{cand} dropped: rolling back to {desired}")
        b.promote(desired, stable, c.ROLLOUT_FAST_ROLLBACK,
                  f"rolled back to {desired} at once: its pods were still running")
        return b.finish()
    if desired != cand:
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"{desired} arrived; {cand} dropped before promotion")
        b.start_candidate(desired, stable)
        return b.finish()
    return _progress(b, cand, stable)


def _first_deployment(b: _Builder, desired: str, cand: str | None) -> Plan:
    obs, spec = b.obs, b.spec
    assert spec is not None
    if cand and cand != desired:
        b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"{desired} arrived before {cand} was ready")
    pods = obs.pods.get(desired)
    if pods is not None and pods.refusal is not None:
        b.abort(desired, None, c.ARTIFACT_VERIFICATION_FAILED, pods.refusal.describe())
        return b.finish()
    b.status.update(canaryVersion=desired)
    b.replicas[desired] = spec.replicas
    if pods is not None and pods.ready_for(spec.replicas):
        b.promote(desired, None, c.ROLLOUT_FIRST_DEPLOYMENT, f"first version {desired} is ready and serves all traffic")
    else:
        b.stage(desired, "Approved", "first deployment", 0)
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_FIRST_DEPLOYMENT, f"waiting for {desired}'s pods (first deployment)")
    return b.finish()


def _progress(b: _Builder, cand: str, stable: str) -> Plan:
    obs, spec, now = b.obs, b.spec, b.now
    assert spec is not None
    st = obs.status
    steps = plan_steps(spec)
    i = max(0, min(int(st.get("currentStep") or 0), len(steps) - 1))
    step: Step = steps[i]
    started = parse_time(st.get("stepStartedAt")) or now
    traffic = traffic_at(steps, i)
    want = candidate_replicas(spec, traffic)
    pods = obs.pods.get(cand)
    if pods is not None and pods.refusal is not None:
        b.abort(cand, stable, c.ARTIFACT_VERIFICATION_FAILED, pods.refusal.describe())
        return b.finish()
    b.replicas[stable] = spec.replicas
    b.replicas[cand] = want
    if pods is None or not pods.ready_for(want):
        # Traffic moves only onto ready pods: the step's weight waits for them.
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_PODS, f"waiting for {cand}'s pods before step {i}")
        return b.finish()
    _apply_traffic(b, cand, stable, traffic)

    analysis = dict(st.get("analysis") or {})
    paused = c.get_condition(b.conditions, c.PAUSED)
    inconclusive_pause = bool(paused and paused.get("status") == c.TRUE
                              and paused.get("reason") == c.ROLLOUT_ANALYSIS_INCONCLUSIVE)
    if obs.measurement is not None:
        m = obs.measurement
        tallies = Tallies.from_status(analysis).record(m.outcome, spec.analysis)
        last = {"at": c.now_iso(m.at), "outcome": DISPLAY[m.outcome],
                "message": _summary(m), "checks": [r.to_status() for r in m.results]}
        analysis = {**tallies.to_status(), "last": last}
        b.status["analysis"] = analysis
        verdict, why = judge_run(tallies, m.outcome, spec.analysis)
        if verdict == "abort":
            reason = c.ROLLOUT_ANALYSIS_FAILED if tallies.failed > spec.analysis.failure_limit else c.ROLLOUT_ANALYSIS_ERRORS
            b.abort(cand, stable, reason, f"{why}: {_summary(m)}")
            return b.finish()
        if verdict == "pause" and not inconclusive_pause:
            inconclusive_pause = True
            b.cond(c.PAUSED, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE, f"{why}: {_summary(m)}")
            b.event(c.ROLLOUT_ANALYSIS_INCONCLUSIVE, f"{cand}: {why}", warning=True)
        elif m.outcome == "failure":
            b.event(c.ROLLOUT_ANALYSIS_FAILED, f"{cand}: {_summary(m)}", warning=True)
    if inconclusive_pause:
        if not obs.promote:
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE, f"step {i} ({step.describe()}) paused")
            return b.finish()
        b.cond(c.PAUSED, c.FALSE, c.ROLLOUT_RESUMED_BY_USER, "resumed by noria.dev/promote")
        b.event(c.ROLLOUT_RESUMED_BY_USER, f"{cand}: resumed after an inconclusive analysis")
        return _progress_message(b, i, step)

    done = False
    if step.kind in ("setWeight", "mirror", "preview"):
        done = True
    elif step.kind == "pause":
        if step.duration is None:
            done = obs.promote
            if done:
                b.event(c.ROLLOUT_RESUMED_BY_USER, f"{cand}: promoted past step {i} by noria.dev/promote")
        else:
            done = (now - started).total_seconds() >= step.duration
    elif step.kind == "analysis":
        last = analysis.get("last") or {}
        at = parse_time(last.get("at"))
        done = last.get("outcome") == DISPLAY["success"] and at is not None and at > started
        if done:
            b.event(c.ROLLOUT_ANALYSIS_PASSED, f"{cand}: analysis passed at step {i}")
    elif step.kind == "switch":
        b.promote(cand, stable, c.ROLLOUT_PROMOTED, f"promoted {cand} to all traffic; {stable} retired")
        return b.finish()
    if done:
        i += 1
        b.status.update(currentStep=i, stepStartedAt=c.now_iso(now))
        step = steps[i]
        b.event(c.ROLLOUT_STEP_IN_PROGRESS, f"{cand}: step {i} ({step.describe()})")
    return _progress_message(b, i, step)


def _progress_message(b: _Builder, i: int, step: Step) -> Plan:
    cand = b.status.get("canaryVersion")
    if step.kind == "pause" and step.duration is None:
        b.cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_FOR_PROMOTION,
               f"step {i}: waiting for `kubectl annotate mro {b.obs.rollout.name} noria.dev/promote=true`")
    else:
        paused = c.get_condition(b.conditions, c.PAUSED)
        if paused and paused.get("status") == c.TRUE and paused.get("reason") == c.ROLLOUT_PAUSED_FOR_PROMOTION:
            b.cond(c.PAUSED, c.FALSE, c.ROLLOUT_RESUMED_BY_USER, "promoted")
    b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_STEP_IN_PROGRESS, f"{cand}: step {i} ({step.describe()})")
    return b.finish()


def _apply_traffic(b: _Builder, cand: str, stable: str, traffic: Traffic) -> None:
    b.weights = {stable: 100 - traffic.weight, cand: traffic.weight}
    b.status["weights"] = dict(b.weights)
    b.status["canaryWeight"] = traffic.mirror_percent if traffic.mirror_percent else traffic.weight
    if traffic.mirror_percent:
        b.mirror = (cand, traffic.mirror_percent)
    if traffic.preview:
        b.preview = cand
    stage = CANDIDATE_STAGE[b.spec.strategy] if b.spec else "Canary"
    b.stage(cand, stage, f"{traffic.weight}% of traffic", traffic.weight)
    b.stage(stable, "Production", "stable", 100 - traffic.weight)


def _summary(m: Measurement) -> str:
    parts = [f"{r.name}={r.outcome}" + (f" ({r.message})" if r.message else "") for r in m.results]
    return "; ".join(parts)[:900] or "no checks"
