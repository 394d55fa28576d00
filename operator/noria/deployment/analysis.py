"""Verdicts from measurements: what one measurement says, and what a run of them means.

Outcomes of one check: ``success`` (within min/max), ``failure`` (outside), ``inconclusive`` (no data:
no traffic), ``error`` (Prometheus unreachable or the query refused) and ``waiting`` (a check that needs
labels has fewer than ``minLabels`` yet: the evidence is on its way, so the step waits for it instead of
pausing for a person). A measurement combines its checks with the worst outcome first:
failure > error > inconclusive > waiting > success. ``dryRun`` checks are recorded but never decide.

A waiting check stops waiting when its ``labelTimeout`` (counted from the start of the step) has passed:
it is then ``inconclusive`` (``resolve_waiting``). Without a ``labelTimeout`` it waits until the
Rollout's ``progressDeadline`` ends the rollout. A waiting measurement is never tallied.

What a run decides (``judge_run``):
- ``failureLimit`` failures are tolerated and one more aborts: measured every ``interval`` from the
  first failure, a bad version is out within interval × failureLimit;
- ``consecutiveErrorLimit`` errors in a row are tolerated and one more aborts: a blind rollout must
  not go on for ever;
- an inconclusive measurement pauses (``inconclusive: pause``, the default) or counts as a failure
  (``inconclusive: fail``); it never counts as a pass, so missing data never promotes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from noria.deployment.spec import AnalysisSpec, CheckSpec

if TYPE_CHECKING:  # checks renders PromQL and sits beside the Prometheus client: the verdicts need only its shape
    from noria.deployment.checks import Observed

Outcome = Literal["success", "failure", "error", "inconclusive", "waiting"]
RunVerdict = Literal["continue", "abort", "pause"]
SEVERITY: dict[str, int] = {"success": 0, "waiting": 1, "inconclusive": 2, "error": 3, "failure": 4}
# How status spells outcomes (the CRD's words for `kubectl describe`).
DISPLAY: dict[str, str] = {"success": "Successful", "failure": "Failed", "error": "Error", "inconclusive": "Inconclusive",
                           "waiting": "Waiting"}
FROM_DISPLAY: dict[str, str] = {v: k for k, v in DISPLAY.items()}


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    value: float | None = None
    message: str = ""
    dry_run: bool = False

    def to_status(self) -> dict[str, Any]:
        message = self.message + (" (dryRun: recorded, not deciding)" if self.dry_run else "")
        out: dict[str, Any] = {"name": self.name, "outcome": DISPLAY[self.outcome], "message": message[:1000]}
        if self.value is not None:
            out["value"] = f"{self.value:.6g}"  # decimal strings: no floats in Kubernetes objects
        return out


def judge_check(check: CheckSpec, observed: Observed | Exception) -> CheckResult:
    """One check's outcome from its observed value (or the error that prevented observing it)."""
    if isinstance(observed, Exception):
        return CheckResult(check.name, "error", None, str(observed)[:300], check.dry_run)
    value = observed.value
    if observed.waiting:
        return CheckResult(check.name, "waiting", None, observed.detail or "waiting for labels", check.dry_run)
    if value is None or math.isnan(value):
        return CheckResult(check.name, "inconclusive", None, observed.detail or "no data", check.dry_run)
    bounds = []
    if check.min is not None and value < check.min:
        bounds.append(f"below min {check.min:g}")
    if check.max is not None and value > check.max:
        bounds.append(f"above max {check.max:g}")
    detail = f" ({observed.detail})" if observed.detail else ""
    if bounds:
        return CheckResult(check.name, "failure", value, f"{value:.4g} {' and '.join(bounds)}{detail}", check.dry_run)
    return CheckResult(check.name, "success", value, f"{value:.4g} within bounds{detail}", check.dry_run)


def combine(results: Iterable[CheckResult]) -> Outcome:
    """The measurement's outcome: the most severe outcome among the deciding (non-dryRun) checks."""
    deciding = [r.outcome for r in results if not r.dry_run]
    if not deciding:
        return "inconclusive"  # nothing decides: never a pass by default
    return max(deciding, key=lambda o: SEVERITY[o])


def resolve_waiting(results: Iterable[CheckResult], checks: Iterable[CheckSpec], waited: float) -> tuple[CheckResult, ...]:
    """A waiting check whose ``labelTimeout`` has passed (``waited`` seconds since the step began) is
    inconclusive from then on: the labels did not come in time. Without a ``labelTimeout`` it keeps
    waiting (the Rollout's progressDeadline bounds it)."""
    timeouts = {c.name: c.label_timeout for c in checks}
    out = []
    for r in results:
        timeout = timeouts.get(r.name)
        if r.outcome == "waiting" and timeout is not None and waited >= timeout:
            r = replace(r, outcome="inconclusive", message=f"{r.message}; labelTimeout {timeout:g}s passed")
        out.append(r)
    return tuple(out)


@dataclass(frozen=True)
class Tallies:
    """Counters of one analysis run (a candidate's rollout, or a rollbackWindow after promotion).
    ``consecutive_successes`` is the current streak: the step machine restarts it when the candidate's
    traffic changes or an analysis step begins, so it counts evidence about what is in place now."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    inconclusive: int = 0
    consecutive_errors: int = 0
    consecutive_successes: int = 0

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Tallies:
        raw = raw or {}
        return cls(
            passed=int(raw.get("passed", 0)),
            failed=int(raw.get("failed", 0)),
            errors=int(raw.get("errors", 0)),
            inconclusive=int(raw.get("inconclusive", 0)),
            consecutive_errors=int(raw.get("consecutiveErrors", 0)),
            consecutive_successes=int(raw.get("consecutiveSuccesses", 0)),
        )

    def to_status(self) -> dict[str, int]:
        return {"passed": self.passed, "failed": self.failed, "errors": self.errors,
                "inconclusive": self.inconclusive, "consecutiveErrors": self.consecutive_errors,
                "consecutiveSuccesses": self.consecutive_successes}

    def record(self, outcome: Outcome, spec: AnalysisSpec) -> Tallies:
        """Count one measurement. A waiting one counts nowhere: it is no evidence either way."""
        if outcome == "waiting":
            return self
        if outcome == "success":
            return replace(self, passed=self.passed + 1, consecutive_errors=0,
                           consecutive_successes=self.consecutive_successes + 1)
        if outcome == "failure":
            return replace(self, failed=self.failed + 1, consecutive_errors=0, consecutive_successes=0)
        if outcome == "error":
            return replace(self, errors=self.errors + 1, consecutive_errors=self.consecutive_errors + 1,
                           consecutive_successes=0)
        if spec.inconclusive == "fail":
            return replace(self, inconclusive=self.inconclusive + 1, failed=self.failed + 1, consecutive_errors=0,
                           consecutive_successes=0)
        return replace(self, inconclusive=self.inconclusive + 1, consecutive_errors=0, consecutive_successes=0)

    def restart_streak(self) -> Tallies:
        return replace(self, consecutive_successes=0)


def judge_run(tallies: Tallies, outcome: Outcome, spec: AnalysisSpec) -> tuple[RunVerdict, str]:
    """What the run means after ``outcome`` was recorded into ``tallies``. ``continue`` only means the
    run goes on: whether a step may raise traffic is the step machine's gate, which asks for the
    latest measurement to be a success (errors within ``consecutiveErrorLimit`` hold, never promote)."""
    if tallies.failed > spec.failure_limit:
        return "abort", f"analysis failed {tallies.failed} time(s), failureLimit is {spec.failure_limit}"
    if tallies.consecutive_errors > spec.consecutive_error_limit:
        return "abort", (f"analysis could not measure {tallies.consecutive_errors} time(s) in a row, "
                         f"consecutiveErrorLimit is {spec.consecutive_error_limit}")
    if outcome == "inconclusive" and spec.inconclusive == "pause":
        return "pause", "analysis inconclusive (no data); paused until promoted or aborted"
    return "continue", ""
