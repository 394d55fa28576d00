"""The demo's report: one HTML page and its PNG plots, drawn from the timeline and the cluster's record.

Four questions, one plot each, on one shared time axis (seconds since the story began, with the
story's acts marked): how accurate were the answers users got, compared with the counterfactual
"v1 kept serving"; how far the live inputs drifted from the reference, against the trigger's
threshold; which version got which share of the traffic; and what Noria did, when and why.
A fifth, when given: the backtest of the demo's own pipeline (``noria backtest`` over the demo's
generated world, ``demo/backtest.py``) against never retraining and retraining every N rows.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or a server
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from noria.api.common import parse_timestamp  # noqa: E402

from noria_testbed.demo import scoring  # noqa: E402
from noria_testbed.demo.timeline import read_timeline  # noqa: E402
from noria_testbed.demo.traffic import requests_frame  # noqa: E402

COUNTERFACTUAL = "counterfactual"


@dataclass(frozen=True)
class Event:
    """One thing Noria (or the story) did: when, who, what, and why."""

    ts: float
    source: str  # e.g. "TrainingPipeline/churn", "ModelVersion/churn-v2", "Rollout/churn", "story"
    what: str  # e.g. "Production", "run churn-r2 Succeeded", "canary weight 25"
    reason: str = ""

    def when(self, origin: float) -> str:
        return f"{self.ts - origin:7.1f}s"


@dataclass
class ReportInput:
    timeline: Path
    events: list[Event] = field(default_factory=list)
    counterfactual_model: Any = None  # "v1 kept serving"
    counterfactual_name: str = "v1"
    reference_profile: Any = None  # noria.profile.Profile of v1, for the offline drift curve
    drift_threshold: float | None = None
    summary: dict[str, str] = field(default_factory=dict)  # headline figures, in order
    bucket_seconds: float = 15.0
    title: str = "Noria closed loop"
    backtest: dict[str, Any] | None = None  # the record of noria.backtest.cli.backtest
    backtest_error: str | None = None  # why there is no backtest, when it failed


MARKED_ACTS = ("v1", "drift", "recovered", "bad-batch", "finale")


def _act_marks(records: Sequence[dict[str, Any]], origin: float) -> list[tuple[float, str]]:
    """The story's main acts (not every on-call intervention) as (t, name)."""
    return [(r["ts"] - origin, str(r.get("act", ""))) for r in records
            if r.get("kind") == "act" and r.get("act") in MARKED_ACTS]


def _mark_acts(ax: Any, acts: list[tuple[float, str]], top: bool = False) -> None:
    previous = None
    for t, name in acts:
        ax.axvline(t, color="0.6", linestyle=":", linewidth=1)
        if top:
            # Two acts at (almost) the same moment: write the second label on the other side of the line.
            close = previous is not None and abs(t - previous) < 15
            ax.annotate(name, (t, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        va="top", ha="left" if close else "right", color="0.35")
        previous = t


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(served: pd.DataFrame, counterfactual: pd.DataFrame | None, acts: list[tuple[float, str]],
                  path: Path, counterfactual_name: str) -> None:
    fig, (ax_acc, ax_f1) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for ax, metric in ((ax_acc, "accuracy"), (ax_f1, "f1")):
        if not served.empty:
            ax.plot(served["t"], served[metric], marker="o", markersize=3, label="served (what users got)")
        if counterfactual is not None and not counterfactual.empty:
            ax.plot(counterfactual["t"], counterfactual[metric], linestyle="--", color="tab:red",
                    label=f"counterfactual: {counterfactual_name} kept serving")
        ax.set_ylabel("accuracy" if metric == "accuracy" else "F1 (churned)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _mark_acts(ax, acts, top=(ax is ax_acc))
    ax_acc.legend(loc="lower left", fontsize=8)
    ax_f1.set_xlabel("seconds since the story began")
    ax_acc.set_title("Accuracy of the answers, scored with the ground truth users reported later")
    _save(fig, path)


def plot_drift(offline: pd.DataFrame | None, operator: pd.DataFrame | None, threshold: float | None,
               acts: list[tuple[float, str]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if offline is not None and not offline.empty:
        ax.plot(offline["t"], offline["psi"], marker="o", markersize=3, color="tab:purple",
                label="max PSI of inputs sent vs v1 reference profile")
    if operator is not None and not operator.empty:
        ax.plot(operator["t"], operator["value"], drawstyle="steps-post", color="tab:orange",
                label="drift trigger: value seen by the operator (vs champion)")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    _mark_acts(ax, acts, top=True)
    ax.set_ylabel("PSI")
    ax.set_xlabel("seconds since the story began")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Input drift")
    _save(fig, path)


def plot_traffic(weights: pd.DataFrame, answered: pd.DataFrame, acts: list[tuple[float, str]], path: Path) -> None:
    """Configured weights (lines) and the measured share of answers per version (shaded)."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if not answered.empty:
        table = answered.pivot_table(index="t", columns="version", values="share", fill_value=0.0).sort_index()
        ax.stackplot(table.index, [table[c] * 100 for c in table.columns], labels=[f"answered by {c}" for c in
                     table.columns], alpha=0.35)
    if not weights.empty:
        for version, part in weights.groupby("version"):
            ax.plot(part["t"], part["weight"], drawstyle="steps-post", linewidth=1.6, label=f"router weight {version}")
    _mark_acts(ax, acts, top=True)
    ax.set_ylim(0, 102)
    ax.set_ylabel("% of traffic")
    ax.set_xlabel("seconds since the story began")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", fontsize=7, ncols=2)
    ax.set_title("Traffic per version: the router's weights and the measured share of answers")
    _save(fig, path)


def answered_share(frame: pd.DataFrame, bucket_seconds: float, origin: float) -> pd.DataFrame:
    """Share of successful answers per version per bucket: columns t, version, share."""
    ok = frame[(frame["status"] == 200) & frame["version"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=["t", "version", "share"])
    bucket = ((ok["ts"] - origin) // bucket_seconds).astype(int)
    counts = ok.groupby([bucket, ok["version"]]).size().rename("n").reset_index()
    counts.columns = ["bucket", "version", "n"]
    counts["share"] = counts["n"] / counts.groupby("bucket")["n"].transform("sum")
    counts["t"] = (counts["bucket"] + 0.5) * bucket_seconds
    return counts[["t", "version", "share"]]


def observations(records: Sequence[dict[str, Any]], what: str, origin: float) -> list[dict[str, Any]]:
    return [{**r, "t": r["ts"] - origin} for r in records if r.get("kind") == "observation" and r.get("what") == what]


def weights_frame(records: Sequence[dict[str, Any]], origin: float) -> pd.DataFrame:
    rows = []
    for r in observations(records, "weights", origin):
        for version, weight in (r.get("weights") or {}).items():
            rows.append({"t": r["t"], "version": version, "weight": float(weight)})
    return pd.DataFrame(rows, columns=["t", "version", "weight"])


def operator_drift_frame(records: Sequence[dict[str, Any]], origin: float) -> pd.DataFrame:
    rows = [{"t": r["t"], "value": float(r["value"])} for r in observations(records, "drift", origin)
            if r.get("value") not in (None, "")]
    return pd.DataFrame(rows, columns=["t", "value"])


def write_report(out_dir: str | Path, data: ReportInput) -> Path:
    """Draw the plots and the page into ``out_dir``; return the path of ``index.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(read_timeline(data.timeline))
    if not records:
        raise ValueError(f"timeline {data.timeline} has no records to report")
    origin = min(r["ts"] for r in records)
    acts = _act_marks(records, origin)
    frame = requests_frame(records)
    if data.counterfactual_model is not None and not frame.empty:
        frame[COUNTERFACTUAL] = scoring.predict_rows(data.counterfactual_model, frame)
    served = scoring.over_time(frame, "prediction", data.bucket_seconds, origin)
    counterfactual = (scoring.over_time(frame, COUNTERFACTUAL, data.bucket_seconds, origin)
                      if COUNTERFACTUAL in frame else None)
    plot_accuracy(served, counterfactual, acts, out / "accuracy.png", data.counterfactual_name)
    # PSI of a small sample is biased upwards: measure drift over buckets of at least 30 s.
    offline = (scoring.drift_over_time(frame, data.reference_profile, max(30.0, data.bucket_seconds), origin)
               if data.reference_profile is not None else None)
    plot_drift(offline, operator_drift_frame(records, origin), data.drift_threshold, acts, out / "drift.png")
    plot_traffic(weights_frame(records, origin), answered_share(frame, data.bucket_seconds, origin), acts,
                 out / "traffic.png")
    if data.backtest is not None:
        from noria.backtest.plot import plot

        plot(data.backtest, out / "backtest.png")
    failed = int((frame["status"] != 200).sum()) if not frame.empty else 0
    page = _html(data, origin, len(frame), failed, acts)
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _html(data: ReportInput, origin: float, requests: int, failed: int, acts: list[tuple[float, str]]) -> str:
    e = html.escape
    started = dt.datetime.fromtimestamp(origin, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in data.summary.items())
    events = "".join(
        f"<tr><td class=num>{e(ev.when(origin))}</td><td>{e(ev.source)}</td><td>{e(ev.what)}</td>"
        f"<td>{e(ev.reason)}</td></tr>"
        for ev in sorted(data.events, key=lambda ev: ev.ts)
    )
    act_list = "".join(f"<li><b>{t:.0f}s</b> {e(name)}</li>" for t, name in acts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(data.title)}</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 1120px; margin: 2em auto; color: #222; }}
 table {{ border-collapse: collapse; margin: 1em 0; }}
 td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }}
 td.num {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
 img {{ max-width: 100%; border: 1px solid #eee; margin: .5em 0 1.5em; }}
 .muted {{ color: #666; }}
</style></head><body>
<h1>{e(data.title)}</h1>
<p class=muted>Started {e(started)}; {requests} prediction requests, {failed} not answered with 200.</p>
<table>{summary}</table>
<h2>Accuracy: what users got, and what they would have got</h2>
<img src="accuracy.png" alt="accuracy and F1 over time">
<h2>Drift</h2>
<img src="drift.png" alt="drift score over time with the threshold">
<h2>Traffic</h2>
<img src="traffic.png" alt="traffic weights per version over time">
{_backtest_html(data)}
<h2>The story's acts</h2><ol>{act_list}</ol>
<h2>What Noria did, and why</h2>
<table><tr><th>t</th><th>object</th><th>what</th><th>why</th></tr>{events}</table>
</body></html>
"""


def _backtest_html(data: ReportInput) -> str:
    """The backtest section: what the replay is, one line per policy, the spec's runs, the plot."""
    e = html.escape
    if data.backtest is None:
        return (f"<h2>Backtest of this pipeline</h2><p class=muted>not run: {e(data.backtest_error)}</p>"
                if data.backtest_error else "")
    record = data.backtest
    metric = record.get("metric", "accuracy")
    demo = record.get("demo") or {}
    what = (f"{demo.get('historyRows')} customers of history and a batch of {demo.get('batchRows')} after the change "
            f"in the store; {record.get('trafficRows')} requests at {demo.get('rate')}/s, the world changing after "
            f"{demo.get('beforeSeconds'):.0f}s (slice {demo.get('changeAtSlice')}), labels back after "
            f"{demo.get('labelDelay')}s") if demo else f"{record.get('trafficRows')} rows of traffic"
    rows = ""
    for name, policy in record["policies"].items():
        s = policy["summary"]
        served = "n/a" if s.get("served") is None else f"{s['served']:.4f}"
        by = ", ".join(f"{k} {v}" for k, v in sorted((s.get("byTrigger") or {}).items()))
        rows += (f"<tr><td>{e(name)}</td><td class=num>{served}</td><td class=num>{s['runs']}</td>"
                 f"<td class=num>{s['retrains']}</td><td class=num>{s['passed']}</td><td class=num>{s['rejected']}</td>"
                 f"<td>{e(by)}</td></tr>")
    spec_policy = next(iter(record["policies"].values()))
    runs = "".join(
        f"<tr><td>{e(str(r.get('id')))}</td><td class=num>{e(str(r.get('startedAt')))}</td>"
        f"<td>{e(str(r.get('reason') or r.get('trigger')))}</td><td>{e(str(r.get('outcome')))}</td>"
        f"<td>{e(str(r.get('message') or ''))}</td></tr>"
        for r in spec_policy["runs"])
    return f"""<h2>Backtest of this pipeline</h2>
<p><code>noria backtest</code> replayed the demo's own pipeline (<code>examples/90-closed-loop/pipeline.yaml</code>)
over the demo's generated world ({e(what)}) through the operator's own trigger logic, the server's bin counter and
the real trainer: what users would have got ({e(metric)} over all replayed requests) and how many runs it took, with
the spec's triggers, never retraining, and retraining every {e(str(record.get('every') or 'N'))} rows.</p>
<table><tr><th>policy</th><th>served {e(metric)}</th><th>runs</th><th>retrains</th><th>passed</th><th>rejected</th>
<th>what started them</th></tr>{rows}</table>
<img src="backtest.png" alt="backtest: served accuracy per slice for each policy, and what the triggers saw">
<h3>Runs of the spec's policy</h3>
<table><tr><th>run</th><th>simulated time</th><th>why</th><th>outcome</th><th>gate</th></tr>{runs}</table>"""


def _ts(text: str | None) -> float | None:
    """A status timestamp as epoch seconds (``noria.api.common.parse_timestamp``); None when unset
    or unreadable."""
    if not text:
        return None
    try:
        return parse_timestamp(str(text)).timestamp()
    except ValueError:
        return None


def events_from_objects(tp: dict[str, Any], mvs: dict[str, dict[str, Any]], rollout: dict[str, Any],
                        k8s_events: Sequence[dict[str, Any]] = ()) -> list[Event]:
    """The timeline of what happened and why, from the record the operator keeps in the objects:
    the pipeline's runs, each ModelVersion's stage history, and the Events about the three kinds."""
    out: list[Event] = []
    pipeline = f"TrainingPipeline/{(tp.get('metadata') or {}).get('name', '?')}"
    for run in (tp.get("status") or {}).get("lastRuns") or []:
        started, finished = _ts(run.get("startedAt")), _ts(run.get("finishedAt"))
        if started is not None:
            out.append(Event(started, pipeline, f"run {run.get('id')} started", f"trigger {run.get('trigger')}"))
        if finished is not None:
            made = f" -> {run['version']}" if run.get("version") else ""
            out.append(Event(finished, pipeline, f"run {run.get('id')} {run.get('outcome')}{made}",
                             f"{run.get('reason') or ''}: {run.get('message') or ''}".strip(": ")))
    for name, mv in sorted(mvs.items()):
        for change in (mv.get("status") or {}).get("history") or []:
            at = _ts(change.get("at"))
            if at is not None:
                by = f" (by {change['by']})" if change.get("by") else ""
                out.append(Event(at, f"ModelVersion/{name}", str(change.get("stage")),
                                 f"{change.get('reason') or ''}{by}"))
    kinds = {"Rollout", "TrainingPipeline", "ModelVersion"}
    for event in k8s_events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") not in kinds or involved.get("kind") == "ModelVersion":
            continue  # ModelVersions are told by their own history above
        if involved.get("kind") == "TrainingPipeline":
            continue  # runs are told by lastRuns above
        at = _ts(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
                 or (event.get("metadata") or {}).get("creationTimestamp"))
        if at is not None:
            out.append(Event(at, f"{involved['kind']}/{involved.get('name')}", str(event.get("reason") or ""),
                             str(event.get("message") or event.get("note") or "")))
    return sorted(out, key=lambda e: e.ts)
