"""Which feedback labels count: the prediction ledger and the label rules.

Threat model. ``POST /feedback`` is reachable by whoever can reach the model server (and, unless a
token is configured, without credentials). The rollout's accuracy/F1 checks and the
retraining trigger read the counters feedback moves, so a client that could move them at will could
promote a bad version or abort a good one. A label therefore counts only when:

- the id names a prediction *this pod* made (the ledger holds it) no longer than
  ``retention_seconds`` ago: a forged id, or one for a prediction long gone, is ``unknown_id`` /
  ``expired``;
- the id has not been labelled before: the ledger remembers a labelled id for as long as it holds
  the prediction, and a repeat is a ``duplicate`` (the first label wins; resending is always safe);
- the label is a value the model could have predicted: a class in the fitted model's ``classes_``
  for a classifier, a finite number no larger in magnitude than ``max_abs_label`` for a regressor.
  A refused label is ``invalid`` with a reason and leaves the id unlabelled, so a corrected label can
  still count.

So the counters move by at most one per prediction ever made, whatever is posted.

Memory. The ledger is bounded in bytes, not entries: ids are client-chosen strings, and a bound on
entries let 1 MiB ids grow a server by hundreds of megabytes. Each entry is charged what it costs
(the id and prediction objects plus a measured fixed overhead for the dict slot, the order link and
the entry object, see ``ENTRY_OVERHEAD_BYTES``), the oldest entries go first when new ones pass
``max_bytes`` (down to 1023/1024 of it, see ``EVICT_SHIFT``), and entries older than twice the retention are dropped as new predictions
arrive. Between one and two retention windows an entry is kept only to answer ``expired`` rather
than ``unknown_id``.

Pure data structure, no I/O, no clock of its own (``now`` is passed in), so every rule has a unit test.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from noria import metrics as m

# Outcomes of one feedback item, in the answer. Those that refuse are also reasons of
# noria_feedback_refused_total (named in noria.metrics); INVALID is counted by its own reason.
COUNTED: Final = "counted"
DUPLICATE: Final = m.FEEDBACK_DUPLICATE
UNKNOWN_ID: Final = m.FEEDBACK_UNKNOWN_ID
EXPIRED: Final = m.FEEDBACK_EXPIRED
INVALID: Final = "invalid"
OUTCOMES: Final = (COUNTED, DUPLICATE, INVALID, EXPIRED, UNKNOWN_ID)  # most telling first (the router's merge order)

# Why a label is invalid.
UNKNOWN_CLASS: Final = m.FEEDBACK_UNKNOWN_CLASS
NOT_FINITE: Final = m.FEEDBACK_NOT_FINITE
OUT_OF_RANGE: Final = m.FEEDBACK_OUT_OF_RANGE
NOT_A_NUMBER: Final = m.FEEDBACK_NOT_A_NUMBER

DEFAULT_MAX_BYTES: Final = 64 << 20
DEFAULT_RETENTION_SECONDS: Final = 24 * 3600.0
# 1e9: far above most regression targets, yet small enough that a million labels at the bound keep
# the abs-error sum below 2^53, where a float64 counter still adds an error of 1 exactly. A
# label of 1e308 would turn the sum into +Inf; one of 1e20 would make later honest errors vanish in
# rounding (the sum's increase over a window reads 0 and the error check passes).
DEFAULT_MAX_ABS_LABEL: Final = 1e9
# Measured with tracemalloc (tests/unit/test_ledger.py): dict slot + OrderedDict link + entry
# object + stamp float, beyond sys.getsizeof(id) + sys.getsizeof(prediction).
ENTRY_OVERHEAD_BYTES: Final = 240


# An entry is a tuple (stamp, predicted, cost, labelled, served): cheaper to build than an object on the hot
# path (one per predicted row), and replaced whole on the rare labelling. ``served`` is what the
# feedback sink needs of a keyed prediction (noria_server.feast_sink.Served), None without one.
_STAMP, _PREDICTED, _COST, _LABELLED, _SERVED = range(5)
# Once full, the ledger makes room for max_bytes >> EVICT_SHIFT at a time: eviction runs on the
# serving thread inside record(), so the chunk is one pause. 1/64 of the 64 MiB default was ~3,000
# entries, 2.5 ms of CPU every ~3,000 predictions (p99.9 of record() 2.8 ms, measured with
# time.thread_time, docs/operations/latency.md); 1/1024 is ~190 entries, p99.9 0.3 ms, same total.
EVICT_SHIFT: Final = 10
_SWEEP_EVERY: Final = 1.0  # seconds between two looks at the oldest entry's age


@dataclass(frozen=True, slots=True)
class Lookup:
    outcome: str  # COUNTED means "would count": known, fresh, not yet labelled
    predicted: Any = None
    served: Any = None  # what record() was given for the sink, if anything


class PredictionLedger:
    """Recent predictions by id, bounded in bytes, each labelled at most once."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        if max_bytes < ENTRY_OVERHEAD_BYTES:
            raise ValueError(f"the prediction ledger needs at least {ENTRY_OVERHEAD_BYTES} bytes, got {max_bytes}")
        if not retention_seconds > 0:
            raise ValueError(f"the feedback retention must be positive, got {retention_seconds}")
        self.max_bytes = max_bytes
        self.retention = retention_seconds
        self.bytes = 0
        self.evicted = 0
        self._entries: OrderedDict[str, tuple[float, Any, int, bool, Any]] = OrderedDict()
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: object) -> bool:
        return pid in self._entries

    @staticmethod
    def cost(pid: str, predicted: Any) -> int:
        return sys.getsizeof(pid) + sys.getsizeof(predicted) + ENTRY_OVERHEAD_BYTES

    def record(self, ids: Sequence[str], predictions: Sequence[Any], now: float,
               served: Sequence[Any] | None = None, served_cost: int = 0) -> None:
        """Remember predictions made at ``now`` (a monotonic clock). A re-used id takes the new
        prediction but keeps its labelled mark: an id is labelled at most once while it is held.
        ``served`` (one per id, for the feedback sink) is kept with each and charged ``served_cost``
        bytes each."""
        if len(ids) != len(predictions) or (served is not None and len(served) != len(ids)):
            raise ValueError(f"{len(ids)} ids for {len(predictions)} predictions")
        entries, size, limit = self._entries, sys.getsizeof, self.max_bytes
        added = 0
        extras = served if served is not None else (None,) * len(ids)
        for pid, predicted, extra in zip(ids, predictions, extras):  # noqa: B905 - lengths checked above
            cost = size(pid) + size(predicted) + ENTRY_OVERHEAD_BYTES + served_cost
            if cost > limit:
                continue  # cannot be held at all; its labels will be unknown_id
            old = entries.pop(pid, None)
            if old is None:
                entries[pid] = (now, predicted, cost, False, extra)
            else:
                added -= old[_COST]
                entries[pid] = (now, predicted, cost, old[_LABELLED], extra)
            added += cost
        self.bytes += added
        if self.bytes > limit or now >= self._next_sweep:
            self._evict(now)

    def _evict(self, now: float) -> None:
        entries = self._entries
        forget_before = now - 2 * self.retention
        # Once full, make room for 1/1024 of the bound at a time rather than one entry per prediction,
        # so the eviction loop runs once per many predictions, not on every one (see EVICT_SHIFT).
        target = self.max_bytes - (self.max_bytes >> EVICT_SHIFT) if self.bytes > self.max_bytes else self.max_bytes
        while entries:
            oldest = entries[next(iter(entries))]
            if self.bytes <= target and oldest[_STAMP] >= forget_before:
                break
            _, gone = entries.popitem(last=False)
            self.bytes -= gone[_COST]
            self.evicted += 1
        self._next_sweep = now + min(_SWEEP_EVERY, self.retention)

    def lookup(self, pid: str, now: float) -> Lookup:
        entry = self._entries.get(pid)
        if entry is None:
            return Lookup(UNKNOWN_ID)
        if entry[_LABELLED]:
            return Lookup(DUPLICATE, entry[_PREDICTED])
        if entry[_STAMP] < now - self.retention:
            return Lookup(EXPIRED, entry[_PREDICTED])
        return Lookup(COUNTED, entry[_PREDICTED], entry[_SERVED])

    def mark_labelled(self, pid: str) -> None:
        entry = self._entries.get(pid)
        if entry is not None:
            self._entries[pid] = (entry[_STAMP], entry[_PREDICTED], entry[_COST], True, entry[_SERVED])  # keeps its place


# --- label rules ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRules:
    """What a label must be for this model: one of ``classes`` (a classifier), else a finite number
    with ``abs(label) <= max_abs_label``."""

    classes: tuple[str, ...] | None  # class names as the counters spell them; None: a regressor
    max_abs_label: float = DEFAULT_MAX_ABS_LABEL

    @classmethod
    def for_model(cls, classes: Sequence[Any] | None, max_abs_label: float = DEFAULT_MAX_ABS_LABEL) -> LabelRules:
        return cls(None if classes is None else tuple(str(c) for c in classes), max_abs_label)

    def check(self, label: Any) -> tuple[Any, str | None, str]:
        """(label as counted, None, "") or (None, reason, message)."""
        if self.classes is not None:
            if isinstance(label, float) and not math.isfinite(label):
                return None, NOT_FINITE, f"label {label!r} is not a finite value"
            text = class_text(label)
            if text not in self.classes:
                shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
                return None, UNKNOWN_CLASS, f"label {_short(label)} is not a class this model knows ({shown})"
            return text, None, ""
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            return None, NOT_A_NUMBER, f"label {_short(label)} is not a number; this model is a regressor"
        try:
            value = float(label)
        except OverflowError:  # an int beyond float range
            return None, OUT_OF_RANGE, f"label is larger in magnitude than {self.max_abs_label:g}"
        if not math.isfinite(value):
            return None, NOT_FINITE, f"label {label!r} is not a finite number"
        if abs(value) > self.max_abs_label:
            return None, OUT_OF_RANGE, (f"label {value:g} is larger in magnitude than {self.max_abs_label:g} "
                                        f"(the server's --feedback-max-abs-label)")
        return value, None, ""


def class_text(label: Any) -> str:
    """A label as the counters spell classes: 1.0 → "1" (JSON clients send integral floats)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


@dataclass(frozen=True, slots=True)
class Judged:
    """What happened to one feedback item."""

    id: str
    outcome: str
    reason: str | None = None  # for INVALID: UNKNOWN_CLASS, NOT_FINITE, OUT_OF_RANGE or NOT_A_NUMBER
    message: str = ""
    actual: Any = None  # COUNTED: the label as counted (class text or float)
    predicted: Any = None  # COUNTED: what the model predicted
    served: Any = None  # COUNTED: what the ledger kept for the feedback sink (None without one)

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "outcome": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        return out


def judge(items: Iterable[tuple[str, Any]], ledger: PredictionLedger, rules: LabelRules, now: float) -> list[Judged]:
    """Decide each (id, label) in order and mark the counted ids labelled.

    The order of the rules matters: an id this pod does not hold is ``unknown_id`` before its label
    is looked at (behind the router every replica sees every label, and only the one that made the
    prediction should judge it); a labelled id is a ``duplicate`` whatever the new label says; only
    then is the label validated, and an invalid one leaves the id open for a corrected label."""
    out: list[Judged] = []
    for pid, label in items:
        found = ledger.lookup(pid, now)
        if found.outcome != COUNTED:
            out.append(Judged(pid, found.outcome))
            continue
        actual, reason, message = rules.check(label)
        if reason is None and rules.classes is None and not math.isfinite(abs(actual - float(found.predicted))):
            reason, message = NOT_FINITE, "the absolute error against the prediction is not a finite number"
        if reason is not None:
            out.append(Judged(pid, INVALID, reason, message))
            continue
        ledger.mark_labelled(pid)
        out.append(Judged(pid, COUNTED, actual=actual, predicted=found.predicted, served=found.served))
    return out


def tally(judged: Iterable[Judged]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for j in judged:
        counts[j.outcome] += 1
    return counts
