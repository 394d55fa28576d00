"""Linear models on the Dask engine (noria_trainer.dask_linear), fitted by dask-ml on a real
in-process LocalCluster of two worker processes: the artifact is the single run's scikit-learn
Pipeline, loaded by the server's loader (digest, trusted types, skops) without dask-ml; its
preprocessing statistics are the ones scikit-learn learns on the same training rows, and its
coefficients are scikit-learn's within the solver's tolerance."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from noria.api import field_errors
from noria.artifact import load_verified
from noria.trusted_types import TRUSTED_TYPES
from noria_trainer import dask_linear, training
from noria_trainer import run as run_mod
from noria_trainer.estimators import build_pipeline
from test_dask_training import cluster, scheduler  # noqa: F401 (fixtures: one LocalCluster per module)

START = pd.Timestamp("2026-01-01", tz="UTC")
FEATURES = ["x1", "x2", "colour"]


def write_data(root: Path, target: str, files: int = 3, rows: int = 800) -> Path:
    """Numeric features on different scales with gaps, a categorical one with gaps, in shuffled files."""
    folder = root / "ml" / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(files):
        x1, x2 = rng.normal(3.0, 2.0, size=rows), rng.normal(-50.0, 20.0, size=rows)
        colour = rng.choice(["red", "green", "blue"], rows).astype(object)
        score = 0.8 * (x1 - 3.0) + 0.05 * (x2 + 50.0) + 1.5 * (colour == "red") + 0.4 * rng.normal(size=rows)
        labels = {
            "binary": (score > 0.5).astype(int),
            "three": np.digitize(score, [-0.5, 1.0]),
            "value": score,
        }
        frame = pd.DataFrame(
            {
                "ts": START + pd.to_timedelta(np.arange(i * rows, (i + 1) * rows), unit="min"),
                "x1": x1,
                "x2": x2,
                "colour": colour,
                "label": labels[target],
            }
        )
        frame.loc[::23, "x2"] = np.nan
        frame.loc[::31, "colour"] = None
        frame.sample(frac=1.0, random_state=i).to_parquet(folder / f"part-{i:03d}.parquet")
    return folder


def run_spec(root: Path, task: str, estimator: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "runId": "lin-r1",
        "trigger": "manual",
        "namespace": "ml",
        "pipeline": "lin",
        "version": 1,
        "storeRoot": f"file://{root}",
        "outputUri": f"file://{root}/ml/lin/v1",
        "now": "2026-02-01T00:00:00Z",
        "spec": {
            "model": {"task": task, "estimator": estimator, "target": "label", "params": params or {}},
            "data": {"source": f"file://{root}/ml/data", "timestampColumn": "ts"},
            "evaluation": {"minScore": "0.0"} if task == "classification" else {},
            "compute": {"engine": "dask"},
        },
    }


def training_rows(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows a single run trains on and holds out (files in name order, each sorted by time)."""
    frames = [pd.read_parquet(p).sort_values("ts", kind="stable") for p in sorted(folder.glob("*.parquet"))]
    rows = pd.concat(frames, ignore_index=True)
    holdout = training.holdout_size(len(rows), 0.2)
    return rows.iloc[: len(rows) - holdout], rows.iloc[len(rows) - holdout :]


def test_logistic_regression_on_dask_ships_the_single_runs_pipeline_with_its_statistics(
    tmp_path: Path, scheduler: str  # noqa: F811 (the imported fixture)
) -> None:
    folder = write_data(tmp_path, "binary")
    code, summary = run_mod.run_document(
        run_spec(tmp_path, "classification", "sklearn.linear_model.LogisticRegression"), io.StringIO()
    )
    assert code == 0, summary["reason"]
    assert summary["artifactFormat"] == "skops" and summary["artifactUri"].endswith("/model.skops")
    assert float(summary["metrics"]["f1"]) > 0.8
    # the server's loader: digest, the trusted-type audit, skops; no dask-ml object in it
    model = load_verified(summary["artifactUri"], summary["digest"], f"file://{tmp_path}")
    assert [type(s).__module__.split(".")[0] for _, s in model.steps] == ["sklearn", "sklearn"]
    metadata = json.loads((tmp_path / "ml/lin/v1/metadata.json").read_text())
    assert (
        metadata["model"]["learner"] == "dask_ml.linear_model.LogisticRegression"
        and metadata["artifact"]["format"] == "skops"
    )

    # the gate passed, so the shipped model is refit on the whole window: compare with scikit-learn there
    train, holdout = training_rows(folder)
    window = pd.concat([train, holdout])
    reference = build_pipeline(
        "sklearn.linear_model.LogisticRegression", "classification", {}, ["x1", "x2"], ["colour"], 0
    ).fit(window[FEATURES], window["label"])
    ours, theirs = model.named_steps["prepare"], reference.named_steps["prepare"]
    numeric, expected = ours.named_transformers_["numeric"], theirs.named_transformers_["numeric"]
    np.testing.assert_array_equal(
        numeric.named_steps["impute"].statistics_, expected.named_steps["impute"].statistics_
    )
    np.testing.assert_allclose(numeric.named_steps["scale"].mean_, expected.named_steps["scale"].mean_)
    np.testing.assert_allclose(numeric.named_steps["scale"].var_, expected.named_steps["scale"].var_)
    encoder = ours.named_transformers_["categorical"].named_steps["encode"]
    reference_encoder = theirs.named_transformers_["categorical"].named_steps["encode"]
    assert [list(c) for c in encoder.categories_] == [list(c) for c in reference_encoder.categories_]
    np.testing.assert_array_equal(model.classes_, reference.classes_)
    # the same objective (the intercept unpenalised), so the same coefficients within the solvers' tolerance
    # (L-BFGS stops at a gradient of 1e-4 of a loss summed over 2400 rows)
    np.testing.assert_allclose(
        model.named_steps["model"].coef_, reference.named_steps["model"].coef_, rtol=0.01, atol=0.03
    )
    np.testing.assert_allclose(
        model.named_steps["model"].intercept_, reference.named_steps["model"].intercept_, rtol=0.01, atol=0.03
    )
    ours_p, theirs_p = model.predict_proba(window[FEATURES]), reference.predict_proba(window[FEATURES])
    assert np.abs(ours_p - theirs_p).max() < 0.01
    assert (model.predict(window[FEATURES]) == reference.predict(window[FEATURES])).mean() > 0.99


@pytest.mark.parametrize(
    ("estimator", "params", "reference_params"),
    [
        ("sklearn.linear_model.LinearRegression", {}, {}),
        ("sklearn.linear_model.Ridge", {"alpha": 50.0}, {"alpha": 50.0}),
    ],
    ids=["linear", "ridge"],
)
def test_linear_and_ridge_regression_on_dask_fit_scikit_learns_coefficients(
    tmp_path: Path, scheduler: str, estimator: str, params: dict[str, Any], reference_params: dict[str, Any]  # noqa: F811 (the imported fixture)
) -> None:
    folder = write_data(tmp_path, "value")
    code, summary = run_mod.run_document(run_spec(tmp_path, "regression", estimator, params), io.StringIO())
    assert code == 0, summary["reason"]
    model = load_verified(summary["artifactUri"], summary["digest"], f"file://{tmp_path}")
    train, holdout = training_rows(folder)
    window = pd.concat([train, holdout])
    reference = build_pipeline(estimator, "regression", reference_params, ["x1", "x2"], ["colour"], 0).fit(
        window[FEATURES], window["label"]
    )
    ours, theirs = model.named_steps["model"], reference.named_steps["model"]
    if estimator.endswith("Ridge"):
        np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-3, atol=1e-3)
    else:  # the one-hot columns add up to the intercept's: only the numeric coefficients are unique
        np.testing.assert_allclose(ours.coef_[:2], theirs.coef_[:2], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        model.predict(window[FEATURES]), reference.predict(window[FEATURES]), atol=1e-3
    )
    assert float(summary["metrics"]["r2"]) > 0.7


def test_three_classes_are_refused_with_the_reason(tmp_path: Path, scheduler: str) -> None:  # noqa: F811 (the imported fixture)
    write_data(tmp_path, "three", files=1, rows=300)
    code, summary = run_mod.run_document(
        run_spec(tmp_path, "classification", "sklearn.linear_model.LogisticRegression"), io.StringIO()
    )
    assert code == run_mod.EXIT_VALIDATION, summary
    assert "separates two classes; the target has 3" in summary["reason"]


@pytest.mark.parametrize(
    ("estimator", "params", "words"),
    [
        ("sklearn.linear_model.LogisticRegression", {"penalty": "l1"}, "takes no parameter(s) penalty"),
        ("sklearn.linear_model.Ridge", {"alpha": -1}, "spec.model.params.alpha must be at least 0"),
        ("sklearn.linear_model.LogisticRegression", {"C": "big"}, "spec.model.params.C must be a number"),
        ("sklearn.linear_model.Lasso", {}, "spec.model.estimator: model.estimator does not train on compute"),
    ],
    ids=["unknown-param", "negative-alpha", "string-C", "lasso"],
)
def test_what_the_linear_learner_cannot_take_is_refused_at_the_spec_stage(
    tmp_path: Path, scheduler: str, estimator: str, params: dict[str, Any], words: str  # noqa: F811 (the imported fixture)
) -> None:
    write_data(tmp_path, "value", files=1, rows=50)
    task = "classification" if estimator.endswith("LogisticRegression") else "regression"
    code, summary = run_mod.run_document(run_spec(tmp_path, task, estimator, params), io.StringIO())
    assert code == run_mod.EXIT_SPEC, summary
    assert summary["failedStage"] == "spec" and words in summary["reason"], summary["reason"]


def pipeline_doc(estimator: str, task: str = "classification", engine: str = "dask") -> dict[str, Any]:
    return {
        "apiVersion": "noria.dev/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "p"},
        "spec": {
            "model": {"task": task, "estimator": estimator, "target": "y"},
            "data": {"source": "file:///var/lib/noria/store/datasets/ml/p/"},
            "compute": {"engine": engine},
        },
    }


def test_the_api_refuses_an_estimator_the_dask_engine_does_not_train_naming_the_field() -> None:
    assert not field_errors(pipeline_doc("sklearn.linear_model.LogisticRegression"))
    assert not field_errors(pipeline_doc("sklearn.linear_model.Ridge", "regression"))
    assert not field_errors(pipeline_doc("sklearn.ensemble.RandomForestClassifier", engine="single"))
    for doc in (
        pipeline_doc("sklearn.ensemble.RandomForestClassifier"),
        pipeline_doc("sklearn.linear_model.Ridge"),  # a regressor for a classification task
    ):
        errors = " ".join(map(str, field_errors(doc)))
        assert "model.estimator" in errors and "does not train on compute.engine dask" in errors, errors


def test_the_median_is_exact_below_the_sample_cap_and_weighted_above() -> None:
    values = np.arange(11, dtype=float)
    assert dask_linear.median_of([(values[:4], 1.0), (values[4:], 1.0)]) == np.median(values)
    assert dask_linear.median_of([(np.arange(10.0), 1.0), (np.arange(10.0), 1.0)]) == 4.5
    # a part of 1000 values sampled to 10 weighs 100 per value: it holds the median
    assert dask_linear.median_of([(np.full(10, 7.0), 100.0), (np.zeros(5), 1.0)]) == 7.0
    assert np.isnan(dask_linear.median_of([]))


def test_an_assembled_pipeline_writes_only_trusted_types() -> None:
    import zipfile

    from noria.artifact import dumps_model
    from noria_trainer.written_types import schema_nodes

    prepared = dask_linear.Prepared(
        ("a", "b"),
        ("c",),
        (0.5, 1.0),
        (0.1, 2.0),
        (1.0, 4.0),
        (1.0, 2.0),
        {"c": ("__missing__", "x", "y")},
        100,
    )
    for path, task, classes in (
        ("sklearn.linear_model.LogisticRegression", "classification", ("no", "yes")),
        ("sklearn.linear_model.LinearRegression", "regression", None),
        ("sklearn.linear_model.Ridge", "regression", None),
    ):
        model = dask_linear.assemble(
            path,
            task,
            {},
            ["a", "b", "c"],
            prepared,
            np.arange(5.0),
            0.25,
            classes,
            0,  # type: ignore[arg-type]
        )
        data, _ = dumps_model(model)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            nodes = set(schema_nodes(json.loads(archive.read("schema.json"))))
        untrusted = sorted(
            f"{loader}: {name}" for loader, name in nodes if name not in TRUSTED_TYPES.get(loader, ())
        )
        assert not untrusted, untrusted
        row = pd.DataFrame({"a": [np.nan], "b": [3.0], "c": ["y"]})
        # a = median 0.5 → (0.5 - 0.1) / 1; b = (3 - 2) / 2; c = one-hot (0, 0, 1): coef 0..4
        raw = 0.4 * 0 + 0.5 * 1 + 1.0 * 4 + 0.25
        if classes:
            assert model.predict(row)[0] == "yes" and model.predict_proba(row)[0, 1] == pytest.approx(
                1 / (1 + np.exp(-raw))
            )
        else:
            assert model.predict(row)[0] == pytest.approx(raw)
