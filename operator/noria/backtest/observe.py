"""What the operator would have read from Prometheus, built from the replayed traffic.

The operator asks Prometheus for ``increase(noria_feature_bin_total{version=<champion>}[window])``
summed over pods (drift) and ``increase(noria_feedback_total{version=<champion>}[window])`` (the
performance trigger), see ``noria.training.handlers``. Here the same two observations come from
what each version answered in the replay: the rows it served inside the window are counted by the
server's own bin counter (``noria_server.telemetry.FeatureBinCounter``, against the version's
profile, exactly as the version's pods count them), and the labels that arrived inside the window
are counted as ``(actual, predicted)`` pairs as the server's feedback counter does (``str`` of each,
a label counted once per prediction). Each observation is tagged with the version it is about, as
the operator tags its Prometheus answers.

Everything here is pure given its inputs (the ``Served`` records of the replay).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from noria.profile import Profile
from noria.training.triggers import MetricObservation


@dataclass(frozen=True)
class Served:
    """Rows one version answered during one slice, and their labels."""

    version: str
    times: np.ndarray  # datetime64[ns], when each request was answered
    rows: np.ndarray  # (n, F) as the server receives them: the version's features, in its order
    features: tuple[str, ...]
    predictions: np.ndarray
    labels: np.ndarray
    label_times: np.ndarray  # datetime64[ns], when each label came back as feedback


def _np_time(value: dt.datetime) -> np.datetime64:
    return np.datetime64(value.astimezone(dt.UTC).replace(tzinfo=None), "ns")


def _in_window(times: np.ndarray, now: dt.datetime, window: dt.timedelta) -> np.ndarray:
    """``increase(x[window])`` at ``now`` covers (now - window, now]."""
    end = _np_time(now)
    return (times > end - np.timedelta64(int(window.total_seconds() * 1e6), "us")) & (times <= end)


def drift_observation(served: Sequence[Served], version: str, profile: Profile, now: dt.datetime,
                      window: dt.timedelta) -> MetricObservation:
    """``{(feature, bin): count}`` of the rows ``version`` answered in (now - window, now]."""
    from noria_server.telemetry import FeatureBinCounter

    mine = [s for s in served if s.version == version]
    if not mine:
        return MetricObservation(counts={}, version=version)
    counter = FeatureBinCounter("backtest", version, list(mine[0].features), profile)
    for s in mine:
        keep = _in_window(s.times, now, window)
        if keep.any():
            counter.observe(s.rows[keep])
    counts: dict[tuple[str, str], float] = {}
    for k, (_, name, fp) in enumerate(counter.numeric + counter.categorical):
        offset = int(counter.offsets[k])
        for b, label in enumerate(fp.labels):
            counts[(name, label)] = float(counter.counts[offset + b])
    return MetricObservation(counts=counts, version=version)


def _label_text(value: object) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return str(value)


def performance_observation(served: Sequence[Served], version: str, now: dt.datetime,
                            window: dt.timedelta) -> MetricObservation:
    """``{(actual, predicted): count}`` of the labels for ``version``'s answers that came back in
    (now - window, now]."""
    counts: dict[tuple[str, str], float] = {}
    for s in served:
        if s.version != version:
            continue
        keep = _in_window(s.label_times, now, window)
        for actual, predicted in zip(s.labels[keep].tolist(), s.predictions[keep].tolist(), strict=True):
            key = (_label_text(actual), _label_text(predicted))
            counts[key] = counts.get(key, 0.0) + 1.0
    return MetricObservation(counts=counts, version=version)
