"""The plan of one Rollout pass, built move by move, and the status summary it ends with.

``PlanBuilder`` holds what a pass has decided so far (pods, traffic, stage changes, status,
conditions, events) and offers the moves the rules are written in: start a candidate, abort it,
promote it, roll back to the previous version. ``finish`` adds what every pass owes: the Ready
condition, scale-down deadlines of versions no longer served, the stage changes that status implies
(so a ModelVersion write lost to a crash is repaired on the next pass) and the phase.

Warning Events are tied to condition transitions (``alarm``): a condition that keeps its status and
reason pass after pass posts nothing, so ``kubectl describe`` shows one Event per change.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.deployment.analysis import Tallies
from noria.deployment.observation import Observation, Plan, StageChange
from noria.deployment.pause import pause_message, paused_by_user
from noria.deployment.selection import CANDIDATE_STAGE, ROLLABLE_STAGES, last_history, stage_of

# noria.dev/promote without its prefix: the name a plan consumes.
PROMOTE = ct.ANNOTATION_PROMOTE.removeprefix(ct.PREFIX)

SERVING_CANDIDATE_STAGES = frozenset({ct.CANARY, ct.PREVIEW, ct.SHADOW})
SERVING_STAGES = SERVING_CANDIDATE_STAGES | {ct.PRODUCTION}
# Status keys that belong to one candidate's walk through the steps; cleared when it ends.
CANDIDATE_KEYS = ("canaryVersion", "currentStep", "stepStartedAt", "canaryWeight", "noProgressSince",
                  "candidateUnreadySince")


class PlanBuilder:
    """Accumulates one pass's plan; the decision modules read like the rules."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.spec = obs.spec
        self.now = obs.now
        self.status: dict[str, Any] = dict(obs.status)
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
        # spec.paused (deployment/pause.py): the moves that give a version more traffic hold.
        self.paused = bool(obs.spec is not None and obs.spec.paused)
        self.waiting: str | None = None  # a version the source selects that waits for the resume
        # The step cannot move (the candidate's pods are starting, the stable is unhealthy): what a
        # promote waits for. A promote is then kept, not consumed (``finish``), so it acts once it can.
        self.promote_waits_for: str | None = None

    # --- conditions, events, stages, verdicts ----------------------------------------------------
    def cond(self, type_: str, status: str, reason: str, message: str) -> None:
        self.conditions = c.set_condition(self.conditions, type_, status, reason, message,
                                          self.obs.generation, self.now)

    def is_cond(self, type_: str, status: str, *reasons: str) -> bool:
        cond = c.get_condition(self.conditions, type_)
        return bool(cond and cond.get("status") == status and (not reasons or cond.get("reason") in reasons))

    def alarm(self, type_: str, status: str, reason: str, message: str, event: str | None = None) -> None:
        """Set a condition that reports a problem; post its Warning Event only when (status, reason)
        changes, never again on a pass that finds the same problem."""
        changed = not self.is_cond(type_, status, reason)
        self.cond(type_, status, reason, message)
        if changed:
            self.event(reason, event or message, warning=True)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message[:1000]))

    def stage(self, version: str, stage: str, reason: str, traffic: int) -> None:
        self.stages[version] = StageChange(version, stage, reason[:1000], traffic)

    def verdict(self, version: str, stage: str, reason: str, message: str, traffic: int = 0) -> None:
        """Judge a version: the Rollout's status records it first (``lastVerdict``), and the
        ModelVersion's stage follows from it on this pass and, if that write is lost, on the next."""
        self.status["lastVerdict"] = {"version": version, "stage": stage, "reason": reason,
                                      "message": message[:1000], "at": c.now_iso(self.now)}
        self.stage(version, stage, message, traffic)

    def delay(self) -> float:
        assert self.spec is not None
        return self.spec.scale_down_delay

    # --- moves -------------------------------------------------------------------------------------
    def abandon(self, cand: str, reason: str, message: str) -> None:
        """Drop an unfinished candidate that is not failing (superseded, unpinned): back to Approved.
        A version rejected meanwhile (refused artifact, abort) stays rejected: never resurrected."""
        self.replicas.pop(cand, None)
        self.scale_down[cand] = self.now + dt.timedelta(seconds=self.delay())
        if cand in self.obs.model_versions and stage_of(self.obs.model_versions[cand]) in ROLLABLE_STAGES:
            self.stage(cand, ct.APPROVED, message, 0)
        self.event(reason, message)
        self.clear_candidate()

    def clear_candidate(self) -> None:
        for key in CANDIDATE_KEYS:
            self.status[key] = None
        if self.is_cond(c.PAUSED, c.TRUE):
            self.cond(c.PAUSED, c.FALSE, c.ROLLOUT_STEP_IN_PROGRESS, "not paused")

    def serve_only(self, stable: str) -> None:
        assert self.spec is not None
        self.replicas[stable] = self.spec.replicas
        self.weights = {stable: 100}
        self.mirror = None
        self.status["weights"] = {stable: 100}
        self.stage(stable, ct.PRODUCTION, "serving all traffic", 100)

    def abort(self, cand: str, stable: str | None, reason: str, message: str) -> None:
        """Traffic to stable, candidate scheduled for scale-down, ModelVersion rejected (kept), Degraded."""
        if stable:
            self.serve_only(stable)
        else:
            self.weights = {}
            self.status["weights"] = {}
        self.replicas.pop(cand, None)
        self.scale_down[cand] = self.now + dt.timedelta(seconds=self.delay())
        self.verdict(cand, ct.REJECTED, reason, message)
        self.clear_candidate()
        # One Warning per abort, even when Degraded already says the same reason about an earlier
        # version: an abort is a verdict on one version and happens once (the candidate is cleared).
        self.cond(c.DEGRADED, c.TRUE, reason, f"{cand} aborted: {message}")
        self.event(reason, f"aborted {cand}: {message}; traffic back on {stable or 'nothing'}", warning=True)
        self.cond(c.PROGRESSING, c.FALSE, reason, f"{cand} aborted; {stable or 'nothing'} serves all traffic")

    def start_candidate(self, cand: str, stable: str) -> None:
        assert self.spec is not None
        self.end_rollback_window()
        self.status.update(canaryVersion=cand, currentStep=0, stepStartedAt=c.now_iso(self.now), canaryWeight=0,
                           noProgressSince=None, candidateUnreadySince=None,
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
        """All traffic to ``cand``. The replaced stable keeps its pods for max(scaleDownDelay,
        rollbackWindow); with a rollbackWindow and checks, analysis goes on against ``cand`` and a
        failure sends traffic back to the replaced version (``roll_back``)."""
        assert self.spec is not None
        self.serve_only(cand)
        self.end_rollback_window()
        if stable and stable != cand:
            keep = max(self.delay(), self.spec.rollback_window)
            self.scale_down[stable] = self.now + dt.timedelta(seconds=keep)
            self.stage(stable, ct.RETIRED, f"replaced by {cand}", 0)
            if self.spec.rollback_window > 0 and self.spec.analysis.checks:
                last = (self.status.get("analysis") or {}).get("last")
                self.status.update(
                    previousVersion=stable,
                    rollbackWindowEndsAt=c.now_iso(self.now + dt.timedelta(seconds=self.spec.rollback_window)),
                    analysis={**Tallies().to_status(), "last": last})
        self.status["stableVersion"] = cand
        self.verdict(cand, ct.PRODUCTION, reason, message, 100)
        self.clear_candidate()
        self.cond(c.PROGRESSING, c.FALSE, reason, f"{cand} serves all traffic")
        self.cond(c.DEGRADED, c.FALSE, reason, "no failure")
        self.event(reason, message)

    def roll_back(self, failed: str, previous: str, message: str) -> None:
        """Inside the rollbackWindow: traffic back to the previous version at once (its pods still run),
        the failed version rejected, the previous one Production again."""
        self.serve_only(previous)
        self.stage(previous, ct.PRODUCTION, f"rolled back from {failed}", 100)
        self.replicas.pop(failed, None)
        self.scale_down[failed] = self.now + dt.timedelta(seconds=self.delay())
        self.status["stableVersion"] = previous
        self.end_rollback_window()
        self.verdict(failed, ct.REJECTED, c.ROLLOUT_ROLLED_BACK, f"rolled back to {previous}: {message}")
        self.alarm(c.DEGRADED, c.TRUE, c.ROLLOUT_ROLLED_BACK, f"{failed} rolled back to {previous}: {message}")
        self.cond(c.PROGRESSING, c.FALSE, c.ROLLOUT_ROLLED_BACK, f"{previous} serves all traffic again")

    def end_rollback_window(self) -> None:
        self.status["previousVersion"] = None
        self.status["rollbackWindowEndsAt"] = None

    # --- the end of every pass ---------------------------------------------------------------------
    def finish(self) -> Plan:
        spec = self.spec
        stable, cand = self.status.get("stableVersion"), self.status.get("canaryVersion")
        if spec is not None:
            self._ready_condition(stable)
        delete = self._scale_down_unserved(stable, cand) if spec is not None else []
        for name in delete:
            self.event(c.ROLLOUT_SCALED_DOWN, f"scaled down {name}: no longer served")
        if spec is not None:
            self._repair_stages(stable, cand)
            self._pause_conditions()
        self._keep_waiting_promote()
        self.status["conditions"] = self.conditions
        self.status["observedGeneration"] = self.obs.generation
        self.status["phase"], self.status["message"] = summarise(self.conditions)
        return Plan(
            replicas=self.replicas, weights=self.weights, mirror=self.mirror, preview=self.preview,
            scale_down=self.scale_down, delete=tuple(sorted(delete)), stage_changes=tuple(self.stages.values()),
            status=self.status, events=tuple(self.events), consume_first=tuple(self.consume_first),
            consume_last=tuple(self.consume_last),
        )

    def _keep_waiting_promote(self) -> None:
        """A promote that arrives while the step cannot move stays on the Rollout until the pass that
        acts on it consumes it, as Argo Rollouts keeps a promote of an unready canary: consumed now it
        would vanish without effect. Not while paused (refused and consumed: a person holds the Rollout
        on purpose), nor once the candidate is gone (an abort: nothing left to promote)."""
        obs = self.obs
        if (not self.promote_waits_for or not (obs.promote or obs.promote_full) or self.paused
                or not self.status.get("canaryVersion") or PROMOTE not in self.consume_first):
            return
        self.consume_first.remove(PROMOTE)
        progressing = c.get_condition(self.conditions, c.PROGRESSING)
        if progressing is not None:
            message = f"{progressing.get('message') or ''}; the promote waits until {self.promote_waits_for}"
            self.cond(c.PROGRESSING, progressing["status"], progressing["reason"], message[:1000])

    def _pause_conditions(self) -> None:
        """Paused/PausedByUser and the Progressing reason while spec.paused, whatever path the pass
        took (an abort while paused included); one Event when the pause is first seen and one when it
        ends. The Paused condition's lastTransitionTime is when the pause began (pause.resumed reads it)."""
        was = paused_by_user(self.obs.status.get("conditions"))
        progressing = c.get_condition(self.conditions, c.PROGRESSING) or {}
        if self.paused:
            message = pause_message(self.obs, self.status, self.waiting)
            self.cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_BY_USER, message)
            if not was:  # it may have been True for another reason: the pause begins now all the same
                paused = c.get_condition(self.conditions, c.PAUSED)
                assert paused is not None
                paused["lastTransitionTime"] = c.now_iso(self.now)
                self.event(c.ROLLOUT_PAUSED_BY_USER, message)
            under_way = c.TRUE if self.status.get("canaryVersion") else c.FALSE  # held mid-rollout, or steady
            self.cond(c.PROGRESSING, under_way, c.ROLLOUT_PAUSED_BY_USER, message)
        elif was:
            name = self.obs.rollout.name
            if self.is_cond(c.PAUSED, c.TRUE, c.ROLLOUT_PAUSED_BY_USER):
                self.cond(c.PAUSED, c.FALSE, c.ROLLOUT_RESUMED_BY_USER, "resumed: spec.paused is false")
            if progressing.get("reason") == c.ROLLOUT_PAUSED_BY_USER:  # no rule of this pass said otherwise
                self.cond(c.PROGRESSING, progressing.get("status") or c.FALSE, c.ROLLOUT_RESUMED_BY_USER,
                          "resumed: spec.paused is false")
            self.event(c.ROLLOUT_RESUMED_BY_USER, f"resumed by spec.paused=false (`kubectl noria resume {name}`)")

    def _ready_condition(self, stable: str | None) -> None:
        assert self.spec is not None
        if not stable:
            self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_PODS, "no version serves yet")
            return
        pods = self.obs.pods.get(stable)
        if pods is not None and pods.refusal is not None:
            # Nothing to fall back to: keep what runs, and say loudly why it is not ready.
            message = f"stable {stable}: {pods.refusal.describe()}"
            self.cond(c.READY, c.FALSE, c.ARTIFACT_VERIFICATION_FAILED, message)
            self.alarm(c.DEGRADED, c.TRUE, c.ARTIFACT_VERIFICATION_FAILED, message)
        elif pods is None or not pods.ready_for(self.spec.replicas):
            self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_PODS, f"{stable}'s pods are not all ready")
        elif not self.obs.entry_ready:
            self.cond(c.READY, c.FALSE, c.ROLLOUT_WAITING_FOR_ROUTER, f"{stable} is ready; the router is not yet")
        else:
            self.cond(c.READY, c.TRUE, c.ROLLOUT_STABLE_SERVING, f"{stable} is serving")

    def _scale_down_unserved(self, stable: str | None, cand: str | None) -> list[str]:
        """Versions that are neither stable, candidate nor the rollback target get a scale-down
        deadline, then go."""
        keep = {v for v in (stable, cand, self.status.get("previousVersion")) if v}
        delete = []
        for version, pods in self.obs.pods.items():
            if version in keep or version in self.scale_down:
                continue
            if pods.scale_down_at is None:
                self.scale_down[version] = self.now + dt.timedelta(seconds=self.delay())
            elif pods.scale_down_at <= self.now:
                delete.append(version)
        for version in (stable, cand):
            if version:
                self.scale_down.pop(version, None)
        return delete

    def _repair_stages(self, stable: str | None, cand: str | None) -> None:
        """Re-emit the ModelVersion stages this status implies, where the ModelVersion disagrees and
        this pass decided nothing about it: the last verdict's stage; Production for the stable only;
        a candidate stage for the candidate only (a version this Rollout left in Production or in a
        candidate stage without status saying so lost its write to a crash: Retired, or Approved)."""
        assert self.spec is not None
        name = self.obs.rollout.name
        implied: dict[str, tuple[str, str, int]] = {}
        by = f"rollout/{name}"
        for version, mv in self.obs.model_versions.items():
            stage = (mv.get("status") or {}).get("stage")  # most versions serve nowhere: the cheap test first
            if stage not in SERVING_STAGES or version in (stable, cand) or last_history(mv).get("by") != by:
                continue
            if stage == ct.PRODUCTION:
                implied[version] = (ct.RETIRED, f"no longer served by rollout {name}", 0)
            else:
                implied[version] = (ct.APPROVED, f"no longer a candidate of rollout {name}", 0)
        verdict = self.status.get("lastVerdict") or {}
        if verdict.get("version") and verdict.get("stage") and not (
                verdict["stage"] == ct.PRODUCTION and verdict["version"] != stable):  # since replaced
            implied[verdict["version"]] = (verdict["stage"], verdict.get("message") or verdict.get("reason") or "",
                                           100 if verdict["stage"] == ct.PRODUCTION else 0)
        weights = self.status.get("weights") or {}
        if cand and self.status.get("currentStep") is not None:
            implied[cand] = (CANDIDATE_STAGE[self.spec.strategy], "candidate", int(weights.get(cand, 0)))
        if stable:
            implied[stable] = (ct.PRODUCTION, "stable", int(weights.get(stable, 100)))
        for version, (stage, reason, traffic) in implied.items():
            mv = self.obs.model_versions.get(version)
            if version in self.stages or mv is None or stage_of(mv) == stage:
                continue
            self.stage(version, stage, reason, traffic)


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
