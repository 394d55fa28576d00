"""Built-in analysis checks as PromQL, and the reduction of query results to one number per check.

A check is (queries, reduce): the queries are rendered here from the metric contract in
``noria.metrics``; ``reduce`` turns the returned vectors into an ``Observed`` value, or ``None`` when
there is no data (no traffic, no labels yet), which the analysis reads as *inconclusive*: missing data
never counts as a pass.

Series are selected by ``namespace`` and ``version`` (a ModelVersion name is unique in a namespace).
The router exports the same request-duration histogram as the servers; ``label_noria_dev_component``
(the pod label ``noria.dev/component``, as the test bed's and a typical ``kubernetes_sd`` relabeling
name it) keeps the router's hop out of a version's latency where that label exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from noria import drift
from noria import metrics as m
from noria.deployment.spec import CheckSpec
from noria.prometheus import Sample

COMPONENT_LABEL = "label_noria_dev_component"
ROUTER_COMPONENT = "router"
INFER_ANSWERS = f'{m.LABEL_ENDPOINT}="{m.ENDPOINT_INFER}"'
SERVER_ERRORS = f'{m.LABEL_CODE}=~"5.."'
QUANTILES = {"latencyP50": 0.5, "latencyP95": 0.95, "latencyP99": 0.99}
NOT_ROUTER = f'{COMPONENT_LABEL}!="{ROUTER_COMPONENT}"'


@dataclass(frozen=True)
class CheckContext:
    namespace: str
    rollout: str
    pipeline: str
    version: str  # the candidate under analysis
    stable: str | None  # the version it is compared with, if any
    window: float  # default rate window, seconds


@dataclass(frozen=True)
class Observed:
    value: float | None  # None: no data
    detail: str = ""
    waiting: bool = False  # a label-needing check has fewer than minLabels labels yet: wait, do not judge


def _window(check: CheckSpec, ctx: CheckContext) -> str:
    return f"{int(math.ceil(check.window or ctx.window))}s"


def _sel(ctx: CheckContext, version: str, *matchers: str) -> str:
    parts = [f'namespace="{ctx.namespace}"', f'{m.LABEL_VERSION}="{version}"', *matchers]
    return "{" + ", ".join(parts) + "}"


def render_custom(query: str, ctx: CheckContext) -> str:
    return (query.replace("{{version}}", ctx.version).replace("{{rollout}}", ctx.rollout)
            .replace("{{namespace}}", ctx.namespace).replace("{{pipeline}}", ctx.pipeline)
            .replace("{{stable}}", ctx.stable or ""))


def queries_for(check: CheckSpec, ctx: CheckContext) -> dict[str, str]:
    """PromQL per named part of the check."""
    w = _window(check, ctx)
    if check.query:
        return {"value": render_custom(check.query, ctx)}
    v = ctx.version
    if check.builtin == "errorRate":
        return {
            "errors": f'sum(increase({m.REQUESTS_TOTAL}{_sel(ctx, v, INFER_ANSWERS, SERVER_ERRORS)}[{w}]))',
            "total": f"sum(increase({m.REQUESTS_TOTAL}{_sel(ctx, v, INFER_ANSWERS)}[{w}]))",
        }
    if check.builtin in QUANTILES:
        sel = _sel(ctx, v, NOT_ROUTER)
        q = QUANTILES[check.builtin]
        return {
            "quantile": f"histogram_quantile({q}, sum by (le) (rate({m.REQUEST_DURATION_SECONDS}_bucket{sel}[{w}])))",
            "count": f"sum(increase({m.REQUEST_DURATION_SECONDS}_count{sel}[{w}]))",
        }
    if check.builtin in ("accuracy", "f1"):
        return {"feedback": f"sum by ({m.LABEL_ACTUAL}, {m.LABEL_PREDICTED}) "
                            f"(increase({m.FEEDBACK_TOTAL}{_sel(ctx, v)}[{w}]))"}
    if check.builtin == "shadowAgreement":
        sel = f'{{namespace="{ctx.namespace}", {m.LABEL_SHADOW}="{v}"}}'
        return {"outcomes": f"sum by ({m.LABEL_OUTCOME}) (increase({m.SHADOW_COMPARISONS_TOTAL}{sel}[{w}]))"}
    if check.builtin == "predictionDrift":
        out = {"candidate": f"sum by ({m.LABEL_CLASS}) (increase({m.PREDICTIONS_TOTAL}{_sel(ctx, v)}[{w}]))"}
        if ctx.stable:
            out["stable"] = f"sum by ({m.LABEL_CLASS}) (increase({m.PREDICTIONS_TOTAL}{_sel(ctx, ctx.stable)}[{w}]))"
        return out
    if check.builtin == "drift":
        by = f"{m.LABEL_FEATURE}, {m.LABEL_BIN}"
        out = {"candidate": f"sum by ({by}) (increase({m.FEATURE_BIN_TOTAL}{_sel(ctx, v)}[{w}]))"}
        if ctx.stable:
            out["stable"] = f"sum by ({by}) (increase({m.FEATURE_BIN_TOTAL}{_sel(ctx, ctx.stable)}[{w}]))"
        return out
    raise ValueError(f"unknown check {check.name!r}")


def _scalar(samples: list[Sample]) -> float | None:
    if not samples:
        return None
    value = samples[0].value
    return None if math.isnan(value) else value


def _grouped(samples: list[Sample], *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for s in samples:
        k = tuple(s.labels.get(key, "") for key in keys)
        out[k] = out.get(k, 0.0) + s.value
    return out


def macro_f1(pairs: Mapping[tuple[str, ...], float]) -> float:
    """Unweighted mean of per-class F1 over every class seen as actual or predicted."""
    classes = {k[0] for k in pairs} | {k[1] for k in pairs}
    scores = []
    for c in sorted(classes):
        tp = pairs.get((c, c), 0.0)
        predicted = sum(n for (_, p), n in pairs.items() if p == c)
        actual = sum(n for (a, _), n in pairs.items() if a == c)
        scores.append(0.0 if predicted + actual == 0 else 2 * tp / (predicted + actual))
    return sum(scores) / len(scores)


def _drift(cand: dict[tuple[str, ...], float], stable: dict[tuple[str, ...], float], group_index: int | None) -> float:
    """Largest PSI over groups (features), or the PSI of the whole vector when ungrouped."""
    groups: dict[str, set[tuple[str, ...]]] = {}
    for key in set(cand) | set(stable):
        groups.setdefault(key[group_index] if group_index is not None else "", set()).add(key)
    worst = 0.0
    for keys in groups.values():
        order = sorted(keys)
        worst = max(worst, float(drift.psi(np.array([stable.get(k, 0.0) for k in order]),
                                           np.array([cand.get(k, 0.0) for k in order]))))
    return worst


def reduce(check: CheckSpec, ctx: CheckContext, results: Mapping[str, list[Sample]]) -> Observed:
    """One number for the check, or ``Observed(None)`` when the data is not there yet."""
    if check.query:
        return Observed(_scalar(results["value"]))
    if check.builtin == "errorRate":
        total = _scalar(results["total"]) or 0.0
        if total <= 0:
            return Observed(None, "no requests")
        return Observed((_scalar(results["errors"]) or 0.0) / total, f"{total:.0f} requests")
    if check.builtin in QUANTILES:
        count = _scalar(results["count"]) or 0.0
        quantile = _scalar(results["quantile"])
        if count <= 0 or quantile is None:
            return Observed(None, "no requests")
        return Observed(quantile, f"{count:.0f} requests")
    if check.builtin in ("accuracy", "f1"):
        pairs = _grouped(results["feedback"], m.LABEL_ACTUAL, m.LABEL_PREDICTED)
        labelled = sum(pairs.values())
        if labelled <= 0 or labelled < check.min_labels:
            return Observed(None, f"{labelled:.0f} labels, need {max(check.min_labels, 1)}")
        if check.builtin == "accuracy":
            correct = sum(n for (actual, predicted), n in pairs.items() if actual == predicted)
            return Observed(correct / labelled, f"{labelled:.0f} labels")
        return Observed(macro_f1(pairs), f"{labelled:.0f} labels")
    if check.builtin == "shadowAgreement":
        outcomes = _grouped(results["outcomes"], m.LABEL_OUTCOME)
        total = sum(outcomes.values())
        if total <= 0:
            return Observed(None, "no shadow comparisons")
        return Observed(outcomes.get((m.OUTCOME_AGREE,), 0.0) / total, f"{total:.0f} comparisons")
    if check.builtin in ("predictionDrift", "drift"):
        keys = (m.LABEL_CLASS,) if check.builtin == "predictionDrift" else (m.LABEL_FEATURE, m.LABEL_BIN)
        cand = _grouped(results["candidate"], *keys)
        if "stable" not in results:
            return Observed(None, "no stable version to compare with")
        stable = _grouped(results["stable"], *keys)
        if sum(cand.values()) <= 0 or sum(stable.values()) <= 0:
            return Observed(None, "no predictions to compare")
        return Observed(_drift(cand, stable, 0 if check.builtin == "drift" else None), "largest psi vs stable")
    raise ValueError(f"unknown check {check.name!r}")
