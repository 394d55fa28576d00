"""The one reader of a TrainingPipeline's spec on the operator side.

The pass reads the spec through ``noria.api.TrainingPipelineSpec``, the model the CRD is generated
from and the trainer reads its run spec with, and works on what the model gives back: every field
camelCase as stored, every default the model declares filled in (the trigger windows, minSamples,
significance, ...). So a default is written once, in the model, and an object stored before the
CRD carried that default reads the same as one stored after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from noria.api.resources import field_path
from noria.api.training_pipeline import TrainingPipelineSpec


class PipelineSpecError(ValueError):
    """The spec does not read as the API model (the API server should have refused it); names each field."""


def read_pipeline_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` as the API model reads it, defaults filled in; unset optional fields stay absent."""
    try:
        model = TrainingPipelineSpec.model_validate(dict(spec))
    except ValidationError as error:
        problems = [f"spec.{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()]
        raise PipelineSpecError("; ".join(dict.fromkeys(problems))) from None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
