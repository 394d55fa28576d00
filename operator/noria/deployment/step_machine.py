"""A candidate's walk through the strategy's steps, one pass at a time, failing safe.

Each pass, in this order:

1. **The candidate's pods.** Traffic moves only onto ready pods. A candidate that had traffic and
   loses ready pods has its traffic moved to the stable version: at once when no pod is ready (every
   request sent to it would fail; the kubelet's readiness probe has already debounced the signal),
   after ``UNREADY_GRACE`` seconds when some pods still answer (a pod restarting beside a healthy one
   should not move traffic back and forth). The step waits; when the pods are ready again the step
   starts over (its clock restarts, so a pause or an analysis sees healthy pods for its full length).
   A promote that arrives meanwhile is kept for the pass that can act on it (``PlanBuilder.promote_waits_for``).
2. **The stable's pods.** While the candidate is ready and the stable has no ready pod, all traffic
   goes to the candidate (fail over) and the step holds; Degraded ``StableUnhealthy``; a promote is kept.
3. **The measurement**, if one was taken: tallied (a ``waiting`` one is not), judged by
   ``analysis.judge_run``: abort, pause for a person (inconclusive), or go on.
4. **spec.paused** (``pause.py``): the step holds with its traffic as it is; no promote, no advance,
   and the progress deadline does not run. (The measurement above was still judged: a failing run aborts.)
5. **Promote.** ``noria.dev/promote=full`` promotes now; ``noria.dev/promote=true`` goes past the
   current gate once, whatever the analysis says, including the traffic raise it causes.
6. **The gate.** With analysis checks, the candidate's traffic is raised (a setWeight above what it
   has, or the final switch) only when the latest measurement is a success taken since its traffic last
   changed (``consecutiveSuccesses`` >= 1). Errors within ``consecutiveErrorLimit``, a failure within
   ``failureLimit`` and a check waiting for labels all hold: never promote blind. Before the candidate
   has any traffic to measure (the first setWeight, a preview without analysis) there is nothing to
   wait for.
7. **The step.** setWeight/mirror/preview: done once its traffic is applied; pause: its duration, or
   a person; analysis: ``count`` consecutive successful measurements taken during the step; switch:
   promotion.
8. **The progress deadline.** A pass that cannot go on for a reason other than time or a person
   (pods not ready, a hold at the gate, an analysis step whose latest measurement is not a success,
   waiting for labels) is *stalled*; ``status.noProgressSince`` records since when, and a stall as long
   as ``progressDeadline`` aborts (reason ``CandidateUnready`` when the pods are the cause, else
   ``ProgressDeadlineExceeded``). Timed pauses counting down, analysis collecting successes, pauses for
   a person (PausedForPromotion, AnalysisInconclusive) and a stable-unhealthy hold (aborting would send
   traffic to the broken stable) are not stalls.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.deployment.analysis import DISPLAY, Tallies, combine, judge_run, resolve_waiting
from noria.deployment.observation import Measurement, Plan, VersionPods, parse_time
from noria.deployment.plan_builder import PlanBuilder
from noria.deployment.selection import CANDIDATE_STAGE
from noria.deployment.spec import RolloutSpec
from noria.deployment.strategies import Step, Traffic, plan_steps, split_replicas, traffic_at

# Seconds a partly ready candidate keeps its traffic: a few passes at the default 2 s interval, longer
# than one failed readiness probe of a pod restarting beside a healthy one, short enough that its
# share of users is moved off before many requests queue behind fewer pods.
UNREADY_GRACE = 10.0
SUCCESSFUL, WAITING = DISPLAY["success"], DISPLAY["waiting"]


def candidate_replicas(spec: RolloutSpec, traffic: Traffic) -> int:
    """Pods of the candidate while ``traffic`` holds: all of them, except where pod counts are the
    split itself (provider ``service`` during a canary)."""
    if spec.provider == "service" and spec.strategy == "canary" and traffic.weight < 100:
        return max(1, split_replicas(traffic.weight, spec.replicas))
    return spec.replicas


def progress(b: PlanBuilder, cand: str, stable: str) -> Plan:
    spec, now, st = b.spec, b.now, b.obs.status
    assert spec is not None
    steps = plan_steps(spec)
    i = max(0, min(int(st.get("currentStep") or 0), len(steps) - 1))
    traffic = traffic_at(steps, i)
    want = candidate_replicas(spec, traffic)
    pods = b.obs.pods.get(cand)
    if pods is not None and pods.refusal is not None:
        b.abort(cand, stable, c.ARTIFACT_VERIFICATION_FAILED, pods.refusal.describe())
        return b.finish()
    b.replicas[stable] = spec.replicas
    b.replicas[cand] = want
    if pods is None or not pods.ready_for(want):
        b.promote_waits_for = f"{cand}'s pods are ready"
        return _candidate_not_ready(b, cand, stable, pods, want, i)
    if st.get("candidateUnreadySince"):
        b.status.update(candidateUnreadySince=None, stepStartedAt=c.now_iso(now))
        b.event(c.ROLLOUT_STEP_IN_PROGRESS, f"{cand}'s pods are ready again: step {i} ({steps[i].describe()}) "
                                            "starts over")
    stable_pods = b.obs.pods.get(stable)
    if stable_pods is None or not stable_pods.ready_for(spec.replicas):
        b.promote_waits_for = f"stable {stable} is ready"
        return _stable_unhealthy(b, cand, stable, stable_pods, i)
    if b.is_cond(c.DEGRADED, c.TRUE, c.ROLLOUT_STABLE_UNHEALTHY):
        b.cond(c.DEGRADED, c.FALSE, c.ROLLOUT_STEP_IN_PROGRESS, f"stable {stable} is ready again")
    return _walk(b, cand, stable, steps, i)


def _walk(b: PlanBuilder, cand: str, stable: str, steps: tuple[Step, ...], i: int) -> Plan:
    obs, spec, now, st = b.obs, b.spec, b.now, b.status
    assert spec is not None
    started = parse_time(st.get("stepStartedAt")) or now
    step = steps[i]
    tallies = Tallies.from_status(st.get("analysis"))
    last = (st.get("analysis") or {}).get("last") or {}
    inconclusive_pause = b.is_cond(c.PAUSED, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE)
    if obs.measurement is not None:
        tallies, last, aborted = _record(b, cand, stable, obs.measurement, tallies, started,
                                         paused_already=inconclusive_pause or b.paused)
        if aborted:
            return b.finish()
        inconclusive_pause = b.is_cond(c.PAUSED, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE)
    if b.paused:  # spec.paused: analysis went on above (a failure aborts); nothing moves (pause.py)
        _hold_traffic(b, stable)
        return _deadline(b, cand, stable, None)

    if obs.promote_full:
        b.promote(cand, stable, c.ROLLOUT_PROMOTED,
                  f"promoted {cand} to all traffic by noria.dev/promote=full (skipped steps {i}..{len(steps) - 1}); "
                  f"{stable} retired")
        return b.finish()
    if obs.promote:
        if inconclusive_pause:
            b.cond(c.PAUSED, c.FALSE, c.ROLLOUT_RESUMED_BY_USER, "resumed by noria.dev/promote")
        if step.kind == "switch":  # the gate held the switch itself: the person's word is the promotion
            b.promote(cand, stable, c.ROLLOUT_PROMOTED, f"promoted {cand} to all traffic by noria.dev/promote; "
                                                       f"{stable} retired")
            return b.finish()
        b.event(c.ROLLOUT_RESUMED_BY_USER, f"{cand}: promoted past step {i} ({step.describe()}) by noria.dev/promote")
        return _advance(b, cand, stable, steps, i, tallies, carry_out=True)

    latest_success = last.get("outcome") == SUCCESSFUL
    waiting = last.get("outcome") == WAITING
    target = traffic_at(steps, i)
    applied_user = int((st.get("weights") or {}).get(cand, 0))
    measurable = int(st.get("canaryWeight") or 0) > 0
    raising = step.kind == "switch" or target.weight > applied_user
    gate_open = (not raising or not spec.analysis.checks or not measurable
                 or (latest_success and tallies.consecutive_successes >= 1))
    if inconclusive_pause:
        _hold_traffic(b, stable)
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE, f"step {i} ({step.describe()}) paused")
        return _deadline(b, cand, stable, None)  # paused for a person: not a stall
    if gate_open and step.kind != "switch":
        tallies = _apply_traffic(b, cand, stable, target, tallies)
    elif not gate_open:
        _hold_traffic(b, stable)

    done, stall = False, None
    if not gate_open:
        stall = _hold_message(b, cand, i, step, applied_user, target, last, waiting)
    elif step.kind in ("setWeight", "mirror", "preview"):
        done = True
    elif step.kind == "pause":
        done = step.duration is not None and (now - started).total_seconds() >= step.duration
    elif step.kind == "analysis":
        at = parse_time(last.get("at"))
        fresh = at is not None and at > started
        done = latest_success and fresh and tallies.consecutive_successes >= step.count
        if done:
            b.event(c.ROLLOUT_ANALYSIS_PASSED, f"{cand}: analysis passed at step {i} "
                                               f"({tallies.consecutive_successes} consecutive successes)")
        elif fresh and not latest_success:
            stall = _hold_message(b, cand, i, step, applied_user, target, last, waiting)
    elif step.kind == "switch":
        b.promote(cand, stable, c.ROLLOUT_PROMOTED, f"promoted {cand} to all traffic; {stable} retired")
        return b.finish()
    if done:
        return _advance(b, cand, stable, steps, i, tallies, carry_out=False)
    if stall is None:
        _progress_message(b, cand, i, step, tallies)
        if waiting:  # not holding anything yet (a pause runs), but say what the analysis waits for
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_LABELS,
                   f"{cand}: step {i} ({step.describe()}); analysis waits for labels: {last.get('message', '')}"[:1000])
    return _deadline(b, cand, stable, stall)


def _record(b: PlanBuilder, cand: str, stable: str, m: Measurement, tallies: Tallies, started: dt.datetime,
            paused_already: bool) -> tuple[Tallies, dict[str, Any], bool]:
    """Tally one measurement and judge the run; returns (tallies, last, aborted)."""
    spec = b.spec
    assert spec is not None
    results = resolve_waiting(m.results, spec.analysis.checks, (b.now - started).total_seconds())
    outcome = combine(results)
    summary = _summary(results)
    tallies = tallies.record(outcome, spec.analysis)
    last = {"at": c.now_iso(m.at), "outcome": DISPLAY[outcome], "message": summary,
            "checks": [r.to_status() for r in results]}
    b.status["analysis"] = {**tallies.to_status(), "last": last}
    if outcome == "waiting":
        return tallies, last, False
    verdict, why = judge_run(tallies, outcome, spec.analysis)
    if verdict == "abort":
        reason = c.ROLLOUT_ANALYSIS_FAILED if tallies.failed > spec.analysis.failure_limit else c.ROLLOUT_ANALYSIS_ERRORS
        b.abort(cand, stable, reason, f"{why}: {summary}")
        return tallies, last, True
    if verdict == "pause" and not paused_already and not b.obs.promote and not b.obs.promote_full:
        b.alarm(c.PAUSED, c.TRUE, c.ROLLOUT_ANALYSIS_INCONCLUSIVE, f"{why}: {summary}", event=f"{cand}: {why}")
    elif outcome == "failure":
        # One Event per failed measurement (a new fact each interval, never one per pass).
        b.event(c.ROLLOUT_ANALYSIS_FAILED, f"{cand}: {summary}", warning=True)
    return tallies, last, False


def _advance(b: PlanBuilder, cand: str, stable: str, steps: tuple[Step, ...], i: int, tallies: Tallies,
             carry_out: bool) -> Plan:
    """Go to step i+1. ``carry_out`` (a person promoted): its traffic is applied in this pass, past
    the gate, and a switch promotes at once; the person's word covers the raise it asks for."""
    now = b.now
    i += 1
    step = steps[i]
    if carry_out and step.kind == "switch":
        b.promote(cand, stable, c.ROLLOUT_PROMOTED, f"promoted {cand} to all traffic by noria.dev/promote; "
                                                   f"{stable} retired")
        return b.finish()
    if step.kind == "analysis":
        tallies = tallies.restart_streak()  # an analysis step counts only what it measures itself
    b.status.update(currentStep=i, stepStartedAt=c.now_iso(now), noProgressSince=None)
    b.status["analysis"] = {**tallies.to_status(), "last": ((b.status.get("analysis") or {}).get("last"))}
    if carry_out:
        tallies = _apply_traffic(b, cand, stable, traffic_at(steps, i), tallies)
    b.event(c.ROLLOUT_STEP_IN_PROGRESS, f"{cand}: step {i} ({step.describe()})")
    _progress_message(b, cand, i, step, tallies)
    return b.finish()


def _apply_traffic(b: PlanBuilder, cand: str, stable: str, traffic: Traffic, tallies: Tallies) -> Tallies:
    """The step's traffic. A change restarts the success streak: the gate wants evidence about the
    traffic now in place."""
    weights = {stable: 100 - traffic.weight, cand: traffic.weight}
    applied = traffic.mirror_percent if traffic.mirror_percent else traffic.weight
    if weights != b.obs.status.get("weights") or applied != int(b.obs.status.get("canaryWeight") or 0):
        tallies = tallies.restart_streak()
        b.status["analysis"] = {**tallies.to_status(), "last": (b.status.get("analysis") or {}).get("last")}
    b.weights = weights
    b.status["weights"] = dict(weights)
    b.status["canaryWeight"] = applied
    if traffic.mirror_percent:
        b.mirror = (cand, traffic.mirror_percent)
    if traffic.preview:
        b.preview = cand
    assert b.spec is not None
    b.stage(cand, CANDIDATE_STAGE[b.spec.strategy], f"{traffic.weight}% of traffic", traffic.weight)
    b.stage(stable, ct.PRODUCTION, "stable", 100 - traffic.weight)
    return tallies


def _hold_traffic(b: PlanBuilder, stable: str) -> None:
    """Keep the traffic in place (re-applied as status has it: idempotent after a restart)."""
    weights = dict(b.obs.status.get("weights") or {stable: 100})
    b.weights = weights
    st = b.obs.status
    cand = st.get("canaryVersion")
    if cand and int(st.get("canaryWeight") or 0) and not weights.get(cand) and b.spec and b.spec.strategy == "shadow":
        b.mirror = (cand, int(st["canaryWeight"]))
    if cand and b.spec and b.spec.strategy == "blueGreen":
        b.preview = cand


def _hold_message(b: PlanBuilder, cand: str, i: int, step: Step, applied: int, target: Traffic,
                  last: dict[str, Any], waiting: bool) -> str:
    """Say why the step cannot go on (the gate or the analysis step holds); returns the stall's cause."""
    what = ("promotion" if step.kind == "switch" or target.weight >= 100 else
            f"raising {cand} from {applied}% to {target.weight}%" if target.weight > applied else f"step {i}")
    if waiting:
        message = f"{cand}: step {i} ({step.describe()}) waits for labels before {what}: {last.get('message', '')}"
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_LABELS, message[:1000])
    else:
        outcome = last.get("outcome") or "none yet"
        message = (f"{cand}: step {i} ({step.describe()}) holds {what} until a measurement succeeds "
                   f"(latest: {outcome})")
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_STEP_IN_PROGRESS, message)
    return message


def _progress_message(b: PlanBuilder, cand: str, i: int, step: Step, tallies: Tallies) -> None:
    if step.kind == "pause" and step.duration is None:
        if not b.is_cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_FOR_PROMOTION):  # one Event as it begins (notifications)
            b.event(c.ROLLOUT_PAUSED_FOR_PROMOTION,
                    f"{cand}: paused at step {i} until `kubectl noria promote {b.obs.rollout.name}`")
        b.cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_FOR_PROMOTION,
               f"step {i}: waiting for `kubectl noria promote {b.obs.rollout.name}`")
    elif b.is_cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_FOR_PROMOTION):
        b.cond(c.PAUSED, c.FALSE, c.ROLLOUT_RESUMED_BY_USER, "promoted")
    detail = ""
    if step.kind == "analysis":
        detail = f": {min(tallies.consecutive_successes, step.count)} of {step.count} consecutive successful measurements"
    b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_STEP_IN_PROGRESS, f"{cand}: step {i} ({step.describe()}){detail}")


def _candidate_not_ready(b: PlanBuilder, cand: str, stable: str, pods: VersionPods | None, want: int,
                         i: int) -> Plan:
    spec, now, st = b.spec, b.now, b.obs.status
    assert spec is not None
    ready = pods.ready if pods is not None else 0
    applied = int(st.get("canaryWeight") or 0)
    applied_user = int((st.get("weights") or {}).get(cand, 0))
    carrying = candidate_replicas(spec, Traffic(weight=applied_user))
    counted = f"{ready} of {want} pods ready"
    if applied == 0:
        _hold_traffic(b, stable)
        if st.get("candidateUnreadySince"):
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_CANDIDATE_UNREADY,
                   f"{cand} has {counted}; its traffic is on {stable} until it is ready again")
        else:
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_PODS, f"waiting for {cand}'s pods ({counted}) "
                                                                       f"before step {i}")
    elif pods is not None and pods.up_to_date and ready >= carrying:
        # Scaling up for the next step (provider service): the pods carrying today's share are ready.
        _hold_traffic(b, stable)
        b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_WAITING_FOR_PODS, f"waiting for {cand}'s pods ({counted}) "
                                                                   f"before step {i}")
    else:
        since = parse_time(st.get("candidateUnreadySince")) or now
        b.status["candidateUnreadySince"] = c.now_iso(since)
        if ready == 0 or (now - since).total_seconds() >= UNREADY_GRACE:
            b.weights = {stable: 100, cand: 0}
            b.mirror = None
            b.status.update(weights=dict(b.weights), canaryWeight=0)
            b.stage(cand, CANDIDATE_STAGE[spec.strategy], f"not ready ({counted}): no traffic", 0)
            b.stage(stable, ct.PRODUCTION, "stable", 100)
            b.alarm(c.PROGRESSING, c.TRUE, c.ROLLOUT_CANDIDATE_UNREADY,
                    f"{cand} has {counted}: its traffic moved to {stable}; aborted unless ready again within "
                    f"progressDeadline ({spec.progress_deadline:g}s)")
        else:
            _hold_traffic(b, stable)
            b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_CANDIDATE_UNREADY,
                   f"{cand} has {counted}: its traffic moves to {stable} if not ready within {UNREADY_GRACE:g}s")
    return _deadline(b, cand, stable, f"{cand}'s pods are not ready ({counted})", c.ROLLOUT_CANDIDATE_UNREADY)


def _stable_unhealthy(b: PlanBuilder, cand: str, stable: str, pods: VersionPods | None, i: int) -> Plan:
    """The candidate is ready, the stable is not. No ready stable pod: fail over to the candidate
    (a request sent to the stable would fail). Some ready: traffic stays. The step holds either way,
    and the deadline does not run: an abort would send traffic back to the broken stable."""
    spec = b.spec
    assert spec is not None
    ready = pods.ready if pods is not None else 0
    if ready == 0:
        b.weights = {stable: 0, cand: 100}
        b.mirror = None
        b.status["weights"] = dict(b.weights)
        b.stage(cand, CANDIDATE_STAGE[spec.strategy], "stable unhealthy: serving all traffic", 100)
        b.stage(stable, ct.PRODUCTION, "no ready pod: no traffic", 0)
        message = f"stable {stable} has no ready pod: all traffic on {cand} until it recovers; step {i} holds"
    else:
        _hold_traffic(b, stable)
        message = f"stable {stable} has {ready} of {spec.replicas} pods ready; step {i} holds"
    b.alarm(c.DEGRADED, c.TRUE, c.ROLLOUT_STABLE_UNHEALTHY, message)
    b.cond(c.PROGRESSING, c.TRUE, c.ROLLOUT_STABLE_UNHEALTHY, message)
    b.status["noProgressSince"] = None
    return b.finish()


def _deadline(b: PlanBuilder, cand: str, stable: str, stall: str | None,
              reason: str = c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED) -> Plan:
    """Record since when the rollout is stalled; a stall as long as progressDeadline aborts."""
    spec, now = b.spec, b.now
    assert spec is not None
    if b.paused:  # time paused never counts: noProgressSince stays as it was, moved on by the resume
        return b.finish()
    if stall is None:
        b.status["noProgressSince"] = None
        return b.finish()
    since = parse_time(b.obs.status.get("noProgressSince")) or now
    if (now - since).total_seconds() >= spec.progress_deadline:
        b.abort(cand, stable, reason, f"no progress for {(now - since).total_seconds():.0f}s "
                                      f"(progressDeadline {spec.progress_deadline:g}s): {stall}")
        return b.finish()
    b.status["noProgressSince"] = c.now_iso(since)
    return b.finish()


def _summary(results: Any) -> str:
    parts = [f"{r.name}={r.outcome}" + (f" ({r.message})" if r.message else "") for r in results]
    return "; ".join(parts)[:900] or "no checks"


def summary_of(m: Measurement) -> str:
    return _summary(m.results)
