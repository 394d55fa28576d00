"""Every strategy as one list of steps, and the traffic each step asks for.

A candidate version walks these steps by index (``status.currentStep``); the index and the time the
step began live in status, so a restarted operator resumes at the same step: a step already carried
out is only re-applied (idempotent), never skipped.

- immediate: ``[switch]``
- canary:    the user's steps, then ``switch`` (``setWeight: 100`` at the end is implied)
- blueGreen: ``[preview, analysis?, pause(autoPromotionAfter or until promoted), switch]``
- shadow:    ``[mirror, pause(duration)?, analysis?, pause()? (promote: manual), switch]``

Worked example, ``canary: [{setWeight: 10}, {pause: {duration: 1m}}, {setWeight: 50}]``:
step 0 sets 90/10, step 1 waits a minute at 90/10, step 2 sets 50/50, step 3 switches to 0/100
and promotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from noria.deployment.spec import RolloutSpec

StepKind = Literal["setWeight", "pause", "analysis", "preview", "mirror", "switch"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    weight: int = 0  # setWeight
    duration: float | None = None  # pause: seconds; None = until promoted
    count: int = 1  # analysis: successful measurements needed
    mirror_percent: int = 0  # mirror

    def describe(self) -> str:
        if self.kind == "setWeight":
            return f"setWeight {self.weight}"
        if self.kind == "pause":
            return "pause until promoted" if self.duration is None else f"pause {self.duration:g}s"
        if self.kind == "analysis":
            return f"analysis ({self.count} passing measurement{'s' if self.count > 1 else ''})"
        if self.kind == "mirror":
            return f"mirror {self.mirror_percent}%"
        return self.kind


@dataclass(frozen=True)
class Traffic:
    """What the candidate receives while a step is current."""

    weight: int = 0  # percent of user traffic
    mirror_percent: int = 0  # percent of requests copied to it (answers never returned)
    preview: bool = False  # reachable through the preview Service only


def plan_steps(spec: RolloutSpec) -> tuple[Step, ...]:
    if spec.strategy == "immediate":
        return (Step("switch"),)
    if spec.strategy == "canary":
        steps: list[Step] = []
        for s in spec.canary_steps:
            if s.set_weight is not None:
                steps.append(Step("switch") if s.set_weight == 100 else Step("setWeight", weight=s.set_weight))
            elif s.is_pause:
                steps.append(Step("pause", duration=s.pause))
            else:
                steps.append(Step("analysis", count=s.analysis_count))
        # Anything after a 100% step is pointless: the candidate is already promoted.
        if Step("switch") in steps:
            steps = steps[: steps.index(Step("switch")) + 1]
        else:
            steps.append(Step("switch"))
        return tuple(steps)
    if spec.strategy == "blueGreen":
        steps = [Step("preview")]
        if spec.blue_green_pre_promotion_analysis:
            steps.append(Step("analysis"))
        # autoPromotionAfter unset: wait for `noria.dev/promote`; set: wait that long, then switch.
        steps.append(Step("pause", duration=spec.blue_green_auto_promotion_after))
        steps.append(Step("switch"))
        return tuple(steps)
    # shadow
    steps = [Step("mirror", mirror_percent=spec.shadow_mirror_percent)]
    if spec.shadow_duration:
        steps.append(Step("pause", duration=spec.shadow_duration))
    if spec.analysis.checks:
        steps.append(Step("analysis"))
    if spec.shadow_promote == "manual":
        steps.append(Step("pause", duration=None))
    steps.append(Step("switch"))
    return tuple(steps)


def traffic_at(steps: tuple[Step, ...], index: int) -> Traffic:
    """The candidate's traffic while step ``index`` is current (steps before it already applied)."""
    weight, mirror, preview = 0, 0, False
    for step in steps[: index + 1]:
        if step.kind == "setWeight":
            weight = step.weight
        elif step.kind == "mirror":
            mirror = step.mirror_percent
        elif step.kind == "preview":
            preview = True
        elif step.kind == "switch":
            return Traffic(weight=100)
    return Traffic(weight=weight, mirror_percent=mirror, preview=preview)


def split_replicas(weight: int, replicas: int) -> int:
    """Candidate pods beside ``replicas`` stable pods so that, when one Service selects both versions
    (provider ``service``), the candidate's share of pods is close to ``weight`` percent.

    >>> split_replicas(50, 2), split_replicas(10, 2), split_replicas(20, 4)
    (2, 1, 1)
    """
    if weight <= 0:
        return 0
    if weight >= 100:
        return replicas
    return max(1, round(replicas * weight / (100 - weight)))
