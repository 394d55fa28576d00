"""Drift statistics, vectorised over features, in the two forms Noria needs.

1. **Binned** (count or fraction vectors, one row per feature): PSI, KL divergence, Jensen–Shannon
   distance and Pearson's chi-square; Kolmogorov–Smirnov and Wasserstein on the binned CDFs. This is
   what the operator computes from ``increase(noria_feature_bin_total[window])`` summed over pods
   against the reference fractions in ``profile.json``: no raw values ever leave the servers.
2. **Raw** (2-D arrays, rows = observations, columns = features): Kolmogorov–Smirnov statistic and
   Wasserstein-1 distance, equal to ``scipy.stats.ks_2samp(...).statistic`` and
   ``scipy.stats.wasserstein_distance`` (same arithmetic, so equal to ~1e-12). The trainer uses
   them to compare new training data with the champion's data.

Why it is fast: peers re-bin and re-sort the reference on every call. Here a ``RawReference`` sorts
the reference once; a check sorts the current window once (one ``np.sort`` over all features) and
merges the two sorted runs per feature with a stable argsort, which Timsort does in linear time.
Both KS and Wasserstein then come out of the same merged order in one pass.

Conventions (documented because thresholds depend on them):
- ``reference`` first, ``current`` second, everywhere.
- PSI = Σ (cur − ref)·ln(cur/ref) on fractions; KL = Σ cur·ln(cur/ref) (how surprising the live
  traffic is under the reference); both replace empty bins by ``eps`` (1e-4, like Evidently) so
  a bin that is empty on one side gives a large but finite value.
- JS is the Jensen–Shannon *distance* (square root of the divergence, natural log), like
  ``scipy.spatial.distance.jensenshannon``; it is bounded by sqrt(ln 2).
- Chi-square tests the current counts against the reference fractions (expected =
  reference fraction × current total); the p-value uses the chi-square survival function with
  (non-empty reference bins − 1) degrees of freedom.
- The G test (``g_test``) is the likelihood-ratio test of the live counts against the reference;
  with the reference's row count it is the two-sample test of homogeneity. ``holm`` adjusts the
  per-feature p-values for testing many features at once. The drift trigger uses both, see
  ``docs/triggers.md``.
- Binned CDF statistics need the bins in value order: use ``ordered_numeric`` for a numeric
  ``FeatureProfile`` (below, 0..k-1, above; ``missing`` excluded). Wasserstein on bins assumes the
  mass of a bin is spread uniformly between its edges and that ``below``/``above`` mass sits on the
  outer edges, so it is an estimate of the raw distance (exact when both sides are uniform per bin).

Importing this module needs NumPy only (no scipy, no pandas, no kopf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from noria.profile import FeatureProfile

DEFAULT_EPS: Final = 1e-4

# Method names of TrainingPipeline.spec.triggers.drift.method, and the binned_statistics key of each.
METHODS: Final = {"psi": "psi", "kl": "kl", "js": "js", "chi2": "chisquare", "ks": "ks", "wasserstein": "wasserstein"}


# --- binned statistics --------------------------------------------------------------------------
def _as_rows(x: np.ndarray | list) -> tuple[np.ndarray, bool]:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        return arr[None, :], True
    if arr.ndim != 2:
        raise ValueError(f"expected a count vector or a (features, bins) matrix, got shape {arr.shape}")
    return arr, False


def _pair(reference: np.ndarray | list, current: np.ndarray | list) -> tuple[np.ndarray, np.ndarray, bool]:
    ref, single = _as_rows(reference)
    cur, single_c = _as_rows(current)
    if ref.shape != cur.shape:
        raise ValueError(f"reference shape {ref.shape} and current shape {cur.shape} differ")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("counts and fractions must be non-negative")
    return ref, cur, single and single_c


def _fractions(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 0.0)


def _smoothed(fractions: np.ndarray, eps: float) -> np.ndarray:
    return np.where(fractions == 0.0, eps, fractions)


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


def psi(reference, current, eps: float = DEFAULT_EPS) -> np.ndarray | float:
    """Population stability index per feature (rows); counts or fractions on either side."""
    ref, cur, single = _pair(reference, current)
    p, q = _smoothed(_fractions(ref), eps), _smoothed(_fractions(cur), eps)
    return _out(((q - p) * np.log(q / p)).sum(axis=1), single)


def kl_divergence(reference, current, eps: float = DEFAULT_EPS) -> np.ndarray | float:
    """KL(current ‖ reference) per feature, natural log."""
    ref, cur, single = _pair(reference, current)
    p, q = _smoothed(_fractions(ref), eps), _smoothed(_fractions(cur), eps)
    return _out((q * np.log(q / p)).sum(axis=1), single)


def js_distance(reference, current) -> np.ndarray | float:
    """Jensen–Shannon distance per feature (natural log), equal to scipy's ``jensenshannon``."""
    ref, cur, single = _pair(reference, current)
    p, q = _fractions(ref), _fractions(cur)
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / np.where(m > 0, m, 1.0)), 0.0)
        right = np.where(q > 0, q * np.log(q / np.where(m > 0, m, 1.0)), 0.0)
    divergence = np.maximum((left + right).sum(axis=1) / 2.0, 0.0)
    return _out(np.sqrt(divergence), single)


def chi_square(reference, current, eps: float = DEFAULT_EPS) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Pearson chi-square of the current *counts* against the reference fractions.

    Returns ``(statistic, p_value)``. Bins empty in the reference get ``eps`` of expected mass so
    a brand-new category still counts (and counts heavily) instead of dividing by zero."""
    ref, cur, single = _pair(reference, current)
    p = _smoothed(_fractions(ref), eps)
    p = p / p.sum(axis=1, keepdims=True)
    n = cur.sum(axis=1, keepdims=True)
    expected = p * n
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(n[:, 0] > 0, ((cur - expected) ** 2 / expected).sum(axis=1), 0.0)
    dof = np.maximum((ref > 0).sum(axis=1) - 1, 1)
    pvalue = np.array([chi2_sf(float(s), int(d)) for s, d in zip(stat, dof, strict=True)])
    return _out(stat, single), _out(pvalue, single)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularised upper incomplete gamma
    Q(dof/2, x/2)), by series or continued fraction; matches scipy.stats.chi2.sf to ~1e-12."""
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:  # series for the lower function P, then Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


def g_test(reference, current, reference_total: float | None = None,
           eps: float = DEFAULT_EPS) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Likelihood-ratio (G) test that the current *counts* come from the reference distribution.

    Returns ``(statistic, p_value)`` per feature. ``G = 2·Σ O·ln(O/E)``, referred to the chi-square
    distribution.

    - ``reference_total`` given (the rows the reference fractions were measured on, e.g.
      ``Profile.rows``): a two-sample test of homogeneity on the 2×k table (reference counts =
      fraction × total, current counts). It accounts for the reference being a sample too, and a
      bin that is empty in the reference needs no epsilon: one stray live value beyond the training
      range is weighed as one value, not as an infinitely unlikely event. Degrees of freedom: bins
      non-empty on either side, minus one.
    - ``reference_total`` None or 0: a goodness-of-fit test against fixed fractions (bins empty in
      the reference get ``eps`` of mass, as in ``chi_square``); degrees of freedom: non-empty
      reference bins minus one.

    Why G and not Pearson's X²: with a few large bins and some nearly-empty ones (``below``,
    ``above``, ``missing``), a single value in a nearly-empty bin dominates X² (its term grows like
    1/E) but adds only ``2·ln(1/E)`` to G."""
    ref, cur, single = _pair(reference, current)
    n = cur.sum(axis=1, keepdims=True)
    if reference_total:
        ref_counts = _fractions(ref) * float(reference_total)
        table = np.stack([ref_counts, cur], axis=1)  # (features, 2, bins)
        col = table.sum(axis=1, keepdims=True)
        row = table.sum(axis=2, keepdims=True)
        grand = row.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = np.where(grand > 0, row * col / np.where(grand > 0, grand, 1.0), 0.0)
            terms = np.where(table > 0, table * np.log(table / np.where(expected > 0, expected, 1.0)), 0.0)
        stat = 2.0 * terms.sum(axis=(1, 2))
        dof = np.maximum((col[:, 0, :] > 0).sum(axis=1) - 1, 1)
    else:
        p = _smoothed(_fractions(ref), eps)
        p = p / p.sum(axis=1, keepdims=True)
        expected = p * n
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(cur > 0, cur * np.log(cur / np.where(expected > 0, expected, 1.0)), 0.0)
        stat = 2.0 * terms.sum(axis=1)
        dof = np.maximum((ref > 0).sum(axis=1) - 1, 1)
    stat = np.where(n[:, 0] > 0, np.maximum(stat, 0.0), 0.0)
    pvalue = np.array([chi2_sf(float(s), int(d)) for s, d in zip(stat, dof, strict=True)])
    return _out(stat, single), _out(pvalue, single)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as given): a family of m tests rejected at
    ``adjusted < alpha`` has probability at most ``alpha`` of rejecting any true null hypothesis,
    whatever the dependence between the tests. ``adjusted_(i) = max_{j<=i} min(1, (m-j+1)·p_(j))``
    over the p-values sorted ascending."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def ks_binned(reference, current) -> np.ndarray | float:
    """Largest gap between the two CDFs at the bin edges (bins in value order)."""
    ref, cur, single = _pair(reference, current)
    gap = np.abs(np.cumsum(_fractions(ref), axis=1) - np.cumsum(_fractions(cur), axis=1))
    return _out(gap.max(axis=1), single)


def wasserstein_binned(reference, current, edges) -> np.ndarray | float:
    """Wasserstein-1 estimate from counts ordered (below, bin 0..k-1, above) and the k+1 edges.

    Inside a bin both CDFs are linear (uniform mass), so their difference is linear too and its
    absolute integral has a closed form (with a sign change: width·(a²+b²)/(2(|a|+|b|)))."""
    ref, cur, single = _pair(reference, current)
    edge_rows, _ = _as_rows(edges)
    if edge_rows.shape[0] == 1 and ref.shape[0] > 1:
        edge_rows = np.repeat(edge_rows, ref.shape[0], axis=0)
    if edge_rows.shape != (ref.shape[0], ref.shape[1] - 1):
        raise ValueError(f"need {ref.shape[1] - 1} edges per feature for {ref.shape[1]} ordered bins "
                         f"(below, k bins, above), got {edge_rows.shape}")
    diff = np.cumsum(_fractions(ref) - _fractions(cur), axis=1)
    a, b = diff[:, :-2], diff[:, 1:-1]  # CDF gap at the left and right edge of every inner bin
    width = np.diff(edge_rows, axis=1)
    same_sign = a * b >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = np.where(np.abs(a) + np.abs(b) > 0, (a * a + b * b) / (2.0 * (np.abs(a) + np.abs(b))), 0.0)
    area = np.where(same_sign, np.abs(a + b) / 2.0, crossing) * width
    return _out(area.sum(axis=1), single)


def rebin_ordered(counts, edges_from, edges_to) -> np.ndarray:
    """Counts in value order (below, k bins, above) over ``edges_from``, moved onto the bins of
    ``edges_to`` (below, m bins, above) under the same assumption as ``wasserstein_binned``: mass is
    uniform inside a bin. ``below``/``above`` mass stays outside every edge, so it lands in the new
    ``below``/``above``. Two versions trained on different data have different quantile edges, and
    their servers count live values into their own bins; this puts both on one set of bins."""
    c = np.asarray(counts, dtype=float)
    src, dst = np.asarray(edges_from, dtype=float), np.asarray(edges_to, dtype=float)
    if c.ndim != 1 or c.size != src.size + 1:
        raise ValueError(f"need {src.size + 1} ordered counts (below, {src.size - 1} bins, above), got {c.shape}")
    # The CDF at each source edge; np.interp is linear between edges (uniform mass) and flat beyond
    # them (below/above are "somewhere outside").
    cdf_at_edges = c[0] + np.concatenate([[0.0], np.cumsum(c[1:-1])])
    if src[-1] > src[0]:
        inside = np.interp(dst, src, cdf_at_edges)
    else:  # one point: a degenerate profile of a constant feature
        inside = np.where(dst < src[0], c[0], cdf_at_edges[-1])
    return np.concatenate([[inside[0]], np.diff(inside), [c.sum() - inside[-1]]])


def ordered_numeric(profile: FeatureProfile, vector: np.ndarray) -> np.ndarray:
    """Reorder a vector in ``profile.labels`` order (0..k-1, below, above, missing) into value
    order (below, 0..k-1, above), dropping ``missing``: the order the CDF statistics need."""
    if profile.kind != "numeric":
        raise ValueError("CDF statistics apply to numeric features only")
    v = np.asarray(vector, dtype=float)
    k = len(profile.labels) - 3
    return np.concatenate([v[k : k + 1], v[:k], v[k + 1 : k + 2]])


def binned_statistics(profile: FeatureProfile, live_counts: np.ndarray, eps: float = DEFAULT_EPS) -> dict[str, float]:
    """Every statistic for one feature: live counts (in ``profile.labels`` order, e.g. from
    ``profile.vector(counts_by_label)``) against the profile's reference fractions."""
    live = np.asarray(live_counts, dtype=float)
    chi, pvalue = chi_square(profile.reference, live, eps)
    out = {
        "psi": float(psi(profile.reference, live, eps)),
        "kl": float(kl_divergence(profile.reference, live, eps)),
        "js": float(js_distance(profile.reference, live)),
        "chisquare": float(chi),
        "chisquare_pvalue": float(pvalue),
        "count": float(live.sum()),
    }
    if profile.kind == "numeric" and profile.edges is not None:
        ref_o, live_o = ordered_numeric(profile, profile.reference), ordered_numeric(profile, live)
        out["ks"] = float(ks_binned(ref_o, live_o))
        out["wasserstein"] = float(wasserstein_binned(ref_o, live_o, profile.edges))
    return out


# --- raw statistics ---------------------------------------------------------------------------
def _columns(x: np.ndarray | list) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected (rows,) or (rows, features), got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class RawReference:
    """The reference sample, sorted once per feature; NaNs are ignored (they sort last)."""

    sorted_columns: tuple[np.ndarray, ...]

    @classmethod
    def fit(cls, reference: np.ndarray | list) -> RawReference:
        arr = np.sort(np.ascontiguousarray(_columns(reference).T), axis=1)
        cols = tuple(row[: int((~np.isnan(row)).sum())] for row in arr)
        for i, col in enumerate(cols):
            if col.size == 0:
                raise ValueError(f"reference feature {i} has no non-missing values")
        return cls(cols)

    def ks_and_wasserstein(self, current: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
        """KS statistic and Wasserstein-1 distance of every feature of ``current``."""
        cur = np.sort(np.ascontiguousarray(_columns(current).T), axis=1)
        if cur.shape[0] != len(self.sorted_columns):
            raise ValueError(f"current has {cur.shape[0]} features, the reference {len(self.sorted_columns)}")
        ks = np.empty(cur.shape[0])
        wd = np.empty(cur.shape[0])
        for j, ref in enumerate(self.sorted_columns):
            row = cur[j]
            c = row[: int((~np.isnan(row)).sum())]
            if c.size == 0:
                raise ValueError(f"current feature {j} has no non-missing values")
            ks[j], wd[j] = _merged_ks_wasserstein(ref, c)
        return ks, wd

    def ks(self, current) -> np.ndarray:
        return self.ks_and_wasserstein(current)[0]

    def wasserstein(self, current) -> np.ndarray:
        return self.ks_and_wasserstein(current)[1]


def _merged_ks_wasserstein(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    n, m = ref_sorted.size, cur_sorted.size
    pooled = np.concatenate([ref_sorted, cur_sorted])
    order = np.argsort(pooled, kind="stable")  # Timsort: a linear merge of two sorted runs
    values = pooled[order]
    from_ref = np.cumsum(order < n)
    # CDFs evaluated just after each pooled value (scipy's side='right'); inside a run of ties only
    # the last position is a real step, so KS looks at run ends only. Wasserstein multiplies by the
    # gap to the next value, which is zero inside a run of ties, so it needs no such care.
    gap = from_ref / n - (np.arange(1, n + m + 1) - from_ref) / m
    run_end = np.empty(n + m, dtype=bool)
    np.not_equal(values[1:], values[:-1], out=run_end[:-1])
    run_end[-1] = True
    steps = gap[run_end]
    ks = max(float(steps.max()), float(np.clip(-steps.min(), 0.0, 1.0)))
    wd = float(np.sum(np.abs(gap[:-1]) * np.diff(values)))
    return ks, wd


def ks_statistic(reference, current) -> np.ndarray | float:
    """Two-sample KS statistic per feature (equals ``scipy.stats.ks_2samp(...).statistic``)."""
    single = np.asarray(reference).ndim == 1
    out = RawReference.fit(reference).ks(current)
    return float(out[0]) if single else out


def wasserstein(reference, current) -> np.ndarray | float:
    """Wasserstein-1 distance per feature (equals ``scipy.stats.wasserstein_distance``)."""
    single = np.asarray(reference).ndim == 1
    out = RawReference.fit(reference).wasserstein(current)
    return float(out[0]) if single else out
