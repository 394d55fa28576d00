"""The Rollout spec as the deployment code reads it: frozen dataclasses built from the API model.

A spec is read once, by ``noria.api.RolloutSpec`` (the model the CRD is generated from), so its
defaults and rules are defined in one place and the operator refuses exactly what the API server
and ``python -m noria.api.validate`` refuse. The dataclasses below are what the decisions use:
durations in seconds, bounds as floats, defaults filled in. A spec the model refuses (a CRD older
or newer than the operator, a hand-written dict in a test) raises ``RolloutSpecError`` naming the
field, which ends as one clear condition in status instead of a KeyError deep in a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError

from noria.api import rollout as api
from noria.api.common import S3Access, decimal
from noria.api.resources import field_path
from noria.deployment.durations import seconds

STRATEGIES = ("canary", "blueGreen", "shadow", "immediate")
PROVIDERS: tuple[str, ...] = get_args(api.Traffic.model_fields["provider"].annotation)
BUILTIN_CHECKS: tuple[str, ...] = get_args(api.BuiltinCheck)
LATENCY_CHECKS = api.LATENCY_CHECKS
StrategyName = Literal["canary", "blueGreen", "shadow", "immediate"]


def _default(model: type[BaseModel], name: str) -> Any:
    """The default of a field of the API model: the one place defaults are written."""
    return model.model_fields[name].get_default(call_default_factory=True)


DEFAULT_SCALE_DOWN_DELAY = 30.0  # seconds; the API leaves scaleDownDelay unset, this is what unset means
DEFAULT_PROGRESS_DEADLINE = seconds(_default(api.RolloutSpec, "progress_deadline"))


class RolloutSpecError(ValueError):
    """The Rollout spec cannot be carried out; the message says which field and why."""


@dataclass(frozen=True)
class CanaryStepSpec:
    set_weight: int | None = None
    pause: float | None = None  # seconds; None with is_pause = indefinite (until promoted)
    is_pause: bool = False
    analysis: bool = False
    analysis_count: int = 1  # successful measurements the analysis step needs


@dataclass(frozen=True)
class CheckSpec:
    name: str
    builtin: str | None = None
    query: str | None = None
    min: float | None = None
    max: float | None = None
    min_labels: int = 0
    window: float | None = None  # seconds; None = the analysis default window
    dry_run: bool = False
    method: str = "psi"  # drift checks
    against: str = "reference"  # predictionDrift/featureDrift: "reference" or "stable"
    label_timeout: float | None = None  # seconds a label-needing check may wait for minLabels; None: no bound


@dataclass(frozen=True)
class AnalysisSpec:
    interval: float = seconds(_default(api.AnalysisSpec, "interval"))
    failure_limit: int = _default(api.AnalysisSpec, "failure_limit")  # failed measurements tolerated; one more aborts
    consecutive_error_limit: int = _default(api.AnalysisSpec, "consecutive_error_limit")  # errors in a row tolerated
    inconclusive: str = _default(api.AnalysisSpec, "inconclusive")  # pause | fail
    checks: tuple[CheckSpec, ...] = ()

    @property
    def window(self) -> float:
        """Default rate window: two intervals, at least 30 s, so a rate has several scrapes."""
        return max(2 * self.interval, 30.0)


@dataclass(frozen=True)
class SecretKeyRef:
    """A Secret key the kubelet hands to a pod (env valueFrom.secretKeyRef); the operator never reads it."""

    name: str
    key: str = "token"


@dataclass(frozen=True)
class RolloutSpec:
    pipeline: str | None
    model_version: str | None
    replicas: int
    strategy: StrategyName
    canary_steps: tuple[CanaryStepSpec, ...] = ()
    blue_green_auto_promotion_after: float | None = None  # None: wait for promotion
    blue_green_scale_down_delay: float | None = None
    blue_green_pre_promotion_analysis: bool = False
    shadow_mirror_percent: int = 100
    shadow_duration: float | None = None
    shadow_promote: str = "manual"  # automatic | manual
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    provider: str = "router"
    http_route: str | None = None
    rollback_window: float = 0.0
    scale_down_delay_seconds: float | None = None
    resources: Mapping[str, Any] | None = None
    prediction_log: bool = True
    feedback_token: SecretKeyRef | None = None  # spec.feedback.tokenSecretRef
    progress_deadline: float = DEFAULT_PROGRESS_DEADLINE  # spec.progressDeadline, seconds without progress
    paused: bool = False  # spec.paused: hold where it is (deployment/pause.py)
    store_access: S3Access | None = None  # spec.store.s3: how servers reach an s3:// store (noria.objectstore)
    online_features: api.OnlineFeast | None = None  # spec.onlineFeatures.feast: servers look features up there

    @property
    def scale_down_delay(self) -> float:
        """How long a replaced or aborted version keeps its pods after its traffic went to zero: long
        enough for every router replica to have picked up the new weights and drained in-flight requests."""
        if self.strategy == "blueGreen" and self.blue_green_scale_down_delay is not None:
            return self.blue_green_scale_down_delay
        if self.scale_down_delay_seconds is not None:
            return self.scale_down_delay_seconds
        return DEFAULT_SCALE_DOWN_DELAY


def _validated(model: type[BaseModel], raw: Any, where: str) -> Any:
    """``raw`` read by the API model; RolloutSpecError naming each refused field (``where`` prefixed)."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            path = field_path(e["loc"])
            text = f"{where}.{path}" if path else where
            message = e["msg"].removeprefix("Value error, ")
            # a message that already names its field ("source: set exactly one of ...") is not prefixed twice
            message = message.removeprefix(text.rsplit(".", 1)[-1] + ": ")
            problem = f"{text}: {message}"
            if problem not in problems:
                problems.append(problem)
        raise RolloutSpecError("; ".join(problems)) from None


def _optional_seconds(value: str | None) -> float | None:
    return None if value is None else seconds(value)


def _bound(value: int | str | None) -> float | None:
    return None if value is None else float(decimal(value))


def _check(check: api.Check) -> CheckSpec:
    return CheckSpec(
        name=check.display_name,
        builtin=check.builtin,
        query=check.query,
        min=_bound(check.min),
        max=_bound(check.max),
        min_labels=check.min_labels or 0,
        window=_optional_seconds(check.window),
        dry_run=check.dry_run,
        method=check.method or "psi",
        against=check.against or "reference",
        label_timeout=_optional_seconds(check.label_timeout),
    )


def parse_check(raw: Any, i: int) -> CheckSpec:
    """One analysis check (``spec.analysis.checks[i]``)."""
    return _check(_validated(api.Check, raw, f"spec.analysis.checks[{i}]"))


def _analysis(analysis: api.AnalysisSpec | None) -> AnalysisSpec:
    if analysis is None:
        return AnalysisSpec()
    return AnalysisSpec(
        interval=seconds(analysis.interval) or 1.0,  # "0s" would spin: one measurement a second at most
        failure_limit=analysis.failure_limit,
        consecutive_error_limit=analysis.consecutive_error_limit,
        inconclusive=analysis.inconclusive,
        checks=tuple(_check(c) for c in analysis.checks),
    )


def parse_analysis(raw: Any) -> AnalysisSpec:
    """``spec.analysis`` (None or {} for the defaults)."""
    return _analysis(_validated(api.AnalysisSpec, raw or {}, "spec.analysis"))


def _canary_steps(canary: api.Canary) -> tuple[CanaryStepSpec, ...]:
    steps = []
    for step in canary.steps:
        if step.set_weight is not None:
            steps.append(CanaryStepSpec(set_weight=step.set_weight))
        elif step.pause is not None:
            steps.append(CanaryStepSpec(is_pause=True, pause=_optional_seconds(step.pause.duration)))
        else:
            assert step.analysis is not None  # the model allows exactly one of the three
            steps.append(CanaryStepSpec(analysis=True, analysis_count=step.analysis.count or 1))
    return tuple(steps)


def parse_canary_steps(raw: Any) -> tuple[CanaryStepSpec, ...]:
    """``spec.strategy.canary.steps``."""
    return _canary_steps(_validated(api.Canary, {"steps": raw}, "spec.strategy.canary"))


def from_model(model: api.RolloutSpec) -> RolloutSpec:
    """The deployment code's view of a validated API model."""
    strategy = model.strategy
    kwargs: dict[str, Any] = {}
    if strategy.canary is not None:
        kwargs["canary_steps"] = _canary_steps(strategy.canary)
    elif strategy.blue_green is not None:
        kwargs["blue_green_auto_promotion_after"] = _optional_seconds(strategy.blue_green.auto_promotion_after)
        kwargs["blue_green_scale_down_delay"] = _optional_seconds(strategy.blue_green.scale_down_delay)
        kwargs["blue_green_pre_promotion_analysis"] = strategy.blue_green.pre_promotion_analysis is not None
    elif strategy.shadow is not None:
        kwargs["shadow_mirror_percent"] = strategy.shadow.mirror_percent
        kwargs["shadow_duration"] = _optional_seconds(strategy.shadow.duration)
        kwargs["shadow_promote"] = strategy.shadow.promote
    traffic = model.traffic or api.Traffic()
    token = model.feedback.token_secret_ref if model.feedback else None
    return RolloutSpec(
        pipeline=model.source.pipeline,
        model_version=model.source.model_version,
        replicas=model.replicas,
        strategy=strategy.name,  # type: ignore[arg-type]
        analysis=_analysis(model.analysis),
        provider=traffic.provider,
        http_route=traffic.gateway_api.http_route if traffic.gateway_api else None,
        rollback_window=seconds(model.rollback_window) if model.rollback_window else 0.0,
        scale_down_delay_seconds=_optional_seconds(model.scale_down_delay),
        resources=model.resources.model_dump(mode="json", exclude_none=True) if model.resources else None,
        prediction_log=model.prediction_log,
        feedback_token=SecretKeyRef(token.name, token.key) if token else None,
        progress_deadline=seconds(model.progress_deadline),
        paused=model.paused,
        store_access=model.store.s3 if model.store else None,
        online_features=model.online_features.feast if model.online_features else None,
        **kwargs,
    )


def parse_rollout_spec(spec: Mapping[str, Any]) -> RolloutSpec:
    """Read a Rollout's spec dict through the API model; raise RolloutSpecError naming the field."""
    return from_model(_validated(api.RolloutSpec, dict(spec), "spec"))
