"""The fast predict path (noria_server.fastpath): scikit-learn's answers from the fitted arrays, used
only when verified at warm-up, and scikit-learn for everything else."""

from __future__ import annotations

import copy
import functools
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "server_image"))

from noria_server import fastpath  # noqa: E402
from noria_server.fastpath import FastPredictor, Unsupported, compile_model, verify  # noqa: E402
from noria_server.model import ServedModel  # noqa: E402

F = 8
NAMES = [f"f{i}" for i in range(F)]


def training(n_classes: int = 2, rows: int = 600, seed: int = 0, nan_share: float = 0.05) -> tuple[pd.DataFrame,
                                                                                                   np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, F)) * np.linspace(0.5, 50, F) + np.linspace(-3, 100, F)
    score = (x[:, 0] - x[:, 1] / 10 + 0.05 * x[:, 2] * x[:, 3] / 50 + rng.normal(scale=0.3, size=rows))
    x[rng.random(x.shape) < nan_share] = np.nan
    frame = pd.DataFrame(x, columns=NAMES)
    if n_classes == 0:  # regression, positive for the log-link losses
        return frame, np.exp(score / (np.abs(score).max() + 1e-9))
    cuts = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    return frame, np.array(["a", "b", "c", "d"])[np.searchsorted(cuts, score)]


def probe_rows(seed: int = 1, rows: int = 1500) -> np.ndarray:
    """Random rows around and far outside the training range, some NaN, some extreme."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, F)) * np.linspace(0.5, 50, F) * rng.choice([1, 3, 100], size=(rows, 1))
    x += np.linspace(-3, 100, F)
    x[rng.random(x.shape) < 0.05] = np.nan
    extremes = np.array([1e300, -1e300, 0.0, -0.0, 1e-300])[:rows, None]
    x[:extremes.shape[0]] = extremes  # in every column
    return x


def frame(rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=NAMES)


def answer(fast: FastPredictor, rows: np.ndarray, chunk: int = 50) -> tuple[np.ndarray, np.ndarray | None]:
    """The fast path's answers for many rows, in batches it takes (HGB leaves large ones to scikit-learn)."""
    outs = [fast(rows[i:i + chunk]) for i in range(0, rows.shape[0], chunk)]
    assert all(o is not None for o in outs)
    labels = np.concatenate([o[0] for o in outs])  # type: ignore[index]
    return labels, (None if outs[0][1] is None else np.concatenate([o[1] for o in outs]))  # type: ignore[index]


def linear_pipeline(final: object, impute: bool = True) -> object:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = ([("impute", SimpleImputer())] if impute else []) + [("scale", StandardScaler()), ("model", final)]
    return Pipeline(steps)


def trainer_style(final: object, scale: bool) -> object:
    """The Pipeline noria_trainer.estimators.build_pipeline writes for numeric features."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    numeric = [("impute", SimpleImputer(strategy="median"))] + ([("scale", StandardScaler())] if scale else [])
    prepare = ColumnTransformer([("numeric", Pipeline(numeric), NAMES)], remainder="drop", sparse_threshold=0.0)
    return Pipeline([("prepare", prepare), ("model", final)])


def models() -> dict[str, tuple[object, int]]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge

    return {
        "logistic binary": (linear_pipeline(LogisticRegression(max_iter=1000)), 2),
        "logistic 3 classes": (linear_pipeline(LogisticRegression(max_iter=1000)), 3),
        "logistic 4 classes, trainer pipeline": (trainer_style(LogisticRegression(C=0.1, max_iter=1000), True), 4),
        "linear regression": (linear_pipeline(LinearRegression()), 0),
        "ridge, trainer pipeline": (trainer_style(Ridge(alpha=3.0), True), 0),
        "lasso": (linear_pipeline(Lasso(alpha=0.01)), 0),
        "elastic net": (linear_pipeline(ElasticNet(alpha=0.01)), 0),
        "hgb binary": (HistGradientBoostingClassifier(max_iter=60, random_state=0), 2),
        "hgb 3 classes": (HistGradientBoostingClassifier(max_iter=30, random_state=0), 3),
        "hgb regressor": (HistGradientBoostingRegressor(max_iter=40, random_state=0), 0),
        "hgb poisson (log link)": (HistGradientBoostingRegressor(loss="poisson", max_iter=40, random_state=0), 0),
        "hgb, trainer pipeline": (trainer_style(HistGradientBoostingClassifier(max_iter=40, random_state=0), False),
                                  2),
    }


MODELS = models()


@pytest.fixture(autouse=True)
def one_native_thread() -> object:
    # As the server runs (noria_server.__main__): HGB's OpenMP threads on a busy machine make each
    # scikit-learn predict ~100x slower, which only slows the test down.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@functools.cache
def _fitted(name: str) -> object:
    from sklearn.base import clone

    est, classes = MODELS[name]
    return clone(est).fit(*training(classes))  # every linear one has an imputer: NaN in training is fine


def fitted(name: str) -> object:
    return copy.deepcopy(_fitted(name))


@pytest.mark.parametrize("name", list(MODELS))
def test_same_answers_as_scikit_learn_on_many_rows(name: str) -> None:
    est = fitted(name)
    fast = compile_model(est, F)
    rows = probe_rows()
    labels, proba = answer(fast, rows)
    expected = est.predict(frame(rows))
    if fast.is_classifier:
        assert labels.dtype == expected.dtype and np.array_equal(labels, expected)
        np.testing.assert_allclose(proba, est.predict_proba(frame(rows)), rtol=fastpath.RTOL, atol=fastpath.ATOL)
        assert set(np.unique(labels)) <= set(est.classes_)
    else:
        assert proba is None
        np.testing.assert_allclose(labels, expected, rtol=fastpath.RTOL, atol=fastpath.ATOL)
    for i in range(0, 40, 7):  # one-row calls as the server makes them
        one = fast(rows[i:i + 1])
        assert one is not None
        np.testing.assert_allclose(one[0] if not fast.is_classifier else 0, 0 if fast.is_classifier else
                                   expected[i:i + 1], rtol=fastpath.RTOL, atol=fastpath.ATOL)
        if fast.is_classifier:
            assert np.array_equal(one[0], expected[i:i + 1])
    assert verify(fast, est, frame, rows[:40], fast.is_classifier) is None


def test_large_hgb_batches_go_to_scikit_learn() -> None:
    est = fitted("hgb binary")
    fast = compile_model(est, F)
    assert fast.max_rows is not None and 16 <= fast.max_rows < 1000
    rows = np.nan_to_num(probe_rows(rows=fast.max_rows + 6)[5:])
    assert fast(rows[:-1]) is not None and fast(rows) is None
    assert verify(fast, est, frame, rows, True) is None  # leaving them is not a disagreement
    model = served(est)
    model.warm_up(16)
    assert model.fast is not None
    assert np.array_equal(model.predict(rows)[0], est.predict(frame(rows)))
    assert compile_model(fitted("logistic binary"), F).max_rows is None


def test_how_close_the_benchmark_model_kinds_are() -> None:
    # What the doc claims: HGB's trees give bit-identical probabilities (same comparisons, same
    # running sum); the linear pipeline's scores differ from scikit-learn's matrix product by a few
    # units in the last place, far inside RTOL, and labels never differ.
    rows = probe_rows(seed=5)[10:]
    hgb = fitted("hgb binary")
    labels, proba = answer(compile_model(hgb, F), rows)
    assert np.array_equal(labels, hgb.predict(frame(rows)))
    assert np.array_equal(proba, hgb.predict_proba(frame(rows)))
    logistic = fitted("logistic binary")
    labels, proba = answer(compile_model(logistic, F), rows)
    assert np.array_equal(labels, logistic.predict(frame(rows)))
    expected = logistic.predict_proba(frame(rows))
    assert np.nanmax(np.abs(proba - expected)) < 1e-14
    tiny = expected > 1e-300
    assert np.nanmax(np.abs(proba - expected)[tiny] / expected[tiny]) < fastpath.RTOL


def test_infinity_and_unimputed_nan_are_left_to_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = training(2, nan_share=0.0)
    est = linear_pipeline(LogisticRegression(max_iter=1000), impute=False).fit(x, y)
    fast = compile_model(est, F)
    rows = probe_rows(seed=2, rows=50)
    clean = np.nan_to_num(rows, nan=1.0)
    assert fast(clean) is not None
    assert fast(rows) is None  # NaN and no imputer: scikit-learn raises, so it must see these rows
    with pytest.raises(ValueError):
        est.predict(frame(rows))
    inf = clean.copy()
    inf[3, 2] = np.inf
    assert fast(inf) is None
    assert fast(clean[5:].astype(np.float32)) is None and fast(clean[:, :-1]) is None
    # with an imputer NaN is answered (as scikit-learn does) and inf still is not
    imputed = linear_pipeline(LogisticRegression(max_iter=1000)).fit(x, y)
    assert compile_model(imputed, F)(rows) is not None and compile_model(imputed, F)(inf) is None


def test_hgb_answers_nan_and_infinity_like_scikit_learn() -> None:
    est = fitted("hgb binary")
    rows = probe_rows(seed=3, rows=400)
    rows[::3, 0], rows[1::3, 1], rows[2::7, :] = np.nan, np.inf, -np.inf
    labels, proba = answer(compile_model(est, F), rows)
    assert np.array_equal(labels, est.predict(frame(rows)))
    assert np.array_equal(proba, est.predict_proba(frame(rows)))


@pytest.mark.parametrize("name", ["hgb binary", "hgb 3 classes", "hgb regressor", "hgb poisson (log link)"])
def test_hgb_small_batches_compare_every_node_with_the_same_answers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of at most HGB_SMALL_ROWS rows (one row: every batch at low rates) take every node's comparison at
    once: the same leaves, bit for bit, as the level-by-level walk and scikit-learn, NaN and +-inf included, and
    a one-row call well under half the walk's CPU (~23 against ~87 us for the benchmark's 100-tree model)."""
    import timeit

    est = fitted(name)
    fast = compile_model(est, F)
    rows = probe_rows(seed=7, rows=300)
    rows[::4, 0], rows[1::5, 1], rows[2::9, 2] = np.nan, np.inf, -np.inf
    classifier = fast.is_classifier
    expected = est.predict_proba(frame(rows)) if classifier else est.predict(frame(rows))

    def answers(n: int) -> np.ndarray:
        out = [fast(rows[i:i + n]) for i in range(0, rows.shape[0], n)]
        return np.concatenate([o[1] if classifier else o[0] for o in out])  # type: ignore[index]

    assert fastpath.HGB_SMALL_ROWS >= 1
    small = {n: answers(n) for n in range(1, fastpath.HGB_SMALL_ROWS + 2)}
    for got in small.values():
        assert got.tobytes() == expected.tobytes()
    one = rows[1:2].copy()
    quick = min(timeit.repeat(lambda: fast(one), number=200, repeat=7))
    monkeypatch.setattr(fastpath, "HGB_SMALL_ROWS", 0)  # every batch walks level by level
    assert answers(1).tobytes() == expected.tobytes()
    walk = min(timeit.repeat(lambda: fast(one), number=200, repeat=7))
    assert quick < 0.6 * walk, (quick, walk)


def test_models_it_does_not_model_are_refused_with_a_reason() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    x, y = training(2, nan_share=0.0)
    with pytest.raises(Unsupported, match="RandomForestClassifier"):
        compile_model(RandomForestClassifier(n_estimators=3).fit(x, y), F)
    from sklearn.pipeline import Pipeline
    with pytest.raises(Unsupported, match="MinMaxScaler"):
        compile_model(Pipeline([("s", MinMaxScaler()), ("m", LogisticRegression())]).fit(x, y), F)
    cat = x.copy()
    cat["f0"] = (cat["f0"] > 0).astype("category")
    hgb = HistGradientBoostingClassifier(max_iter=5, categorical_features="from_dtype").fit(cat, y)
    with pytest.raises(Unsupported, match="categorical"):
        compile_model(hgb, F)

    class OwnLogistic(LogisticRegression):  # a subclass may predict differently: not recognised
        pass

    with pytest.raises(Unsupported):
        compile_model(OwnLogistic().fit(x, y), F)


def served(est: object) -> ServedModel:
    return ServedModel.from_estimator(est, None)


def test_served_model_uses_the_verified_fast_path_and_the_same_answers(caplog: pytest.LogCaptureFixture) -> None:
    for name in ("logistic binary", "hgb 3 classes", "ridge, trainer pipeline"):
        est = fitted(name)
        model = served(est)
        with caplog.at_level(logging.INFO, logger="noria_server.model"):
            model.warm_up(32)
        assert model.fast is not None, model.fast_reason
        assert "fast predict path on" in caplog.text
        rows = probe_rows(seed=4, rows=64)
        labels, proba = model.predict(rows)
        assert np.array_equal(labels, est.predict(frame(rows))) if model.is_classifier else \
            np.allclose(labels, est.predict(frame(rows)), rtol=1e-12)
        if model.proba_is_free:
            assert proba is not None and np.allclose(proba, est.predict_proba(frame(rows)), rtol=1e-12)
        caplog.clear()


def test_served_model_falls_back_for_rows_the_fast_path_leaves() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = training(2, nan_share=0.0)
    model = served(linear_pipeline(LogisticRegression(max_iter=1000), impute=False).fit(x, y))
    model.warm_up(16)
    assert model.fast is not None, model.fast_reason
    rows = probe_rows(seed=6, rows=4)
    rows[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # scikit-learn's own error, as without the fast path
        model.predict(rows)


def test_an_unmodelled_model_is_served_by_scikit_learn(caplog: pytest.LogCaptureFixture) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = training(2, nan_share=0.0)
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    model = served(est)
    with caplog.at_level(logging.INFO, logger="noria_server.model"):
        model.warm_up(16)
    assert model.fast is None and model.fast_reason.startswith("not modelled")
    assert "RandomForestClassifier" in caplog.text
    rows = np.nan_to_num(probe_rows(rows=30)[5:])  # a forest works in float32: no 1e300
    assert np.array_equal(model.predict(rows)[0], est.predict(frame(rows)))


def test_a_fitted_attribute_it_does_not_model_makes_it_disagree_and_fall_back() -> None:
    # The fast path assumes a binary HGB classifier's probabilities are expit(raw), as the binomial
    # loss gives them; with another fitted loss scikit-learn answers otherwise and warm-up sees it.
    from sklearn._loss.loss import ExponentialLoss

    est = fitted("hgb binary")
    est._loss = ExponentialLoss()  # type: ignore[attr-defined]
    compile_model(est, F)  # recognised...
    model = served(est)
    model.warm_up(16)
    assert model.fast is None and model.fast_reason.startswith("disagrees"), model.fast_reason  # ...not used
    rows = np.nan_to_num(probe_rows(rows=20))
    labels, proba = model.predict(rows)
    assert np.array_equal(labels, est.predict(frame(rows)))
    assert proba is not None and np.array_equal(proba, est.predict_proba(frame(rows)))


def test_a_disagreeing_fast_path_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    est = fitted("logistic binary")
    real = compile_model(est, F)

    def off_by_one_row(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
        out = real(x)
        if out is None or x.shape[0] < 100:
            return out
        labels = out[0].copy()
        labels[57] = "b" if labels[57] == "a" else "a"
        return labels, out[1]

    wrong = FastPredictor("wrong", F, True, real.classes, off_by_one_row)
    monkeypatch.setattr("noria_server.model.compile_model", lambda *_: wrong)
    model = served(est)
    model.warm_up(16)
    assert model.fast is None and "labels differ on 1 of" in model.fast_reason


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORIA_FAST_PREDICT", "0")
    model = served(fitted("hgb binary"))
    model.warm_up(16)
    assert model.fast is None and "off" in model.fast_reason


@pytest.mark.parametrize("path,task,classes", [
    ("sklearn.linear_model.LogisticRegression", "classification", 3),
    ("sklearn.linear_model.Ridge", "regression", 0),
    ("sklearn.ensemble.HistGradientBoostingClassifier", "classification", 2),
])
def test_the_trainers_pipeline_saved_and_loaded_as_served(path: str, task: str, classes: int, tmp_path: Path) -> None:
    # What a single training run writes (noria_trainer.estimators.build_pipeline, skops), loaded by the
    # server's own loader: the fast path is on and gives the estimator's answers.
    from noria.artifact import dumps_model, sha256_digest
    from noria_trainer.estimators import build_pipeline

    x, y = training(classes)
    est = build_pipeline(path, task, {}, NAMES, [], seed=0).fit(x, y)  # type: ignore[arg-type]
    data, _ = dumps_model(est)
    (tmp_path / "model.skops").write_bytes(data)
    model = ServedModel.load(f"file://{tmp_path}/model.skops", sha256_digest(data), None)
    model.warm_up(16)
    assert model.fast is not None, model.fast_reason
    assert model.fast_reason.startswith("on: ColumnTransformer")
    rows = probe_rows(seed=7, rows=60)
    labels, _ = model.predict(rows)
    expected = model.estimator.predict(frame(rows))
    if model.is_classifier:
        assert np.array_equal(labels, expected)
    else:
        np.testing.assert_allclose(labels, expected, rtol=fastpath.RTOL, atol=fastpath.ATOL)
