"""ModelVersion: one trained model — artifact URI and sha256 digest, metrics, lineage, drift profile.

Usually created by the operator at the end of a training run, and sometimes by a user importing a
model trained elsewhere. ``spec`` is immutable (a CEL transition rule ``self == oldSelf``): a
version is a fact about the past; a different model is a new ModelVersion. ``status`` records the
stage and the traffic share over time, which answers "what served when".
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args

from pydantic import Field, StrictStr

from noria import contracts

from .common import (
    ApiVersion,
    ArtifactUri,
    Condition,
    Decimalish,
    NoriaModel,
    ObjectMeta,
    ShortText,
    StatusModel,
    Text,
    Timestamp,
    TriggerKind,
    Uri,
    _cel_regex,
    _checked_pattern,
    api_version_field,
    cel,
    conditions_field,
    with_cel,
)
from .naming import RUN_NUMBER_MAX, PipelineName

KIND: Final = "ModelVersion"
PLURAL: Final = "modelversions"

DIGEST_RE: Final = r"^sha256:[0-9a-f]{64}$"
DIGEST_MESSAGE: Final = 'digest must be "sha256:" followed by 64 lower-case hex characters'
IMMUTABLE_MESSAGE: Final = (
    "spec is immutable: a ModelVersion records one trained model; create a new ModelVersion instead"
)

# The names live in noria.contracts; a type needs them spelt out, and the assert keeps the two equal.
Stage = Literal[
    "Registered", "Candidate", "Rejected", "Approved", "Canary", "Shadow", "Preview", "Production", "Retired"
]
STAGES: Final = contracts.STAGES
assert get_args(Stage) == STAGES, "Stage must list noria.contracts.STAGES, in order"

Digest = Annotated[
    StrictStr,
    _checked_pattern(DIGEST_RE, DIGEST_MESSAGE),
    Field(
        json_schema_extra={
            "maxLength": 71,
            "x-kubernetes-validations": [cel(f"self.matches({_cel_regex(DIGEST_RE)})", DIGEST_MESSAGE)],
        }
    ),
]


class Artifact(NoriaModel):
    """The model file. It is loaded only after its sha256 matches ``digest``."""

    uri: ArtifactUri = Field(
        description=(
            "Where the model file is: under this namespace's store, e.g."
            " file:///var/lib/noria/store/ml/churn/v7/model.skops, or under a registry prefix the operator trusts."
        )
    )
    digest: Digest = Field(description='sha256 of the file: "sha256:" + 64 lower-case hex characters.')
    format: Literal["skops", "xgboost-json"] = Field(
        default="skops",
        description=(
            "File format: skops (a scikit-learn model, safe loading, no pickle) or xgboost-json (an XGBoost"
            " model of a Dask run in Noria's JSON envelope). Both load only after the digest matches, and"
            " neither runs code from the file."
        ),
    )


class FeastLineage(NoriaModel):
    """The Feast feature definitions a version was trained with (docs/training-feast.md)."""

    repository: Uri | None = Field(
        default=None, description="The feature repository, as in the pipeline spec."
    )
    feature_service: ShortText | None = Field(
        default=None, description="The feature service used, if one was."
    )
    definitions_digest: ShortText | None = Field(
        default=None,
        description=(
            "sha256 of the definitions of the feature views (and the service) the features came from, as the"
            " registry held them: equal digests, same feature definitions."
        ),
    )


class DataLineage(NoriaModel):
    """The data a version was trained on."""

    source: Uri | None = Field(default=None, description="Data source URI as in the pipeline spec.")
    rows: int | None = Field(
        default=None, ge=0, description="Rows trained and evaluated on, after windowing."
    )
    window: ShortText | None = Field(default=None, description='The window used, e.g. "90d" or "50000 rows".')
    feedback_rows: int | None = Field(
        default=None, ge=0, description="Rows that came from labelled production traffic."
    )
    feast: FeastLineage | None = Field(
        default=None, description="The Feast feature definitions the features came from (spec.data.feast)."
    )


class Lineage(NoriaModel):
    """Where a version came from."""

    run: ShortText | None = Field(default=None, description="Training run id, <pipeline>-r<N>.")
    trigger: TriggerKind | None = Field(default=None, description="What started the run.")
    data: DataLineage | None = Field(default=None, description="The training data.")
    parent: ShortText | None = Field(
        default=None, description="The champion ModelVersion when this one was trained."
    )
    trained_at: Timestamp | None = Field(default=None, description="When training finished.")


class ModelVersionSpec(NoriaModel):
    """The facts of one trained model. Immutable once created."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(cel("self == oldSelf", IMMUTABLE_MESSAGE))
    }

    pipeline: PipelineName = Field(
        description="The TrainingPipeline this version belongs to (same namespace)."
    )
    version: int = Field(
        ge=1, le=RUN_NUMBER_MAX, description="Version number N; the object must be named <pipeline>-v<N>."
    )
    artifact: Artifact = Field(description="The model file and its digest.")
    profile_uri: ArtifactUri | None = Field(
        default=None,
        description=(
            "The drift reference profile (per-feature bins and fractions), e.g. .../v7/profile.json; scoped like"
            " artifact.uri."
        ),
    )
    metrics: dict[Annotated[StrictStr, Field(max_length=64)], Decimalish] | None = Field(
        default=None,
        max_length=32,
        description=(
            'Holdout scores by metric name, as decimal strings or integers, e.g. {f1: "0.83"}. '
            "precision, recall and f1 are macro averages over the classes, as in the live checks."
        ),
    )
    lineage: Lineage | None = Field(
        default=None, description="Run, trigger, data and parent of this version."
    )


# --- status --------------------------------------------------------------------------------------
class StageChange(StatusModel):
    """One entry of the stage history."""

    stage: Stage = Field(description="The stage entered.")
    at: Timestamp | None = Field(default=None, description="When.")
    reason: Text | None = Field(default=None, description='Why, e.g. "canary analysis passed".')
    by: ShortText | None = Field(
        default=None, description="Who moved it, e.g. rollout/churn, pipeline/churn, user/alice."
    )


class ModelVersionStatus(StatusModel):
    """Stage and traffic over time."""

    stage: Stage | None = Field(
        default=None,
        description=(
            "Registered (created by hand, not by a training run: approve it with"
            " `kubectl noria approve <name>` (annotation noria.dev/approve=<your name>) before a Rollout serves it), Candidate"
            " (trained, waiting for approval), Rejected, Approved, Canary, Shadow, Preview, Production or Retired."
        ),
    )
    traffic: int | None = Field(
        default=None, ge=0, le=100, description="Percent of live requests served now."
    )
    metric: ShortText | None = Field(
        default=None,
        description=(
            'One-line score for `kubectl get mv`: the gate metric, e.g. "f1=0.83"; the operator may append the'
            ' live score once enough labels arrived, e.g. "f1=0.83 live=0.79".'
        ),
    )
    message: Text | None = Field(
        default=None, description="Why the version is in its stage (e.g. rejection reason)."
    )
    history: list[StageChange] | None = Field(
        default=None, max_length=100, description="Stage changes, oldest first: what served when."
    )
    conditions: list[Condition] | None = conditions_field()
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation last acted on."
    )


class ModelVersion(NoriaModel):
    """A ModelVersion manifest."""

    api_version: ApiVersion = api_version_field()
    kind: Literal["ModelVersion"] = Field(default=KIND, description="ModelVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: ModelVersionSpec = Field(description="The facts of one trained model; immutable.")
    status: ModelVersionStatus | None = Field(default=None, description="Written by the operator.")


def version_name(pipeline: str, version: int) -> str:
    """``churn``, 7 -> ``churn-v7``: the name of a pipeline's N-th ModelVersion."""
    return f"{pipeline}-v{int(version)}"


def check_update(old: dict[str, Any], new: dict[str, Any]) -> None:
    """The transition rule the API server enforces, for code that validates before it sends."""
    if old.get("spec") != new.get("spec"):
        raise ValueError("spec: " + IMMUTABLE_MESSAGE)


__all__ = [
    "Artifact",
    "DIGEST_RE",
    "DataLineage",
    "FeastLineage",
    "KIND",
    "Lineage",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "PLURAL",
    "STAGES",
    "StageChange",
    "check_update",
    "version_name",
]
