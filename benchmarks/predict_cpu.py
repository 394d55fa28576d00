"""CPU time of ServedModel.predict per call, scikit-learn vs the fast path (noria_server.fastpath).

    taskset -c 1 .venv/bin/python benchmarks/predict_cpu.py [--calls 500] [--rows 1,16,64]

In process, ``time.thread_time`` around each call (so other processes on the CPU do not count),
one native thread as the server runs (OMP/OPENBLAS_NUM_THREADS=1). For each benchmark model
(noria_server.reference_models: the logistic Pipeline and HistGradientBoostingClassifier, 20
features) it loads the saved artifact twice, warmed up with NORIA_FAST_PREDICT=0 and =1, and prints
the median and best CPU µs per call on rows of the benchmark's kind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server_image"))
from noria_server.model import ServedModel  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402


def cpu_us(model: ServedModel, rows: np.ndarray, calls: int) -> tuple[float, float]:
    times = []
    for i in range(calls):
        batch = rows[i % 7: i % 7 + rows.shape[0] - 7]
        t0 = time.thread_time()
        model.predict(batch)
        times.append(time.thread_time() - t0)
    return float(np.median(times)) * 1e6, float(np.min(times)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rows", default="1,16,64")
    parser.add_argument("--models", default="logistic,hgb")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    print(f"load: {os.getloadavg()}, affinity {sorted(os.sched_getaffinity(0))}")
    print("model | rows | scikit-learn median / best µs | fast median / best µs | ratio of medians")
    for kind in args.models.split(","):
        saved = train_and_save(kind, tempfile.mkdtemp(prefix="predict-cpu-"), rows=5000)  # type: ignore[arg-type]
        models = {}
        for flag in ("0", "1"):
            os.environ["NORIA_FAST_PREDICT"] = flag
            model = ServedModel.load(saved.artifact_uri, saved.digest, saved.profile_uri)
            model.warm_up(max(sizes))
            models[flag] = model
        assert models["0"].fast is None and models["1"].fast is not None, models["1"].fast_reason
        pool = models["1"].sample_rows(max(sizes) + 7)
        for n in sizes:
            rows = pool[: n + 7]
            slow, fast = cpu_us(models["0"], rows, args.calls), cpu_us(models["1"], rows, args.calls)
            print(f"{kind} | {n} | {slow[0]:.0f} / {slow[1]:.0f} | {fast[0]:.0f} / {fast[1]:.0f} | "
                  f"{slow[0] / fast[0]:.1f}x")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
