"""The prediction log's timestamp text (serve._timestamp): kept per second, always the text of its own
``ts``, also next to a millisecond's edges, across midnight and when calls go back in time."""

from __future__ import annotations

import datetime as dt
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "server_image"))

from noria_server import serve  # noqa: E402


def formatted(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_same_text_as_formatting_each_time() -> None:
    rng = random.Random(7)
    midnight = dt.datetime(2026, 12, 4, tzinfo=dt.UTC).timestamp()
    times: list[float] = []
    for start in (midnight - 0.003, 1_780_000_000.123, midnight + 86_400 - 0.002):
        times += sorted(start + rng.random() * 0.006 for _ in range(3000))
        ms = round(start * 1000)
        for k in range(6):  # next to the edges, where rounding to the µs decides the millisecond
            for d in (-2e-4, -6e-6, -1e-6, -1e-9, 0.0, 1e-9, 1e-6, 6e-6, 2e-4, 0.0099, 0.0101, 0.9899, 0.9901):
                times.append((ms + k + d) / 1000.0)
    times += list(reversed(times[:500]))  # back in time: a kept second is never used for another
    kept = 0
    for ts in times:
        before = serve._STAMP
        assert serve._timestamp(ts) == formatted(ts), ts
        kept += serve._STAMP is before and before[0] >= 0
    assert kept > 8000  # the kept text was used, not formatted every time


def test_the_log_line_carries_it() -> None:
    import numpy as np

    ts = 1_780_000_000.4567
    line = serve._render_predictions([(1, ts)], "v1", ("a", "b"), ["id1"], np.array([[1.0, 2.5]]), [0])
    assert line == (b'{"id":"id1","ts":"2026-05-28T20:26:40.456Z","model_version":"v1",'
                    b'"features":{"a":1.0,"b":2.5},"prediction":0}\n')
