"""The payloads between the operator and a trainer Job, typed once and imported on both sides.

Three things cross that process boundary (docs/contracts.md):

- the **run spec**, which the operator writes into the run's immutable ConfigMap and the trainer
  reads with ``--spec`` (``RunSpecDocument``);
- the trainer's **summary**, which the trainer writes to its termination-message file and the
  operator reads from the pod (``SuccessSummary`` / ``FailureSummary``);
- the trainer's **exit code**, which the Job's ``podFailurePolicy`` reads: a failure that another
  pod of the same run would meet again (the spec, the data, validation, fitting, the champion, the
  output location) fails the Job at once; anything else (a crash, an out-of-memory kill, an
  evicted pod) is infrastructure and is retried (docs/training.md, "Retries").

The trainer image ships this package (trainer_image/Dockerfile copies ``operator/noria``), so both
sides import this module rather than restating field names or codes; the operator reads a
summary only through ``read_summary``. Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, NotRequired, Required

from pydantic import Field, TypeAdapter, ValidationError

# typing_extensions (a pydantic dependency): pydantic reads typing.TypedDict only from Python 3.12
from typing_extensions import TypedDict

from noria.api.model_version import DIGEST_RE

# --- exit codes -------------------------------------------------------------------------------
EXIT_OK: Final = 0  # succeeded: the gate passed or rejected the contender; the artifact set is written
EXIT_UNEXPECTED: Final = 1  # a bug or an unforeseen error: the reason carries the exception
EXIT_SPEC: Final = 2  # the run spec or pipeline spec is malformed, or the estimator is not allowed
EXIT_DATA: Final = 3  # the data cannot be read, is empty, or the window holds no rows
EXIT_VALIDATION: Final = 4  # the data failed validation (columns, target, types, rows, missing values)
EXIT_TRAINING: Final = 5  # fitting, tuning or evaluating failed
EXIT_CHAMPION: Final = 6  # the champion artifact is refused by the loader (digest, file, archive, types) or unreadable
EXIT_OUTPUT: Final = 7  # the output location holds another run's version, or cannot be written

# Exit codes that another pod of the same run would meet again: the run spec, the data and the
# champion are the same for every pod of a run, and fitting is seeded. The Job fails on the first
# of these (podFailurePolicy action FailJob) instead of spending its retries. Every other non-zero
# exit (EXIT_UNEXPECTED, 137 for an out-of-memory kill or SIGKILL, 143 for SIGTERM) counts
# against the Job's backoffLimit.
NOT_RETRIED_EXIT_CODES: Final = (EXIT_SPEC, EXIT_DATA, EXIT_VALIDATION, EXIT_TRAINING, EXIT_CHAMPION,
                                 EXIT_OUTPUT)

# --- run spec ---------------------------------------------------------------------------------
RUN_SPEC_KEY: Final = "spec.json"  # the ConfigMap key the trainer reads
# A Dask run's scheduler address (tcp://host:port): the operator sets it on the trainer Job, the
# trainer connects to it (noria.training.dask_cluster, noria_trainer.dask_training).
SCHEDULER_ENV: Final = "NORIA_DASK_SCHEDULER"


# Strings the trainer cannot work without are not empty; a digest has the ModelVersion's shape.
_NonEmpty = Annotated[str, Field(min_length=1)]
_Digest = Annotated[str, Field(pattern=DIGEST_RE)]


class ChampionRef(TypedDict):
    """The version the contender must beat: its artifact and drift profile."""

    name: _NonEmpty
    artifactUri: _NonEmpty
    digest: _Digest
    profileUri: NotRequired[str | None]  # the operator always writes it (null without a profile)


class RunSpecDocument(TypedDict, total=False):
    """The run spec. The operator writes every key but ``now``; a run spec written by hand (tests,
    benchmarks, ``python -m noria_trainer run --spec``) may leave out the ones not ``Required``:
    the trainer reads ``trigger`` as "manual", ``storeRoot`` as unknown, ``champion`` as none."""

    runId: Required[_NonEmpty]  # <pipeline>-r<N>: the Job's name too, so every retried pod works on the same run
    trigger: str
    namespace: Required[_NonEmpty]
    pipeline: Required[_NonEmpty]
    version: Required[Annotated[int, Field(ge=1)]]  # N: registers <pipeline>-v<N> from <storeRoot>/<namespace>/<pipeline>/v<N>
    spec: Required[dict[str, Any]]  # the TrainingPipeline spec as the run saw it (read through noria.api)
    champion: ChampionRef | None
    outputUri: Required[_NonEmpty]
    storeRoot: str
    trustedDataPrefixes: list[str]
    # RFC 3339: the instant duration windows end at; ``noria backtest`` sets it to the replayed
    # time. Absent: the trainer's clock.
    now: str


_RUN_SPEC: Final = TypeAdapter(RunSpecDocument)


class RunSpecError(ValueError):
    """A run spec that does not have the shape above; the message names every bad field."""


def _problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``<field>: <what is wrong> (got <value>)``, the field spelt as in the document."""
    out = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        message = "required" if e["type"] == "missing" else (
            e["msg"].replace("Input should be", "must be", 1).replace("String should", "must", 1))
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r:.80})"
        out.append(f"{where or 'run spec'}: {message}{got}")
    return out


def read_run_spec(raw: Any) -> RunSpecDocument:
    """``raw`` (spec.json, parsed) checked against ``RunSpecDocument``, for the trainer: the one reader
    of the document the operator writes by. ``RunSpecError`` names every bad field; keys outside
    the definition are kept. The pipeline spec inside is checked by its own model (noria.api)."""
    if not isinstance(raw, dict):
        raise RunSpecError(f"run spec: expected an object, got {type(raw).__name__}")
    try:
        checked = _RUN_SPEC.validate_python(raw)
    except ValidationError as exc:
        raise RunSpecError("; ".join(_problems(exc))) from None
    return {**raw, **checked}  # type: ignore[typeddict-item]  # TypedDicts drop unknown keys; keep them


# --- summary ----------------------------------------------------------------------------------
SUMMARY_LIMIT: Final = 4096  # bytes: the kubelet keeps at most 4 KB of a termination message


class RefitSummary(TypedDict):
    done: bool
    rows: int


class FeastSummary(TypedDict, total=False):
    """The Feast feature definitions a run used (spec.data.feast): ModelVersion lineage.data.feast."""

    repository: str
    featureService: str
    definitionsDigest: str  # sha256:<64 hex> of the feature views' and service's specs (noria_trainer.feast_source)


class _SuccessRequired(TypedDict):
    """What the operator needs to register a version; a summary without one of these is refused."""

    status: Literal["succeeded"]
    runId: str
    version: int
    digest: str  # sha256:<64 hex> of model.skops
    artifactUri: str
    verdict: Literal["passed", "rejected"]
    reason: str


class SuccessSummary(_SuccessRequired, total=False):
    """The trainer writes every key; the ones below are shown when present (the 4 KB cut of
    ``SUMMARY_LIMIT`` nulls the metrics first, and report.json keeps them anyway)."""

    profileUri: str | None
    metadataUri: str | None
    reportUri: str | None
    # Decimal strings, e.g. {"f1": "0.8312"}; precision, recall and f1 are macro averages over the
    # classes seen (noria.scoring). A number is read too and written to the ModelVersion as a string.
    metrics: dict[str, str | int | float] | None
    championMetrics: dict[str, str | int | float] | None
    rows: int | None
    feedbackRows: int | None
    window: str | None
    trainedAt: str | None
    failedStage: None
    refit: RefitSummary | None
    # The model file's format, the ModelVersion's spec.artifact.format; absent means skops.
    artifactFormat: Literal["skops", "xgboost-json"]
    feast: FeastSummary | None  # only for a pipeline with spec.data.feast


class FailureSummary(TypedDict, total=False):
    status: Required[Literal["failed"]]
    runId: str | None
    version: int | None
    failedStage: str | None  # spec, output, champion, data, validation, training, evaluation, unexpected
    reason: str | None
    exitCode: int | None


Summary = SuccessSummary | FailureSummary

# The one reader of a summary, for the operator: the same definitions the trainer writes by.
_SUMMARY: Final = TypeAdapter(Annotated[Summary, Field(discriminator="status")])


class SummaryError(ValueError):
    """A summary that does not have the shape above; the message names the field."""


def read_summary(raw: Any) -> Summary:
    """``raw`` (the termination message, parsed) checked against ``SuccessSummary`` or
    ``FailureSummary`` by its ``status``; ``SummaryError`` names every bad field as
    ``summary.<field>``. Keys outside the definitions are kept."""
    try:
        checked = _SUMMARY.validate_python(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            tag = e["type"] in ("union_tag_invalid", "union_tag_not_found")  # the status picks the type
            where = "status" if tag else ".".join(str(p) for p in e["loc"] if p not in ("succeeded", "failed"))
            problems.append(f"summary{'.' + where if where else ''}: {e['msg']} (got {e.get('input')!r:.80})")
        raise SummaryError("; ".join(problems)) from None
    return {**raw, **checked}  # type: ignore[return-value]  # TypedDicts drop unknown keys; keep them
