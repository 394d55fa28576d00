"""Building blocks shared by the three resources: the base model, the value types and their rules.

Every value type here carries two things that must agree: the check pydantic runs when Python code
validates a manifest, and the CRD schema (with its CEL rule) the API server runs when a user applies
one. Both are built from the same regular expression and the same message, so a manifest is refused
for the same reason, with the same words, wherever it is checked.

Why strings for numbers: a YAML float such as ``0.1`` does not survive a round trip through every
tool of a GitOps chain unchanged (``0.1`` may come back as ``0.10000000000000001``), and the API
server's structural schemas have no decimal type. So thresholds, fractions and metric values are
written as decimal strings (``"0.05"``) or integers (``2``), never as floats; ``decimal()`` turns
them into a ``Decimal`` for arithmetic.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from noria.contracts import API_VERSION, GROUP, VERSION  # re-exported: the API's names are the contracts'

CATEGORY: Final = "noria"

# Length limits keep the API server's CEL cost estimate bounded (a regex over an unbounded string
# has an unbounded estimated cost) and make absurd input fail early.
NAME_MAX: Final = 253
TEXT_MAX: Final = 1024
URI_MAX: Final = 2048
QUERY_MAX: Final = 4096


class NoriaModel(BaseModel):
    """Base of every resource part: camelCase on the wire, unknown fields refused, and strict types:
    ``setWeight: "20"`` or ``dryRun: "yes"`` is refused here exactly as the API server refuses it (its
    schema says integer / boolean), so the offline validator and the cluster give the same verdict."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        frozen=False,
    )


class StatusModel(NoriaModel):
    """Base of status parts. Status is written by the operator, never by people; unknown keys are
    kept rather than refused so that an operator one release ahead of the installed CRD (or a
    Kopf handler result) never has its whole status patch rejected."""

    model_config = ConfigDict(extra="allow")


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry. ``field_path`` (``.strategy``) points the error at a
    child field when the rule has to sit on the parent to see its siblings."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def with_cel(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


def _checked_pattern(regex: str, message: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.fullmatch(value):
            raise ValueError(f"{message} (got {value!r})")
        return value

    return AfterValidator(check)


def _cel_regex(regex: str) -> str:
    """A CEL string literal of ``regex`` (CEL ``matches`` is RE2 and searches, so anchor it)."""
    return "'" + regex.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- durations: "30s", "5m", "1h30m", "180d" -------------------------------------------------------
DURATION_RE: Final = r"^([0-9]+(ms|s|m|h|d|w))+$"
DURATION_MESSAGE: Final = (
    'must be a duration: a whole number with a unit ms, s, m, h, d or w, e.g. "30s", "5m", "1h30m", "180d"'
)
_DURATION_UNITS: Final = {
    "ms": dt.timedelta(milliseconds=1),
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
    "d": dt.timedelta(days=1),
    "w": dt.timedelta(weeks=1),
}

Duration = Annotated[
    StrictStr,
    _checked_pattern(DURATION_RE, DURATION_MESSAGE),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [cel(f"self.matches({_cel_regex(DURATION_RE)})", DURATION_MESSAGE)],
        }
    ),
]


def parse_duration(text: str) -> dt.timedelta:
    """``"1h30m"`` -> ``timedelta(hours=1, minutes=30)``. Raises ``ValueError`` naming the text."""
    if not re.fullmatch(DURATION_RE, text or ""):
        raise ValueError(f"{text!r} {DURATION_MESSAGE}")
    total = dt.timedelta()
    for number, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w)", text):
        total += int(number) * _DURATION_UNITS[unit]
    return total


# --- decimals: thresholds, fractions, metric values -------------------------------------------------
# An exponent is allowed ("1.23457e+06"): it is still an exact decimal, and it is what Python's
# "%g" formatting of a computed metric produces.
DECIMAL_RE: Final = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
DECIMAL_MESSAGE: Final = 'must be an integer or a decimal string such as "0.05" (no floats: quote the number)'


def _int_or_string_schema(regex: str, **bounds: int) -> dict[str, Any]:
    """An int-or-string whose strings must match ``regex`` (the shape controller-gen gives
    resource.Quantity). A pattern, not a CEL rule: the API server estimates the CEL cost of an
    int-or-string as if the string could fill a whole request, and refuses the CRD."""
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "maxLength": 64,
        "pattern": regex,
        **bounds,
    }


Decimalish = Annotated[
    StrictInt | Annotated[StrictStr, _checked_pattern(DECIMAL_RE, DECIMAL_MESSAGE)],
    WithJsonSchema(_int_or_string_schema(DECIMAL_RE)),
]

FRACTION_RE: Final = r"^(0(\.[0-9]+)?|1(\.0+)?)$"
FRACTION_MESSAGE: Final = (
    'must be a fraction between 0 and 1 written as a string, e.g. "0.2" (or the integer 0 or 1)'
)


def _fraction_int(value: int) -> int:
    if value not in (0, 1):
        raise ValueError(FRACTION_MESSAGE + f" (got {value!r})")
    return value


Fraction = Annotated[
    Annotated[StrictInt, AfterValidator(_fraction_int)]
    | Annotated[StrictStr, _checked_pattern(FRACTION_RE, FRACTION_MESSAGE)],
    WithJsonSchema(_int_or_string_schema(FRACTION_RE, minimum=0, maximum=1)),
]

# A check bound is a decimal, or a duration for latency checks: "0.01", 5, "250ms".
BOUND_RE: Final = r"^-?[0-9]+(\.[0-9]+)?(ms|s)?$"
BOUND_MESSAGE: Final = (
    'must be an integer or a decimal string such as "0.01", or for latencies a duration such as "250ms"'
    " (no floats: quote the number)"
)
Bound = Annotated[
    StrictInt | Annotated[StrictStr, _checked_pattern(BOUND_RE, BOUND_MESSAGE)],
    WithJsonSchema(_int_or_string_schema(BOUND_RE)),
]


def decimal(value: int | str) -> Decimal:
    """A threshold, fraction or metric value as a ``Decimal``; ``"250ms"`` is read as seconds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} {DECIMAL_MESSAGE}")
    if isinstance(value, int):
        return Decimal(value)
    if value.endswith("ms"):
        return Decimal(value[:-2]) / 1000
    if value.endswith("s"):
        return Decimal(value[:-1])
    if not re.fullmatch(DECIMAL_RE, value):
        raise ValueError(f"{value!r} {DECIMAL_MESSAGE}")
    return Decimal(value)


# --- resource quantities ("500m", "2Gi", 1) ----------------------------------------------------------
QUANTITY_RE: Final = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
QUANTITY_MESSAGE: Final = 'must be a Kubernetes quantity such as "500m", "1" or "2Gi" (no floats: quote it)'
Quantity = Annotated[
    StrictInt | Annotated[StrictStr, _checked_pattern(QUANTITY_RE, QUANTITY_MESSAGE)],
    WithJsonSchema(_int_or_string_schema(QUANTITY_RE)),
]

# --- names and texts ---------------------------------------------------------------------------------
DNS_NAME_RE: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_NAME_MESSAGE: Final = "must be a Kubernetes object name: lower-case letters, digits, '-' and '.'"
ObjectName = Annotated[
    StrictStr,
    Field(min_length=1, max_length=NAME_MAX),
    _checked_pattern(DNS_NAME_RE, DNS_NAME_MESSAGE),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": DNS_NAME_RE}),
]
Text = Annotated[StrictStr, Field(max_length=TEXT_MAX)]
ShortText = Annotated[StrictStr, Field(max_length=NAME_MAX)]
Uri = Annotated[StrictStr, Field(min_length=1, max_length=URI_MAX)]
# --- artifact URIs: where a ModelVersion's files may be ------------------------------------------
# What the API server can judge from the URI alone. It cannot see the object's namespace from a
# rule inside spec (``self`` there is the field, not the object), so whether the URI lies under the
# namespace's own store or a trusted registry prefix is the operator's check (noria.artifact_scope).
# Each rule is one CEL entry with its own message, and pydantic reports the same messages.
ARTIFACT_URI_SCHEME_RE: Final = r"^(file:///[^/]|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/])"
ARTIFACT_URI_SCHEME_MESSAGE: Final = (
    "must be file:///<absolute path> or s3://<bucket>/<key>: other schemes, a host in a file URI and"
    " an s3 URI without a bucket are refused"
)
ARTIFACT_URI_QUERY_RE: Final = r"[?#]"
ARTIFACT_URI_QUERY_MESSAGE: Final = "must not carry a query or a fragment ('?' or '#')"
ARTIFACT_URI_DOT_SEGMENT_RE: Final = r"/\.\.?(/|$)"
ARTIFACT_URI_DOT_SEGMENT_MESSAGE: Final = (
    "must not contain '.' or '..' path segments: write the path as it is"
)
ARTIFACT_URI_EMPTY_SEGMENT_RE: Final = r"[^:/]//"
ARTIFACT_URI_EMPTY_SEGMENT_MESSAGE: Final = "must not contain an empty path segment ('//')"
ARTIFACT_URI_CHARACTERS_RE: Final = r"^[A-Za-z0-9._~/:@+=,-]+$"
ARTIFACT_URI_CHARACTERS_MESSAGE: Final = (
    "may contain only letters, digits and . _ ~ / : @ + = , - (no spaces, backslashes, control"
    " characters or percent-escapes)"
)


@dataclass(frozen=True)
class UriRule:
    """One check of an artifact URI: ``regex`` must (or must not) occur in it (a search, as CEL's
    ``matches`` does)."""

    regex: str
    must_match: bool
    message: str

    def holds(self, uri: str) -> bool:
        return bool(re.search(self.regex, uri)) == self.must_match

    def cel(self) -> dict[str, str]:
        test = f"self.matches({_cel_regex(self.regex)})"
        return cel(test if self.must_match else f"!{test}", self.message)


ARTIFACT_URI_RULES: Final = (
    UriRule(ARTIFACT_URI_SCHEME_RE, True, ARTIFACT_URI_SCHEME_MESSAGE),
    UriRule(ARTIFACT_URI_QUERY_RE, False, ARTIFACT_URI_QUERY_MESSAGE),
    UriRule(ARTIFACT_URI_DOT_SEGMENT_RE, False, ARTIFACT_URI_DOT_SEGMENT_MESSAGE),
    UriRule(ARTIFACT_URI_EMPTY_SEGMENT_RE, False, ARTIFACT_URI_EMPTY_SEGMENT_MESSAGE),
    UriRule(ARTIFACT_URI_CHARACTERS_RE, True, ARTIFACT_URI_CHARACTERS_MESSAGE),
)


# --- training data sources: the same rules, plus glob characters ---------------------------------
# A TrainingPipeline's spec.data.source is opened by the trainer in the pipeline's namespace, just
# as an artifact is by a server, so it obeys the same rules (and the same operator scope check).
# The one difference: a source may be a glob of partitions (``.../events/*/*.parquet``), so ``*``,
# ``[`` and ``]`` are plain characters here. ``?`` stays refused (it is the query rule), and a glob
# cannot climb out of its prefix: it matches names inside directories, never ``..``.
DATA_SOURCE_CHARACTERS_RE: Final = r"^[A-Za-z0-9._~/:@+=,*\[\]-]+$"
DATA_SOURCE_CHARACTERS_MESSAGE: Final = (
    "may contain only letters, digits and . _ ~ / : @ + = , - and the glob characters * [ ] (no spaces,"
    " backslashes, control characters, percent-escapes or '?')"
)
DATA_SOURCE_RULES: Final = (
    *ARTIFACT_URI_RULES[:-1],
    UriRule(DATA_SOURCE_CHARACTERS_RE, True, DATA_SOURCE_CHARACTERS_MESSAGE),
)


def uri_problems(uri: str, rules: tuple[UriRule, ...] = ARTIFACT_URI_RULES) -> list[str]:
    """Every one of ``rules`` that ``uri`` breaks, as messages (empty when it is well-formed)."""
    return [rule.message for rule in rules if not rule.holds(uri)]


def artifact_uri_problems(uri: str) -> list[str]:
    """Every artifact URI rule ``uri`` breaks, as messages (empty when it is well-formed)."""
    return uri_problems(uri, ARTIFACT_URI_RULES)


def data_source_problems(uri: str) -> list[str]:
    """Every data source rule ``uri`` breaks, as messages (empty when it is well-formed)."""
    return uri_problems(uri, DATA_SOURCE_RULES)


def _uri_check(rules: tuple[UriRule, ...]) -> AfterValidator:
    """The pydantic half of a checked URI type: every broken rule's message, as CEL says it."""

    def check(value: Any) -> Any:
        problems = uri_problems(value, rules) if isinstance(value, str) else []
        if problems:
            raise ValueError("; ".join(problems) + f" (got {value[:200]!r})")
        return value

    return AfterValidator(check)


def _uri_schema(rules: tuple[UriRule, ...]) -> WithJsonSchema:
    """The CRD half of a checked URI type: one ``x-kubernetes-validations`` entry per rule."""
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": URI_MAX,
            "x-kubernetes-validations": [rule.cel() for rule in rules],
        }
    )


ArtifactUri = Annotated[
    StrictStr,
    Field(min_length=1, max_length=URI_MAX),
    _uri_check(ARTIFACT_URI_RULES),
    _uri_schema(ARTIFACT_URI_RULES),
]
DataSourceUri = Annotated[
    StrictStr,
    Field(min_length=1, max_length=URI_MAX),
    _uri_check(DATA_SOURCE_RULES),
    _uri_schema(DATA_SOURCE_RULES),
]

# Not strict: on the wire (YAML, JSON, Kopf's dicts) a timestamp is an RFC 3339 string.
Timestamp = Annotated[
    dt.datetime,
    Field(strict=False),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def format_timestamp(moment: dt.datetime | None = None) -> str:
    """A ``Timestamp`` as the API writes it: RFC 3339 in UTC, whole seconds, ``Z`` (what the API
    server itself writes in metadata), e.g. ``2026-11-20T10:00:00Z``. ``None``: now. A naive
    datetime is taken as UTC already (the operator's clocks are all UTC)."""
    moment = moment or dt.datetime.now(dt.UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat() + "Z"


def parse_timestamp(text: str) -> dt.datetime:
    """A ``Timestamp`` read back: RFC 3339 (``2026-11-20T10:00:00Z``, an offset, fractions of a
    second) as an aware datetime in UTC; no offset is taken as UTC (as ``format_timestamp`` takes a
    naive datetime). The one reader of the timestamps the operator writes in status. Raises
    ``ValueError`` naming the text."""
    try:
        moment = dt.datetime.fromisoformat(str(text).strip())  # Python 3.11 reads the "Z"
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp such as 2026-11-20T10:00:00Z") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


# --- the kinds of triggers (shared by TrainingPipeline status and ModelVersion lineage) -------------
TriggerKind = Literal["initial", "manual", "schedule", "newData", "drift", "performance"]
TRIGGER_KINDS: Final = ("initial", "manual", "schedule", "newData", "drift", "performance")


class ResourceRequirements(NoriaModel):
    """CPU and memory for the pods Noria starts, as in a container's ``resources``."""

    requests: dict[Annotated[str, Field(max_length=NAME_MAX)], Quantity] | None = Field(
        default=None,
        max_length=16,
        description='Minimum resources, e.g. {cpu: "1", memory: 2Gi}.',
    )
    limits: dict[Annotated[str, Field(max_length=NAME_MAX)], Quantity] | None = Field(
        default=None,
        max_length=16,
        description="Maximum resources, e.g. {memory: 4Gi}.",
    )


S3_ENDPOINT_RE: Final = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
S3_ENDPOINT_MESSAGE: Final = (
    "must be http(s)://<host>[:<port>] with no path, user or query, e.g. http://seaweedfs.storage:8333"
)
S3_REGION_RE: Final = r"^[a-z0-9-]{1,32}$"
S3Endpoint = Annotated[
    StrictStr,
    Field(max_length=URI_MAX),
    _checked_pattern(S3_ENDPOINT_RE, S3_ENDPOINT_MESSAGE),
    WithJsonSchema({"type": "string", "maxLength": URI_MAX, "pattern": S3_ENDPOINT_RE}),
]
S3Region = Annotated[
    StrictStr,
    _checked_pattern(S3_REGION_RE, "must be a region name such as us-east-1"),
    WithJsonSchema({"type": "string", "maxLength": 32, "pattern": S3_REGION_RE}),
]


class S3Access(NoriaModel):
    """How the pods Noria starts reach an ``s3://`` store (any S3-compatible endpoint)."""

    endpoint: S3Endpoint | None = Field(
        default=None,
        description=(
            "S3 API endpoint, e.g. http://seaweedfs.storage:8333 or https://minio.example.com. Unset: AWS S3"
            " (or AWS_ENDPOINT_URL in the operator's environment)."
        ),
    )
    region: S3Region | None = Field(
        default=None, description="Region of the bucket, e.g. us-east-1. Unset: the endpoint's default."
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description=(
            "Secret in the same namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally"
            " AWS_SESSION_TOKEN), given to the trainer and model-server pods by the kubelet (env valueFrom); the"
            " operator never logs them. Unset: the pod's workload identity (IRSA, EKS Pod Identity, GKE/Azure"
            " federation) or the node's credentials."
        ),
    )


class StoreAccess(NoriaModel):
    """Access to the artifact store and data sources when they are not the store volume."""

    s3: S3Access | None = Field(default=None, description="For s3:// data sources, artifacts and logs.")


class Condition(StatusModel):
    """A condition in the shape of metav1.Condition; conditions are the API, phase is a summary."""

    type: ShortText = Field(description="Condition type in CamelCase, e.g. Ready, Progressing, Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: ShortText | None = Field(default=None, description="CamelCase machine-readable reason.")
    message: Text | None = Field(default=None, description="Human-readable explanation.")
    last_transition_time: Timestamp | None = Field(
        default=None, description="When status last changed (not when the condition was last written)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


def conditions_field() -> Any:
    """The ``conditions`` field of every status: a list keyed by ``type`` (server-side apply merges
    by type, and one type appears at most once)."""
    return Field(
        default=None,
        max_length=32,
        description="Current state as conditions (Ready, Progressing, Degraded, ...); the API of this object.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ObjectMeta(BaseModel):
    """The part of metadata the models look at; the rest is the API server's business."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    generation: int | None = Field(default=None, description="Spec generation, set by the API server.")


# The apiVersion of the three kinds. A Literal has to spell its value (type checkers read it), so it
# is spelt here once, for every model, and checked against noria.contracts.API_VERSION.
ApiVersion = Literal["noria.dev/v1alpha1"]
assert get_args(ApiVersion) == (API_VERSION,), "ApiVersion must be noria.contracts.API_VERSION"


def api_version_field() -> Any:
    """A manifest model's ``apiVersion`` field: the one value, as its default and description."""
    return Field(default=API_VERSION, description=API_VERSION)


__all__ = [
    "API_VERSION",
    "ApiVersion",
    "api_version_field",
    "ARTIFACT_URI_RULES",
    "ArtifactUri",
    "DATA_SOURCE_RULES",
    "DataSourceUri",
    "UriRule",
    "artifact_uri_problems",
    "data_source_problems",
    "uri_problems",
    "CATEGORY",
    "Bound",
    "Condition",
    "conditions_field",
    "Decimalish",
    "Duration",
    "Fraction",
    "GROUP",
    "NoriaModel",
    "ObjectMeta",
    "ObjectName",
    "Quantity",
    "ResourceRequirements",
    "S3Access",
    "StoreAccess",
    "ShortText",
    "StatusModel",
    "Text",
    "Timestamp",
    "TriggerKind",
    "Uri",
    "VERSION",
    "cel",
    "decimal",
    "format_timestamp",
    "parse_duration",
    "parse_timestamp",
    "with_cel",
]
