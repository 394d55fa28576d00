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
(the id and prediction objects plus a measured fixed overhead for its dict slot, its place in the
order queue and the entry tuple, see ``ENTRY_OVERHEAD_BYTES``), the oldest entries go first when new
ones pass ``max_bytes`` (down to 8191/8192 of it, see ``EVICT_SHIFT``), and entries older than twice
the retention are dropped as new predictions arrive. Between one and two retention windows an entry
is kept only to answer ``expired`` rather than ``unknown_id``.

Bounded steps. ``record()`` runs on the serving thread, so no step of it may grow with the size of
the ledger. One dict (or ``OrderedDict``) of ~194,000 entries at the 64 MiB default rehashed all of
them at once whenever its table filled: ~30 ms of CPU every ~155,000 insertions once full (deleted
slots fill the table too), 3.5-25 ms at each doubling while filling. So the entries live in
``2**k`` small dicts chosen by the id's hash (about ``_SHARD_BYTES`` of entries each, ~770 at the
default bound): a rehash copies one shard. The age order is a ``deque`` of ids, which grows and
shrinks a 64-slot block at a time and never copies. An id recorded again is appended again; its
earlier places stay in the queue as stale places (the entry counts them, and they come first, so
eviction skips them), charged to the bound like entries. Eviction pops from the front: once full,
1/8192 of the bound per step; the age sweep at most ``_SWEEP_STEPS`` places per call.

Pure data structure, no I/O, no clock of its own (``now`` is passed in), so every rule has a unit test.
"""

from __future__ import annotations

import math
import sys
from collections import deque
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
# Measured with tracemalloc (tests/unit/test_ledger.py): shard dict slot + order queue slot + entry
# tuple + its share of the stamp float, beyond sys.getsizeof(id) + sys.getsizeof(prediction).
ENTRY_OVERHEAD_BYTES: Final = 240


# An entry is a tuple (stamp, predicted, cost, labelled, served, stale): cheaper to build than an object on
# the hot path (one per predicted row), and replaced whole on the rare labelling. ``served`` is what the
# feedback sink needs of a keyed prediction (noria_server.feast_sink.Served), None without one; ``stale``
# is how many earlier places of its id are still in the order queue (the id was recorded again since).
_STAMP, _PREDICTED, _COST, _LABELLED, _SERVED, _STALE = range(6)
# Once full, the ledger makes room for max_bytes >> EVICT_SHIFT at a time: eviction runs on the
# serving thread inside record(), so the chunk is one pause. With one OrderedDict, 1/64 of the 64 MiB
# default was ~3,000 entries, 2.5 ms of CPU every ~3,000 predictions, and 1/1024 (~190 entries) was
# p99.9 0.3 ms. Popping from the queue has no set-up cost to spread over a chunk, so 1/8192 (8 KiB,
# ~24 entries, about what a 20-row record() adds) makes each pass ~40 us of CPU (measured with
# time.thread_time, docs/operations/latency.md), the same work in total.
EVICT_SHIFT: Final = 13
_SWEEP_EVERY: Final = 1.0  # seconds between two looks at the oldest entry's age
# The age sweep drops at most this many queue places per record() (it goes on at the next call):
# after an idle day every entry expires at once, and dropping 194,000 in one call is a long pause.
_SWEEP_STEPS: Final = 256
# Bytes of entries per shard dict: a shard's rehash (its table full of live and deleted slots) copies
# its entries in one piece, ~770 at this size: ~0.05 ms of CPU (1,540 entries: ~0.1 ms; measured on
# cold entries, as the ledger's are), and the shard count is the power of two that keeps shards about
# this big at the bound, at most _MAX_SHARDS (256 dicts at the 64 MiB default).
_SHARD_BYTES: Final = 1 << 18
_MAX_SHARDS: Final = 4096
# What a stale place in the order queue holds beyond the id object it keeps alive: one queue slot.
_PLACE_BYTES: Final = 8


# Every shard dict holds this key (an object no caller has, never a str id) with a list as its value,
# so the dict stays tracked by the collector from its creation on: ``loopmon.settle_heap`` freezes it
# with the ledger's order queue when the server is ready, and no collection walks their entries again.
# An empty or all-atomic dict is untracked instead, and the first entry tuple (tracked until the next
# young collection finds it holds only atomic values) re-tracks it in the young generation, from where
# it reaches the oldest: a full collection then walked every shard, 9-13 ms of CPU for the ~194,000
# entries of the 64 MiB default (benchmarks/ledger_pauses.py --gc-full, docs/operations/latency.md).
_PIN: Final = object()
_PINNED: Final[list[Any]] = []


def _shard_count(max_bytes: int) -> int:
    wanted = -(-max_bytes // _SHARD_BYTES)
    return min(_MAX_SHARDS, 1 << max(0, wanted - 1).bit_length())


@dataclass(frozen=True, slots=True)
class Lookup:
    outcome: str  # COUNTED means "would count": known, fresh, not yet labelled
    predicted: Any = None
    served: Any = None  # what record() was given for the sink, if anything


class PredictionLedger:
    """Recent predictions by id, bounded in bytes, each labelled at most once.

    Entries sit in hash-chosen shard dicts and their age order in a queue of ids (see the module
    doc, "Bounded steps"), so no call touches more than one shard's entries plus what it evicts."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        if max_bytes < ENTRY_OVERHEAD_BYTES:
            raise ValueError(f"the prediction ledger needs at least {ENTRY_OVERHEAD_BYTES} bytes, got {max_bytes}")
        if not retention_seconds > 0:
            raise ValueError(f"the feedback retention must be positive, got {retention_seconds}")
        self.max_bytes = max_bytes
        self.retention = retention_seconds
        self.bytes = 0  # charged to the held entries
        self.stale_bytes = 0  # charged to stale places in the order queue; bytes + stale_bytes <= max_bytes
        self.evicted = 0
        shards = _shard_count(max_bytes)
        self._mask = shards - 1
        self._shards: list[dict[Any, Any]] = [{_PIN: _PINNED} for _ in range(shards)]  # tracked: see _PIN
        self._order: deque[str] = deque()  # ids, oldest first; an id's last place is its entry's
        self._held = 0
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return self._held

    def __contains__(self, pid: object) -> bool:
        return pid is not _PIN and pid in self._shards[hash(pid) & self._mask]

    @staticmethod
    def cost(pid: str, predicted: Any) -> int:
        return sys.getsizeof(pid) + sys.getsizeof(predicted) + ENTRY_OVERHEAD_BYTES

    def record(self, ids: Sequence[str], predictions: Sequence[Any], now: float,
               served: Sequence[Any] | None = None, served_cost: int = 0) -> None:
        """Remember predictions made at ``now`` (a monotonic clock). A re-used id takes the new
        prediction and the newest place in the age order but keeps its labelled mark: an id is
        labelled at most once while it is held. ``served`` (one per id, for the feedback sink) is
        kept with each and charged ``served_cost`` bytes each."""
        if len(ids) != len(predictions) or (served is not None and len(served) != len(ids)):
            raise ValueError(f"{len(ids)} ids for {len(predictions)} predictions")
        order, shards, mask = self._order, self._shards, self._mask
        append, size, limit, fixed = order.append, sys.getsizeof, self.max_bytes, ENTRY_OVERHEAD_BYTES + served_cost
        added = stale = again = 0
        places = len(order)
        extras = served if served is not None else (None,) * len(ids)
        for pid, predicted, extra in zip(ids, predictions, extras):  # noqa: B905 - lengths checked above
            cost = size(pid) + size(predicted) + fixed
            if cost > limit:
                continue  # cannot be held at all; its labels will be unknown_id
            shard = shards[hash(pid) & mask]
            entry = (now, predicted, cost, False, extra, 0)
            old = shard.setdefault(pid, entry)
            if old is not entry:  # its earlier place stays in the queue, stale, until eviction reaches it
                added -= old[_COST]
                stale += size(pid) + _PLACE_BYTES
                again += 1
                shard[pid] = (now, predicted, cost, old[_LABELLED], extra, old[_STALE] + 1)
            append(pid)
            added += cost
        self.bytes += added
        self.stale_bytes += stale
        self._held += len(order) - places - again
        if self.bytes + self.stale_bytes > limit or now >= self._next_sweep:
            self._evict(now)

    def _evict(self, now: float) -> None:
        """Pop places off the front of the order queue: past the bound until 1/8192 of it is free
        (see EVICT_SHIFT), then entries older than two retention windows, at most _SWEEP_STEPS."""
        order, shards, mask, size = self._order, self._shards, self._mask, sys.getsizeof
        limit = self.max_bytes
        total = self.bytes + self.stale_bytes
        target = limit - (limit >> EVICT_SHIFT) if total > limit else limit
        places, start = len(order), total
        stale_freed = stale_places = 0
        while total > target:  # past the bound: the front goes, whatever its age
            pid = order.popleft()
            shard = shards[hash(pid) & mask]
            entry = shard.pop(pid)
            if entry[_STALE]:  # an earlier place of an id recorded again, not the entry's own
                shard[pid] = entry[:_STALE] + (entry[_STALE] - 1,)
                cost = size(pid) + _PLACE_BYTES
                stale_freed += cost
                stale_places += 1
                total -= cost
            else:
                total -= entry[_COST]
        freed, evicted = start - total - stale_freed, places - len(order) - stale_places
        steps = 0
        if now >= self._next_sweep:  # the age sweep, in steps (a day's entries can expire at once)
            forget_before = now - 2 * self.retention
            while order and steps < _SWEEP_STEPS:
                pid = order[0]
                shard = shards[hash(pid) & mask]
                entry = shard[pid]
                if entry[_STALE]:
                    shard[pid] = entry[:_STALE] + (entry[_STALE] - 1,)
                    stale_freed += size(pid) + _PLACE_BYTES
                elif entry[_STAMP] < forget_before:
                    del shard[pid]
                    freed += entry[_COST]
                    evicted += 1
                else:
                    break
                order.popleft()
                steps += 1
            # A sweep cut short goes on at the next record(); otherwise look again in a second.
            self._next_sweep = now if steps >= _SWEEP_STEPS else now + min(_SWEEP_EVERY, self.retention)
        self.bytes -= freed
        self.stale_bytes -= stale_freed
        self._held -= evicted
        self.evicted += evicted

    def lookup(self, pid: str, now: float) -> Lookup:
        entry = self._shards[hash(pid) & self._mask].get(pid)
        if entry is None:
            return Lookup(UNKNOWN_ID)
        if entry[_LABELLED]:
            return Lookup(DUPLICATE, entry[_PREDICTED])
        if entry[_STAMP] < now - self.retention:
            return Lookup(EXPIRED, entry[_PREDICTED])
        return Lookup(COUNTED, entry[_PREDICTED], entry[_SERVED])

    def mark_labelled(self, pid: str) -> None:
        shard = self._shards[hash(pid) & self._mask]
        entry = shard.get(pid)
        if entry is not None:  # keeps its place
            shard[pid] = (entry[_STAMP], entry[_PREDICTED], entry[_COST], True, entry[_SERVED], entry[_STALE])


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
