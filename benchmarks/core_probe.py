"""How steady the servers' CPU is: a probe of fixed work on that CPU, its spread of times.

    .venv/bin/python benchmarks/core_probe.py [--seconds 10] [--cpu 1]   # by hand: the core's speed, sampled

Why: on these shared machines the same fixed work on the same idle core took 0.7-0.8 ms in some tenths of a
second and 1.2-1.4 ms in others (30,000 additions in the interpreter, thread CPU time, either core,
4 December 2026), flipping within a second or two. The hypervisor reports no steal for it: the vCPU runs,
just slower (a busy sibling hyperthread on the host would do that). A server offered 80 % of a maximum
measured in a fast moment is at ~130 % of what its core can do in a slow one, so a backlog builds and
drains over and over, and the latency tail of such a run measures the host, not the server.

The probe is a process pinned to the CPU under ``SCHED_IDLE`` (it runs only when nothing else there wants
to; a waking task preempts it at once). Every ``INTERVAL_SECONDS`` it runs ``WORK_ITERATIONS`` additions
and writes one line: the monotonic time it ended (ns) and the CPU time the work took (ns,
``time.thread_time_ns``: time it was preempted does not count, so only the core's speed moves it).
``CoreProbe`` runs it over a window and returns the samples; ``spread`` (pure) is their 90th percentile
over their 10th: ~1.0 on a steady core, ~2 on the machine described above.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_bench import SERVER_CPU, taskset  # noqa: E402

INTERVAL_SECONDS = 0.05
WORK_ITERATIONS = 30000  # 0.7-1.4 ms of CPU here: long enough that a wake-up's cold caches do not count


def work() -> int:
    """The fixed work: ``WORK_ITERATIONS`` additions in the interpreter (the servers' own kind of work)."""
    total = 0
    for i in range(WORK_ITERATIONS):
        total += i
    return total


def probe(out: Path, interval: float = INTERVAL_SECONDS) -> None:
    """Sample until killed: one line ``<monotonic ns> <CPU ns of one work()>`` per ``interval``."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux: the samples would take time from the server
        raise SystemExit(f"core probe: SCHED_IDLE refused ({exc})") from exc
    with open(out, "a", buffering=1) as f:
        while True:
            time.sleep(interval)
            began = time.thread_time_ns()
            work()
            f.write(f"{time.monotonic_ns()} {time.thread_time_ns() - began}\n")


def spread(samples: list[int]) -> float | None:
    """The samples' 90th percentile over their 10th (None with fewer than 10 samples)."""
    if len(samples) < 10:
        return None
    deciles = statistics.quantiles(samples, n=10)
    return deciles[-1] / deciles[0]


def sample(cpu: str, seconds: float, out: Path) -> list[int]:
    """CPU ns of each probe sample on ``cpu`` over ``seconds`` (the caller leaves that CPU alone meanwhile)."""
    with CoreProbe(cpu, out) as probe:
        start = time.monotonic_ns()
        time.sleep(seconds)
        return probe.since(start)


class CoreProbe:
    """The probe process on ``cpu`` (a context manager); ``since(t)`` gives the samples since ``time.monotonic_ns()`` t."""

    def __init__(self, cpu: str, out: Path) -> None:
        self.cpu, self.out = cpu, out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CoreProbe:
        self.out.write_text("")
        self.proc = subprocess.Popen([*taskset(self.cpu), sys.executable, __file__, "--child", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def since(self, start: int) -> list[int]:
        """CPU ns of the samples that ended at or after ``start`` (monotonic ns)."""
        samples = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and int(parts[0]) >= start:
                samples.append(int(parts[1]))
        return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--cpu", default=SERVER_CPU)
    args = parser.parse_args()
    if args.child is not None:
        probe(args.child)
        return
    samples = sample(args.cpu, args.seconds, Path(f"/tmp/core-probe-{os.getpid()}.txt"))
    if not samples:
        raise SystemExit("no sample: the probe did not run")
    print(f"CPU {args.cpu}: {len(samples)} samples of {WORK_ITERATIONS} additions over {args.seconds:g} s; "
          f"ms min {min(samples) / 1e6:.2f}, median {statistics.median(samples) / 1e6:.2f}, "
          f"max {max(samples) / 1e6:.2f}; spread (p90/p10) {spread(samples) or float('nan'):.2f}")
    for i in range(0, len(samples), 20):
        print("  " + " ".join(f"{s / 1e6:4.2f}" for s in samples[i:i + 20]))


if __name__ == "__main__":
    main()
