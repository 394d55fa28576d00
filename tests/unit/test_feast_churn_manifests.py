"""examples/feast-churn's manifests (outside the numbered folders test_api_models reads): the
pipeline and the Rollout parse as the API server would take them, and fit together: the Rollout
follows that pipeline, looks up the service it trains from, and pushes labelled rows to the push
source features.py defines and the pipeline trains on (tests/integration/test_feast_closed_loop.py
runs them end to end)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from noria.api import Rollout, TrainingPipeline, validate_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "feast-churn"


def manifest(name: str) -> dict:
    return yaml.safe_load((EXAMPLE / name).read_text())


def test_the_pipeline_and_the_rollout_parse_and_fit_together() -> None:
    pipeline = validate_manifest(manifest("pipeline.yaml"))
    rollout = validate_manifest(manifest("rollout.yaml"))
    assert isinstance(pipeline, TrainingPipeline) and isinstance(rollout, Rollout)
    assert rollout.spec.source.pipeline == pipeline.metadata.name
    assert rollout.spec.online_features is not None
    feast = rollout.spec.online_features.feast
    assert pipeline.spec.data.feast is not None
    assert feast.feature_service == pipeline.spec.data.feast.feature_service
    assert feast.entity_keys == ["customer_id"]
    # the push source the servers write to is one the repository defines
    assert feast.feedback_push_source is not None
    assert pipeline.spec.data.feast.feedback_push_source == feast.feedback_push_source
    assert re.search(rf'PushSource\(\s*name="{re.escape(feast.feedback_push_source)}"',
                     (EXAMPLE / "features.py").read_text())
