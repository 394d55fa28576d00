"""The prediction ledger and label rules (noria_server.ledger): bounded in bytes, retention,
once per id, eviction, and which labels are valid."""

from __future__ import annotations

import math
import sys
import tracemalloc

import pytest
from noria_server import ledger
from noria_server.ledger import LabelRules, PredictionLedger, judge, tally

MIB = 1 << 20


def _ids(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}-{i:08d}" for i in range(n)]


def test_a_label_counts_once_for_a_known_fresh_id_and_a_repeat_is_a_duplicate() -> None:
    book = PredictionLedger(MIB, 60)
    book.record(["a", "b"], ["1", "0"], now=0.0)
    rules = LabelRules.for_model(["0", "1"])
    first = judge([("a", 1), ("a", 0), ("b", "0"), ("zzz", 1)], book, rules, now=1.0)
    assert [j.outcome for j in first] == [ledger.COUNTED, ledger.DUPLICATE, ledger.COUNTED, ledger.UNKNOWN_ID]
    assert (first[0].actual, first[0].predicted) == ("1", "1")
    again = judge([("a", 1), ("b", 0)] * 10_000, book, rules, now=2.0)
    assert tally(again) == {"counted": 0, "duplicate": 20_000, "invalid": 0, "expired": 0, "unknown_id": 0}


def test_an_invalid_label_leaves_the_id_open_for_a_corrected_one() -> None:
    book = PredictionLedger(MIB, 60)
    book.record(["a"], ["1"], now=0.0)
    rules = LabelRules.for_model(["0", "1"])
    bad = judge([("a", "maybe")], book, rules, now=1.0)[0]
    assert (bad.outcome, bad.reason) == (ledger.INVALID, ledger.UNKNOWN_CLASS)
    assert "'maybe'" in bad.message and "0, 1" in bad.message
    assert judge([("a", 0)], book, rules, now=1.0)[0].outcome == ledger.COUNTED


def test_a_label_after_the_retention_window_is_expired_and_forgotten_after_two() -> None:
    book = PredictionLedger(MIB, retention_seconds=10)
    book.record(["old"], [1.0], now=0.0)
    rules = LabelRules.for_model(None)
    assert judge([("old", 2.0)], book, rules, now=10.5)[0].outcome == ledger.EXPIRED
    book.record(["new"], [1.0], now=20.5)  # recording sweeps entries older than two windows
    assert "old" not in book and "new" in book
    assert judge([("old", 2.0)], book, rules, now=21.0)[0].outcome == ledger.UNKNOWN_ID
    assert judge([("new", 2.0)], book, rules, now=21.0)[0].outcome == ledger.COUNTED


def test_the_ledger_stays_within_its_byte_bound_and_evicts_the_oldest_first() -> None:
    book = PredictionLedger(max_bytes=MIB, retention_seconds=3600)
    for batch in range(50):
        book.record(_ids(1000, f"b{batch}"), ["1"] * 1000, now=float(batch))
        assert book.bytes <= MIB
    assert book.evicted > 0
    assert "b49-00000999" in book and "b0-00000000" not in book
    assert book.bytes == sum(PredictionLedger.cost(f"b{b}-{i:08d}", "1") for b in range(50) for i in range(1000)
                             if f"b{b}-{i:08d}" in book)


def test_long_ids_cost_their_length_so_they_cannot_outgrow_the_bound() -> None:
    book = PredictionLedger(max_bytes=4 * MIB, retention_seconds=3600)
    big = ["x" * (1 << 20) + str(i) for i in range(20)]  # 20 ids of 1 MiB, as in the issue
    book.record(big, ["1"] * 20, now=0.0)
    assert book.bytes <= 4 * MIB and len(book) <= 4
    book.record(["y" * (5 << 20)], ["1"], now=0.0)  # larger than the whole ledger: not held at all
    assert len(book) <= 4 and book.bytes <= 4 * MIB


def test_charged_bytes_cover_what_the_entries_really_use() -> None:
    """ENTRY_OVERHEAD_BYTES is an upper bound of the real cost, measured with tracemalloc."""
    n = 50_000
    book = PredictionLedger(max_bytes=1 << 40, retention_seconds=3600)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = _ids(n)  # allocated inside the measurement, as a request's ids are
        values = [float(i) + 0.5 for i in range(n)]
        book.record(ids, values, now=0.0)
        del ids, values
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= book.bytes, (used / n, book.bytes / n)
    assert book.bytes <= 2 * used  # and not so loose that the bound means little
    print(f"FIGURE ledger: {used / n:.0f} bytes per entry used, {book.bytes / n:.0f} charged")


def test_a_reused_id_takes_the_new_prediction_but_stays_labelled() -> None:
    book = PredictionLedger(MIB, 60)
    rules = LabelRules.for_model(["0", "1"])
    book.record(["a"], ["1"], now=0.0)
    assert judge([("a", 1)], book, rules, now=1.0)[0].outcome == ledger.COUNTED
    book.record(["a"], ["0"], now=2.0)  # the same id predicted again (a retry, a chosen id)
    assert judge([("a", 0)], book, rules, now=3.0)[0].outcome == ledger.DUPLICATE
    assert book.bytes == PredictionLedger.cost("a", "0")


@pytest.mark.parametrize(("label", "outcome", "reason"), [
    (3.5, ledger.COUNTED, None),
    (-7, ledger.COUNTED, None),
    (1e9, ledger.COUNTED, None),
    (1.7e308, ledger.INVALID, ledger.OUT_OF_RANGE),
    (-1e10, ledger.INVALID, ledger.OUT_OF_RANGE),
    (10 ** 400, ledger.INVALID, ledger.OUT_OF_RANGE),
    (math.inf, ledger.INVALID, ledger.NOT_FINITE),
    (math.nan, ledger.INVALID, ledger.NOT_FINITE),
    ("high", ledger.INVALID, ledger.NOT_A_NUMBER),
    (True, ledger.INVALID, ledger.NOT_A_NUMBER),
])
def test_regression_labels_must_be_finite_numbers_within_the_bound(label: object, outcome: str,
                                                                    reason: str | None) -> None:
    book = PredictionLedger(MIB, 60)
    book.record(["r"], [2.0], now=0.0)
    verdict = judge([("r", label)], book, LabelRules.for_model(None), now=0.0)[0]
    assert (verdict.outcome, verdict.reason) == (outcome, reason)
    if outcome == ledger.COUNTED:
        assert math.isfinite(abs(verdict.actual - verdict.predicted))


def test_an_error_that_is_not_finite_is_refused_even_when_the_label_is_in_range() -> None:
    book = PredictionLedger(MIB, 60)
    book.record(["r"], [math.inf], now=0.0)  # a model that predicted inf
    verdict = judge([("r", 1.0)], book, LabelRules.for_model(None), now=0.0)[0]
    assert (verdict.outcome, verdict.reason) == (ledger.INVALID, ledger.NOT_FINITE)


@pytest.mark.parametrize(("classes", "label", "counted_as"), [
    ([0, 1], 1, "1"),
    ([0, 1], 1.0, "1"),
    ([0, 1], "1", "1"),
    ([0, 1], 2, None),
    ([0, 1], 1.5, None),
    ([0, 1], math.inf, None),
    (["churn", "stay"], "churn", "churn"),
    (["churn", "stay"], "other", None),
    ([False, True], True, "True"),
])
def test_classifier_labels_must_be_a_class_the_model_knows(classes: list, label: object,
                                                           counted_as: str | None) -> None:
    actual, reason, _ = LabelRules.for_model(classes).check(label)
    assert actual == counted_as
    assert (reason is None) == (counted_as is not None)


def test_answers_name_the_outcome_and_the_reason() -> None:
    book = PredictionLedger(MIB, 60)
    book.record(["a"], ["1"], now=0.0)
    verdict = judge([("a", "x")], book, LabelRules.for_model(["0", "1"]), now=0.0)[0]
    assert verdict.answer()["outcome"] == "invalid" and verdict.answer()["reason"] == "unknown_class"
    assert judge([("q", 1)], book, LabelRules.for_model(["0", "1"]), now=0.0)[0].answer() == \
        {"id": "q", "outcome": "unknown_id"}


def test_settings_that_would_make_the_ledger_useless_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        PredictionLedger(max_bytes=10, retention_seconds=1)
    with pytest.raises(ValueError, match="positive"):
        PredictionLedger(max_bytes=MIB, retention_seconds=0)
    assert sys.getsizeof("a") < ledger.ENTRY_OVERHEAD_BYTES


def test_a_full_ledger_evicts_in_small_chunks_so_one_record_is_never_a_long_pause() -> None:
    """Eviction runs inside record() on the serving thread: each makes room for a small slice of
    the bound (1/8192, EVICT_SHIFT), not 1/64 (~3,000 entries at the default bound, 2.5 ms of CPU in one piece)."""
    book = PredictionLedger(max_bytes=MIB, retention_seconds=3600)
    cost = PredictionLedger.cost("f-00000000", "1")
    book.record(_ids(MIB // cost + 10, "f"), ["1"] * (MIB // cost + 10), now=0.0)  # full
    chunk = (MIB >> ledger.EVICT_SHIFT) // cost + 2  # + the entry that went over the bound
    most = 0
    for i in range(2000):
        before = book.evicted
        book.record([f"n-{i:08d}"], ["1"], now=1.0)
        most = max(most, book.evicted - before)
        assert book.bytes <= MIB
    assert 0 < most <= chunk <= 5


# --- bounded steps: shards for the entries, a queue for their age ---------------------------------
def _reference_eviction(records: list[list[tuple[str, int]]], limit: int) -> list[set[str]]:
    """What an ordered map of unique ids holds after each call, evicting oldest first down to
    a 1/2**EVICT_SHIFT slice below the bound once past it: the ledger's rules without its data structures."""
    held: dict[str, int] = {}  # insertion ordered
    total, after = 0, []
    for call in records:
        for pid, cost in call:
            held[pid] = cost
            total += cost
        if total > limit:
            target = limit - (limit >> ledger.EVICT_SHIFT)
            while total > target:
                total -= held.pop(next(iter(held)))
        after.append(set(held))
    return after


def test_eviction_is_oldest_first_across_shards_as_one_ordered_map_would_do_it() -> None:
    limit = 2 * MIB
    assert ledger._shard_count(limit) > 1  # the entries are spread over several dicts
    book = PredictionLedger(limit, retention_seconds=3600)
    rng = __import__("random").Random(19)
    calls = [[f"c{c}-{i}-" + "x" * rng.choice((0, 0, 0, 40, 400, 4000)) for i in range(rng.randint(1, 40))]
             for c in range(1500)]
    expected = _reference_eviction([[(pid, PredictionLedger.cost(pid, 1.5)) for pid in call] for call in calls], limit)
    for call, want in zip(calls, expected, strict=True):
        book.record(call, [1.5] * len(call), now=1.0)
        assert book.bytes <= limit and len(book) == len(want)
    assert book.evicted > 10_000
    assert {pid for call in calls for pid in call if pid in book} == want
    assert book.bytes == sum(PredictionLedger.cost(pid, 1.5) for pid in want) and book.stale_bytes == 0


def test_an_id_recorded_again_moves_to_the_newest_place_and_its_old_place_is_charged_until_evicted() -> None:
    limit = MIB
    book = PredictionLedger(limit, retention_seconds=3600)
    rng = __import__("random").Random(7)
    last_seen: dict[str, int] = {}  # id -> when it was last recorded
    tick = 0
    for _ in range(4000):
        known = list(last_seen)
        call = [rng.choice(known) if known and rng.random() < 0.3 else f"n{tick}-{i}" for i in range(rng.randint(1, 12))]
        book.record(call, ["1"] * len(call), now=float(tick))
        for pid in call:
            tick += 1
            last_seen[pid] = tick
        assert book.bytes + book.stale_bytes <= limit
        # what is held is exactly the most recently recorded ids: oldest first, by last record
        newest_first = sorted(last_seen, key=last_seen.__getitem__, reverse=True)
        assert all(pid in book for pid in newest_first[:len(book)])
        assert not any(pid in book for pid in newest_first[len(book):len(book) + 50])
    assert book.evicted > 0 and book.stale_bytes > 0
    # recording only new ids evicts every old place; the stale charge goes with them
    for batch in range(40):
        book.record(_ids(200, f"fresh{batch}"), ["1"] * 200, now=1e6)
    assert book.stale_bytes == 0 and len(book) == sum(1 for b in range(40) for pid in _ids(200, f"fresh{b}") if pid in book)


def test_feedback_for_an_id_recorded_twice_counts_once_against_its_newest_prediction() -> None:
    book = PredictionLedger(MIB, retention_seconds=60)
    rules = LabelRules.for_model(["0", "1"])
    book.record(["twice"], ["0"], now=0.0)
    book.record(_ids(100), ["1"] * 100, now=1.0)
    book.record(["twice"], ["1"], now=2.0)  # the second prediction for the same id
    assert len(book) == 101 and book.bytes == PredictionLedger.cost("twice", "1") + 100 * PredictionLedger.cost(
        "p-00000000", "1")
    first = judge([("twice", 1)], book, rules, now=3.0)[0]
    assert (first.outcome, first.predicted) == (ledger.COUNTED, "1")
    assert judge([("twice", 1), ("twice", 0)], book, rules, now=3.0)[0].outcome == ledger.DUPLICATE
    # its first place is the oldest: the bound evicts past it, and the id stays (labelled)
    cost = PredictionLedger.cost("f-00000000", "1")
    book.record(_ids(MIB // cost - 50, "f"), ["1"] * (MIB // cost - 50), now=4.0)
    assert book.evicted > 0 and book.stale_bytes == 0
    assert "p-00000000" not in book and "p-00000099" in book and "twice" in book
    assert judge([("twice", 0)], book, rules, now=5.0)[0].outcome == ledger.DUPLICATE


def test_an_entry_recorded_long_ago_is_found_after_its_shard_was_rehashed_many_times() -> None:
    book = PredictionLedger(16 * MIB, retention_seconds=3600)
    rules = LabelRules.for_model(None)
    book.record(["early"], [42.0], now=0.0)
    for batch in range(400):  # ~13 MB of later entries churn every shard, "early" stays the oldest
        book.record(_ids(100, f"b{batch}"), [1.0] * 100, now=1.0)
        if batch % 100 == 0:
            book.record(_ids(100, f"b{batch}"), [2.0] * 100, now=1.0)  # recorded twice: stale places
    assert "early" in book and book.evicted == 0
    found = book.lookup("early", now=2.0)
    assert (found.outcome, found.predicted) == (ledger.COUNTED, 42.0)
    assert judge([("early", 41.0)], book, rules, now=2.0)[0].outcome == ledger.COUNTED


def test_an_evicted_id_is_gone_and_a_new_prediction_for_it_starts_unlabelled() -> None:
    book = PredictionLedger(MIB, retention_seconds=3600)
    rules = LabelRules.for_model(["0", "1"])
    book.record(["gone"], ["1"], now=0.0)
    assert judge([("gone", 1)], book, rules, now=0.0)[0].outcome == ledger.COUNTED
    cost = PredictionLedger.cost("f-00000000", "1")
    book.record(_ids(MIB // cost + 1, "f"), ["1"] * (MIB // cost + 1), now=1.0)
    assert "gone" not in book and book.lookup("gone", now=1.0).outcome == ledger.UNKNOWN_ID
    assert judge([("gone", 1)], book, rules, now=1.0)[0].outcome == ledger.UNKNOWN_ID
    book.record(["gone"], ["0"], now=2.0)
    assert judge([("gone", 0)], book, rules, now=2.0)[0].outcome == ledger.COUNTED


def test_a_day_of_expired_entries_is_swept_a_bounded_step_per_record() -> None:
    book = PredictionLedger(64 * MIB, retention_seconds=10)
    book.record(_ids(20_000, "old"), ["1"] * 20_000, now=0.0)
    book.record(["recent"], ["1"], now=15.0)  # within two windows: nothing is old enough yet
    assert len(book) == 20_001
    steps = 0
    while "old-00019999" in book:
        before = len(book)
        book.record([f"new-{steps}"], ["1"], now=25.0 + steps * 1e-3)
        assert before + 1 - len(book) <= ledger._SWEEP_STEPS
        steps += 1
    assert steps == -(-20_000 // ledger._SWEEP_STEPS)
    assert "recent" in book and "old-00000000" not in book and book.evicted == 20_000


@pytest.mark.parametrize(("max_bytes", "most"), [
    (MIB, 1024), (16 * MIB, 1024), (64 * MIB, 1024), (1 << 30, 1024), (4 << 30, 4096)])
def test_no_shard_can_hold_more_than_a_few_thousand_entries_at_the_bound(max_bytes: int, most: int) -> None:
    """A shard's rehash is the largest piece of work a record() can meet: one shard's entries."""
    smallest = PredictionLedger.cost("", 0)  # the cheapest entry there can be
    per_shard = max_bytes / smallest / ledger._shard_count(max_bytes)
    assert per_shard <= most, per_shard


def test_a_full_ledger_really_uses_no_more_memory_than_it_charges() -> None:
    """At the bound with churn and re-recorded ids: shards rehashed, queue blocks recycled."""
    limit = 4 * MIB
    book = PredictionLedger(limit, retention_seconds=3600)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for batch in range(1000):
            call = [f"{batch}-{i}-{'z' * (batch % 7)}" for i in range(20)]
            book.record(call, [float(i) for i in range(20)], now=float(batch))
            if batch % 10 == 0:
                book.record(call[:5], [0.5] * 5, now=float(batch))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert book.evicted > 0
    assert used <= book.bytes + book.stale_bytes <= limit, (used, book.bytes, book.stale_bytes)
