"""The one verified model a server process serves, and how rows become a prediction.

Loading goes through ``noria.artifact.load_verified``, the one loader every Noria process uses
(bounded read of a regular file inside the store, sha256, zip shape, the exact trusted-type list,
then skops; never pickle); the drift profile is read with the same file rules and a size cap.
Every refusal is an ``ArtifactError`` with a kind. The model must have been fitted on a DataFrame, so
``feature_names_in_`` fixes the input schema; the drift profile says which features are
categorical and gives realistic warm-up rows.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from noria.artifact import (
    DEFAULT_LIMITS,
    MALFORMED,
    UNUSABLE_MODEL,
    ArtifactError,
    Limits,
    load_verified,
    read_bounded,
)
from noria.profile import Profile

from .fastpath import FastPredictor, Unsupported, compile_model, verify
from .oip import Schema

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    estimator: Any
    schema: Schema
    profile: Profile | None
    is_classifier: bool
    classes: list[Any] | None
    proba_is_free: bool = False  # predict == argmax(predict_proba), checked at warm-up
    takes_array: bool = False  # same answers from a float ndarray as from a DataFrame, checked at warm-up
    single_row_seconds: float = 0.0  # the fastest one-row predict at warm-up
    fast: FastPredictor | None = None  # the same answers from the fitted arrays, verified at warm-up
    fast_reason: str = "not warmed up"  # why ``fast`` is (not) used, for the log

    @classmethod
    def load(cls, artifact_uri: str, digest: str, profile_uri: str | None, store_root: str | None = None,
             limits: Limits = DEFAULT_LIMITS) -> ServedModel:
        estimator = load_verified(artifact_uri, digest, store_root, limits)
        profile = None
        if profile_uri:
            text = read_bounded(profile_uri, store_root, limits.max_profile_bytes)
            try:
                profile = Profile.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ArtifactError(MALFORMED, f"the drift profile {profile_uri} is not a profile: "
                                               f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        return cls.from_estimator(estimator, profile)

    @classmethod
    def from_estimator(cls, estimator: Any, profile: Profile | None) -> ServedModel:
        from sklearn.base import is_classifier

        names = getattr(estimator, "feature_names_in_", None)
        if names is None:
            raise ArtifactError(UNUSABLE_MODEL, "the model has no feature_names_in_: fit it on a pandas DataFrame "
                                                "so the server knows the feature names and order")
        if not hasattr(estimator, "predict"):
            raise ArtifactError(UNUSABLE_MODEL, f"the artifact is a {type(estimator).__name__}, which has no predict()")
        features = tuple(str(n) for n in names)
        categorical = frozenset(f for f in features
                                if profile is not None and f in profile.features
                                and profile.features[f].kind == "categorical")
        classifier = bool(is_classifier(estimator))
        classes = [c.item() if hasattr(c, "item") else c for c in estimator.classes_] if classifier else None
        return cls(estimator, Schema(features, categorical), profile, classifier, classes)

    # --- prediction ----------------------------------------------------------------------------
    def frame(self, rows: np.ndarray) -> Any:
        import pandas as pd

        if rows.dtype != object:
            return pd.DataFrame(rows, columns=list(self.schema.features), copy=False)
        return pd.DataFrame({f: (rows[:, j] if f in self.schema.categorical else rows[:, j].astype(np.float64))
                             for j, f in enumerate(self.schema.features)})

    def predict(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (and class probabilities when they come free) for ``rows`` of shape (n, F)."""
        if self.fast is not None:
            out = self.fast(rows)  # None: rows it leaves to scikit-learn (non-float, non-finite)
            if out is not None:
                return out[0], (out[1] if self.proba_is_free else None)
        frame = rows if self.takes_array and rows.dtype == np.float64 else self.frame(rows)
        if self.proba_is_free:
            proba = self.estimator.predict_proba(frame)
            return np.asarray(self.estimator.classes_)[np.argmax(proba, axis=1)], proba
        return np.asarray(self.estimator.predict(frame)), None

    def _raw_outputs(self, data: Any) -> list[np.ndarray]:
        outputs = [np.asarray(self.estimator.predict(data))]
        if self.proba_is_free:
            outputs.append(np.asarray(self.estimator.predict_proba(data)))
        return outputs

    # --- warm-up -----------------------------------------------------------------------------
    def verification_rows(self, rows: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Batches the fast path must answer as scikit-learn does, each with how many of its rows to
        check one by one too: the warm-up rows and a few hundred more, the same far outside the
        training range, with NaNs (one per row), and with ±inf and overflowing values (scikit-learn's
        answer or its error)."""
        more = np.vstack([rows, self.sample_rows(256)[::-1]])
        f = more.shape[1]
        spread = more * np.where(np.arange(more.shape[0]) % 2 == 0, 1e3, -1e6)[:, None]
        with_nan = more.copy()
        with_nan[np.arange(more.shape[0]), np.arange(more.shape[0]) % f] = np.nan
        extreme = more[:8].copy()
        extreme[0, 0], extreme[1, f - 1], extreme[2, :] = np.inf, -np.inf, 1e308
        # in batches of 32 too: a fast path may leave larger batches to scikit-learn
        return [(b[i:i + 32], 1) for b in (more, spread, with_nan) for i in range(0, b.shape[0], 32)] + \
            [(b, 8) for b in (more, spread, with_nan, extreme[:1], extreme[1:2], extreme[2:3], extreme)]

    def _choose_fast_path(self, rows: np.ndarray) -> None:
        """Use the fast path (noria_server.fastpath) only for a model it models and only if it gives
        scikit-learn's answers on every verification batch; otherwise say why at info and keep
        scikit-learn. ``NORIA_FAST_PREDICT=0`` turns it off."""
        self.fast = None
        if os.environ.get("NORIA_FAST_PREDICT", "1") == "0":
            self.fast_reason = "off (NORIA_FAST_PREDICT=0)"
        elif not self.schema.all_numeric:
            self.fast_reason = "categorical features"
        else:
            try:
                fast = compile_model(self.estimator, len(self.schema.features))
                with_proba = self.is_classifier and self.proba_is_free
                reason = None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for batch, singles in self.verification_rows(rows):
                        reason = verify(fast, self.estimator, self.frame, batch, with_proba, singles)
                        if reason is not None:
                            break
                if reason is None:
                    self.fast, self.fast_reason = fast, f"on: {fast.description}"
                else:
                    self.fast_reason = f"disagrees with scikit-learn: {reason}"
            except Unsupported as exc:
                self.fast_reason = f"not modelled: {exc}"
            except Exception as exc:  # anything unexpected: scikit-learn serves
                self.fast_reason = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        log.info("fast predict path %s", self.fast_reason)

    def sample_rows(self, n: int) -> np.ndarray:
        """Plausible rows: numeric values spread across the profile's bins, categories cycled."""
        rng = np.random.default_rng(0)
        cols = []
        for f in self.schema.features:
            fp = self.profile.features.get(f) if self.profile else None
            if f in self.schema.categorical:
                cats = list(fp.categories) if fp is not None and fp.categories else ["unknown"]
                cols.append(np.array([cats[i % len(cats)] for i in range(n)], dtype=object))
            elif fp is not None and fp.edges is not None and fp.edges.size >= 2:
                cols.append(rng.uniform(fp.edges[0], fp.edges[-1], n))
            else:
                cols.append(rng.normal(size=n))
        if self.schema.all_numeric:
            return np.column_stack(cols).astype(np.float64)
        return np.column_stack([c.astype(object) for c in cols])

    def warm_up(self, max_batch: int, rounds: int = 5) -> float:
        """Run predict on one row and on a full batch until timings settle; decide whether
        ``predict_proba`` can replace ``predict``. Returns the single-row latency in seconds."""
        rows = self.sample_rows(max(max_batch, 64))
        if self.is_classifier and hasattr(self.estimator, "predict_proba"):
            try:
                frame = self.frame(rows)
                proba = self.estimator.predict_proba(frame)
                argmax = np.asarray(self.estimator.classes_)[np.argmax(proba, axis=1)]
                self.proba_is_free = bool(np.array_equal(argmax, np.asarray(self.estimator.predict(frame))))
            except Exception as exc:  # predict_proba may exist but be unusable (e.g. SVC without probability)
                log.info("predict_proba not used: %s", exc)
                self.proba_is_free = False
        if self.schema.all_numeric:
            # Building a DataFrame and validating it costs more than a small model's predict. A model
            # that gives bit-identical answers for the plain float matrix gets the matrix; one whose
            # pipeline selects columns by name (or answers differently) keeps the DataFrame.
            self.takes_array = False
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    reference = self._raw_outputs(self.frame(rows))
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                self.takes_array = all(np.array_equal(a, b) for a, b in
                                       zip(self._raw_outputs(rows), reference, strict=True))
            except Exception as exc:
                log.info("the model needs a DataFrame: %s", exc)
        self._choose_fast_path(rows)
        single = rows[:1]
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            self.predict(single)
            best = min(best, time.perf_counter() - t0)
            self.predict(rows[:max_batch])
        self.single_row_seconds = best
        return best


MIN_BATCH_ROWS = 16
# What batching may add to one predict call (its rows' share); the batch limit adapts to it. 5 ms
# bound batches to 16 rows under CPU contention and cost ~20 % of saturation throughput (docs/operations/latency.md).
DEFAULT_BATCH_BUDGET_MS = 20.0


class BatchSizer:
    """How many rows the next micro-batch may take so that the rows' share of one ``predict`` (what
    batching adds to a call: requests arriving meanwhile wait that long) stays within
    ``budget_seconds``.

    A call on n rows costs about call + (n - 1) x row: ``call_seconds`` is learned from one-row calls
    (seeded with the warm-up's), ``row_seconds`` from the others as (seconds - call) / (n - 1), both
    exponential averages. Only the row-dependent part is budgeted: a machine that is slow for every
    call (CPU contention) makes both parts slower alike, and shrinking batches then would only add
    calls, each paying the fixed cost again, while the backlog grows.

    Never below ``min_rows`` (or ``max_rows`` if smaller): one row per client of a few dozen
    concurrent ones is never split, and batches of that size keep the estimate current. Measured
    without that floor on a contended machine, one slow two-row call set the limit to 1, no batch
    of two rows ran again to correct it, and throughput fell sevenfold. Pure: no clock."""

    def __init__(self, max_rows: int, budget_seconds: float, min_rows: int = MIN_BATCH_ROWS,
                 smoothing: float = 0.2) -> None:
        if max_rows < 1 or min_rows < 1 or not budget_seconds > 0:
            raise ValueError(f"need max_rows, min_rows >= 1 and a positive budget, got {max_rows}, {min_rows}, "
                             f"{budget_seconds}")
        self.max_rows = max_rows
        self.min_rows = min(min_rows, max_rows)
        self.budget = budget_seconds
        self.smoothing = smoothing
        self.call_seconds = 0.0
        self.row_seconds: float | None = None

    def limit(self) -> int:
        if not self.row_seconds:
            return self.max_rows
        return max(self.min_rows, min(self.max_rows, 1 + int(self.budget / self.row_seconds)))

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1:
            return
        if rows == 1:
            self.call_seconds += self.smoothing * (seconds - self.call_seconds)
            return
        sample = max(0.0, seconds - self.call_seconds) / (rows - 1)
        previous = self.row_seconds
        self.row_seconds = sample if previous is None else previous + self.smoothing * (sample - previous)


# A micro-batch held back for more rows (``BatchHold``): at most this long, by default (0 = never).
DEFAULT_BATCH_HOLD_US = 30.0


class BatchHold:
    """Whether to hold a small micro-batch back for a few tens of µs so that more requests join it,
    as an inference server's bounded queue delay does, but only where that pays.

    Near its maximum the open-loop server ran ~6-row batches where a closed loop of 16 clients runs
    16-row ones, and each batch pays a fixed cost (the loop's turn, the predict call, counting, the
    ledger): ~49 µs of the loop's CPU an answer at 20,000 req/s against ~38 µs at wrk's maximum, so
    the loop was ~97 % busy at 80 % of that maximum. A hold of ``hold_seconds`` lets ``rate`` x hold
    more requests arrive before the batch is taken.

    Held only when all of: a hold is configured; the loop thread was busy at least ``min_busy`` of the
    last window (its own CPU over wall time: a loop with time to spare gains nothing from bigger
    batches); at least half a request is expected within the hold (``rate`` x ``hold_seconds`` >= 0.5,
    so never at low rates, where it would only add latency); and fewer than ``target_rows`` are
    queued. The hold is the time ``target_rows`` need to arrive, at most ``hold_seconds``. Once per
    batch (the caller's business). Pure: the caller passes the clocks."""

    def __init__(self, hold_seconds: float, target_rows: int = MIN_BATCH_ROWS, min_busy: float = 0.85,
                 window_seconds: float = 0.02) -> None:
        if hold_seconds < 0 or target_rows < 1 or not 0 < min_busy <= 1 or not window_seconds > 0:
            raise ValueError(f"need hold_seconds >= 0, target_rows >= 1, 0 < min_busy <= 1 and a positive window, "
                             f"got {hold_seconds}, {target_rows}, {min_busy}, {window_seconds}")
        self.hold_seconds = hold_seconds
        self.target_rows = target_rows
        self.min_busy = min_busy
        self.window_seconds = window_seconds
        self.arrived = 0  # requests since the window started
        self.rate = 0.0  # requests a second over the last whole window
        self.busy = 0.0  # the loop thread's CPU share over the last whole window
        self._wall: float | None = None
        self._cpu = 0.0

    def arrive(self) -> None:
        self.arrived += 1

    def tick(self, wall: float, cpu: Any) -> None:
        """At each batch: ``wall`` a monotonic clock, ``cpu()`` the loop thread's CPU seconds (read only
        when a window closes: a thread-CPU clock is a system call)."""
        if self._wall is None:
            self._wall, self._cpu, self.arrived = wall, cpu(), 0
            return
        elapsed = wall - self._wall
        if elapsed >= self.window_seconds:
            now_cpu = cpu()
            self.rate = self.arrived / elapsed
            self.busy = (now_cpu - self._cpu) / elapsed
            self._wall, self._cpu, self.arrived = wall, now_cpu, 0

    def seconds(self, queued_rows: int) -> float:
        """How long to hold a batch of ``queued_rows`` now; 0 = take it at once."""
        hold, rate = self.hold_seconds, self.rate
        if not hold or self.busy < self.min_busy or queued_rows >= self.target_rows or rate * hold < 0.5:
            return 0.0
        return min(hold, (self.target_rows - queued_rows) / rate)
