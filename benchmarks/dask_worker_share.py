"""What one Dask worker's share of a training costs in memory, measured in one process.

    .venv/bin/python benchmarks/dask_worker_share.py [--rows 700000] [--features 128]
                                                     [--rows-per-file 50000] [--rounds 5] [--keep DIR]

Runs ``noria_trainer.dask_training._train_on_worker`` -- the task a worker runs in a dask run's
training or refit -- on ``--rows`` rows of ``--features`` float64 features (Parquet files of
``--rows-per-file`` rows, as ``tests/integration/test_dask_window_beyond_memory.py`` writes them), in an
XGBoost collective of one, with the environment the worker pods get (``MALLOC_TRIM_THRESHOLD_``, one
OpenMP thread, Arrow's system allocator: set before anything is imported, in a child process).

It prints, in MB (10^6 bytes), what the test bed's node agent counts against a container's limit:
``RssAnon + RssShmem`` (noria_testbed.node_agent.memory), sampled every 2 ms by a thread: the
baseline once the libraries are imported, the peak over the task, and the wall time. A worker's
share of a window is its round-robin half of the parts, so ``--rows`` is half of the rows trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORKER_ENV = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def unreclaimable() -> int:
    total = 0
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssShmem"):
                total += int(value.split()[0]) * 1024
    return total


def write_files(folder: Path, rows: int, features: int, rows_per_file: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"x{i}" for i in range(features)]
    for part, first in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - first)
        rng = np.random.default_rng(part)
        x = rng.random((n, features))
        label = (x[:, 0] + 0.5 * x[:, 1] + 0.2 * rng.random(n) > 0.85).astype(np.int8)
        table = pa.table([*x.T, label], names=[*names, "label"])
        pq.write_table(
            table,
            folder / f"part-{part:03d}.parquet",
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        )


def measure(root: Path, features: int, rounds: int, external_memory: bool, sketch: bool) -> dict[str, object]:
    """In the child: import, baseline, then the worker's task with the peak sampled."""
    from noria import xgboost_artifact
    from noria_trainer import dask_training
    from noria_trainer import data as data_mod
    from noria_trainer.estimators import xgboost_params
    from xgboost.tracker import RabitTracker

    source = f"file://{root}/ml/data"
    scope = data_mod.source_scope(source, f"file://{root}", "ml")
    _, files = data_mod.list_data_files(source, "parquet")
    reader = dask_training.PartReader("parquet", scope, "file", {}, "label", None, None)
    names = tuple(f"x{i}" for i in range(features))
    encoding = xgboost_artifact.Encoding(names, dict.fromkeys(names, "numeric"), {})
    params, rounds, max_bin = xgboost_params("classification", {"n_estimators": rounds, "max_depth": 3}, 2, 0)
    parts = [dask_training.Part(f) for f in files]
    cuts_from = None
    if not sketch:  # as a run does: the stats stage's samples (its pass is not measured here)
        stats = dask_training.Stats()
        for part in parts:
            stats.merge(dask_training.part_stats(reader, part, True, 0))
        cuts_from = dask_training.cut_sample(stats, encoding, 0)
        del stats
    learner = dask_training.Learner(
        reader, encoding, (0, 1), params, rounds, max_bin, cuts_from, external_memory
    )
    baseline = unreclaimable()
    peak, stop = [baseline], threading.Event()

    timeline: list[tuple[float, int]] = []  # (second, peak MB in that second)

    def sample() -> None:
        while not stop.is_set():
            now = unreclaimable()
            peak[0] = max(peak[0], now)
            second = int(time.monotonic() - started)
            if not timeline or timeline[-1][0] != second:
                timeline.append((second, 0))
            timeline[-1] = (second, max(timeline[-1][1], round(now / 1e6)))
            time.sleep(0.002)

    tracker = RabitTracker(n_workers=1, host_ip="127.0.0.1", sortby="task")
    tracker.start()
    started = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    raw = dask_training._train_on_worker(learner, parts, tracker.worker_args())
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    tracker.free()
    assert raw
    if os.environ.get("NORIA_SHARE_TIMELINE"):
        print(" ".join(f"{t}:{mb}" for t, mb in timeline), file=sys.stderr)
    return {
        "baselineMB": round(baseline / 1e6),
        "peakMB": round(peak[0] / 1e6),
        "overBaselineMB": round((peak[0] - baseline) / 1e6),
        "afterMB": round(unreclaimable() / 1e6),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=700_000)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-core", action="store_true", help="XGBoost's in-memory QuantileDMatrix")
    parser.add_argument("--sketch", action="store_true", help="XGBoost's sketch of every row, no cut sample")
    parser.add_argument("--keep", help="a folder to write the data to once and reuse")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(measure(Path(args.child), args.features, args.rounds, not args.in_core, args.sketch))
        )
        return
    root = Path(args.keep or tempfile.mkdtemp(prefix="noria-share-"))
    folder = root / "ml" / "data"
    if not folder.exists():
        write_files(folder, args.rows, args.features, args.rows_per_file)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(root),
            "--features",
            str(args.features),
            "--rounds",
            str(args.rounds),
            *(["--in-core"] if args.in_core else []),
            *(["--sketch"] if args.sketch else []),
        ],
        env={**os.environ, **WORKER_ENV},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    if os.environ.get("NORIA_SHARE_TIMELINE"):
        print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(
        matrix="QuantileDMatrix" if args.in_core else "ExtMemQuantileDMatrix",
        cuts="sketch" if args.sketch else "sample",
        rows=args.rows,
        features=args.features,
        rowsPerFile=args.rows_per_file,
        float64MB=round(args.rows * args.features * 8 / 1e6),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
