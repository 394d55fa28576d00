"""When to retrain: one pure function per trigger kind, of (spec, prior state, observation, now).

Each evaluator returns a ``TriggerResult``: whether it fired, the new state to keep in
``status.triggers.<kind>`` (what was observed and since when), a one-line human account of the
observation, and whether the observation could be made at all (``health``: Prometheus down or a
data source that cannot be read is *Unknown*, never a reason to fire).

What "fired" means is deliberately narrow: an evaluator never looks at runs or cooldowns. Firing
only adds the kind to the pipeline's pending set; ``pipeline.decide`` coalesces pending triggers
into at most one run (see there). That keeps every evaluator testable from a table.

Timing rules, by kind:
- initial: the pipeline has no ModelVersion and has never run.
- manual: a new value of the annotation ``noria.dev/retrain``. A burst of writes is one request:
  the value must stay unchanged for ``settle`` seconds before it fires (a GitOps tool or a script
  that writes fifty times asks for one run).
- schedule: cron in UTC; ``next`` is kept in state and shown in status; missed ticks (operator
  down) fire once, not once per tick.
- newData: rows (or the fingerprint, when rows cannot be counted) grew by ``minNewRows`` against
  the baseline taken when the trigger last fired; the first observation only sets the baseline.
- drift / performance: the condition must hold for the ``for`` duration: ``since`` records when it
  was first seen; firing resets it, so a persisting condition fires again only after a new full
  ``for`` (and the cooldown).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from noria.api.common import parse_duration
from noria.conditions import now_iso
from noria.profile import Profile

INITIAL: Final = "initial"
MANUAL: Final = "manual"
SCHEDULE: Final = "schedule"
NEW_DATA: Final = "newData"
DRIFT: Final = "drift"
PERFORMANCE: Final = "performance"
# Order of precedence when several fire at once: the run is labelled with the first.
KINDS: Final = (INITIAL, MANUAL, DRIFT, PERFORMANCE, NEW_DATA, SCHEDULE)

RETRAIN_ANNOTATION: Final = "noria.dev/retrain"
DEFAULT_SETTLE_SECONDS: Final = 2.0
DEFAULT_DRIFT_WINDOW: Final = "1h"
DEFAULT_MIN_DRIFT_SAMPLES: Final = 50
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
    (``{(actual, predicted): count}``), or the error that prevented the query."""

    counts: Mapping[tuple[str, str], float] = field(default_factory=dict)
    error: str | None = None


def _ts(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


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
                     now: dt.datetime) -> TriggerResult:
    prior = dict(state or {})
    if has_model_version or run_counter > 0 or prior.get("firedAt"):
        return TriggerResult(INITIAL, False, prior, "the pipeline has trained before")
    return TriggerResult(INITIAL, True, {"firedAt": now_iso(now)}, "no ModelVersion yet")


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
def next_cron(schedule: str, after: dt.datetime) -> dt.datetime:
    from croniter import croniter

    return croniter(schedule, after).get_next(dt.datetime)


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


def _unknown(kind: str, prior: Mapping[str, Any], now: dt.datetime, why: str) -> TriggerResult:
    # Keep "since": a short Prometheus outage should not restart a long "for"; but never fire on it.
    return TriggerResult(kind, False, {**prior, "state": "Unknown", "observedAt": now_iso(now), "message": why[:300]},
                         f"cannot evaluate: {why}", health=UNKNOWN)


# --- drift --------------------------------------------------------------------------------------
def drift_scores(profile: Profile, counts: Mapping[tuple[str, str], float], method: str,
                 features: list[str] | None = None) -> tuple[dict[str, float], float]:
    """Per-feature drift statistic of live counts against the reference profile, and the number
    of live values seen (the largest per-feature total). Features without live counts are left out."""
    from noria.drift import binned_statistics

    key = DRIFT_STATISTIC[method]
    by_feature: dict[str, dict[str, float]] = {}
    for (feature, bin_label), value in counts.items():
        bins = by_feature.setdefault(feature, {})
        bins[bin_label] = bins.get(bin_label, 0.0) + value
    scores: dict[str, float] = {}
    samples = 0.0
    for name, fp in profile.features.items():
        if features and name not in features:
            continue
        live = fp.vector(by_feature.get(name, {}))
        total = float(live.sum())
        if total <= 0:
            continue
        samples = max(samples, total)
        stats = binned_statistics(fp, live)
        if key in stats:
            scores[name] = stats[key]
    return scores, samples


def evaluate_drift(drift: Mapping[str, Any] | None, champion: str | None, profile: Profile | None,
                   observation: MetricObservation | None, state: Mapping[str, Any] | None, now: dt.datetime,
                   min_samples: int = DEFAULT_MIN_DRIFT_SAMPLES) -> TriggerResult:
    """``drift`` is ``spec.triggers.drift`` (camelCase dict)."""
    if not drift:
        return TriggerResult(DRIFT, False, {}, "no drift trigger")
    prior = dict(state or {})
    if champion is None:
        return TriggerResult(DRIFT, False, {"state": "NoReference", "since": None}, "no champion to compare with")
    if observation is None:  # not asked this pass (e.g. the champion was registered in it)
        return TriggerResult(DRIFT, False, prior, "not observed yet", recheck_after=1.0)
    if observation.error:
        return _unknown(DRIFT, prior, now, observation.error)
    if profile is None:
        return TriggerResult(DRIFT, False, {"state": "NoReference", "champion": champion, "since": None},
                             f"the drift profile of {champion} is unavailable", health=UNKNOWN)
    method = drift.get("method", "psi")
    threshold = float(drift["threshold"])
    scores, samples = drift_scores(profile, observation.counts, method, drift.get("features"))
    base = {"champion": champion, "method": method, "threshold": str(drift["threshold"]), "samples": int(samples),
            "observedAt": now_iso(now)}
    if samples < min_samples:
        return TriggerResult(DRIFT, False, {**base, "state": "InsufficientData", "since": None},
                             f"{int(samples)} live values, {min_samples} needed")
    worst = max(scores, key=lambda f: scores[f]) if scores else None
    value = scores[worst] if worst else 0.0
    observed = {**base, "value": f"{value:.4f}", "feature": worst, "state": "Above" if value > threshold else "Below"}
    account = f"{method} {value:.3f} {'>' if value > threshold else '<='} {drift['threshold']} on {worst}"
    return _held(DRIFT, value > threshold, drift.get("for"), prior, now, observed, account)


# --- performance --------------------------------------------------------------------------------
def live_metric(metric: str, confusion: Mapping[tuple[str, str], float]) -> tuple[float | None, float]:
    """Metric from feedback counts ``{(actual, predicted): n}`` and the number of labels.

    f1/precision/recall are binary when the classes are {0,1} (or {false,true}), taking "1"/"true"
    as positive, else macro-averaged over the classes seen (scikit-learn's conventions)."""
    total = float(sum(confusion.values()))
    if total <= 0:
        return None, 0.0
    if metric == "accuracy":
        return sum(n for (a, p), n in confusion.items() if a == p) / total, total
    classes = sorted({a for a, _ in confusion} | {p for _, p in confusion})
    lowered = {c.lower() for c in classes}
    positive = next((c for c in classes if c.lower() in ("1", "true")), None)
    binary = positive is not None and lowered <= {"0", "1", "false", "true"}

    def per_class(c: str) -> tuple[float, float, float]:
        tp = sum(n for (a, p), n in confusion.items() if a == c and p == c)
        fp = sum(n for (a, p), n in confusion.items() if a != c and p == c)
        fn = sum(n for (a, p), n in confusion.items() if a == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    index = {"precision": 0, "recall": 1, "f1": 2}.get(metric)
    if index is None:
        if metric == "balanced_accuracy":
            recalls = [per_class(c)[1] for c in {a for a, _ in confusion}]
            return sum(recalls) / len(recalls), total
        raise ValueError(f"performance trigger: metric {metric!r} cannot be computed from feedback counts")
    if binary:
        assert positive is not None
        return per_class(positive)[index], total
    values = [per_class(c)[index] for c in classes]
    return sum(values) / len(values), total


def evaluate_performance(perf: Mapping[str, Any] | None, champion: str | None,
                         observation: MetricObservation | None, state: Mapping[str, Any] | None,
                         now: dt.datetime) -> TriggerResult:
    """``perf`` is ``spec.triggers.performance`` (camelCase dict)."""
    if not perf:
        return TriggerResult(PERFORMANCE, False, {}, "no performance trigger")
    prior = dict(state or {})
    if champion is None:
        return TriggerResult(PERFORMANCE, False, {"state": "NoReference", "since": None}, "no champion to measure")
    if observation is None:
        return TriggerResult(PERFORMANCE, False, prior, "not observed yet", recheck_after=1.0)
    if observation.error:
        return _unknown(PERFORMANCE, prior, now, observation.error)
    metric, below = perf["metric"], float(perf["below"])
    min_labels = int(perf.get("minLabels", 100))
    value, labels = live_metric(metric, observation.counts)
    base = {"champion": champion, "metric": metric, "below": str(perf["below"]), "labels": int(labels),
            "observedAt": now_iso(now)}
    if value is None or labels < min_labels:
        return TriggerResult(PERFORMANCE, False, {**base, "state": "InsufficientLabels", "since": None},
                             f"{int(labels)} labels, {min_labels} needed")
    observed = {**base, "value": f"{value:.4f}", "state": "Below" if value < below else "Above"}
    account = f"live {metric} {value:.3f} {'<' if value < below else '>='} {perf['below']} over {int(labels)} labels"
    return _held(PERFORMANCE, value < below, perf.get("for"), prior, now, observed, account)
