"""Noria's server with and without the fast predict path at one fixed rate: CPU per 10,000 answers.

    nice -n 15 .venv/bin/python benchmarks/fast_predict_server.py [--rate 300 --seconds 10 --rounds 2]

For each benchmark model (the logistic Pipeline and HGB of noria_server.reference_models), starts
this checkout's server twice per round (``NORIA_FAST_PREDICT=0`` and ``=1``, alternating, pinned to
CPU 1 with one native thread, as benchmarks/server_latency.py does), sends the benchmark's one-row
request at ``--rate`` per second for ``--seconds`` with the Python open-loop generator
(``serving_bench.open_loop``, CPU 0) and prints the server's CPU seconds per 10,000 answers (from
/proc, the figure that a loaded machine does not inflate much) beside p50/p99 (which it does).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria_server.reference_models import train_and_save  # noqa: E402
from server_latency import cpu_seconds, start_noria  # noqa: E402
from server_vs_mlserver import payload  # noqa: E402
from serving_bench import open_loop, stop, uptime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="logistic,hgb")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="fast-predict-server-"))
    print(uptime())
    print("model | fast path | req/s | p50 ms | p99 ms | CPU s / 10k answers")
    for kind in args.models.split(","):
        saved = train_and_save(kind, str(work / "store" / kind), rows=5000)  # type: ignore[arg-type]  # as server_latency.py
        for _ in range(args.rounds):
            for flag in ("0", "1"):
                os.environ["NORIA_FAST_PREDICT"] = flag
                proc, url = start_noria(work, kind, saved)
                try:
                    open_loop(url, payload(), args.rate, 1.0)  # settle
                    before = cpu_seconds(proc.pid)
                    latencies, errors, sent = open_loop(url, payload(), args.rate, args.seconds)
                    used = cpu_seconds(proc.pid) - before
                finally:
                    stop(proc)
                answered = len(latencies) - errors
                p50 = latencies[len(latencies) // 2] * 1e3
                p99 = latencies[int(len(latencies) * 0.99)] * 1e3
                print(f"{kind} | {'on' if flag == '1' else 'off'} | {args.rate:g} | {p50:.2f} | {p99:.2f} | "
                      f"{used / max(answered, 1) * 10_000:.2f}" + (f" ({errors} errors)" if errors else ""),
                      flush=True)
    print(uptime())


if __name__ == "__main__":
    main()
