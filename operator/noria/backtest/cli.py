"""``python -m noria backtest pipeline.yaml --data <uri> [--feedback <uri>] [--slice 1000rows|1h]
[--every N] [--history 1000rows|7d] [--label-delay 0s] [--out DIR]``

Prints, per slice, the version each policy served and what users got, the runs that started and
what fired them, and the gate's verdicts; then one summary line per policy. Writes
``backtest.json`` (the whole record) and ``backtest.png`` into ``--out``. Exit code 0 when the
replay ran, 2 when the input is refused (the message names the field or the option).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .clock import SliceSize, parse_delay, parse_slice
from .replay import Policy, Replay, prepare

DEFAULT_SLICE = "1000rows"
DEFAULT_EVERY = 10_000


class InputError(ValueError):
    """The pipeline or the data cannot be replayed; the message says what to change."""


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """The first TrainingPipeline of a YAML file, validated with the noria.api models (as the API
    server would), as written."""
    from noria.api.resources import field_errors

    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    manifest = next((d for d in documents if d.get("kind") == "TrainingPipeline"), None)
    if manifest is None:
        raise InputError(f"{path}: no TrainingPipeline in the file")
    manifest.setdefault("metadata", {}).setdefault("name", "pipeline")
    errors = field_errors(manifest)
    if errors:
        raise InputError(f"{path}: " + "; ".join(f"{field}: {message}" for field, message in errors))
    if not (manifest["spec"].get("data") or {}).get("timestampColumn"):
        raise InputError(f"{path}: spec.data.timestampColumn is required: the replay advances time by it")
    return manifest


def read_frame(uri: str, manifest: Mapping[str, Any], option: str) -> pd.DataFrame:
    """Rows of ``uri`` read and time-ordered by the trainer's own reader."""
    from noria_trainer import data as trainer_data

    spec = manifest["spec"]
    ts_col = spec["data"]["timestampColumn"]
    # A file's own extension says its format (the spec's format is the store's); a folder or a glob
    # is read as the spec's format.
    named = uri.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq"))
    try:
        frame, _ = trainer_data.read_source(uri, None if named else spec["data"].get("format"))
        frame = trainer_data.order_by_time(frame, ts_col)
    except trainer_data.DataError as exc:
        raise InputError(f"{option} {uri}: {exc}") from exc
    needed = [spec["model"]["target"], *(spec["model"].get("features") or [])]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"{option} {uri}: column(s) {', '.join(missing)} named by the spec are missing")
    return frame


def backtest(manifest: Mapping[str, Any], data: pd.DataFrame, feedback: pd.DataFrame | None, size: SliceSize,
             every: int | None, workdir: str | Path, history: SliceSize | None = None,
             label_delay: dt.timedelta = dt.timedelta(0), baselines: bool = True,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Replay the spec's own policy, then (with ``baselines``) never-retrain and every-N-rows; the
    JSON-able record of all three."""
    from noria.training import results

    spec = manifest["spec"]
    replay_data = prepare(data, feedback, spec["data"]["timestampColumn"], history or size, label_delay)
    policies = [Policy(manifest["metadata"].get("name", "pipeline") + " (spec)")]
    if baselines:
        policies.append(Policy.never())
        if every:
            policies.append(Policy.every(every))
    task = spec["model"].get("task", "classification")
    metric = "accuracy" if task == "classification" else "rmse"
    out: dict[str, Any] = {
        "pipeline": manifest["metadata"].get("name"), "metric": metric, "slice": size.label,
        "gateMetric": results.gate_metric(spec), "labelDelay": str(label_delay), "every": every, "trafficRows": len(replay_data.traffic),
        "storeRows": len(replay_data.store_rows), "feedbackLoop": replay_data.feedback_log,
        "driftThreshold": ((spec.get("triggers") or {}).get("drift") or {}).get("threshold"),
        "spec": spec, "policies": {},
    }
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime now, so that the limit below reaches it)
    from threadpoolctl import threadpool_limits

    # One thread for numpy/OpenMP pools: the replay is sequential and its fits are small, and
    # spinning OpenMP workers on a shared machine made one fit ten times slower (see
    # noria_trainer.run.thread_limit). The in-process trainer runs inside the same limit.
    with threadpool_limits(limits=1):
        for policy in policies:
            record = Replay(manifest, replay_data, policy, size, Path(workdir), label_delay, progress).run()
            out["policies"][policy.name] = record.as_dict(metric)
    return out


def _cell(slice_: Mapping[str, Any], metric: str) -> str:
    value = slice_["metrics"].get(metric)
    version = (slice_.get("version") or "-").rsplit("-", 1)[-1]
    return f"{version:>4} {'  n/a' if value is None else f'{value:.3f}'}"


def format_slices(record: Mapping[str, Any]) -> str:
    """Per slice: each policy's served version and metric, then the runs started and finished."""
    metric = record["metric"]
    names = list(record["policies"])
    lines = [f"{'slice':>5}  {'end (UTC)':<20} {'rows':>6}  " + "  ".join(f"{n[:16]:>16}" for n in names)]
    count = len(record["policies"][names[0]]["slices"])
    for i in range(count):
        cells = [record["policies"][n]["slices"][i] for n in names]
        first = cells[0]
        lines.append(f"{first['index']:>5}  {first['end']:<20} {first['rows']:>6}  "
                     + "  ".join(f"{_cell(c, metric):>16}" for c in cells))
        gate = record.get("gateMetric") or metric
        for name, c in zip(names, cells, strict=True):
            for run in c["started"]:
                lines.append(f"{'':>8}{name}: {run['id']} started by {run['reason'] or run['trigger']}"[:220])
            for done in c["finished"]:
                ours = (done.get("metrics") or {}).get(gate)
                theirs = (done.get("championMetrics") or {}).get(gate)
                scores = f" ({gate} {ours} vs champion {theirs})" if theirs else (f" ({gate} {ours})" if ours else "")
                lines.append(f"{'':>8}{name}: {done['id']} {done['outcome']}{scores}: {done.get('message') or ''}"[:260])
    return "\n".join(lines)


def format_summary(record: Mapping[str, Any]) -> str:
    metric = record["metric"]
    lines = [f"{'policy':<28} {'served ' + metric:>16} {'runs':>5} {'retrains':>8} {'passed':>6} {'rejected':>8} "
             f"{'failed':>6}  triggers"]
    for name, policy in record["policies"].items():
        s = policy["summary"]
        served = "n/a" if s["served"] is None else f"{s['served']:.4f}"
        by = ", ".join(f"{k} {v}" for k, v in sorted(s["byTrigger"].items()))
        lines.append(f"{name[:28]:<28} {served:>16} {s['runs']:>5} {s['retrains']:>8} {s['passed']:>6} "
                     f"{s['rejected']:>8} {s['failed']:>6}  {by}")
    return "\n".join(lines)


def write_outputs(record: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    from .plot import plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "backtest.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path, plot(dict(record), out / "backtest.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noria backtest",
        description="Replay a TrainingPipeline spec over historical, time-stamped data with Noria's own trigger "
                    "logic, bin counter and trainer, against never retraining and retraining every N rows "
                    "(docs/backtest.md).")
    parser.add_argument("pipeline", help="TrainingPipeline YAML (validated as the API server would)")
    parser.add_argument("--data", required=True,
                        help="time-stamped labelled rows (csv/parquet file, folder or glob; any fsspec URI) that "
                             "land in the store at their timestamp")
    parser.add_argument("--feedback", help="time-stamped labelled production traffic, served and labelled through "
                                           "feedback; without it the traffic is --data after --history")
    parser.add_argument("--slice", default=DEFAULT_SLICE, help=f"rows (1000rows) or a duration (1h) per operator "
                                                               f"pass (default {DEFAULT_SLICE})")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY,
                        help=f"baseline: retrain every N rows of traffic (default {DEFAULT_EVERY}; 0: no such baseline)")
    parser.add_argument("--history", help="without --feedback: the start of --data that is history (rows or a "
                                          "duration; default one slice)")
    parser.add_argument("--label-delay", default="0s", help="labels come back this long after the answer (default 0s)")
    parser.add_argument("--no-baselines", action="store_true", help="replay the spec's policy only")
    parser.add_argument("--out", default=None, help="where backtest.json and backtest.png go (default ./backtest-<time>)")
    parser.add_argument("--workdir", default=None, help="the replay's store (default: a temporary folder, removed)")
    parser.add_argument("--quiet", action="store_true", help="no per-slice table, only the summary")
    args = parser.parse_args(argv)
    try:
        manifest = load_pipeline(args.pipeline)
        size = parse_slice(args.slice)
        history = parse_slice(args.history, "--history") if args.history else None
        delay = parse_delay(args.label_delay)
        data = read_frame(args.data, manifest, "--data")
        feedback = read_frame(args.feedback, manifest, "--feedback") if args.feedback else None
        if args.every < 0:
            raise InputError(f"--every {args.every}: must be 0 (no periodic baseline) or a number of rows")
    except (InputError, ValueError) as exc:
        print(f"noria backtest: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"backtest-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}")

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"  training {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="noria-backtest-") as tmp:
        try:
            record = backtest(manifest, data, feedback, size, args.every or None, args.workdir or tmp, history, delay,
                              baselines=not args.no_baselines, progress=progress)
        except ValueError as exc:
            print(f"noria backtest: {exc}", file=sys.stderr)
            return 2
    if not args.quiet:
        print(format_slices(record))
        print()
    print(format_summary(record))
    for name, policy in record["policies"].items():
        failed = [r for r in policy["runs"] if r.get("outcome") == "Failed"]
        if failed:  # a failed run is the trainer refusing the spec or the data: say why, loudly
            print(f"noria backtest: {name}: {len(failed)} run(s) failed, the first: {failed[0]['id']}: "
                  f"{failed[0].get('message')}", file=sys.stderr)
    json_path, png_path = write_outputs(record, out)
    print(f"\nrecord: {json_path}\nplot:   {png_path}")
    return 0
