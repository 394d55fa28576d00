"""``kubectl noria get rollout``: a Rollout as a person checks it mid-canary. Pure: objects in, text out.

What it shows comes from what the operator wrote (status) and from the objects it runs (Deployments,
pods); the step list is the operator's own (``noria.deployment.strategies.plan_steps`` on the spec it
parses), so the list printed is the list walked, implicit final switch included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.cli.style import Node, Style, age, condition, fields, human_seconds, parse_time, tree
from noria.deployment.spec import RolloutSpecError, parse_rollout_spec
from noria.deployment.strategies import Step, plan_steps

Obj = Mapping[str, Any]


def _steps(rollout: Obj) -> tuple[Step, ...] | None:
    try:
        return plan_steps(parse_rollout_spec(rollout.get("spec") or {}))
    except RolloutSpecError:
        return None


def _current(status: Obj, steps: tuple[Step, ...]) -> int:
    """The index of the step the canary is at (the switch when status says past the last)."""
    return min(int(status.get("currentStep") or 0), len(steps) - 1)


def _strategy(rollout: Obj) -> str:
    return next(iter((rollout.get("spec") or {}).get("strategy") or {}), "?")


def _bounds(rollout: Obj) -> dict[str, str]:
    """Check name -> "min 0.8" / "max 0.05" as the spec writes them."""
    out = {}
    for check in ((rollout.get("spec") or {}).get("analysis") or {}).get("checks") or []:
        name = check.get("name") or check.get("builtin") or "?"
        parts = [f"min {check['min']}" if check.get("min") is not None else "",
                 f"max {check['max']}" if check.get("max") is not None else ""]
        out[name] = " ".join(p for p in parts if p) + (" (dry run)" if check.get("dryRun") else "")
    return out


def step_lines(rollout: Obj, now: dt.datetime, style: Style) -> list[str]:
    """The step list with the current step marked, and how long it has run (and has left)."""
    status = rollout.get("status") or {}
    steps = _steps(rollout)
    if not steps or not status.get("canaryVersion"):
        return []
    current = _current(status, steps)
    started = parse_time(status.get("stepStartedAt"))
    out = [style.paint("Steps:", "bold")]
    for i, step in enumerate(steps):
        text = step.describe() if step.kind != "switch" else "switch (all traffic, promote)"
        if i < current:
            mark, note = style.paint("✔", "green"), ""
        elif i == current:
            mark, note = style.paint("▶", "yellow"), ""
            if started:
                ran = (now - started).total_seconds()
                note = f"  running {human_seconds(ran)}"
                if step.kind == "pause" and step.duration is not None:
                    note += f", {human_seconds(max(0.0, step.duration - ran))} left"
                elif step.kind == "pause":
                    note += f", waiting for `kubectl noria promote {rollout['metadata']['name']}`"
        else:
            mark, note = " ", ""
        out.append(f"  {mark} {i:>2}  {text}{note}")
    return out


def analysis_lines(rollout: Obj, now: dt.datetime, style: Style) -> list[str]:
    status = rollout.get("status") or {}
    analysis = status.get("analysis") or {}
    spec = (rollout.get("spec") or {}).get("analysis") or {}
    counted = any(analysis.get(k) for k in ("passed", "failed", "errors", "inconclusive", "last"))
    if not spec.get("checks") and not counted:  # no analysis configured, none run
        return []
    tallies = (f"passed {analysis.get('passed') or 0}, failed {analysis.get('failed') or 0}, "
               f"errors {analysis.get('errors') or 0}, inconclusive {analysis.get('inconclusive') or 0}")
    limits = (f"failureLimit {spec.get('failureLimit', 0)}, interval {spec.get('interval', '1m')}"
              if spec else "")
    out = [style.paint("Analysis:", "bold") + f" {tallies}" + (f"  ({limits})" if limits else "")]
    last = analysis.get("last") or {}
    if last:
        when = age(last.get("at"), now)
        out.append(f"  last measurement: {style.status(last.get('outcome'))}"
                   + (f", {when} ago" if when else "") + (f": {last['message']}" if last.get("message") else ""))
        bounds = _bounds(rollout)
        checks = last.get("checks") or []
        width = max((len(ch.get("name") or "") for ch in checks), default=0) + 2
        for check in checks:
            name = check.get("name") or "?"
            value = check.get("value") if check.get("value") not in (None, "") else "-"
            line = (f"    {name.ljust(width)}{str(value).ljust(10)}{bounds.get(name, '').ljust(14)}"
                    f"{style.status(check.get('outcome'))}")
            if check.get("message"):
                line += f"  {check['message']}"
            out.append(line)
    return out


def _pod_ready(pod: Obj) -> tuple[int, int]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or []) or len(statuses)
    return sum(1 for s in statuses if s.get("ready")), total


def _pod_node(pod: Obj, now: dt.datetime) -> Node:
    ready, total = _pod_ready(pod)
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    status = phase if phase != "Running" or ready == total else "NotReady"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        status = "Terminating"
    return Node(pod["metadata"]["name"], "Pod", status, age(pod["metadata"].get("creationTimestamp"), now),
                f"ready:{ready}/{total}", icon="□")


def _deployment_node(deployment: Obj, pods: Sequence[Obj], now: dt.datetime) -> Node:
    spec_replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    status = "Ready" if ready >= spec_replicas else "Progressing"
    if spec_replicas == 0:
        status = "ScaledDown"
    labels = deployment["metadata"].get("labels") or {}
    owned = [p for p in pods if (p["metadata"].get("labels") or {}).get(ct.LABEL_VERSION) == labels.get(ct.LABEL_VERSION)
             and (p["metadata"].get("labels") or {}).get(ct.LABEL_COMPONENT) == labels.get(ct.LABEL_COMPONENT)]
    info = f"ready {ready}/{spec_replicas}"
    scale_down = (deployment["metadata"].get("annotations") or {}).get(ct.ANNOTATION_SCALE_DOWN_AT)
    if scale_down and spec_replicas:
        info += f", scale down at {scale_down}"
    return Node(deployment["metadata"]["name"], "Deployment", status,
                age(deployment["metadata"].get("creationTimestamp"), now), info, icon="⧉",
                children=[_pod_node(p, now) for p in sorted(owned, key=lambda p: p["metadata"]["name"])])


def version_roles(status: Obj) -> dict[str, str]:
    """ModelVersion name -> its role in this Rollout (stable, canary, previous)."""
    roles: dict[str, str] = {}
    for key, role in (("stableVersion", "stable"), ("canaryVersion", "canary"), ("previousVersion", "previous")):
        if status.get(key):
            roles[status[key]] = role
    return roles


def rollout_tree(rollout: Obj, model_versions: Mapping[str, Obj], deployments: Sequence[Obj], pods: Sequence[Obj],
                 now: dt.datetime) -> Node:
    """Rollout -> each version it runs (ModelVersion, its Deployment, its pods) -> the router."""
    status = rollout.get("status") or {}
    weights = status.get("weights") or {}
    roles = version_roles(status)
    servers = {(d["metadata"].get("labels") or {}).get(ct.LABEL_VERSION): d for d in deployments
               if (d["metadata"].get("labels") or {}).get(ct.LABEL_COMPONENT) == ct.COMPONENT_SERVER}
    names = list(dict.fromkeys([*roles, *weights, *(v for v in servers if v)]))
    root = Node(rollout["metadata"]["name"], "Rollout", status.get("phase") or "",
                age(rollout["metadata"].get("creationTimestamp"), now), "", icon="⟳")
    for name in names:
        mv = model_versions.get(name) or {}
        mv_status = mv.get("status") or {}
        info = [roles.get(name, ""), f"weight {weights[name]}" if name in weights else "", mv_status.get("metric") or ""]
        node = Node(name, "ModelVersion", mv_status.get("stage") or "", age((mv.get("metadata") or {}).get(
            "creationTimestamp"), now), ", ".join(i for i in info if i), icon="◆")
        if name in servers:
            node.children.append(_deployment_node(servers[name], pods, now))
        root.children.append(node)
    for d in deployments:
        if (d["metadata"].get("labels") or {}).get(ct.LABEL_COMPONENT) == ct.COMPONENT_ROUTER:
            root.children.append(_deployment_node(d, pods, now))
    return root


def render_rollout(rollout: Obj, model_versions: Mapping[str, Obj], deployments: Sequence[Obj], pods: Sequence[Obj],
                   now: dt.datetime, style: Style) -> str:
    meta, spec, status = rollout["metadata"], rollout.get("spec") or {}, rollout.get("status") or {}
    source = spec.get("source") or {}
    weights = status.get("weights") or {}
    progressing, degraded = condition(rollout, c.PROGRESSING), condition(rollout, c.DEGRADED)
    steps = _steps(rollout)

    def version(key: str) -> str:
        name = status.get(key)
        if not name:
            return ""
        stage = ((model_versions.get(name) or {}).get("status") or {}).get("stage")
        return f"{name}  {weights.get(name, 0)}%" + (f"  ({stage})" if stage else "")

    step = ""
    if status.get("canaryVersion") and steps:
        i = _current(status, steps)
        step = f"{i}/{len(steps)}  ({steps[i].describe()})"
    paused = ""
    if spec.get("paused"):
        paused = f"yes (spec.paused): held at this step; `kubectl noria resume {meta['name']}` carries on"
    verdict = status.get("lastVerdict") or {}
    rows = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Status", style.status(status.get("phase") or "Pending")),
        ("Message", status.get("message") or progressing.get("message") or ""),
        ("Paused", paused),
        ("Degraded", f"{degraded.get('reason')}: {degraded.get('message')}" if degraded.get("status") == c.TRUE else ""),
        ("Strategy", _strategy(rollout)),
        ("Source", f"pipeline {source['pipeline']}" if source.get("pipeline") else
         f"modelVersion {source.get('modelVersion')} (pinned)"),
        ("Traffic", (spec.get("traffic") or {}).get("provider", "router")),
        ("Step", step),
        ("Stable", version("stableVersion")),
        ("Canary", version("canaryVersion")),
        ("Previous", version("previousVersion") + (
            f" until {status['rollbackWindowEndsAt']}" if status.get("rollbackWindowEndsAt") else "")),
        ("Last verdict", f"{verdict.get('version')} {verdict.get('stage')} ({verdict.get('reason')}), "
         f"{age(verdict.get('at'), now)} ago: {verdict.get('message') or ''}".rstrip(": ") if verdict else ""),
    ]
    out = fields(rows, style)
    for block in (step_lines(rollout, now, style), analysis_lines(rollout, now, style)):
        if block:
            out += ["", *block]
    out += ["", *tree(rollout_tree(rollout, model_versions, deployments, pods, now), style)]
    return "\n".join(out) + "\n"


def rollout_row(rollout: Obj) -> list[str]:
    """One line of ``kubectl noria get rollout`` without a name: NAMESPACE NAME STATUS STABLE CANARY STEP."""
    status = rollout.get("status") or {}
    steps = _steps(rollout)
    step = ""
    if status.get("canaryVersion") and steps:
        step = f"{_current(status, steps)}/{len(steps)}"
    weights = status.get("weights") or {}
    canary = status.get("canaryVersion") or ""
    return [rollout["metadata"].get("namespace", ""), rollout["metadata"]["name"], status.get("phase") or "",
            status.get("stableVersion") or "", f"{canary} {weights.get(canary, 0)}%" if canary else "", step,
            "yes" if (rollout.get("spec") or {}).get("paused") else ""]
