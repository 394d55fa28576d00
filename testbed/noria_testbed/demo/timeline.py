"""The demo's timeline: one JSON object per line, appended as things happen, read back by the report.

Kinds of lines (every line has ``kind`` and ``ts``, seconds since the epoch):
- ``request``: one prediction request and what came back (``status``, ``version``, ``prediction``,
  ``latency_ms``, ``error``), with the features sent, the true ``label`` (known to the generator,
  sent later as feedback) and the story ``phase`` it belongs to;
- ``feedback``: one ground-truth label posted for a prediction id, and its HTTP status;
- ``act``: the story moved on (``act``, ``message``);
- ``observation``: something read from the cluster (``what``: weights, drift, stage, run, ...).

Appending whole lines with one ``write`` keeps the file readable while it is written, so the
report can be drawn from a run that was interrupted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Timeline:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, ts: float | None = None, **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, "ts": time.time() if ts is None else ts, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_timeline(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a timeline file; a torn last line (a killed writer) is skipped."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "kind" in record:
                yield record
