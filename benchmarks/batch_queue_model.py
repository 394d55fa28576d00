"""A model, not a measurement: the model server's greedy micro-batching loop at a fixed offered rate.

    .venv/bin/python benchmarks/batch_queue_model.py [--a-us 32.6] [--f-us 86] [--seconds 20]

Requests arrive on a fixed schedule (as the Go generator sends them). The loop takes everything queued
(at most ``--max-batch``) the moment it is free, and a batch of n costs F + n x a of the loop's time: F
the per-batch part (loop turn, predict call, counting, ledger and log calls), a the per-request part
(reading and parsing, the answer and its write). Pauses of the loop (collections, a preempting thread)
arrive at random (Poisson) with fixed lengths. The rate is 80 % of the maximum of a closed loop of 16
clients (16-row batches: 1 / (a + F / 16)), as ``server_latency.py`` sets it. Printed: p50, p99, p99.9 and
the ratios, for the given a and F and for F and a cut, to show which cut moves p99 / p50.

What it shows (docs/operations/latency.md, ninth pass): the loop is never idle for long near its
maximum, so a cycle lasts F / (1 - rate x a) and p50 follows F; p99 follows the pauses. A cut in F
lowers p50 more than p99 and so raises the ratio; a cut in a lowers both a little.
"""

from __future__ import annotations

import argparse

import numpy as np

# (pauses a second, length s): young and middle collections, a writer turn, a rare long one.
PAUSES = ((60, 100e-6), (6, 200e-6), (13, 300e-6), (1, 3e-3))


def simulate(rate: float, a: float, f: float, seconds: float, max_batch: int = 64, seed: int = 0,
             pauses: tuple[tuple[float, float], ...] = PAUSES) -> np.ndarray:
    """Latencies (s) of every request, from its scheduled arrival to the end of its batch."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    arrivals = np.arange(n) / rate
    events = sorted((t, d) for per_second, d in pauses for t in rng.uniform(0, seconds, rng.poisson(per_second * seconds)))
    latency = np.empty(n)
    now, i, e = 0.0, 0, 0
    while i < n:
        now = max(now, arrivals[i])
        while e < len(events) and events[e][0] <= now:
            now += events[e][1]
            e += 1
        j = max(i + 1, min(n, i + max_batch, int(np.searchsorted(arrivals, now, side="right"))))
        now += f + (j - i) * a
        latency[i:j] = now - arrivals[i:j]
        i = j
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-us", type=float, default=32.6, help="per-request loop time, µs")
    parser.add_argument("--f-us", type=float, default=86.0, help="per-batch loop time, µs")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    a, f = args.a_us * 1e-6, args.f_us * 1e-6
    for label, aa, ff in (("as given", a, f), ("F - 20 %", a, 0.8 * f), ("F - 40 %", a, 0.6 * f),
                          ("a - 15 %", 0.85 * a, f), ("no pauses", a, f)):
        closed = 1.0 / (aa + ff / 16)
        rate = 0.8 * closed
        lat = simulate(rate, aa, ff, args.seconds, pauses=() if label == "no pauses" else PAUSES)
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9]) * 1e3
        print(f"{label:10s} a {aa * 1e6:5.1f} µs F {ff * 1e6:5.1f} µs: closed-loop max {closed:7,.0f}/s, 80 % {rate:7,.0f}/s "
              f"(rate x a {rate * aa:.2f}): p50 {p50:.2f} p99 {p99:.2f} p99.9 {p999:.2f} ms, "
              f"{p99 / p50:.1f}x {p999 / p50:.1f}x")


if __name__ == "__main__":
    main()
