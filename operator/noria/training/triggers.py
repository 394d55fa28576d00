"""When to retrain: one pure function per trigger kind, of (spec, prior state, observation, now).

Each evaluator returns a ``TriggerResult``: whether it fired, the new state to keep in
``status.triggers.<kind>`` (what was observed and since when), a one-line human account of the
observation, and whether the observation could be made at all (``health``: Prometheus down or a
data source that cannot be read is *Unknown*, never a reason to fire).

What "fired" means is deliberately narrow: an evaluator never looks at runs or cooldowns. Firing
only adds the kind to the pipeline's pending set; ``pipeline.decide`` coalesces pending triggers
into at most one run (see there). That keeps every evaluator testable from a table.

Timing rules, by kind:
- initial: the pipeline has no ModelVersion and has never run; and, while it still has none, again
  after a failed run, with a doubling back-off (``evaluate_initial``).
- manual: a new value of the annotation ``noria.dev/retrain``. A burst of writes is one request:
  the value must stay unchanged for ``settle`` seconds before it fires (a GitOps tool or a script
  that writes fifty times asks for one run).
- schedule: cron in UTC; ``next`` is kept in state and shown in status; missed ticks (operator
  down) fire once, not once per tick.
- newData: rows (or the fingerprint, when rows cannot be counted) grew by ``minNewRows`` against
  the baseline taken when the trigger last fired; the first observation only sets the baseline.
- drift / performance: the condition must hold for the ``for`` duration: ``since`` records when it
  was first seen; firing resets it, so a persisting condition fires again only after a new full
  ``for`` (and the cooldown). Their state belongs to one champion (``state.champion``): when
  another version becomes the champion, evidence, baseline and ``for`` start over, because they
  were about a model that no longer serves.
- drift needs evidence, not just a large statistic: at least ``minSamples`` live values per
  feature, a G test significant after the Holm correction over features, and the statistic above
  ``threshold`` (``drift_evidence``; docs/triggers.md has the measured false-alarm rates).
- performance fires below an absolute ``below``, or on a significant fall of at least ``dropBy``
  from the version's own live baseline.

Callers without Kubernetes (the backtest) use these functions and ``pipeline.decide`` as the
operator does: build ``MetricObservation`` counts from their own replay (tagged with the version
that served them) and pass them in.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Final

from noria import scoring
from noria.api.common import parse_duration, parse_timestamp
from noria.api.training_pipeline import (
    DEFAULT_MIN_DRIFT_SAMPLES,
    DEFAULT_MIN_LABELS,
    DEFAULT_TRIGGER_SIGNIFICANCE,
)
from noria.conditions import now_iso
from noria.contracts import ANNOTATION_RETRAIN
from noria.profile import Profile

INITIAL: Final = "initial"
MANUAL: Final = "manual"
SCHEDULE: Final = "schedule"
NEW_DATA: Final = "newData"
DRIFT: Final = "drift"
PERFORMANCE: Final = "performance"
# Order of precedence when several fire at once: the run is labelled with the first.
KINDS: Final = (INITIAL, MANUAL, DRIFT, PERFORMANCE, NEW_DATA, SCHEDULE)

RETRAIN_ANNOTATION: Final = ANNOTATION_RETRAIN  # the manual trigger (noria.contracts), under the name callers use
# A pipeline with no ModelVersion retries after a failed run: 1 min, 2, 4, ... at most hourly.
DEFAULT_INITIAL_RETRY_SECONDS: Final = 60.0
MAX_INITIAL_RETRY_SECONDS: Final = 3600.0
DEFAULT_SETTLE_SECONDS: Final = 2.0
# The trigger defaults (window, minSamples, significance, minLabels) are the API model's
# (noria.api.training_pipeline): the operator reads the spec through it (training/spec.py), and the
# fallbacks below only serve callers that pass a raw spec (the backtest, tests).
# Features listed in status.triggers.drift.features (most drifted first): enough to act on, and a
# status that stays small with a thousand features.
EVIDENCE_SHOWN: Final = 10
# Drift method names of the CRD -> keys of noria.drift.binned_statistics.
DRIFT_STATISTIC: Final = {"psi": "psi", "kl": "kl", "js": "js", "chi2": "chisquare", "ks": "ks",
                          "wasserstein": "wasserstein"}

HEALTHY: Final = "True"
UNHEALTHY: Final = "False"
UNKNOWN: Final = "Unknown"


@dataclass(frozen=True)
class TriggerResult:
    kind: str
    fired: bool
    state: dict[str, Any]  # new status.triggers.<kind>
    observed: str  # human account, e.g. "psi 0.31 > 0.2 on tenure for 10m"
    health: str = HEALTHY  # Unknown: the observation could not be made
    recheck_after: float | None = None  # seconds until this trigger could change on its own


@dataclass(frozen=True)
class DataObservation:
    """The data source as the operator saw it: rows (None when not countable) and a fingerprint of
    its files (names, sizes, mtimes), or an error."""

    rows: int | None = None
    fingerprint: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class MetricObservation:
    """Prometheus samples for drift (``{(feature, bin): count}``) or performance
    (``{(actual, predicted): count}``), or the error that prevented the query.

    ``version``: the ModelVersion whose series were read (the champion when the observation was
    made). ``pipeline.decide`` uses counts only for the version they are about: when a pass makes
    another version the champion, the old version's counts are not judged under the new name.
    None means "the champion of the ModelVersions in the same observation"."""

    counts: Mapping[tuple[str, str], float] = field(default_factory=dict)
    error: str | None = None
    version: str | None = None


def _ts(text: str | None) -> dt.datetime | None:
    return parse_timestamp(text) if text else None


def _seconds(text: str | None, default: float = 0.0) -> float:
    return parse_duration(text).total_seconds() if text else default


def human_duration(seconds: float) -> str:
    """3725 -> ``1h2m5s``; 0.4 -> ``0s``."""
    s = int(round(seconds))
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out + (f"{s}s" if s or not out else "")


# --- initial ------------------------------------------------------------------------------------
def evaluate_initial(has_model_version: bool, run_counter: int, state: Mapping[str, Any] | None,
                     now: dt.datetime, last_failure: dt.datetime | None = None,
                     retry_seconds: float = DEFAULT_INITIAL_RETRY_SECONDS) -> TriggerResult:
    """Fires for a pipeline that has no ModelVersion: once at first sight, and again after a run
    that failed, ``retry_seconds`` after its end, doubling with each attempt up to
    ``MAX_INITIAL_RETRY_SECONDS``. Without it, a pipeline whose first run died (a node lost, data
    not landed yet) would wait for a person. ``last_failure``: when the latest run ended, if it
    failed and no run is going. State: ``firedAt``, ``attempts``."""
    prior = dict(state or {})
    if has_model_version:
        return TriggerResult(INITIAL, False, prior, "the pipeline has a ModelVersion")
    if run_counter == 0 and not prior.get("firedAt"):
        return TriggerResult(INITIAL, True, {"firedAt": now_iso(now), "attempts": 1}, "no ModelVersion yet")
    if last_failure is None:  # a first attempt is pending or running
        return TriggerResult(INITIAL, False, prior, "no ModelVersion yet; a run is under way")
    attempts = int(prior.get("attempts") or 1)
    due = last_failure + dt.timedelta(seconds=min(retry_seconds * 2 ** (attempts - 1), MAX_INITIAL_RETRY_SECONDS))
    if now < due:
        return TriggerResult(INITIAL, False, prior, f"no ModelVersion yet: attempt {attempts + 1} at {now_iso(due)}",
                             recheck_after=(due - now).total_seconds())
    return TriggerResult(INITIAL, True, {"firedAt": now_iso(now), "attempts": attempts + 1},
                         f"no ModelVersion yet and run attempt {attempts} failed: attempt {attempts + 1}")


# --- manual -------------------------------------------------------------------------------------
def evaluate_manual(annotation: str | None, state: Mapping[str, Any] | None, now: dt.datetime,
                    settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> TriggerResult:
    """State: ``seen`` (latest value), ``seenAt`` (when it last changed), ``changes`` (writes
    counted since the last firing), ``handled`` (the value a run was requested for)."""
    prior = dict(state or {})
    if annotation is None:
        kept = {k: v for k, v in prior.items() if k in ("handled", "handledAt")}
        return TriggerResult(MANUAL, False, kept, f"no {RETRAIN_ANNOTATION} annotation")
    if annotation == prior.get("handled"):
        return TriggerResult(MANUAL, False, prior, f"{RETRAIN_ANNOTATION}={annotation!r} already handled")
    if annotation != prior.get("seen"):
        prior = {**prior, "seen": annotation, "seenAt": now_iso(now), "changes": int(prior.get("changes", 0)) + 1}
    waited = (now - (_ts(prior.get("seenAt")) or now)).total_seconds()
    if waited < settle_seconds:
        return TriggerResult(MANUAL, False, prior, f"{RETRAIN_ANNOTATION}={annotation!r} settling",
                             recheck_after=settle_seconds - waited)
    changes = int(prior.get("changes", 1))
    new = {"handled": annotation, "handledAt": now_iso(now), "changes": 0}
    return TriggerResult(MANUAL, True, new, f"{RETRAIN_ANNOTATION}={annotation!r} ({changes} write(s) coalesced)")


# --- schedule -----------------------------------------------------------------------------------
CRON_HELP: Final = ("five fields in range: minute 0-59, hour 0-23, day of month 1-31, month 1-12, "
                    "day of week 0-6, matching a date that exists (e.g. \"0 2 * * *\")")


def next_cron(schedule: str, after: dt.datetime) -> dt.datetime:
    from croniter import croniter

    return croniter(schedule, after).get_next(dt.datetime)


def schedule_problem(schedule: str | None) -> str | None:
    """Why the operator cannot follow ``spec.triggers.schedule`` (a message naming the field and
    what to write), or None. The API server refuses fields out of range; a date that never comes
    (``0 2 31 2 *``, February 31st) only shows when the next tick is looked for."""
    if not schedule:
        return None
    from croniter import CroniterError

    try:
        next_cron(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except CroniterError as exc:
        return f"spec.triggers.schedule {schedule!r} is not a schedule Noria can follow ({exc}): write {CRON_HELP}"
    except (ValueError, KeyError, TypeError) as exc:
        return f"spec.triggers.schedule {schedule!r} cannot be read ({exc}): write {CRON_HELP}"
    return None


def evaluate_schedule(schedule: str | None, state: Mapping[str, Any] | None, now: dt.datetime) -> TriggerResult:
    """State: ``schedule`` (the cron it was computed for) and ``next`` (UTC)."""
    if not schedule:
        return TriggerResult(SCHEDULE, False, {}, "no schedule")
    prior = dict(state or {})
    nxt = _ts(prior.get("next")) if prior.get("schedule") == schedule else None
    if nxt is None:  # first sight, or the schedule was edited: count from now
        nxt = next_cron(schedule, now)
        return TriggerResult(SCHEDULE, False, {"schedule": schedule, "next": now_iso(nxt)},
                             f"next run at {now_iso(nxt)}", recheck_after=(nxt - now).total_seconds())
    if now < nxt:
        return TriggerResult(SCHEDULE, False, prior, f"next run at {now_iso(nxt)}",
                             recheck_after=(nxt - now).total_seconds())
    following = next_cron(schedule, now)  # ticks missed while the operator was down fire once
    return TriggerResult(SCHEDULE, True, {"schedule": schedule, "next": now_iso(following), "firedAt": now_iso(now)},
                         f"schedule {schedule!r} was due at {now_iso(nxt)}",
                         recheck_after=(following - now).total_seconds())


# --- newData ------------------------------------------------------------------------------------
def evaluate_new_data(min_new_rows: int | None, observation: DataObservation | None,
                      state: Mapping[str, Any] | None, now: dt.datetime) -> TriggerResult:
    """State: the ``baseline`` rows/fingerprint (taken at first sight and at each firing) and the
    latest ``rows``/``fingerprint`` with ``observedAt``."""
    if min_new_rows is None:
        return TriggerResult(NEW_DATA, False, {}, "no newData trigger")
    prior = dict(state or {})
    if observation is None or observation.error:
        why = observation.error if observation else "not observed"
        return TriggerResult(NEW_DATA, False, {**prior, "error": why}, f"data source unreadable: {why}",
                             health=UNKNOWN)
    current = {"rows": observation.rows, "fingerprint": observation.fingerprint, "observedAt": now_iso(now)}
    baseline = prior.get("baseline")
    if baseline is None:
        return TriggerResult(NEW_DATA, False, {**current, "baseline": {**current}},
                             f"baseline taken: {observation.rows} rows")
    if observation.rows is not None and baseline.get("rows") is not None:
        grown = observation.rows - int(baseline["rows"])
        fired = grown >= min_new_rows
        account = f"{grown} new rows (at least {min_new_rows} needed), {observation.rows} in total"
    else:  # rows cannot be counted (e.g. an unknown format): any change of the files counts
        fired = observation.fingerprint != baseline.get("fingerprint")
        account = "the data files changed" if fired else "the data files are unchanged"
    new = {**current, "baseline": {**current} if fired else baseline}
    return TriggerResult(NEW_DATA, fired, new, account)


# --- "for" bookkeeping shared by drift and performance ------------------------------------------
def _held(kind: str, breaching: bool, for_text: str | None, prior: Mapping[str, Any], now: dt.datetime,
          observed: dict[str, Any], account: str) -> TriggerResult:
    if not breaching:
        return TriggerResult(kind, False, {**observed, "since": None}, account)
    since = _ts(prior.get("since")) or now
    hold = _seconds(for_text)
    held = (now - since).total_seconds()
    if held >= hold:
        return TriggerResult(kind, True, {**observed, "since": None, "firedAt": now_iso(now)},
                             f"{account} for {human_duration(held)}")
    return TriggerResult(kind, False, {**observed, "since": now_iso(since)},
                         f"{account} for {human_duration(held)} of {for_text}", recheck_after=hold - held)


def _given(value: Any, default: Any) -> Any:
    """The spec's value, or the default when unset (0 is a value, not unset)."""
    return default if value is None or value == "" else value


def _unknown(kind: str, prior: Mapping[str, Any], now: dt.datetime, why: str) -> TriggerResult:
    # Keep "since": a short Prometheus outage should not restart a long "for"; but never fire on it.
    return TriggerResult(kind, False, {**prior, "state": "Unknown", "observedAt": now_iso(now), "message": why[:300]},
                         f"cannot evaluate: {why}", health=UNKNOWN)


# --- drift --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureEvidence:
    """What one feature's live counts say against the reference profile.

    ``samples``: live values counted in the window; ``value``: the trigger method's statistic (the
    effect size compared with ``threshold``); ``p_value``: the G test's p-value adjusted by Holm over
    every tested feature (None when the feature had fewer than ``minSamples`` values, so it was not
    tested); ``drifted``: tested, significant (adjusted p < significance) and above the threshold."""

    feature: str
    samples: float
    value: float
    p_value: float | None
    drifted: bool

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature": self.feature, "samples": int(round(self.samples)),
                               "value": f"{self.value:.4f}", "drifted": self.drifted}
        out["pValue"] = f"{self.p_value:.3g}" if self.p_value is not None else None
        return out


@dataclass(frozen=True)
class DriftEvidence:
    """Per-feature evidence of one drift evaluation, most drifted first (see ``drift_evidence``)."""

    features: tuple[FeatureEvidence, ...]
    min_samples: int
    significance: float

    @property
    def tested(self) -> list[FeatureEvidence]:
        return [f for f in self.features if f.p_value is not None]

    @property
    def drifted(self) -> list[FeatureEvidence]:
        return [f for f in self.features if f.drifted]

    @property
    def samples(self) -> float:
        """The largest number of live values any feature had (0 when none)."""
        return max((f.samples for f in self.features), default=0.0)

    @property
    def worst(self) -> FeatureEvidence | None:
        """The drifted feature with the largest statistic, else the tested one, else any."""
        for pool in (self.drifted, self.tested, list(self.features)):
            if pool:
                return max(pool, key=lambda f: f.value)
        return None


def _drift_order(f: FeatureEvidence) -> tuple:
    return (not f.drifted, f.p_value is None, f.p_value if f.p_value is not None else 1.0, -f.value)


def _statistic(fp: Any, live: Any, key: str) -> float:
    from noria import drift as d

    if key == "psi":
        return float(d.psi(fp.reference, live))
    if key == "kl":
        return float(d.kl_divergence(fp.reference, live))
    if key == "js":
        return float(d.js_distance(fp.reference, live))
    return float(d.binned_statistics(fp, live).get(key, 0.0))  # chisquare, ks, wasserstein


def feature_statistics(profile: Profile, counts: Mapping[tuple[str, str], float], method: str = "psi",
                       features: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    """``(feature, live values, method statistic, unadjusted G-test p-value)`` of every profiled
    feature with live counts (only ``features`` when given): the part of ``drift_evidence`` that
    does not depend on the thresholds."""
    from noria.drift import g_test

    key = DRIFT_STATISTIC[method]
    by_feature: dict[str, dict[str, float]] = {}
    for (feature, bin_label), value in counts.items():
        bins = by_feature.setdefault(feature, {})
        bins[bin_label] = bins.get(bin_label, 0.0) + value
    rows: list[tuple[str, float, float, float]] = []
    for name, fp in profile.features.items():
        if features and name not in features:
            continue
        live = fp.vector(by_feature.get(name, {}))
        total = float(live.sum())
        if total <= 0:
            continue
        _, p_raw = g_test(fp.reference, live, reference_total=profile.rows or None)
        rows.append((name, total, _statistic(fp, live, key), float(p_raw)))
    return rows


def judge_drift(rows: list[tuple[str, float, float, float]], threshold: float, significance: float,
                min_samples: int) -> DriftEvidence:
    """The verdict of ``drift_evidence`` from ``feature_statistics`` rows."""
    from noria.drift import holm

    tested = [r for r in rows if r[1] >= min_samples]
    adjusted = dict(zip((r[0] for r in tested), holm([r[3] for r in tested]), strict=True))
    evidence = []
    for name, total, value, _ in rows:
        p_adj = float(adjusted[name]) if name in adjusted else None
        drifted = p_adj is not None and p_adj < significance and value > threshold
        evidence.append(FeatureEvidence(name, total, value, p_adj, drifted))
    return DriftEvidence(tuple(sorted(evidence, key=_drift_order)), min_samples, significance)


def drift_evidence(profile: Profile, counts: Mapping[tuple[str, str], float], method: str = "psi",
                   threshold: float = 0.2, significance: float = float(DEFAULT_TRIGGER_SIGNIFICANCE),
                   min_samples: int = DEFAULT_MIN_DRIFT_SAMPLES, features: list[str] | None = None) -> DriftEvidence:
    """Which features drifted: live bin counts ``{(feature, bin label): count}`` (summed over pods,
    e.g. ``increase(noria_feature_bin_total[window])``) against the reference ``profile``.

    A feature drifted when all three hold (docs/triggers.md explains the choice and the measured
    false-alarm rates):
    1. enough evidence: at least ``min_samples`` live values in the window;
    2. the change is real: the G test of the live counts against the reference (two-sample, using
       ``profile.rows`` as the reference's size) gives a p-value below ``significance`` after the
       Holm correction over every tested feature, so the chance that *any* feature of a stationary
       stream is flagged in one evaluation is at most ``significance``;
    3. the change matters: the ``method`` statistic (psi by default) is above ``threshold``, so a
       huge sample does not fire on a shift too small to matter.
    Features without live counts are left out; ``features`` limits the check to those names."""
    rows = feature_statistics(profile, counts, method, features)
    return judge_drift(rows, threshold, significance, min_samples)


def drift_scores(profile: Profile, counts: Mapping[tuple[str, str], float], method: str,
                 features: list[str] | None = None) -> tuple[dict[str, float], float]:
    """Per-feature drift statistic of live counts against the reference profile, and the number
    of live values seen (the largest per-feature total). Features without live counts are left out.
    The statistic alone, without sample size or significance: ``drift_evidence`` decides."""
    evidence = drift_evidence(profile, counts, method, min_samples=0, features=features)
    return {f.feature: f.value for f in evidence.features}, evidence.samples


def _fresh_for(champion: str, prior: Mapping[str, Any]) -> dict[str, Any]:
    """The prior state if it was kept for this champion, else nothing: evidence (and a running
    ``for``) gathered about another version says nothing about the one serving now."""
    return dict(prior) if prior.get("champion") == champion else {}


def evaluate_drift(drift: Mapping[str, Any] | None, champion: str | None, profile: Profile | None,
                   observation: MetricObservation | None, state: Mapping[str, Any] | None, now: dt.datetime,
                   min_samples: int | None = None) -> TriggerResult:
    """``drift`` is ``spec.triggers.drift`` (camelCase dict: method, threshold, significance,
    minSamples, for, window, features); ``profile`` is the training profile of ``champion``, and
    ``observation`` holds the bin counts of ``champion``'s own series (each server counts into its
    own version's bins, so other versions' counts cannot be compared with this profile).

    State (``status.triggers.drift``) belongs to one champion: when the champion changes, the state
    and a running ``for`` start over, so a new version is judged on its own traffic only, and the
    ``minSamples`` rule keeps its first, small windows from firing. ``features`` in the state shows
    the per-feature evidence (at most ``EVIDENCE_SHOWN`` features, most drifted first).

    ``min_samples`` overrides ``drift.minSamples`` (tests)."""
    if not drift:
        return TriggerResult(DRIFT, False, {}, "no drift trigger")
    if champion is None:
        return TriggerResult(DRIFT, False, {"state": "NoReference", "since": None}, "no champion to compare with")
    prior = _fresh_for(champion, state or {})
    if observation is None:  # not asked this pass (e.g. the champion was registered in it)
        kept = prior or {"champion": champion, "state": "NotObserved", "since": None}
        return TriggerResult(DRIFT, False, kept, f"{champion} not observed yet", recheck_after=1.0)
    if observation.error:
        return _unknown(DRIFT, {**prior, "champion": champion}, now, observation.error)
    if profile is None:
        return TriggerResult(DRIFT, False, {"state": "NoReference", "champion": champion, "since": None},
                             f"the drift profile of {champion} is unavailable", health=UNKNOWN)
    method = drift.get("method", "psi")
    threshold = float(drift["threshold"])
    significance = float(_given(drift.get("significance"), DEFAULT_TRIGGER_SIGNIFICANCE))
    needed = int(min_samples if min_samples is not None else _given(drift.get("minSamples"), DEFAULT_MIN_DRIFT_SAMPLES))
    evidence = drift_evidence(profile, observation.counts, method, threshold, significance, needed,
                              drift.get("features"))
    base = {"champion": champion, "method": method, "threshold": str(drift["threshold"]),
            "significance": str(significance), "minSamples": needed, "samples": int(evidence.samples),
            "tested": len(evidence.tested), "drifted": len(evidence.drifted),
            "features": [f.as_status() for f in evidence.features[:EVIDENCE_SHOWN]] or None,
            "observedAt": now_iso(now)}
    if not evidence.tested:
        return TriggerResult(DRIFT, False, {**base, "state": "InsufficientData", "since": None},
                             f"{int(evidence.samples)} live values, {needed} needed per feature")
    worst = evidence.worst
    assert worst is not None
    observed = {**base, "value": f"{worst.value:.4f}", "feature": worst.feature,
                "state": "Above" if worst.drifted else "Below"}
    tested = len(evidence.tested)
    if worst.drifted:
        account = (f"{method} {worst.value:.3f} > {drift['threshold']} on {worst.feature} "
                   f"(p={worst.p_value:.2g} after Holm over {tested} feature(s), {int(worst.samples)} values)")
        if len(evidence.drifted) > 1:
            account += f" and {len(evidence.drifted) - 1} more feature(s)"
    else:
        why = ("not significant" if worst.p_value is not None and worst.p_value >= significance and
               worst.value > threshold else f"<= {drift['threshold']}")
        account = (f"largest {method} {worst.value:.3f} on {worst.feature} {why} "
                   f"(p={worst.p_value:.2g}, {tested} feature(s) tested)")
    return _held(DRIFT, worst.drifted, drift.get("for"), prior, now, observed, account)


# --- performance --------------------------------------------------------------------------------
def live_metric(metric: str, confusion: Mapping[tuple[str, str], float]) -> tuple[float | None, float]:
    """Metric from feedback counts ``{(actual, predicted): n}`` and the number of labels.

    accuracy, precision, recall and f1 are ``noria.scoring``'s, the same numbers the Rollout's
    analysis checks compute: precision, recall and F1 are macro averages over the classes seen, for
    two classes as for more. balanced_accuracy is the mean recall over the actual classes."""
    total = scoring.labels(confusion)
    if total <= 0:
        return None, 0.0
    if metric == "balanced_accuracy":
        actual = sorted({a for a, _ in confusion})
        return sum(scoring.per_class(confusion, c)[1] for c in actual) / len(actual), total
    if metric not in scoring.SCORES:
        raise ValueError(f"performance trigger: metric {metric!r} cannot be computed from feedback counts")
    return scoring.score(metric, confusion), total


def effective_labels(metric: str, confusion: Mapping[tuple[str, str], float]) -> float:
    """How many labels the metric is a proportion over, for its standard error: all labels for
    accuracy; all labels over the number of classes for the macro averages (each class's score is a
    proportion over about that many). An approximation (docs/triggers.md), good enough to tell a
    drop from label noise."""
    total = scoring.labels(confusion)
    if metric == "accuracy":
        return total
    return total / max(1, len(scoring.classes_seen(confusion)))


def significant_drop(baseline: float, baseline_n: float, value: float, n: float, significance: float
                     ) -> tuple[bool, float]:
    """One-sided two-proportion z test that the live metric is below the baseline: (significant, z).

    The standard error is the pooled one (both proportions estimated together under "no drop"),
    not each side's own: a baseline that came out high by chance has a small own variance, and
    using it would make exactly those lucky baselines look like a drop later."""
    if baseline_n <= 0 or n <= 0:
        return False, 0.0
    pooled = (baseline * baseline_n + value * n) / (baseline_n + n)
    se = math.sqrt(max(pooled * (1.0 - pooled), 0.0) * (1.0 / baseline_n + 1.0 / n))
    drop = baseline - value
    z = (math.inf if drop > 0 else 0.0) if se == 0.0 else drop / se
    alpha = min(max(significance, 1e-12), 1.0 - 1e-12)  # the spec allows 0 and 1: never / always
    return z >= NormalDist().inv_cdf(1.0 - alpha), z


def evaluate_performance(perf: Mapping[str, Any] | None, champion: str | None,
                         observation: MetricObservation | None, state: Mapping[str, Any] | None,
                         now: dt.datetime) -> TriggerResult:
    """``perf`` is ``spec.triggers.performance`` (camelCase dict: metric, below, dropBy,
    significance, for, minLabels, window); ``observation`` holds the feedback counts of
    ``champion``'s own series.

    Fires (after ``for``) when, over at least ``minLabels`` labels, the live metric is below
    ``below`` (absolute), or has fallen by at least ``dropBy`` below the version's baseline *and*
    the fall is significant at ``significance`` (relative). Either is enough when both are set.

    The baseline (``state.baseline``: value, labels, effective labels, when) is the live metric in
    the first window with ``minLabels`` labels after ``champion`` became the champion; the state
    belongs to one champion, so a new version measures its own baseline and starts a new ``for``.
    Why the live level and not the holdout score of the ModelVersion: the live metric is computed
    from feedback labels (a subset of traffic, with its own class balance and delay), so the holdout
    score is a different measurement and the gap between the two is not a drop."""
    if not perf:
        return TriggerResult(PERFORMANCE, False, {}, "no performance trigger")
    if champion is None:
        return TriggerResult(PERFORMANCE, False, {"state": "NoReference", "since": None}, "no champion to measure")
    prior = _fresh_for(champion, state or {})
    if observation is None:
        kept = prior or {"champion": champion, "state": "NotObserved", "since": None}
        return TriggerResult(PERFORMANCE, False, kept, f"{champion} not observed yet", recheck_after=1.0)
    if observation.error:
        return _unknown(PERFORMANCE, {**prior, "champion": champion}, now, observation.error)
    metric = perf["metric"]
    below = float(perf["below"]) if perf.get("below") is not None else None
    drop_by = float(perf["dropBy"]) if perf.get("dropBy") is not None else None
    significance = float(_given(perf.get("significance"), DEFAULT_TRIGGER_SIGNIFICANCE))
    min_labels = int(_given(perf.get("minLabels"), DEFAULT_MIN_LABELS))
    value, labels = live_metric(metric, observation.counts)
    base: dict[str, Any] = {"champion": champion, "metric": metric, "labels": int(labels), "observedAt": now_iso(now)}
    if below is not None:
        base["below"] = str(perf["below"])
    if drop_by is not None:
        base["dropBy"] = str(perf["dropBy"])
    baseline = prior.get("baseline")
    if baseline:
        base["baseline"] = baseline
    if value is None or labels < min_labels:
        return TriggerResult(PERFORMANCE, False, {**base, "state": "InsufficientLabels", "since": None},
                             f"{int(labels)} labels, {min_labels} needed")
    n_eff = effective_labels(metric, observation.counts)
    reasons: list[str] = []
    if below is not None and value < below:
        reasons.append(f"live {metric} {value:.3f} < {perf['below']}")
    if drop_by is not None:
        if not baseline:  # the first trusted window of this version: its own level, nothing to compare
            baseline = {"value": f"{value:.4f}", "labels": int(labels), "effectiveLabels": round(n_eff, 1),
                        "at": now_iso(now)}
            base["baseline"] = baseline
        else:
            level = float(baseline["value"])
            significant, z = significant_drop(level, float(baseline.get("effectiveLabels") or baseline["labels"]),
                                              value, n_eff, significance)
            if level - value >= drop_by and significant:
                reasons.append(f"live {metric} {value:.3f} fell {level - value:.3f} from its baseline {level:.3f} "
                               f"(>= {perf['dropBy']}, z={z:.1f})")
    breaching = bool(reasons)
    observed = {**base, "value": f"{value:.4f}", "state": "Below" if breaching else "Above"}
    if breaching:
        account = "; ".join(reasons) + f" over {int(labels)} labels"
    else:
        parts = [f"live {metric} {value:.3f}"]
        if below is not None:
            parts.append(f">= {perf['below']}")
        if drop_by is not None and baseline:
            parts.append(f"baseline {float(baseline['value']):.3f}")
        account = ", ".join(parts) + f" over {int(labels)} labels"
    return _held(PERFORMANCE, breaching, perf.get("for"), prior, now, observed, account)
