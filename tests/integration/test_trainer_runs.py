"""The trainer as a real process (``python -m noria_trainer run``), as a Job runs it; no cluster.

Checks what only a real process shows: the exit code, stdout as JSON lines ending with the
summary, the termination-log file, and that a SIGKILL in the middle of a run leaves no version.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from noria.artifact import sha256_file
from sklearn.datasets import load_breast_cancer
from training_helpers import start_trainer


def _run_spec(source: Path, store: Path, version: int, **extra) -> dict:
    return {"runId": f"cancer-r{version}", "trigger": "manual", "namespace": "ml", "pipeline": "cancer",
            "version": version, "champion": None, "storeRoot": f"file://{store}",
            "trustedDataPrefixes": [f"file://{source.parent}/"],  # the data lies beside the store
            "outputUri": f"file://{store}/ml/cancer/v{version}",
            "spec": {"model": {"task": "classification", "estimator": "sklearn.ensemble.RandomForestClassifier",
                               "params": {"n_estimators": 50}, "target": "target"},
                     "data": {"source": f"file://{source}"}, "evaluation": {"metric": "f1", "minScore": "0.8"}},
            **extra}


@pytest.fixture
def cancer_csv(tmp_path: Path) -> Path:
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path / "cancer.csv"
    frame.to_csv(path, index=False)
    return path


def test_real_process_succeeds_and_reports_through_the_termination_log(tmp_path, cancer_csv):
    store = tmp_path / "store"
    proc, log = start_trainer(tmp_path, _run_spec(cancer_csv, store, 1), "ok")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    summary = lines[-1]
    assert summary["status"] == "succeeded" and summary["verdict"] == "passed"
    assert all("stage" in line and "elapsed" in line for line in lines[:-1])
    assert json.loads(log.read_text()) == summary
    assert sha256_file(str(store / "ml/cancer/v1/model.skops")) == summary["digest"]


def test_real_process_exits_non_zero_with_the_reason_on_a_tampered_champion(tmp_path, cancer_csv):
    store = tmp_path / "store"
    first, _ = start_trainer(tmp_path, _run_spec(cancer_csv, store, 1), "first")
    first.communicate(timeout=300)
    assert first.returncode == 0
    model = store / "ml/cancer/v1/model.skops"
    digest = sha256_file(str(model))
    model.write_bytes(model.read_bytes()[:-1] + b"X")
    champion = {"name": "cancer-v1", "artifactUri": f"file://{model}", "digest": digest, "profileUri": None}
    proc, log = start_trainer(tmp_path, _run_spec(cancer_csv, store, 2, champion=champion), "second")
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 6
    summary = json.loads(log.read_text())
    assert summary == json.loads(stdout.splitlines()[-1])
    assert summary["failedStage"] == "champion" and "digest mismatch" in summary["reason"]
    assert not (store / "ml/cancer/v2").exists()


def test_sigkill_during_training_leaves_no_version_and_a_rerun_succeeds(tmp_path):
    rng = np.random.default_rng(0)
    n = 60_000
    frame = pd.DataFrame(rng.normal(size=(n, 10)), columns=[f"f{i}" for i in range(10)])
    frame["target"] = (frame["f0"] + frame["f1"] * frame["f2"] + rng.normal(0, 0.5, n) > 0).astype(int)
    source = tmp_path / "big.parquet"
    frame.to_parquet(source)
    store = tmp_path / "store"
    spec = _run_spec(source, store, 1)
    spec["spec"]["model"]["params"] = {"n_estimators": 300}
    proc, _ = start_trainer(tmp_path, spec, "killed")
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if json.loads(line).get("stage") == "training":
            break
        assert time.monotonic() < deadline
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    pipeline_dir = store / "ml/cancer"
    assert not (pipeline_dir / "v1").exists()

    spec["spec"]["model"]["params"] = {"n_estimators": 10}
    rerun, _ = start_trainer(tmp_path, spec, "rerun")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert sorted(p.name for p in pipeline_dir.iterdir()) == ["v1"]


def test_real_process_learns_from_fresh_feedback_when_the_data_is_stale(tmp_path):
    """The feedback loop as a Job runs it: the data source is weeks old, the labelled predictions of
    the last days are in the store's logs; a 3-day window trains on them (it used to exit 3, "window
    last 3d has no rows"), holds the newest of them out, and ships a model refit on all of them."""
    now = pd.Timestamp("2026-06-30T00:00:00Z")
    rng = np.random.default_rng(3)

    def events(n: int, newest_days_ago: float, oldest_days_ago: float) -> pd.DataFrame:
        x = rng.normal(size=(n, 3))
        return pd.DataFrame({"event_time": pd.date_range(now - pd.Timedelta(days=oldest_days_ago),
                                                         now - pd.Timedelta(days=newest_days_ago), periods=n),
                             "f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2],
                             "target": (x[:, 0] - x[:, 1] > 0).astype(int)})

    source = tmp_path / "stale.parquet"
    events(1000, 20, 40).to_parquet(source)
    store = tmp_path / "store"
    fresh = events(900, 0.01, 2.5)
    base = store / "ml" / "cancer"
    (base / "predictions" / "cancer-v1" / "2026-06-29").mkdir(parents=True)
    (base / "feedback" / "2026-06-29").mkdir(parents=True)
    with open(base / "predictions/cancer-v1/2026-06-29/pod-a-000001.jsonl", "w") as predictions, \
            open(base / "feedback/2026-06-29/pod-a-000001.jsonl", "w") as labels:
        for i, row in enumerate(fresh.itertuples(index=False)):
            stamp = row.event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            predictions.write(json.dumps({"id": f"p{i}", "ts": stamp, "model_version": "cancer-v1", "prediction": 0,
                                          "features": {"f0": row.f0, "f1": row.f1, "f2": row.f2}}) + "\n")
            labels.write(json.dumps({"id": f"p{i}", "ts": stamp, "label": int(row.target)}) + "\n")
    spec = _run_spec(source, store, 2, now=now.isoformat())
    spec["spec"]["data"] = {"source": f"file://{source}", "timestampColumn": "event_time",
                            "window": {"last": "3d"}, "feedback": {"enabled": True}}
    spec["spec"]["model"]["features"] = ["f0", "f1", "f2"]
    proc, log = start_trainer(tmp_path, spec, "feedback")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    summary = json.loads(log.read_text())
    assert summary == json.loads(stdout.splitlines()[-1])
    assert summary["verdict"] == "passed" and summary["rows"] == summary["feedbackRows"] == 900
    assert summary["refit"] == {"done": True, "rows": 900}
    report = json.loads((store / "ml/cancer/v2/report.json").read_text())
    assert report["evaluation"]["holdoutRows"] == report["evaluation"]["holdoutFeedbackRows"] == 180
    stages = [json.loads(line).get("stage") for line in stdout.splitlines()[:-1]]
    assert stages.index("feedback") < stages.index("window") < stages.index("refit") < stages.index("write")
