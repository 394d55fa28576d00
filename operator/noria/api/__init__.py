"""The three resources of Noria as pydantic models: the single source of the CRDs in ``crds/``.

Operator code works on the plain dicts Kopf hands it; these models are for validating manifests
(tests, the CLI, the trainer reading its run spec), for generating the CRDs (``python -m
noria.api.crdgen crds``) and as the reference of every field name. Importing this package does not
import kopf.
"""

from __future__ import annotations

from .common import (
    API_VERSION,
    CATEGORY,
    GROUP,
    VERSION,
    Condition,
    ResourceRequirements,
    decimal,
    parse_duration,
)
from .model_version import (
    Artifact,
    Lineage,
    ModelVersion,
    ModelVersionSpec,
    ModelVersionStatus,
    StageChange,
    check_update,
    version_name,
)
from .resources import KINDS, ResourceKind, field_errors, field_path, kind_of, validate_manifest
from .rollout import (
    AnalysisSpec,
    Canary,
    CanaryStep,
    Check,
    Rollout,
    RolloutSpec,
    RolloutStatus,
    Source,
    Strategy,
    Traffic,
)
from .training_pipeline import (
    DataSpec,
    EvaluationSpec,
    ModelSpec,
    RunRecord,
    TrainingPipeline,
    TrainingPipelineSpec,
    TrainingPipelineStatus,
    Triggers,
    Window,
    parse_window,
)

__all__ = [
    "API_VERSION",
    "AnalysisSpec",
    "Artifact",
    "CATEGORY",
    "Canary",
    "CanaryStep",
    "Check",
    "Condition",
    "DataSpec",
    "EvaluationSpec",
    "GROUP",
    "KINDS",
    "Lineage",
    "ModelSpec",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "ResourceKind",
    "ResourceRequirements",
    "Rollout",
    "RolloutSpec",
    "RolloutStatus",
    "RunRecord",
    "Source",
    "StageChange",
    "Strategy",
    "TrainingPipeline",
    "TrainingPipelineSpec",
    "TrainingPipelineStatus",
    "Traffic",
    "Triggers",
    "VERSION",
    "Window",
    "check_update",
    "decimal",
    "field_errors",
    "field_path",
    "kind_of",
    "parse_duration",
    "parse_window",
    "validate_manifest",
    "version_name",
]
