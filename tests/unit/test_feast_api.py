"""TrainingPipeline spec.data.feast: the pydantic model refuses what the CRD's CEL rules refuse
(the CEL side is checked against a real API server by test_api_validator_agreement)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from noria.api.model_version import DataLineage
from noria.api.training_pipeline import (
    FEAST_ENGINE_MESSAGE,
    FEAST_NEEDS_TIMESTAMP_MESSAGE,
    FEAST_ONE_MESSAGE,
    TrainingPipelineSpec,
)
from pydantic import ValidationError

REPO = "file:///var/lib/noria/store/datasets/feast/churn_repo"


def spec(feast: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {
        "model": {
            "task": "classification",
            "estimator": "sklearn.linear_model.LogisticRegression",
            "target": "y",
        },
        "data": {
            "source": "file:///var/lib/noria/store/datasets/labels/",
            "timestampColumn": "ts",
            "feast": feast,
            **data,
        },
    }


def test_a_feature_service_or_a_feature_list_is_accepted() -> None:
    by_service = TrainingPipelineSpec.model_validate(spec({"repository": REPO, "featureService": "churn_v1"}))
    assert by_service.data.feast is not None and by_service.data.feast.feature_service == "churn_v1"
    listed = TrainingPipelineSpec.model_validate(spec({"repository": REPO, "features": ["stats:tenure"]}))
    assert listed.data.feast is not None and listed.data.feast.features == ["stats:tenure"]


@pytest.mark.parametrize(
    "feast", [{"repository": REPO}, {"repository": REPO, "featureService": "s", "features": ["v:f"]}]
)
def test_exactly_one_of_feature_service_or_features(feast: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=FEAST_ONE_MESSAGE):
        TrainingPipelineSpec.model_validate(spec(feast))


def test_a_feature_reference_names_its_view() -> None:
    with pytest.raises(ValidationError, match="<featureView>:<feature>"):
        TrainingPipelineSpec.model_validate(spec({"repository": REPO, "features": ["tenure"]}))


def test_the_repository_obeys_the_data_source_rules() -> None:
    with pytest.raises(ValidationError, match=r"'\.' or '\.\.'"):
        TrainingPipelineSpec.model_validate(spec({"repository": REPO + "/../other", "featureService": "s"}))


def test_feast_needs_the_label_time() -> None:
    raw = spec({"repository": REPO, "featureService": "s"})
    del raw["data"]["timestampColumn"]
    with pytest.raises(ValidationError, match="timestampColumn is required with feast"):
        TrainingPipelineSpec.model_validate(raw)
    assert "point in time" in FEAST_NEEDS_TIMESTAMP_MESSAGE


def test_feast_trains_on_a_single_pod_only() -> None:
    raw = spec({"repository": REPO, "featureService": "s"}) | {"compute": {"engine": "dask"}}
    with pytest.raises(ValidationError, match=re.escape(FEAST_ENGINE_MESSAGE)):
        TrainingPipelineSpec.model_validate(raw)


def test_the_lineage_carries_the_feature_definitions_digest() -> None:
    lineage = DataLineage.model_validate(
        {
            "source": "file:///x/labels/",
            "feast": {
                "repository": REPO,
                "featureService": "churn_v1",
                "definitionsDigest": "sha256:" + "0" * 64,
            },
        }
    )
    assert lineage.feast is not None and lineage.feast.definitions_digest == "sha256:" + "0" * 64


def test_the_feast_example_pipeline_is_valid() -> None:
    import yaml
    from noria.api import TrainingPipeline

    path = Path(__file__).resolve().parents[2] / "examples" / "feast-churn" / "pipeline.yaml"
    pipeline = TrainingPipeline.model_validate(yaml.safe_load(path.read_text()))
    assert pipeline.spec.data.feast is not None and pipeline.spec.data.feast.feature_service == "churn_v1"
