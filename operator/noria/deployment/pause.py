"""``spec.paused``: a person holds a Rollout where it is (``kubectl noria pause``) and lets it go on
(``kubectl noria resume``), as Argo Rollouts' ``spec.paused``.

What a pause holds (``decide`` and ``step_machine`` apply it; the pure pieces are here):

- **held**: no step advances and a timed pause step does not count down; nothing is promoted, by
  time or by ``noria.dev/promote`` (consumed and refused with a Warning Event that says to resume
  first: a promote that fired later, on resume, would surprise the person who sent it); no new
  candidate starts (a newer version waits for the resume) and no first deployment; the weights, the
  analysis tallies and the pods stay as they are.
- **not held**, because each takes a version *away* from users rather than giving it more: an abort
  (``noria.dev/abort``); analysis, which goes on measuring every interval (as Argo Rollouts keeps its
  AnalysisRuns running while paused) and aborts a run that fails or errors past its limits -- a pause
  is a person looking, not a licence to keep serving a failing version; a refused artifact; a
  candidate whose pods stop being ready (its traffic goes to the stable); a stable with no ready pod
  (fail over); the source no longer selecting anything; the rollbackWindow.
- **time**: the pause begins at the ``lastTransitionTime`` of the Paused condition with reason
  ``PausedByUser`` (set to that pass's time even when Paused was already True for another reason).
  Paused time never counts toward progressDeadline (``noProgressSince`` is left alone while paused),
  and the pass that sees the resume moves ``stepStartedAt`` and ``noProgressSince`` forward by the
  time paused, so a timed pause step carries on with the time it had left.

Status while paused: Paused=True and the Progressing condition's reason ``PausedByUser`` (its status
kept: True mid-rollout, False when steady), phase Paused unless Degraded; one Event ``PausedByUser``
when the pause is first seen and one ``ResumedByUser`` when it ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from noria import conditions as c
from noria.deployment.observation import Observation, parse_time
from noria.deployment.strategies import plan_steps

# Timers of a candidate's walk that stand still while paused (see the module docstring).
PAUSE_SHIFTED_KEYS = ("stepStartedAt", "noProgressSince")


def paused_by_user(conditions: list[dict[str, Any]] | None) -> bool:
    """Whether the last written status says the Rollout is paused by its spec."""
    paused = c.get_condition(conditions, c.PAUSED)
    return bool(paused and paused.get("status") == c.TRUE and paused.get("reason") == c.ROLLOUT_PAUSED_BY_USER)


def paused_since(conditions: list[dict[str, Any]] | None) -> dt.datetime | None:
    """When the pause began (None when the status does not say it is paused)."""
    if not paused_by_user(conditions):
        return None
    return parse_time((c.get_condition(conditions, c.PAUSED) or {}).get("lastTransitionTime"))


def resumed(obs: Observation) -> Observation:
    """The observation the resume pass decides from: the candidate's timers moved forward by the time
    paused. Unchanged when nothing was paused or the spec still pauses. Computed from the observed
    status, so a resume pass dropped before its status write (a 409, a crash) shifts the same again."""
    spec, status = obs.spec, obs.status
    if spec is None or spec.paused or not status.get("canaryVersion"):
        return obs
    since = paused_since(status.get("conditions"))
    if since is None:
        return obs
    paused_for = max(obs.now - since, dt.timedelta(0))
    shifted = dict(status)
    for key in PAUSE_SHIFTED_KEYS:
        at = parse_time(status.get(key))
        if at is not None:
            shifted[key] = c.now_iso(min(at + paused_for, obs.now))
    return dataclasses.replace(obs, status=shifted)


def pause_message(obs: Observation, status: Mapping[str, Any], waiting: str | None) -> str:
    """Where the Rollout is held, and the command that lets it go on."""
    assert obs.spec is not None
    cand, stable, step = status.get("canaryVersion"), status.get("stableVersion"), status.get("currentStep")
    if cand and stable and step is not None:
        steps = plan_steps(obs.spec)
        i = max(0, min(int(step), len(steps) - 1))
        where = f"at step {i} ({steps[i].describe()}) of {cand}"
    elif cand:
        where = f"before {cand}'s first deployment serves"
    elif stable:
        where = f"with {stable} serving"
    else:
        where = "before the first deployment"
    also = f"; {waiting} waits for the resume" if waiting and waiting not in (cand, stable) else ""
    return f"paused {where} by spec.paused{also}: `kubectl noria resume {obs.rollout.name}` carries on"
