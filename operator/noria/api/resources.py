"""The registry of Noria's kinds: names, short names and `kubectl get` columns of each.

Printer columns answer "what is serving and how well" from ``status`` alone, so ``kubectl get
tp,mv,mro`` is the dashboard of last resort.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from . import model_version, rollout, training_pipeline
from .common import API_VERSION, GROUP
from .naming import (
    MODEL_VERSION_NAME_RULES,
    PIPELINE_NAME_MAX,
    ROLLOUT_NAME_MAX,
    ROLLOUT_NAME_RULES,
    TRAINING_PIPELINE_NAME_RULES,
    NameRule,
    name_problems,
)


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    description: str
    name_rules: tuple[NameRule, ...] = ()  # on metadata.name (CEL on the CRD's root)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(
    name: str, json_path: str, type_: str = "string", description: str = "", priority: int = 0
) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

TRAINING_PIPELINE: Final = ResourceKind(
    kind=training_pipeline.KIND,
    plural=training_pipeline.PLURAL,
    short_names=("tp",),
    model=training_pipeline.TrainingPipeline,
    name_rules=TRAINING_PIPELINE_NAME_RULES,
    description=(
        "How to train a model, on which data, when to retrain it, and how to gate it. The name is a DNS-1035"
        f" label of at most {PIPELINE_NAME_MAX} characters: runs and versions are named <name>-r<N> and <name>-v<N>."
    ),
    printer_columns=(
        _column("Phase", ".status.phase", description="Summary of the conditions."),
        _column("Last Trigger", ".status.lastTrigger", description="What started the last run."),
        _column("Latest", ".status.latestVersion", description="Newest ModelVersion."),
        _column("Champion", ".status.championVersion", description="ModelVersion in Production."),
        _column("Next Run", ".status.nextScheduledRun", description="Next scheduled run (UTC)."),
        _AGE,
    ),
)

MODEL_VERSION: Final = ResourceKind(
    kind=model_version.KIND,
    plural=model_version.PLURAL,
    short_names=("mv",),
    model=model_version.ModelVersion,
    name_rules=MODEL_VERSION_NAME_RULES,
    description=(
        "One trained model: artifact URI and digest, metrics, lineage; spec is immutable. It is named"
        " <spec.pipeline>-v<spec.version> (a DNS-1035 label of at most 63 characters)."
    ),
    printer_columns=(
        _column("Pipeline", ".spec.pipeline", description="TrainingPipeline it belongs to."),
        _column("Version", ".spec.version", "integer", description="Version number."),
        _column("Stage", ".status.stage", description="Lifecycle stage."),
        _column("Metric", ".status.metric", description="Gate metric (and live score)."),
        _column("Traffic", ".status.traffic", "integer", description="Percent of live requests."),
        _AGE,
    ),
)

ROLLOUT: Final = ResourceKind(
    kind=rollout.KIND,
    plural=rollout.PLURAL,
    short_names=("mro",),
    model=rollout.Rollout,
    name_rules=ROLLOUT_NAME_RULES,
    description=(
        "How a model is served and how a new version replaces the old one. People steer a rollout with"
        " `kubectl noria promote|abort|retry|pause|resume <name>` or the annotations it writes:"
        " `kubectl annotate mro <name> noria.dev/promote=true` goes past the current gate (a pause"
        " or an analysis, whatever its state) once; noria.dev/promote=full skips every remaining step and"
        " promotes now; noria.dev/abort=<any> sends all traffic back to the stable version. The name is a DNS-1035"
        f" label of at most {ROLLOUT_NAME_MAX} characters (the operator creates <name>-router and <name>-preview),"
        f" and with spec.source it forms Service names <name>-<version> of at most 63."
    ),
    printer_columns=(
        _column("Phase", ".status.phase", description="Summary of the conditions."),
        _column("Stable", ".status.stableVersion", description="Stable ModelVersion."),
        _column("Canary", ".status.canaryVersion", description="ModelVersion being introduced."),
        _column("Step", ".status.currentStep", "integer", description="Canary step index."),
        _column("Weight", ".status.canaryWeight", "integer", description="Percent of traffic on the canary."),
        _AGE,
    ),
)

KINDS: Final = (TRAINING_PIPELINE, MODEL_VERSION, ROLLOUT)
_BY_KIND: Final = {k.kind: k for k in KINDS}


def kind_of(manifest: dict[str, Any]) -> ResourceKind:
    """The registry entry of a manifest; ``ValueError`` naming apiVersion/kind when it is not ours."""
    if manifest.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion: expected {API_VERSION}, got {manifest.get('apiVersion')!r}")
    kind = manifest.get("kind")
    if kind not in _BY_KIND:
        raise ValueError(f"kind: expected one of {', '.join(_BY_KIND)}, got {kind!r}")
    return _BY_KIND[kind]


def name_error(kind: ResourceKind, manifest: dict[str, Any]) -> ValidationError | None:
    """The kind's name rules broken by the manifest, as a ``ValidationError`` at ``metadata.name``."""
    problems = name_problems(kind.name_rules, manifest)
    if not problems:
        return None
    name = (manifest.get("metadata") or {}).get("name")
    return ValidationError.from_exception_data(
        kind.kind,
        [
            InitErrorDetails(
                type=PydanticCustomError("name_rule", message), loc=("metadata", "name"), input=name
            )
            for message in problems
        ],
    )


def validate_manifest(manifest: dict[str, Any]) -> BaseModel:
    """Parse a manifest with the model of its kind, name rules included (raises pydantic's
    ``ValidationError``; ``ValueError`` when it is not one of our kinds)."""
    kind = kind_of(manifest)
    error = name_error(kind, manifest)
    if error is not None:
        raise error
    return kind.model.model_validate(manifest)


def field_path(loc: Iterable[int | str]) -> str:
    """pydantic's ``('spec', 'steps', 1, 'setWeight')`` -> ``spec.steps[1].setWeight``; union-member
    tags pydantic adds (``'function-after[check(), str]'``, ``'int'``) are not fields and are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str") or "[" in part:
            continue
        else:
            out += ("." if out else "") + part
    return out


def field_errors(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(field path, message)]`` of one manifest; empty when it is valid. The name rules (which the
    API server checks on the object's root) are reported as ``metadata.name``."""
    try:
        kind = kind_of(manifest)
    except ValueError as error:  # not one of our kinds
        path, _, message = str(error).partition(": ")
        return [(path, message)]
    seen: list[tuple[str, str]] = [("metadata.name", m) for m in name_problems(kind.name_rules, manifest)]
    try:
        kind.model.model_validate(manifest)
    except ValidationError as error:
        for e in error.errors():
            item = (field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
            if item not in seen:
                seen.append(item)
    return seen
