"""The one-pass linear path (fastpath._affine_path): the checked path's exact answers, bit for bit, with
one finiteness check of the scores in place of a check per step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "server_image"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from noria_server import fastpath  # noqa: E402
from test_fast_predict import F, fitted, probe_rows  # noqa: E402

LINEAR = ["logistic binary", "logistic 3 classes", "linear regression", "lasso", "elastic net"]


def checked(est: object) -> fastpath.FastPredictor:
    """The path with a check in every step, as compile_model built it before the one-pass path."""
    steps = [s for _, s in est.steps]  # type: ignore[attr-defined]
    transform, width = fastpath._chain(steps[:-1], F)
    final, classes, _ = fastpath._final(steps[-1], width)

    def run(x: np.ndarray) -> fastpath.Output | None:
        t = transform(x)
        return None if t is None else final(t)

    return fastpath.FastPredictor("checked", F, classes is not None, classes, run)


def same(a: fastpath.Output | None, b: fastpath.Output | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not np.array_equal(a[0], b[0], equal_nan=a[0].dtype.kind == "f") or a[0].dtype != b[0].dtype:
        return False
    if a[1] is None or b[1] is None:
        return a[1] is None and b[1] is None
    return a[1].tobytes() == b[1].tobytes()  # bit for bit, not within a tolerance


@pytest.mark.parametrize("name", LINEAR)
def test_bit_identical_to_the_checked_path_on_every_kind_of_row(name: str) -> None:
    est = fitted(name)
    fast, slow = fastpath.compile_model(est, F), checked(est)
    assert fast._run is not slow._run
    rows = probe_rows(seed=3, rows=600)  # NaN in ~5 % of cells, values far out, ±1e300
    overflow = rows[:40].copy()
    overflow[:, 1] = 1.7e308  # finite, but the scaler's (x - mean) / scale overflows to inf
    inf = np.nan_to_num(rows[40:80], nan=0.5)
    inf[::7, 2], inf[3::7, 5] = np.inf, -np.inf
    clean = np.nan_to_num(rows[80:], nan=0.25)
    outcomes = {"answered": 0, "left": 0}
    for block in (rows, overflow, inf, clean):
        for size in (1, 2, 6, 14, 64):
            for i in range(0, block.shape[0], size):
                batch = np.ascontiguousarray(block[i:i + size])
                got, expected = fast(batch), slow(batch)
                assert same(got, expected), (name, size, i)
                outcomes["answered" if got is not None else "left"] += 1
    assert outcomes["answered"] and outcomes["left"]  # both ways were taken


def test_nan_rows_are_imputed_not_answered_from_nan_scores() -> None:
    est = fitted("logistic binary")
    fast = fastpath.compile_model(est, F)
    row = probe_rows(seed=4, rows=20)[5:6].copy()
    row[0, :] = np.nan_to_num(row[0, :], nan=1.0)
    row[0, 3] = np.nan
    got = fast(row)
    assert got is not None and np.isfinite(got[1]).all()  # type: ignore[arg-type]
    imputed = row.copy()
    imputed[0, 3] = est.named_steps["impute"].statistics_[3]  # type: ignore[attr-defined]
    assert same(got, fast(imputed))


def test_only_imputer_scaler_passthrough_chains_take_it() -> None:
    trainer = fitted("logistic 4 classes, trainer pipeline")  # a ColumnTransformer in front
    steps = [s for _, s in trainer.steps]  # type: ignore[attr-defined]
    assert fastpath._affine_path(steps[:-1], steps[-1], F, lambda x: None) is None
    hgb = fitted("hgb binary")
    assert fastpath._affine_path([], hgb, F, lambda x: None) is None
    logistic = fitted("logistic binary")
    steps = [s for _, s in logistic.steps]  # type: ignore[attr-defined]
    assert fastpath._affine_path(steps[:-1], steps[-1], F, lambda x: None) is not None
