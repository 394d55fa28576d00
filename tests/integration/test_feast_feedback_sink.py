"""Labelled production rows back into Feast (issue 18 item 3) against the real thing: the model server
with online features and a feedback push source, Feast's feature server (``feast serve`` from
.venv-feast) over the test bed's Redis, the example repository applied and materialized. Keys in,
labels posted: the server pushes the rows (keys, features as served, prediction, label, times) to
``/push``; Feast's file offline store appends them; Feast's offline retrieval (the trainer's
``feast_source.pushed_rows``) reads them back as they were served; and a real trainer run whose
pipeline names the push source trains on them when they are inside its window and not otherwise
(a row pushed with an old prediction time stays out)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import served_model_server
from feast_helpers import ENV, apply_repository, feast_python
from noria import metrics as m
from noria_server import feast_sink, online
from noria_server.model import ServedModel
from noria_server.serve import ModelServer, ServeSettings
from sklearn.linear_model import LogisticRegression
from test_feast_online_store import FEATURES, RECENT, feature_server, newest, redis  # noqa: F401

pytestmark = pytest.mark.integration

KEYS = [9001, 0, 1]
LABELS = [1, 0, 1]
OLD = "2025-01-15T00:00:00Z"  # a pushed row predicted long before the pipeline's window


@pytest.fixture(scope="module")
def repository(redis, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The example applied in a store's shared datasets/ folder (where a pipeline may read it) and
    materialized into Redis; feature_server (test_feast_online_store) serves it."""
    from noria_testbed.feast_server import materialize

    feast_python()
    store = tmp_path_factory.mktemp("store")
    folder = apply_repository(store / "datasets" / "feast-churn", extra_stats=RECENT, customers=50)
    materialize(folder, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=1),
                redis_connection=redis.feast_connection_string())
    return folder


def model_server(url: str) -> ModelServer:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"tenure_months": rng.integers(1, 72, 300), "monthly_charges": rng.normal(60, 25, 300),
                          "support_calls": rng.integers(0, 8, 300)}).astype(float)
    estimator = LogisticRegression().fit(frame, ((frame["support_calls"] > 3) | (frame["tenure_months"] < 6)).astype(int))
    server = ModelServer(ServeSettings(
        artifact_uri="file:///unused", digest="sha256:0", model="churn", version="churn-v1", prediction_log=False,
        online_features=online.OnlineFeatureSettings(url=url, entity_keys=("customer_id",),
                                                     feature_service="churn_v1", timeout=2.0),
        feedback_sink=feast_sink.SinkSettings(push_source="churn_feedback", flush_seconds=0.2)))
    server.model = ServedModel.from_estimator(estimator, None)
    server.make_feedback_sink()  # as loading does once the model is there
    server.state = server.reason = "ready"
    return server


def sample(server: ModelServer, outcome: str) -> float:
    return server.metrics.registry.get_sample_value(
        m.FEEDBACK_SINK_ROWS_TOTAL, {"model": "churn", "version": "churn-v1", "outcome": outcome}) or 0.0


# In the Feast venv: the trainer's reader of the push source, then a real trainer run on the repository.
_READ_AND_TRAIN = """
import json, sys
from noria_trainer.feast_source import pushed_rows
from noria_trainer.spec import FeastData
from noria_trainer.__main__ import main
repository, spec_path, log_path = sys.argv[1:4]
rows = pushed_rows(FeastData(repository, "churn_v1", None, "churn_feedback"), "label_time", "churned",
                   ["tenure_months", "monthly_charges", "support_calls"])
frame = rows.frame.assign(label_time=rows.frame["label_time"].map(lambda t: t.isoformat()))
print(json.dumps({"read": rows.read, "rows": json.loads(frame.to_json(orient="records"))}))
code = main(["run", "--spec", spec_path, "--termination-log", log_path])
print(json.dumps({"exit": code}))
"""


async def test_labelled_rows_reach_feast_and_the_next_training_set_within_its_window(
        feature_server, repository: Path, tmp_path: Path) -> None:  # noqa: F811
    started = time.monotonic()
    stored = newest(repository)
    server = model_server(feature_server.url)
    async with served_model_server.Served(server, timeout=30) as s:
        t0 = datetime.now(UTC)
        answer = await s.client.post("/v2/models/churn/infer", json={"id": "req", "inputs": [
            {"name": "customer_id", "shape": [len(KEYS)], "datatype": "INT64", "data": KEYS}]})
        assert answer.status_code == 200, answer.text
        predicted = answer.json()["outputs"][0]["data"]
        feedback = await s.client.post("/v2/models/churn/feedback", json={"feedback": [
            {"id": f"req-{i}", "label": label} for i, label in enumerate(LABELS)]})
        assert feedback.json()["outcomes"]["counted"] == 3, feedback.text
        deadline = time.monotonic() + 30
        while sample(server, m.SINK_PUSHED) < 3:
            assert sample(server, m.SINK_FAILED) + sample(server, m.SINK_REJECTED) == 0
            assert time.monotonic() < deadline, "the rows were not pushed within 30 s"
            await asyncio.sleep(0.1)
        await server.sink.stop()  # type: ignore[union-attr]
    pushed_at = time.monotonic() - started
    # A row as another pod would push it, predicted long ago: Feast takes it, the window must not.
    old = {"customer_id": [1], **{f: [1.0] for f in FEATURES}, "prediction": [0], "label": [1],
           "prediction_id": ["old-0"], "model_version": ["churn-v0"], "event_timestamp": [OLD], "labelled_at": [OLD]}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{feature_server.url}/push", json={
            "push_source_name": "churn_feedback", "df": old, "to": "offline"})
    assert answer.status_code == 200, answer.text

    # Feast's file offline store appended them to the push source's batch file.
    written = pd.read_parquet(repository / "data" / "churn_feedback.parquet")
    assert sorted(written["prediction_id"]) == ["old-0", "req-0", "req-1", "req-2"]

    spec = {
        "runId": "churn-r2", "trigger": "manual", "namespace": "ml", "pipeline": "churn", "version": 2,
        "champion": None, "storeRoot": f"file://{repository.parent.parent}",
        "outputUri": f"file://{repository.parent.parent}/ml/churn/v2",
        "spec": {
            "model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                      "params": {"max_iter": 500}, "target": "churned"},
            "data": {"source": f"file://{repository}/labels.parquet", "timestampColumn": "label_time",
                     "window": {"last": "400d"},
                     "feast": {"repository": f"file://{repository}", "featureService": "churn_v1",
                               "feedbackPushSource": "churn_feedback"}},
            "evaluation": {"metric": "accuracy"},
        },
    }
    spec_path, log_path = tmp_path / "spec.json", tmp_path / "termination-log"
    spec_path.write_text(json.dumps(spec))
    t1 = time.monotonic()
    done = subprocess.run([feast_python(), "-c", _READ_AND_TRAIN, f"file://{repository}", str(spec_path),
                           str(log_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    read, code = lines[0], lines[-1]["exit"]
    print(f"pushed in {pushed_at:.1f}s, read + trained in {time.monotonic() - t1:.1f}s")

    # Read back through Feast's offline store exactly as the server served and labelled them.
    assert read["read"] == 4
    by_id = {row["__noria_prediction_id"]: row for row in read["rows"]}
    for i, key in enumerate(KEYS):
        row = by_id[f"req-{i}"]
        assert row["customer_id"] == key and row["churned"] == LABELS[i]
        assert [row[f] for f in FEATURES] == [float(stored.loc[key, f]) for f in FEATURES]  # as served
        when = pd.Timestamp(row["label_time"])
        assert t0 - timedelta(seconds=1) <= when <= datetime.now(UTC)  # the prediction time
    assert predicted == [int(p) for p in predicted]  # the classes the model predicted

    # The next run: 50 labels of the entity source + the 3 rows inside the window; the old one is out.
    assert code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(log_path.read_text())
    assert summary["status"] == "succeeded", summary
    assert summary["feedbackRows"] == 3 and summary["rows"] == 50 + 3, summary
