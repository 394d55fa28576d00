"""The run spec (contracts: ConfigMap ``<pipeline>-r<N>``, key ``spec.json``), parsed defensively.

The pipeline spec inside is the user's YAML snapshot, camelCase as in the CRD. Thresholds arrive as
strings ("0.70") or numbers; every field is checked here so a mistake is reported as
"spec.evaluation.minScore: 'abc' is not a number" before any data is read.

Defaults are not restated here: an unset field takes the default of its ``noria.api`` model (the
single source of the CRD), read through ``_api_default``, and a unit test compares the two parsers
field by field, so the trainer cannot drift from what ``kubectl explain`` tells the user.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from noria.api import training_pipeline as api
from noria.artifact import DIGEST_PATTERN
from noria.artifact_scope import InvalidTrustedPrefix, parse_trusted_prefixes
from pydantic import BaseModel, ValidationError

Task = Literal["classification", "regression"]
SectionT = TypeVar("SectionT", bound=BaseModel)

CLASSIFICATION_METRICS: Final = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS: Final = ("rmse", "mae", "r2")
LOWER_IS_BETTER: Final = frozenset({"rmse", "mae"})
COLUMN_TYPES: Final = ("numeric", "float", "integer", "int", "string", "categorical", "category", "bool", "boolean",
                       "datetime")

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_ROWS: Final = re.compile(r"^\s*(\d+)\s*rows?\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
class PipelineSpec:
    task: Task
    estimator: str
    params: dict[str, Any]
    target: str
    features: tuple[str, ...] | None
    source: str
    format: str | None
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


# --- small parsers ------------------------------------------------------------------------------
def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _string(value: Any, where: str, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise SpecError(f"{where}: required")
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a string, got {value!r}")
    return value


def _number(value: Any, where: str, default: float | None = None, lo: float | None = None,
            hi: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise SpecError(f"{where}: {value!r} is not a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: {value!r} is not a number") from None
    if out != out:
        raise SpecError(f"{where}: NaN is not allowed")
    if lo is not None and out < lo or hi is not None and out > hi:
        raise SpecError(f"{where}: {value!r} must be between {lo} and {hi}")
    return out


def _integer(value: Any, where: str, default: int, lo: int = 0) -> int:
    if value is None or value == "":
        return default
    try:
        out = int(str(value).strip())
    except ValueError:
        raise SpecError(f"{where}: {value!r} is not an integer") from None
    if out < lo:
        raise SpecError(f"{where}: {value!r} must be at least {lo}")
    return out


def parse_duration(value: Any, where: str) -> dt.timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise SpecError(f"{where}: {value!r} is not a duration like 90d, 12h, 30m or 45s")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_window(value: Any, where: str) -> Window:
    """``"180d"`` (a duration) or ``"50000 rows"`` / an integer (the last N rows)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise SpecError(f"{where}: {value!r} rows must be positive")
        return Window(label=f"{value} rows", rows=value)
    text = str(value)
    rows = _ROWS.match(text)
    if rows:
        n = int(rows.group(1))
        if n <= 0:
            raise SpecError(f"{where}: {value!r} rows must be positive")
        return Window(label=text.strip(), rows=n)
    try:
        duration = parse_duration(text, where)
    except SpecError:
        raise SpecError(f"{where}: {value!r} is neither a duration (180d) nor a row count (50000 rows)") from None
    if duration.total_seconds() <= 0:
        raise SpecError(f"{where}: {value!r} must be positive")
    return Window(label=text.strip(), duration=duration)


def parse_time(value: Any, where: str) -> dt.datetime:
    try:
        out = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"{where}: {value!r} is not an RFC 3339 time") from None
    return out if out.tzinfo else out.replace(tzinfo=dt.UTC)


def _api_default(model: type[BaseModel], name: str) -> Any:
    """The default the CRD documents for ``model.name`` (snake_case field name)."""
    return model.model_fields[name].default


def _api_section(model: type[SectionT], value: Any, where: str) -> SectionT:
    """A spec section read through its ``noria.api`` model (one reader of the API, docs/conventions.md): a
    misspelt key such as ``enable`` is refused by name instead of silently meaning the default."""
    try:
        return model.model_validate(_mapping(value, where))
    except ValidationError as exc:
        first = exc.errors()[0]
        field_path = ".".join(str(part) for part in first["loc"])
        known = ", ".join(f.alias or name for name, f in model.model_fields.items())
        message = f"unknown field (known: {known})" if first["type"] == "extra_forbidden" else first["msg"]
        raise SpecError(f"{where}{'.' + field_path if field_path else ''}: {message}") from None


# --- the pipeline spec --------------------------------------------------------------------------
def parse_pipeline_spec(spec: dict[str, Any]) -> PipelineSpec:
    spec = _mapping(spec, "spec")
    model = _mapping(spec.get("model"), "spec.model")
    data = _mapping(spec.get("data"), "spec.data")
    validation = _mapping(spec.get("validation"), "spec.validation")
    evaluation = _mapping(spec.get("evaluation"), "spec.evaluation")
    tuning = _mapping(spec.get("tuning"), "spec.tuning")

    task = _string(model.get("task"), "spec.model.task")
    if task not in ("classification", "regression"):
        raise SpecError(f"spec.model.task: {task!r} must be classification or regression")
    estimator = _string(model.get("estimator"), "spec.model.estimator")
    params = _mapping(model.get("params"), "spec.model.params")
    target = _string(model.get("target"), "spec.model.target")
    features = model.get("features")
    if features is not None:
        if not isinstance(features, list) or not features or not all(isinstance(f, str) and f for f in features):
            raise SpecError("spec.model.features: expected a non-empty list of column names")
        if target in features:
            raise SpecError(f"spec.model.features: the target {target!r} cannot also be a feature")
        if len(set(features)) != len(features):
            raise SpecError("spec.model.features: a column is listed twice")

    source = _string(data.get("source"), "spec.data.source")
    fmt = _string(data.get("format"), "spec.data.format", required=False)
    if fmt is not None and fmt not in ("csv", "parquet"):
        raise SpecError(f"spec.data.format: {fmt!r} must be csv or parquet")
    ts_col = _string(data.get("timestampColumn"), "spec.data.timestampColumn", required=False)
    window_spec = _mapping(data.get("window"), "spec.data.window")
    window: Window | None = None
    candidates: tuple[Window, ...] = ()
    if "last" in window_spec and "candidates" in window_spec:
        raise SpecError("spec.data.window: give either last or candidates, not both")
    if window_spec.get("last") is not None:
        window = parse_window(window_spec["last"], "spec.data.window.last")
    if window_spec.get("candidates") is not None:
        raw = window_spec["candidates"]
        if not isinstance(raw, list) or not raw:
            raise SpecError("spec.data.window.candidates: expected a non-empty list like [30d, 90d, 180d]")
        candidates = tuple(parse_window(c, f"spec.data.window.candidates[{i}]") for i, c in enumerate(raw))
    unknown = set(window_spec) - {"last", "candidates"}
    if unknown:
        raise SpecError(f"spec.data.window: unknown field(s) {sorted(unknown)}; use last or candidates")
    needs_time = [w.label for w in ((window,) if window else ()) + candidates if w.duration is not None]
    if needs_time and not ts_col:
        raise SpecError(f"spec.data.window: {needs_time[0]} is a duration, which needs spec.data.timestampColumn")
    feedback_spec = _api_section(api.Feedback, data.get("feedback"), "spec.data.feedback")
    feedback = feedback_spec.enabled
    feedback_id_column = feedback_spec.id_column

    min_rows = _integer(validation.get("minRows"), "spec.validation.minRows",
                        default=_api_default(api.ValidationSpec, "min_rows"), lo=1)
    # unset (the API's None) = no limit
    max_missing = _number(validation.get("maxMissingFraction"), "spec.validation.maxMissingFraction",
                          default=1.0, lo=0.0, hi=1.0)
    schema = validation.get("schema") or _api_default(api.ValidationSpec, "schema_")
    if schema not in ("strict", "lenient"):
        raise SpecError(f"spec.validation.schema: {schema!r} must be strict or lenient")
    column_types = _mapping(validation.get("columns"), "spec.validation.columns")
    for col, kind in column_types.items():
        if kind not in COLUMN_TYPES:
            raise SpecError(f"spec.validation.columns.{col}: {kind!r} is not one of {', '.join(COLUMN_TYPES)}")

    metric = str(evaluation.get("metric") or api.DEFAULT_METRIC[task])
    known = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if metric not in known:
        raise SpecError(f"spec.evaluation.metric: {metric!r} is not a {task} metric ({', '.join(known)})")
    holdout = _number(evaluation.get("holdoutFraction"), "spec.evaluation.holdoutFraction",
                      default=float(_api_default(api.EvaluationSpec, "holdout_fraction")), lo=0.01, hi=0.9)
    min_score = _number(evaluation.get("minScore"), "spec.evaluation.minScore")
    max_score = _number(evaluation.get("maxScore"), "spec.evaluation.maxScore")
    if min_score is not None and metric in LOWER_IS_BETTER:
        raise SpecError(f"spec.evaluation.minScore: {metric} is lower-is-better; use maxScore")
    if max_score is not None and metric not in LOWER_IS_BETTER:
        raise SpecError(f"spec.evaluation.maxScore: {metric} is higher-is-better; use minScore")
    # Unset means what the API documents: the champion is scored on the same holdout and reported,
    # and does not gate (it used to default to 0 here, contradicting the CRD).
    unset_margin = _api_default(api.EvaluationSpec, "must_beat_champion_by")
    beat_by = _number(evaluation.get("mustBeatChampionBy"), "spec.evaluation.mustBeatChampionBy",
                      default=None if unset_margin is None else float(unset_margin))
    written: dict[str, str] = {k: str(evaluation[k]) for k in ("minScore", "maxScore", "mustBeatChampionBy") if k in evaluation}

    strategy = _string(tuning.get("strategy"), "spec.tuning.strategy", required=False)
    if strategy not in (None, "none", "random", "grid"):
        raise SpecError(f"spec.tuning.strategy: {strategy!r} must be random, grid or none")
    space = _mapping(tuning.get("space"), "spec.tuning.space")
    for name, values in space.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"spec.tuning.space.{name}: expected a list ([low, high] or choices)")
    if strategy in ("random", "grid") and not space:
        raise SpecError(f"spec.tuning.space: tuning strategy {strategy} needs a search space")
    budget = tuning.get("timeBudget")
    return PipelineSpec(
        task=task,  # type: ignore[arg-type]
        estimator=estimator or "",
        params=dict(params),
        target=target or "",
        features=tuple(features) if features else None,
        source=source or "",
        format=fmt,
        timestamp_column=ts_col,
        window=window,
        window_candidates=candidates,
        feedback=feedback,
        feedback_id_column=feedback_id_column,
        min_rows=min_rows,
        max_missing_fraction=float(max_missing if max_missing is not None else 1.0),
        schema=schema,
        column_types=dict(column_types),
        metric=metric,
        holdout_fraction=float(holdout if holdout is not None else 0.2),
        min_score=min_score,
        max_score=max_score,
        must_beat_champion_by=beat_by,
        tuning_strategy=None if strategy in (None, "none") else strategy,
        tuning_trials=_integer(tuning.get("trials"), "spec.tuning.trials",
                               default=_api_default(api.TuningSpec, "trials"), lo=1),
        tuning_space=dict(space),
        tuning_time_budget=parse_duration(budget, "spec.tuning.timeBudget").total_seconds() if budget else None,
        tuning_cv=_integer(tuning.get("cv"), "spec.tuning.cv", default=_api_default(api.TuningSpec, "cv"), lo=2),
        seed=_integer(spec.get("seed"), "spec.seed", default=_api_default(api.TrainingPipelineSpec, "seed")),
        thresholds_as_written=written,
    )


def parse_run_spec(raw: Any, now: dt.datetime | None = None) -> RunSpec:
    """The whole run spec. ``now`` (optional RFC 3339 ``now`` key, for replays and tests) anchors
    duration windows; the default is the current time."""
    raw = _mapping(raw, "run spec")
    run_id = _string(raw.get("runId"), "runId")
    pipeline = _string(raw.get("pipeline"), "pipeline")
    namespace = _string(raw.get("namespace"), "namespace")
    version = _integer(raw.get("version"), "version", default=0, lo=1)
    if version == 0:
        raise SpecError("version: required")
    output_uri = _string(raw.get("outputUri"), "outputUri")
    store_root = _string(raw.get("storeRoot"), "storeRoot", required=False) or ""
    trusted_raw = raw.get("trustedDataPrefixes") or []
    if not isinstance(trusted_raw, list) or not all(isinstance(p, str) for p in trusted_raw):
        raise SpecError("trustedDataPrefixes: expected a list of URI prefixes")
    try:
        trusted = parse_trusted_prefixes(" ".join(trusted_raw), "trustedDataPrefixes")
    except InvalidTrustedPrefix as exc:
        raise SpecError(str(exc)) from None
    champion_raw = raw.get("champion")
    champion: Champion | None = None
    if champion_raw is not None:
        c = _mapping(champion_raw, "champion")
        digest = _string(c.get("digest"), "champion.digest")
        if not DIGEST_PATTERN.match(digest or ""):
            raise SpecError(f"champion.digest: {digest!r} is not of the form sha256:<64 hex>")
        champion = Champion(
            name=_string(c.get("name"), "champion.name") or "",
            artifact_uri=_string(c.get("artifactUri"), "champion.artifactUri") or "",
            digest=digest or "",
            profile_uri=_string(c.get("profileUri"), "champion.profileUri", required=False),
        )
    anchor = parse_time(raw["now"], "now") if raw.get("now") else (now or dt.datetime.now(dt.UTC))
    return RunSpec(
        run_id=run_id or "",
        trigger=str(raw.get("trigger") or "manual"),
        namespace=namespace or "",
        pipeline=pipeline or "",
        version=version,
        spec=parse_pipeline_spec(raw.get("spec")),
        champion=champion,
        output_uri=output_uri or "",
        store_root=store_root,
        now=anchor,
        raw=raw,
        trusted_data_prefixes=trusted,
    )
