"""The run spec (contracts: ConfigMap ``<pipeline>-r<N>``, key ``spec.json``), checked before any data is read.

The pipeline spec inside is the user's TrainingPipeline ``spec``, camelCase as in the CRD. It is
validated by ``noria.api.training_pipeline.TrainingPipelineSpec``, the model the CRD is generated
from, so the trainer accepts exactly what the API server accepts and reads every default from
the same place (docs/training.md, "Defaults"). The trainer's ``PipelineSpec`` is a view built from
the validated model: typed values (floats, ``timedelta``) in the names the training code uses. A
pydantic error becomes one line per field, spelt as the user wrote it
(``spec.evaluation.minScore: 0.7 is a float: quote it, "0.7" ...``), and ends the run in stage
"spec" (exit code ``EXIT_SPEC``).

The few rules the API cannot state (a search strategy without a space, a holdout too small or too
large to split) are checked here on the validated values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from noria import runspec
from noria.api import training_pipeline as api
from noria.api.common import decimal, parse_duration, parse_timestamp
from noria.api.resources import field_path
from noria.artifact_scope import InvalidTrustedPrefix, parse_trusted_prefixes
from pydantic import BaseModel, ValidationError

Task = Literal["classification", "regression"]

CLASSIFICATION_METRICS: Final = api.CLASSIFICATION_METRICS
REGRESSION_METRICS: Final = api.REGRESSION_METRICS
LOWER_IS_BETTER: Final = frozenset(api.LOWER_IS_BETTER)
# A holdout outside these bounds leaves too little to train on or to judge with; the API allows
# any fraction from 0 to 1, so the trainer says why it cannot split instead of failing later.
HOLDOUT_BOUNDS: Final = (0.01, 0.9)


class SpecError(ValueError):
    """The run spec or the pipeline spec in it is malformed; the message names the field."""


@dataclass(frozen=True)
class Window:
    """``last`` N rows or a duration back from ``now``; ``label`` is what the user wrote."""

    label: str
    rows: int | None = None
    duration: dt.timedelta | None = None


@dataclass(frozen=True)
class Champion:
    name: str
    artifact_uri: str
    digest: str
    profile_uri: str | None


@dataclass(frozen=True)
class FeastData:
    """spec.data.feast: the repository and exactly one of a feature service or feature references."""

    repository: str
    feature_service: str | None
    features: tuple[str, ...] | None
    feedback_push_source: str | None = None  # labelled production rows pushed there (feast_source.pushed_rows)


@dataclass(frozen=True)
class PipelineSpec:
    task: Task
    estimator: str
    params: dict[str, Any]
    target: str
    features: tuple[str, ...] | None
    source: str
    format: str | None  # None: unset in a hand-written run spec, detected from the file names
    timestamp_column: str | None
    window: Window | None
    window_candidates: tuple[Window, ...]
    feedback: bool
    feedback_id_column: str | None
    min_rows: int
    max_missing_fraction: float
    schema: str
    column_types: dict[str, str]
    metric: str
    holdout_fraction: float
    min_score: float | None
    max_score: float | None
    must_beat_champion_by: float | None  # None: the champion is scored and reported, not compared
    tuning_strategy: str | None
    tuning_trials: int
    tuning_space: dict[str, Any]
    tuning_time_budget: float | None
    tuning_cv: int
    seed: int
    thresholds_as_written: dict[str, str] = field(default_factory=dict)
    engine: str = "single"  # spec.compute.engine: single (one pod) or dask (noria_trainer.dask_training)
    feast: FeastData | None = None  # features from a Feast repository (noria_trainer.feast_source)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    trigger: str
    namespace: str
    pipeline: str
    version: int
    spec: PipelineSpec
    champion: Champion | None
    output_uri: str
    store_root: str
    now: dt.datetime
    raw: dict[str, Any]
    # NORIA_TRUSTED_DATA_PREFIXES as the operator passed them: where data may be read besides the
    # namespace's store folder and the shared datasets/ folder.
    trusted_data_prefixes: tuple[str, ...] = ()


# --- pydantic's errors, in the user's words -------------------------------------------------------
# Error types of one member of a union (int | str): when every member refuses the value, each
# says so and none says what to write; they are folded into one message (see _message).
_MEMBER_TYPE_ERRORS: Final = frozenset({"int_type", "string_type", "bool_type", "float_type"})


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The camelCase fields of the model that holds ``loc``'s last part (for "unknown field")."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        found = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if found is None:
            return None
        inner = [a for a in (found.annotation, *getattr(found.annotation, "__args__", ()))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return [f.alias or n for n, f in model.model_fields.items()]


def _message(errors: list[dict[str, Any]]) -> str:
    """One message for the errors pydantic reported at one field path."""
    values = [e for e in errors if e["type"] not in _MEMBER_TYPE_ERRORS]
    if values:  # a rule that names what is wrong beats "should be a valid integer"
        return "; ".join(dict.fromkeys(_words(e["msg"]) for e in values))
    value = errors[0]["input"]
    if len(errors) > 1 and isinstance(value, float):
        return f"{value!r} is a float: write it as a decimal string such as \"{value}\" (no floats: quote the number)"
    wanted = " or ".join(str(e["msg"]).removeprefix("Input should be ").removeprefix("a valid ") for e in errors)
    return f"expected {wanted}, got {value!r}"


def _words(message: str) -> str:
    return message.removeprefix("Value error, ").replace("Input should be", "must be", 1)


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """``error`` as ``<field path>: <what is wrong>`` lines, paths spelt as the user wrote them
    (``noria.api.resources.field_path``, the spelling ``python -m noria.api.validate`` prints)."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for e in error.errors():
        path = field_path(e["loc"])
        message = str(e["msg"]).removeprefix("Value error, ")
        # a rule on a parent names its child first ("evaluation.metric: ..."): put it in the path once
        head, sep, rest = message.partition(": ")
        if sep and head.replace(".", "").isalnum():
            if not path.endswith(head):
                path = f"{path}.{head}" if path else head
            e = {**e, "msg": rest}
        if e["type"] == "extra_forbidden":
            known = _known_fields(api.TrainingPipelineSpec, tuple(e["loc"]))
            e = {**e, "type": "unknown", "msg": "unknown field" + (f" (known: {', '.join(known)})" if known else "")}
        elif e["type"] == "missing":
            e = {**e, "type": "required", "msg": "required"}
        by_path.setdefault(path, []).append(e)
    return "; ".join(f"{prefix}{'.' + path if path else ''}: {_message(errors)}" for path, errors in by_path.items())


# --- the pipeline spec: validated by the API model, then viewed -------------------------------------
def validate_pipeline_spec(spec: Any) -> api.TrainingPipelineSpec:
    """``spec`` validated by the model the CRD is generated from; ``SpecError`` names each bad field."""
    if not isinstance(spec, dict):
        raise SpecError(f"spec: expected an object (the TrainingPipeline's spec), got {type(spec).__name__}")
    try:
        return api.TrainingPipelineSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None


def window_of(size: str) -> Window:
    """A window size the API accepted (``"180d"``, ``"1h30m"`` or ``"50000 rows"``) as a ``Window``."""
    kind, value = api.parse_window(size)
    if kind == "rows":
        return Window(label=size, rows=int(value))
    return Window(label=size, duration=parse_duration(str(value)))


def _number(value: int | str | None) -> float | None:
    return None if value is None else float(decimal(value))


def parse_pipeline_spec(spec: Any) -> PipelineSpec:
    """The trainer's view of a pipeline spec the API model accepts."""
    valid = validate_pipeline_spec(spec)
    model, data = valid.model, valid.data
    validation = valid.validation or api.ValidationSpec()
    evaluation = valid.evaluation or api.EvaluationSpec()
    tuning = valid.tuning or api.TuningSpec()
    feedback = data.feedback or api.Feedback()
    window = data.window
    holdout = float(decimal(evaluation.holdout_fraction))
    if not HOLDOUT_BOUNDS[0] <= holdout <= HOLDOUT_BOUNDS[1]:
        raise SpecError(f"spec.evaluation.holdoutFraction: {evaluation.holdout_fraction!r} must be between "
                        f"{HOLDOUT_BOUNDS[0]} and {HOLDOUT_BOUNDS[1]}: the trainer needs rows on both sides of the split")
    strategy = None if tuning.strategy == "none" else tuning.strategy
    if strategy and not tuning.space:
        raise SpecError(f"spec.tuning.space: tuning strategy {strategy} needs a search space")
    written = {"minScore": evaluation.min_score, "maxScore": evaluation.max_score,
               "mustBeatChampionBy": evaluation.must_beat_champion_by}
    max_missing = _number(validation.max_missing_fraction)
    return PipelineSpec(
        task=model.task,
        estimator=model.estimator,
        params=dict(model.params or {}),
        target=model.target,
        features=tuple(model.features) if model.features else None,
        source=data.source,
        # Unset in a run spec written by hand: detected from the file names. Through the API server
        # the operator's snapshot always carries the CRD default, parquet.
        format=data.format if "format" in data.model_fields_set else None,
        timestamp_column=data.timestamp_column,
        window=window_of(window.last) if window and window.last is not None else None,
        window_candidates=tuple(window_of(size) for size in (window.candidates or [])) if window else (),
        feedback=feedback.enabled,
        feedback_id_column=feedback.id_column,
        min_rows=validation.min_rows,
        max_missing_fraction=1.0 if max_missing is None else max_missing,  # unset: no limit
        schema=validation.schema_,
        column_types=dict(validation.columns or {}),
        metric=valid.evaluation_metric(),
        holdout_fraction=holdout,
        min_score=_number(evaluation.min_score),
        max_score=_number(evaluation.max_score),
        must_beat_champion_by=_number(evaluation.must_beat_champion_by),
        tuning_strategy=strategy,
        tuning_trials=tuning.trials,
        tuning_space=dict(tuning.space or {}),
        tuning_time_budget=parse_duration(tuning.time_budget).total_seconds() if tuning.time_budget else None,
        tuning_cv=tuning.cv,
        seed=valid.seed,
        thresholds_as_written={key: str(value) for key, value in written.items() if value is not None},
        engine=valid.compute.engine if valid.compute else "single",
        feast=FeastData(data.feast.repository, data.feast.feature_service,
                        tuple(data.feast.features) if data.feast.features else None,
                        data.feast.feedback_push_source) if data.feast else None,
    )


# --- the run spec around it: read through noria.runspec, the type the operator writes by ------------
def parse_time(value: Any, where: str) -> dt.datetime:
    try:
        return parse_timestamp(str(value))
    except ValueError:
        raise SpecError(f"{where}: {value!r} is not an RFC 3339 time") from None


def parse_run_spec(raw: Any, now: dt.datetime | None = None) -> RunSpec:
    """The whole run spec, checked by ``noria.runspec.read_run_spec`` (``RunSpecDocument``), then the
    pipeline spec inside by the API model. ``now`` (optional RFC 3339 ``now`` key, for replays and
    tests) anchors duration windows; the default is the current time."""
    try:
        document = runspec.read_run_spec(raw)
    except runspec.RunSpecError as exc:
        raise SpecError(str(exc)) from None
    try:
        trusted = parse_trusted_prefixes(" ".join(document.get("trustedDataPrefixes", [])), "trustedDataPrefixes")
    except InvalidTrustedPrefix as exc:
        raise SpecError(str(exc)) from None
    c = document.get("champion")
    champion = None if c is None else Champion(c["name"], c["artifactUri"], c["digest"], c.get("profileUri"))
    anchor = parse_time(document["now"], "now") if document.get("now") else (now or dt.datetime.now(dt.UTC))
    return RunSpec(
        run_id=document["runId"],
        trigger=document.get("trigger") or "manual",
        namespace=document["namespace"],
        pipeline=document["pipeline"],
        version=document["version"],
        spec=parse_pipeline_spec(document["spec"]),
        champion=champion,
        output_uri=document["outputUri"],
        store_root=document.get("storeRoot") or "",
        now=anchor,
        raw=dict(document),
        trusted_data_prefixes=trusted,
    )
