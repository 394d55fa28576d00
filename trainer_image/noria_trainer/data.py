"""Reading training data (CSV or Parquet: one file, a folder, or a glob of partitions, through any
fsspec URI), joining labelled production feedback (docs/training.md) and windowing the two together.

Why feedback joins *before* the window: a window is "the newest N rows" or "the last 3 days" of what
the run may learn from, and in the feedback loop the newest labelled rows are production traffic.
Windowing the data alone and then adding every label ever logged trained on months of old concepts
and judged the result on frozen history; now both kinds of rows are ordered by time and cut together
(docs/training.md has the rules and a worked example)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pandas as pd
from noria import store
from noria.artifact_scope import DATA_SOURCE_FIELD, data_source_scope

from noria_trainer.spec import Window

FEEDBACK_ID_COLUMN = "__noria_prediction_id"  # set on feedback rows only: how a run tells them apart
FEEDBACK_TIME_COLUMN = "__noria_feedback_time"  # the prediction time, while feedback rows are ordered


class DataError(Exception):
    """The data cannot be read, or a window leaves nothing to train on; the message says which file."""


class DataOutOfScope(DataError):
    """The data source (or a file found under it) lies where this run's namespace may not read."""


@dataclass(frozen=True)
class ReadScope:
    """Where one run may read. ``local_root`` is the resolved directory every local file must stay
    in (None for an object store: there are no symlinks, the URI prefix is the whole rule)."""

    local_root: str | None

    def open(self, fs: fsspec.AbstractFileSystem, path: str, mode: str = "rb") -> IO[Any]:
        """``path`` opened, refused unless it is a regular file whose resolved location stays in
        ``local_root``. Checked on the open descriptor, so a symlink swapped in meanwhile is seen."""
        if self.local_root is None:
            return fs.open(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the run
        try:
            kind = os.fstat(fd).st_mode
            real = _fd_path(fd) or os.path.realpath(path)
            if not stat.S_ISREG(kind):
                raise DataOutOfScope(f"{path} is not a regular file; only regular files are read")
            if not _within(real, self.local_root):
                raise DataOutOfScope(f"{path} resolves to {real}, outside {self.local_root}/ (a symbolic link "
                                     "leads out of the directory this run may read)")
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return handle if "b" in mode else io.TextIOWrapper(handle, encoding="utf-8")


UNSCOPED: ReadScope = ReadScope(None)  # for callers that judged the location themselves


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_dir(uri: str) -> str | None:
    return uri[len("file://"):] if uri.startswith("file://") else None


def source_scope(source: str, store_root: str, namespace: str, trusted_prefixes: tuple[str, ...] = ()) -> ReadScope:
    """The run may read ``source`` (``spec.data.source``): it lies under ``<store_root>/<namespace>/``,
    ``<store_root>/datasets/`` or a trusted data prefix (``noria.artifact_scope``, the rule the
    operator applied before starting the run). Raises ``DataOutOfScope`` naming the field.

    A store folder is resolved as artifact loading does (``noria.artifact``): the store root's real
    path joined with the folder's name, so a namespace folder that is itself a symlink into another
    namespace leads nowhere."""
    if not store_root:
        raise DataOutOfScope(f"the run spec has no storeRoot: cannot tell whether {DATA_SOURCE_FIELD} "
                             f"{source!r} is in scope, so it is not read")
    scope = data_source_scope(store_root, trusted_prefixes)
    why = scope.problem(source, namespace)
    if why is not None:
        raise DataOutOfScope(f"{DATA_SOURCE_FIELD} {source[:200]!r} {why}")
    roots = scope.allowed_roots(namespace)
    matched = next(i for i, root in enumerate(roots) if source.startswith(root))
    local = _local_dir(roots[matched])
    if local is None:
        return ReadScope(None)
    if matched <= len(scope.shared_dirs):  # the namespace's folder or a shared one: inside the store
        store_dir = _local_dir(store_root)
        assert store_dir is not None  # a file:// folder of the store means a file:// store root
        top = roots[matched][len(store.join(store_root, "")):].strip("/")
        return ReadScope(os.path.join(os.path.realpath(store_dir), top))
    return ReadScope(os.path.realpath(local))


def namespace_scope(store_root: str, namespace: str) -> ReadScope:
    """Where the prediction and feedback logs of the run's namespace may be read from."""
    local = _local_dir(store_root)
    if local is None:
        return ReadScope(None)
    return ReadScope(os.path.join(os.path.realpath(local), namespace))


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


def read_source(source: str, declared_format: str | None, scope: ReadScope = UNSCOPED
                ) -> tuple[pd.DataFrame, list[str]]:
    """Every file of ``source``, each opened through ``scope`` (see ``source_scope``)."""
    fs, files = list_data_files(source, declared_format)
    formats = {_format_of(f, declared_format) for f in files}
    if len(formats) > 1:
        raise DataError(f"data source {source} mixes csv and parquet files: set spec.data.format")
    frames = []
    for path in files:
        fmt = _format_of(path, declared_format)
        try:
            with scope.open(fs, path, "rb") as handle:
                if fmt == "parquet":
                    frame = pd.read_parquet(handle)
                else:
                    frame = pd.read_csv(handle, compression="gzip" if path.endswith(".gz") else None)
        except DataOutOfScope:
            raise
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
    """Rows of ``data`` (already time-ordered, feedback rows included) inside ``window``: the newest
    N rows, or the rows at or after ``now - duration``. Raises when none are left."""
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
        raise DataError(f"window last {window.label} (before {now.isoformat()}) has no rows, neither data nor "
                        f"labelled feedback{hint}")
    return out.reset_index(drop=True)


# --- feedback loop --------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackMerge:
    rows: pd.DataFrame  # features + target (+ timestamp) + prediction id, one row per labelled id, oldest first
    predictions_read: int
    labels_read: int
    duplicate_predictions: int
    duplicate_labels: int
    unmatched_labels: int
    files: int
    undated: int = 0  # dropped: the prediction and its label carry no readable time (with a timestampColumn)
    premature_labels: int = 0  # dropped: logged before the prediction they name was made (see merge_feedback)
    already_in_data: int = 0  # dropped: the same labelled row is in a data partition (see dedupe_against_data)
    dedupe_key: str = "none"

    def report(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "predictionsRead": self.predictions_read, "labelsRead": self.labels_read,
                "duplicatePredictions": self.duplicate_predictions, "duplicateLabels": self.duplicate_labels,
                "unmatchedLabels": self.unmatched_labels, "files": self.files, "undated": self.undated,
                "alreadyInData": self.already_in_data, "dedupeKey": self.dedupe_key,
                "prematureLabels": self.premature_labels}


def _read_jsonl(fs: fsspec.AbstractFileSystem, root: str, scope: ReadScope) -> tuple[list[dict[str, Any]], int]:
    if not fs.isdir(root):
        return [], 0
    files = sorted(p for p in fs.find(root) if p.endswith(".jsonl"))
    records: list[dict[str, Any]] = []
    for path in files:
        with scope.open(fs, path, "r") as handle:
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

    - A prediction id logged twice (a retried write, a mirrored request) counts once: the first line.
    - An id labelled twice keeps its *first* label (earliest ``ts``; the earlier file on a tie). The
      model server counts the first label of a prediction and answers every later one ``duplicate``
      (``noria_server.ledger``), so the live accuracy the triggers and canary checks saw was measured
      with the first label; training on a later one would learn from labels the loop never trusted,
      and would let anyone who can post feedback rewrite a training label by posting again.
    - A label logged before the prediction it names (an earlier ``ts``) is dropped: it cannot be the
      answer to that prediction. The server logs labels for ids it does not hold (predictions from
      before a restart), so without this anyone who can guess an id could plant a label ahead of the
      prediction, and as the first label it would replace the true one in training.
    - A row's time (``timestamp_column``) is the prediction's ``ts``: when the features were seen,
      which is what "the last 3 days" of events means; the label's ``ts`` stands in when the
      prediction has none. Rows with no readable time are dropped and counted (``undated``): a
      window cannot place them.
    The rows come back oldest first."""
    fs, root = store.filesystem(store.pipeline_root(store_root, namespace, pipeline))
    # The logs are the namespace's own; a symlinked predictions/ or feedback/ folder leading into
    # another namespace's logs is refused file by file (DataOutOfScope), as artifact loading does.
    scope = namespace_scope(store_root, namespace)
    predictions, pred_files = _read_jsonl(fs, root + "/predictions", scope)
    labels, label_files = _read_jsonl(fs, root + "/feedback", scope)
    by_id: dict[str, dict[str, Any]] = {}
    for record in predictions:
        by_id.setdefault(str(record["id"]), record)
    first_label: dict[str, dict[str, Any]] = {}
    premature = 0
    for record in labels:
        if "label" not in record or record["label"] is None:
            continue
        key = str(record["id"])
        prediction = by_id.get(key)
        if prediction is not None and str(record.get("ts", "")) < str(prediction.get("ts", "")):
            premature += 1
            continue
        previous = first_label.get(key)
        if previous is None or str(record.get("ts", "")) < str(previous.get("ts", "")):
            first_label[key] = record
    rows = []
    unmatched = 0
    for key, label in first_label.items():
        prediction = by_id.get(key)
        if prediction is None:
            unmatched += 1
            continue
        logged = prediction.get("features") or {}
        row = {name: logged.get(name) for name in features}
        row[target] = label["label"]
        row[FEEDBACK_TIME_COLUMN] = prediction.get("ts") or label.get("ts")
        row[FEEDBACK_ID_COLUMN] = key
        rows.append(row)
    columns = [*features, target, FEEDBACK_TIME_COLUMN, FEEDBACK_ID_COLUMN]
    frame = pd.DataFrame(rows, columns=columns)
    stamps = pd.to_datetime(frame[FEEDBACK_TIME_COLUMN], utc=True, format="mixed", errors="coerce")
    undated = 0
    if timestamp_column:
        undated = int(stamps.isna().sum())
        frame = frame.assign(**{timestamp_column: stamps}).loc[stamps.notna()]
    frame = frame.assign(**{FEEDBACK_TIME_COLUMN: stamps.loc[frame.index]})
    frame = frame.sort_values(FEEDBACK_TIME_COLUMN, kind="stable", na_position="first")
    frame = frame.drop(columns=[FEEDBACK_TIME_COLUMN]).reset_index(drop=True)
    return FeedbackMerge(
        rows=frame,
        predictions_read=len(predictions),
        labels_read=len(labels),
        duplicate_predictions=len(predictions) - len(by_id),
        duplicate_labels=sum(1 for r in labels if r.get("label") is not None) - len(first_label) - premature,
        premature_labels=premature,
        unmatched_labels=unmatched,
        files=pred_files + label_files,
        undated=undated,
    )


def _key_frame(frame: pd.DataFrame, columns: list[str], numeric: set[str]) -> pd.DataFrame:
    """The key columns in one comparable form: numbers as float64 (3 and 3.0 are the same value in
    Parquet and in JSON), times as UTC nanoseconds, anything else as its string."""
    out = {}
    for column in columns:
        values = frame[column]
        if column in numeric:
            out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values):
            out[column] = pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")
        else:
            out[column] = values.astype("string")
    return pd.DataFrame(out, index=frame.index)


def dedupe_against_data(feedback: pd.DataFrame, data: pd.DataFrame, features: list[str],
                        timestamp_column: str | None, id_column: str | None) -> tuple[pd.DataFrame, int, str]:
    """Feedback rows that are not already in the data, the number dropped, and the key used.

    A labelled production row can also land in a data partition (a job that exports labelled
    traffic to the store); it must count once, and the data row is the one kept (the store is the
    curated copy, where a label may have been corrected). The key:
    - ``spec.data.feedback.idColumn`` set: the prediction id. Exact, and the only key that tells two
      identical requests apart.
    - else, with a timestamp column: every feature value plus the time. An export that keeps the
      prediction's time and features matches; two different events are almost never equal in every
      feature *and* the time.
    - else: no key. Equal features without a time are not evidence of the same event (categorical
      data repeats), so nothing is dropped."""
    if feedback.empty:
        return feedback, 0, "none"
    if id_column:
        if id_column not in data.columns:
            raise DataError(f"spec.data.feedback.idColumn {id_column!r} is not a column of the data "
                            f"(columns: {', '.join(map(str, data.columns))})")
        known = set(data[id_column].dropna().astype(str))
        duplicate = feedback[FEEDBACK_ID_COLUMN].astype(str).isin(known)
        key = f"prediction id (data column {id_column})"
    elif timestamp_column:
        columns = [*features, timestamp_column]
        missing = [c for c in columns if c not in data.columns]
        if missing:
            return feedback, 0, "none"
        numeric = {c for c in features if pd.api.types.is_numeric_dtype(data[c])
                   and not pd.api.types.is_bool_dtype(data[c])}
        left = _key_frame(feedback, columns, numeric).reset_index(drop=True)
        right = _key_frame(data, columns, numeric).drop_duplicates()
        joined = left.merge(right, how="left", on=columns, indicator=True)
        duplicate = pd.Series((joined["_merge"] == "both").to_numpy(), index=feedback.index)
        key = f"features + {timestamp_column}"
    else:
        return feedback, 0, "none"
    dropped = int(duplicate.sum())
    return feedback.loc[~duplicate].reset_index(drop=True), dropped, key


def combine(data: pd.DataFrame, feedback: pd.DataFrame | None, timestamp_column: str | None) -> pd.DataFrame:
    """Data rows and feedback rows in one frame, oldest first; ``FEEDBACK_ID_COLUMN`` is null on data rows.

    With a timestamp column both kinds are ordered by it (a data row before a feedback row of the
    same instant). Without one there is no common clock: feedback rows, which are production
    traffic, come after the data in the order they were predicted."""
    base = data.assign(**{FEEDBACK_ID_COLUMN: None})
    if feedback is None or feedback.empty:
        return base.reset_index(drop=True)
    out = pd.concat([base, feedback], ignore_index=True)
    if timestamp_column:
        out = out.sort_values(timestamp_column, kind="stable").reset_index(drop=True)
    return out
