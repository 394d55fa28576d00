"""The Rollout series of ``noria.opmetrics``, read from what one pass wrote.

Every value comes from the Rollout's status before and after a pass whose status write succeeded,
never from the decision alone: a pass dropped on a 409 or a crash wrote nothing, so it counts nothing,
and the pass that repeats it counts once. That is also how a measurement is counted once (not once per
pass): it is counted in the pass that recorded it, recognised by a new ``status.analysis.last.at``.

- phase: 1 for ``status.phase``, 0 for the other phases (all five series exist, so a query for
  ``== 1`` never misses a Rollout in a phase it has not been in yet);
- step: ``status.currentStep``, -1 while no rollout is under way;
- weight per version: ``status.weights``; a version that left the weights loses its series;
- analysis measurements: one per check of each newly recorded measurement, by its displayed outcome;
  every configured check has all five outcome series from the Rollout's first pass, at 0;
- promotions: a new ``lastVerdict`` Production with reason Promoted (a candidate that went through its
  steps, or ``promote=full``; not a first deployment nor a fast rollback to a running version); at 0
  from the first pass;
- aborts: a new ``lastVerdict`` Rejected, by its reason (AnalysisFailed, AbortedByUser,
  ProgressDeadlineExceeded, RolledBack, ...).

Counters start at 0 because Prometheus' ``increase()`` needs a sample before the first increment: a
series born at 1 on the first promotion or failed measurement reads as no increase, and a dashboard or
alert built on it misses exactly the first event.

A deleted Rollout's series are removed (``forget``): a namespace that churns Rollouts must not grow
the operator's /metrics forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from noria import conditions as c
from noria import contracts as ct
from noria import opmetrics
from noria.deployment.analysis import DISPLAY

PHASES = ("Pending", "Progressing", "Paused", "Healthy", "Degraded")
NO_STEP = -1
OUTCOMES = tuple(DISPLAY.values())  # an analysis measurement's displayed outcomes: Successful, Failed, ...


@dataclass(frozen=True)
class PassMetrics:
    """What one Rollout pass changed in the Rollout series (pure: from the status before and after)."""

    phase: str
    step: int
    weights: Mapping[str, int]
    measurements: tuple[tuple[str, str], ...] = ()  # (check, outcome) of a newly recorded measurement
    promoted: bool = False
    abort_reason: str | None = None
    checks: tuple[str, ...] = ()  # the configured analysis checks: their outcome series exist at 0


def _last(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return (status.get("analysis") or {}).get("last") or {}


def pass_metrics(before: Mapping[str, Any], after: Mapping[str, Any], checks: tuple[str, ...] = ()) -> PassMetrics:
    """The series' values after a pass that turned status ``before`` into ``after``, under a spec
    whose analysis has ``checks`` (by name)."""
    step = after.get("currentStep")
    measurements: tuple[tuple[str, str], ...] = ()
    last = _last(after)
    if last.get("at") and last.get("at") != _last(before).get("at"):
        measurements = tuple((str(check.get("name")), str(check.get("outcome"))) for check in last.get("checks") or [])
    verdict = after.get("lastVerdict") or {}
    new_verdict = bool(verdict) and verdict != (before.get("lastVerdict") or {})
    return PassMetrics(
        phase=str(after.get("phase") or "Pending"),
        step=int(step) if step is not None and after.get("canaryVersion") else NO_STEP,
        weights={str(v): int(w) for v, w in (after.get("weights") or {}).items()},
        measurements=measurements,
        promoted=new_verdict and verdict.get("stage") == ct.PRODUCTION and verdict.get("reason") == c.ROLLOUT_PROMOTED,
        abort_reason=str(verdict.get("reason")) if new_verdict and verdict.get("stage") == ct.REJECTED else None,
        checks=tuple(checks),
    )


# Label values this process has set per Rollout, so that ``forget`` removes exactly those.
_weights: dict[tuple[str, str], set[str]] = {}
_counted: dict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = {}


def record(namespace: str, name: str, m: PassMetrics) -> None:
    """Set the gauges and count the events of one pass of Rollout ``namespace/name``."""
    key = (namespace, name)
    set_phase(namespace, name, m.phase)
    opmetrics.ROLLOUT_STEP.labels(namespace, name).set(m.step)
    versions = _weights.setdefault(key, set())
    for gone in versions - set(m.weights):
        opmetrics.ROLLOUT_WEIGHT.remove(namespace, name, gone)
    for version, weight in m.weights.items():
        opmetrics.ROLLOUT_WEIGHT.labels(namespace, name, version).set(weight)
    versions.clear()
    versions.update(m.weights)
    counted = _counted.setdefault(key, set())
    _zero(counted, opmetrics.ROLLOUT_PROMOTIONS, namespace, name)
    for check in m.checks:  # a check added by an edit gets its series on the first pass that sees it
        for outcome in OUTCOMES:
            _zero(counted, opmetrics.ANALYSIS_MEASUREMENTS, namespace, name, check, outcome)
    for check, outcome in m.measurements:
        _inc(counted, opmetrics.ANALYSIS_MEASUREMENTS, namespace, name, check, outcome)
    if m.promoted:
        _inc(counted, opmetrics.ROLLOUT_PROMOTIONS, namespace, name)
    if m.abort_reason:
        _inc(counted, opmetrics.ROLLOUT_ABORTS, namespace, name, m.abort_reason)


def set_phase(namespace: str, name: str, phase: str) -> None:
    """1 for ``phase``, 0 for the others (also used when a failed pass writes phase Degraded)."""
    for each in PHASES:
        opmetrics.ROLLOUT_PHASE.labels(namespace, name, each).set(1 if each == phase else 0)


def _zero(counted: set[tuple[Any, tuple[str, ...]]], counter: Any, *labels: str) -> None:
    """Create the series at 0 (once: it is kept in ``counted``, which ``forget`` removes)."""
    if (counter, labels) not in counted:
        counter.labels(*labels)
        counted.add((counter, labels))


def _inc(counted: set[tuple[Any, tuple[str, ...]]], counter: Any, *labels: str) -> None:
    counter.labels(*labels).inc()
    counted.add((counter, labels))


def forget(namespace: str, name: str) -> None:
    """Remove every series of a deleted Rollout."""
    key = (namespace, name)
    for phase in PHASES:  # remove() of a label set never set is a no-op
        opmetrics.ROLLOUT_PHASE.remove(namespace, name, phase)
    opmetrics.ROLLOUT_STEP.remove(namespace, name)
    for version in _weights.pop(key, set()):
        opmetrics.ROLLOUT_WEIGHT.remove(namespace, name, version)
    for counter, labels in _counted.pop(key, set()):
        counter.remove(*labels)
