"""The replay clock: how simulated time advances over the traffic, slice by slice (pure).

A slice is either a number of rows (``1000rows``) or a duration (``1h``). One operator pass runs at
the end of each slice, at the time of the slice's last row (row slices) or at the slice's boundary
(duration slices, which may be empty: time still passes and the operator still looks). So the
time resolution of ``for``, ``cooldown`` and the trigger windows is one slice: choose slices well
below them (the defaults of the CLI give about a minute's worth of passes at the scenario rates).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from noria.api.common import DURATION_MESSAGE, parse_duration
from noria.api.training_pipeline import parse_window

# The CLI's compact spelling of a row count ("1000rows", "1 row") as the API spells a window ("1000 rows").
_ROWS_SUFFIX: Final = re.compile(r"\s*rows?$")
_DURATION_WORDS: Final = DURATION_MESSAGE.removeprefix("must be a duration: ")


@dataclass(frozen=True)
class SliceSize:
    """``rows`` or ``duration``; ``label`` is what the user wrote."""

    label: str
    rows: int | None = None
    duration: dt.timedelta | None = None


def parse_slice(text: str, option: str = "--slice") -> SliceSize:
    """A row count as a TrainingPipeline window spells it (``"1000 rows"``, also ``"1000rows"`` and
    ``"1 row"``; read by ``noria.api.parse_window``) or a positive duration as the API spells one
    (``"1h"``, ``"30m"``, ``"90s"``, ``"1h30m"``; read by ``noria.api.common.parse_duration``:
    whole numbers, units ms, s, m, h, d, w)."""
    label = str(text).strip()
    spelled = _ROWS_SUFFIX.sub(" rows", label)
    if spelled.endswith(" rows"):
        try:
            _, rows = parse_window(spelled)
        except ValueError:
            raise ValueError(f"{option} {text!r}: a row count is a positive whole number of rows, e.g. 1000rows") from None
        return SliceSize(label, rows=int(rows))
    try:
        duration = parse_duration(label)
    except ValueError:
        raise ValueError(f"{option} {text!r} is neither a row count (1000rows) nor a duration ({_DURATION_WORDS})"
                         ) from None
    if duration <= dt.timedelta(0):
        raise ValueError(f"{option} {text!r}: the duration must be positive")
    return SliceSize(label, duration=duration)


def parse_delay(text: str, option: str = "--label-delay") -> dt.timedelta:
    """``"0s"``, ``"30s"``, ``"5m"``, ``"2h"``: a duration as the API spells one
    (``noria.api.common.parse_duration``), which may be zero."""
    try:
        return parse_duration(str(text).strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a duration ({_DURATION_WORDS})") from None


@dataclass(frozen=True)
class Slice:
    index: int
    start_row: int  # rows [start_row, stop_row) of the traffic, in time order
    stop_row: int
    start: dt.datetime
    end: dt.datetime  # "now" of the operator pass that follows the slice

    @property
    def rows(self) -> int:
        return self.stop_row - self.start_row


def _utc(value: np.datetime64) -> dt.datetime:
    seconds = value.astype("datetime64[us]").astype(np.int64) / 1e6
    return dt.datetime.fromtimestamp(float(seconds), dt.UTC)


def slices(times: Sequence[np.datetime64] | np.ndarray, size: SliceSize) -> list[Slice]:
    """The slices of traffic whose (sorted, timezone-free UTC) timestamps are ``times``."""
    stamps = np.asarray(times, dtype="datetime64[ns]")
    n = len(stamps)
    if n == 0:
        return []
    if np.any(stamps[1:] < stamps[:-1]):
        raise ValueError("the traffic's timestamps must be in time order")
    out: list[Slice] = []
    if size.rows is not None:
        for i, start in enumerate(range(0, n, size.rows)):
            stop = min(n, start + size.rows)
            out.append(Slice(i, start, stop, _utc(stamps[start]), _utc(stamps[stop - 1])))
        return out
    assert size.duration is not None
    step = np.timedelta64(int(size.duration.total_seconds() * 1e6), "us").astype("timedelta64[ns]")
    origin = stamps[0]
    count = int((stamps[-1] - origin) // step) + 1
    bounds = origin + step * np.arange(count + 1)
    # a row at exactly a boundary belongs to the slice that starts there (slices are [start, end))
    cuts = np.searchsorted(stamps, bounds, side="left")
    for i in range(count):
        out.append(Slice(i, int(cuts[i]), int(cuts[i + 1]) if i + 1 < count else n,
                         _utc(bounds[i]), _utc(bounds[i + 1])))
    return out
