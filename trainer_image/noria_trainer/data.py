"""Reading training data (CSV or Parquet: one file, a folder, or a glob of partitions, through any
fsspec URI), windowing it, and merging labelled production feedback (ARCHITECTURE.md §4)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
from noria import store

from noria_trainer.spec import Window

FEEDBACK_ID_COLUMN = "__noria_prediction_id"


class DataError(Exception):
    """The data cannot be read, or a window leaves nothing to train on; the message says which file."""


def _format_of(path: str, declared: str | None) -> str:
    if declared:
        return declared
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(f"cannot tell the format of {path}: set spec.data.format to csv or parquet")


def list_data_files(source: str, declared_format: str | None) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Files of a source: a file, a folder (every file of the format beneath it), or a glob."""
    fs, path = store.filesystem(source)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        suffixes = {"parquet": (".parquet", ".pq"), "csv": (".csv", ".csv.gz")}
        wanted = suffixes[declared_format] if declared_format else (".parquet", ".pq", ".csv", ".csv.gz")
        files = sorted(p for p in fs.find(path) if p.lower().endswith(wanted)
                       and not p.rsplit("/", 1)[-1].startswith((".", "_")))
    elif fs.isfile(path):
        files = [path]
    else:
        raise DataError(f"data source {source} does not exist")
    if not files:
        raise DataError(f"data source {source} holds no {declared_format or 'csv/parquet'} files")
    return fs, files


def read_source(source: str, declared_format: str | None) -> tuple[pd.DataFrame, list[str]]:
    fs, files = list_data_files(source, declared_format)
    formats = {_format_of(f, declared_format) for f in files}
    if len(formats) > 1:
        raise DataError(f"data source {source} mixes csv and parquet files: set spec.data.format")
    frames = []
    for path in files:
        fmt = _format_of(path, declared_format)
        try:
            with fs.open(path, "rb") as handle:
                if fmt == "parquet":
                    frame = pd.read_parquet(handle)
                else:
                    frame = pd.read_csv(handle, compression="gzip" if path.endswith(".gz") else None)
        except pd.errors.EmptyDataError:
            raise DataError(f"data file {path} is empty") from None
        except Exception as exc:  # pyarrow and the CSV parser raise many types; all mean "unreadable"
            raise DataError(f"cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from exc
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if data.empty:
        raise DataError(f"data source {source} has no rows ({len(files)} file(s))")
    return data, files


def parse_timestamps(data: pd.DataFrame, column: str) -> pd.Series:
    if column not in data.columns:
        raise DataError(f"timestamp column {column!r} is not in the data (columns: {', '.join(map(str, data.columns))})")
    values = data[column]
    try:
        if pd.api.types.is_numeric_dtype(values):
            return pd.to_datetime(values, unit="s", utc=True)
        return pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise DataError(f"timestamp column {column!r} has values that are not times: {exc}") from None


def order_by_time(data: pd.DataFrame, column: str | None) -> pd.DataFrame:
    """Oldest first, so "the last N rows" and a time-ordered holdout mean the newest data."""
    if not column:
        return data.reset_index(drop=True)
    stamps = parse_timestamps(data, column)
    if stamps.isna().any():
        raise DataError(f"timestamp column {column!r} has {int(stamps.isna().sum())} empty value(s)")
    out = data.assign(**{column: stamps})
    return out.sort_values(column, kind="stable").reset_index(drop=True)


def apply_window(data: pd.DataFrame, window: Window | None, timestamp_column: str | None,
                 now: dt.datetime) -> pd.DataFrame:
    """Rows of ``data`` (already time-ordered) inside ``window``; raises when none are left."""
    if window is None:
        return data
    if window.rows is not None:
        out = data.tail(window.rows)
    else:
        assert window.duration is not None and timestamp_column
        cutoff = pd.Timestamp(now - window.duration)
        out = data[data[timestamp_column] >= cutoff]
    if out.empty:
        newest = data[timestamp_column].max() if timestamp_column and not data.empty else None
        hint = f"; the newest row is from {newest}" if newest is not None else ""
        raise DataError(f"window last {window.label} (before {now.isoformat()}) has no rows{hint}")
    return out.reset_index(drop=True)


# --- feedback loop --------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackMerge:
    rows: pd.DataFrame  # features + target (+ timestamp), one row per labelled prediction id
    predictions_read: int
    labels_read: int
    duplicate_predictions: int
    duplicate_labels: int
    unmatched_labels: int
    files: int

    def report(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "predictionsRead": self.predictions_read, "labelsRead": self.labels_read,
                "duplicatePredictions": self.duplicate_predictions, "duplicateLabels": self.duplicate_labels,
                "unmatchedLabels": self.unmatched_labels, "files": self.files}


def _read_jsonl(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[dict[str, Any]], int]:
    if not fs.isdir(root):
        return [], 0
    files = sorted(p for p in fs.find(root) if p.endswith(".jsonl"))
    records: list[dict[str, Any]] = []
    for path in files:
        with fs.open(path, "r") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a log still being written: skip it, never fail the run
                if isinstance(record, dict) and record.get("id") is not None:
                    records.append(record)
    return records, len(files)


def merge_feedback(store_root: str, namespace: str, pipeline: str, target: str, features: list[str],
                   timestamp_column: str | None) -> FeedbackMerge:
    """Join logged predictions with ground-truth labels by prediction id.

    Predictions: ``<root>/<ns>/<pipeline>/predictions/<version>/<date>/<pod>-<seq>.jsonl`` with lines
    ``{"id", "ts", "model_version", "features": {...}, "prediction"}``; labels:
    ``<root>/<ns>/<pipeline>/feedback/<date>/<pod>-<seq>.jsonl`` with ``{"id", "ts", "label"}``.
    A prediction id logged twice (a retried write, a mirrored request) counts once; an id labelled
    twice keeps its latest label (a correction wins)."""
    fs, root = store.filesystem(store.pipeline_root(store_root, namespace, pipeline))
    predictions, pred_files = _read_jsonl(fs, root + "/predictions")
    labels, label_files = _read_jsonl(fs, root + "/feedback")
    by_id: dict[str, dict[str, Any]] = {}
    for record in predictions:
        by_id.setdefault(str(record["id"]), record)
    latest_label: dict[str, dict[str, Any]] = {}
    for record in labels:
        if "label" not in record or record["label"] is None:
            continue
        key = str(record["id"])
        previous = latest_label.get(key)
        if previous is None or str(record.get("ts", "")) >= str(previous.get("ts", "")):
            latest_label[key] = record
    rows = []
    unmatched = 0
    for key, label in latest_label.items():
        prediction = by_id.get(key)
        if prediction is None:
            unmatched += 1
            continue
        logged = prediction.get("features") or {}
        row = {name: logged.get(name) for name in features}
        row[target] = label["label"]
        if timestamp_column:
            row[timestamp_column] = prediction.get("ts") or label.get("ts")
        row[FEEDBACK_ID_COLUMN] = key
        rows.append(row)
    columns = [*features, target] + ([timestamp_column] if timestamp_column else []) + [FEEDBACK_ID_COLUMN]
    frame = pd.DataFrame(rows, columns=columns)
    return FeedbackMerge(
        rows=frame,
        predictions_read=len(predictions),
        labels_read=len(labels),
        duplicate_predictions=len(predictions) - len(by_id),
        duplicate_labels=sum(1 for r in labels if r.get("label") is not None) - len(latest_label),
        unmatched_labels=unmatched,
        files=pred_files + label_files,
    )
