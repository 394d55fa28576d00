"""The registry of Noria's kinds: names, short names and `kubectl get` columns of each.

Printer columns answer "what is serving and how well" from ``status`` alone, so ``kubectl get
tp,mv,mro`` is the dashboard of last resort.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from . import model_version, rollout, training_pipeline
from .common import API_VERSION, GROUP


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    description: str

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(name: str, json_path: str, type_: str = "string", description: str = "", priority: int = 0) -> dict[str, Any]:
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
    description="How to train a model, on which data, when to retrain it, and how to gate it.",
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
    description="One trained model: artifact URI and digest, metrics, lineage; spec is immutable.",
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
    description=(
        "How a model is served and how a new version replaces the old one. People steer a rollout with"
        " annotations: `kubectl annotate mro <name> noria.dev/promote=true` goes past the current gate (a pause"
        " or an analysis, whatever its state) once; noria.dev/promote=full skips every remaining step and"
        " promotes now; noria.dev/abort=<any> sends all traffic back to the stable version."
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


def validate_manifest(manifest: dict[str, Any]) -> BaseModel:
    """Parse a manifest with the model of its kind (raises pydantic's ``ValidationError``)."""
    return kind_of(manifest).model.model_validate(manifest)


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
    """``[(field path, message)]`` of one manifest; empty when it is valid."""
    try:
        validate_manifest(manifest)
    except ValidationError as error:
        seen: list[tuple[str, str]] = []
        for e in error.errors():
            item = (field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
            if item not in seen:
                seen.append(item)
        return seen
    except ValueError as error:  # not one of our kinds
        path, _, message = str(error).partition(": ")
        return [(path, message)]
    return []
