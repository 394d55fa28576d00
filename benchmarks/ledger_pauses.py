"""How long one ``PredictionLedger.record()`` holds the serving thread, in CPU time.

``python benchmarks/ledger_pauses.py [--before REV] [--bytes N] [--after-full N] [--repeat N] [--gc-full]``

Fills a ledger to its byte bound (64 MiB by default) with ``record()`` calls of 20 rows (24-hex-char ids
as ``oip.new_id`` makes them, class predictions 0/1, 4,000 rows a second of fake clock), then makes
``--after-full`` more calls, and times every call with ``time.thread_time_ns()`` (this thread's CPU,
so other processes on a loaded machine do not inflate a call). Prints per phase (filling, full): mean,
p99.9, max, calls over 1 ms and the five longest. ``--before REV`` runs the ledger of that commit
(``git show REV:server_image/noria_server/ledger.py``) in the same process, alternating with the
working tree's, so both see the same machine. ``--memory`` adds, per ledger, one more fill under
tracemalloc (slow; not timed): the memory the ledger really holds once full against what it charges.
``--gc-full`` adds, per ledger, the CPU of a full garbage collection with the ledger full on a heap
settled as the server's is (ledger made, then ``gc.freeze()``, then filled).
The collector is off while timing (``--gc`` keeps it
on): a collection's pause belongs to the collector, and the server's settled heap makes them short
(docs/operations/latency.md).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LEDGER = "server_image/noria_server/ledger.py"
sys.path.insert(0, str(ROOT / "server_image"))


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def summary(times_ns: list[int]) -> str:
    if not times_ns:
        return "no calls"
    ordered = sorted(times_ns)
    n = len(ordered)
    p999 = ordered[min(n - 1, int(n * 0.999))]
    over = sum(1 for t in ordered if t > 1_000_000)
    top = ", ".join(f"{t / 1e6:.2f}" for t in ordered[-5:][::-1])
    return (f"{n:6d} calls  mean {sum(ordered) / n / 1e6:.3f} ms  p99.9 {p999 / 1e6:.3f} ms  "
            f"max {ordered[-1] / 1e6:.2f} ms  over 1 ms: {over}  longest: {top}")


def run(module: ModuleType, max_bytes: int, rows: int, after_full: int, keep_gc: bool) -> tuple[list[int], list[int]]:
    book = module.PredictionLedger(max_bytes=max_bytes)
    predictions = [i % 2 for i in range(rows)]
    clock = time.thread_time_ns
    filling: list[int] = []
    full: list[int] = []
    step = rows / 4000.0
    now = 0.0
    if not keep_gc:
        gc.disable()
    try:
        while len(full) < after_full:
            ids = [os.urandom(12).hex() for _ in range(rows)]
            now += step
            t = clock()
            book.record(ids, predictions, now)
            t = clock() - t
            (full if book.evicted else filling).append(t)
    finally:
        gc.enable()
    assert book.bytes <= max_bytes
    print(f"    held {len(book)} entries, {book.bytes} bytes charged, {book.evicted} evicted")
    return filling, full


def memory(module: ModuleType, max_bytes: int, rows: int, after_full: int) -> str:
    book = module.PredictionLedger(max_bytes=max_bytes)
    predictions = [i % 2 for i in range(rows)]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        now, calls = 0.0, 0
        while calls < after_full:
            now += rows / 4000.0
            book.record([os.urandom(12).hex() for _ in range(rows)], predictions, now)
            calls += 1 if book.evicted else 0
        held, peak = (v - start for v in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    charged = book.bytes + getattr(book, "stale_bytes", 0)
    return f"holds {held / 2**20:.1f} MiB (peak {peak / 2**20:.1f}) for {charged / 2**20:.1f} MiB charged, {len(book)} entries"


def full_collection(module: ModuleType, max_bytes: int, rows: int) -> str:
    """CPU of one full collection with a full ledger, its heap settled as the server settles it: the
    ledger made first, then ``gc.collect(); gc.freeze()`` (``loopmon.settle_heap``), then filled. A
    collection walks what is tracked and not frozen; ``gc.unfreeze()`` after."""
    book = module.PredictionLedger(max_bytes=max_bytes)
    predictions = [i % 2 for i in range(rows)]
    gc.collect()
    gc.freeze()
    try:
        now = 0.0
        while not book.evicted:
            now += rows / 4000.0
            book.record([os.urandom(12).hex() for _ in range(rows)], predictions, now)
        times = []
        for _ in range(3):  # new entries since the last full collection (which may untrack what it can)
            for _ in range(2000):
                now += rows / 4000.0
                book.record([os.urandom(12).hex() for _ in range(rows)], predictions, now)
            gc.collect(1)
            t = time.thread_time_ns()
            gc.collect(2)
            times.append((time.thread_time_ns() - t) / 1e6)
        walked = len(gc.get_objects(2))
    finally:
        gc.unfreeze()
    return (f"{len(book)} entries: full collection {', '.join(f'{t:.2f}' for t in times)} ms of CPU; "
            f"{walked} objects left in the oldest generation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also run the ledger of this commit")
    parser.add_argument("--bytes", type=int, default=64 << 20)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--after-full", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--gc", action="store_true", help="leave the garbage collector on while timing")
    parser.add_argument("--memory", action="store_true", help="also measure the memory held once full")
    parser.add_argument("--gc-full", action="store_true",
                        help="also time a full collection with a full ledger on a settled (frozen) heap")
    args = parser.parse_args()
    variants = [("after (working tree)", load(ROOT / LEDGER, "ledger_after"))]
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.before}:{LEDGER}"],
                                    check=True, capture_output=True, text=True).stdout
            (Path(tmp) / "ledger_before.py").write_text(source)
            variants.insert(0, (f"before ({args.before})", load(Path(tmp) / "ledger_before.py", "ledger_before")))
        print(f"load average {os.getloadavg()}, {args.bytes} bytes, {args.rows} rows a call")
        for round_ in range(args.repeat):
            for name, module in variants:
                print(f"{name}, round {round_ + 1}:")
                filling, full = run(module, args.bytes, args.rows, args.after_full, args.gc)
                print(f"  filling: {summary(filling)}")
                print(f"  full:    {summary(full)}")
        if args.memory:
            for name, module in variants:
                print(f"{name}, memory: {memory(module, args.bytes, args.rows, args.after_full // 10)}")
        if args.gc_full:
            for name, module in variants:
                print(f"{name}, {full_collection(module, args.bytes, args.rows)}")
        print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
