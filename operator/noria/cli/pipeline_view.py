"""``kubectl noria get pipeline`` and ``get version``. Pure: objects in, text out.

The triggers' live values are the ones the operator wrote in ``status.triggers.<kind>`` on its last
pass (``noria.training.triggers`` documents each kind's state): the CLI never asks Prometheus, so
what it prints is what the operator decided on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria.cli.style import Style, age, clock, condition, fields, human_seconds, parse_time

Obj = Mapping[str, Any]


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 2 for i in range(len(header))]
    return [indent + "".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _state_word(state: Obj, style: Style) -> str:
    word = state.get("state")
    return f" [{style.status(word)}]" if word else ""


def _held(state: Obj, for_text: str | None, now: dt.datetime) -> str:
    since = parse_time(state.get("since"))
    if not since:
        return ""
    held = human_seconds((now - since).total_seconds())
    return f", for {held}" + (f" of {for_text}" if for_text else "")


def trigger_lines(pipeline: Obj, now: dt.datetime, style: Style) -> list[str]:
    """Each configured trigger with its live value against its threshold, from status.triggers."""
    spec = (pipeline.get("spec") or {}).get("triggers") or {}
    state = (pipeline.get("status") or {}).get("triggers") or {}
    annotations = pipeline["metadata"].get("annotations") or {}
    out: list[str] = []
    if spec.get("schedule"):
        nxt = (state.get("schedule") or {}).get("next")
        left = parse_time(nxt)
        out.append(f"  schedule     {spec['schedule']!r}: next run {clock(nxt)}"
                   + (f" (in {human_seconds((left - now).total_seconds())})" if left and left > now else ""))
    if spec.get("newData"):
        nd = state.get("newData") or {}
        need = spec["newData"].get("minNewRows")
        base = (nd.get("baseline") or {}).get("rows")
        if nd.get("error"):
            out.append(f"  newData      data source unreadable: {nd['error']}")
        elif nd.get("rows") is not None and base is not None:
            out.append(f"  newData      {int(nd['rows']) - int(base)} new rows of {need} needed "
                       f"({nd['rows']} in total, observed {age(nd.get('observedAt'), now)} ago)")
        else:
            out.append(f"  newData      {need} new rows needed; not observed yet")
    if spec.get("drift"):
        out += _drift_lines(spec["drift"], state.get("drift") or {}, now, style)
    if spec.get("performance"):
        out += _performance_lines(spec["performance"], state.get("performance") or {}, now, style)
    manual = state.get("manual") or {}
    asked = annotations.get(ct.ANNOTATION_RETRAIN)
    if asked or manual.get("handled"):
        line = f"  manual       {ct.ANNOTATION_RETRAIN}={asked!r}" if asked else "  manual      "
        if manual.get("handled") and manual.get("handled") == asked:
            line += f" handled {age(manual.get('handledAt'), now)} ago"
        elif asked:
            line += " waiting to be handled"
        out.append(line)
    until = (pipeline.get("status") or {}).get("cooldownUntil")
    cooldown = parse_time(until)
    if spec.get("cooldown"):
        remaining = (cooldown - now).total_seconds() if cooldown else 0.0
        after = f"{human_seconds(remaining)} left (until {clock(until)})" if remaining > 0 else "over"
        out.append(f"  cooldown     {spec['cooldown']}: {after}")
    return ([style.paint("Triggers:", "bold"), *out]) if out else []


def _drift_lines(spec: Obj, state: Obj, now: dt.datetime, style: Style) -> list[str]:
    method, threshold = state.get("method") or spec.get("method", "psi"), spec.get("threshold")
    if state.get("state") in (None, "NotObserved", "NoReference", "Unknown") and not state.get("features"):
        why = state.get("message") or {"NoReference": "no champion to compare with",
                                        "Unknown": "cannot be evaluated"}.get(state.get("state") or "", "not observed yet")
        return [f"  drift        {method} > {threshold}: {why}{_state_word(state, style)}"]
    line = f"  drift        {method} > {threshold}"
    if state.get("value") is not None:
        line += f": largest {state['value']} on {state.get('feature')}"
    line += (f" ({state.get('samples', 0)} live values, {state.get('tested', 0)} feature(s) tested, "
             f"{state.get('drifted', 0)} drifted{_held(state, spec.get('for'), now)})")
    out = [line + _state_word(state, style)]
    rows = [[f.get("feature", ""), f.get("value", ""), str(threshold), f.get("pValue") or "-", str(f.get("samples", "")),
             "yes" if f.get("drifted") else "no"] for f in state.get("features") or []]
    if rows:
        out += _table(["FEATURE", method.upper(), "THRESHOLD", "P-VALUE", "SAMPLES", "DRIFTED"], rows, indent="    ")
    return out


def _performance_lines(spec: Obj, state: Obj, now: dt.datetime, style: Style) -> list[str]:
    metric = state.get("metric") or spec.get("metric")
    goals = [f"below {spec['below']}" if spec.get("below") is not None else "",
             f"dropBy {spec['dropBy']}" if spec.get("dropBy") is not None else ""]
    goal = " or ".join(g for g in goals if g)
    if state.get("value") is None:
        labels = state.get("labels")
        why = (f"{labels} labels of {spec.get('minLabels', 100)} needed" if labels is not None
               else state.get("message") or "not observed yet")
        return [f"  performance  live {metric} ({goal}): {why}{_state_word(state, style)}"]
    line = f"  performance  live {metric} {state['value']} ({goal}) over {state.get('labels')} labels"
    if (state.get("baseline") or {}).get("value"):
        line += f", baseline {state['baseline']['value']}"
    return [line + _held(state, spec.get("for"), now) + _state_word(state, style)]


def runs_table(pipeline: Obj, now: dt.datetime, style: Style, limit: int | None = None) -> list[str]:
    runs = list((pipeline.get("status") or {}).get("lastRuns") or [])[:limit]
    if not runs:
        return []
    rows = [[r.get("id", ""), r.get("trigger") or "", r.get("outcome") or "",
             clock(r.get("startedAt")), r.get("duration") or "", r.get("version") or "-",
             (r.get("reason") or "") + (f": {r['message']}" if r.get("message") else "")] for r in runs]
    return _table(["RUN", "TRIGGER", "OUTCOME", "STARTED (UTC)", "DURATION", "VERSION", "REASON"], rows)


def versions_table(model_versions: Sequence[Obj], now: dt.datetime) -> list[str]:
    def number(mv: Obj) -> int:
        try:
            return int((mv.get("spec") or {}).get("version") or 0)
        except (TypeError, ValueError):
            return 0

    rows = [[mv["metadata"]["name"], (mv.get("status") or {}).get("stage") or "",
             f"{(mv.get('status') or {}).get('traffic')}%" if (mv.get("status") or {}).get("traffic") is not None else "-",
             (mv.get("status") or {}).get("metric") or "", ((mv.get("spec") or {}).get("lineage") or {}).get("trigger") or "",
             age(mv["metadata"].get("creationTimestamp"), now)]
            for mv in sorted(model_versions, key=number, reverse=True)]
    return _table(["VERSION", "STAGE", "TRAFFIC", "METRIC", "TRIGGER", "AGE"], rows) if rows else []


def render_pipeline(pipeline: Obj, model_versions: Sequence[Obj], now: dt.datetime, style: Style) -> str:
    meta, spec, status = pipeline["metadata"], pipeline.get("spec") or {}, pipeline.get("status") or {}
    run = status.get("currentRun") or {}
    degraded = condition(pipeline, c.DEGRADED)
    run_text = ""
    if run:
        run_text = (f"{run.get('id')} ({run.get('trigger')}), started {age(run.get('startedAt'), now)} ago, job "
                    f"{run.get('job')}" + (f", will register {run['version']}" if run.get("version") else "")
                    + (f": {run['reason']}" if run.get("reason") else ""))
    pending = "; ".join(f"{p.get('trigger')} ({p.get('reason') or ''}, x{p.get('count', 1)})"
                        for p in status.get("pendingTriggers") or [])
    rows = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Status", style.status(status.get("phase") or "Pending")),
        ("Message", status.get("message") or ""),
        ("Degraded", f"{degraded.get('reason')}: {degraded.get('message')}" if degraded.get("status") == c.TRUE else ""),
        ("Model", f"{(spec.get('model') or {}).get('task', '')} {(spec.get('model') or {}).get('estimator', '')}"),
        ("Approval", spec.get("approval", "automatic")),
        ("Champion", status.get("championVersion") or "none yet"),
        ("Latest", status.get("latestVersion") or ""),
        ("Current run", run_text),
        ("Pending", pending),
    ]
    out = fields(rows, style)
    triggers = trigger_lines(pipeline, now, style)
    if triggers:
        out += ["", *triggers]
    runs = runs_table(pipeline, now, style, limit=5)
    if runs:
        out += ["", style.paint("Last runs:", "bold"), *runs]
    versions = versions_table(model_versions, now)
    if versions:
        out += ["", style.paint("Versions:", "bold"), *versions]
    return "\n".join(out) + "\n"


def render_version(mv: Obj, now: dt.datetime, style: Style) -> str:
    meta, spec, status = mv["metadata"], mv.get("spec") or {}, mv.get("status") or {}
    lineage = spec.get("lineage") or {}
    data = lineage.get("data") or {}
    approved = condition(mv, c.APPROVED)
    annotations = meta.get("annotations") or {}
    asked = [f"{k}={annotations[k]}" for k in (ct.ANNOTATION_APPROVE, ct.ANNOTATION_REJECT) if annotations.get(k)]
    rows = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Stage", style.status(status.get("stage") or "Pending")),
        ("Message", status.get("message") or ""),
        ("Approval", f"{approved.get('reason')}: {approved.get('message')}" if approved else ""),
        ("Requested", ", ".join(asked)),
        ("Traffic", f"{status['traffic']}%" if status.get("traffic") is not None else ""),
        ("Pipeline", f"{spec.get('pipeline')} v{spec.get('version')}"),
        ("Metrics", ", ".join(f"{k}={v}" for k, v in sorted((spec.get("metrics") or {}).items()))),
        ("Artifact", f"{(spec.get('artifact') or {}).get('uri', '')}"),
        ("Digest", (spec.get("artifact") or {}).get("digest", "")),
        ("Run", f"{lineage.get('run')} ({lineage.get('trigger')}), trained {clock(lineage.get('trainedAt'))}"
         if lineage.get("run") else ""),
        ("Parent", lineage.get("parent") or ""),
        ("Data", f"{data.get('source', '')} {data.get('rows', '?')} rows"
         + (f", window {data['window']}" if data.get("window") else "")
         + (f", {data['feedbackRows']} from feedback" if data.get("feedbackRows") else "") if data else ""),
    ]
    out = fields(rows, style)
    history = stage_history_table([mv], now)
    if history:
        out += ["", style.paint("Stage history:", "bold"), *history]
    return "\n".join(out) + "\n"


def stage_history_table(model_versions: Sequence[Obj], now: dt.datetime) -> list[str]:
    """Every stage change of these versions, oldest first: what served when, who moved it and why."""
    entries = []
    for mv in model_versions:
        for h in (mv.get("status") or {}).get("history") or []:
            entries.append((h.get("at") or "", mv["metadata"]["name"], h))
    entries.sort(key=lambda e: (e[0], e[1]))
    rows = [[clock(at), name, h.get("stage") or "", h.get("by") or "", h.get("reason") or ""] for at, name, h in entries]
    return _table(["AT (UTC)", "VERSION", "STAGE", "BY", "REASON"], rows) if rows else []


def render_pipeline_history(pipeline: Obj, model_versions: Sequence[Obj], now: dt.datetime, style: Style) -> str:
    out = [style.paint(f"Runs of pipeline {pipeline['metadata']['name']} (newest first):", "bold")]
    out += runs_table(pipeline, now, style) or ["  none yet"]
    out += ["", style.paint("Versions:", "bold"), *(versions_table(model_versions, now) or ["  none yet"])]
    out += ["", style.paint("Stage history (what served when, and why):", "bold"),
            *(stage_history_table(model_versions, now) or ["  none yet"])]
    return "\n".join(out) + "\n"


def render_version_history(mv: Obj, now: dt.datetime, style: Style) -> str:
    out = [style.paint(f"Stage history of {mv['metadata']['name']} (what it served, when, and why):", "bold")]
    out += stage_history_table([mv], now) or ["  none yet"]
    return "\n".join(out) + "\n"


def pipeline_row(pipeline: Obj) -> list[str]:
    status = pipeline.get("status") or {}
    return [pipeline["metadata"].get("namespace", ""), pipeline["metadata"]["name"], status.get("phase") or "",
            status.get("championVersion") or "", status.get("latestVersion") or "",
            (status.get("currentRun") or {}).get("id") or ""]


def version_row(mv: Obj) -> list[str]:
    status = mv.get("status") or {}
    return [mv["metadata"].get("namespace", ""), mv["metadata"]["name"], status.get("stage") or "",
            f"{status['traffic']}%" if status.get("traffic") is not None else "", status.get("metric") or ""]
