"""The Rollout state machine as one pure function: ``decide(Observation) -> Plan``.

The handler observes (the Rollout, the namespace's ModelVersions, the per-version Deployments, the
user's annotations, one analysis measurement when one is due, ``now``), calls ``decide``, and
carries out the plan in the safe order (traffic before status, status before ModelVersion stages).
Everything a later pass needs is in status (``stableVersion``, ``canaryVersion``, ``currentStep``,
``stepStartedAt``, analysis tallies, ``noProgressSince``, ``candidateUnreadySince``,
``previousVersion``/``rollbackWindowEndsAt``, ``lastVerdict`` and the conditions) or on the objects
themselves (a replaced version's Deployment carries its own scale-down deadline), so an operator
killed at any point resumes the same step: a step already carried out is re-applied, which changes
nothing, and never skipped.

The rules, by module (docs/rollouts.md is the user's version):

- which version to serve: ``selection`` (newest approved of the pipeline, or the pinned one once
  approved; a version this Rollout rejected stays rejected until ``noria.dev/retry``);
- here: an invalid spec, retry and abort annotations, the first version (straight in), the same
  version again, a fast rollback to a version still running, a new candidate, and the
  ``rollbackWindow`` after a promotion (analysis goes on; a failure rolls back at once);
- a candidate's walk through its steps, failing safe: ``step_machine`` (unready candidate,
  unhealthy stable, the gate that never promotes blind, analysis ``count``, promote, progress deadline);
- verdicts and what every pass re-derives from status: ``plan_builder``.

A candidate whose server refused its artifact (``VersionPods.refusal``) is aborted with
``ArtifactVerificationFailed`` and rejected, whatever else is going on; a version out of its
namespace's scope (``Observation.out_of_scope``) is never selected.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.deployment.analysis import DISPLAY, Tallies, combine, judge_run, resolve_waiting
from noria.deployment.observation import (
    ArtifactRefusal,
    Measurement,
    Observation,
    Plan,
    StageChange,
    VersionPods,
    parse_time,
)
from noria.deployment.pause import resumed
from noria.deployment.plan_builder import PROMOTE, PlanBuilder, summarise
from noria.deployment.selection import (
    CANDIDATE_STAGE,
    ROLLABLE_STAGES,
    rejected_by,
    resolve_desired,
    retry_target,
    stage_of,
)
from noria.deployment.step_machine import UNREADY_GRACE, candidate_replicas, progress, summary_of
from noria.deployment.strategies import plan_steps, traffic_at

ABORT_REASONS = frozenset({c.ROLLOUT_ANALYSIS_FAILED, c.ROLLOUT_ANALYSIS_ERRORS, c.ROLLOUT_ABORTED_BY_USER,
                           c.ARTIFACT_VERIFICATION_FAILED, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED,
                           c.ROLLOUT_CANDIDATE_UNREADY, c.ROLLOUT_ROLLED_BACK})

# Annotation names without the noria.dev/ prefix: what the handler reads and consumes.
ABORT = ct.ANNOTATION_ABORT.removeprefix(ct.PREFIX)
RETRY = ct.ANNOTATION_RETRY.removeprefix(ct.PREFIX)

__all__ = [
    "ABORT", "ABORT_REASONS", "CANDIDATE_STAGE", "PROMOTE", "RETRY", "ROLLABLE_STAGES", "UNREADY_GRACE",
    "ArtifactRefusal", "Measurement", "Observation", "Plan", "StageChange", "VersionPods",
    "analysis_due", "analysis_next_at", "analysis_target", "candidate_replicas", "decide", "parse_time", "rejected_by",
    "resolve_desired", "retry_target", "summarise",
]


def analysis_target(status: dict | object) -> tuple[str, str | None] | None:
    """(version measured, version it is compared with): the candidate against the stable during a
    rollout; the new stable against the previous version inside a rollbackWindow; None otherwise."""
    st = status if isinstance(status, dict) else dict(status)  # type: ignore[call-overload]
    if st.get("canaryVersion") and st.get("stableVersion"):
        return st["canaryVersion"], st["stableVersion"]
    if st.get("previousVersion") and st.get("stableVersion") and st.get("rollbackWindowEndsAt"):
        return st["stableVersion"], st["previousVersion"]
    return None


def analysis_due(obs: Observation) -> bool:
    """Whether this pass should take a measurement (the handler asks Prometheus only then)."""
    at = analysis_next_at(obs)
    return at is not None and obs.now >= at


def analysis_next_at(obs: Observation) -> dt.datetime | None:
    """When the next measurement is due, or None while none will be by time alone (no analysis, pods
    not ready, an inconclusive pause, no traffic yet: an event or a decision changes that first).
    ``analysis_due`` and the handler's ``next_pass_in`` both read it, so a pass is never scheduled for
    a measurement that the pass would then not take."""
    spec, st = obs.spec, obs.status
    if spec is None or not spec.analysis.checks or obs.abort:
        return None
    target = analysis_target(dict(st))
    if target is None:
        return None
    cand, stable = st.get("canaryVersion"), st.get("stableVersion")
    if not cand:  # inside the rollbackWindow: the new stable, every interval until the window ends
        ends = parse_time(st.get("rollbackWindowEndsAt"))
        if ends is None or obs.now >= ends:
            return None
        pods = obs.pods.get(target[0])
        if pods is None or not pods.ready_for(spec.replicas):
            return None
    else:
        steps = plan_steps(spec)
        i = min(int(st.get("currentStep") or 0), len(steps) - 1)
        pods = obs.pods.get(cand)
        if pods is None or not pods.ready_for(candidate_replicas(spec, traffic_at(steps, i))):
            return None
        stable_pods = obs.pods.get(stable or "")
        if stable_pods is None or not stable_pods.ready_for(spec.replicas):
            return None  # the step holds while the stable is unhealthy: nothing to decide with a measurement
        paused = c.get_condition(st.get("conditions"), c.PAUSED)
        if paused and paused.get("status") == c.TRUE and paused.get("reason") == c.ROLLOUT_ANALYSIS_INCONCLUSIVE:
            return None
        if steps[i].kind != "analysis" and not int(st.get("canaryWeight") or 0):
            return None  # no traffic applied yet (canaryWeight is what was last applied): nothing to measure
    last = parse_time(((st.get("analysis") or {}).get("last") or {}).get("at"))
    if last is None:
        # The first measurement waits one interval into the step, so that the metrics have samples
        # of the traffic the step just moved (no false "inconclusive" from an empty window).
        last = parse_time(st.get("stepStartedAt")) or obs.now
    return last + dt.timedelta(seconds=spec.analysis.interval)


def with_verdict(mvs: Mapping[str, Mapping[str, Any]], verdict: Mapping[str, Any] | None,
                 rollout: str) -> Mapping[str, Any]:
    """The ModelVersions as the Rollout's own record says they are: the last verdict's stage wins
    over a ModelVersion whose write was lost to a crash, so a rejected version is never selected
    again just because its stage still reads Canary."""
    out = mvs if isinstance(mvs, dict) else dict(mvs)
    version, stage = (verdict or {}).get("version"), (verdict or {}).get("stage")
    if version in out and stage and stage != ct.PRODUCTION:
        status = out[version].get("status") or {}
        if status.get("stage") != stage:
            out = dict(out)  # never change the observation
            message = (verdict or {}).get("message") or ""
            entry = {"stage": stage, "by": f"rollout/{rollout}", "reason": message}
            out[version] = {**out[version], "status": {**status, "stage": stage, "message": message,
                                                       "history": [*(status.get("history") or []), entry]}}
    return out


def decide(obs: Observation) -> Plan:
    obs = resumed(obs)  # a pause that just ended: the candidate's timers skip the time paused
    b = PlanBuilder(obs)
    if obs.spec is None:
        b.alarm(c.DEGRADED, c.TRUE, c.ROLLOUT_INVALID_SPEC, obs.spec_error or "invalid spec")
        return b.finish()
    spec = obs.spec
    st = obs.status
    stable, cand = st.get("stableVersion"), st.get("canaryVersion")
    if obs.promote or obs.promote_full:
        b.consume_first.append(PROMOTE)
        if spec.paused:
            b.event(c.ROLLOUT_PAUSED_BY_USER, f"noria.dev/promote ignored: the Rollout is paused (spec.paused); "
                                              f"`kubectl noria resume {obs.rollout.name}` first, then promote",
                    warning=True)
    if obs.abort:
        b.consume_last.append(ABORT)
    if obs.retry:
        b.consume_last.append(RETRY)
    if stable and stable not in obs.pods and stable not in obs.model_versions:
        stable = None  # the stable version vanished entirely: start as on a first deployment
        b.status["stableVersion"] = None

    # A refused artifact is a verdict on the version, whatever else this pass would do with it.
    if cand and (pods := obs.pods.get(cand)) is not None and pods.refusal is not None:
        b.abort(cand, stable, c.ARTIFACT_VERIFICATION_FAILED, pods.refusal.describe())
        return b.finish()

    mvs = with_verdict(obs.model_versions, st.get("lastVerdict"), obs.rollout.name)
    if obs.retry:
        target = retry_target(spec, obs.rollout.name, mvs)
        if target:
            b.verdict(target, ct.APPROVED, c.ROLLOUT_RETRIED, "retry requested with noria.dev/retry")
            mvs = {**mvs, target: {**mvs[target], "status": {**(mvs[target].get("status") or {}), "stage": ct.APPROVED}}}
            b.cond(c.DEGRADED, c.FALSE, c.ROLLOUT_RETRIED, f"retrying {target}")
            b.event(c.ROLLOUT_RETRIED, f"retrying {target}")

    if obs.abort and cand:
        b.abort(cand, stable, c.ROLLOUT_ABORTED_BY_USER, "aborted by the noria.dev/abort annotation")
        return b.finish()

    desired, why_reason, why = resolve_desired(spec, mvs, obs.out_of_scope, obs.rollout.name)
    if desired is None:
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"{cand} is no longer selected: {why}")
        if stable:
            b.serve_only(stable)
        if not b.is_cond(c.DEGRADED, c.TRUE, *ABORT_REASONS):  # keep the abort's own words
            b.alarm(c.DEGRADED, c.TRUE, why_reason, why)
        b.cond(c.PROGRESSING, c.FALSE, why_reason, why)
        return _rollback_window(b, stable) if stable else b.finish()

    if not stable:
        return _first_deployment(b, desired, cand)
    return _replace(b, desired, stable, cand, mvs)


def _replace(b: PlanBuilder, desired: str, stable: str, cand: str | None, mvs: Mapping[str, Any]) -> Plan:
    """Something serves: keep it, roll back to a version still running, start or go on with a candidate."""
    obs, spec = b.obs, b.spec
    assert spec is not None
    if desired == stable:
        if cand:
            b.abandon(cand, c.ROLLOUT_SUPERSEDED, f"the source selects {stable} again; {cand} dropped")
        b.serve_only(stable)
        b.cond(c.PROGRESSING, c.FALSE, c.ROLLOUT_STABLE_SERVING, f"{stable} serves all traffic")
        pods = obs.pods.get(stable)
        if pods is None or not pods.ready_for(spec.replicas):
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_PODS, f"waiting for {stable}'s pods")
        return _rollback_window(b, stable)
    if b.paused:  # nothing new starts; a candidate under way holds its step (pause.py)
        b.waiting = desired
        if cand:
            return progress(b, cand, stable)
        b.serve_only(stable)
        b.cond(c.PROGRESSING, c.FALSE, c.ROLLOUT_STABLE_SERVING, f"{stable} serves all traffic")
        return _rollback_window(b, stable)
    previous = obs.pods.get(desired)
    served_before = stage_of(mvs.get(desired)) in (ct.RETIRED, ct.PRODUCTION)  # never an aborted or retried candidate
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
    return progress(b, cand, stable)


def _first_deployment(b: PlanBuilder, desired: str, cand: str | None) -> Plan:
    """Nothing serves yet: the first version goes straight in once its pods are ready. There is
    nothing to fall back to, so a first version that never gets ready is not rejected: after
    progressDeadline the Rollout says so (Degraded ProgressDeadlineExceeded) and keeps trying."""
    obs, spec, now = b.obs, b.spec, b.now
    assert spec is not None
    if b.paused:  # no first deployment starts or completes; one under way keeps its pods (pause.py)
        b.waiting = desired
        if cand:
            b.replicas[cand] = spec.replicas
        b.cond(c.PROGRESSING, c.TRUE if cand else c.FALSE, c.ROLLOUT_FIRST_DEPLOYMENT, "nothing serves yet")
        return b.finish()
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
        return b.finish()
    b.stage(desired, ct.APPROVED, "first deployment", 0)
    b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_FIRST_DEPLOYMENT, f"waiting for {desired}'s pods (first deployment)")
    since = parse_time(obs.status.get("noProgressSince")) or now
    b.status["noProgressSince"] = c.now_iso(since)
    if (now - since).total_seconds() >= spec.progress_deadline:
        ready = pods.ready if pods is not None else 0
        b.alarm(c.DEGRADED, c.TRUE, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED,
                f"first version {desired} has {ready} of {spec.replicas} pods ready after "
                f"{(now - since).total_seconds():.0f}s (progressDeadline {spec.progress_deadline:g}s); "
                "nothing to fall back to, still trying")
    return b.finish()


def _rollback_window(b: PlanBuilder, stable: str) -> Plan:
    """After a promotion with ``rollbackWindow``: analysis goes on against the new stable while the
    previous version's pods keep running; a run the analysis would abort rolls traffic back at once."""
    obs, spec, now, st = b.obs, b.spec, b.now, b.status
    assert spec is not None
    previous, ends = st.get("previousVersion"), parse_time(st.get("rollbackWindowEndsAt"))
    if not previous:
        return b.finish()
    if ends is None or now >= ends or previous == stable:
        b.end_rollback_window()
        b.event(c.ROLLOUT_STABLE_SERVING, f"rollbackWindow over: {stable} stays, {previous} scales down")
        return b.finish()
    # The previous version's pods keep running untouched: their scale-down deadline (stamped at the
    # promotion) is no earlier than the window's end, so the rollback is instant.
    m = obs.measurement
    if m is None:
        return b.finish()
    results = resolve_waiting(m.results, spec.analysis.checks, 0.0)
    outcome = combine(results)
    tallies = Tallies.from_status(st.get("analysis")).record(outcome, spec.analysis)
    last = {"at": c.now_iso(m.at), "outcome": DISPLAY[outcome], "message": summary_of(m),
            "checks": [r.to_status() for r in results]}
    b.status["analysis"] = {**tallies.to_status(), "last": last}
    verdict, why = ("continue", "") if outcome == "waiting" else judge_run(tallies, outcome, spec.analysis)
    if verdict != "abort":
        return b.finish()
    pods = obs.pods.get(previous)
    if pods is None or not pods.ready_for(spec.replicas):
        b.end_rollback_window()
        b.alarm(c.DEGRADED, c.TRUE, c.ROLLOUT_ANALYSIS_FAILED,
                f"{stable} failed inside rollbackWindow ({why}) but {previous}'s pods are not ready: "
                f"{stable} keeps serving; pin another version")
        return b.finish()
    b.roll_back(stable, previous, f"{why}: {summary_of(m)}")
    return b.finish()
