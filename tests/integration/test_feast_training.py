"""Feast as a training source with real Feast (file offline store) in its own venv (.venv-feast):
the point-in-time join the trainer builds its training set with never lets a feature value written
after a label's time into that label's row, and a real trainer process trains from a feature
service and records the feature definitions' digest for the ModelVersion's lineage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from feast_helpers import ENV, apply_repository, feast_python, join_in_feast_venv
from noria.api.model_version import ModelVersion
from noria.training.results import check_summary, model_version

UTC = "UTC"
LEAKED_CALLS = 999  # a support_calls value written one second after customer 1001's label


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


# customer_id, when the value became known, tenure_months, monthly_charges, support_calls
EXACT_STATS = pd.DataFrame(
    [
        (1001, at("2026-01-01"), 10, 50.0, 1),
        (1001, at("2026-01-20 00:00:01"), 11, 55.0, LEAKED_CALLS),  # after the label: must not leak
        (1002, at("2026-01-10"), 20, 60.0, 2),
        (1002, at("2026-02-01"), 21, 61.0, 3),
        (1003, at("2026-03-01"), 30, 70.0, 4),  # only after its label: no value yet
        (1004, at("2026-01-01"), 40, 80.0, 5),  # 151 days before its label: beyond the 90-day ttl
    ],
    columns=["customer_id", "event_timestamp", "tenure_months", "monthly_charges", "support_calls"],
)
# The entity source: (customer_id, label_time, churned) and the features each row must get.
LABELS = [
    ((1001, "2026-01-20T00:00:00+00:00", 1), (10, 50.0, 1)),  # the value of Jan 1, not the one a second later
    ((1002, "2026-01-15T00:00:00+00:00", 0), (20, 60.0, 2)),
    ((1002, "2026-02-01T00:00:00+00:00", 1), (21, 61.0, 3)),  # known at the label's very instant: joined
    ((1003, "2026-02-15T00:00:00+00:00", 0), (None, None, None)),
    ((1004, "2026-06-01T00:00:00+00:00", 1), (None, None, None)),
]
FEATURES = ["tenure_months", "monthly_charges", "support_calls"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose shared datasets/ folder holds the applied example repository."""
    feast_python()
    root = tmp_path_factory.mktemp("feast-store")
    apply_repository(root / "datasets" / "feast-churn", extra_stats=EXACT_STATS)
    return root


@pytest.fixture(scope="module")
def joined(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trainer's join of the exact LABELS, run once in the Feast venv."""
    entities = tmp_path_factory.mktemp("entities") / "labels.parquet"
    frame = pd.DataFrame([row for row, _ in LABELS], columns=["customer_id", "label_time", "churned"])
    frame.assign(label_time=pd.to_datetime(frame["label_time"], utc=True)).to_parquet(entities, index=False)
    return join_in_feast_venv(store / "datasets" / "feast-churn", entities, "label_time", "churn_v1")


def test_a_feature_value_from_after_the_label_never_reaches_the_training_set(joined: dict):
    assert joined["features"] == FEATURES
    got = [
        (
            r["customer_id"],
            pd.Timestamp(r["label_time"]).isoformat(),
            r["churned"],
            tuple(r[f] for f in FEATURES),
        )
        for r in joined["rows"]
    ]
    assert got == [(*row, values) for row, values in LABELS]  # the entity source's order, exact values
    assert all(r["support_calls"] != LEAKED_CALLS for r in joined["rows"])
    assert joined["lineage"]["definitionsDigest"].startswith("sha256:")


def test_feature_references_join_the_same_values_and_digest_only_their_own_views(
    store: Path, joined: dict, tmp_path_factory: pytest.TempPathFactory
):
    entities = tmp_path_factory.mktemp("listed") / "labels.parquet"
    frame = pd.DataFrame([row for row, _ in LABELS], columns=["customer_id", "label_time", "churned"])
    frame.assign(label_time=pd.to_datetime(frame["label_time"], utc=True)).to_parquet(entities, index=False)
    listed = join_in_feast_venv(
        store / "datasets" / "feast-churn",
        entities,
        "label_time",
        features=("customer_stats:support_calls", "customer_stats:tenure_months"),
    )
    assert listed["features"] == ["support_calls", "tenure_months"]  # the order the list gives
    assert [(r["support_calls"], r["tenure_months"]) for r in listed["rows"]] == [
        (values[2], values[0]) for _, values in LABELS
    ]
    # No service in the digest: the same view's definition alone, so another digest than the service's.
    assert "featureService" not in listed["lineage"]
    assert listed["lineage"]["definitionsDigest"] != joined["lineage"]["definitionsDigest"]


def test_a_trainer_process_trains_from_a_feature_service_and_records_its_definitions(
    store: Path, joined: dict, tmp_path: Path
):
    repository = f"file://{store}/datasets/feast-churn"
    spec = {
        "runId": "churn-r1",
        "trigger": "manual",
        "namespace": "ml",
        "pipeline": "churn",
        "version": 1,
        "champion": None,
        "storeRoot": f"file://{store}",
        "outputUri": f"file://{store}/ml/churn/v1",
        "spec": {
            "model": {
                "task": "classification",
                "estimator": "sklearn.linear_model.LogisticRegression",
                "params": {"max_iter": 500},
                "target": "churned",
            },
            "data": {
                "source": f"{repository}/labels.parquet",
                "timestampColumn": "label_time",
                "window": {"last": "1000 rows"},
                "feast": {"repository": repository, "featureService": "churn_v1"},
            },
            "evaluation": {"metric": "accuracy"},
        },
    }
    spec_path, log = tmp_path / "spec.json", tmp_path / "termination-log"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [
            feast_python(),
            "-m",
            "noria_trainer",
            "run",
            "--spec",
            str(spec_path),
            "--termination-log",
            str(log),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(log.read_text())
    assert summary["status"] == "succeeded" and summary["rows"] == 200

    metadata = json.loads((store / "ml/churn/v1/metadata.json").read_text())
    assert metadata["model"]["features"] == FEATURES  # the service's features, not the entity key
    assert metadata["libraries"]["feast"] and metadata["libraries"]["pandas"].startswith("2.")
    feast = summary["feast"]
    assert feast == metadata["data"]["feast"]
    assert feast["repository"] == repository and feast["featureService"] == "churn_v1"
    # Same repository, same definitions: the digest the join of the exact labels computed.
    assert feast["definitionsDigest"] == joined["lineage"]["definitionsDigest"]

    pipeline = {"metadata": {"name": "churn", "namespace": "ml"}, "spec": spec["spec"]}
    version = model_version(pipeline, check_summary(summary, "churn-r1", 1), "manual", None)
    lineage = ModelVersion.model_validate(version).spec.lineage
    assert lineage is not None and lineage.data is not None and lineage.data.feast is not None
    assert lineage.data.feast.definitions_digest == feast["definitionsDigest"]
    assert lineage.data.feast.repository == repository and lineage.data.feast.feature_service == "churn_v1"
