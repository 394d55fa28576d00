"""Dask runs (noria_trainer.dask_training) on a real in-process dask.distributed LocalCluster of two
worker processes: the run reads its files on the workers, trains XGBoost across both, and writes an
artifact set the server's loader accepts; scores and profiles added up over parts equal the ones
computed on all rows at once; a worker lost mid-training fails the run with a reason."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from noria import xgboost_artifact
from noria.artifact import load_verified
from noria.profile import Profile, build_profile
from noria_trainer import dask_training, training
from noria_trainer import data as data_mod
from noria_trainer import run as run_mod
from noria_trainer.dask_training import Part, PartReader, metrics_of, newest, part_score, split_parts

FILES, ROWS_PER_FILE = 4, 1500  # under SAMPLE_PER_PART: the profile's samples are every value
START = pd.Timestamp("2026-01-01", tz="UTC")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="1GiB"
    ) as local:
        yield local


@pytest.fixture
def scheduler(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(dask_training.SCHEDULER_ENV, cluster.scheduler_address)
    return cluster.scheduler_address


def write_data(root: Path, task: str, files: int = FILES, rows: int = ROWS_PER_FILE) -> Path:
    folder = root / "ml" / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(files):
        x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
        colour = rng.choice(["red", "green", "blue"], rows)
        score = x1 + 0.5 * x2 + (colour == "red") + 0.3 * rng.normal(size=rows)
        frame = pd.DataFrame(
            {
                "ts": START + pd.to_timedelta(np.arange(i * rows, (i + 1) * rows), unit="min"),
                "x1": x1,
                "x2": x2,
                "colour": colour,
                "label": (score > 0.6).astype(int) if task == "classification" else score,
            }
        )
        frame.loc[::29, "x2"] = np.nan
        frame = frame.sample(frac=1.0, random_state=i)  # each file sorted by the reader, not on disk
        frame.to_parquet(folder / f"part-{i:03d}.parquet")
    return folder


def run_spec(root: Path, task: str, estimator: str, engine: str = "dask", **extra: Any) -> dict[str, Any]:
    data = {"source": f"file://{root}/ml/data", "timestampColumn": "ts", **extra.pop("data", {})}
    return {
        "runId": "churn-r1",
        "trigger": "manual",
        "namespace": "ml",
        "pipeline": "churn",
        "version": 1,
        "storeRoot": f"file://{root}",
        "outputUri": f"file://{root}/ml/churn/v1",
        "now": "2026-02-01T00:00:00Z",
        "spec": {
            "model": {
                "task": task,
                "estimator": estimator,
                "target": "label",
                "params": extra.pop("params", {"n_estimators": 30, "max_depth": 4}),
            },
            "data": data,
            "compute": {"engine": engine},
            **extra,
        },
    }


def all_rows(folder: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p).sort_values("ts", kind="stable") for p in sorted(folder.glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True)


def test_a_dask_run_trains_across_workers_and_writes_a_model_the_server_loads(
    tmp_path: Path, scheduler: str
) -> None:
    folder = write_data(tmp_path, "classification")
    progress = io.StringIO()
    code, summary = run_mod.run_document(
        run_spec(tmp_path, "classification", "xgboost.XGBClassifier"), progress
    )
    assert code == 0, summary["reason"]
    assert summary["status"] == "succeeded" and summary["verdict"] == "passed"
    assert summary["artifactFormat"] == xgboost_artifact.ARTIFACT_FORMAT
    assert summary["artifactUri"].endswith(xgboost_artifact.MODEL_FILE)
    assert float(summary["metrics"]["f1"]) > 0.8
    stages = [json.loads(line)["stage"] for line in progress.getvalue().splitlines() if '"event"' in line]
    assert {"load", "split", "training", "evaluation", "refit", "write"} <= set(stages)

    model = load_verified(summary["artifactUri"], summary["digest"], f"file://{tmp_path}")
    rows = all_rows(folder)
    assert list(model.feature_names_in_) == ["x1", "x2", "colour"]
    accuracy = float((model.predict(rows) == rows["label"]).mean())
    assert accuracy > 0.85

    metadata = json.loads((tmp_path / "ml/churn/v1/metadata.json").read_text())
    holdout = training.holdout_size(len(rows), 0.2)
    assert metadata["data"]["rows"] == len(rows) and metadata["data"]["holdoutRows"] == holdout
    assert metadata["artifact"]["format"] == "xgboost-json" and metadata["model"]["engine"] == "dask"
    # the profile of the shipped (refit) model's rows, added up over parts, is the single-pod profile
    profile = Profile.from_dict(json.loads((tmp_path / "ml/churn/v1/profile.json").read_text()))
    expected = build_profile(
        {"x1": rows["x1"].to_numpy(), "x2": rows["x2"].to_numpy(), "colour": rows["colour"].tolist()},
        {"x1": "numeric", "x2": "numeric", "colour": "categorical"},
    )
    for name, fp in expected.features.items():
        np.testing.assert_allclose(profile.features[name].reference, fp.reference, atol=1e-9)
        assert profile.features[name].labels == fp.labels
    assert profile.rows == len(rows)
    # a retried pod of the same run finds the set its predecessor wrote and reports it again
    again_code, again = run_mod.run_document(
        run_spec(tmp_path, "classification", "xgboost.XGBClassifier"), io.StringIO()
    )
    assert (again_code, again["digest"], again["artifactUri"]) == (
        0,
        summary["digest"],
        summary["artifactUri"],
    )
    assert again["artifactFormat"] == xgboost_artifact.ARTIFACT_FORMAT


def test_a_rows_window_keeps_the_newest_rows_across_files(tmp_path: Path, scheduler: str) -> None:
    write_data(tmp_path, "regression")
    spec = run_spec(tmp_path, "regression", "xgboost.XGBRegressor", data={"window": {"last": "2000 rows"}})
    code, summary = run_mod.run_document(spec, io.StringIO())
    assert code == 0, summary["reason"]
    assert summary["rows"] == 2000
    metadata = json.loads((tmp_path / "ml/churn/v1/metadata.json").read_text())
    assert metadata["data"]["trainingRows"] + metadata["data"]["holdoutRows"] == 2000
    assert float(summary["metrics"]["r2"]) > 0.5


@pytest.mark.parametrize(
    ("engine", "estimator", "extra", "words"),
    [
        ("dask", "sklearn.ensemble.RandomForestClassifier", {}, "does not train on compute.engine dask"),
        ("single", "xgboost.XGBClassifier", {}, "trains on compute.engine dask only"),
        ("dask", "xgboost.XGBRegressor", {}, "model.estimator does not train on compute.engine dask"),
        ("dask", "xgboost.XGBClassifier", {"params": {"booster": "dart"}}, "takes no parameter(s) booster"),
        (
            "dask",
            "xgboost.XGBClassifier",
            {"data": {"feedback": {"enabled": True}}},
            "feedback is not available",
        ),
    ],
    ids=["sklearn-on-dask", "xgboost-on-single", "wrong-task", "unknown-param", "feedback-on-dask"],
)
def test_what_the_dask_engine_cannot_train_is_refused_at_the_spec_stage(
    tmp_path: Path, scheduler: str, engine: str, estimator: str, extra: dict[str, Any], words: str
) -> None:
    write_data(tmp_path, "classification", files=1, rows=50)
    code, summary = run_mod.run_document(
        run_spec(tmp_path, "classification", estimator, engine, **extra), io.StringIO()
    )
    assert code == run_mod.EXIT_SPEC, summary
    assert summary["failedStage"] == "spec" and words in summary["reason"]


def test_scores_added_up_over_parts_are_the_scores_of_the_whole_holdout(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    folder = write_data(tmp_path, "regression", files=3, rows=400)
    reader = PartReader("parquet", data_mod.UNSCOPED, "file", {}, "label", "ts", None)
    paths = [str(p) for p in sorted(folder.glob("*.parquet"))]
    split = split_parts(newest(paths, [400] * 3, None), 500)  # cuts the middle file in two
    holdout = pd.concat([reader.load(p) for p in split.holdout], ignore_index=True)
    assert len(holdout) == 500 and [p.start for p in split.holdout] == [300, 0]
    features = ["x1", "x2"]
    regression = LinearRegression().fit(holdout[features].fillna(0), holdout["label"])

    class Filled:  # predicts on rows with gaps, as a pipeline would
        def predict(self, rows: pd.DataFrame) -> np.ndarray:
            return regression.predict(rows.fillna(0))

    partials = [part_score(reader, part, Filled(), features, "regression") for part in split.holdout]
    whole = training.evaluate(Filled(), holdout[features], holdout["label"], "regression")
    assert metrics_of(partials, "regression") == pytest.approx(whole, rel=1e-9)

    holdout["label"] = (holdout["label"] > 0.6).astype(int)
    classifier = LogisticRegression().fit(holdout[features].fillna(0), holdout["label"])
    labelled = [Part(p.path, p.start, p.stop) for p in split.holdout]
    relabelled = PartReaderWithThreshold(reader)
    partials = [
        part_score(relabelled, part, _Fill(classifier), features, "classification") for part in labelled
    ]
    whole = training.evaluate(_Fill(classifier), holdout[features], holdout["label"], "classification")
    merged = metrics_of(partials, "classification")
    assert {k: v for k, v in merged.items() if k != "roc_auc"} == pytest.approx(
        {k: v for k, v in whole.items() if k != "roc_auc"}, rel=1e-12
    )


class _Fill:
    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        return self.model.predict(rows.fillna(0))


class PartReaderWithThreshold:
    """The same parts with the regression label turned into the class a threshold gives."""

    def __init__(self, reader: PartReader) -> None:
        self.reader, self.target = reader, reader.target

    def load(self, part: Part) -> pd.DataFrame:
        frame = self.reader.load(part)
        return frame.assign(label=(frame["label"] > 0.6).astype(int))


@pytest.mark.parametrize(
    ("counts", "rows", "expected"),
    [
        ([5, 5, 5], None, [("a", 0, 5), ("b", 0, 5), ("c", 0, 5)]),
        ([5, 5, 5], 7, [("b", 3, 5), ("c", 0, 5)]),
        ([5, 0, 5], 6, [("a", 4, 5), ("c", 0, 5)]),
        ([5, 5, 5], 99, [("a", 0, 5), ("b", 0, 5), ("c", 0, 5)]),
    ],
    ids=["all", "cuts-a-file", "skips-an-empty-file", "more-than-there-is"],
)
def test_a_rows_window_is_the_newest_rows_in_file_order(
    counts: list[int], rows: int | None, expected: list[tuple[str, int, int]]
) -> None:
    assert newest(["a", "b", "c"], counts, rows) == [Part(*e) for e in expected]


def test_a_worker_lost_during_training_fails_the_run_with_a_reason(tmp_path: Path) -> None:
    write_data(tmp_path, "classification", files=4, rows=3000)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        Client(local) as client,
    ):
        os.environ[dask_training.SCHEDULER_ENV] = local.scheduler_address
        victim = sorted(client.scheduler_info()["workers"])[1]
        pid = client.run(os.getpid, workers=[victim])[victim]

        class KillAtTraining(io.StringIO):
            def write(self, text: str) -> int:
                if '"stage": "training", "elapsed"' in text and '"event": "start"' in text:
                    threading.Thread(target=_kill_when_busy, args=(client, victim, pid), daemon=True).start()
                return super().write(text)

        try:
            spec = run_spec(
                tmp_path,
                "classification",
                "xgboost.XGBClassifier",
                params={"n_estimators": 400, "max_depth": 8},
            )
            started = time.monotonic()
            code, summary = run_mod.run_document(spec, KillAtTraining())
        finally:
            del os.environ[dask_training.SCHEDULER_ENV]
    assert code == run_mod.EXIT_TRAINING, summary
    assert summary["failedStage"] == "training"
    assert "left the cluster during training" in summary["reason"] and victim in summary["reason"]
    assert time.monotonic() - started < 120


def _kill_when_busy(client: Client, worker: str, pid: int) -> None:
    """SIGKILL the worker's process (as the kernel's OOM killer does) once it runs its training task."""
    deadline = time.monotonic() + 60
    while not client.processing(workers=[worker]).get(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_the_cut_sample_holds_every_feature_as_the_matrix_encodes_it() -> None:
    """Histogram cuts from the stats stage's samples instead of XGBoost's sketch of every row: every
    category gets its code at least once (in proportion to its count), numbers are subsampled to the
    cap, shorter columns padded with NaN (which XGBoost leaves out of the cuts)."""
    stats = dask_training.Stats(
        samples={"x": [np.arange(300.0), np.arange(300.0, 500.0)], "empty": []},
        categories={"c": Counter({"a": 90, "b": 9, "rare": 1})},
    )
    encoding = xgboost_artifact.Encoding(
        ("x", "c", "empty"),
        {"x": "numeric", "c": "categorical", "empty": "numeric"},
        {"c": ("a", "b", "rare")},
    )
    matrix = dask_training.cut_sample(stats, encoding, seed=0, rows=100)
    assert matrix.dtype == np.float32 and matrix.shape == (100, 3)
    x, c, empty = matrix.T
    assert len(set(x)) == 100 and set(x) <= set(range(500))  # 100 of the 500 values, none twice
    codes = c[~np.isnan(c)]
    assert {float(k): int((codes == k).sum()) for k in (0, 1, 2)} == {0.0: 90, 1.0: 9, 2.0: 1}
    assert np.isnan(empty).all()


@pytest.mark.parametrize("external_memory", [True, False], ids=["external-memory", "in-core"])
def test_a_workers_share_trains_from_cut_sample_cuts_with_max_bin_set(
    tmp_path: Path, external_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's task in a collective of one: the matrix (paged to disk, or in memory) takes its cuts
    from the sample, and a max_bin other than XGBoost's default trains (the booster is told it too)."""
    worker_tmp = tmp_path / "worker-tmp"  # this test's own temporary folder: other processes share /tmp
    worker_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))
    from xgboost.tracker import RabitTracker

    folder = write_data(tmp_path, "classification")
    reader = PartReader(
        "parquet",
        data_mod.source_scope(f"file://{folder}", f"file://{tmp_path}", "ml"),
        "file",
        {},
        "label",
        "ts",
        None,
    )
    parts = [Part(str(p)) for p in sorted(folder.glob("*.parquet"))]
    stats = dask_training.Stats()
    for part in parts:
        stats.merge(dask_training.part_stats(reader, part, True, 0))
    kinds = {"x1": "numeric", "x2": "numeric", "colour": "categorical"}
    encoding = xgboost_artifact.Encoding(("x1", "x2", "colour"), kinds, {"colour": ("blue", "green", "red")})
    params, rounds, max_bin = xgboost_training_params({"n_estimators": 20, "max_bin": 32})
    learner = dask_training.Learner(
        reader,
        encoding,
        (0, 1),
        params,
        rounds,
        max_bin,
        dask_training.cut_sample(stats, encoding, 0),
        external_memory,
    )
    tracker = RabitTracker(n_workers=1, host_ip="127.0.0.1", sortby="task")
    tracker.start()
    raw = dask_training._train_on_worker(learner, parts, tracker.worker_args())
    tracker.free()
    assert raw is not None
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    model = xgboost_artifact.XGBoostModel(booster, "classification", encoding, [0, 1])
    rows = all_rows(folder)
    assert float((model.predict(rows) == rows["label"]).mean()) > 0.85
    assert not list(worker_tmp.glob("noria-xgboost-*/window*"))  # the cache is gone


def xgboost_training_params(params: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    from noria_trainer.estimators import xgboost_params

    return xgboost_params("classification", params, 2, 0)
