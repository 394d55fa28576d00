"""The ledger's long-lived state stays out of garbage collections once the server's heap is settled."""

from __future__ import annotations

import gc

from noria_server.ledger import PredictionLedger
from noria_server.loopmon import settle_heap


def test_a_settled_ledger_leaves_nothing_of_its_own_for_a_collection_to_walk() -> None:
    book = PredictionLedger(max_bytes=4 << 20)
    threshold = gc.get_threshold()
    settle_heap()  # as the server does once ready: the ledger exists, empty
    try:
        book.record([f"id-{i}" for i in range(5000)], [i % 2 for i in range(5000)], 0.0)
        book.record(["id-7"], [1.5], 1.0)  # an id recorded again: its entry replaced
        book.mark_labelled("id-8")
        gc.collect(1)  # young and middle: a full one would untrack an all-atomic shard until its next entry
        walked = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert not walked & {id(shard) for shard in book._shards}  # frozen: tracked since made
        assert id(book._order) not in walked
        entries = [shard[f"id-{i}"] for i in (1, 7, 8) for shard in book._shards if f"id-{i}" in shard]
        assert len(entries) == 3 and not any(gc.is_tracked(e) for e in entries)  # atomic values only
        assert len(book) == 5000 and "id-1" in book and object() not in book
        assert book.lookup("id-7", 1.0).predicted == 1.5
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
