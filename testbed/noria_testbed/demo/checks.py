"""What the story must show, decided purely from what was recorded: the timeline (requests, acts,
observed cluster state) and the objects as they ended. The demo prints these checks and exits 0
only if all hold; the e2e test asserts the same checks one by one.

The versions are found by what happened, never by assumed names: the first version is the one
the initial run trained; the recovery version is the one trained by the first drift or
performance run that started after the drift was injected; the bad candidate is whatever the
first run after the corrupted batch produced (possibly nothing, if the trainer refused it).

Nobody is on call: ``no_person_acted`` fails the story if it wrote any annotation (or patched,
labelled, edited, scaled or deleted anything) after applying the manifests, if a stage change was
made by anyone but the pipeline or the Rollout, or if the operator reports a user's act (a resume,
an abort, a retry).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from noria import conditions as c
from noria.api.common import parse_timestamp

from noria_testbed.demo import scoring

RETRAIN_TRIGGERS = ("drift", "performance")
KIND_COMMAND = "command"  # timeline record of a kubectl command the story ran: {"args": [...]}
# kubectl verbs that act on objects after the story's one-time setup (create namespace, apply).
PERSON_VERBS = ("annotate", "label", "patch", "edit", "scale", "delete", "replace", "set", "rollout")
# Rollout reasons that only a person's annotation (promote, abort, retry) produces.
PERSON_REASONS = (c.ROLLOUT_RESUMED_BY_USER, c.ROLLOUT_ABORTED_BY_USER, c.ROLLOUT_RETRIED)
ACT_DRIFT = "drift"
ACT_BAD_BATCH = "bad-batch"
ACT_RECOVERED = "recovered"
PHASE_BEFORE = "before-drift"
PHASE_DRIFTED = "drifted"
PHASE_RECOVERED = "recovered"
ACCURACY_TOLERANCE = 0.02  # the recovered accuracy must be within 2 points of the pre-drift one
COUNTERFACTUAL_DEGRADED_BY = 0.10  # "v1 kept serving" must stay at least this much worse
ROUTER_PICKUP_SECONDS = 1.0  # the router applies new weights within a second (contract)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class StoryFacts:
    """The versions and moments the checks talk about, found from the record."""

    v1: str | None = None
    detection_run: dict[str, Any] | None = None
    recovery_run: dict[str, Any] | None = None
    v2: str | None = None
    bad_run: dict[str, Any] | None = None
    bad: str | None = None
    drift_at: float | None = None
    bad_batch_at: float | None = None
    canary_share: int | None = None
    figures: dict[str, float | None] = field(default_factory=dict)


def clock(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S") if ts is not None else "never"


def parse_time(text: str | None) -> float | None:
    """A status timestamp as epoch seconds (``noria.api.common.parse_timestamp``); None when unset."""
    if not text:
        return None
    return parse_timestamp(text).timestamp()


def _act_at(records: Sequence[Mapping[str, Any]], act: str) -> float | None:
    return next((r["ts"] for r in records if r.get("kind") == "act" and r.get("act") == act), None)


def _states(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == "observation" and r.get("what") == "state"]


def stage_entered(mv: Mapping[str, Any] | None, stage: str) -> float | None:
    """When a ModelVersion first entered ``stage``, from its status history."""
    for change in ((mv or {}).get("status") or {}).get("history") or []:
        if change.get("stage") == stage:
            return parse_time(change.get("at"))
    return None


def stage_reason(mv: Mapping[str, Any] | None, stage: str) -> str:
    for change in ((mv or {}).get("status") or {}).get("history") or []:
        if change.get("stage") == stage:
            return str(change.get("reason") or "")
    return ""


def find_facts(records: Sequence[Mapping[str, Any]], tp: Mapping[str, Any], mvs: Mapping[str, Mapping[str, Any]],
               rollout: Mapping[str, Any]) -> StoryFacts:
    facts = StoryFacts(drift_at=_act_at(records, ACT_DRIFT), bad_batch_at=_act_at(records, ACT_BAD_BATCH))
    runs = sorted(((tp.get("status") or {}).get("lastRuns") or []), key=lambda r: parse_time(r.get("startedAt")) or 0)
    first = next((r for r in runs if r.get("trigger") == "initial"), None)
    facts.v1 = (first or {}).get("version")
    if facts.drift_at is not None:
        facts.detection_run = next((r for r in runs if r.get("trigger") in RETRAIN_TRIGGERS
                                    and (parse_time(r.get("startedAt")) or 0) >= facts.drift_at - 1), None)
        # The version Noria settled on after the change (the story records it when it measures the
        # recovered accuracy); a coalesced follow-up run may have produced it instead of the first.
        recovered = next((r for r in records if r.get("kind") == "act" and r.get("act") == ACT_RECOVERED), None)
        facts.v2 = (recovered or {}).get("version") or (facts.detection_run or {}).get("version")
        facts.recovery_run = next((r for r in runs if r.get("version") == facts.v2), None) if facts.v2 else None
    if facts.bad_batch_at is not None:
        facts.bad_run = next((r for r in runs if is_bad_batch_run(r, facts.bad_batch_at)), None)
        facts.bad = (facts.bad_run or {}).get("version")
    steps = (((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}).get("steps") or []
    facts.canary_share = next((s["setWeight"] for s in steps if s.get("setWeight")), None)
    return facts


def weights_seen(records: Sequence[Mapping[str, Any]], version: str) -> list[tuple[float, int]]:
    """(ts, weight) of ``version`` in every recorded state: the router's configured weight, and the
    Rollout's status.weights (0 when absent). Both count: either one above a bound is a breach."""
    out = []
    for r in _states(records):
        rollout = r.get("rollout") or {}
        for weights in (rollout.get("router") or {}, rollout.get("weights") or {}):
            out.append((r["ts"], int(weights.get(version, 0))))
    return out


def router_off_at(records: Sequence[Mapping[str, Any]], version: str) -> float | None:
    """When the router's weights were first seen dropping ``version`` to 0 after it had traffic."""
    had = False
    for r in _states(records):
        weight = int(((r.get("rollout") or {}).get("router") or {}).get(version, 0))
        if weight > 0:
            had = True
        elif had:
            return float(r["ts"])
    return None


def _share_bound(p: float, n: int) -> float:
    """The largest share of ``n`` answers a version at weight ``p`` plausibly gets (3 sigma + 2 points)."""
    return p + 3 * math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1)) + 0.02


def is_bad_batch_run(run: Mapping[str, Any], bad_batch_at: float) -> bool:
    """The run after the corrupted batch: any trigger but the initial one (the pipeline's newData
    trigger; a drift or performance trigger pending at the same time would name the run instead)."""
    return run.get("trigger") != "initial" and (parse_time(run.get("startedAt")) or 0) >= bad_batch_at - 1


def no_person_acted(records: Sequence[Mapping[str, Any]], tp: Mapping[str, Any],
                    mvs: Mapping[str, Mapping[str, Any]], rollout: Mapping[str, Any],
                    events: Sequence[Mapping[str, Any]] = ()) -> Check:
    """The loop ran on its own: what the story did, who changed stages, what the operator reported."""
    acts = []
    for r in records:
        args = [str(a) for a in r.get("args") or []]
        if r.get("kind") == KIND_COMMAND and len(args) > 1 and args[1] in PERSON_VERBS:
            acts.append(" ".join(args)[:120])
        if r.get("kind") == "act" and r.get("act") == "on-call":
            acts.append(f"on call: {r.get('message')}")
    noria = {f"pipeline/{(tp.get('metadata') or {}).get('name')}", f"rollout/{(rollout.get('metadata') or {}).get('name')}"}
    for name, mv in sorted(mvs.items()):
        for change in ((mv.get("status") or {}).get("history") or []):
            if change.get("by") not in noria:
                acts.append(f"{name} {change.get('stage')} by {change.get('by')}")
    for e in events:
        if e.get("reason") in PERSON_REASONS:
            acts.append(f"event {e.get('reason')}: {e.get('message', '')[:80]}")
    commands = sum(1 for r in records if r.get("kind") == KIND_COMMAND)
    return Check("no person acted: no annotation, every stage change by Noria", not acts and commands > 0,
                 f"{len(acts)} manual act(s): {'; '.join(acts[:5])}" if acts
                 else f"{commands} kubectl command(s), all setup (create, apply); stage changes only by {sorted(noria)}")


def evaluate(records: Sequence[Mapping[str, Any]], tp: Mapping[str, Any], mvs: Mapping[str, Mapping[str, Any]],
             rollout: Mapping[str, Any], counterfactual: pd.Series | None = None,
             events: Sequence[Mapping[str, Any]] = ()) -> tuple[list[Check], StoryFacts]:
    """Every check of the story, in the story's order, and the facts they were decided on.

    ``counterfactual``: the v1 model's predictions for the request frame's rows (same order)."""
    facts = find_facts(records, tp, mvs, rollout)
    checks: list[Check] = []
    frame = scoring_frame(records)

    # Act 1: the first version is trained, approved and served.
    v1 = mvs.get(facts.v1 or "")
    approved, production = stage_entered(v1, "Approved"), stage_entered(v1, "Production")
    checks.append(Check("v1 trained by the initial run, approved and served",
                        bool(v1) and approved is not None and production is not None and approved <= production,
                        f"{facts.v1}: Approved at {clock(approved)}, Production at {clock(production)}"))

    # Act 2: drift is seen, a retrain follows for that reason, and a new version goes to 100% by canary.
    detection = facts.detection_run or {}
    detected = parse_time(detection.get("startedAt"))
    checks.append(Check("drift or F1 drop detected after the drift was injected, and a retrain started for it",
                        facts.drift_at is not None and detected is not None and detected >= facts.drift_at - 1,
                        f"run {detection.get('id')} trigger {detection.get('trigger')} started "
                        f"{(detected - facts.drift_at) if detected and facts.drift_at else float('nan'):.0f}s after "
                        f"the injection"))
    run = facts.recovery_run or {}
    started = parse_time(run.get("startedAt"))
    v2 = mvs.get(facts.v2 or "")
    v2_approved = stage_entered(v2, "Approved")
    v2_canary = stage_entered(v2, "Canary")
    v2_production = stage_entered(v2, "Production")
    ordered = [t for t in (started, v2_approved, v2_canary, v2_production) if t is not None]
    checks.append(Check("the retrained version passed the gate and went Approved -> Canary -> Production",
                        run.get("outcome") == "Succeeded" and run.get("trigger") in RETRAIN_TRIGGERS
                        and len(ordered) == 4 and ordered == sorted(ordered),
                        f"{facts.v2} from run {run.get('id')} ({run.get('trigger')}): outcome {run.get('outcome')}, metrics {((v2 or {}).get('spec') or {}).get('metrics')}"
                        f", Approved {clock(v2_approved)}, Canary {clock(v2_canary)}, Production {clock(v2_production)}"))
    steps = sorted({w for _, w in weights_seen(records, facts.v2 or "")})
    partial = [w for w in steps if 0 < w < 100]
    checks.append(Check("the canary moved traffic to the new version in steps, ending at 100%",
                        bool(partial) and 100 in steps,
                        f"weights of {facts.v2} seen: {steps}"))
    retired = stage_entered(v1, "Retired")
    checks.append(Check("v1 retired after the new version took over",
                        retired is not None and v2_production is not None and retired >= v2_production - 1,
                        f"{facts.v1} Retired at {clock(retired)}"))

    # No request failed while versions changed (nor at any other time once serving began).
    serving_from = production or 0.0
    served = frame[frame["ts"] >= serving_from]
    failed = served[served["status"] != 200]
    checks.append(Check("no prediction request failed during the rollouts",
                        len(served) > 0 and failed.empty,
                        f"{len(failed)} of {len(served)} requests failed"
                        + (f"; first: {failed.iloc[0]['status']} {failed.iloc[0].get('error')}" if not failed.empty
                           else "")))

    # Accuracy: recovery to within 2 points; the counterfactual stays degraded.
    before = scoring.score(*_labels_and(frame, "prediction", PHASE_BEFORE))
    drifted_part = frame[(frame["phase"] == PHASE_DRIFTED) & (frame["version"] == facts.v1)]
    drifted = scoring.score(drifted_part["label"], drifted_part["prediction"])
    # After recovery: the answers the recovered version gave once it served everyone (a later
    # candidate's canary share is judged by its own checks below).
    recovered = frame.assign(counterfactual=counterfactual.to_numpy()) if (
        counterfactual is not None and len(counterfactual) == len(frame)) else frame
    recovered = recovered[(recovered["phase"] == PHASE_RECOVERED) & (recovered["version"] == facts.v2)]
    after = scoring.score(recovered["label"], recovered["prediction"])
    cf_after = (scoring.score(recovered["label"], recovered["counterfactual"])
                if "counterfactual" in recovered else None)
    facts.figures.update({"accuracy_before_drift": before.accuracy, "accuracy_after_drift_v1": drifted.accuracy,
                          "accuracy_after_recovery": after.accuracy,
                          "counterfactual_v1_after_recovery": cf_after.accuracy if cf_after else None,
                          "f1_before_drift": before.f1, "f1_after_drift_v1": drifted.f1,
                          "f1_after_recovery": after.f1})
    checks.append(Check("accuracy after recovery within 2 points of its pre-drift level",
                        before.accuracy is not None and after.accuracy is not None
                        and after.accuracy >= before.accuracy - ACCURACY_TOLERANCE,
                        f"before drift {before.text()}; after recovery {after.text()}"))
    if cf_after is not None:
        checks.append(Check("the counterfactual 'v1 kept serving' stays degraded",
                            before.accuracy is not None and cf_after.accuracy is not None
                            and cf_after.accuracy <= before.accuracy - COUNTERFACTUAL_DEGRADED_BY,
                            f"v1 on the same recovered-phase requests: {cf_after.text()}"))

    # Act 3: the bad candidate is refused (gate, failed run, or canary analysis); users stay on v2.
    bad_run = facts.bad_run or {}
    bad = mvs.get(facts.bad or "")
    bad_stage = ((bad or {}).get("status") or {}).get("stage")
    refused = (bad_run.get("outcome") in ("Rejected", "Failed")) or bad_stage == "Rejected"
    how = ("refused by the gate" if bad_run.get("outcome") == "Rejected"
           else "training failed" if bad_run.get("outcome") == "Failed"
           else "rolled back by the canary analysis" if stage_entered(bad, "Canary") else "")
    checks.append(Check("the candidate trained on corrupted labels was refused",
                        bool(bad_run) and refused,
                        f"run {bad_run.get('id')} ({bad_run.get('trigger')}) outcome {bad_run.get('outcome')}; "
                        f"{facts.bad} stage {bad_stage} {how}: "
                        f"{((bad or {}).get('status') or {}).get('message') or bad_run.get('message', '')}"))
    final_status = rollout.get("status") or {}
    checks.append(Check("users stay on the good version",
                        final_status.get("stableVersion") == facts.v2
                        and (final_status.get("weights") or {}).get(facts.v2 or "") == 100,
                        f"stable {final_status.get('stableVersion')}, weights {final_status.get('weights')}"))
    if facts.bad:
        share = (facts.canary_share or 0) / 100
        max_weight = max((w for _, w in weights_seen(records, facts.bad)), default=0)
        answered = frame[(frame["status"] == 200) & frame["version"].notna()]
        by_bad = answered[answered["version"] == facts.bad]
        if by_bad.empty and max_weight == 0:
            checks.append(Check("the bad candidate never got more than its canary share", True,
                                f"{facts.bad} never served: it was refused before any traffic reached it"))
            measured, bound, n = 0.0, share, -1
        elif by_bad.empty:
            measured, bound, n = 0.0, share, 0
        else:
            window = answered[(answered["ts"] >= by_bad["ts"].min()) & (answered["ts"] <= by_bad["ts"].max())]
            n = len(window)
            measured = len(by_bad) / max(n, 1)
            bound = _share_bound(share, n)
        if n >= 0:
            checks.append(Check("the bad candidate never got more than its canary share",
                            max_weight <= (facts.canary_share or 0) and measured <= bound,
                                f"largest weight {max_weight}% (canary step {facts.canary_share}%); answered "
                                f"{len(by_bad)} of {n} requests while it served ({measured:.1%}, bound {bound:.1%})"))
        rejected_at = stage_entered(bad, "Rejected")
        # Traffic leaves a version when the router's weights drop it (the router applies a new
        # config within ROUTER_PICKUP_SECONDS); the stage's timestamp is cut to the second and is
        # written in the same pass, so the router's ConfigMap is the precise clock.
        off_at = router_off_at(records, facts.bad)
        limit = (off_at + ROUTER_PICKUP_SECONDS if off_at is not None
                 else (rejected_at + 2 * ROUTER_PICKUP_SECONDS if rejected_at is not None else None))
        late = by_bad[by_bad["ts"] > limit] if limit is not None else by_bad.iloc[0:0]
        checks.append(Check("no request answered by the bad candidate after it was rejected",
                            rejected_at is not None and late.empty,
                            f"{len(late)} answers sent more than {ROUTER_PICKUP_SECONDS:g}s after the router dropped "
                            f"{facts.bad} (at {clock(off_at)}; Rejected at {clock(rejected_at)})"))

    # Nobody on call: the loop decided everything after the manifests were applied.
    checks.append(no_person_acted(records, tp, mvs, rollout, events))

    # Timing figures for the note.
    facts.figures["drift_to_retrain_start_s"] = (detected - facts.drift_at) if detected and facts.drift_at else None
    facts.figures["drift_to_v2_full_s"] = ((v2_production - facts.drift_at) if v2_production and facts.drift_at
                                           else None)
    return checks, facts


def scoring_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    from noria_testbed.demo.traffic import requests_frame

    return requests_frame(records)


def _labels_and(frame: pd.DataFrame, column: str, phase: str) -> tuple[pd.Series, pd.Series]:
    part = frame[frame["phase"] == phase]
    return part["label"], part[column]
