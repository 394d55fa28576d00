"""The operator reads a TrainingPipeline spec through the API model, and the trigger defaults are
written once, in that model: the CRD schema, the operator's pass and the trigger fallbacks for a
raw spec all take them from ``noria.api.training_pipeline``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria.api import training_pipeline as api
from noria.training import handlers, spec, triggers
from noria.training.triggers import MetricObservation

ROOT = Path(__file__).resolve().parents[3]
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)

RAW = {
    "model": {
        "task": "classification",
        "estimator": "sklearn.linear_model.LogisticRegression",
        "target": "churned",
    },
    "data": {"source": "file:///store/ml/churn.parquet"},
    "triggers": {
        "drift": {"threshold": "0.2"},
        "performance": {"metric": "f1", "dropBy": "0.05"},
    },
}


def test_the_reader_fills_in_every_trigger_default_from_the_model():
    read = spec.read_pipeline_spec(RAW)
    assert read["triggers"]["drift"] == {
        "method": "psi",
        "threshold": "0.2",
        "significance": api.DEFAULT_TRIGGER_SIGNIFICANCE,
        "minSamples": api.DEFAULT_MIN_DRIFT_SAMPLES,
        "window": api.DEFAULT_TRIGGER_WINDOW,
    }
    performance = read["triggers"]["performance"]
    assert (performance["window"], performance["significance"], performance["minLabels"]) == (
        api.DEFAULT_TRIGGER_WINDOW,
        api.DEFAULT_TRIGGER_SIGNIFICANCE,
        api.DEFAULT_MIN_LABELS,
    )
    assert "schedule" not in read["triggers"] and "tuning" not in read  # unset stays absent


def test_the_crd_schema_carries_the_same_defaults():
    crd = yaml.safe_load((ROOT / "crds" / "trainingpipelines.noria.dev.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    trig = props["triggers"]["properties"]
    drift, performance = trig["drift"]["properties"], trig["performance"]["properties"]
    assert (drift["window"]["default"], drift["minSamples"]["default"], drift["significance"]["default"]) == (
        api.DEFAULT_TRIGGER_WINDOW,
        api.DEFAULT_MIN_DRIFT_SAMPLES,
        api.DEFAULT_TRIGGER_SIGNIFICANCE,
    )
    assert (
        performance["window"]["default"],
        performance["significance"]["default"],
        performance["minLabels"]["default"],
    ) == (api.DEFAULT_TRIGGER_WINDOW, api.DEFAULT_TRIGGER_SIGNIFICANCE, api.DEFAULT_MIN_LABELS)


def test_a_raw_spec_and_the_read_spec_give_the_same_trigger_verdicts():
    # The fallbacks in triggers.py (for raw specs: the backtest, tests) are the model's defaults.
    read = spec.read_pipeline_spec(RAW)["triggers"]
    confusion = {
        ("1", "1"): 40.0,
        ("0", "0"): 40.0,
        ("1", "0"): 15.0,
        ("0", "1"): 4.0,
    }  # 99 labels: one short of minLabels
    observation = MetricObservation(counts=confusion, version="churn-v1")
    raw_result = triggers.evaluate_performance(
        RAW["triggers"]["performance"], "churn-v1", observation, None, NOW
    )
    read_result = triggers.evaluate_performance(read["performance"], "churn-v1", observation, None, NOW)
    assert raw_result.state == read_result.state and "99 labels, 100 needed" in raw_result.observed


def test_a_spec_the_model_refuses_names_the_field():
    bad = {**RAW, "triggers": {"drift": {"threshold": "0.2", "window": "an hour"}}}
    with pytest.raises(spec.PipelineSpecError, match=r"spec\.triggers\.drift\.window"):
        spec.read_pipeline_spec(bad)


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "examples").rglob("*.yaml")
        if "invalid" not in p.parts
    ),
)
def test_every_example_pipeline_reads(path):
    for doc in yaml.safe_load_all((ROOT / path).read_text()):
        if doc and doc.get("kind") == "TrainingPipeline":
            assert spec.read_pipeline_spec(doc["spec"])["model"] == api.ModelSpec.model_validate(
                doc["spec"]["model"]
            ).model_dump(mode="json", by_alias=True, exclude_none=True)


async def test_the_pass_works_on_the_spec_as_the_model_reads_it(monkeypatch):
    seen: list[dict[str, Any]] = []

    async def stored(api_version, kind, name, namespace=None):
        return {
            "apiVersion": "noria.dev/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": {"name": name, "namespace": namespace, "uid": "u", "resourceVersion": "1"},
            "spec": RAW,
        }

    class Seen(Exception):
        pass

    async def observe(tp, now):
        seen.append(tp["spec"])
        raise Seen

    async def nothing(*_, **__):
        return None

    monkeypatch.setattr(handlers.kube, "get", stored)
    monkeypatch.setattr(handlers, "observe", observe)
    monkeypatch.setattr(handlers, "_report_error", nothing)
    with pytest.raises(Seen):
        await handlers.reconcile(("ml", "churn"))
    assert seen[0]["triggers"]["drift"]["window"] == api.DEFAULT_TRIGGER_WINDOW
    assert seen[0]["triggers"]["performance"]["minLabels"] == api.DEFAULT_MIN_LABELS
