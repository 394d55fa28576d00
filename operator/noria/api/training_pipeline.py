"""TrainingPipeline: how to train a model, on which data, when to retrain it, and how to gate it.

The user owns ``spec`` (it lives in Git); the operator writes only ``status``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, StrictStr, WithJsonSchema, model_validator

from .common import (
    NAME_MAX,
    ApiVersion,
    Condition,
    DataSourceUri,
    Decimalish,
    Duration,
    Fraction,
    NoriaModel,
    ObjectMeta,
    ResourceRequirements,
    ShortText,
    StatusModel,
    StoreAccess,
    Text,
    Timestamp,
    TriggerKind,
    _cel_regex,
    _checked_pattern,
    api_version_field,
    cel,
    conditions_field,
    with_cel,
)

KIND: Final = "TrainingPipeline"
PLURAL: Final = "trainingpipelines"

CLASSIFICATION_METRICS: Final = ("accuracy", "f1", "precision", "recall", "roc_auc")
REGRESSION_METRICS: Final = ("r2", "mae", "rmse")
# Metrics where lower is better: gated by maxScore instead of minScore; mustBeatChampionBy means "lower by".
LOWER_IS_BETTER: Final = ("mae", "rmse")
MetricName = Literal["accuracy", "f1", "precision", "recall", "roc_auc", "r2", "mae", "rmse"]
DEFAULT_METRIC: Final = {"classification": "f1", "regression": "rmse"}
# Defaults of the drift and performance triggers (the measurements behind them: docs/triggers.md):
# the live window both read, the live values a feature needs before it is tested, and the chance
# that noise alone fires one evaluation.
DEFAULT_TRIGGER_WINDOW: Final = "1h"
DEFAULT_MIN_DRIFT_SAMPLES: Final = 200
DEFAULT_TRIGGER_SIGNIFICANCE: Final = "0.01"
DEFAULT_MIN_LABELS: Final = 100

# --- cron: five fields, or one of the @-macros -----------------------------------------------------
# The shape (five fields or a macro) is one rule; each field's range is another, so the API server
# names the field that is out of range ("hour must be 0-23 ...") instead of one message for all.
# A field is a list of items; an item is *, a value or a range a-b, with an optional step /n.
CRON_MACROS: Final = ("yearly", "annually", "monthly", "weekly", "daily", "hourly")
CRON_SHAPE_RE: Final = rf"^(@({'|'.join(CRON_MACROS)})|\S+ +\S+ +\S+ +\S+ +\S+)$"
CRON_MESSAGE: Final = (
    "schedule must be a cron expression with 5 fields (minute hour day-of-month month day-of-week),"
    ' e.g. "0 2 * * 0", or @hourly/@daily/@weekly/@monthly/@yearly'
)
_FIVE_FIELDS_RE: Final = r"^\S+ +\S+ +\S+ +\S+ +\S+$"
_MONTH_NAMES: Final = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAY_NAMES: Final = "sun|mon|tue|wed|thu|fri|sat"


def _cron_list(value: str, extra: str = "") -> str:
    """A cron field: comma-separated items, each *, a value or a range, with an optional step."""
    item = rf"((\*|{value}(-{value})?)(/[1-9][0-9]?)?{extra})"
    return rf"{item}(,{item})*"


@dataclass(frozen=True)
class CronFieldRule:
    """The range of one of the five cron fields, checked only when the schedule has five fields."""

    position: int  # 0 = minute ... 4 = day of week
    field: str  # the regex of the whole field
    message: str

    @property
    def regex(self) -> str:
        before = r"\S+ +" * self.position
        after = r" +\S+" * (4 - self.position)
        return rf"^{before}({self.field}){after}$"

    def holds(self, schedule: str) -> bool:
        return not re.fullmatch(_FIVE_FIELDS_RE, schedule) or bool(re.fullmatch(self.regex, schedule))

    def cel(self) -> dict[str, str]:
        return cel(
            f"!self.matches({_cel_regex(_FIVE_FIELDS_RE)}) || self.matches({_cel_regex(self.regex)})",
            self.message,
        )


_CRON_SYNTAX: Final = "(*, a value, a range a-b, a step /n, or a list of them)"
CRON_FIELD_RULES: Final = (
    CronFieldRule(0, _cron_list(r"[0-5]?[0-9]"), f"minute (1st field) must be 0-59 {_CRON_SYNTAX}"),
    CronFieldRule(1, _cron_list(r"([01]?[0-9]|2[0-3])"), f"hour (2nd field) must be 0-23 {_CRON_SYNTAX}"),
    CronFieldRule(
        2,
        rf"([?]|L|{_cron_list(r'(0?[1-9]|[12][0-9]|3[01])')})",
        f"day of month (3rd field) must be 1-31, ? or L {_CRON_SYNTAX}",
    ),
    CronFieldRule(
        3,
        _cron_list(rf"(0?[1-9]|1[0-2]|(?i:{_MONTH_NAMES}))"),
        f"month (4th field) must be 1-12 or jan-dec {_CRON_SYNTAX}",
    ),
    CronFieldRule(
        4,
        rf"([?]|{_cron_list(rf'([0-7]|(?i:{_DAY_NAMES}))', extra='(#[1-5])?')})",
        f"day of week (5th field) must be 0-7 (0 and 7 are Sunday), sun-sat, ? or d#n (n-th weekday d of the month) {_CRON_SYNTAX}",
    ),
)
# A day that no listed month has, with any day of week ("*" or "?": with a day of week set, cron
# fires on that weekday instead, so the schedule would still run).
CRON_NEVER_RE: Final = (
    r"^\S+ +\S+ +((3[01])(,3[01])* +(0?2|(?i:feb))(,(0?2|(?i:feb)))*"
    r"|31(,31)* +(0?[2469]|11|(?i:feb|apr|jun|sep|nov))(,(0?[2469]|11|(?i:feb|apr|jun|sep|nov)))*) +[*?]$"
)
CRON_NEVER_MESSAGE: Final = 'schedule names a date that never comes (e.g. "0 2 31 2 *": no February has a 31st day), so it would never run'


def cron_problems(schedule: str) -> list[str]:
    """Every cron rule ``schedule`` breaks, as the API server words it (empty when it is valid)."""
    if not re.fullmatch(CRON_SHAPE_RE, schedule):
        return [CRON_MESSAGE]
    problems = [rule.message for rule in CRON_FIELD_RULES if not rule.holds(schedule)]
    if not problems and re.fullmatch(CRON_NEVER_RE, schedule):
        problems.append(CRON_NEVER_MESSAGE)
    return problems


def _cron_check(value: Any) -> Any:
    problems = cron_problems(value) if isinstance(value, str) else []
    if problems:
        raise ValueError("; ".join(problems) + f" (got {value!r})")
    return value


Cron = Annotated[
    StrictStr,
    AfterValidator(_cron_check),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 128,
            "x-kubernetes-validations": [
                cel(f"self.matches({_cel_regex(CRON_SHAPE_RE)})", CRON_MESSAGE),
                *(rule.cel() for rule in CRON_FIELD_RULES),
                cel(f"!self.matches({_cel_regex(CRON_NEVER_RE)})", CRON_NEVER_MESSAGE),
            ],
        }
    ),
]

# --- data windows: "180d" (by time, needs timestampColumn) or "50000 rows" (the newest N rows) ------
WINDOW_RE: Final = r"^(([0-9]+(m|h|d|w))+|[1-9][0-9]* rows)$"
WINDOW_MESSAGE: Final = (
    'window must be a duration such as "180d" (the newest data by timestampColumn) or a row count such as'
    ' "50000 rows" (the newest rows)'
)
WindowSize = Annotated[
    StrictStr,
    _checked_pattern(WINDOW_RE, WINDOW_MESSAGE),
    Field(
        json_schema_extra={
            "maxLength": 32,
            "x-kubernetes-validations": [cel(f"self.matches({_cel_regex(WINDOW_RE)})", WINDOW_MESSAGE)],
        }
    ),
]


def parse_window(text: str) -> tuple[Literal["duration", "rows"], str | int]:
    """``"50000 rows"`` -> ``("rows", 50000)``; ``"180d"`` -> ``("duration", "180d")``."""
    if not re.fullmatch(WINDOW_RE, text or ""):
        raise ValueError(f"{text!r}: {WINDOW_MESSAGE}")
    if text.endswith(" rows"):
        return "rows", int(text.split()[0])
    return "duration", text


ESTIMATOR_RE: Final = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
ESTIMATOR_MESSAGE: Final = (
    "estimator must be a dotted import path such as sklearn.linear_model.LogisticRegression"
)

WINDOW_ONE_MESSAGE: Final = "window: set exactly one of last or candidates"
WINDOW_NEEDS_TIMESTAMP_MESSAGE: Final = "timestampColumn is required when a window is a duration"
MIN_SCORE_MESSAGE: Final = "minScore is for higher-is-better metrics; rmse and mae are gated by maxScore"
MAX_SCORE_MESSAGE: Final = "maxScore is for lower-is-better metrics (rmse, mae); use minScore"
FEATURES_TARGET_MESSAGE: Final = "the target column cannot also be a feature"
FEAST_ONE_MESSAGE: Final = "feast: set exactly one of featureService or features"
FEAST_NEEDS_TIMESTAMP_MESSAGE: Final = (
    "timestampColumn is required with feast: it is each label's event time, the point in time features are"
    " looked up at"
)
FEAST_FEATURE_RE: Final = r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$"
FEAST_FEATURE_MESSAGE: Final = (
    'a Feast feature reference is <featureView>:<feature>, e.g. "driver_hourly_stats:conv_rate"'
)
FEAST_ENGINE_MESSAGE: Final = "feast data trains on engine single only (a Dask run does not read Feast yet)"
METRIC_TASK_MESSAGE: Final = (
    "metric does not fit the task: classification takes accuracy, f1, precision, recall or roc_auc;"
    " regression takes rmse, mae or r2"
)


class ModelSpec(NoriaModel):
    """What to learn and with which estimator."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "!has(self.features) || !(self.target in self.features)",
                FEATURES_TARGET_MESSAGE,
                field_path=".features",
            )
        )
    }

    task: Literal["classification", "regression"] = Field(description="classification or regression.")
    estimator: Annotated[
        StrictStr, Field(max_length=NAME_MAX), _checked_pattern(ESTIMATOR_RE, ESTIMATOR_MESSAGE)
    ] = Field(
        description=(
            "Import path of a scikit-learn compatible estimator, e.g. "
            "sklearn.ensemble.HistGradientBoostingClassifier. Only allow-listed paths are trained."
        ),
        json_schema_extra={"pattern": ESTIMATOR_RE},
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="Constructor arguments of the estimator, passed as given (free-form), e.g. {max_iter: 200}.",
    )
    target: Annotated[StrictStr, Field(min_length=1, max_length=NAME_MAX)] = Field(
        description="Name of the label column to predict. Required."
    )
    features: list[Annotated[StrictStr, Field(min_length=1, max_length=NAME_MAX)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Feature columns, in order, each once. Default: every column but the target and the timestamp column.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _features(self) -> ModelSpec:
        if self.features is not None:
            if len(set(self.features)) != len(self.features):
                raise ValueError("features: a column is listed twice")
            if self.target in self.features:
                raise ValueError(FEATURES_TARGET_MESSAGE)
        return self


class Window(NoriaModel):
    """Which slice of the data to train on. Exactly one of ``last`` or ``candidates``.

    A size is a duration (``"180d"``: rows whose timestampColumn is within that long before the run
    starts) or a row count (``"50000 rows"``: the newest rows). With feedback enabled, labelled
    production rows are rows of the window too: a row count counts them, newest first, and a
    duration places them by the time of their prediction.
    """

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel("[has(self.last), has(self.candidates)].filter(x, x).size() == 1", WINDOW_ONE_MESSAGE)
        )
    }

    last: WindowSize | None = Field(
        default=None,
        description='Train on the newest rows (data and labelled feedback together): "180d" or "50000 rows".',
    )
    candidates: list[WindowSize] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description=(
            "Try each window size and keep the one with the best validation score, e.g. [30d, 90d, 180d]."
        ),
    )

    @model_validator(mode="after")
    def _one_of(self) -> Window:
        if (self.last is None) == (self.candidates is None):
            raise ValueError(WINDOW_ONE_MESSAGE)
        return self

    def sizes(self) -> list[str]:
        return [self.last] if self.last is not None else list(self.candidates or [])


class Feedback(NoriaModel):
    """Production predictions joined with ground-truth labels sent to the feedback endpoint."""

    enabled: bool = Field(
        default=False,
        description=(
            "Learn from labelled production predictions: they join the data in time order, count in the window,"
            " and take part in the holdout. One label per prediction: the first, as the model server counted it."
        ),
    )
    id_column: ShortText | None = Field(
        default=None,
        description=(
            "Data column holding the prediction id, for data that also contains exported production traffic:"
            " a labelled prediction whose id is in it counts once (the data row is kept). Unset: a labelled"
            " prediction equal to a data row in every feature and in timestampColumn counts once."
        ),
    )


FeastFeature = Annotated[
    StrictStr,
    Field(max_length=NAME_MAX, json_schema_extra={"pattern": FEAST_FEATURE_RE}),
    _checked_pattern(FEAST_FEATURE_RE, FEAST_FEATURE_MESSAGE),
]


PUSH_SOURCE_RE: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$"
PUSH_SOURCE_MESSAGE: Final = ("feedbackPushSource is the name of a Feast push source: a letter, digit or '_', then"
                              " letters, digits, '_', '.' or '-' (at most 63)")
PushSourceName = Annotated[
    StrictStr,
    _checked_pattern(PUSH_SOURCE_RE, PUSH_SOURCE_MESSAGE),
    WithJsonSchema({"type": "string", "maxLength": 63, "x-kubernetes-validations": [
        cel(f"self.matches({_cel_regex(PUSH_SOURCE_RE)})", PUSH_SOURCE_MESSAGE)]}),
]


class FeastSource(NoriaModel):
    """Features from a Feast feature repository, joined point-in-time correct onto ``spec.data.source``
    (docs/training-feast.md). Exactly one of ``featureService`` or ``features``."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "[has(self.featureService), has(self.features)].filter(x, x).size() == 1",
                FEAST_ONE_MESSAGE,
                field_path=".featureService",
            )
        )
    }

    repository: DataSourceUri = Field(
        description=(
            "file:// URI of the Feast feature repository (the folder of feature_store.yaml, after `feast apply`)"
            " as the trainer pod sees it, e.g. file:///var/lib/noria/store/datasets/feast/driver_repo. The"
            " same place rules as spec.data.source."
        ),
    )
    feature_service: ShortText | None = Field(
        default=None, description="Name of a feature service of the repository: its features are the model's."
    )
    features: list[FeastFeature] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description='Feature references <featureView>:<feature>, e.g. ["driver_hourly_stats:conv_rate"].',
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    feedback_push_source: PushSourceName | None = Field(
        default=None,
        description=(
            "Also train on the labelled production rows model servers pushed to this Feast push source (a"
            " Rollout's spec.onlineFeatures.feast.feedbackPushSource): read from its feature view's batch source"
            " through Feast's offline store, each becomes a training row with the features as served, the label"
            " as target and the prediction time as timestampColumn, so the same window selects them"
            " (docs/training-feast.md)."
        ),
    )

    @model_validator(mode="after")
    def _one_of(self) -> FeastSource:
        if (self.feature_service is None) == (self.features is None):
            raise ValueError(FEAST_ONE_MESSAGE)
        return self


class DataSpec(NoriaModel):
    """Where the training data is and which part of it to use."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "!has(self.window) || has(self.timestampColumn) || "
                "(has(self.window.last) ? self.window.last.endsWith(' rows')"
                " : self.window.candidates.all(c, c.endsWith(' rows')))",
                WINDOW_NEEDS_TIMESTAMP_MESSAGE,
                field_path=".timestampColumn",
                reason="FieldValueRequired",
            ),
            cel(
                "!has(self.feast) || has(self.timestampColumn)",
                FEAST_NEEDS_TIMESTAMP_MESSAGE,
                field_path=".timestampColumn",
                reason="FieldValueRequired",
            ),
        )
    }

    source: DataSourceUri = Field(
        description=(
            "URI of a file, a folder or a glob of partitions: file:///var/lib/noria/store/datasets/churn/"
            " (the store volume) or s3://bucket/prefix/. It must lie under the store's shared datasets/"
            " folder, the pipeline's own namespace's folder of the store, or a prefix the operator trusts"
            " (NORIA_TRUSTED_DATA_PREFIXES); no '..', '//', '?', '#' or percent-escapes."
        ),
    )
    format: Literal["csv", "parquet"] = Field(default="parquet", description="csv or parquet.")
    timestamp_column: ShortText | None = Field(
        default=None,
        description="Column with the event time; needed for duration windows and new-data counting.",
    )
    window: Window | None = Field(
        default=None, description="Which slice of the data to train on. Default: all of it."
    )
    feedback: Feedback | None = Field(
        default=None, description="Whether to learn from labelled production traffic."
    )
    feast: FeastSource | None = Field(
        default=None,
        description=(
            "Take the features from a Feast feature repository: source is then the entity source (entity keys,"
            " timestampColumn and the target), and each row gets the feature values as of its timestamp."
        ),
    )

    @model_validator(mode="after")
    def _timestamp_for_duration_windows(self) -> DataSpec:
        if self.window and self.timestamp_column is None:
            if any(not s.endswith(" rows") for s in self.window.sizes()):
                raise ValueError(WINDOW_NEEDS_TIMESTAMP_MESSAGE)
        if self.feast and self.timestamp_column is None:
            raise ValueError(FEAST_NEEDS_TIMESTAMP_MESSAGE)
        return self


ColumnType = Literal[
    "numeric", "float", "integer", "int", "string", "categorical", "category", "bool", "boolean", "datetime"
]


class ValidationSpec(NoriaModel):
    """Data checks run before training; a failing check ends the run with outcome Failed."""

    min_rows: int = Field(default=1, ge=1, description="Fewest rows (after windowing) worth training on.")
    max_missing_fraction: Fraction | None = Field(
        default=None,
        description='Largest share of missing values allowed in any feature column, e.g. "0.05".',
    )
    schema_: Literal["strict", "lenient"] = Field(
        default="lenient",
        alias="schema",
        description=(
            "strict: the columns and their types must match the champion's; lenient: new columns are ignored"
            " and missing feature columns fail."
        ),
    )
    columns: dict[Annotated[StrictStr, Field(max_length=NAME_MAX)], ColumnType] | None = Field(
        default=None,
        max_length=1000,
        description="Expected type by column name, checked before training, e.g. {tenure: integer, contract: categorical}.",
    )


class EvaluationSpec(NoriaModel):
    """The gate a newly trained model must pass to become a Candidate."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                f"!has(self.minScore) || !has(self.metric) || !(self.metric in {list(LOWER_IS_BETTER)})",
                MIN_SCORE_MESSAGE,
                field_path=".minScore",
            ),
            cel(
                f"!has(self.maxScore) || (has(self.metric) && self.metric in {list(LOWER_IS_BETTER)})",
                MAX_SCORE_MESSAGE,
                field_path=".maxScore",
            ),
        )
    }

    @model_validator(mode="after")
    def _score_direction(self) -> EvaluationSpec:
        if self.min_score is not None and self.metric in LOWER_IS_BETTER:
            raise ValueError(MIN_SCORE_MESSAGE)
        if self.max_score is not None and self.metric not in LOWER_IS_BETTER:
            raise ValueError(MAX_SCORE_MESSAGE)
        return self

    metric: MetricName | None = Field(
        default=None,
        description=(
            "Metric scored on the holdout set. Default f1 (classification) or rmse (regression). precision,"
            " recall and f1 are macro averages over the classes, as in the live checks. For rmse and mae"
            " lower is better: the gate is maxScore, and mustBeatChampionBy means lower by."
        ),
    )
    holdout_fraction: Fraction = Field(
        default="0.2",
        description=(
            'Share of the window held out for the gate, e.g. "0.2": its newest rows (labelled feedback'
            " included) when the data has a timestampColumn or a window, a stratified random share otherwise."
            " A contender that passes is then refit on the whole window, holdout included; its metrics stay"
            " the gated holdout scores."
        ),
    )
    min_score: Decimalish | None = Field(
        default=None,
        description='Higher-is-better metrics: the model is Rejected below this score, e.g. "0.70".',
    )
    max_score: Decimalish | None = Field(
        default=None,
        description='Lower-is-better metrics (rmse, mae): the model is Rejected above this, e.g. "12.5".',
    )
    must_beat_champion_by: Decimalish | None = Field(
        default=None,
        description=(
            "The contender passes only if it scores more than this much better than the champion on the same"
            ' holdout: "0" = strictly better (a tie keeps the champion); a negative value such as "-0.005"'
            " lets a contender up to that much worse, and a tie, pass. Lower is better for rmse and mae."
            " Unset: the champion is scored on the holdout and reported, but not compared."
        ),
    )


class TuningSpec(NoriaModel):
    """Optional hyper-parameter search."""

    strategy: Literal["none", "grid", "random"] = Field(
        default="none", description="none, grid or random search."
    )
    trials: int = Field(default=10, ge=1, le=1000, description="Parameter sets tried by random search.")
    space: dict[str, Annotated[list[Any], Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Search space by estimator parameter: a list of two numbers [low, high] is a range (integers stay"
            " integers; a positive range of two decades or more is sampled log-uniformly), any other list is a"
            " set of choices. Values are free-form, as in params."
        ),
    )
    cv: int = Field(default=3, ge=2, le=20, description="Cross-validation folds scoring each parameter set.")
    time_budget: Duration | None = Field(
        default=None, description='Stop searching after this long, e.g. "10m".'
    )


class NewDataTrigger(NoriaModel):
    """Retrain when enough new rows arrived since the last run."""

    min_new_rows: int = Field(ge=1, description="Rows added since the last run that trigger a new one.")


PERFORMANCE_ONE_OF_MESSAGE: Final = (
    'performance: set below (an absolute floor, e.g. "0.75"), dropBy (a drop from this version\'s own'
    ' live level, e.g. "0.05"), or both'
)


class DriftTrigger(NoriaModel):
    """Retrain when live inputs drift from the champion's reference profile.

    A feature has drifted when it has at least minSamples live values in the window, its G test
    against the profile is significant after the Holm correction over all tested features, and its
    statistic (method) is above threshold: the test keeps noise from firing, the threshold keeps a
    huge sample from firing on a shift too small to matter. See docs/triggers.md."""

    method: Literal["psi", "kl", "js", "chi2", "ks", "wasserstein"] = Field(
        default="psi",
        description="Statistic comparing live and reference bins: psi, kl, js, chi2, ks or wasserstein.",
    )
    threshold: Decimalish = Field(
        description='Effect size: a feature drifts only if its statistic is above this value, e.g. "0.2".'
    )
    significance: Fraction = Field(
        default=DEFAULT_TRIGGER_SIGNIFICANCE,
        description=(
            "Chance that noise alone flags any feature in one evaluation (G test per feature, Holm-corrected"
            ' over features), e.g. "0.01".'
        ),
    )
    min_samples: int = Field(
        default=DEFAULT_MIN_DRIFT_SAMPLES,
        ge=1,
        le=1_000_000_000,
        description=(
            "Live values a feature needs in the window before it is tested; fewer is never drift (e.g. right"
            " after a new version starts serving)."
        ),
    )
    for_: Duration | None = Field(
        default=None, alias="for", description='Drift must last this long before it fires, e.g. "10m".'
    )
    window: Duration = Field(default=DEFAULT_TRIGGER_WINDOW, description='Live data window compared, e.g. "1h".')
    features: list[Annotated[StrictStr, Field(max_length=NAME_MAX)]] | None = Field(
        default=None,
        max_length=1000,
        description="Only these features count. Default: all profiled features.",
    )


class PerformanceTrigger(NoriaModel):
    """Retrain when the live score, computed from feedback labels, drops: below an absolute floor,
    or by dropBy from the serving version's own level, or either when both are set."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "has(self.below) || has(self.dropBy)", PERFORMANCE_ONE_OF_MESSAGE, reason="FieldValueRequired"
            )
        )
    }

    metric: MetricName = Field(
        description=(
            "Live metric from feedback counters, e.g. f1 or accuracy. precision, recall and f1 are macro averages"
            " over the classes, as in the Rollout's checks."
        )
    )
    below: Decimalish | None = Field(
        default=None, description='Fires when the live metric is below this value, e.g. "0.75".'
    )
    drop_by: Fraction | None = Field(
        default=None,
        description=(
            "Fires when the live metric has fallen at least this much below the serving version's baseline,"
            ' e.g. "0.05", and the fall is significant. The baseline is the version\'s own live metric in'
            " the first window with minLabels labels after it became the champion; shown in status."
        ),
    )
    significance: Fraction = Field(
        default=DEFAULT_TRIGGER_SIGNIFICANCE,
        description=(
            "dropBy only: chance that label noise alone makes a drop look significant (one-sided test of"
            ' baseline against live), e.g. "0.01".'
        ),
    )
    for_: Duration | None = Field(
        default=None, alias="for", description='It must stay below this long, e.g. "30m".'
    )
    min_labels: int = Field(
        default=DEFAULT_MIN_LABELS, ge=1, description="Labels needed before the live metric is trusted."
    )
    window: Duration = Field(
        default=DEFAULT_TRIGGER_WINDOW, description="Feedback window the live metric is computed over."
    )

    @model_validator(mode="after")
    def _one_of(self) -> PerformanceTrigger:
        if self.below is None and self.drop_by is None:
            raise ValueError(PERFORMANCE_ONE_OF_MESSAGE)
        return self


class Triggers(NoriaModel):
    """When to retrain besides the first run and `kubectl annotate tp <name> noria.dev/retrain=<any new value>`. Triggers during a run or the
    cooldown are coalesced into one pending run, never lost and never doubled."""

    schedule: Cron | None = Field(
        default=None,
        description=(
            'Cron schedule in UTC, e.g. "0 2 * * 0": minute 0-59, hour 0-23, day of month 1-31 (or L, ?), month'
            " 1-12 or jan-dec, day of week 0-7 or sun-sat (or ?, d#n), each field *, a value, a range a-b, a step /n"
            " or a list; or @hourly, @daily, @weekly, @monthly, @yearly. Out-of-range values and a day no listed"
            ' month has ("0 2 31 2 *", with day of week * or ?) are refused.'
        ),
    )
    new_data: NewDataTrigger | None = Field(default=None, description="Retrain on enough new rows.")
    drift: DriftTrigger | None = Field(default=None, description="Retrain on input drift.")
    performance: PerformanceTrigger | None = Field(
        default=None, description="Retrain on a live accuracy drop."
    )
    cooldown: Duration | None = Field(
        default=None,
        description='Least time between the end of one run and the start of the next, e.g. "1h".',
    )


class DaskCompute(NoriaModel):
    """A Dask cluster for one run, created through the Dask Kubernetes operator (DaskCluster) and deleted when
    the run ends."""

    workers: int = Field(default=2, ge=1, le=64, description="Dask worker pods. Default 2.")
    worker_resources: ResourceRequirements | None = Field(
        default=None, description="Resources of each worker pod, e.g. {limits: {memory: 512Mi}}."
    )
    scheduler_resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the scheduler pod."
    )


# The estimators compute.engine dask trains, by task: the one list the API server (a CEL rule on the
# spec), the offline validator and the trainer (noria_trainer.estimators) read. XGBoost trains in its
# own collective and ships in its envelope (noria.xgboost_artifact); the scikit-learn linear models are
# fitted by dask-ml and ship as the scikit-learn Pipeline a single run writes (noria_trainer.dask_linear).
# Any other estimator needs the whole window in one pod: compute.engine single.
DASK_ESTIMATORS: Final[dict[str, str]] = {
    "xgboost.XGBClassifier": "classification",
    "xgboost.XGBRegressor": "regression",
    "sklearn.linear_model.LogisticRegression": "classification",
    "sklearn.linear_model.LinearRegression": "regression",
    "sklearn.linear_model.Ridge": "regression",
}


def dask_estimators(task: str) -> list[str]:
    """The estimators of ``task`` compute.engine dask trains, in the list's order."""
    return [path for path, of in DASK_ESTIMATORS.items() if of == task]


DASK_ESTIMATOR_MESSAGE: Final = (
    "model.estimator does not train on compute.engine dask, which trains, for classification, "
    f"{' or '.join(dask_estimators('classification'))}; for regression, "
    f"{' or '.join(dask_estimators('regression'))} (any other estimator: compute.engine single)"
)


class ComputeSpec(NoriaModel):
    """Where a run trains."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "self.engine == 'dask' || !has(self.dask)",
                "dask settings need engine: dask",
                field_path=".dask",
                reason="FieldValueForbidden",
            )
        )
    }

    engine: Literal["single", "dask"] = Field(
        default="single",
        description=(
            "single: one trainer Job pod holds the training window in memory (default). dask: the window is read"
            " partition by partition by a Dask cluster and trained with a distributed learner (model.estimator"
            " xgboost.XGBClassifier/XGBRegressor across the workers, or sklearn.linear_model.LogisticRegression"
            " (two classes), LinearRegression or Ridge fitted by dask-ml), for data larger than one pod's memory."
        ),
    )
    dask: DaskCompute | None = Field(
        default=None, description="Dask cluster size and resources (engine: dask)."
    )


class TrainingPipelineSpec(NoriaModel):
    """The desired training behaviour."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "!has(self.compute) || self.compute.engine != 'dask' || (self.model.task == 'classification'"
                f" ? self.model.estimator in {dask_estimators('classification')}"
                f" : self.model.estimator in {dask_estimators('regression')})",
                DASK_ESTIMATOR_MESSAGE,
                field_path=".model.estimator",
            ),
            cel(
                "!has(self.evaluation) || !has(self.evaluation.metric) || (self.model.task == 'classification'"
                f" ? self.evaluation.metric in {list(CLASSIFICATION_METRICS)}"
                f" : self.evaluation.metric in {list(REGRESSION_METRICS)})",
                METRIC_TASK_MESSAGE,
                field_path=".evaluation.metric",
            ),
            cel(
                "!has(self.triggers) || !has(self.triggers.performance) || (self.model.task == 'classification'"
                f" ? self.triggers.performance.metric in {list(CLASSIFICATION_METRICS)}"
                f" : self.triggers.performance.metric in {list(REGRESSION_METRICS)})",
                METRIC_TASK_MESSAGE,
                field_path=".triggers.performance.metric",
            ),
            cel(
                "!has(self.data.feast) || !has(self.compute) || self.compute.engine != 'dask'",
                FEAST_ENGINE_MESSAGE,
                field_path=".compute.engine",
            ),
        )
    }

    model: ModelSpec = Field(description="What to learn and with which estimator.")
    data: DataSpec = Field(description="Where the training data is.")
    validation: ValidationSpec | None = Field(default=None, description="Data checks before training.")
    evaluation: EvaluationSpec | None = Field(default=None, description="The quality gate of a new model.")
    tuning: TuningSpec | None = Field(default=None, description="Hyper-parameter search.")
    triggers: Triggers | None = Field(default=None, description="When to retrain.")
    approval: Literal["automatic", "manual"] = Field(
        default="automatic",
        description=(
            "automatic: a model that passes the gate is Approved at once; manual: it waits as Candidate"
            " for `kubectl noria approve <name>` or `kubectl noria reject <name>` (annotations"
            " noria.dev/approve=<your name>, noria.dev/reject=<your name>)."
        ),
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the trainer Job's pod."
    )
    compute: ComputeSpec | None = Field(
        default=None, description="Where runs train. Default: one trainer pod."
    )
    store: StoreAccess | None = Field(
        default=None,
        description="How the trainer reaches s3:// data and the store: {s3: {endpoint, region, credentialsSecret}}.",
    )
    history_limit: int = Field(default=10, ge=1, le=50, description="Finished runs kept in status.lastRuns.")
    seed: int = Field(
        default=0, ge=0, description="Random seed of the holdout split, the estimator and the search."
    )

    @model_validator(mode="after")
    def _metric_fits_task(self) -> TrainingPipelineSpec:
        allowed = CLASSIFICATION_METRICS if self.model.task == "classification" else REGRESSION_METRICS
        if self.evaluation and self.evaluation.metric and self.evaluation.metric not in allowed:
            raise ValueError("evaluation.metric: " + METRIC_TASK_MESSAGE)
        if self.triggers and self.triggers.performance and self.triggers.performance.metric not in allowed:
            raise ValueError("triggers.performance.metric: " + METRIC_TASK_MESSAGE)
        if self.data.feast and self.compute and self.compute.engine == "dask":
            raise ValueError("compute.engine: " + FEAST_ENGINE_MESSAGE)
        return self

    def evaluation_metric(self) -> str:
        """The gate metric, with the task's default filled in."""
        chosen = self.evaluation.metric if self.evaluation else None
        return chosen or DEFAULT_METRIC[self.model.task]

    @model_validator(mode="after")
    def _dask_trains_the_estimator(self) -> TrainingPipelineSpec:
        if (
            self.compute
            and self.compute.engine == "dask"
            and self.model.estimator not in dask_estimators(self.model.task)
        ):
            raise ValueError("model.estimator: " + DASK_ESTIMATOR_MESSAGE)
        return self


# --- status --------------------------------------------------------------------------------------
class CurrentRun(StatusModel):
    """The run in progress."""

    id: ShortText = Field(description="Run id, <pipeline>-r<N>; also the name of its Job and ConfigMap.")
    trigger: TriggerKind | None = Field(default=None, description="What started it.")
    job: ShortText | None = Field(default=None, description="Name of the trainer Job.")
    started_at: Timestamp | None = Field(default=None, description="When the run started.")
    triggered_at: Timestamp | None = Field(
        default=None, description="When the first trigger of the run fired."
    )
    triggers: list[TriggerKind] | None = Field(
        default=None, max_length=8, description="Every trigger coalesced into this run, first one first."
    )
    reason: Text | None = Field(
        default=None, description='Why the run started, e.g. "drift: psi 0.31 on tenure".'
    )
    version: ShortText | None = Field(
        default=None, description="Name of the ModelVersion the run will register."
    )
    parent: ShortText | None = Field(default=None, description="The champion when the run started.")
    dask_scheduler: ShortText | None = Field(
        default=None,
        description="For a dask run: the uid of the scheduler pod its Job was started against "
        "(a replaced scheduler fails the run as DaskClusterLost).",
    )


class RunRecord(StatusModel):
    """A finished run."""

    id: ShortText = Field(description="Run id, <pipeline>-r<N>.")
    trigger: TriggerKind | None = Field(default=None, description="What started it.")
    outcome: ShortText | None = Field(
        default=None,
        description="Succeeded (a Candidate was made), Rejected (gate failed) or Failed (no model).",
    )
    reason: ShortText | None = Field(default=None, description="CamelCase reason of the outcome.")
    message: Text | None = Field(default=None, description="Human-readable detail.")
    started_at: Timestamp | None = Field(default=None, description="When the run started.")
    finished_at: Timestamp | None = Field(default=None, description="When the run ended.")
    duration: ShortText | None = Field(default=None, description='Run time, e.g. "3m12s".')
    version: ShortText | None = Field(default=None, description="ModelVersion created by the run, if any.")


class PendingTrigger(StatusModel):
    """A trigger that fired during a run or a cooldown and waits (coalesced: one per kind)."""

    trigger: TriggerKind = Field(description="The kind of trigger.")
    at: Timestamp | None = Field(default=None, description="When it first fired.")
    reason: Text | None = Field(default=None, description='Why it fired, e.g. "psi 0.31 > 0.2 on tenure".')
    count: int | None = Field(
        default=None, ge=1, description="How many times it fired while waiting (coalesced)."
    )
    champion: ShortText | None = Field(
        default=None,
        description=(
            "drift and performance: the version the evidence was about. Dropped unrun when another version"
            " becomes the champion, since the evidence says nothing about it."
        ),
    )


class TrainingPipelineStatus(StatusModel):
    """What the operator observed and decided. Conditions are the API; phase is their summary."""

    phase: ShortText | None = Field(
        default=None, description="Summary: Pending, Training, Ready, Degraded or Failed."
    )
    message: Text | None = Field(default=None, description="Human-readable summary of the phase.")
    conditions: list[Condition] | None = conditions_field()
    current_run: CurrentRun | None = Field(default=None, description="The run in progress, if any.")
    last_runs: list[RunRecord] | None = Field(
        default=None, max_length=50, description="Finished runs, newest first, at most spec.historyLimit."
    )
    latest_version: ShortText | None = Field(
        default=None, description="The newest ModelVersion made by this pipeline."
    )
    champion_version: ShortText | None = Field(
        default=None, description="The ModelVersion new models are compared with (the one in Production)."
    )
    last_trigger: TriggerKind | None = Field(
        default=None, description="Kind of the trigger that started the last run."
    )
    last_trigger_at: Timestamp | None = Field(default=None, description="When that trigger fired.")
    next_scheduled_run: Timestamp | None = Field(default=None, description="Next time the schedule fires.")
    pending_triggers: list[PendingTrigger] | None = Field(
        default=None, max_length=8, description="Triggers waiting for the current run or the cooldown to end."
    )
    triggers: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description=(
            "Per-trigger bookkeeping kept by the operator between passes, by trigger kind (free-form: last"
            " observation, when it fired, next schedule time)."
        ),
    )
    cooldown_until: Timestamp | None = Field(default=None, description="No new run starts before this time.")
    run_counter: int | None = Field(
        default=None, ge=0, description="N of the last run id <pipeline>-r<N> handed out."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation last acted on."
    )


class TrainingPipeline(NoriaModel):
    """A TrainingPipeline manifest."""

    api_version: ApiVersion = api_version_field()
    kind: Literal["TrainingPipeline"] = Field(default=KIND, description="TrainingPipeline")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: TrainingPipelineSpec = Field(description="How to train, on which data, when, and how to gate it.")
    status: TrainingPipelineStatus | None = Field(default=None, description="Written by the operator.")


__all__ = [
    "CLASSIFICATION_METRICS",
    "CRON_FIELD_RULES",
    "CRON_SHAPE_RE",
    "cron_problems",
    "CurrentRun",
    "DataSpec",
    "DriftTrigger",
    "EvaluationSpec",
    "FeastSource",
    "Feedback",
    "KIND",
    "ModelSpec",
    "NewDataTrigger",
    "PLURAL",
    "PendingTrigger",
    "PerformanceTrigger",
    "REGRESSION_METRICS",
    "RunRecord",
    "TrainingPipeline",
    "TrainingPipelineSpec",
    "ComputeSpec",
    "DaskCompute",
    "TrainingPipelineStatus",
    "Triggers",
    "TuningSpec",
    "ValidationSpec",
    "Window",
    "parse_window",
]
