"""What the ledger keeps per keyed prediction for the feedback sink (``feast_sink.Served``) is a plain
tuple of atomic values, so the collector stops tracking it (and the ledger's entry holding it) at its
first collections instead of walking it in every full collection for as long as the ledger holds it."""

from __future__ import annotations

import gc
import sys

import numpy as np
from noria_server import feast_sink, ledger, oip, serve
from noria_server.httpserver import Reply


def _pending(n: int, keys: dict[str, list[object]] | None) -> serve._Pending:
    request = oip.InferRequest("r", [oip.new_id() for _ in range(n)], np.arange(n * 3, dtype=float).reshape(n, 3))
    return serve._Pending(request, Reply(), 0.0, 0.0, keys)


def test_a_keyed_rows_served_record_and_its_ledger_entry_are_untracked_by_the_collector() -> None:
    batch = [_pending(2, {"customer_id": [7, 8], "region": ["north", "south"]}), _pending(1, None)]
    rows = np.concatenate([b.request.rows for b in batch])
    served = serve._served(batch, rows, ("customer_id", "region"), 1234.5)
    assert served[2] is None
    assert served[0] == (1234.5, 7, "north", 0.0, 1.0, 2.0) and served[1] == (1234.5, 8, "south", 3.0, 4.0, 5.0)
    assert all(type(s) is tuple for s in served[:2])
    book = ledger.PredictionLedger(1 << 20, 3600.0)
    ids = [rid for b in batch for rid in b.request.row_ids]
    book.record(ids, [1, 0, 1], 10.0, served, serve._served_cost(served[0]))
    shard = book._shards[hash(ids[0]) & book._mask]
    entry = shard[ids[0]]
    assert entry[ledger._SERVED] is served[0]
    was = gc.isenabled()
    gc.disable()  # collections only where this test runs them
    try:
        for _ in range(3):  # a tuple is untracked when a collection finds only untracked items in it
            gc.collect(0)
            gc.collect(1)
    finally:
        if was:
            gc.enable()
    assert not gc.is_tracked(served[0]) and not gc.is_tracked(entry)


def test_the_sink_reads_keys_features_and_time_from_the_flat_record() -> None:
    record = feast_sink.served([7, "north"], [0.5, float("nan")], 0.0)
    assert record == (0.0, 7, "north", 0.5, record[4]) and record[4] != record[4]
    assert serve._served_cost(record) == sys.getsizeof(record) + 32 * 4
