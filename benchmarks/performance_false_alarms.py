"""How often the relative performance trigger (dropBy) fires on label noise, and on a real drop.

    python benchmarks/performance_false_alarms.py [--trials 20000] [--seed 11]

A version whose true live accuracy is 0.85 measures its baseline on the first window with
minLabels (200) labels, then each later window of N labels is judged by
``triggers.evaluate_performance`` with ``{metric: accuracy, dropBy: "0.05", minLabels: 200}``.
Compared: the same rule without the significance test (a plain "live <= baseline - dropBy",
significance 1). Windows are independent binomial draws; the figures are P(fire) per evaluation.
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
from noria.training.triggers import MetricObservation, evaluate_performance

WINDOWS = (200, 500, 1000, 5000)
TRUE_ACCURACY = 0.85
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def observation(correct: int, total: int) -> MetricObservation:
    wrong = total - correct
    return MetricObservation({("1", "1"): correct / 2, ("0", "0"): correct / 2, ("1", "0"): wrong / 2,
                              ("0", "1"): wrong / 2})


def p_fire(spec: dict, live_accuracy: float, n: int, trials: int, rng: np.random.Generator) -> float:
    fired = 0
    for _ in range(trials):
        base = evaluate_performance(spec, "m-v1", observation(int(rng.binomial(200, TRUE_ACCURACY)), 200), None, T0)
        later = evaluate_performance(spec, "m-v1", observation(int(rng.binomial(n, live_accuracy)), n), base.state,
                                     T0 + dt.timedelta(minutes=1))
        fired += later.fired
    return fired / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rules = {"dropBy 0.05, significance 0.01 (default)": {"metric": "accuracy", "dropBy": "0.05", "minLabels": 200},
             "dropBy 0.05, no test": {"metric": "accuracy", "dropBy": "0.05", "minLabels": 200, "significance": "1"}}
    print(f"baseline over 200 labels; true accuracy {TRUE_ACCURACY}; {args.trials} trials per cell")
    print("| live accuracy | rule | " + " | ".join(f"N={n}" for n in WINDOWS) + " |")
    print("|" + "---|" * (len(WINDOWS) + 2))
    for live in (TRUE_ACCURACY, TRUE_ACCURACY - 0.10):
        for name, spec in rules.items():
            cells = [p_fire(spec, live, n, args.trials, rng) for n in WINDOWS]
            print(f"| {live:.2f} | {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
