"""Rollout (``rollouts.noria.dev``, short name ``mro``): how a model is served and how a new version
replaces the old one — canary, blue-green, shadow or immediate — with analysis and rollback.

Argo Rollouts also has a kind Rollout; ours is ``rollouts.noria.dev``: use
``kubectl get mro`` or ``kubectl get rollouts.noria.dev`` when both are installed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .common import (
    QUERY_MAX,
    URI_MAX,
    ApiVersion,
    Bound,
    Condition,
    Duration,
    NoriaModel,
    ObjectMeta,
    ObjectName,
    ResourceRequirements,
    ShortText,
    StatusModel,
    StoreAccess,
    Text,
    Timestamp,
    _cel_regex,
    _checked_pattern,
    api_version_field,
    cel,
    conditions_field,
    with_cel,
)
from .naming import (
    ROLLOUT_PLUS_MODEL_VERSION_MAX,
    ROLLOUT_PLUS_PIPELINE_MAX,
    ModelVersionName,
    PipelineName,
)
from .training_pipeline import FeastFeature, PushSourceName

KIND: Final = "Rollout"
PLURAL: Final = "rollouts"

SOURCE_ONE_MESSAGE: Final = (
    "source: set exactly one of pipeline (follow its newest approved version) or modelVersion (pin)"
)
STRATEGY_ONE_MESSAGE: Final = "strategy: set exactly one of canary, blueGreen, shadow or immediate"
STEP_ONE_MESSAGE: Final = "each canary step sets exactly one of setWeight, pause or analysis"
WEIGHTS_ORDER_MESSAGE: Final = "canary setWeight values must not decrease from one step to the next"
SHADOW_SERVICE_MESSAGE: Final = "traffic provider service cannot mirror requests, so it cannot run a shadow strategy: use router or gatewayAPI"
GATEWAY_CONFIG_MESSAGE: Final = "provider gatewayAPI needs gatewayAPI.httpRoute"
CHECK_KIND_MESSAGE: Final = "an analysis check sets exactly one of builtin or query"
CHECK_NAME_MESSAGE: Final = "a query check needs a name"
CHECK_BOUND_MESSAGE: Final = "an analysis check needs min or max"
ANALYSIS_NEEDED_MESSAGE: Final = (
    "an analysis step or prePromotionAnalysis needs spec.analysis.checks (an analysis with no checks would pass on"
    " no data)"
)
LATENCY_CHECKS: Final = ("latencyP50", "latencyP95", "latencyP99")
LABEL_CHECKS: Final = ("accuracy", "f1")  # read feedback labels
DEFAULT_MIN_LABELS: Final = 100  # labels a label check waits for when minLabels is unset
DURATION_BOUND_MESSAGE: Final = 'a duration bound such as "250ms" is for latencyP50/P95/P99 only; write other bounds as decimals, e.g. "0.01"'
SECRET_KEY_RE: Final = r"^[-._a-zA-Z0-9]+$"
SECRET_KEY_MESSAGE: Final = "must be a key of a Secret's data: letters, digits, '-', '_' and '.'"
SECRET_KEY_MAX: Final = 253
ONLINE_FEAST_ONE_MESSAGE: Final = "onlineFeatures.feast: set exactly one of featureService or features"
FEAST_SERVER_URL_RE: Final = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)*/?$"
FEAST_SERVER_URL_MESSAGE: Final = (
    "must be http(s)://<host>[:<port>][/<path>] of Feast's feature server (feast serve), e.g."
    " http://feast.features:6566, with no user, query or fragment"
)
LOOKUP_TIMEOUT_RE: Final = r"^([1-9][0-9]{0,3}ms|([1-9]|10)s)$"
LOOKUP_TIMEOUT_MESSAGE: Final = 'must be 1ms to 9999ms or 1s to 10s, e.g. "100ms" or "2s"'
ENTITY_KEY_RE: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
ENTITY_KEY_MESSAGE: Final = "an entity key is a join key name: a letter or '_', then letters, digits or '_' (at most 63)"

BuiltinCheck = Literal[
    "errorRate",
    "latencyP50",
    "latencyP95",
    "latencyP99",
    "accuracy",
    "f1",
    "shadowAgreement",
    "drift",
    "predictionDrift",
]


def _exactly_one(data: Any, keys: tuple[str, ...], message: str) -> Any:
    """A one-of rule, judged on the input before its parts are (as the API server's CEL rule sees
    ``has()``): two strategies are refused as such even when one of them is also malformed."""
    if isinstance(data, dict) and sum(data.get(k) is not None for k in keys) != 1:
        raise ValueError(message)
    return data


class Source(NoriaModel):
    """Which model to serve. Exactly one of ``pipeline`` or ``modelVersion``."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel("[has(self.pipeline), has(self.modelVersion)].filter(x, x).size() == 1", SOURCE_ONE_MESSAGE)
        )
    }

    pipeline: PipelineName | None = Field(
        default=None,
        description=(
            "Follow this TrainingPipeline: roll out each newest Approved ModelVersion. The Rollout's name plus this"
            f" name may have at most {ROLLOUT_PLUS_PIPELINE_MAX} characters (Service <rollout>-<pipeline>-v<N>)."
        ),
    )
    model_version: ModelVersionName | None = Field(
        default=None,
        description=(
            "Pin this ModelVersion (GitOps: a Git commit changes it and starts a rollout). The Rollout's name plus"
            f" this name may have at most {ROLLOUT_PLUS_MODEL_VERSION_MAX} characters (Service <rollout>-<version>)."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        return _exactly_one(data, ("pipeline", "modelVersion", "model_version"), SOURCE_ONE_MESSAGE)


class Pause(NoriaModel):
    """Wait at the current weight."""

    duration: Duration | None = Field(
        default=None,
        description=(
            'How long, e.g. "5m". Unset: wait until a person promotes with `kubectl noria promote <rollout>`'
            " (past this step once; the annotation noria.dev/promote=true does the same) or `--full`"
            " (noria.dev/promote=full: skip every remaining step)."
        ),
    )


class StepAnalysis(NoriaModel):
    """Run spec.analysis now, at the current weight, and go on only if it passes (``{}``: one measurement)."""

    count: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Consecutive successful measurements (one per analysis interval) the step needs before it goes on;"
            " a measurement that is not successful starts the count again. Default 1."
        ),
    )


class CanaryStep(NoriaModel):
    """One canary step: exactly one of setWeight, pause or analysis."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
                STEP_ONE_MESSAGE,
            )
        )
    }

    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Send this percent of traffic to the new version."
    )
    pause: Pause | None = Field(default=None, description="Wait, for a duration or until promoted.")
    analysis: StepAnalysis | None = Field(
        default=None, description="Run the analysis checks before going on."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        return _exactly_one(data, ("setWeight", "set_weight", "pause", "analysis"), STEP_ONE_MESSAGE)


class Canary(NoriaModel):
    """Shift traffic step by step; analysis runs in the background at every interval."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                WEIGHTS_ORDER_MESSAGE,
                field_path=".steps",
            )
        )
    }

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=32,
        description="e.g. [{setWeight: 10}, {pause: {duration: 5m}}, {analysis: {}}, {setWeight: 100}].",
    )

    @field_validator("steps")
    @classmethod
    def _non_decreasing(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.set_weight for s in steps if s.set_weight is not None]
        if weights != sorted(weights):
            raise ValueError(WEIGHTS_ORDER_MESSAGE)
        return steps


class BlueGreen(NoriaModel):
    """Run the new version beside the old one as a preview, then switch all traffic at once."""

    auto_promotion_after: Duration | None = Field(
        default=None,
        description=(
            "Switch this long after the preview is ready. Unset: wait for `kubectl noria promote <rollout>`"
            " (annotation noria.dev/promote=true)."
        ),
    )
    scale_down_delay: Duration | None = Field(
        default=None, description='Keep the old version running this long after the switch, e.g. "5m".'
    )
    pre_promotion_analysis: StepAnalysis | None = Field(
        default=None, description="Run the analysis checks against the preview before switching ({})."
    )


class Shadow(NoriaModel):
    """Mirror live requests to the new version, compare its answers, never return them."""

    mirror_percent: int = Field(default=100, ge=1, le=100, description="Percent of requests mirrored.")
    duration: Duration | None = Field(
        default=None, description='How long to compare before deciding, e.g. "30m".'
    )
    promote: Literal["automatic", "manual"] = Field(
        default="manual",
        description=(
            "automatic: promote when the analysis passes after duration; manual: wait for"
            " `kubectl noria promote <rollout>` (annotation noria.dev/promote=true)."
        ),
    )


class Immediate(NoriaModel):
    """Switch all traffic as soon as the new version is ready (a marker: ``{}``)."""


class Strategy(NoriaModel):
    """How a new version replaces the stable one. Exactly one of the four."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "[has(self.canary), has(self.blueGreen), has(self.shadow), has(self.immediate)]"
                ".filter(x, x).size() == 1",
                STRATEGY_ONE_MESSAGE,
            )
        )
    }

    canary: Canary | None = Field(default=None, description="Step-wise traffic shift.")
    blue_green: BlueGreen | None = Field(default=None, description="Preview, then atomic switch.")
    shadow: Shadow | None = Field(default=None, description="Mirror and compare, then promote or discard.")
    immediate: Immediate | None = Field(default=None, description="Switch when ready.")

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        return _exactly_one(
            data, ("canary", "blueGreen", "blue_green", "shadow", "immediate"), STRATEGY_ONE_MESSAGE
        )

    @property
    def name(self) -> str:
        """canary, blueGreen, shadow or immediate."""
        for field in ("canary", "blue_green", "shadow", "immediate"):
            if getattr(self, field) is not None:
                return type(self).model_fields[field].alias or field
        raise ValueError(STRATEGY_ONE_MESSAGE)


class Check(NoriaModel):
    """One analysis check: a built-in metric of the model server, or a PromQL query.

    In a query, ``{{version}}``, ``{{model}}`` and ``{{namespace}}`` are replaced before it is sent.
    """

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel("has(self.builtin) != has(self.query)", CHECK_KIND_MESSAGE),
            cel(
                "!has(self.query) || has(self.name)",
                CHECK_NAME_MESSAGE,
                field_path=".name",
                reason="FieldValueRequired",
            ),
            cel("has(self.min) || has(self.max)", CHECK_BOUND_MESSAGE),
            cel(
                "(has(self.builtin) && self.builtin.startsWith('latency'))"
                " || ((!has(self.min) || type(self.min) == int || !self.min.endsWith('s'))"
                " && (!has(self.max) || type(self.max) == int || !self.max.endsWith('s')))",
                DURATION_BOUND_MESSAGE,
            ),
        )
    }

    builtin: BuiltinCheck | None = Field(
        default=None,
        description=(
            'errorRate, latencyP50/P95/P99 (seconds or "250ms"), accuracy or f1 (macro-averaged over the classes;'
            " both from feedback labels),"
            " shadowAgreement (share of equal answers), drift (largest input feature drift), predictionDrift"
            " (drift of the predicted classes)."
        ),
    )
    name: ShortText | None = Field(
        default=None, description="Check name in status and events; required with query."
    )
    query: Annotated[StrictStr, Field(max_length=QUERY_MAX)] | None = Field(
        default=None, description="PromQL returning one number for the new version."
    )
    min: Bound | None = Field(default=None, description='Fails below this, e.g. "0.80".')
    max: Bound | None = Field(default=None, description='Fails above this, e.g. "0.01" or "250ms".')
    min_labels: StrictInt | None = Field(
        default=None,
        ge=1,
        description=(
            "Labels needed before the check judges (default 100 for accuracy and f1, which read feedback labels;"
            " with it any check waits for that many labels of the new version). With fewer, the step waits (no"
            " pause, no promotion) until labelTimeout has passed, then the measurement is inconclusive."
        ),
    )
    label_timeout: Duration | None = Field(
        default=None,
        description=(
            "How long a label-needing check (accuracy, f1, or any check with minLabels) waits for minLabels labels,"
            " counted from the start of the step, before its measurement is inconclusive (and spec.analysis."
            'inconclusive applies), e.g. "10m". Unset: it waits without bound (progressDeadline still applies).'
        ),
    )
    window: Duration | None = Field(
        default=None, description='Range the builtin metric is computed over, e.g. "2m".'
    )
    method: Literal["psi", "kl", "js", "chi2", "ks", "wasserstein"] | None = Field(
        default=None,
        description=(
            "drift/predictionDrift: the statistic, as in noria.drift: psi (population stability index), kl"
            " (Kullback-Leibler divergence), js (Jensen-Shannon distance), chi2 (chi-square), ks"
            " (Kolmogorov-Smirnov) or wasserstein (earth mover's distance on the bins). Default psi."
        ),
    )
    against: Literal["reference", "stable"] | None = Field(
        default=None,
        description=(
            "drift/predictionDrift: compare with the version's training profile (reference, default) or with the"
            " live traffic of the stable version (stable)."
        ),
    )
    dry_run: bool = Field(default=False, description="Evaluate and report, but never fail the rollout.")

    @model_validator(mode="after")
    def _shape(self) -> Check:
        if (self.builtin is None) == (self.query is None):
            raise ValueError(CHECK_KIND_MESSAGE)
        if self.query is not None and not self.name:
            raise ValueError(CHECK_NAME_MESSAGE)
        if self.min is None and self.max is None:
            raise ValueError(CHECK_BOUND_MESSAGE)
        if self.builtin not in LATENCY_CHECKS and any(
            isinstance(b, str) and b.endswith("s") for b in (self.min, self.max)
        ):
            raise ValueError(DURATION_BOUND_MESSAGE)
        return self

    @property
    def display_name(self) -> str:
        return self.name or str(self.builtin)


class AnalysisSpec(NoriaModel):
    """Checks run at every interval while a new version takes traffic, and by analysis steps."""

    interval: Duration = Field(default="1m", description="Time between two measurements.")
    failure_limit: int = Field(default=0, ge=0, description="Failed measurements tolerated; one more aborts.")
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        description="Measurements in a row that could not be taken (provider down) before aborting.",
    )
    inconclusive: Literal["pause", "fail"] = Field(
        default="pause",
        description="With too little data: pause (wait for a human or for data) or fail. Missing data never promotes.",
    )
    checks: list[Check] = Field(default_factory=list, max_length=16, description="The checks; all must pass.")


def _secret_key(value: str) -> str:
    if not re.fullmatch(SECRET_KEY_RE, value):
        raise ValueError(f"{SECRET_KEY_MESSAGE} (got {value!r})")
    return value


SecretKey = Annotated[
    StrictStr,
    Field(min_length=1, max_length=SECRET_KEY_MAX),
    AfterValidator(_secret_key),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": SECRET_KEY_MAX,
            "x-kubernetes-validations": [cel(f"self.matches('{SECRET_KEY_RE}')", SECRET_KEY_MESSAGE)],
        }
    ),
]


class SecretKeyRef(NoriaModel):
    """One key of a Secret in the Rollout's namespace, as in a container's ``env[].valueFrom.secretKeyRef``."""

    name: ObjectName = Field(description="The Secret's name (same namespace as the Rollout).")
    key: SecretKey = Field(default="token", description='The key in the Secret\'s data. Default "token".')


class FeedbackAccess(NoriaModel):
    """Who may post labels to ``POST /v2/models/{model}/feedback`` (inference is never affected)."""

    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Require 'Authorization: Bearer <token>' on feedback, the token being this Secret key (e.g. created with"
            " `kubectl create secret generic churn-feedback --from-literal=token=$(openssl rand -hex 32)`; at least"
            " 16 characters). Model-server and router pods read it from the kubelet (env valueFrom.secretKeyRef); the"
            " operator never reads the Secret, and a pod whose Secret is missing does not start. Unset: anyone who"
            " can reach the pods can post labels (each still counts at most once, for a prediction the pod made)."
        ),
    )


FeastServerUrl = Annotated[
    StrictStr,
    Field(max_length=URI_MAX),
    _checked_pattern(FEAST_SERVER_URL_RE, FEAST_SERVER_URL_MESSAGE),
    WithJsonSchema({"type": "string", "maxLength": URI_MAX, "x-kubernetes-validations": [
        cel(f"self.matches({_cel_regex(FEAST_SERVER_URL_RE)})", FEAST_SERVER_URL_MESSAGE)]}),
]
LookupTimeout = Annotated[
    StrictStr,
    _checked_pattern(LOOKUP_TIMEOUT_RE, LOOKUP_TIMEOUT_MESSAGE),
    WithJsonSchema({"type": "string", "maxLength": 8, "x-kubernetes-validations": [
        cel(f"self.matches({_cel_regex(LOOKUP_TIMEOUT_RE)})", LOOKUP_TIMEOUT_MESSAGE)]}),
]
EntityKey = Annotated[
    StrictStr,
    _checked_pattern(ENTITY_KEY_RE, ENTITY_KEY_MESSAGE),
    WithJsonSchema({"type": "string", "maxLength": 63, "pattern": ENTITY_KEY_RE}),
]


class OnlineFeast(NoriaModel):
    """Feast's HTTP feature server (``feast serve``), which the model server asks for a request's
    features by its entity keys (docs/serving/online-features.md). Exactly one of ``featureService``
    or ``features``."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "[has(self.featureService), has(self.features)].filter(x, x).size() == 1",
                ONLINE_FEAST_ONE_MESSAGE,
                field_path=".featureService",
            )
        )
    }

    url: FeastServerUrl = Field(
        description=(
            "http(s)://<host>[:<port>][/<path>] of Feast's feature server as the model-server pods reach it, e.g."
            " http://feast.features:6566; the server posts to <url>/get-online-features. https is verified"
            " against the server image's trust store."
        ),
    )
    feature_service: ShortText | None = Field(
        default=None,
        description="Feature service to read (usually the one the model was trained from, e.g. churn_v1).",
    )
    features: list[FeastFeature] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description='Or feature references <featureView>:<feature>, e.g. ["customer_stats:tenure_months"].',
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    entity_keys: list[EntityKey] = Field(
        min_length=1,
        max_length=8,
        description=(
            'Join keys a request carries instead of the features, one input each, e.g. ["customer_id"]'
            " (INT64 or BYTES values)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    timeout: LookupTimeout = Field(
        default="100ms",
        description=(
            'Bound of one lookup, connect included: past it the request is answered 504. "1ms" to "10s",'
            ' default "100ms".'
        ),
    )
    on_missing: Literal["reject", "asMissing"] = Field(
        default="reject",
        description=(
            "When the store has no value for a feature of a key: reject (404 naming the keys and features,"
            " default) or asMissing (the model gets a missing value, as when a request leaves it empty)."
        ),
    )
    feedback_push_source: PushSourceName | None = Field(
        default=None,
        description=(
            "Feast push source that labelled production rows go to (docs/serving/online-features.md, 'Feedback"
            " into Feast'): for each label POST /feedback counts, the model server pushes the entity keys, the"
            " features as served, the prediction, the label, the prediction id, the version and both times to"
            " <url>/push with to=offline, in the background. A TrainingPipeline's"
            " spec.data.feast.feedbackPushSource selects them. Unset: nothing is pushed."
        ),
    )

    @model_validator(mode="after")
    def _one_of(self) -> OnlineFeast:
        if (self.feature_service is None) == (self.features is None):
            raise ValueError(ONLINE_FEAST_ONE_MESSAGE)
        return self


class OnlineFeatures(NoriaModel):
    """Where the model server looks up the features a request does not carry."""

    feast: OnlineFeast = Field(description="Feast's feature server: {url, featureService, entityKeys}.")


class GatewayAPITraffic(NoriaModel):
    """Gateway API settings."""

    http_route: ObjectName = Field(
        description="HTTPRoute (same namespace) whose backendRefs the operator weighs."
    )


class Traffic(NoriaModel):
    """How traffic is split between versions."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "self.provider != 'gatewayAPI' || has(self.gatewayAPI)",
                GATEWAY_CONFIG_MESSAGE,
                field_path=".gatewayAPI",
                reason="FieldValueRequired",
            )
        )
    }

    provider: Literal["router", "gatewayAPI", "service"] = Field(
        default="router",
        description=(
            "router: Noria's router Deployment (any cluster; the only one comparing shadow answers);"
            " gatewayAPI: HTTPRoute weights and mirror filter; service: selector switch / replica ratio, no shadow."
        ),
    )
    gateway_api: GatewayAPITraffic | None = Field(
        default=None, alias="gatewayAPI", description="Settings of provider gatewayAPI."
    )


class RolloutSpec(NoriaModel):
    """How to serve a model and replace it."""

    model_config = NoriaModel.model_config | {
        "json_schema_extra": with_cel(
            cel(
                "!(has(self.strategy.shadow) && has(self.traffic) && self.traffic.provider == 'service')",
                SHADOW_SERVICE_MESSAGE,
                field_path=".traffic.provider",
            ),
            cel(
                "(has(self.analysis) && has(self.analysis.checks) && size(self.analysis.checks) > 0) || !("
                "(has(self.strategy.canary) && self.strategy.canary.steps.exists(s, has(s.analysis)))"
                " || (has(self.strategy.blueGreen) && has(self.strategy.blueGreen.prePromotionAnalysis)))",
                ANALYSIS_NEEDED_MESSAGE,
                field_path=".analysis",
                reason="FieldValueRequired",
            ),
        )
    }

    source: Source = Field(description="Which model to serve: {pipeline: churn} or {modelVersion: churn-v6}.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Model-server pods per serving version.")
    strategy: Strategy = Field(description="How a new version replaces the stable one.")
    analysis: AnalysisSpec | None = Field(default=None, description="Checks that gate promotion.")
    traffic: Traffic | None = Field(default=None, description="Traffic provider. Default: router.")
    rollback_window: Duration | None = Field(
        default=None,
        description=(
            "After a full promotion the analysis keeps running this long and the previous version's pods keep"
            " running; a failed analysis in the window sends all traffic back to the previous version (condition"
            ' reason RolledBack, the new version\'s stage Rejected), e.g. "1h". Unset: no window.'
        ),
    )
    progress_deadline: Duration = Field(
        default="10m",
        description=(
            "Longest time a rollout may go without progress (a step completed, the new version ready) before it"
            " is aborted with reason ProgressDeadlineExceeded and traffic returns to the stable version. Time"
            " paused for a person (a pause without duration, manual promotion, an inconclusive analysis with"
            ' inconclusive: pause) does not count. Default "10m".'
        ),
    )
    scale_down_delay: Duration | None = Field(
        default=None,
        description='Keep a replaced version\'s pods this long before scaling them down, e.g. "30s".',
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of each model-server pod."
    )
    store: StoreAccess | None = Field(
        default=None,
        description="How model servers reach an s3:// store (artifacts, prediction and feedback logs): {s3: {endpoint, region, credentialsSecret}}.",
    )
    feedback: FeedbackAccess | None = Field(
        default=None,
        description="Feedback labels: {tokenSecretRef: {name: churn-feedback, key: token}} to require a token.",
    )
    paused: bool = Field(
        default=False,
        description=(
            "true holds the rollout where it is (kubectl noria pause): no step advances and nothing is promoted;"
            " weights, analysis tallies and the pods stay, and abort still works. Time paused never counts"
            " toward progressDeadline. false (kubectl noria resume) carries on from the same step."
        ),
    )
    online_features: OnlineFeatures | None = Field(
        default=None,
        description=(
            "Requests may carry only entity keys: the model server looks the model's features up in Feast's"
            " online store before predicting (docs/serving/online-features.md)."
        ),
    )
    prediction_log: bool = Field(
        default=True,
        description=(
            "Model servers log every prediction (id, features, prediction) to the store, so that feedback labels"
            " can be joined with them for retraining."
        ),
    )

    @model_validator(mode="after")
    def _cross_field(self) -> RolloutSpec:
        provider = self.traffic.provider if self.traffic else "router"
        if self.strategy.shadow is not None and provider == "service":
            raise ValueError(SHADOW_SERVICE_MESSAGE)
        needs_analysis = (
            self.strategy.canary is not None
            and any(s.analysis is not None for s in self.strategy.canary.steps)
        ) or (
            self.strategy.blue_green is not None
            and self.strategy.blue_green.pre_promotion_analysis is not None
        )
        if needs_analysis and not (self.analysis and self.analysis.checks):
            raise ValueError(ANALYSIS_NEEDED_MESSAGE)
        if provider == "gatewayAPI" and not (self.traffic and self.traffic.gateway_api):
            raise ValueError(GATEWAY_CONFIG_MESSAGE)
        return self


# --- status --------------------------------------------------------------------------------------
class CheckResult(StatusModel):
    """The outcome of one check in one measurement."""

    name: ShortText = Field(description="Check name (builtin name when unnamed).")
    outcome: ShortText | None = Field(
        default=None,
        description="Successful, Failed, Error, Inconclusive or Waiting (fewer labels than minLabels).",
    )
    value: ShortText | None = Field(default=None, description="Measured value as a decimal string.")
    message: Text | None = Field(default=None, description="Detail, e.g. the provider's error.")


class Measurement(StatusModel):
    """The last analysis measurement."""

    at: Timestamp | None = Field(default=None, description="When it was taken.")
    outcome: ShortText | None = Field(
        default=None,
        description=(
            "Successful, Failed, Error, Inconclusive or Waiting (a label-needing check has fewer than minLabels"
            " labels: nothing is tallied)."
        ),
    )
    message: Text | None = Field(default=None, description="Summary.")
    checks: list[CheckResult] | None = Field(default=None, max_length=16, description="Per-check results.")


class AnalysisStatus(StatusModel):
    """Analysis counters of the current rollout (reset when a new version starts)."""

    passed: int | None = Field(default=None, ge=0, description="Successful measurements.")
    failed: int | None = Field(default=None, ge=0, description="Failed measurements.")
    errors: int | None = Field(default=None, ge=0, description="Measurements that could not be taken.")
    consecutive_errors: int | None = Field(
        default=None, ge=0, description="Errors in a row (against consecutiveErrorLimit)."
    )
    inconclusive: int | None = Field(default=None, ge=0, description="Measurements with too little data.")
    consecutive_successes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Successful measurements in a row since the candidate's traffic last changed or the current analysis"
            " step began (an analysis step with count: N needs N)."
        ),
    )
    last: Measurement | None = Field(default=None, description="The last measurement.")


class Verdict(StatusModel):
    """The last judgement of a version, kept in the Rollout's status so that it survives a crash between
    the Rollout's status write and the ModelVersion's: the operator re-applies it on its next pass."""

    version: ShortText = Field(description="The ModelVersion judged.")
    stage: Literal["Production", "Rejected", "Retired", "Approved"] = Field(
        description="The stage it was given."
    )
    reason: ShortText | None = Field(
        default=None,
        description=(
            "CamelCase reason, as in the conditions: Promoted, FirstDeployment, FastRollback, AnalysisFailed,"
            " AnalysisErrors, AbortedByUser, ArtifactVerificationFailed, CandidateUnready, ProgressDeadlineExceeded,"
            " RolledBack or Retried."
        ),
    )
    message: Text | None = Field(default=None, description="Why, for people.")
    at: Timestamp | None = Field(default=None, description="When.")


class RolloutStatus(StatusModel):
    """What is served and how the replacement is going. Conditions are the API; phase is their summary."""

    phase: ShortText | None = Field(
        default=None, description="Summary: Pending, Progressing, Paused, Healthy or Degraded."
    )
    message: Text | None = Field(default=None, description="Human-readable summary of the phase.")
    stable_version: ShortText | None = Field(default=None, description="The ModelVersion serving as stable.")
    canary_version: ShortText | None = Field(
        default=None, description="The ModelVersion being introduced (canary, blue-green preview or shadow)."
    )
    current_step: int | None = Field(default=None, ge=0, description="Index of the canary step in progress.")
    step_started_at: Timestamp | None = Field(
        default=None, description="When the current step (or pause) began."
    )
    canary_weight: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Percent of traffic on canaryVersion (mirror percent for shadow).",
    )
    weights: dict[Annotated[StrictStr, Field(max_length=253)], Annotated[int, Field(ge=0, le=100)]] | None = (
        Field(
            default=None,
            max_length=8,
            description="Traffic percent by ModelVersion name, e.g. {churn-v6: 90, churn-v7: 10}.",
        )
    )
    analysis: AnalysisStatus | None = Field(
        default=None, description="Analysis counters and last measurement."
    )
    last_verdict: Verdict | None = Field(
        default=None, description="The last version judged and the stage it was given."
    )
    previous_version: ShortText | None = Field(
        default=None,
        description="During a rollbackWindow: the version replaced by stableVersion, whose pods keep running for a rollback.",
    )
    rollback_window_ends_at: Timestamp | None = Field(
        default=None,
        description="When the current rollbackWindow ends (the previous version is then scaled down).",
    )
    no_progress_since: Timestamp | None = Field(
        default=None,
        description=(
            "When the rollout stopped making progress (candidate pods not ready, a measurement that is not a"
            " success holding a traffic raise or an analysis step, waiting for labels); unset while it progresses."
            " spec.progressDeadline counts from it; time paused for a person never counts."
        ),
    )
    candidate_unready_since: Timestamp | None = Field(
        default=None,
        description=(
            "When the candidate's pods stopped being all ready while it had traffic; its traffic goes to 0 after a"
            " short grace (none when no pod is ready, 10 s when some still are)."
        ),
    )
    conditions: list[Condition] | None = conditions_field()
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation last acted on."
    )


class Rollout(NoriaModel):
    """A Rollout manifest."""

    api_version: ApiVersion = api_version_field()
    kind: Literal["Rollout"] = Field(default=KIND, description="Rollout")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: RolloutSpec = Field(description="How to serve a model and replace it.")
    status: RolloutStatus | None = Field(default=None, description="Written by the operator.")


__all__ = [
    "AnalysisSpec",
    "AnalysisStatus",
    "BlueGreen",
    "Canary",
    "CanaryStep",
    "Check",
    "CheckResult",
    "FeedbackAccess",
    "GatewayAPITraffic",
    "Immediate",
    "KIND",
    "Measurement",
    "OnlineFeast",
    "OnlineFeatures",
    "PLURAL",
    "Pause",
    "Rollout",
    "RolloutSpec",
    "RolloutStatus",
    "SecretKeyRef",
    "Shadow",
    "Source",
    "StepAnalysis",
    "Strategy",
    "Traffic",
    "Verdict",
]
