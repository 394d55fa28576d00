"""Drift statistics: Noria vs a plain scipy loop vs Evidently's DataDriftPreset, one run, same data.

    python benchmarks/drift_vs_evidently.py [--rows 100000] [--features 20] [--repeats 3]

Evidently runs in its own virtualenv (benchmarks/setup_evidently_venv.sh creates it; it needs
pandas < 3) as a subprocess that reads the very arrays this script wrote (same seed, same data).

What is timed (median of --repeats, after one warm-up call each):
- Noria fit: once per reference, at training time — quantile bins of every feature (the
  profile.json the servers count into) and the sorted reference for exact KS/Wasserstein.
- Noria check: per drift evaluation — bin the current window and compute PSI for all features,
  plus exact KS and Wasserstein for all features.
- scipy loop: ks_2samp + wasserstein_distance per feature (the usual hand-written monitor).
- Evidently: Report([DataDriftPreset(method=...)]).run(...) for psi, ks and wasserstein; it
  re-bins/re-sorts everything on every call (it has no fit step), so the fair comparison with it is
  Noria fit + check ("Noria cold"); "Noria check" is what the operator pays per evaluation.

Value checks: KS statistics and Wasserstein distances equal scipy's to 1e-9; Evidently's KS p-value
equals scipy's asymptotic p-value of Noria's statistic; Evidently's normed Wasserstein equals Noria's
divided by the reference std; Evidently's PSI (Sturges bins over reference ∪ current) equals
noria.drift.psi on counts in those same bins. Noria's own PSI uses the profile's fixed reference
quantile bins — a different binning by design, so its values are shown, not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from noria import drift
from noria.profile import FeatureProfile

DEFAULT_VENV = Path.home() / ".cache" / "noria" / "bench-evidently"

EVIDENTLY_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np, pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
import evidently

ref_path, cur_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
ref, cur = np.load(ref_path), np.load(cur_path)
cols = [f"f{i}" for i in range(ref.shape[1])]
ref_df, cur_df = pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)
out = {"version": evidently.__version__, "pandas": pd.__version__, "methods": {}}
for method in ("psi", "ks", "wasserstein"):
    # warm-up on a small slice: the first Report pays imports and registry set-up
    Report([DataDriftPreset(method=method)]).run(current_data=cur_df.head(1000), reference_data=ref_df.head(1000))
    times, values = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        snapshot = Report([DataDriftPreset(method=method)]).run(current_data=cur_df, reference_data=ref_df)
        times.append(time.perf_counter() - t0)
    for metric in snapshot.dict()["metrics"]:
        cfg = metric.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            values[cfg["column"]] = metric["value"]
    out["methods"][method] = {"seconds": times, "values": values}
print(json.dumps(out))
"""


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixed shapes (normal, exponential, uniform, a lumpy integer feature); every other feature
    drifts in the current window (a shift or a change of scale)."""
    rng = np.random.default_rng(seed)
    ref = np.empty((rows, features))
    cur = np.empty((rows, features))
    for j in range(features):
        kind = j % 4
        drifted = j % 2 == 1
        shift = 0.15 * (1 + j % 3) if drifted else 0.0
        if kind == 0:
            ref[:, j], cur[:, j] = rng.normal(0, 1, rows), rng.normal(shift, 1, rows)
        elif kind == 1:
            ref[:, j], cur[:, j] = rng.exponential(2.0, rows), rng.exponential(2.0 * (1 + shift), rows)
        elif kind == 2:
            ref[:, j], cur[:, j] = rng.uniform(0, 10, rows), rng.uniform(shift, 10 + shift, rows)
        else:  # many ties: the case where KS implementations usually disagree
            ref[:, j], cur[:, j] = rng.poisson(30, rows), rng.poisson(30 * (1 + shift), rows)
    return ref, cur


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def ks_pvalue(d: float, n1: int, n2: int, ref_col: np.ndarray, cur_col: np.ndarray) -> float:
    """Two-sided p-value of a KS statistic the way scipy's ks_2samp picks it: Smirnov's asymptotic
    distribution above 10,000 rows (the benchmark's size), the exact one below (left to scipy)."""
    from scipy import stats

    if max(n1, n2) <= 10_000:
        return float(stats.ks_2samp(ref_col, cur_col, method="exact").pvalue)
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--evidently-venv", default=os.environ.get("NORIA_EVIDENTLY_VENV", str(DEFAULT_VENV)))
    args = parser.parse_args()

    print(f"load before: {uptime()}")
    ref, cur = make_data(args.rows, args.features, args.seed)
    print(f"data: reference {ref.shape}, current {cur.shape}, seed {args.seed}, median of {args.repeats}")

    # --- Noria
    def fit():
        profiles = [FeatureProfile.build(ref[:, j], "numeric") for j in range(args.features)]
        return profiles, drift.RawReference.fit(ref)

    t_fit, (profiles, raw_ref) = timed(fit, args.repeats)  # type: ignore[misc]
    reference_matrix = np.vstack([p.reference for p in profiles])

    def noria_psi():
        counts = np.vstack([p.counts(cur[:, j]) for j, p in enumerate(profiles)])
        return drift.psi(reference_matrix, counts)

    def noria_ks_w():
        return raw_ref.ks_and_wasserstein(cur)

    t_psi, psi_values = timed(noria_psi, args.repeats)
    t_ksw, (ks_values, wd_values) = timed(noria_ks_w, args.repeats)  # type: ignore[misc]
    t_check, _ = timed(lambda: (noria_psi(), noria_ks_w()), args.repeats)

    # --- scipy loop
    from scipy import stats

    def scipy_loop():
        ks = np.array([stats.ks_2samp(ref[:, j], cur[:, j]).statistic for j in range(args.features)])
        wd = np.array([stats.wasserstein_distance(ref[:, j], cur[:, j]) for j in range(args.features)])
        return ks, wd

    t_scipy, (scipy_ks, scipy_wd) = timed(scipy_loop, args.repeats)  # type: ignore[misc]
    t_scipy_ks, _ = timed(lambda: [stats.ks_2samp(ref[:, j], cur[:, j]) for j in range(args.features)], args.repeats)

    # --- Evidently, same arrays, its own venv
    evidently_python = Path(args.evidently_venv) / "bin" / "python"
    evidently = None
    if not evidently_python.exists():
        print(f"Evidently venv missing at {args.evidently_venv}: run benchmarks/setup_evidently_venv.sh")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/ref.npy", ref)
            np.save(f"{tmp}/cur.npy", cur)
            proc = subprocess.run([str(evidently_python), "-c", EVIDENTLY_SCRIPT, f"{tmp}/ref.npy", f"{tmp}/cur.npy",
                                   str(args.repeats)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print("Evidently failed:\n" + proc.stderr[-3000:])
        else:
            evidently = json.loads(proc.stdout.strip().splitlines()[-1])

    # --- value checks
    checks: list[tuple[str, float, bool]] = []
    ks_diff = float(np.max(np.abs(ks_values - scipy_ks)))
    wd_diff = float(np.max(np.abs(wd_values - scipy_wd)))
    checks.append(("KS statistic vs scipy ks_2samp (max abs diff)", ks_diff, ks_diff <= 1e-9))
    checks.append(("Wasserstein vs scipy wasserstein_distance (max abs diff)", wd_diff, wd_diff <= 1e-9))
    if evidently:
        cols = [f"f{j}" for j in range(args.features)]
        pvalues = np.array([ks_pvalue(d, args.rows, args.rows, ref[:, j], cur[:, j])
                            for j, d in enumerate(ks_values)])
        ev_p = np.array([evidently["methods"]["ks"]["values"][c] for c in cols])
        d = float(np.max(np.abs(np.clip(pvalues, 0, 1) - ev_p)))
        checks.append(("KS p-value (scipy asymptotic of Noria's statistic) vs Evidently", d, d <= 1e-9))
        ev_w = np.array([evidently["methods"]["wasserstein"]["values"][c] for c in cols])
        norms = np.maximum(ref.std(axis=0), 0.001)
        d = float(np.max(np.abs(wd_values / norms - ev_w)))
        checks.append(("Wasserstein / reference std vs Evidently (normed)", d, d <= 1e-9))
        ev_psi = np.array([evidently["methods"]["psi"]["values"][c] for c in cols])
        # Evidently fills an empty bin with 1e-4, or with (smallest non-empty share) / 1e6 when that
        # share is ≤ 1e-4; noria.drift.psi always uses eps = 1e-4. So values are compared exactly on
        # the features where no bin is empty on either side, and the others are counted, not hidden.
        diffs, with_empty_bins = [], []
        for j in range(args.features):
            edges = np.histogram_bin_edges(np.concatenate([ref[:, j], cur[:, j]]), bins="sturges")
            ref_counts, cur_counts = np.histogram(ref[:, j], edges)[0], np.histogram(cur[:, j], edges)[0]
            if (ref_counts == 0).any() or (cur_counts == 0).any():
                with_empty_bins.append(f"f{j}")
                continue
            diffs.append(abs(float(drift.psi(ref_counts, cur_counts)) - ev_psi[j]))
        d = max(diffs) if diffs else 0.0
        checks.append((f"PSI on Evidently's bins (noria.drift.psi) vs Evidently, {len(diffs)} features "
                       f"without empty bins (empty-bin fill differs by design on {', '.join(with_empty_bins)})",
                       d, d <= 1e-9))

    # --- table
    rows = [
        ("Noria fit (once per reference: bins + sorted reference)", t_fit),
        ("Noria check: PSI, all features (bin current + psi)", t_psi),
        ("Noria check: KS + Wasserstein, all features (exact)", t_ksw),
        ("Noria check: PSI + KS + Wasserstein", t_check),
        ("Noria cold: fit + check", t_fit + t_check),
        ("scipy loop: ks_2samp only", t_scipy_ks),
        ("scipy loop: ks_2samp + wasserstein_distance", t_scipy),
    ]
    if evidently:
        ev = {m: statistics.median(v["seconds"]) for m, v in evidently["methods"].items()}
        rows += [(f"Evidently {evidently['version']} DataDriftPreset(method={m})", ev[m]) for m in ("psi", "ks",
                                                                                                     "wasserstein")]
        rows.append(("Evidently psi + ks + wasserstein", sum(ev.values())))
    print()
    print(f"{'what':64} {'seconds':>9}")
    for name, seconds in rows:
        print(f"{name:64} {seconds:9.3f}")
    print()
    print("ratios (peer / Noria):")
    print(f"  scipy loop KS+W / Noria check KS+W            {t_scipy / t_ksw:7.1f}x   (target ≥ 3x)")
    print(f"  scipy loop KS+W / Noria cold (fit+all checks) {t_scipy / (t_fit + t_check):7.1f}x")
    if evidently:
        print(f"  Evidently PSI / Noria check PSI               {ev['psi'] / t_psi:7.1f}x   (target ≥ 10x)")
        print(f"  Evidently KS / Noria check KS+W               {ev['ks'] / t_ksw:7.1f}x   (target ≥ 10x)")
        print(f"  Evidently Wasserstein / Noria check KS+W      {ev['wasserstein'] / t_ksw:7.1f}x   (target ≥ 10x)")
        print(f"  Evidently all three / Noria check all three   {sum(ev.values()) / t_check:7.1f}x   (target ≥ 10x)")
        print(f"  Evidently all three / Noria cold              {sum(ev.values()) / (t_fit + t_check):7.1f}x")
    print()
    print("value checks:")
    for name, diff, ok in checks:
        print(f"  {'OK  ' if ok else 'FAIL'} {name}: {diff:.3e}")
    print()
    print("per feature (Noria): psi(profile bins) / ks / wasserstein")
    for j in range(args.features):
        print(f"  f{j:<3} {psi_values[j]:.4f}  {ks_values[j]:.4f}  {wd_values[j]:.4f}")
    print(f"load after: {uptime()}")
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
