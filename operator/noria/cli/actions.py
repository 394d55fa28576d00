"""What each write command sends, and what the person is told will happen. Pure: objects in, patch out.

Every command writes exactly what the operator reads, named from ``noria.contracts`` (annotations)
or the Rollout's ``spec.paused``; nothing else. A command the object's state makes pointless or
wrong (promote with no canary, retry when nothing was aborted, approve a version in Production) is
refused here, before any write, with the reason and what to do instead: an annotation the operator
would drop without acting leaves the person believing something happened.

Refusals follow the operator's own rules (``noria.deployment.selection.retry_target`` decides which
version a retry brings back, ``noria.contracts.APPROVABLE_STAGES`` which versions take an approval),
so the CLI and the operator cannot disagree about what a command would do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.cli.style import condition, parse_time
from noria.deployment.selection import retry_target
from noria.deployment.spec import RolloutSpecError, parse_rollout_spec
from noria.deployment.strategies import plan_steps

Obj = Mapping[str, Any]


class Refused(Exception):
    """The command does not fit the object's kind or state; the message says why and what to do."""


@dataclass(frozen=True)
class Action:
    """A merge patch of the object, and the sentence saying what the operator will do with it.
    ``patch`` None: nothing to write (already so), the message says that."""

    patch: dict[str, Any] | None
    message: str


def _annotate(key: str, value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {key: value}}}


def _name(obj: Obj) -> str:
    return obj["metadata"]["name"]


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _paused_refusal(rollout: Obj, verb: str) -> None:
    if (rollout.get("spec") or {}).get("paused"):
        raise Refused(f"rollout {_name(rollout)} is paused (spec.paused): nothing {verb} while paused; "
                      f"`kubectl noria resume {_name(rollout)}` first")


def promote(rollout: Obj, full: bool = False) -> Action:
    """``noria.dev/promote=true`` (past the current step once) or ``=full`` (every remaining step)."""
    name, status = _name(rollout), _status(rollout)
    canary, stable = status.get("canaryVersion"), status.get("stableVersion")
    if not canary:
        served = f"{stable} serves all traffic" if stable else "nothing is being rolled out"
        raise Refused(f"rollout {name} has no canary to promote: {served}. A new version starts a rollout "
                      "(approve one, or retrain the pipeline)")
    _paused_refusal(rollout, "is promoted")
    if full:
        return Action(_annotate(ct.ANNOTATION_PROMOTE, ct.PROMOTE_FULL),
                      f"rollout {name}: {canary} skips every remaining step and takes all traffic"
                      + (f"; {stable} retires" if stable else "") + " (once its pods are ready)")
    try:
        steps = plan_steps(parse_rollout_spec(rollout.get("spec") or {}))
    except RolloutSpecError as exc:
        raise Refused(f"rollout {name} has an invalid spec, so the operator would not act: {exc}") from exc
    i = min(int(status.get("currentStep") or 0), len(steps) - 1)
    nxt = steps[i + 1] if i + 1 < len(steps) else None
    after = ("the switch: " + canary + " takes all traffic" if nxt is None or nxt.kind == "switch"
             else f"step {i + 1} ({nxt.describe()})")
    return Action(_annotate(ct.ANNOTATION_PROMOTE, ct.PROMOTE_ONCE),
                  f"rollout {name}: {canary} goes past step {i} ({steps[i].describe()}) to {after}, "
                  "whatever the analysis says (once its pods are ready)")


def abort(rollout: Obj) -> Action:
    name, status = _name(rollout), _status(rollout)
    canary, stable = status.get("canaryVersion"), status.get("stableVersion")
    if not canary:
        raise Refused(f"rollout {name} has nothing to abort: " + (f"{stable} serves all traffic" if stable else
                                                                   "no version is being rolled out"))
    back = f"all traffic goes back to {stable}" if stable else "its traffic stops"
    return Action(_annotate(ct.ANNOTATION_ABORT, "true"),
                  f"rollout {name}: {back}, {canary} is scaled down and becomes Rejected "
                  f"({c.ROLLOUT_ABORTED_BY_USER}); `kubectl noria retry {name}` brings it back")


def retry(rollout: Obj, model_versions: Mapping[str, Obj]) -> Action:
    """Only when the operator would find a version to bring back (the same rule it applies)."""
    name = _name(rollout)
    try:
        spec = parse_rollout_spec(rollout.get("spec") or {})
    except RolloutSpecError as exc:
        raise Refused(f"rollout {name} has an invalid spec, so the operator would not act: {exc}") from exc
    target = retry_target(spec, name, model_versions)
    if target is None:
        raise Refused(f"rollout {name} has nothing to retry: no version of it was aborted or rolled back by it")
    history = (_status(model_versions[target]).get("history") or [{}])[-1]
    why = f" (rejected: {history['reason']})" if history.get("reason") else ""
    return Action(_annotate(ct.ANNOTATION_RETRY, "true"),
                  f"rollout {name}: {target}{why} is Approved again and walks the steps from the first")


def pause(rollout: Obj) -> Action:
    name = _name(rollout)
    if (rollout.get("spec") or {}).get("paused"):
        return Action(None, f"rollout {name} is already paused")
    where = ""
    status = _status(rollout)
    if status.get("canaryVersion"):
        where = f" at step {status.get('currentStep') or 0} with {status['canaryVersion']} at " \
                f"{(status.get('weights') or {}).get(status['canaryVersion'], 0)}%"
    return Action({"spec": {"paused": True}},
                  f"rollout {name} holds{where}: no step advances and nothing is promoted until "
                  f"`kubectl noria resume {name}`; weights and pods stay, abort still works")


def resume(rollout: Obj) -> Action:
    name = _name(rollout)
    if not (rollout.get("spec") or {}).get("paused"):
        return Action(None, f"rollout {name} is not paused")
    return Action({"spec": {"paused": False}}, f"rollout {name} carries on from the step it was held at")


def _judge(mv: Obj, user: str, key: str, verb: str) -> Action:
    name, stage = _name(mv), _status(mv).get("stage")
    if stage not in ct.APPROVABLE_STAGES:
        now = f"is {stage}" if stage else "has no stage yet (the operator has not seen it)"
        raise Refused(f"modelversion {name} {now}: only a version in stage "
                      f"{' or '.join(ct.APPROVABLE_STAGES)} can be {verb}")
    annotations = mv["metadata"].get("annotations") or {}
    if key == ct.ANNOTATION_APPROVE and annotations.get(ct.ANNOTATION_REJECT):
        raise Refused(f"modelversion {name} already carries {ct.ANNOTATION_REJECT}="
                      f"{annotations[ct.ANNOTATION_REJECT]}, and a reject wins over an approve")
    outcome = ct.APPROVED if key == ct.ANNOTATION_APPROVE else ct.REJECTED
    then = ("a Rollout following its pipeline starts rolling it out" if outcome == ct.APPROVED
            else "no Rollout serves it")
    return Action(_annotate(key, user), f"modelversion {name}: {stage} -> {outcome}, recorded as by user/{user}; {then}")


def approve(mv: Obj, user: str) -> Action:
    """``noria.dev/approve=<user>``: the caller's own user name, as the chart's admission policy requires."""
    return _judge(mv, user, ct.ANNOTATION_APPROVE, "approved")


def reject(mv: Obj, user: str) -> Action:
    return _judge(mv, user, ct.ANNOTATION_REJECT, "rejected")


def retrain_value(user: str | None, now: dt.datetime) -> str:
    """A value never written before (the operator runs once per new value): who asked, and when."""
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{user} {stamp}" if user else stamp


def retrain(pipeline: Obj, value: str, now: dt.datetime) -> Action:
    name, status = _name(pipeline), _status(pipeline)
    degraded = condition(pipeline, c.DEGRADED)
    if degraded.get("status") == c.TRUE and degraded.get("reason") in (c.INVALID_SPEC, c.DATA_SOURCE_OUT_OF_SCOPE):
        raise Refused(f"pipeline {name} cannot run: {degraded.get('reason')}: {degraded.get('message')}")
    run = status.get("currentRun") or {}
    until = parse_time(status.get("cooldownUntil"))
    if run:
        when = f"after run {run.get('id')} (in progress) ends"
    elif until and until > now:
        when = f"when the cooldown ends at {status['cooldownUntil']}"
    else:
        when = "now"
    return Action(_annotate(ct.ANNOTATION_RETRAIN, value),
                  f"pipeline {name}: one more training run ({ct.ANNOTATION_RETRAIN}={value!r}) starts {when}")
