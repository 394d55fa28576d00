"""The replay loop: one policy (the spec's own triggers, or a baseline) over the traffic.

Per slice of traffic (``clock``): the version serving at that time answers the slice (its accuracy
is what users got); its rows and their labels become the observations the operator would read
(``observe``); rows whose time has come land in the data source, and, in the feedback loop, the
servers' prediction and feedback logs are written as the servers write them; then the operator's
pass runs at the slice's end: ``noria.training.pipeline.decide`` on a frozen observation, and its
plan is carried out as ``noria.training.handlers.execute`` does (register the ModelVersion with its
first status, patch status, create the run). A run is the real trainer, in process, on the run
spec the operator built (ConfigMap ``spec.json``) plus ``now`` = the simulated time (the trainer's
replay anchor for duration windows); it takes no simulated time, so the version it registers, when
the gate passes (approval is automatic in a replay), serves from the next slice.

Policies: ``spec`` (the pipeline's triggers and cooldown as written), ``never`` (the initial run
only) and ``every`` N rows of traffic (the initial run, then a ``noria.dev/retrain`` request every
N rows, started through the same ``decide``; no cooldown). Every policy trains with the same spec
and the same gate, so they differ only in *when* runs start.

Where the training data comes from (``ReplayData``): rows of ``--data`` land in the store at their
timestamp; rows of ``--feedback`` are production traffic whose labels come back as feedback (the
trainer merges them when ``spec.data.feedback.enabled``). Without ``--feedback`` the traffic is
``--data`` after its history, and each row lands in the store when its label arrives (labelled
batches landing), with no feedback log so no row reaches training twice.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from noria import conditions as c
from noria import scoring, store
from noria.api.common import parse_duration
from noria.api.training_pipeline import DEFAULT_TRIGGER_WINDOW
from noria.artifact_scope import data_source_scope
from noria.conditions import now_iso
from noria.profile import Profile
from noria.training import datasource, pipeline, results, runs, triggers

from . import observe
from .clock import Slice, SliceSize, slices

NAMESPACE: Final = "backtest"
POD: Final = "backtest"
LAND_AT: Final = "__noria_backtest_land_at"
SPEC: Final = "spec"
NEVER: Final = "never"
EVERY: Final = "every"
MAX_PASSES_PER_SLICE: Final = 6


@dataclass(frozen=True)
class Policy:
    """When runs start: ``spec`` (the pipeline's own triggers), ``never`` or ``every`` N rows."""

    name: str
    kind: str = SPEC
    every_rows: int | None = None

    @classmethod
    def never(cls) -> Policy:
        return cls("never retrain", NEVER)

    @classmethod
    def every(cls, rows: int) -> Policy:
        if rows <= 0:
            raise ValueError(f"--every {rows}: must be a positive number of rows")
        return cls(f"every {rows} rows", EVERY, rows)


@dataclass(frozen=True)
class ReplayData:
    """``store_rows`` land in the data source at ``LAND_AT``; ``traffic`` is served in time order."""

    store_rows: pd.DataFrame
    traffic: pd.DataFrame
    feedback_log: bool  # the traffic's labels reach training through the servers' logs


def _utc_naive(series: pd.Series) -> np.ndarray:
    return series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def prepare(data: pd.DataFrame, feedback: pd.DataFrame | None, timestamp_column: str,
            history: SliceSize, label_delay: dt.timedelta) -> ReplayData:
    """Split the inputs into what lands in the store and what is served (both time-ordered, with
    UTC timestamps as the trainer parses them)."""
    delay = pd.Timedelta(label_delay)
    if feedback is not None:
        rows = data.assign(**{LAND_AT: data[timestamp_column]})
        return ReplayData(rows, feedback.reset_index(drop=True), feedback_log=True)
    cut = _history_rows(data[timestamp_column], history)
    if cut >= len(data):
        raise ValueError(f"--history {history.label} covers all {len(data)} rows of --data: nothing is left to replay")
    if cut == 0:
        raise ValueError(f"--history {history.label} leaves no row to train the first model on")
    past = data.iloc[:cut].assign(**{LAND_AT: data[timestamp_column].iloc[:cut]})
    traffic = data.iloc[cut:].reset_index(drop=True)
    landing = traffic.assign(**{LAND_AT: traffic[timestamp_column] + delay})
    return ReplayData(pd.concat([past, landing], ignore_index=True), traffic, feedback_log=False)


def _history_rows(times: pd.Series, history: SliceSize) -> int:
    if history.rows is not None:
        return min(history.rows, len(times))
    assert history.duration is not None
    return int((times < times.iloc[0] + pd.Timedelta(history.duration)).sum())


# --- records --------------------------------------------------------------------------------------
@dataclass
class SliceRecord:
    index: int
    start: str
    end: str
    rows: int
    version: str | None
    metrics: dict[str, float | None]
    started: list[dict[str, Any]] = field(default_factory=list)  # runs started at this slice's pass
    finished: list[dict[str, Any]] = field(default_factory=list)  # runs finished (with the gate's verdict)
    drift: str | None = None  # the drift trigger's value as the operator saw it
    performance: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PolicyRecord:
    policy: str
    slices: list[SliceRecord] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, metric: str) -> dict[str, Any]:
        served = [(s.rows, float(v)) for s in self.slices if (v := s.metrics.get(metric)) is not None]
        rows = sum(n for n, _ in served)
        weighted = sum(n * v for n, v in served) / rows if rows else None
        by_trigger: dict[str, int] = {}
        for r in self.runs:
            by_trigger[r["trigger"]] = by_trigger.get(r["trigger"], 0) + 1
        return {
            "policy": self.policy, "metric": metric, "servedRows": rows,
            "served": None if weighted is None else round(weighted, 4),
            "runs": len(self.runs),
            "retrains": sum(1 for r in self.runs if r["trigger"] != triggers.INITIAL),
            "passed": sum(1 for r in self.runs if r.get("outcome") == pipeline.OUTCOME_SUCCEEDED),
            "rejected": sum(1 for r in self.runs if r.get("outcome") == pipeline.OUTCOME_REJECTED),
            "failed": sum(1 for r in self.runs if r.get("outcome") == pipeline.OUTCOME_FAILED),
            "byTrigger": by_trigger,
            "versionsServed": sorted({s.version for s in self.slices if s.version},
                                     key=lambda v: int(v.rsplit("v", 1)[-1]) if v.rsplit("v", 1)[-1].isdigit() else 0),
        }

    def as_dict(self, metric: str) -> dict[str, Any]:
        return {"summary": self.summary(metric), "runs": self.runs, "slices": [s.as_dict() for s in self.slices]}


# --- scoring what users got -----------------------------------------------------------------------
def slice_metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
    if len(labels) == 0:
        return {"accuracy": None, "f1": None} if task == "classification" else {"rmse": None}
    if task == "regression":
        err = np.asarray(predictions, dtype=float) - np.asarray(labels, dtype=float)
        return {"rmse": float(math.sqrt(float(np.mean(err * err))))}
    # The one definition of live scores (macro F1 over the classes seen), as the gate, the checks and
    # the performance trigger use, so a backtest's figures are the ones the loop would act on.
    confusion: dict[tuple[str, str], int] = {}
    for actual, predicted in zip(np.asarray(labels).tolist(), np.asarray(predictions).tolist(), strict=True):
        key = (str(actual), str(predicted))
        confusion[key] = confusion.get(key, 0) + 1
    return {"accuracy": scoring.accuracy(confusion), "f1": scoring.macro_f1(confusion)}


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- one policy's replay --------------------------------------------------------------------------
@dataclass
class _Version:
    model: Any
    features: tuple[str, ...]
    categorical: bool
    profile: Profile | None


class Replay:
    """The world of one policy: the pipeline object, its ModelVersions and Jobs, the store, the
    servers' counters; ``run()`` returns its record."""

    def __init__(self, manifest: Mapping[str, Any], data: ReplayData, policy: Policy, size: SliceSize,
                 workdir: Path, label_delay: dt.timedelta = dt.timedelta(0),
                 progress: Callable[[str], None] | None = None) -> None:
        self.policy, self.size, self.label_delay = policy, size, label_delay
        self.progress = progress or (lambda _text: None)
        # a folder name the trainer accepts in a data source URI (plain characters only)
        self.root = Path(workdir).resolve() / (re.sub(r"[^A-Za-z0-9._-]+", "-", policy.name).strip("-") or "policy")
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "runs").mkdir(parents=True)
        self.store_root = f"file://{self.root / 'store'}"
        tp = copy.deepcopy(dict(manifest))
        self.name = tp["metadata"]["name"]
        tp["metadata"] = {"name": self.name, "namespace": NAMESPACE, "uid": f"backtest-{self.name}", "generation": 1,
                          "annotations": {}}
        spec = tp["spec"]
        self.dataset_uri = store.join(self.store_root, "datasets", self.name) + "/"
        spec["data"] = {**spec["data"], "source": self.dataset_uri, "format": "parquet"}
        spec["approval"] = "automatic"  # a replay has nobody to approve: the gate's verdict decides
        if policy.kind != SPEC:
            spec["triggers"] = {}
        tp.pop("status", None)
        self.tp: dict[str, Any] = tp
        self.task = spec["model"].get("task", "classification")
        self.metric = "accuracy" if self.task == "classification" else "rmse"
        self.ts_col = spec["data"]["timestampColumn"]
        self.target = spec["model"]["target"]
        self.data = data
        self.settings = runs.RunSettings(trainer_image="in-process", store_root=self.store_root, store_pvc="backtest",
                                         store_mount_path=str(self.root / "store"), local_store_root=self.store_root)
        self.mvs: list[Mapping[str, Any]] = []
        self.jobs: dict[str, runs.JobOutcome] = {}
        self.served: list[observe.Served] = []
        self.versions: dict[str, _Version] = {}
        self.pending_labels: list[tuple[np.ndarray, list[str], list[Any]]] = []
        self.landed = 0
        self.partitions = 0
        self.log_seq = 0
        self.record = PolicyRecord(policy.name)
        self._land_at = _utc_naive(data.store_rows[LAND_AT])
        order = np.argsort(self._land_at, kind="stable")
        self._store_rows = data.store_rows.iloc[order].drop(columns=[LAND_AT]).reset_index(drop=True)
        self._land_at = self._land_at[order]

    # -- the world's side effects --
    def _land(self, now: dt.datetime) -> None:
        """Write the rows whose landing time has come as one new partition (atomically, like a batch)."""
        due = int(np.searchsorted(self._land_at, observe._np_time(now), side="right"))
        if due <= self.landed:
            return
        fs, path = store.filesystem(self.dataset_uri)
        fs.makedirs(path, exist_ok=True)
        self.partitions += 1
        part = self._store_rows.iloc[self.landed:due]
        tmp = f"{path.rstrip('/')}/.part-{self.partitions:06d}.parquet.tmp"
        part.to_parquet(tmp, index=False)
        fs.mv(tmp, f"{path.rstrip('/')}/part-{self.partitions:06d}.parquet")
        self.landed = due

    def _append_log(self, directory: str, lines: list[str]) -> None:
        if not lines:
            return
        fs, path = store.filesystem(directory)
        fs.makedirs(path, exist_ok=True)
        self.log_seq += 1
        with fs.open(f"{path}/{store.log_file_name(POD, self.log_seq)}", "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def _log_predictions(self, version: str, frame: pd.DataFrame, features: tuple[str, ...], ids: list[str],
                         predictions: np.ndarray, times: np.ndarray) -> None:
        values = frame[list(features)].to_dict("records")
        by_day: dict[dt.date, list[str]] = {}
        for rid, row, pred, t in zip(ids, values, predictions.tolist(), times, strict=True):
            stamp = pd.Timestamp(t).tz_localize("UTC")
            line = json.dumps({"id": rid, "ts": _stamp(stamp.to_pydatetime(warn=False)), "model_version": version,
                               "features": {k: _json_value(v) for k, v in row.items()}, "prediction": pred})
            by_day.setdefault(stamp.date(), []).append(line)
        for day, lines in by_day.items():
            self._append_log(store.predictions_dir(self.store_root, NAMESPACE, self.name, version, day), lines)

    def _log_feedback(self, now: dt.datetime) -> None:
        """Labels whose time has come, as the servers' feedback log holds them."""
        end = observe._np_time(now)
        keep: list[tuple[np.ndarray, list[str], list[Any]]] = []
        by_day: dict[dt.date, list[str]] = {}
        for times, ids, labels in self.pending_labels:
            due = times <= end
            for t, rid, label in zip(times[due], np.asarray(ids, dtype=object)[due], np.asarray(labels, dtype=object)[due],
                                     strict=True):
                stamp = pd.Timestamp(t).tz_localize("UTC")
                by_day.setdefault(stamp.date(), []).append(
                    json.dumps({"id": rid, "ts": _stamp(stamp.to_pydatetime(warn=False)), "label": _json_value(label)}))
            if not due.all():
                keep.append((times[~due], list(np.asarray(ids, dtype=object)[~due]),
                             list(np.asarray(labels, dtype=object)[~due])))
        self.pending_labels = keep
        for day, lines in by_day.items():
            self._append_log(store.feedback_dir(self.store_root, NAMESPACE, self.name, day), lines)

    def _version(self, mv: Mapping[str, Any]) -> _Version:
        name = mv["metadata"]["name"]
        if name not in self.versions:
            from noria.artifact import load_verified, read_bounded

            spec = mv["spec"]
            model = load_verified(spec["artifact"]["uri"], spec["artifact"]["digest"], self.store_root)
            profile = (Profile.from_dict(json.loads(read_bounded(spec["profileUri"], self.store_root)))
                       if spec.get("profileUri") else None)
            features = tuple(str(f) for f in getattr(model, "feature_names_in_", ()))
            if not features:
                features = tuple(self.tp["spec"]["model"].get("features") or ())
            categorical = profile is not None and any(
                fp.kind == "categorical" for n, fp in profile.features.items() if n in features)
            self.versions[name] = _Version(model, features, categorical, profile)
        return self.versions[name]

    def _serve(self, part: pd.DataFrame, first_row: int) -> tuple[str | None, dict[str, float | None]]:
        champion = results.champion(self.mvs)
        labels = part[self.target].to_numpy()
        if champion is None or part.empty:
            return None, slice_metrics(self.task, labels[:0], labels[:0])
        name = champion["metadata"]["name"]
        v = self._version(champion)
        frame = part[list(v.features)]
        predictions = np.asarray(v.model.predict(frame))
        rows = frame.to_numpy(dtype=object if v.categorical else np.float64)
        times = _utc_naive(part[self.ts_col])
        label_times = times + np.timedelta64(int(self.label_delay.total_seconds() * 1e6), "us")
        self.served.append(observe.Served(name, times, rows, v.features, predictions, labels, label_times))
        if self.data.feedback_log:
            ids = [f"{POD}-{first_row + i:09d}" for i in range(len(part))]
            self._log_predictions(name, part, v.features, ids, predictions, times)
            self.pending_labels.append((label_times, ids, labels.tolist()))
        return name, slice_metrics(self.task, labels, predictions)

    # -- the operator --
    def observation(self, now: dt.datetime) -> pipeline.Observation:
        """What ``noria.training.handlers.observe`` gathers, from the replay instead of the cluster."""
        tp, spec = self.tp, self.tp["spec"]
        tspec = spec.get("triggers") or {}
        current = (tp.get("status") or {}).get("currentRun")
        job = self.jobs.get(current.get("job") or current["id"], runs.JobOutcome(runs.MISSING)) if current else None
        # the operator judges the data source's scope before anything reads it (here it is always
        # the replay's own store/datasets/ folder, which is in scope)
        refused = data_source_scope(self.store_root).check_data_source(tp)
        data = None
        if (tspec.get("newData") or {}).get("minNewRows"):
            data = (datasource.observe(self.dataset_uri, "parquet") if refused is None
                    else triggers.DataObservation(error=f"not read: {c.DATA_SOURCE_OUT_OF_SCOPE}"))
        champion = results.champion(self.mvs)
        drift = performance = None
        profile = None
        if champion is not None:
            name = champion["metadata"]["name"]
            if tspec.get("drift"):
                profile = self._version(champion).profile
                window = parse_duration(tspec["drift"].get("window") or DEFAULT_TRIGGER_WINDOW)
                drift = (observe.drift_observation(self.served, name, profile, now, window)
                         if profile is not None else triggers.MetricObservation(counts={}, version=name))
            if tspec.get("performance"):
                window = parse_duration(tspec["performance"].get("window") or DEFAULT_TRIGGER_WINDOW)
                performance = observe.performance_observation(self.served, name, now, window)
        return pipeline.Observation(
            pipeline=tp, now=now, model_versions=list(self.mvs), job=job, data=data, drift=drift,
            performance=performance, profile=profile, job_names=list(self.jobs), config_map_names=list(self.jobs),
            run_settings=self.settings, settle_seconds=0.0, data_source_refused=refused.message if refused else None)

    def operator_pass(self, now: dt.datetime, record: SliceRecord | None) -> pipeline.Plan:
        plan = pipeline.decide(self.observation(now))
        if plan.register is not None and plan.register["metadata"]["name"] not in {
                m["metadata"]["name"] for m in self.mvs}:
            mv = copy.deepcopy(plan.register)
            mv["status"] = results.initial_status(mv, now) or {}
            self.mvs.append(mv)
        if plan.status:
            self.tp["status"] = pipeline.apply_merge_patch(self.tp.get("status") or {}, plan.status)
        status = self.tp.get("status") or {}
        if plan.finished is not None:
            last = (status.get("lastRuns") or [{}])[0]
            run = next((r for r in self.record.runs if r["id"] == last.get("id")), None)
            summary = (self.jobs.get(last.get("id", "")) or runs.JobOutcome(runs.MISSING)).summary or {}
            finished = {"id": last.get("id"), "trigger": last.get("trigger"), "outcome": last.get("outcome"),
                        "verdict": summary.get("verdict"), "version": last.get("version"),
                        "message": last.get("message"), "metrics": summary.get("metrics"),
                        "championMetrics": summary.get("championMetrics"), "at": now_iso(now)}
            if run is not None:
                run.update({k: v for k, v in finished.items() if k not in ("id", "trigger")})
            if record is not None:
                record.finished.append(finished)
        if plan.run_objects is not None:
            current = status.get("currentRun") or {}
            started = {"id": current.get("id"), "trigger": current.get("trigger"), "reason": current.get("reason"),
                       "startedAt": now_iso(now)}
            self.record.runs.append(dict(started))
            if record is not None:
                record.started.append(started)
            cm, job = plan.run_objects
            self.jobs[job["metadata"]["name"]] = self.train(cm, now)
        return plan

    def train(self, config_map: Mapping[str, Any], now: dt.datetime) -> runs.JobOutcome:
        """The trainer Job, in process: the operator's run spec (plus ``now``) through the same entry
        the Job's command runs; its termination message becomes the Job outcome."""
        from noria_trainer.run import run_from_file

        spec = json.loads(config_map["data"][runs.RUN_SPEC_KEY])
        spec["now"] = now_iso(now)
        run_id = spec["runId"]
        path = self.root / "runs" / f"{run_id}.json"
        path.write_text(json.dumps(spec, indent=1))
        termination = self.root / "runs" / f"{run_id}.termination"
        self.progress(f"{self.policy.name}: {run_id} ({spec['trigger']}) at {now_iso(now)}")
        with open(self.root / "runs" / f"{run_id}.log", "w") as log:
            code = run_from_file(str(path), str(termination), stream=log)
        text = termination.read_text() if termination.exists() else ""
        summary = runs.parse_summary(text)
        when = now_iso(now)
        if code == 0:
            return runs.JobOutcome(runs.SUCCEEDED, summary, finished_at=when, created_at=when)
        return runs.JobOutcome(runs.FAILED, summary, "BackoffLimitExceeded", f"trainer exit code {code}", when, when)

    def passes(self, now: dt.datetime, record: SliceRecord | None) -> None:
        """Operator passes at ``now`` until nothing more happens (a run that starts also finishes)."""
        for _ in range(MAX_PASSES_PER_SLICE):
            plan = self.operator_pass(now, record)
            if plan.run_objects is None and plan.register is None and plan.finished is None:
                return

    def _request_retrain(self, served_rows: int, previous: int) -> None:
        assert self.policy.every_rows is not None
        if served_rows // self.policy.every_rows > previous // self.policy.every_rows:
            meta = self.tp["metadata"]
            meta["annotations"] = {**meta["annotations"],
                                   triggers.RETRAIN_ANNOTATION: f"rows-{served_rows // self.policy.every_rows}"}

    # -- the loop --
    def run(self) -> PolicyRecord:
        traffic = self.data.traffic
        cuts = slices(_utc_naive(traffic[self.ts_col]), self.size)
        if not cuts:
            raise ValueError("no traffic to replay")
        start = cuts[0].start
        self._land(start)
        self.passes(start, None)
        for s in cuts:
            self.record.slices.append(self._slice(s, traffic))
        return self.record

    def _slice(self, s: Slice, traffic: pd.DataFrame) -> SliceRecord:
        part = traffic.iloc[s.start_row:s.stop_row]
        version, metrics = self._serve(part, s.start_row)
        if self.policy.kind == EVERY and s.stop_row < len(traffic):  # a run after the last slice serves nobody
            self._request_retrain(s.stop_row, s.start_row)
        self._land(s.end)
        if self.data.feedback_log:
            self._log_feedback(s.end)
        record = SliceRecord(s.index, now_iso(s.start), now_iso(s.end), s.rows, version, metrics)
        self.passes(s.end, record)
        state = (self.tp.get("status") or {}).get("triggers") or {}
        record.drift = (state.get(triggers.DRIFT) or {}).get("value")
        record.performance = (state.get(triggers.PERFORMANCE) or {}).get("value")
        return record
