"""A run on a Dask cluster (``spec.compute.engine: dask``): the window is never held in one process.

The data is a list of files (``spec.data.source``, file:// or s3://), one Dask partition each, read
through the run's ``ReadScope`` like a single-pod run. A partition is loaded, sorted by time,
filtered to the window, reduced to what a stage needs (counts, a sample, encoded matrices, scores)
and dropped; what crosses the network is those reductions, never the rows. The stages:

1. **stats** — one pass over every file: rows left after the window and the null-target drop,
   nulls per column, class counts, category counts, and a bounded sample of each numeric feature.
   Validation (columns, target, types, minRows, maxMissingFraction, classes) reads only these.
2. **split** — rows have an order (files in name order, each sorted by the timestamp column): a
   rows window keeps the newest N of them and the holdout is the newest ``holdoutFraction`` of the
   window, as a list of ``Part`` slices (file, first row, end row). Nothing is read for this.
3. **training** — XGBoost's own distributed training: one task per Dask worker joins an XGBoost
   collective (a tracker in this process), builds an ``ExtMemQuantileDMatrix`` from an iterator over
   *its* parts, loading one part at a time, and boosts. The matrix holds bin indices (``max_bin`` ≤
   256) in pages of a cache file under the worker's /tmp, read through mmap, and the histogram cuts
   come from the stats stage's samples (``cut_sample``), not a sketch of every row: a worker holds
   one part, one batch and XGBoost's per-row state, not its share of the window. That is how a
   window several times a worker's memory trains.
4. **evaluation** — contender and champion score every holdout part where it lies; the
   confusion counts (classification) or error sums (regression) are added up here.
5. **gate** (``training.decide_gate``), **refit** on the whole window when passed, **profile**
   (bins from the merged samples, counts from a pass over the rows the shipped model learnt from),
   and the artifact set, written as a single-pod run writes it, with the model in the XGBoost
   envelope of ``noria.xgboost_artifact``.

Dask-specific limits (refused at the spec stage, with a reason): labelled feedback, window
candidates and tuning are not available on this engine yet.

A run never waits on the cluster without a bound (``StallWatch``): when for ``stall_seconds()`` in a
row no worker can run a task -- none has joined the scheduler, or Dask paused every one at its memory
limit (a paused worker runs nothing until its process memory falls, which memory held by imported
libraries never does) -- the run fails saying which, instead of waiting for the Job's deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np
import pandas as pd
from noria import scoring, store, xgboost_artifact
from noria.api.common import format_timestamp
from noria.artifact import ArtifactError, sha256_digest
from noria.profile import DEFAULT_NUMERIC_BINS, DEFAULT_TOP_CATEGORIES, FeatureProfile, Profile
from noria.runspec import EXIT_DATA, EXIT_SPEC, EXIT_TRAINING, EXIT_VALIDATION, SCHEDULER_ENV

from noria_trainer import dask_linear, training
from noria_trainer import data as data_mod
from noria_trainer.artifacts import OutputError, OutputLocation
from noria_trainer.estimators import xgboost_params
from noria_trainer.spec import PipelineSpec, RunSpec
from noria_trainer.validation import ValidationOutcome, declared_kind

SAMPLE_PER_PART: Final = 2_000  # numeric values kept per part for the profile's quantile edges
MAX_CATEGORIES: Final = xgboost_artifact.MAX_CATEGORIES
Kind = str


class DaskRunError(Exception):
    def __init__(self, stage: str, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.exit_code, self.reason = stage, exit_code, reason


def refusal(spec: PipelineSpec) -> str | None:
    """Why this pipeline cannot run on Dask (None: it can)."""
    if spec.feedback:
        return "spec.data.feedback is not available with compute.engine dask yet; train on the data alone"
    if spec.window_candidates:
        return "spec.data.window.candidates is not available with compute.engine dask yet; give one window"
    if spec.tuning_strategy:
        return (
            "spec.tuning is not available with compute.engine dask yet; set the params in spec.model.params"
        )
    return None


# --- reading one part ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of one file after the time filter, the sort and the null-target drop."""

    path: str
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class PartReader:
    """How every task turns a Part into rows: the same on every worker (it is sent to them)."""

    fmt: str
    scope: data_mod.ReadScope
    protocol: str
    storage_options: dict[str, Any]
    target: str
    timestamp_column: str | None
    cutoff: pd.Timestamp | None  # a duration window's start

    def load(self, part: Part, features: Sequence[str] | None = None) -> pd.DataFrame:
        """The part's rows; with ``features``, only those columns and the target and timestamp are
        read (a worker's memory is the part it holds: columns it does not need are never loaded)."""
        import fsspec

        columns = None if features is None else list(dict.fromkeys([*features, *self._keys()]))
        fs = fsspec.filesystem(self.protocol, **self.storage_options)
        try:
            with self.scope.open(fs, part.path, "rb") as handle:
                frame = (
                    pd.read_parquet(handle, columns=columns)
                    if self.fmt == "parquet"
                    else pd.read_csv(
                        handle,
                        usecols=columns,
                        compression="gzip" if part.path.endswith(".gz") else None,
                    )
                )
        except data_mod.DataOutOfScope:
            raise
        except Exception as exc:  # pyarrow and the CSV parser raise many types; all mean "unreadable"
            raise data_mod.DataError(
                f"cannot read {part.path} as {self.fmt}: {type(exc).__name__}: {exc}"
            ) from exc
        if self.target in frame.columns:
            labelled = frame[self.target].notna()
            if not labelled.all():  # a filtered copy only when there is something to drop
                frame = frame[labelled]
        if self.timestamp_column:
            frame = data_mod.order_by_time(frame, self.timestamp_column)
            if self.cutoff is not None:
                frame = frame[frame[self.timestamp_column] >= self.cutoff]
        return frame.iloc[part.start : part.stop].reset_index(drop=True)

    def _keys(self) -> list[str]:
        return [self.target, *([self.timestamp_column] if self.timestamp_column else [])]


# --- stage 1: statistics of every part, merged --------------------------------------------------
@dataclass
class Stats:
    """What validation and the profile need, added up over parts (``merge``)."""

    rows: int = 0
    columns: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()  # columns whose dtype is numeric in every part
    nulls: Counter[str] = field(default_factory=Counter)
    classes: Counter[Any] = field(default_factory=Counter)
    categories: dict[str, Counter[str]] = field(default_factory=dict)
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    rows_per_part: list[int] = field(default_factory=list)

    def merge(self, other: Stats) -> Stats:
        if not self.columns:
            self.columns, self.numeric = other.columns, other.numeric
        elif other.columns:
            self.columns = tuple(c for c in self.columns if c in other.columns)
            self.numeric = tuple(c for c in self.numeric if c in other.numeric)
        self.rows += other.rows
        self.nulls.update(other.nulls)
        self.classes.update(other.classes)
        for name, counts in other.categories.items():
            self.categories.setdefault(name, Counter()).update(counts)
        for name, sample in other.samples.items():
            self.samples.setdefault(name, []).extend(sample)
        self.rows_per_part.extend(other.rows_per_part)
        return self


def part_stats(reader: PartReader, part: Part, classification: bool, seed: int) -> Stats:
    frame = reader.load(part)
    numeric = tuple(
        str(c)
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    )
    stats = Stats(
        rows=len(frame),
        columns=tuple(str(c) for c in frame.columns),
        numeric=numeric,
        nulls=Counter({str(c): int(n) for c, n in frame.isna().sum().items()}),
        rows_per_part=[len(frame)],
    )
    if classification and reader.target in frame.columns:
        stats.classes = Counter(frame[reader.target].tolist())
    rng = np.random.default_rng([seed, len(frame)])
    for column in frame.columns:
        name = str(column)
        if name == reader.target or name == reader.timestamp_column:
            continue
        if name in numeric:
            values = frame[column].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if values.size > SAMPLE_PER_PART:
                values = rng.choice(values, SAMPLE_PER_PART, replace=False)
            stats.samples[name] = [values]
        else:
            stats.categories[name] = Counter(str(v) for v in frame[column].dropna().tolist())
    return stats


def validate_stats(stats: Stats, spec: PipelineSpec, features: list[str]) -> ValidationOutcome:
    """The single-pod checks (``noria_trainer.validation``) on counts instead of rows."""
    out = ValidationOutcome()
    required = [*features, spec.target]
    missing = [c for c in required if c not in stats.columns]
    if not out.check(
        "columns",
        not missing,
        f"missing column(s) {', '.join(map(repr, missing))}"
        if missing
        else f"all {len(required)} columns present",
    ):
        return out
    if not out.check(
        "target",
        stats.rows > 0,
        f"target column {spec.target!r} is null in every row of the window"
        if stats.rows == 0
        else f"target {spec.target!r} present",
    ):
        return out
    wrong = [
        f"{c!r} must be {t} but is not numeric"
        for c, t in spec.column_types.items()
        if declared_kind(t) == "numeric" and c not in stats.numeric
    ]
    if spec.task == "regression" and spec.target not in stats.numeric:
        wrong.append(f"regression target {spec.target!r} is not numeric")
    if not out.check(
        "types", not wrong, "wrong type(s): " + "; ".join(wrong) if wrong else "types as expected"
    ):
        return out
    if not out.check(
        "minRows",
        stats.rows >= spec.min_rows,
        f"{stats.rows} usable row(s), fewer than spec.validation.minRows {spec.min_rows}"
        if stats.rows < spec.min_rows
        else f"{stats.rows} rows ≥ minRows {spec.min_rows}",
        rows=stats.rows,
    ):
        return out
    fractions = {c: stats.nulls[c] / stats.rows for c in features}
    sparse = {c: f for c, f in fractions.items() if f > spec.max_missing_fraction}
    if not out.check(
        "maxMissingFraction",
        not sparse,
        f"missing fraction above spec.validation.maxMissingFraction {spec.max_missing_fraction:g}: "
        + ", ".join(f"{c!r} {f:.3f}" for c, f in sparse.items())
        if sparse
        else f"every feature at most {spec.max_missing_fraction:g} missing",
        missingFraction={c: round(f, 6) for c, f in fractions.items()},
    ):
        return out
    if spec.task == "classification" and not out.check(
        "classes",
        len(stats.classes) >= 2,
        f"target {spec.target!r} has a single class; classification needs at least two"
        if len(stats.classes) < 2
        else f"{len(stats.classes)} classes",
    ):
        return out
    out.kinds = {
        c: declared_kind(spec.column_types.get(c)) or ("numeric" if c in stats.numeric else "categorical")
        for c in features
    }  # type: ignore[misc]
    many = [
        c
        for c in features
        if out.kinds[c] == "categorical" and len(stats.categories.get(c, ())) > MAX_CATEGORIES
    ]
    out.check(
        "categories",
        not many,
        f"more than {MAX_CATEGORIES} categories in {', '.join(map(repr, many))}"
        if many
        else "category counts within the encoding's cap",
    )
    return out


# --- stage 2: the split, from row counts alone --------------------------------------------------
@dataclass(frozen=True)
class Split:
    train: tuple[Part, ...]
    holdout: tuple[Part, ...]
    train_rows: int
    holdout_rows: int

    @property
    def window(self) -> tuple[Part, ...]:
        """The train parts then the holdout parts (a file cut in two appears as two parts)."""
        return self.train + self.holdout


def newest(paths: Sequence[str], counts: Sequence[int], rows: int | None) -> list[Part]:
    """The newest ``rows`` rows (all when None) as parts, oldest first."""
    parts: list[Part] = []
    wanted = sum(counts) if rows is None else rows
    for path, count in zip(reversed(paths), reversed(counts), strict=True):
        if wanted <= 0:
            break
        take = min(count, wanted)
        if take > 0:
            parts.append(Part(path, count - take, count))
        wanted -= take
    return parts[::-1]


def split_parts(window: Sequence[Part], holdout_rows: int) -> Split:
    """The last ``holdout_rows`` rows of ``window`` are the holdout; the rest is trained on."""
    train: list[Part] = []
    holdout: list[Part] = []
    left = holdout_rows
    for part in reversed(window):
        assert part.stop is not None
        size = part.stop - part.start
        if left >= size:
            holdout.append(part)
        elif left > 0:
            holdout.append(Part(part.path, part.stop - left, part.stop))
            train.append(Part(part.path, part.start, part.stop - left))
        else:
            train.append(part)
        left -= min(left, size)
    total = sum(p.stop - p.start for p in window if p.stop is not None)
    return Split(tuple(train[::-1]), tuple(holdout[::-1]), total - holdout_rows, holdout_rows)


# --- stage 3: XGBoost across the workers --------------------------------------------------------
@dataclass(frozen=True)
class Learner:
    """Everything a worker needs to turn parts into a QuantileDMatrix and boost."""

    reader: PartReader
    encoding: xgboost_artifact.Encoding
    classes: tuple[Any, ...] | None
    params: dict[str, Any]
    rounds: int
    max_bin: int
    # Values of every feature, encoded, from which every worker computes the same histogram cuts
    # (``cut_sample``); None: XGBoost sketches the workers' rows, costing each worker memory that
    # grows with the number of features (230 MB for 128 features and 700 000 rows, max_bin 256).
    cuts_from: np.ndarray | None = field(default=None, compare=False)
    external_memory: bool = True  # XGBoost's matrix paged to the worker's /tmp (_train_on_worker)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        y = frame[self.reader.target]
        if self.classes is None:
            return y.to_numpy(dtype=float)
        codes = {c: i for i, c in enumerate(self.classes)}
        return np.array([codes[v] for v in y.tolist()], dtype=float)

    # What _stages asks of a learner (dask_linear.LinearLearner answers the same for linear models).
    model_file: ClassVar[str] = xgboost_artifact.MODEL_FILE
    artifact_format: ClassVar[str] = xgboost_artifact.ARTIFACT_FORMAT

    @property
    def task(self) -> str:
        return "regression" if self.classes is None else "classification"

    def fit(self, state: DaskRun, parts: Sequence[Part]) -> xgboost_artifact.XGBoostModel:
        booster = train_distributed(state.client, self, parts)
        return xgboost_artifact.XGBoostModel(
            booster, self.task, self.encoding, list(self.classes or ()) or None
        )

    def dumps(self, model: xgboost_artifact.XGBoostModel) -> bytes:
        return xgboost_artifact.dumps(model.booster, self.task, self.encoding, self.classes)

    @staticmethod
    def loads(data: bytes) -> Any:
        return xgboost_artifact.loads(data)

    def record(self) -> dict[str, Any]:
        return {"boosterParams": self.params, "rounds": self.rounds}


# Rows handed to XGBoost at a time. The float matrix of a batch is a copy of its rows: whole parts
# (a Parquet file of 250 000 rows and 64 features is 128 MB) would cost a worker a second part.
BATCH_ROWS: Final = 32_768


def _train_on_worker(learner: Learner, parts: list[Part], collective: dict[str, Any]) -> bytes | None:
    """One worker's share: join the collective, build its quantised matrix part by part, boost.
    Rank 0 returns the booster (every rank holds the same one).

    With ``learner.external_memory`` the matrix is XGBoost's ``ExtMemQuantileDMatrix``: each batch's
    bin indices become a page of a cache file in a fresh directory under the worker's temporary
    directory (``/tmp``, the pods' emptyDir), read back through ``mmap`` while trees are built. Those
    pages are file-backed, which a node reclaims under pressure, so what the worker's limit has to
    hold is one part being read, one batch, and XGBoost's per-row state (gradients, predictions, row
    positions), not its whole share of the window."""
    import xgboost as xgb

    class PartIterator(xgb.DataIter):
        """The worker's parts in batches of ``BATCH_ROWS``: one part (its model's columns only) and
        one batch's matrix are all it holds. XGBoost passes over it several times (4 in XGBoost 3)."""

        def __init__(self, cache_prefix: str | None) -> None:
            super().__init__(cache_prefix=cache_prefix, release_data=True)
            self.at, self.row = 0, 0
            self.frame: pd.DataFrame | None = None

        def next(self, input_data: Callable[..., None]) -> bool:
            while self.frame is None or self.row >= len(self.frame):
                self.frame = None  # the next part is read once the last is freed, never beside it
                if self.at >= len(parts):
                    return False
                self.frame = learner.reader.load(parts[self.at], learner.encoding.features)
                self.at, self.row = self.at + 1, 0
            rows = self.frame.iloc[self.row : self.row + BATCH_ROWS]
            self.row += BATCH_ROWS
            input_data(data=learner.encoding.matrix(rows), label=learner.labels(rows))
            return True

        def reset(self) -> None:
            self.at, self.row, self.frame = 0, 0, None

    # Built before joining the collective: from the same values, every worker gets the same cuts.
    ref = (
        None if learner.cuts_from is None else xgb.QuantileDMatrix(learner.cuts_from, max_bin=learner.max_bin)
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(xgb.collective.CommunicatorContext(**collective))
        if learner.external_memory:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="noria-xgboost-"))
            matrix: Any = xgb.ExtMemQuantileDMatrix(
                PartIterator(os.path.join(cache, "window")), max_bin=learner.max_bin, ref=ref
            )
        else:
            matrix = xgb.QuantileDMatrix(PartIterator(None), max_bin=learner.max_bin, ref=ref)
        del ref
        params = {**learner.params, "max_bin": learner.max_bin}  # XGBoost checks it equals the matrix's
        booster = xgb.train(params, matrix, num_boost_round=learner.rounds)
        rank = xgb.collective.get_rank()
        del matrix  # its cache files are deleted before their directory
    raw = bytes(booster.save_raw(raw_format="json")) if rank == 0 else None
    del booster
    release_freed_memory()
    return raw


def release_freed_memory() -> None:
    """Give the memory freed by a training back to the kernel (glibc's ``malloc_trim``).

    The task runs in a Dask executor thread and XGBoost in its own threads: what they allocate comes
    from glibc's per-thread arenas, and freed blocks in the middle of an arena stay with the process
    (``MALLOC_TRIM_THRESHOLD_`` only trims an arena's top). Measured on a worker after training 4 M
    rows of 20 features: 424 MB anonymous with nothing held, 194 MB after a trim. Left there, a
    worker's resident memory stays above Dask's pause threshold (80 % of ``--memory-limit``), the
    paused worker runs no more tasks, and the run waits for it forever. No-op where there is no glibc.
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


CUT_SAMPLE_ROWS: Final = 32_768  # values per feature the histogram cuts are computed from


def cut_sample(
    stats: Stats, encoding: xgboost_artifact.Encoding, seed: int, rows: int = CUT_SAMPLE_ROWS
) -> np.ndarray:
    """A float32 matrix of at most ``rows`` rows holding, per feature, a sample of its values as the
    training matrix encodes them: a numeric feature's merged part samples (``Stats.samples``, drawn
    uniformly from every part of the window), subsampled; a categorical feature's codes, each code
    repeated in proportion to its count (at least once, so every category gets a bin). Shorter
    columns are padded with NaN, which XGBoost leaves out of the cuts. LightGBM bins from a sample
    the same way (``bin_construct_sample_cnt``); XGBoost's own sketch of every row costs a worker
    memory growing with the features (see ``Learner.cuts_from``)."""
    rng = np.random.default_rng([seed, 16])
    columns: list[np.ndarray] = []
    for name in encoding.features:
        if encoding.kinds[name] == "categorical":
            counts = stats.categories.get(name, Counter())
            names = encoding.categories.get(name, ())
            weights = np.array([counts.get(c, 0) for c in names], dtype=float)
            total = weights.sum()
            repeats = np.maximum(1, np.floor(weights / total * rows) if total else 1).astype(int)
            values = np.repeat(np.arange(len(names), dtype=np.float32), repeats)
        else:
            values = np.concatenate(stats.samples.get(name) or [np.empty(0)]).astype(np.float32)
        if values.size > rows:
            values = rng.choice(values, rows, replace=False)
        columns.append(values)
    height = max([1, *(c.size for c in columns)])
    matrix = np.full((height, len(columns)), np.nan, dtype=np.float32)
    for j, values in enumerate(columns):
        matrix[: values.size, j] = values
    return matrix


def train_distributed(client: Any, learner: Learner, parts: Sequence[Part]) -> Any:
    """A booster trained by the cluster's workers on ``parts``: round-robin shares, one task each,
    joined through an XGBoost tracker running in this process."""
    import xgboost as xgb
    from xgboost.tracker import RabitTracker

    workers = sorted(worker_addresses(client))
    if not workers:
        raise DaskRunError("training", EXIT_TRAINING, "the Dask cluster has no workers")
    shares = [list(parts[i :: len(workers)]) for i in range(len(workers))]
    used = [(w, s) for w, s in zip(workers, shares, strict=True) if s]
    tracker = RabitTracker(n_workers=len(used), host_ip=_address_towards(client), sortby="task")
    tracker.start()
    collective = tracker.worker_args()
    futures = [
        client.submit(
            _train_on_worker,
            learner,
            share,
            collective,
            workers=[worker],
            allow_other_workers=False,
            pure=False,  # a fresh key per run and per refit: a reused key would return the old result
        )
        for worker, share in used
    ]
    try:
        results = _gather_while_present(client, futures, [w for w, _ in used])
    except BaseException:
        with contextlib.suppress(
            xgb.core.XGBoostError
        ):  # a tracker whose peers died fails too; say why they did
            tracker.free()
        raise
    tracker.free()
    raw = next(r for r in results if r is not None)
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


WORKER_CHECK_SECONDS: Final = 0.5


def _gather_while_present(client: Any, futures: list[Any], workers: list[str]) -> list[Any]:
    """The tasks' results, or DaskRunError as soon as one of ``workers`` leaves the cluster: a task
    pinned to a worker that died (its memory limit, a lost node) would otherwise wait forever for it,
    and its XGBoost peers with it; a restarted worker has a new address and none of the work. When a
    peer's collective call fails first, the lost worker is still the reason given."""
    while True:
        if all(f.done() for f in futures) or any(f.status == "error" for f in futures):
            try:
                return list(client.gather(futures))
            except Exception:
                gone = _gone(client, workers, patience=WORKER_GONE_PATIENCE)
                if not gone:
                    raise
        else:  # polled, not awaited: a sync wait with a timeout, repeated, raced the client's event loop
            time.sleep(WORKER_CHECK_SECONDS)
            gone = _gone(client, workers)
        if gone:
            for future in futures:
                future.cancel()
            raise DaskRunError(
                "training",
                EXIT_TRAINING,
                f"Dask worker(s) {', '.join(gone)} left the cluster during training (killed at their memory "
                "limit, or their pod or node was lost); give the workers more memory "
                "(compute.dask.workerResources) or add workers",
            )


WORKER_GONE_PATIENCE: Final = 10.0  # seconds the scheduler may take to notice a worker's death


def worker_addresses(client: Any) -> set[str]:
    """The workers the scheduler knows now, asked of it. Not ``client.scheduler_info()``: it returns
    the client's cached identity, which the client's own periodic refresh replaces, concurrently,
    with one that lists no workers (seen as every worker gone, failing a healthy run)."""
    identity = client.sync(client.scheduler.identity, n_workers=-1)
    return set(identity.get("workers") or ())


def _gone(client: Any, workers: list[str], patience: float = 0.0) -> list[str]:
    deadline = time.monotonic() + patience
    while True:
        present = worker_addresses(client)
        gone = [w for w in workers if w not in present]
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.5)


def _address_towards(client: Any) -> str:
    """This process's IP on the route to the scheduler, which the workers can reach."""
    from distributed.utils import get_ip

    host = client.scheduler.address.split("://", 1)[-1].rsplit(":", 1)[0]
    try:
        return str(get_ip(host))
    except (OSError, socket.gaierror):
        return "127.0.0.1"


# --- stage 4: scores added up over parts -------------------------------------------------------
def part_score(
    reader: PartReader, part: Part, model: Any, features: Sequence[str], task: str
) -> dict[str, Any]:
    """Sufficient statistics of one holdout part: confusion counts, or error sums."""
    frame = reader.load(part)
    if not len(frame):
        return {"n": 0}
    predicted = np.asarray(model.predict(frame[list(features)]))
    actual = frame[reader.target]
    if task == "classification":
        return {"n": len(frame), "confusion": training.confusion_of(actual, predicted)}
    y = actual.to_numpy(dtype=float)
    error = y - predicted.astype(float)
    return {
        "n": len(frame),
        "sse": float(error @ error),
        "sae": float(np.abs(error).sum()),
        "sy": float(y.sum()),
        "syy": float(y @ y),
    }


def metrics_of(partials: Iterable[dict[str, Any]], task: str) -> dict[str, float]:
    """The holdout metrics of ``training.evaluate`` from per-part sums (no ROC AUC: it needs the
    scores of every row; it is reported NaN and cannot be the gate's metric on Dask)."""
    kept = [p for p in partials if p["n"]]
    n = sum(p["n"] for p in kept)
    if task == "classification":
        confusion: Counter[tuple[str, str]] = Counter()
        for p in kept:
            confusion.update(p["confusion"])
        out = {name: _defined(scoring.score(name, dict(confusion))) for name in scoring.SCORES}
        out["roc_auc"] = float("nan")
        return out
    sse, sae = sum(p["sse"] for p in kept), sum(p["sae"] for p in kept)
    sy, syy = sum(p["sy"] for p in kept), sum(p["syy"] for p in kept)
    spread = syy - sy * sy / n if n else 0.0
    return {
        "rmse": math.sqrt(sse / n) if n else float("nan"),
        "mae": sae / n if n else float("nan"),
        "r2": 1.0 - sse / spread if n > 1 and spread > 0 else float("nan"),
    }


def _defined_only(metrics: dict[str, float] | None) -> dict[str, float] | None:
    """The metrics with a value: the API server refuses "NaN" in a ModelVersion's spec.metrics."""
    return None if metrics is None else {k: v for k, v in metrics.items() if math.isfinite(v)}


def _defined(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# --- stage 5: the profile, from samples and counts ---------------------------------------------
def profile_bins(
    stats: Stats, kinds: Mapping[str, str], n_bins: int = DEFAULT_NUMERIC_BINS
) -> dict[str, FeatureProfile]:
    """Empty bins of every feature: quantile edges of the merged samples, the top categories."""
    bins: dict[str, FeatureProfile] = {}
    for name, kind in kinds.items():
        if kind == "numeric":
            sample = np.concatenate(stats.samples.get(name) or [np.empty(0)])
            bins[name] = FeatureProfile.build(sample, "numeric", n_bins=n_bins)
        else:
            top = [c for c, _ in stats.categories.get(name, Counter()).most_common(DEFAULT_TOP_CATEGORIES)]
            bins[name] = FeatureProfile.build(top, "categorical", top_categories=DEFAULT_TOP_CATEGORIES)
    return bins


def part_counts(reader: PartReader, part: Part, bins: dict[str, FeatureProfile]) -> dict[str, np.ndarray]:
    frame = reader.load(part)
    return {
        name: fp.counts(frame[name].to_numpy(dtype=float) if fp.kind == "numeric" else frame[name].tolist())
        for name, fp in bins.items()
    }


def with_counts(fp: FeatureProfile, counts: np.ndarray) -> FeatureProfile:
    total = counts.sum()
    return FeatureProfile(fp.kind, fp.labels, counts / total if total else counts, fp.edges, fp.categories)


# --- a run that cannot progress ------------------------------------------------------------------
STALL_SECONDS_ENV: Final = "NORIA_DASK_STALL_SECONDS"
DEFAULT_STALL_SECONDS: Final = 120.0
STALL_CHECK_SECONDS: Final = 2.0
STALL_CHECK_TIMEOUT: Final = 10.0  # one question to the scheduler
MIB: Final = 2**20


def stall_seconds() -> float:
    """How long no worker may be able to run a task before the run fails (``NORIA_DASK_STALL_SECONDS``)."""
    text = os.environ.get(STALL_SECONDS_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_STALL_SECONDS
    except ValueError:
        value = DEFAULT_STALL_SECONDS
    return value if value > 0 else DEFAULT_STALL_SECONDS


def why_stalled(workers: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why no worker of the scheduler's identity (``workers``: address -> info) can run a task now, or
    None when one can."""
    if not workers:
        return "no Dask worker is connected to the scheduler"
    if any(info.get("status", "running") == "running" for info in workers.values()):
        return None
    paused = [info for info in workers.values() if info.get("status") == "paused"]
    if len(paused) < len(workers):
        states = ", ".join(sorted(f"{info.get('name')}: {info.get('status')}" for info in workers.values()))
        return f"no Dask worker is running ({states})"
    memory = ", ".join(
        sorted(
            f"{info.get('name')} {int((info.get('metrics') or {}).get('memory') or 0) / MIB:.0f} MiB of "
            f"{int(info.get('memory_limit') or 0) / MIB:.0f} MiB"
            for info in paused
        )
    )
    return (
        f"every Dask worker is paused by Dask at its memory limit (process memory {memory}); a paused "
        "worker runs no task until its memory falls"
    )


class StallWatch:
    """Asks the scheduler about its workers every ``interval`` seconds while a run's stages run. Once no
    worker could run a task for ``patience`` seconds in a row (``why_stalled``), it keeps the reason and
    cancels the client's futures, so the stage waiting on them raises; ``execute`` then fails the run
    with ``reason``."""

    def __init__(self, client: Any, patience: float, interval: float = STALL_CHECK_SECONDS) -> None:
        self.client, self.patience, self.interval = client, patience, interval
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dask-stall-watch", daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)

    def _watch(self) -> None:
        since: float | None = None
        while not self._stop.wait(self.interval):
            try:
                identity = self.client.sync(
                    self.client.scheduler.identity, n_workers=-1, callback_timeout=STALL_CHECK_TIMEOUT
                )
            except Exception:  # noqa: BLE001 - an unreachable scheduler fails the stage itself (DaskClusterLost)
                continue
            why = why_stalled(identity.get("workers") or {})
            if why is None:
                since = None
                continue
            now = time.monotonic()
            since = now if since is None else since
            if now - since >= self.patience:
                if self.reason is None:
                    self.reason = (
                        f"the run stalled: {why}, for {self.patience:.0f} s. Give the workers more memory "
                        "(compute.dask.workerResources.limits.memory) or look at why their pods do not start"
                    )
                self._cancel_all()

    def _cancel_all(self) -> None:
        from distributed import Future

        with contextlib.suppress(Exception):
            keys = list(self.client.futures)
            if keys:
                self.client.cancel([Future(key, self.client) for key in keys], force=True)


# --- the run --------------------------------------------------------------------------------------
def connect(run: RunSpec) -> Any:
    """A client of the run's scheduler: ``NORIA_DASK_SCHEDULER`` (set by the operator on the Job)."""
    from distributed import Client

    address = os.environ.get(SCHEDULER_ENV, "").strip()
    if not address:
        raise DaskRunError(
            "spec",
            EXIT_SPEC,
            f"compute.engine is dask but {SCHEDULER_ENV} is not set: the "
            "operator passes the run's Dask scheduler address to the trainer",
        )
    try:
        return Client(address, timeout="60s")
    except (OSError, TimeoutError) as exc:
        raise DaskRunError(
            "training", EXIT_TRAINING, f"cannot reach the Dask scheduler {address}: {exc}"
        ) from exc


@dataclass
class DaskRun:
    """One Dask run's state as the stages fill it in."""

    run: RunSpec
    client: Any
    progress: Callable[..., None]
    reader: PartReader | None = None
    files: list[str] = field(default_factory=list)
    stats: Stats | None = None
    outcome: ValidationOutcome | None = None
    features: list[str] = field(default_factory=list)
    split: Split | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> PipelineSpec:
        return self.run.spec

    def map(self, function: Callable[..., Any], parts: Sequence[Part], *args: Any) -> list[Any]:
        futures = self.client.map(
            function, [self.reader] * len(parts), parts, *[[a] * len(parts) for a in args], pure=False
        )
        return list(_guarded(function.__name__, lambda: self.client.gather(futures)))

    # stage: read + stats + validation
    def read(self) -> None:
        spec, run = self.spec, self.run
        try:
            scope = data_mod.source_scope(
                spec.source, run.store_root, run.namespace, run.trusted_data_prefixes
            )
            fs, self.files = data_mod.list_data_files(spec.source, spec.format)
            fmt = data_mod._format_of(self.files[0], spec.format)
        except data_mod.DataError as exc:
            raise DaskRunError("data", EXIT_DATA, str(exc)) from exc
        window = spec.window
        cutoff = pd.Timestamp(run.now - window.duration) if window and window.duration else None
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.reader = PartReader(
            fmt,
            scope,
            protocol,
            dict(getattr(fs, "storage_options", {}) or {}),
            spec.target,
            spec.timestamp_column,
            cutoff,
        )
        partials = self.map(
            part_stats, [Part(f) for f in self.files], spec.task == "classification", spec.seed
        )
        self.stats = Stats()
        for partial in partials:
            self.stats.merge(partial)
        if window and window.rows is not None:
            self.window_parts = newest(self.files, self.stats.rows_per_part, window.rows)
        else:
            self.window_parts = newest(self.files, self.stats.rows_per_part, None)
        ignored = {spec.target, spec.timestamp_column}
        self.features = (
            list(spec.features) if spec.features else [c for c in self.stats.columns if c not in ignored]
        )
        if window and window.rows is not None and window.rows < self.stats.rows:
            self.stats = self._stats_of(self.window_parts)
        self.outcome = validate_stats(self.stats, spec, self.features)
        if not self.outcome.ok:
            raise DaskRunError(
                "validation", EXIT_VALIDATION, f"data validation failed: {self.outcome.reason}"
            )

    def _stats_of(self, parts: Sequence[Part]) -> Stats:
        merged = Stats()
        for partial in self.map(part_stats, parts, self.spec.task == "classification", self.spec.seed):
            merged.merge(partial)
        return merged

    def learner(self, params: dict[str, Any]) -> Learner | dask_linear.LinearLearner:
        assert self.stats is not None and self.outcome is not None and self.reader is not None
        kinds = self.outcome.kinds
        if dask_linear.is_linear(self.spec.estimator):
            try:
                linear_classes = (
                    dask_linear.classes_for(self.spec.estimator, self.stats.classes)
                    if self.spec.task == "classification"
                    else None
                )
            except ValueError as exc:
                raise DaskRunError("validation", EXIT_VALIDATION, str(exc)) from exc
            return dask_linear.LinearLearner(
                self.spec.estimator,
                self.spec.task,
                params,
                tuple(self.features),
                dict(kinds),
                linear_classes,
                self.spec.seed,
            )
        categories = {
            f: tuple(sorted(self.stats.categories.get(f, Counter())))
            for f in self.features
            if kinds[f] == "categorical"
        }
        encoding = xgboost_artifact.Encoding(tuple(self.features), dict(kinds), categories)
        classes = tuple(sorted(self.stats.classes, key=str)) if self.spec.task == "classification" else None
        booster_params, rounds, max_bin = xgboost_params(
            self.spec.task, params, len(classes or ()), self.spec.seed
        )
        return Learner(
            self.reader,
            encoding,
            classes,
            booster_params,
            rounds,
            max_bin,
            cut_sample(self.stats, encoding, self.spec.seed),
        )


def execute(
    run: RunSpec, output: OutputLocation, reporter: Any, champion_model: Any, client: Any | None = None
) -> dict[str, Any]:
    """The Dask run's stages (module docstring) on ``client`` (default: the run's scheduler,
    ``connect``); returns the success summary or raises DaskRunError."""
    reason = refusal(run.spec)
    if reason:
        raise DaskRunError("spec", EXIT_SPEC, reason)
    if client is not None:
        return _watched(run, output, reporter, champion_model, client)
    own = connect(run)
    try:
        return _watched(run, output, reporter, champion_model, own)
    finally:
        own.close()


def _watched(
    run: RunSpec, output: OutputLocation, reporter: Any, champion_model: Any, client: Any
) -> dict[str, Any]:
    """``_stages`` under a ``StallWatch``: a run no worker can progress fails with the watch's reason."""
    with StallWatch(client, stall_seconds()) as watch:
        try:
            return _stages(run, output, reporter, champion_model, client)
        except Exception as exc:
            if watch.reason is None:
                raise
            # the stage the reporter is in (a map's DaskRunError names the task's function)
            stage = getattr(reporter, "_stage", None) or getattr(exc, "stage", None) or "training"
            raise DaskRunError(stage, EXIT_TRAINING, watch.reason) from exc


def _stages(
    run: RunSpec, output: OutputLocation, reporter: Any, champion_model: Any, client: Any
) -> dict[str, Any]:
    from noria_trainer import run as run_mod

    state = DaskRun(run, client, reporter.emit)
    reporter.begin("load", source=run.spec.source, engine="dask", workers=len(worker_addresses(client)))
    state.read()
    assert state.stats is not None and state.outcome is not None
    reporter.end(rows=state.stats.rows, files=len(state.files))
    reporter.begin("split")
    window_rows = state.stats.rows
    split = split_parts(state.window_parts, training.holdout_size(window_rows, run.spec.holdout_fraction))
    if split.train_rows < run.spec.min_rows:
        raise DaskRunError(
            "validation",
            EXIT_VALIDATION,
            f"{split.train_rows} training row(s) after holding out "
            f"{split.holdout_rows}, fewer than spec.validation.minRows {run.spec.min_rows}",
        )
    reporter.end(holdoutRows=split.holdout_rows)
    learner = state.learner(run.spec.params)
    reporter.begin("training", rows=split.train_rows, features=len(state.features), parts=len(split.train))
    contender = _guarded("training", lambda: learner.fit(state, split.train))
    reporter.end()
    reporter.begin("evaluation", holdoutRows=split.holdout_rows)
    metrics = metrics_of(
        state.map(part_score, split.holdout, contender, state.features, run.spec.task), run.spec.task
    )
    champion_metrics, champion_error = None, None
    if champion_model is not None:
        columns = [str(c) for c in getattr(champion_model, "feature_names_in_", state.features)]
        try:
            champion_metrics = metrics_of(
                state.map(part_score, split.holdout, champion_model, columns, run.spec.task), run.spec.task
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            champion_error = f"{type(exc).__name__}: {exc}"
    reporter.end(metric=run.spec.metric, score=metrics.get(run.spec.metric))
    spec = run.spec
    decision = training.decide_gate(
        spec.metric,
        metrics.get(spec.metric, float("nan")),
        None if champion_metrics is None else champion_metrics.get(spec.metric, float("nan")),
        run.champion.name if run.champion else None,
        spec.min_score,
        spec.max_score,
        spec.must_beat_champion_by,
        spec.thresholds_as_written,
    )
    reporter.emit("gate", verdict=decision.verdict, reason=decision.reason)
    refit = decision.verdict == "passed"
    shipped = contender
    if refit:
        reporter.begin("refit", rows=window_rows)
        shipped = _guarded("training", lambda: learner.fit(state, split.window))
        reporter.end()
    reporter.begin("artifacts")
    model_bytes, digest, profile = _package(state, split, shipped, learner, refit)
    gated = {
        "metrics": metrics,
        "champion_metrics": champion_metrics,
        "champion_error": champion_error,
        "decision": decision,
    }
    files, metadata, report = _documents(
        state, split, learner, shipped, refit, gated, digest, output, reporter
    )
    reporter.end()
    reporter.begin("write", outputUri=output.uri)
    try:
        output.write_atomically(
            {
                learner.model_file: model_bytes,
                store.PROFILE_FILE: (profile.to_json() + "\n").encode(),
                store.METADATA_FILE: run_mod._json_bytes(metadata),
                store.REPORT_FILE: run_mod._json_bytes(report),
            }
        )
    except OutputError as exc:
        raise DaskRunError("output", run_mod.EXIT_OUTPUT, str(exc)) from exc
    reporter.end()
    return summary_of(
        json.loads(run_mod._json_bytes(metadata)), json.loads(run_mod._json_bytes(report)), files
    )


ARTIFACT_FILES: Final = (
    xgboost_artifact.MODEL_FILE,
    store.PROFILE_FILE,
    store.METADATA_FILE,
    store.REPORT_FILE,
)


def model_file(spec: PipelineSpec) -> str:
    """The model file of a Dask run: the XGBoost envelope, or a linear model's skops file."""
    return dask_linear.MODEL_FILE if dask_linear.is_linear(spec.estimator) else xgboost_artifact.MODEL_FILE


def artifact_uris(output: OutputLocation, model: str = xgboost_artifact.MODEL_FILE) -> dict[str, str]:
    return {name: output.file_uri(name) for name in (model, *ARTIFACT_FILES[1:])}


def summary_of(metadata: dict[str, Any], report: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The single-pod summary with this run's model file and its format (from metadata.json)."""
    from noria_trainer import run as run_mod

    artifact = metadata["artifact"]
    summary = run_mod.success_summary(metadata, report, {store.MODEL_FILE: files[artifact["file"]], **files})
    summary["artifactFormat"] = artifact["format"]
    return summary


def _guarded(stage: str, action: Callable[[], Any]) -> Any:
    """A cluster failure (a worker killed by its memory limit, a lost scheduler) as a failed stage."""
    try:
        return action()
    except DaskRunError:
        raise
    except data_mod.DataError as exc:  # raised by a part's read on a worker, passed back as it was
        raise DaskRunError("data", EXIT_DATA, str(exc)) from exc
    except Exception as exc:  # distributed raises many types (KilledWorker, CommClosedError, XGBoostError)
        raise DaskRunError(
            stage,
            EXIT_TRAINING,
            f"the Dask cluster failed during {stage}: {type(exc).__name__}: {str(exc)[:400]}",
        ) from exc


def _package(
    state: DaskRun, split: Split, model: Any, learner: Learner | dask_linear.LinearLearner, refit: bool
) -> tuple[bytes, str, Profile]:
    """The envelope (checked to load and predict as the server will) and the drift profile."""
    assert state.stats is not None and state.outcome is not None
    model_bytes = learner.dumps(model)
    digest = sha256_digest(model_bytes)
    try:
        reloaded = learner.loads(model_bytes)
    except ArtifactError as exc:
        raise DaskRunError(
            "training", EXIT_TRAINING, f"the saved model would be refused by the server: {exc}"
        ) from exc
    first = split.holdout[-1]
    probe = state.reader.load(first).head(1000) if state.reader else None
    if (
        probe is not None
        and len(probe)
        and not np.array_equal(reloaded.predict(probe[state.features]), model.predict(probe[state.features]))
    ):
        raise DaskRunError("training", EXIT_TRAINING, "the saved model predicts differently after reloading")
    profiled = split.window if refit else split.train
    bins = profile_bins(state.stats, state.outcome.kinds)
    totals = {name: np.zeros(len(fp.labels)) for name, fp in bins.items()}
    for counts in state.map(part_counts, profiled, bins):
        for name, values in counts.items():
            totals[name] += values
    features = {name: with_counts(fp, totals[name]) for name, fp in bins.items()}
    prediction = _prediction_profile(state, split, model)
    rows = split.train_rows + (split.holdout_rows if refit else 0)
    return model_bytes, digest, Profile(features, prediction, rows)


def part_predictions(reader: PartReader, part: Part, model: Any, features: Sequence[str]) -> np.ndarray:
    frame = reader.load(part)
    return np.asarray(model.predict(frame[list(features)])) if len(frame) else np.empty(0)


def _prediction_profile(state: DaskRun, split: Split, model: Any) -> FeatureProfile:
    """Predictions on the holdout, binned like a single-pod run's (the holdout is a small share)."""
    predictions = np.concatenate(state.map(part_predictions, split.holdout, model, state.features))
    if state.spec.task == "classification":
        return FeatureProfile.build(predictions.tolist(), "categorical")
    return FeatureProfile.build(predictions.astype(float), "numeric")


def _documents(
    state: DaskRun,
    split: Split,
    learner: Learner | dask_linear.LinearLearner,
    model: Any,
    refit: bool,
    gated: dict[str, Any],
    digest: str,
    output: OutputLocation,
    reporter: Any,
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """metadata.json and report.json in the single-pod run's shape, and the file URIs."""
    from noria_trainer import run as run_mod

    run, spec = state.run, state.spec
    assert state.outcome is not None
    files = artifact_uris(output, learner.model_file)
    window_label = spec.window.label if spec.window else "all"
    decision = gated["decision"]
    metadata = {
        "schema": run_mod.METADATA_SCHEMA,
        "runId": run.run_id,
        "trigger": run.trigger,
        "namespace": run.namespace,
        "pipeline": run.pipeline,
        "version": run.version,
        "modelVersion": f"{run.pipeline}-v{run.version}",
        "parent": run.champion.name if run.champion else None,
        "trainedAt": format_timestamp(dt.datetime.now(dt.UTC)),
        "data": {
            "source": spec.source,
            "format": spec.format,
            "files": len(state.files),
            "window": window_label,
            "rows": split.train_rows + split.holdout_rows,
            "trainingRows": split.train_rows,
            "holdoutRows": split.holdout_rows,
            "refit": refit,
            "feedbackRows": 0,
            "holdoutFeedbackRows": 0,
            "shippedModelRows": split.train_rows + (split.holdout_rows if refit else 0),
            "timestampColumn": spec.timestamp_column,
        },
        "model": {
            "task": spec.task,
            "estimator": spec.estimator,
            "params": spec.params,
            "target": spec.target,
            "features": state.features,
            "kinds": state.outcome.kinds,
            "classes": list(learner.classes) if learner.classes else [],
            "engine": "dask",
            **learner.record(),
        },
        "artifact": {
            "file": learner.model_file,
            "uri": files[learner.model_file],
            "digest": digest,
            "format": learner.artifact_format,
            "untrustedTypes": [],
        },
        "evaluation": {
            "metric": spec.metric,
            # roc_auc is NaN on Dask (metrics_of): a ModelVersion's metrics are decimal strings, so it is left out
            "metrics": run_mod.decimal_strings(_defined_only(gated["metrics"])),
            "championMetrics": run_mod.decimal_strings(_defined_only(gated["champion_metrics"])),
            "verdict": decision.verdict,
            "scoresAre": "the gated model's and the champion's, on the same "
            "holdout, added up part by part on the Dask workers",
            **run_mod._averaging(spec.task),
        },
        "libraries": run_mod._library_versions() | _dask_versions(),
    }
    report = {
        "schema": run_mod.REPORT_SCHEMA,
        "runId": run.run_id,
        "version": run.version,
        "engine": "dask",
        "validation": state.outcome.report(),
        "window": {
            "chosen": window_label,
            "candidates": [],
            "rows": split.train_rows + split.holdout_rows,
            "dataRows": split.train_rows + split.holdout_rows,
            "feedbackRows": 0,
        },
        "feedback": {"enabled": False, "rows": 0},
        "tuning": None,
        "evaluation": {
            "metric": spec.metric,
            "holdoutRows": split.holdout_rows,
            "holdoutFeedbackRows": 0,
            "holdout": "newest rows of the window",
            "contender": gated["metrics"],
            "champion": gated["champion_metrics"],
            "championName": run.champion.name if run.champion else None,
            "championError": gated["champion_error"],
            **run_mod._averaging(spec.task),
        },
        "gate": {
            "verdict": decision.verdict,
            "reason": decision.reason,
            "minScore": spec.min_score,
            "maxScore": spec.max_score,
            "mustBeatChampionBy": spec.must_beat_champion_by,
        },
        "refit": run_mod._refit_record(
            decision.verdict,
            split.train_rows + split.holdout_rows,
            split.train_rows,
            split.holdout_rows,
            spec.params,
            gated["metrics"],
            gated["champion_metrics"],
            spec.metric,
        ),
        "stages": reporter.stages,
    }
    return files, metadata, report


def _dask_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("dask", "distributed", "xgboost", "dask-ml", "dask-glm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
