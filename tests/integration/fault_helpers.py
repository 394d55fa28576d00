"""Helpers of the fault suite (tests/integration/test_fault_*.py): signalling a version's server
processes on the test bed, watching a Rollout's status over time, and counting Events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from rollout_helpers import rollout_status

RUN_MARKER_ENV = "NORIA_TESTBED_RUN"  # the node agent marks every pod process with the test bed's run id


def pods_of(cluster, namespace: str, selector: str) -> list[str]:  # noqa: ANN001
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return [p["metadata"]["name"] for p in json.loads(out.stdout)["items"]]


def pod_processes(cluster, namespace: str, selector: str) -> list[int]:  # noqa: ANN001
    """PIDs of the local processes that run the pods matching ``selector`` (the node agent runs each
    container as a process whose HOSTNAME is the pod's name)."""
    import psutil

    names = set(pods_of(cluster, namespace, selector))
    pids = []
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            environ = process.environ()
            if environ.get(RUN_MARKER_ENV) == cluster.run_id and environ.get("HOSTNAME") in names:
                pids.append(process.pid)
    return pids


def signal_pods(cluster, namespace: str, selector: str, sig: int) -> int:  # noqa: ANN001
    """Send ``sig`` to every process of the matching pods; returns how many were signalled."""
    sent = 0
    for pid in pod_processes(cluster, namespace, selector):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent += 1
    return sent


class PodKiller:
    """Keeps the matching pods' processes dead (SIGKILL every ``period`` seconds) while active: the
    node agent restarts them, they die again before they can become ready."""

    def __init__(self, cluster, namespace: str, selector: str, period: float = 0.3) -> None:  # noqa: ANN001
        self.cluster, self.namespace, self.selector, self.period = cluster, namespace, selector, period
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.kills += signal_pods(self.cluster, self.namespace, self.selector, signal.SIGKILL)
            self._stop.wait(self.period)

    def __enter__(self) -> PodKiller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class StatusRecorder:
    """Polls a Rollout's status in the background and keeps every sample (time.monotonic(), status)."""

    cluster: object
    namespace: str
    name: str = "churn"
    period: float = 0.25
    samples: list[tuple[float, dict]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), rollout_status(self.cluster, self.namespace, self.name)))
            self._stop.wait(self.period)

    def __enter__(self) -> StatusRecorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        # One last sample after the thread stopped: whatever the test itself read before leaving the block
        # (a promotion, an abort) is then in the record too, even if the poller was between two reads.
        self.samples.append((time.monotonic(), rollout_status(self.cluster, self.namespace, self.name)))

    def weights_of(self, version: str, since: float = 0.0) -> list[int]:
        return [(st.get("weights") or {}).get(version, 0) for at, st in list(self.samples) if at >= since]

    def first(self, predicate, since: float = 0.0) -> tuple[float, dict] | None:  # noqa: ANN001
        return next(((at, st) for at, st in list(self.samples) if at >= since and predicate(st)), None)


def warning_events(cluster, namespace: str, name: str, reason: str | None = None) -> list[dict]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                          "-o", "json")
    return [e for e in json.loads(out.stdout)["items"]
            if e.get("type") == "Warning" and (reason is None or e.get("reason") == reason)]


def event_count(events: list[dict]) -> int:
    """Posts, counting the API server's own aggregation (``count`` on a repeated Event)."""
    return sum(int(e.get("count") or 1) for e in events)


def stage_history(cluster, namespace: str, version: str) -> list[str]:  # noqa: ANN001
    from rollout_helpers import get

    mv = get(cluster, namespace, "modelversion", version) or {}
    return [h["stage"] for h in (mv.get("status") or {}).get("history") or []]


def is_subsequence(wanted: list[str], history: list[str]) -> bool:
    remaining = iter(history)
    return all(any(stage == w for stage in remaining) for w in wanted)


def status_text(cluster, namespace: str) -> str:  # noqa: ANN001
    """The Rollout's status as JSON, cut to fit a failure message."""
    return json.dumps(rollout_status(cluster, namespace))[:3000]
