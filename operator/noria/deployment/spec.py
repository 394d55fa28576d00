"""The Rollout spec as the deployment code reads it: frozen dataclasses parsed from Kopf's dicts.

The API server already validates the shape (CRD schema from ``noria.api``); this parse repeats the
checks the decisions rely on, so a bad spec ends as one clear message in status instead of a
KeyError deep in a handler (and unit tests can feed plain dicts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from noria.deployment.durations import parse_duration

STRATEGIES = ("canary", "blueGreen", "shadow", "immediate")
PROVIDERS = ("router", "gatewayAPI", "service")
BUILTIN_CHECKS = ("errorRate", "latencyP50", "latencyP95", "latencyP99", "accuracy", "f1", "shadowAgreement", "drift",
                  "predictionDrift")
LATENCY_CHECKS = ("latencyP50", "latencyP95", "latencyP99")

DEFAULT_SCALE_DOWN_DELAY = 30.0
DEFAULT_PROGRESS_DEADLINE = 600.0  # seconds, as Argo Rollouts' progressDeadlineSeconds
StrategyName = Literal["canary", "blueGreen", "shadow", "immediate"]


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
    interval: float = 60.0
    failure_limit: int = 0  # failed measurements tolerated; one more aborts
    consecutive_error_limit: int = 4  # errors in a row tolerated; one more aborts
    inconclusive: str = "pause"  # pause | fail
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


def parse_secret_key_ref(raw: Any, where: str) -> SecretKeyRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise RolloutSpecError(f"{where}.name: name the Secret holding the token, e.g. {{name: churn-feedback, "
                               f"key: token}}")
    key = raw.get("key", "token")
    if not isinstance(key, str) or not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key):
        raise RolloutSpecError(f"{where}.key: {key!r} is not a Secret data key (letters, digits, '-', '_', '.')")
    return SecretKeyRef(raw["name"], key)


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

    @property
    def scale_down_delay(self) -> float:
        """How long a replaced or aborted version keeps its pods after its traffic went to zero: long
        enough for every router replica to have picked up the new weights and drained in-flight requests."""
        if self.strategy == "blueGreen" and self.blue_green_scale_down_delay is not None:
            return self.blue_green_scale_down_delay
        if self.scale_down_delay_seconds is not None:
            return self.scale_down_delay_seconds
        return DEFAULT_SCALE_DOWN_DELAY


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise RolloutSpecError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RolloutSpecError(f"{where}: expected a number (numbers are written as strings), got {value!r}") from None


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value, where)
    except ValueError as exc:
        raise RolloutSpecError(str(exc)) from None


def _int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RolloutSpecError(f"{where}: expected an integer, got {value!r}")
    try:
        out = int(value)
    except ValueError:
        raise RolloutSpecError(f"{where}: expected an integer, got {value!r}") from None
    if lo is not None and out < lo or hi is not None and out > hi:
        raise RolloutSpecError(f"{where}: {out} is outside [{lo}, {hi}]")
    return out


def parse_canary_steps(raw: Any) -> tuple[CanaryStepSpec, ...]:
    if not isinstance(raw, list):
        raise RolloutSpecError("spec.strategy.canary.steps: expected a list of steps")
    steps: list[CanaryStepSpec] = []
    last_weight = 0
    for i, step in enumerate(raw):
        where = f"spec.strategy.canary.steps[{i}]"
        if not isinstance(step, Mapping):
            raise RolloutSpecError(f"{where}: expected setWeight, pause or analysis")
        kinds = [k for k in ("setWeight", "pause", "analysis") if step.get(k) is not None]
        if len(kinds) != 1:
            raise RolloutSpecError(f"{where}: exactly one of setWeight, pause, analysis, got {sorted(step)}")
        if kinds[0] == "setWeight":
            weight = _int(step["setWeight"], f"{where}.setWeight", 0, 100)
            if weight < last_weight:
                raise RolloutSpecError(f"{where}.setWeight: weights must not decrease ({weight} after {last_weight})")
            last_weight = weight
            steps.append(CanaryStepSpec(set_weight=weight))
        elif kinds[0] == "pause":
            pause = step["pause"] or {}
            duration = pause.get("duration") if isinstance(pause, Mapping) else pause
            steps.append(CanaryStepSpec(
                is_pause=True, pause=None if duration is None else _duration(duration, f"{where}.pause.duration")))
        else:
            analysis = step["analysis"] or {}
            count = _int(analysis.get("count", 1), f"{where}.analysis.count", 1) if isinstance(analysis, Mapping) else 1
            steps.append(CanaryStepSpec(analysis=True, analysis_count=count))
    return tuple(steps)


def parse_check(raw: Any, i: int) -> CheckSpec:
    where = f"spec.analysis.checks[{i}]"
    if not isinstance(raw, Mapping):
        raise RolloutSpecError(f"{where}: expected a mapping with builtin or query")
    builtin, query = raw.get("builtin"), raw.get("query")
    if bool(builtin) == bool(query):
        raise RolloutSpecError(f"{where}: set exactly one of builtin or query")
    if builtin and builtin not in BUILTIN_CHECKS:
        raise RolloutSpecError(f"{where}.builtin: {builtin!r} is not one of {', '.join(BUILTIN_CHECKS)}")
    lo = raw.get("min")
    hi = raw.get("max")
    if lo is None and hi is None:
        raise RolloutSpecError(f"{where}: a check needs min or max")
    if builtin in LATENCY_CHECKS:
        hi_v = None if hi is None else _duration(hi, f"{where}.max")
        lo_v = None if lo is None else _duration(lo, f"{where}.min")
    else:
        hi_v = None if hi is None else _number(hi, f"{where}.max")
        lo_v = None if lo is None else _number(lo, f"{where}.min")
    window = raw.get("window")
    return CheckSpec(
        name=str(raw.get("name") or builtin or f"check{i}"),
        builtin=builtin,
        query=query,
        min=lo_v,
        max=hi_v,
        min_labels=_int(raw.get("minLabels") or 0, f"{where}.minLabels", 0),
        window=None if window is None else _duration(window, f"{where}.window"),
        dry_run=bool(raw.get("dryRun", False)),
        method=str(raw.get("method", "psi")),
        against=str(raw.get("against", "reference")),
        label_timeout=None if raw.get("labelTimeout") is None else _duration(raw["labelTimeout"], f"{where}.labelTimeout"),
    )


def parse_analysis(raw: Any) -> AnalysisSpec:
    raw = raw or {}
    inconclusive = str(raw.get("inconclusive", "pause"))
    if inconclusive not in ("pause", "fail"):
        raise RolloutSpecError(f"spec.analysis.inconclusive: {inconclusive!r} is not pause or fail")
    return AnalysisSpec(
        interval=_duration(raw.get("interval", "1m"), "spec.analysis.interval") or 1.0,
        failure_limit=_int(raw.get("failureLimit", 0), "spec.analysis.failureLimit", 0),
        consecutive_error_limit=_int(raw.get("consecutiveErrorLimit", 4), "spec.analysis.consecutiveErrorLimit", 0),
        inconclusive=inconclusive,
        checks=tuple(parse_check(c, i) for i, c in enumerate(raw.get("checks") or [])),
    )


def parse_rollout_spec(spec: Mapping[str, Any]) -> RolloutSpec:
    """Parse a Rollout's spec dict; raise RolloutSpecError with the offending field."""
    source = spec.get("source") or {}
    pipeline, pinned = source.get("pipeline"), source.get("modelVersion")
    if bool(pipeline) == bool(pinned):
        raise RolloutSpecError("spec.source: set exactly one of pipeline or modelVersion")
    strategy_raw = spec.get("strategy") or {"immediate": {}}
    chosen = [k for k in STRATEGIES if strategy_raw.get(k) is not None]
    unknown = sorted(set(strategy_raw) - set(STRATEGIES))
    if unknown:
        raise RolloutSpecError(f"spec.strategy: unknown strategy {', '.join(unknown)}; use one of {', '.join(STRATEGIES)}")
    if len(chosen) != 1:
        raise RolloutSpecError(f"spec.strategy: set exactly one of {', '.join(STRATEGIES)}, got {chosen or 'none'}")
    name: StrategyName = chosen[0]  # type: ignore[assignment]
    body = strategy_raw[name] or {}
    traffic = spec.get("traffic") or {}
    provider = str(traffic.get("provider", "router"))
    if provider not in PROVIDERS:
        raise RolloutSpecError(f"spec.traffic.provider: {provider!r} is not one of {', '.join(PROVIDERS)}")
    gateway = traffic.get("gatewayAPI") or {}
    http_route = gateway.get("httpRoute") or traffic.get("httpRoute")
    if provider == "gatewayAPI" and not http_route:
        raise RolloutSpecError("spec.traffic.gatewayAPI.httpRoute: the gatewayAPI provider needs the HTTPRoute's name")
    if provider == "service" and name == "shadow":
        raise RolloutSpecError("spec.traffic.provider: the service provider cannot mirror traffic; "
                               "use provider router or gatewayAPI for a shadow strategy")
    kwargs: dict[str, Any] = {}
    if name == "canary":
        kwargs["canary_steps"] = parse_canary_steps(body.get("steps") or [])
    elif name == "blueGreen":
        if body.get("autoPromotionAfter") is not None:
            kwargs["blue_green_auto_promotion_after"] = _duration(
                body["autoPromotionAfter"], "spec.strategy.blueGreen.autoPromotionAfter")
        if body.get("scaleDownDelay") is not None:
            kwargs["blue_green_scale_down_delay"] = _duration(
                body["scaleDownDelay"], "spec.strategy.blueGreen.scaleDownDelay")
        kwargs["blue_green_pre_promotion_analysis"] = body.get("prePromotionAnalysis") is not None
    elif name == "shadow":
        kwargs["shadow_mirror_percent"] = _int(body.get("mirrorPercent", 100), "spec.strategy.shadow.mirrorPercent", 1, 100)
        if body.get("duration") is not None:
            kwargs["shadow_duration"] = _duration(body["duration"], "spec.strategy.shadow.duration")
        promote = str(body.get("promote", "manual"))
        if promote not in ("automatic", "manual"):
            raise RolloutSpecError(f"spec.strategy.shadow.promote: {promote!r} is not automatic or manual")
        kwargs["shadow_promote"] = promote
    analysis = parse_analysis(spec.get("analysis"))
    needs_checks = (
        any(s.analysis for s in kwargs.get("canary_steps", ()))
        or kwargs.get("blue_green_pre_promotion_analysis", False)
    )
    if needs_checks and not analysis.checks:
        raise RolloutSpecError("spec.analysis.checks: the strategy has an analysis step but no checks to measure; "
                               "an analysis without checks would pass on no data")
    return RolloutSpec(
        pipeline=pipeline,
        model_version=pinned,
        replicas=_int(spec.get("replicas", 1), "spec.replicas", 0),
        strategy=name,
        analysis=analysis,
        provider=provider,
        http_route=http_route,
        rollback_window=_duration(spec.get("rollbackWindow") or 0, "spec.rollbackWindow"),
        scale_down_delay_seconds=(None if spec.get("scaleDownDelay") is None
                                  else _duration(spec["scaleDownDelay"], "spec.scaleDownDelay")),
        resources=spec.get("resources"),
        prediction_log=bool(spec.get("predictionLog", True)),
        feedback_token=parse_secret_key_ref((spec.get("feedback") or {}).get("tokenSecretRef"),
                                            "spec.feedback.tokenSecretRef"),
        progress_deadline=(DEFAULT_PROGRESS_DEADLINE if spec.get("progressDeadline") is None
                           else _duration(spec["progressDeadline"], "spec.progressDeadline")),
        **kwargs,
    )
