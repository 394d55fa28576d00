"""Built-in analysis checks as PromQL, and the reduction of query results to one number per check.

A check is (queries, reduce): the queries are rendered here from the metric contract in
``noria.metrics``; ``reduce`` turns the returned vectors into an ``Observed`` value, or ``None`` when
there is no data (no traffic), which the analysis reads as *inconclusive*: missing data never counts
as a pass.

Labels arrive after predictions. A label-needing check (accuracy, f1, or any check given
``minLabels``) with fewer labels than it needs is ``Observed(None, waiting=True)``: the analysis keeps
the step waiting for its evidence (up to the check's ``labelTimeout``) instead of calling it
inconclusive. accuracy and f1 need ``DEFAULT_MIN_LABELS`` labels unless ``minLabels`` says otherwise.
F1 is the macro F1 of ``noria.scoring``, the one definition the performance trigger uses too.

The drift checks (``drift`` on input features, ``predictionDrift`` on predicted classes) compute
``method`` (psi, kl, js, chi2, ks, wasserstein; ``noria.drift``) of the candidate's live counts
``against`` either its training profile (``reference``: what the model was trained on) or the stable
version's live counts (``stable``). Servers count values into their own version's bins, so against
stable a numeric feature's candidate counts are moved onto the stable version's bins first
(``drift.rebin_ordered``). The value is the largest statistic over features.

Series are selected by ``namespace`` and ``version`` (a ModelVersion name is unique in a namespace).
The router exports the same request-duration histogram as the servers; ``noria_dev_component`` (the
pod label ``noria.dev/component`` as the chart's PodMonitor and the test bed's discovery copy it onto
series, ``noria.scrape``) keeps the router's hop out of a version's latency where that label exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from noria import drift, scoring, scrape
from noria import metrics as m
from noria.api.rollout import DEFAULT_MIN_LABELS, LABEL_CHECKS
from noria.contracts import COMPONENT_ROUTER, LABEL_COMPONENT
from noria.deployment.spec import CheckSpec
from noria.profile import FeatureProfile, Profile
from noria.samples import Sample

# The series label the PodMonitor's podTargetLabels make of noria.dev/component: noria_dev_component.
COMPONENT_LABEL = scrape.series_label(LABEL_COMPONENT)
INFER_ANSWERS = f'{m.LABEL_ENDPOINT}="{m.ENDPOINT_INFER}"'
SERVER_ERRORS = f'{m.LABEL_CODE}=~"5.."'
QUANTILES = {"latencyP50": 0.5, "latencyP95": 0.95, "latencyP99": 0.99}
NOT_ROUTER = f'{COMPONENT_LABEL}!="{COMPONENT_ROUTER}"'
DRIFT_CHECKS = ("drift", "predictionDrift")
# DEFAULT_MIN_LABELS (noria.api.rollout, 100): labels accuracy/f1 wait for when minLabels is not set.
# An accuracy near 0.8 measured on 100 labels has a standard error of 0.04 (sqrt(0.8 * 0.2 / 100)), so
# a 0.7 model fails a "min 0.8" check and a 0.9 model passes it most of the time; on 10 labels (SE 0.13)
# the verdict would be a coin toss.
AGAINST_REFERENCE, AGAINST_STABLE = "reference", "stable"


@dataclass(frozen=True)
class CheckContext:
    namespace: str
    rollout: str
    pipeline: str
    version: str  # the candidate under analysis
    stable: str | None  # the version it is compared with, if any
    window: float  # default rate window, seconds
    reference: Profile | None = None  # the candidate's training profile (its ModelVersion's profileUri)
    stable_reference: Profile | None = None  # the stable version's training profile: its bins


@dataclass(frozen=True)
class Observed:
    value: float | None  # None: no data
    detail: str = ""
    waiting: bool = False  # a label-needing check has fewer than minLabels labels yet: wait, do not judge


def min_labels(check: CheckSpec) -> int:
    """Labels the check needs before it judges: its minLabels, else the default for accuracy/f1,
    else 0 (the check does not read labels)."""
    if check.min_labels:
        return check.min_labels
    return DEFAULT_MIN_LABELS if check.builtin in LABEL_CHECKS else 0


def needs_profiles(check: CheckSpec) -> bool:
    """Whether measuring the check needs the versions' training profiles (to be loaded by the caller)."""
    return check.builtin in DRIFT_CHECKS


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
    if check.query or check.builtin not in LABEL_CHECKS and min_labels(check):
        out = {"value": render_custom(check.query, ctx)} if check.query else _builtin_queries(check, ctx, w)
        if min_labels(check):  # a check given minLabels waits for that many labels of the candidate
            sel = _sel(ctx, ctx.version)
            out["labels"] = (f"sum(increase({m.FEEDBACK_TOTAL}{sel}[{w}])) "
                             f"or sum(increase({m.FEEDBACK_ABS_ERROR_COUNT}{sel}[{w}]))")
        return out
    return _builtin_queries(check, ctx, w)


def _builtin_queries(check: CheckSpec, ctx: CheckContext, w: str) -> dict[str, str]:
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
    if check.builtin in DRIFT_CHECKS:
        by, metric = ((m.LABEL_CLASS, m.PREDICTIONS_TOTAL) if check.builtin == "predictionDrift"
                      else (f"{m.LABEL_FEATURE}, {m.LABEL_BIN}", m.FEATURE_BIN_TOTAL))
        out = {"candidate": f"sum by ({by}) (increase({metric}{_sel(ctx, v)}[{w}]))"}
        if check.against == AGAINST_STABLE and ctx.stable:
            out["stable"] = f"sum by ({by}) (increase({metric}{_sel(ctx, ctx.stable)}[{w}]))"
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


def _waiting_for_labels(labelled: float, needed: int) -> Observed | None:
    if labelled >= needed and labelled > 0:
        return None
    return Observed(None, f"{labelled:.0f} of {max(needed, 1)} labels", waiting=True)


# --- drift --------------------------------------------------------------------------------------
def _statistic(method: str, reference: np.ndarray, current: np.ndarray, bins: FeatureProfile | None) -> float | None:
    """``method`` of current vs reference, both in ``bins.labels`` order (any common order when
    ``bins`` is None). ks and wasserstein need a numeric feature's value order and edges: None
    without them."""
    if method == "psi":
        return float(drift.psi(reference, current))
    if method == "kl":
        return float(drift.kl_divergence(reference, current))
    if method == "js":
        return float(drift.js_distance(reference, current))
    if method == "chi2":
        return float(drift.chi_square(reference, current)[0])
    if method in ("ks", "wasserstein"):
        if bins is None or bins.kind != "numeric" or bins.edges is None:
            return None
        ref, cur = drift.ordered_numeric(bins, reference), drift.ordered_numeric(bins, current)
        return float(drift.ks_binned(ref, cur) if method == "ks" else drift.wasserstein_binned(ref, cur, bins.edges))
    raise ValueError(f"unknown drift method {method!r}; one of {', '.join(drift.METHODS)}")


def _on_bins(counts: Mapping[str, float], own: FeatureProfile | None, target: FeatureProfile) -> np.ndarray:
    """Live counts keyed by the bin labels of ``own`` (the bins the counting server used), as a
    vector over ``target``'s bins: numeric bins with other edges are re-binned, categories are
    matched by name (a category outside ``target``'s is ``other``)."""
    if target.kind == "categorical":
        moved: dict[str, float] = {}
        for label, n in counts.items():
            key = label if label in target.labels else m.BIN_OTHER
            moved[key] = moved.get(key, 0.0) + n
        return target.vector(moved)
    if own is None or own.kind != "numeric" or own.edges is None or target.edges is None or (
            own.edges.shape == target.edges.shape and np.allclose(own.edges, target.edges)):
        return target.vector(dict(counts))
    ordered = drift.ordered_numeric(own, own.vector(dict(counts)))
    rebinned = drift.rebin_ordered(ordered, own.edges, target.edges)
    k = target.edges.size - 1  # back to label order: 0..k-1, below, above, missing
    return np.concatenate([rebinned[1:k + 1], rebinned[:1], rebinned[k + 1:], [counts.get(m.BIN_MISSING, 0.0)]])


def _per_group(samples: list[Sample], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{feature: {bin: n}} for features, {"": {class: n}} for predictions."""
    out: dict[str, dict[str, float]] = {}
    for (*group, label), n in _grouped(samples, *keys).items():
        bins = out.setdefault(group[0] if group else "", {})
        bins[label] = bins.get(label, 0.0) + n
    return out


def _profiles_of(check: CheckSpec, profile: Profile | None) -> dict[str, FeatureProfile]:
    if profile is None:
        return {}
    if check.builtin == "predictionDrift":
        return {"": profile.prediction} if profile.prediction is not None else {}
    return dict(profile.features)


def _drift(check: CheckSpec, ctx: CheckContext, results: Mapping[str, list[Sample]]) -> Observed:
    """Largest ``method`` statistic over features (or of the predicted classes) against the training
    profile or the stable version's live counts."""
    keys = (m.LABEL_CLASS,) if check.builtin == "predictionDrift" else (m.LABEL_FEATURE, m.LABEL_BIN)
    cand = _per_group(results["candidate"], keys)
    if sum(sum(b.values()) for b in cand.values()) <= 0:
        return Observed(None, "no live traffic on the candidate")
    own = _profiles_of(check, ctx.reference)
    if check.against == AGAINST_STABLE:
        if "stable" not in results:
            return Observed(None, "no stable version to compare with")
        base = _per_group(results["stable"], keys)
        if sum(sum(b.values()) for b in base.values()) <= 0:
            return Observed(None, "no live traffic on the stable version")
        bins_of = _profiles_of(check, ctx.stable_reference)
        where = f"vs stable {ctx.stable}"
    else:
        if ctx.reference is None:
            return Observed(None, f"no training profile for {ctx.version} (its ModelVersion's profileUri)")
        if not own:
            return Observed(None, f"the training profile of {ctx.version} has no prediction bins")
        base, bins_of, where = {}, own, "vs training profile"
    worst: tuple[float, str] | None = None
    for group in sorted(set(cand) | set(base) if check.against == AGAINST_STABLE else set(own)):
        live = cand.get(group, {})
        if sum(live.values()) <= 0:
            continue
        bins = bins_of.get(group)
        if check.against == AGAINST_STABLE:
            if bins is None:  # no profile to put both on common bins: compare bin by bin label
                labels = sorted(set(live) | set(base.get(group, {})))
                ref = np.array([base.get(group, {}).get(label, 0.0) for label in labels])
                cur = np.array([live.get(label, 0.0) for label in labels])
            else:
                ref, cur = bins.vector(base.get(group, {})), _on_bins(live, own.get(group), bins)
        else:
            assert bins is not None
            ref, cur = bins.reference, _on_bins(live, bins, bins)
        if ref.sum() <= 0 or cur.sum() <= 0:  # e.g. a regressor's predictions, counted without a class
            continue
        value = _statistic(check.method, ref, cur, bins)
        if value is not None and (worst is None or value > worst[0]):
            worst = (value, group)
    if worst is None:
        if check.method in ("ks", "wasserstein"):
            return Observed(None, f"{check.method} needs numeric bins with edges from the training profiles")
        return Observed(None, "no feature with traffic on both sides")
    on = f" on {worst[1]}" if worst[1] else ""
    return Observed(worst[0], f"largest {check.method} {worst[0]:.3f}{on} {where}")


def reduce(check: CheckSpec, ctx: CheckContext, results: Mapping[str, list[Sample]]) -> Observed:
    """One number for the check, ``Observed(None)`` when the data is not there, or
    ``Observed(None, waiting=True)`` when the labels it needs have not arrived yet."""
    if "labels" in results:
        waiting = _waiting_for_labels(_scalar(results["labels"]) or 0.0, min_labels(check))
        if waiting is not None:
            return waiting
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
    if check.builtin in LABEL_CHECKS:
        confusion = {(a, p): n for (a, p), n in _grouped(results["feedback"], m.LABEL_ACTUAL, m.LABEL_PREDICTED).items()}
        labelled = scoring.labels(confusion)
        waiting = _waiting_for_labels(labelled, min_labels(check))
        if waiting is not None:
            return waiting
        return Observed(scoring.score(check.builtin, confusion), f"{labelled:.0f} labels")
    if check.builtin == "shadowAgreement":
        outcomes = _grouped(results["outcomes"], m.LABEL_OUTCOME)
        total = sum(outcomes.values())
        if total <= 0:
            return Observed(None, "no shadow comparisons")
        return Observed(outcomes.get((m.OUTCOME_AGREE,), 0.0) / total, f"{total:.0f} comparisons")
    if check.builtin in DRIFT_CHECKS:
        return _drift(check, ctx, results)
    raise ValueError(f"unknown check {check.name!r}")
