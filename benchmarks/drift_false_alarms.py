"""How often the drift trigger fires on stationary data, and how soon it sees a real shift.

    python benchmarks/drift_false_alarms.py [--trials 1000] [--features 20] [--seed 11] [--json out.json]

A profile of ``--features`` features (numeric of several shapes, and categorical) is built from
10 000 training rows, as the trainer builds profile.json. Then, for each window size N (live
values per feature), ``--trials`` independent windows are drawn and both rules are evaluated:

- old rule (before issue 11): at least 50 values and the largest PSI over all features > 0.2;
- new rule: ``triggers.judge_drift`` (what ``drift_evidence`` decides with) at the defaults (G
  test per feature, Holm correction at significance 0.01, PSI > 0.2, minSamples 200); the same
  with minSamples 0/100 or significance 0.001 to show what each part adds; and the G test alone
  without the PSI floor (what a huge window would do without an effect size).

Three kinds of window:
- ``profile``: counts drawn from the profile's own fractions (noise only, the reference exact);
- ``population``: counts drawn from the distributions the training rows came from (noise only,
  but the reference itself is a sample of 10 000 rows, as in production);
- ``shift``: like ``population`` but one numeric feature's mean moved so that its true PSI
  against the reference is 0.3 (a real shift that must be detected).

The figures are P(fire) per evaluation (one window), the fraction of trials that fired. They are
the table of docs/triggers.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from noria.drift import psi
from noria.profile import FeatureProfile, Profile
from noria.training.triggers import feature_statistics, judge_drift

TRAINING_ROWS = 10_000
WINDOWS = (50, 100, 200, 1000, 10_000)
TARGET_PSI = 0.3


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def population(n_features: int, rng: np.random.Generator):
    """(name, kind, sampler) per feature; sampler(n) draws n values of the true distribution."""
    shapes = [
        ("normal", "numeric", lambda n: rng.normal(0.0, 1.0, n)),
        ("exponential", "numeric", lambda n: rng.exponential(2.0, n)),
        ("lognormal", "numeric", lambda n: rng.lognormal(0.0, 0.8, n)),
        ("integer", "numeric", lambda n: rng.integers(0, 12, n).astype(float)),
        ("uniform", "numeric", lambda n: rng.uniform(-1.0, 1.0, n)),
        ("category4", "categorical", lambda n: rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])),
        ("category25", "categorical", lambda n: rng.choice([f"c{i}" for i in range(25)], n,
                                                            p=np.arange(25, 0, -1) / np.arange(25, 0, -1).sum())),
    ]
    return [(f"f{i:02d}_{shapes[i % len(shapes)][0]}", shapes[i % len(shapes)][1], shapes[i % len(shapes)][2])
            for i in range(n_features)]


def true_fractions(fp: FeatureProfile, sampler, draws: int = 1_000_000) -> np.ndarray:
    """Bin probabilities of the true distribution (Monte Carlo, a million draws)."""
    counts = fp.counts(sampler(draws))
    return counts / counts.sum()


def shifted_normal(fp: FeatureProfile) -> tuple[np.ndarray, float]:
    """Bin probabilities of N(delta, 1) with delta such that PSI(reference, them) = TARGET_PSI."""
    assert fp.edges is not None
    def probs(delta: float) -> np.ndarray:
        cdf = _normal_cdf(fp.edges - delta)
        k = fp.edges.size - 1
        out = np.zeros(len(fp.labels))
        out[:k] = np.diff(cdf)
        out[k], out[k + 1] = cdf[0], 1.0 - cdf[-1]
        return out

    lo, hi = 0.0, 3.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if psi(fp.reference, probs(mid)) < TARGET_PSI:
            lo = mid
        else:
            hi = mid
    return probs(lo), lo


def window(profile: Profile, fractions: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> dict:
    counts: dict[tuple[str, str], float] = {}
    for name, fp in profile.features.items():
        drawn = rng.multinomial(n, fractions[name] / fractions[name].sum())
        for label, c in zip(fp.labels, drawn, strict=True):
            if c:
                counts[(name, label)] = float(c)
    return counts


def old_rule(rows: list) -> bool:
    return max(r[1] for r in rows) >= 50 and max(r[2] for r in rows) > 0.2


# Each rule sees the same per-feature statistics (triggers.feature_statistics, computed once per
# window); the new rules are triggers.judge_drift, the function the operator's evaluation calls.
RULES = {
    "old (max PSI > 0.2, >= 50 values)": old_rule,
    "new, minSamples 0": lambda rows: bool(judge_drift(rows, 0.2, 0.01, 0).drifted),
    "new, minSamples 100": lambda rows: bool(judge_drift(rows, 0.2, 0.01, 100).drifted),
    "new (defaults: significance 0.01, minSamples 200)": lambda rows: bool(judge_drift(rows, 0.2, 0.01, 200).drifted),
    "new, significance 0.001, minSamples 200": lambda rows: bool(judge_drift(rows, 0.2, 0.001, 200).drifted),
    "test only (no PSI floor), minSamples 200": lambda rows: bool(judge_drift(rows, 0.0, 0.01, 200).drifted),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    feats = population(args.features, rng)
    training = {name: sampler(TRAINING_ROWS) for name, _, sampler in feats}
    profile = Profile({name: FeatureProfile.build(training[name], kind) for name, kind, _ in feats}, None,
                      TRAINING_ROWS)
    reference = {name: fp.reference for name, fp in profile.features.items()}
    truth = {name: true_fractions(profile.features[name], sampler) for name, _, sampler in feats}
    shifted_name = feats[0][0]
    moved, delta = shifted_normal(profile.features[shifted_name])
    shifted = {**truth, shifted_name: moved}
    print(f"{args.features} features, reference of {TRAINING_ROWS} rows, {args.trials} windows per cell; "
          f"shift: {shifted_name} mean +{delta:.3f} sd (true PSI {TARGET_PSI})")
    results: dict[str, dict[str, dict[int, float]]] = {}
    started = time.perf_counter()
    for kind, fractions in (("profile", reference), ("population", truth), ("shift", shifted)):
        for n in WINDOWS:
            fired = dict.fromkeys(RULES, 0)
            for _ in range(args.trials):
                rows = feature_statistics(profile, window(profile, fractions, n, rng))
                for rule, decide in RULES.items():
                    fired[rule] += decide(rows)
            for rule in RULES:
                results.setdefault(kind, {}).setdefault(rule, {})[n] = fired[rule] / args.trials
    header = "| window | rule | " + " | ".join(f"N={n}" for n in WINDOWS) + " |"
    print(header)
    print("|" + "---|" * (len(WINDOWS) + 2))
    for kind, by_rule in results.items():
        for rule, by_n in by_rule.items():
            print(f"| {kind} | {rule} | " + " | ".join(f"{by_n[n]:.3f}" for n in WINDOWS) + " |")
    print(f"({time.perf_counter() - started:.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"features": args.features, "trials": args.trials, "seed": args.seed, "delta": delta,
                       "results": {k: {r: {str(n): v for n, v in bn.items()} for r, bn in br.items()}
                                   for k, br in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
