"""One training run, stage by stage: spec → output check → champion → data → feedback → window →
validation → split → (window candidates) → tuning → training → evaluation → gate → refit → artifact set.

The rows a run learns from are the data and the labelled feedback together, ordered by time and cut
by one window; the holdout is the newest slice of them; the contender and the champion are scored
on that same holdout; once the gate has passed the contender, the model shipped is refit on the
whole window, holdout included (docs/training.md).

Each stage prints a JSON progress line (``kubectl logs`` shows where a long run is) and records its
wall time and peak memory in ``report.json``. Any failure becomes a ``RunFailure`` carrying the
stage, the exit code and a reason in words; nothing is written under ``outputUri`` unless the
whole set is ready (see ``artifacts``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pandas as pd
from noria import objectstore, runspec, store
from noria.api.common import format_timestamp
from noria.artifact import (
    ArtifactError,
    dumps_model,
    load_verified,
    loads_verified,
    read_bounded,
    sha256_digest,
)
from noria.artifact_scope import DATA_SOURCE_FIELD
from noria.profile import Profile, build_profile
from noria.runspec import (
    EXIT_CHAMPION,
    EXIT_DATA,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_SPEC,
    EXIT_TRAINING,
    EXIT_UNEXPECTED,
    EXIT_VALIDATION,
)

from noria_trainer import data as data_mod
from noria_trainer import feast_source, training
from noria_trainer.artifacts import OutputError, OutputLocation
from noria_trainer.estimators import (
    EstimatorError,
    build_pipeline,
    check_dask_params,
    check_engine,
    check_import_path,
    estimator_class,
)
from noria_trainer.spec import PipelineSpec, RunSpec, SpecError, Window, parse_run_spec
from noria_trainer.validation import ValidationOutcome, feature_names, validate

# Exit codes (EXIT_*): one definition in noria.runspec, which the Job's podFailurePolicy reads too.
SUMMARY_LIMIT = runspec.SUMMARY_LIMIT
METADATA_SCHEMA = "noria.dev/metadata/v1"
REPORT_SCHEMA = "noria.dev/report/v1"


class RunFailure(Exception):
    def __init__(self, stage: str, exit_code: int, reason: str):
        super().__init__(reason)
        self.stage, self.exit_code, self.reason = stage, exit_code, reason


# --- progress and per-stage resources ---------------------------------------------------------
def _reset_peak_rss() -> None:
    try:  # Linux ≥ 4.0: "5" resets the VmHWM high-water mark, giving a per-stage peak
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


@dataclass
class Reporter:
    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    stages: list[dict[str, Any]] = field(default_factory=list)
    _stage: str | None = None
    _stage_started: float = 0.0

    def emit(self, stage: str, **fields: Any) -> None:
        line = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "stage": stage, "elapsed": round(time.monotonic() - self.started, 3), **fields}
        self.stream.write(json.dumps(line, default=str) + "\n")
        self.stream.flush()

    def begin(self, stage: str, **fields: Any) -> None:
        self.end()
        _reset_peak_rss()
        self._stage, self._stage_started = stage, time.monotonic()
        self.emit(stage, event="start", **fields)

    def end(self, **fields: Any) -> None:
        if self._stage is None:
            return
        seconds = round(time.monotonic() - self._stage_started, 3)
        record = {"stage": self._stage, "seconds": seconds, "peakRssMB": _peak_rss_mb()}
        self.stages.append(record)
        self.emit(self._stage, event="done", seconds=seconds, peakRssMB=record["peakRssMB"], **fields)
        self._stage = None


# --- summary ----------------------------------------------------------------------------------
def decimal_strings(metrics: dict[str, float] | None) -> dict[str, str] | None:
    if metrics is None:
        return None
    return {k: ("NaN" if math.isnan(v) else f"{v:.4f}") for k, v in metrics.items()}


def fit_summary(summary: Mapping[str, Any], limit: int = SUMMARY_LIMIT) -> str:
    """The summary as compact JSON of at most ``limit`` bytes: the reason is shortened first,
    then champion metrics, then metrics are dropped (they are in report.json anyway)."""
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    trimmed = dict(summary)
    for step in ("reason", "championMetrics", "metrics"):
        if step == "reason":
            over = len(text.encode()) - limit
            trimmed["reason"] = str(trimmed.get("reason") or "")[: max(200, len(str(trimmed.get("reason"))) - over - 20)]
            trimmed["reason"] = trimmed["reason"][:-1] + "…" if trimmed["reason"] else trimmed["reason"]
        else:
            trimmed[step] = None
        text = json.dumps(trimmed, separators=(",", ":"))
        if len(text.encode()) <= limit:
            return text
    trimmed["reason"] = str(trimmed.get("reason") or "")[:200]
    return json.dumps(trimmed, separators=(",", ":"))


def failure_summary(raw: Any, failure: RunFailure) -> runspec.FailureSummary:
    """The summary of a failed run (``noria.runspec.FailureSummary``): the run it names is taken from
    the run spec only where it has the right type, so a malformed spec still gives a summary the
    operator reads (and shows the reason of) rather than one it refuses."""
    raw = raw if isinstance(raw, dict) else {}
    run_id, version = raw.get("runId"), raw.get("version")
    return runspec.FailureSummary(
        status="failed",
        runId=run_id if isinstance(run_id, str) else None,
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        failedStage=failure.stage,
        reason=failure.reason,
        exitCode=failure.exit_code,
    )


# --- the run ------------------------------------------------------------------------------------
def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("noria", "scikit-learn", "numpy", "pandas", "pyarrow", "skops", "scipy", "fsspec", "feast"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, sort_keys=True, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return format_timestamp(value.floor("s").to_pydatetime() if isinstance(value, pd.Timestamp) else value)
    return str(value)


def _suffix_length(base: pd.DataFrame, window: Window | None, ts_col: str | None, now: dt.datetime) -> int:
    if window is None:
        return len(base)
    if window.rows is not None:
        return min(window.rows, len(base))
    assert window.duration is not None and ts_col
    return int((base[ts_col] >= pd.Timestamp(now - window.duration)).sum())


@dataclass(frozen=True)
class WindowedRows:
    windowed: pd.DataFrame  # data and feedback rows inside the widest window, oldest first
    features: list[str]
    feedback: data_mod.FeedbackMerge | None
    files: list[str]
    feast: dict[str, Any] | None = None  # repository, featureService, definitionsDigest (spec.data.feast)


def _gather_rows(run: RunSpec, windows: list[Window | None], reporter: Reporter) -> WindowedRows:
    """Load the data, join labelled feedback (deduplicated against the data), order both by time
    and cut the widest window over the two together: a rows window counts feedback rows, a duration
    window places them by their prediction time."""
    spec = run.spec
    reporter.begin("load", source=spec.source)
    try:
        # Defence in depth: the operator starts no run for an out-of-scope source, but the run
        # spec is a ConfigMap in the namespace, so the trainer judges it again before reading.
        scope = data_mod.source_scope(spec.source, run.store_root, run.namespace, run.trusted_data_prefixes)
        frame, files = data_mod.read_source(spec.source, spec.format, scope)
        frame = data_mod.order_by_time(frame, spec.timestamp_column)
    except data_mod.DataError as exc:
        raise RunFailure("data", EXIT_DATA, str(exc)) from exc
    reporter.end(rows=len(frame), files=len(files))
    feast_rows = _join_feast(run, frame, reporter) if spec.feast else None
    if feast_rows is not None:
        frame = feast_rows.frame
    if feast_rows is not None and not spec.features:
        features = list(feast_rows.features)  # the service's or the list's, not the entity keys
    else:
        features = feature_names(frame, spec, (spec.feedback_id_column,) if spec.feedback_id_column else ())

    feedback = None
    if spec.feedback:
        reporter.begin("feedback")
        if not run.store_root:
            raise RunFailure("spec", EXIT_SPEC, "spec.data.feedback is enabled but the run spec has no storeRoot")
        try:
            merged = data_mod.merge_feedback(run.store_root, run.namespace, run.pipeline, spec.target, features,
                                             spec.timestamp_column)
            kept, dropped, key = data_mod.dedupe_against_data(merged.rows, frame, features, spec.timestamp_column,
                                                              spec.feedback_id_column)
        except data_mod.DataError as exc:
            raise RunFailure("data", EXIT_DATA, str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise RunFailure("data", EXIT_DATA, f"cannot read feedback under {run.store_root}: {exc}") from exc
        feedback = dataclasses.replace(merged, rows=kept, already_in_data=dropped, dedupe_key=key)
        reporter.end(**feedback.report())

    pushed = _pushed_rows(run, features, reporter) if spec.feast and spec.feast.feedback_push_source else None
    extra = feedback.rows if feedback else None
    if pushed is not None and not pushed.frame.empty:
        # A label both in the feedback log and pushed to Feast (the same prediction id) counts once.
        extra = pushed.frame if extra is None else pd.concat([extra, pushed.frame], ignore_index=True).drop_duplicates(
            subset=[data_mod.FEEDBACK_ID_COLUMN], keep="first")
    combined = data_mod.combine(frame, extra, spec.timestamp_column)
    reporter.begin("window", windows=[w.label if w else "all" for w in windows])
    lengths = [_suffix_length(combined, w, spec.timestamp_column, run.now) for w in windows]
    widest = windows[int(np.argmax(lengths))]
    try:
        windowed = data_mod.apply_window(combined, widest, spec.timestamp_column, run.now)
    except data_mod.DataError as exc:
        raise RunFailure("data", EXIT_DATA, str(exc)) from exc
    reporter.end(rows=len(windowed), feedbackRows=int(windowed[data_mod.FEEDBACK_ID_COLUMN].notna().sum()))
    return WindowedRows(windowed, features, feedback, files, feast_rows.lineage if feast_rows else None)


def _pushed_rows(run: RunSpec, features: list[str], reporter: Reporter) -> feast_source.PushedRows:
    """Labelled production rows the model servers pushed to Feast (spec.data.feast.feedbackPushSource),
    as training rows with the features as served; the window then selects them by prediction time."""
    spec = run.spec
    assert spec.feast is not None and spec.feast.feedback_push_source and spec.timestamp_column
    reporter.begin("feastFeedback", pushSource=spec.feast.feedback_push_source)
    try:
        pushed = feast_source.pushed_rows(spec.feast, spec.timestamp_column, spec.target, features)
    except data_mod.DataError as exc:
        raise RunFailure("data", EXIT_DATA, str(exc)) from exc
    reporter.end(rows=len(pushed.frame), read=pushed.read, duplicates=pushed.duplicates)
    return pushed


def _join_feast(run: RunSpec, entities: pd.DataFrame, reporter: Reporter) -> feast_source.FeastRows:
    """The entity rows with their features from Feast, as of each row's time (noria_trainer.feast_source).
    The repository is judged by the same place rule as the source before Feast opens it."""
    spec = run.spec
    assert spec.feast is not None and spec.timestamp_column  # the API requires a timestampColumn with feast
    reporter.begin("feast", repository=spec.feast.repository, featureService=spec.feast.feature_service)
    try:
        data_mod.source_scope(spec.feast.repository, run.store_root, run.namespace, run.trusted_data_prefixes)
        joined = feast_source.historical_rows(entities, spec.timestamp_column, spec.feast)
        joined = dataclasses.replace(joined, frame=data_mod.order_by_time(joined.frame, spec.timestamp_column))
    except data_mod.DataError as exc:
        raise RunFailure("data", EXIT_DATA, str(exc).replace(DATA_SOURCE_FIELD, "spec.data.feast.repository")
                         ) from exc
    reporter.end(rows=len(joined.frame), features=len(joined.features), rowsWithoutFeatures=joined.unmatched,
                 definitionsDigest=joined.lineage["definitionsDigest"])
    return joined


def _load_champion(run: RunSpec, reporter: Reporter) -> tuple[Any, Profile | None]:
    """The champion's verified model and its profile (None, None without a champion)."""
    champion_model, champion_profile = None, None
    if run.champion is not None:
        reporter.begin("champion", name=run.champion.name)
        # A refused champion fails the run rather than training on without a comparison: a champion
        # that does not verify means the store or its ModelVersion was tampered with, and a contender
        # that skipped the must-beat-the-champion gate could be approved onto users unchallenged.
        # Failing here writes nothing (no output exists yet) and leaves the champion serving.
        store_root = run.store_root or None
        try:
            champion_model = load_verified(run.champion.artifact_uri, run.champion.digest, store_root)
        except ArtifactError as exc:
            raise RunFailure("champion", EXIT_CHAMPION, f"champion {run.champion.name} refused ({exc.kind}): "
                                                        f"{exc.message}") from exc
        if run.champion.profile_uri:
            try:
                champion_profile = Profile.from_dict(json.loads(read_bounded(run.champion.profile_uri, store_root)))
            except ArtifactError as exc:
                raise RunFailure("champion", EXIT_CHAMPION, f"champion {run.champion.name}: its profile is refused "
                                                            f"({exc.kind}): {exc.message}") from exc
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RunFailure("champion", EXIT_CHAMPION,
                                 f"champion {run.champion.name}: cannot read its profile "
                                 f"{run.champion.profile_uri}: {exc}") from exc
        reporter.end()
    return champion_model, champion_profile


@dataclass(frozen=True)
class Split:
    """The holdout and what is left to train on, for every candidate window."""

    pool: pd.DataFrame  # rows older than the holdout (or the random rest)
    holdout: pd.DataFrame
    ordered: bool  # rows have an order: the holdout is the newest slice
    lengths: list[int]  # rows of each candidate window, holdout included

    @property
    def holdout_feedback(self) -> int:
        return int(self.holdout[data_mod.FEEDBACK_ID_COLUMN].notna().sum())

    def training_set(self, window_length: int) -> pd.DataFrame:
        """The rows a model of a window of ``window_length`` rows trains on: the window minus the holdout."""
        if not self.ordered:
            return self.pool.reset_index(drop=True)
        return self.pool.tail(max(0, window_length - len(self.holdout))).reset_index(drop=True)


def _split(checked: pd.DataFrame, windows: list[Window | None], run: RunSpec, reporter: Reporter) -> Split:
    """The holdout is the newest rows of the shortest window, feedback included (or a random share
    when the rows have no order)."""
    spec = run.spec
    reporter.begin("split")
    lengths = [_suffix_length(checked, w, spec.timestamp_column, run.now) for w in windows]
    ordered = bool(spec.timestamp_column) or len(windows) > 1 or (windows[0] is not None)
    if ordered:
        shortest = min(lengths)
        if shortest < 2:
            raise RunFailure("data", EXIT_DATA, f"window {windows[int(np.argmin(lengths))].label} "  # type: ignore[union-attr]
                             f"has {shortest} row(s): too few to hold any out for evaluation")
        n_hold = training.holdout_size(shortest, spec.holdout_fraction)
        holdout = checked.tail(n_hold).reset_index(drop=True)
        pool = checked.iloc[: len(checked) - n_hold]
    else:
        pool, holdout = training.split_random(checked, spec)
    split = Split(pool, holdout, ordered, lengths)
    reporter.end(holdoutRows=len(holdout), holdoutFeedbackRows=split.holdout_feedback)
    return split


def _choose_window(split: Split, windows: list[Window | None], spec: PipelineSpec, features: list[str],
                   pipeline_with: Callable[[dict[str, Any]], Any], reporter: Reporter) -> tuple[int, list[dict[str, Any]]]:
    """With window candidates: fit on each, score on the shared holdout, keep the best. Returns the
    index of the chosen window and one report entry per candidate (empty with a single window)."""
    if len(windows) == 1:
        return 0, []
    X_hold, y_hold = split.holdout[features], split.holdout[spec.target]
    candidate_reports: list[dict[str, Any]] = []
    chosen_index = 0
    reporter.begin("candidates", candidates=len(windows))
    best_score = float("nan")
    for i, (window, length) in enumerate(zip(windows, split.lengths, strict=True)):
        assert window is not None
        train_i = split.training_set(length)
        entry: dict[str, Any] = {"window": window.label, "rows": len(train_i)}
        if len(train_i) < max(2, spec.min_rows) or (spec.task == "classification"
                                                   and train_i[spec.target].nunique() < 2):
            entry["skipped"] = f"{len(train_i)} training row(s) are too few (minRows {spec.min_rows})"
        else:
            try:
                model_i = pipeline_with(spec.params).fit(train_i[features], train_i[spec.target])
                score = training.evaluate(model_i, X_hold, y_hold, spec.task).get(spec.metric, float("nan"))
            except (ValueError, TypeError) as exc:
                raise RunFailure("training", EXIT_TRAINING, f"training on window {window.label} failed: {exc}") from exc
            entry["score"] = round(score, 6)
            if training.better(spec.metric, score, best_score):
                best_score, chosen_index = score, i
        candidate_reports.append(entry)
        reporter.emit("candidates", **entry)
    if all("skipped" in e for e in candidate_reports):
        raise RunFailure("data", EXIT_DATA, "every candidate window is too small to train on: "
                         + "; ".join(f"{e['window']}: {e['skipped']}" for e in candidate_reports))
    for i, entry in enumerate(candidate_reports):
        entry["chosen"] = i == chosen_index
    reporter.end(chosen=windows[chosen_index].label)  # type: ignore[union-attr]
    return chosen_index, candidate_reports


def _refit_record(verdict: str, shipped_rows: int, training_rows: int, holdout_rows: int, params: dict[str, Any],
                  metrics: dict[str, float], champion_metrics: dict[str, float] | None, metric: str) -> dict[str, Any]:
    """What report.json says about the model shipped. Only a passed contender is refit: a Rejected
    version is never approved or served, so refitting it would cost a fit for nothing."""
    done = verdict == "passed"
    gated = metrics.get(metric)
    champion = None if champion_metrics is None else champion_metrics.get(metric)
    if done:
        note = (f"the model shipped was refit on all {shipped_rows} rows of the window, the {holdout_rows}-row "
                f"holdout included, with the same hyper-parameters; the scores (and the ModelVersion's metrics) "
                f"are the gated model's on that holdout, trained on the other {training_rows} rows")
    else:
        note = "not refit: the gate rejected the contender, so its artifact is the model as gated"
    return {"done": done, "rows": shipped_rows if done else training_rows, "holdoutIncluded": done,
            "params": params, "gatedScore": gated, "championScore": champion, "metric": metric, "note": note}


def _check_spec(raw: Any, reporter: Reporter) -> RunSpec:
    """Stage "spec": everything that can be checked without reading data or importing the estimator."""
    reporter.begin("spec")
    try:
        run = parse_run_spec(raw)
        check_engine(run.spec.estimator, run.spec.task, run.spec.engine)  # refused as a string, before any import
        if run.spec.engine == "dask":
            check_dask_params(run.spec.estimator, run.spec.task, run.spec.params, run.spec.seed)
        else:
            check_import_path(run.spec.estimator)
            estimator_class(run.spec.estimator, run.spec.task)
            build_pipeline(run.spec.estimator, run.spec.task, run.spec.params, [], [], run.spec.seed)
    except (SpecError, EstimatorError) as exc:
        raise RunFailure("spec", EXIT_SPEC, str(exc)) from exc
    reporter.end(runId=run.run_id, version=run.version, estimator=run.spec.estimator)
    return run


def _artifact_uris(output: OutputLocation) -> dict[str, str]:
    return {name: output.file_uri(name) for name in store.ARTIFACT_FILES}


def success_summary(metadata: dict[str, Any], report: dict[str, Any],
                    uris: dict[str, str]) -> runspec.SuccessSummary:
    """The summary of a written artifact set (``noria.runspec.SuccessSummary``), from its
    metadata.json and report.json as written: a run that wrote the set and a retried pod of the
    same run that finds it report the same."""
    data, evaluation = metadata["data"], metadata["evaluation"]
    summary = runspec.SuccessSummary(
        status="succeeded", runId=metadata["runId"], version=metadata["version"],
        digest=metadata["artifact"]["digest"],
        artifactUri=uris[store.MODEL_FILE], profileUri=uris[store.PROFILE_FILE],
        metadataUri=uris[store.METADATA_FILE], reportUri=uris[store.REPORT_FILE],
        metrics=evaluation["metrics"], championMetrics=evaluation["championMetrics"],
        verdict=evaluation["verdict"], reason=report["gate"]["reason"], rows=data["rows"],
        feedbackRows=data["feedbackRows"], window=data["window"], trainedAt=metadata["trainedAt"],
        failedStage=None, refit=runspec.RefitSummary(done=report["refit"]["done"], rows=report["refit"]["rows"]),
    )
    if data.get("feast"):
        summary["feast"] = data["feast"]
    return summary


def _written_by_this_run(run: RunSpec, output: OutputLocation) -> runspec.SuccessSummary | None:
    """The summary of the artifact set at ``outputUri`` when an earlier pod of this same run wrote
    it (a pod evicted or killed after its write, before the Job saw it succeed): same ``runId`` and
    version in metadata.json, and a model file whose digest is the one recorded. None when there is
    no set, or it belongs to another run (then the output check refuses it: a version is never
    overwritten)."""
    fs, path = store.filesystem(output.uri)
    if not fs.exists(path):
        return None
    try:
        with fs.open(f"{path}/{store.METADATA_FILE}", "rb") as handle:
            metadata = json.loads(handle.read())
        with fs.open(f"{path}/{store.REPORT_FILE}", "rb") as handle:
            report = json.loads(handle.read())
        # a Dask run's model file: the XGBoost envelope, or a linear model's skops file (noria_trainer.dask_training)
        if run.spec.engine == "dask":
            from noria_trainer import dask_training

            model_file = dask_training.model_file(run.spec)
        else:
            model_file = store.MODEL_FILE
        with fs.open(f"{path}/{model_file}", "rb") as handle:
            digest = sha256_digest(handle.read())
    except (OSError, ValueError):
        return None
    if (metadata.get("runId"), metadata.get("version")) != (run.run_id, run.version):
        return None
    if digest != (metadata.get("artifact") or {}).get("digest"):
        return None
    if run.spec.engine == "dask":
        return dask_training.summary_of(metadata, report, dask_training.artifact_uris(output, model_file))
    return success_summary(metadata, report, _artifact_uris(output))


def _check_output(run: RunSpec, reporter: Reporter) -> tuple[OutputLocation, runspec.SuccessSummary | None]:
    """Stage "output-check": the location, and the summary of this run's set if a pod wrote it already."""
    reporter.begin("output-check", outputUri=run.output_uri)
    output = OutputLocation.of(run.output_uri)
    done = _written_by_this_run(run, output)
    if done is not None:
        reporter.end(foundWrittenBy=run.run_id)
        return output, done
    try:
        output.preflight()
    except OutputError as exc:
        raise RunFailure("output", EXIT_OUTPUT, str(exc)) from exc
    reporter.end()
    return output, None


@dataclass(frozen=True)
class Gated:
    """What tuning, training, evaluation and the gate produced."""

    model: Any  # the gated model, trained without the holdout
    params: dict[str, Any]
    tuning: dict[str, Any] | None
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_error: str | None
    decision: Any  # training.GateDecision


def _train_and_gate(run: RunSpec, pipeline_with: Callable[[dict[str, Any]], Any], train: pd.DataFrame,
                    holdout: pd.DataFrame, features: list[str], champion_model: Any, reporter: Reporter) -> Gated:
    """Stages tuning (when asked), training, evaluation (contender and champion on the same
    holdout) and the gate."""
    spec = run.spec
    X_train, y_train = train[features], train[spec.target]
    X_hold, y_hold = holdout[features], holdout[spec.target]
    final_params = dict(spec.params)
    tuning_report: dict[str, Any] | None = None
    if spec.tuning_strategy:
        reporter.begin("tuning", strategy=spec.tuning_strategy, trials=spec.tuning_trials)
        result = training.tune(pipeline_with(spec.params), X_train, y_train, spec, reporter.emit)
        final_params.update(result.best_params)
        tuning_report = {"strategy": spec.tuning_strategy, "bestParams": result.best_params,
                         "bestCvScore": None if math.isnan(result.best_score) else round(result.best_score, 6),
                         "stoppedByTimeBudget": result.stopped_by_budget, "trials": result.trials}
        reporter.end(bestParams=result.best_params)

    reporter.begin("training", rows=len(train), features=len(features))
    try:
        gated_model = training.set_model_params(pipeline_with(spec.params), final_params).fit(X_train, y_train)
    except (ValueError, TypeError) as exc:
        raise RunFailure("training", EXIT_TRAINING, f"{spec.estimator} failed to fit: {exc}") from exc
    reporter.end()

    reporter.begin("evaluation", holdoutRows=len(holdout))
    try:
        metrics = training.evaluate(gated_model, X_hold, y_hold, spec.task)
    except (ValueError, TypeError) as exc:
        raise RunFailure("evaluation", EXIT_TRAINING, f"evaluating the contender failed: {exc}") from exc
    champion_metrics, champion_error = None, None
    if champion_model is not None:
        try:
            champion_columns = list(getattr(champion_model, "feature_names_in_", features))
            champion_metrics = training.evaluate(champion_model, holdout[champion_columns], y_hold, spec.task)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            champion_error = f"{type(exc).__name__}: {exc}"
    reporter.end(metric=spec.metric, score=metrics.get(spec.metric))

    assert run.champion is None or champion_model is not None
    decision = training.decide_gate(
        spec.metric, metrics.get(spec.metric, float("nan")),
        None if champion_metrics is None else champion_metrics.get(spec.metric, float("nan")),
        run.champion.name if run.champion else None, spec.min_score, spec.max_score, spec.must_beat_champion_by,
        spec.thresholds_as_written)
    reporter.emit("gate", verdict=decision.verdict, reason=decision.reason)
    return Gated(gated_model, final_params, tuning_report, metrics, champion_metrics, champion_error, decision)


def execute(raw: Any, reporter: Reporter) -> runspec.SuccessSummary:
    """Run everything, stage by stage (module docstring); return the success summary or raise RunFailure."""
    run = _check_spec(raw, reporter)
    output, written = _check_output(run, reporter)
    if written is not None:  # an earlier pod of this run finished the work; report it again
        return written
    champion_model, champion_profile = _load_champion(run, reporter)
    if run.spec.engine == "dask":
        return _execute_on_dask(run, output, reporter, champion_model)
    # rows: data and labelled feedback, ordered by time and windowed together
    windows: list[Window | None] = list(run.spec.window_candidates) or [run.spec.window]
    rows = _gather_rows(run, windows, reporter)
    outcome, checked = _validate(rows, run.spec, champion_profile, reporter)
    pipeline_with = _pipeline_factory(run.spec, rows.features, outcome.kinds)
    split = _split(checked, windows, run, reporter)
    chosen_index, candidate_reports = _choose_window(split, windows, run.spec, rows.features, pipeline_with, reporter)
    train = _training_rows(split, chosen_index, run.spec)
    gated = _train_and_gate(run, pipeline_with, train, split.holdout, rows.features, champion_model, reporter)
    trained = Trained(run, rows, outcome, checked, split, windows[chosen_index], candidate_reports, train, gated)
    model, refit = _refit(trained, pipeline_with, reporter)
    reporter.begin("artifacts")
    model_bytes, digest, untrusted, profile = _package(trained, model, refit["done"])
    uris = _artifact_uris(output)
    metadata = _metadata(trained, model, refit["done"], digest, untrusted, uris)
    report = _report(trained, refit, reporter)
    reporter.end()
    _write(output, model_bytes, profile, metadata, report, reporter)
    return success_summary(json.loads(_json_bytes(metadata)), json.loads(_json_bytes(report)), uris)


def _execute_on_dask(run: RunSpec, output: OutputLocation, reporter: Reporter,
                     champion_model: Any) -> runspec.SuccessSummary:
    """The same run on the Dask cluster of ``spec.compute`` (noria_trainer.dask_training)."""
    from noria_trainer import dask_training

    try:
        return dask_training.execute(run, output, reporter, champion_model)
    except dask_training.DaskRunError as exc:
        raise RunFailure(exc.stage, exc.exit_code, exc.reason) from exc


def _validate(rows: WindowedRows, spec: PipelineSpec, champion_profile: Profile | None,
              reporter: Reporter) -> tuple[ValidationOutcome, pd.DataFrame]:
    """Stage "validation": the windowed rows against the spec (and the champion's profile)."""
    reporter.begin("validation", rows=len(rows.windowed))
    outcome = validate(rows.windowed, spec, rows.features, champion_profile)
    if not outcome.ok or outcome.data is None:
        raise RunFailure("validation", EXIT_VALIDATION, f"data validation failed: {outcome.reason}")
    reporter.end(rows=len(outcome.data), droppedNullTarget=outcome.dropped_null_target)
    return outcome, outcome.data


def _pipeline_factory(spec: PipelineSpec, features: list[str], kinds: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
    """A fresh, unfitted estimator pipeline for a parameter set (preprocessing by column kind)."""
    numeric = [c for c in features if kinds[c] == "numeric"]
    categorical = [c for c in features if kinds[c] == "categorical"]

    def pipeline_with(params: dict[str, Any]) -> Any:
        return build_pipeline(spec.estimator, spec.task, params, numeric, categorical, spec.seed)

    return pipeline_with


def _training_rows(split: Split, chosen_index: int, spec: PipelineSpec) -> pd.DataFrame:
    """The chosen window minus the holdout; fewer than ``minRows`` fails validation."""
    train = split.training_set(split.lengths[chosen_index])
    if len(train) < spec.min_rows:
        raise RunFailure("validation", EXIT_VALIDATION, f"{len(train)} training row(s) after holding out "
                         f"{len(split.holdout)}, fewer than spec.validation.minRows {spec.min_rows}")
    return train


@dataclass(frozen=True)
class Trained:
    """Everything the run learnt up to the gate, from which the artifact set is described."""

    run: RunSpec
    rows: WindowedRows
    outcome: ValidationOutcome
    checked: pd.DataFrame  # the validated rows of the widest window
    split: Split
    window: Window | None  # the chosen one (None: all rows)
    candidate_reports: list[dict[str, Any]]
    train: pd.DataFrame  # what the gated model learnt from
    gated: Gated

    @property
    def shipped_rows(self) -> pd.DataFrame:
        """What a passed contender is refit on: the whole window, the newest (held-out) rows included."""
        if self.split.ordered:
            return pd.concat([self.train, self.split.holdout], ignore_index=True)
        return self.checked

    @property
    def feedback_rows(self) -> int:
        return int(self.train[data_mod.FEEDBACK_ID_COLUMN].notna().sum()) + self.split.holdout_feedback

    @property
    def window_label(self) -> str:
        return self.window.label if self.window else "all"


def _refit(t: Trained, pipeline_with: Callable[[dict[str, Any]], Any],
           reporter: Reporter) -> tuple[Any, dict[str, Any]]:
    """Stage "refit" (a passed contender only): the model shipped and report.json's ``refit``."""
    spec, gated, shipped_rows = t.run.spec, t.gated, t.shipped_rows
    refit = _refit_record(gated.decision.verdict, len(shipped_rows), len(t.train), len(t.split.holdout),
                          gated.params, gated.metrics, gated.champion_metrics, spec.metric)
    if not refit["done"]:
        return gated.model, refit
    reporter.begin("refit", rows=len(shipped_rows))
    try:
        model = training.set_model_params(pipeline_with(spec.params), gated.params).fit(
            shipped_rows[t.rows.features], shipped_rows[spec.target])
    except (ValueError, TypeError) as exc:
        raise RunFailure("training", EXIT_TRAINING, f"{spec.estimator} failed to refit on the whole window "
                                                    f"({len(shipped_rows)} rows): {exc}") from exc
    reporter.end()
    return model, refit


def _package(t: Trained, model: Any, refit: bool) -> tuple[bytes, str, list[str], Profile]:
    """The model file (checked to load and predict as the server will) and the drift profile of the
    rows the shipped model learnt from."""
    spec, features, kinds = t.run.spec, t.rows.features, t.outcome.kinds
    X_hold = t.split.holdout[features]
    holdout_predictions = model.predict(X_hold)
    model_bytes, untrusted = dumps_model(model)
    digest = sha256_digest(model_bytes)
    try:
        reloaded = loads_verified(model_bytes, digest)
    except ArtifactError as exc:
        raise RunFailure("training", EXIT_TRAINING, f"the saved model would be refused by the server: {exc}") from exc
    if not np.array_equal(np.asarray(reloaded.predict(X_hold)), np.asarray(holdout_predictions)):
        raise RunFailure("training", EXIT_TRAINING, "the saved model predicts differently after reloading")
    profiled = t.shipped_rows if refit else t.train
    profile = build_profile(
        {c: (profiled[c].to_numpy(dtype=float) if kinds[c] == "numeric" else profiled[c].tolist()) for c in features},
        kinds,
        predictions=(holdout_predictions.tolist() if spec.task == "classification"
                     else np.asarray(holdout_predictions, dtype=float).tolist()),
        prediction_kind="categorical" if spec.task == "classification" else "numeric",
    )
    return model_bytes, digest, untrusted, profile


def _metadata(t: Trained, model: Any, refit: bool, digest: str, untrusted: list[str],
              uris: dict[str, str]) -> dict[str, Any]:
    """metadata.json: what the model is, what it learnt from, and its gate scores."""
    run, spec, holdout, gated = t.run, t.run.spec, t.split.holdout, t.gated
    profiled = t.shipped_rows if refit else t.train
    ts_col = spec.timestamp_column
    return {
        "schema": METADATA_SCHEMA,
        "runId": run.run_id, "trigger": run.trigger, "namespace": run.namespace, "pipeline": run.pipeline,
        "version": run.version, "modelVersion": f"{run.pipeline}-v{run.version}",
        "parent": run.champion.name if run.champion else None, "trainedAt": format_timestamp(),
        "data": {"source": spec.source, "format": spec.format, "files": len(t.rows.files), "window": t.window_label,
                 "rows": len(t.train) + len(holdout), "trainingRows": len(t.train), "holdoutRows": len(holdout),
                 "shippedModelRows": len(profiled), "refit": refit,
                 "feedbackRows": t.feedback_rows, "holdoutFeedbackRows": t.split.holdout_feedback,
                 "timestampColumn": ts_col,
                 "from": profiled[ts_col].min() if ts_col and len(profiled) else None,
                 "to": holdout[ts_col].max() if ts_col and len(holdout) else None,
                 **({"feast": t.rows.feast} if t.rows.feast else {})},
        "model": {"task": spec.task, "estimator": spec.estimator, "params": gated.params, "target": spec.target,
                  "features": t.rows.features, "kinds": t.outcome.kinds,
                  "classes": [c.item() if isinstance(c, np.generic) else c for c in getattr(model, "classes_", [])]},
        "artifact": {"file": store.MODEL_FILE, "uri": uris[store.MODEL_FILE], "digest": digest, "format": "skops",
                     "untrustedTypes": untrusted},
        "evaluation": {"metric": spec.metric, "metrics": decimal_strings(gated.metrics),
                       "championMetrics": decimal_strings(gated.champion_metrics), "verdict": gated.decision.verdict,
                       "scoresAre": "the gated model's and the champion's, on the same holdout",
                       **_averaging(spec.task)},
        "libraries": _library_versions(),
    }


def _averaging(task: str) -> dict[str, str]:
    """How the classification scores average over classes, said where the scores are."""
    if task != "classification":
        return {}
    return {"averaging": "precision, recall and f1 are macro averages over the classes seen as actual or "
                         "predicted (noria.scoring), the definition of the live f1 and accuracy checks"}


def _report(t: Trained, refit: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """report.json: how the run chose its window, what validation, tuning and the gate saw."""
    run, spec, holdout, gated, feedback = t.run, t.run.spec, t.split.holdout, t.gated, t.rows.feedback
    window_rows = len(t.train) + len(holdout)
    return {
        "schema": REPORT_SCHEMA, "runId": run.run_id, "version": run.version,
        "validation": t.outcome.report(),
        "window": {"chosen": t.window_label, "candidates": t.candidate_reports, "rows": window_rows,
                   "dataRows": window_rows - t.feedback_rows, "feedbackRows": t.feedback_rows},
        "feedback": {**feedback.report(), "inWindow": t.feedback_rows} if feedback else {"enabled": False, "rows": 0},
        "tuning": gated.tuning,
        "evaluation": {"metric": spec.metric, "holdoutRows": len(holdout),
                       "holdoutFeedbackRows": t.split.holdout_feedback,
                       "holdout": "newest rows of the window" if t.split.ordered else "stratified random share",
                       "contender": gated.metrics, "champion": gated.champion_metrics,
                       "championName": run.champion.name if run.champion else None,
                       "championError": gated.champion_error, **_averaging(spec.task)},
        "gate": {"verdict": gated.decision.verdict, "reason": gated.decision.reason, "minScore": spec.min_score,
                 "maxScore": spec.max_score, "mustBeatChampionBy": spec.must_beat_champion_by},
        "refit": refit,
        "stages": reporter.stages,  # completed stages so far; the write stage is in the logs
    }


def _write(output: OutputLocation, model_bytes: bytes, profile: Profile, metadata: dict[str, Any],
           report: dict[str, Any], reporter: Reporter) -> None:
    """Stage "write": the four files at once, or none."""
    reporter.begin("write", outputUri=output.uri)
    try:
        output.write_atomically({
            store.MODEL_FILE: model_bytes,
            store.PROFILE_FILE: (profile.to_json() + "\n").encode(),
            store.METADATA_FILE: _json_bytes(metadata),
            store.REPORT_FILE: _json_bytes(report),
        })
    except OutputError as exc:
        raise RunFailure("output", EXIT_OUTPUT, str(exc)) from exc
    reporter.end()


def thread_limit() -> int | None:
    """``NORIA_TRAINER_THREADS``: the most threads OpenMP/BLAS pools may use (unset = their default).

    Why: OpenMP workers spin while they wait. When the pod gets fewer CPUs than the node has
    (a CPU limit, a busy node), HistGradientBoosting's spinning threads starve each other; on a
    loaded 2-core machine one fit took 160 s with the default pools and 12 s with one thread.
    The operator sets this from the run's CPU request."""
    raw = os.environ.get("NORIA_TRAINER_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        print(f"ignoring NORIA_TRAINER_THREADS={raw!r}: not an integer", file=sys.stderr)
        return None
    return value if value > 0 else None


def run_from_file(spec_path: str, termination_log: str | None, stream: IO[str] | None = None) -> int:
    """Read the spec file, run, print and record the summary; return the exit code."""
    limit = thread_limit()
    if limit is None:
        return _run_from_file(spec_path, termination_log, stream)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        return _run_from_file(spec_path, termination_log, stream)


def _run_from_file(spec_path: str, termination_log: str | None, stream: IO[str] | None) -> int:
    def load() -> Any:
        try:
            with open(spec_path) as handle:
                return json.load(handle)
        except OSError as exc:
            raise RunFailure("spec", EXIT_SPEC, f"cannot read the run spec {spec_path}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise RunFailure("spec", EXIT_SPEC, f"the run spec {spec_path} is not JSON: {exc}") from exc

    code, _ = _run(load, termination_log, stream)
    return code


def run_document(raw: dict[str, Any], stream: IO[str] | None = None,
                 termination_log: str | None = None) -> tuple[int, dict[str, Any]]:
    """One run on a run spec held in memory: the exit code and the summary exactly as the Job
    reports them (the same ≤ 4 KB JSON). ``noria backtest`` replays the operator's run specs this
    way, with ``now`` set to the replayed instant; progress lines go to ``stream`` (stdout by
    default). ``NORIA_TRAINER_THREADS`` applies as in a Job."""
    limit = thread_limit()
    if limit is None:
        return _run(lambda: raw, termination_log, stream)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        return _run(lambda: raw, termination_log, stream)


def _access_refused(raw: Any, exc: PermissionError) -> RunFailure:
    """The failure of a run the store refused (e.g. s3 403 Forbidden), naming where it read and wrote."""
    raw = raw if isinstance(raw, dict) else {}
    source = (raw.get("spec") or {}).get("data", {}).get("source")
    places = ", ".join(str(p) for p in (source, raw.get("outputUri")) if p) or "the store"
    message = (f"the store refused access ({exc}) to {places}: check spec.store.s3 (credentialsSecret, endpoint,"
               " region) or the pod's workload identity")
    return RunFailure("data", EXIT_DATA, objectstore.redacted(message))


def _run(load: Callable[[], Any], termination_log: str | None, stream: IO[str] | None) -> tuple[int, dict[str, Any]]:
    reporter = Reporter(stream=stream or sys.stdout)
    raw: Any = None
    try:
        raw = load()
        summary, code = execute(raw, reporter), EXIT_OK
    except RunFailure as failure:
        summary, code = failure_summary(raw, failure), failure.exit_code
    except PermissionError as exc:  # an object store's 403 at any stage: retrying cannot help, the spec must change
        refused = _access_refused(raw, exc)
        summary, code = failure_summary(raw, refused), refused.exit_code
    except Exception as exc:  # the summary must still say what happened, for the operator and the user
        unexpected = RunFailure("unexpected", EXIT_UNEXPECTED, f"unexpected {type(exc).__name__}: {exc}")
        summary, code = failure_summary(raw, unexpected), EXIT_UNEXPECTED
        import traceback

        traceback.print_exc(file=sys.stderr)
    reporter.end()
    text = fit_summary(summary)
    if termination_log:
        try:
            with open(termination_log, "w") as handle:
                handle.write(text)
        except OSError as exc:
            print(f"cannot write the termination log {termination_log}: {exc}", file=sys.stderr)
    out = reporter.stream
    out.write(text + "\n")
    out.flush()
    return code, json.loads(text)


def default_termination_log() -> str | None:
    path = "/dev/termination-log"
    return path if os.path.exists(path) else None
