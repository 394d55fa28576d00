"""Which Kubernetes Events become webhook notifications, for which receivers, with which body.

Every transition a person cares about already posts exactly one Event on its object (a run failed,
a version approved or rejected, a Rollout paused, promoted, aborted or degraded), so notifications
follow the Events: ``transition_of`` names the transition an Event marks, ``parse_receivers`` reads
a namespace's ``noria-notifications`` ConfigMap, ``resolve_targets`` pairs each receiver with its
webhook URL from the Secret of the same name, and ``build_payload`` is what is POSTed. The retry
schedule (``RetryPolicy``) is here too, so a fake clock can test it.

Pure: no Kubernetes or HTTP client; the sender (``noria.notify``) does the I/O. Nothing here ever
puts a webhook URL into a message: a URL with a token in its path is a credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from noria import conditions as c
from noria.api.common import parse_duration
from noria.contracts import NOTIFICATIONS_CONFIGMAP

# --- transitions: the groups of Event reasons a receiver subscribes to ------------------------------
RUN_FAILED: Final = "run-failed"
VERSION_AWAITING_APPROVAL: Final = "version-awaiting-approval"
VERSION_APPROVED: Final = "version-approved"
VERSION_REJECTED: Final = "version-rejected"
ROLLOUT_PAUSED: Final = "rollout-paused"
ROLLOUT_PROMOTED: Final = "rollout-promoted"
ROLLOUT_ABORTED: Final = "rollout-aborted"
ROLLOUT_DEGRADED: Final = "rollout-degraded"
TRANSITIONS: Final = (RUN_FAILED, VERSION_AWAITING_APPROVAL, VERSION_APPROVED, VERSION_REJECTED, ROLLOUT_PAUSED,
                      ROLLOUT_PROMOTED, ROLLOUT_ABORTED, ROLLOUT_DEGRADED)
# What each says in the message's first words.
TITLES: Final = {
    RUN_FAILED: "training run failed", VERSION_AWAITING_APPROVAL: "awaits approval",
    VERSION_APPROVED: "approved", VERSION_REJECTED: "rejected", ROLLOUT_PAUSED: "paused",
    ROLLOUT_PROMOTED: "promoted", ROLLOUT_ABORTED: "aborted", ROLLOUT_DEGRADED: "degraded",
}

TRAINING_PIPELINE: Final = "TrainingPipeline"
MODEL_VERSION: Final = "ModelVersion"
ROLLOUT: Final = "Rollout"
NOTIFIED_KINDS: Final = frozenset({TRAINING_PIPELINE, MODEL_VERSION, ROLLOUT})

# The Degraded reasons of a finished run (training/pipeline.py posts the run's reason as the Event's).
RUN_FAILURE_REASONS: Final = frozenset({c.TRAINER_FAILED, c.JOB_FAILED, c.SUMMARY_MISSING, c.SUMMARY_INVALID,
                                        c.TRAINER_OOM_KILLED})
_VERSION_REASONS: Final = {
    c.AUTO_APPROVED: VERSION_APPROVED, c.MANUALLY_APPROVED: VERSION_APPROVED,
    c.GATE_REJECTED: VERSION_REJECTED, c.MANUALLY_REJECTED: VERSION_REJECTED,
    c.AWAITING_APPROVAL: VERSION_AWAITING_APPROVAL,  # a trained Candidate under approval: manual
    c.MODEL_VERSION_REGISTERED: VERSION_AWAITING_APPROVAL,  # on a ModelVersion: imported by hand, Registered
}
PROMOTION_REASONS: Final = frozenset({c.ROLLOUT_PROMOTED, c.ROLLOUT_FIRST_DEPLOYMENT, c.ROLLOUT_FAST_ROLLBACK})
PAUSE_REASONS: Final = frozenset({c.ROLLOUT_PAUSED_FOR_PROMOTION, c.ROLLOUT_PAUSED_BY_USER,
                                  c.ROLLOUT_ANALYSIS_INCONCLUSIVE})
# An abort's reason is its cause (AnalysisFailed, ProgressDeadlineExceeded, ...), and some causes
# also post Events that are not aborts (one AnalysisFailed per failed measurement); the abort's own
# Event is the one PlanBuilder.abort words "aborted <version>: ..." (a unit test ties the two).
ABORTED_PREFIX: Final = "aborted "
ROLLED_BACK_REASONS: Final = frozenset({c.ROLLOUT_ROLLED_BACK})  # inside rollbackWindow: an abort after promotion
# Warning Events that come with Degraded=True on a Rollout (besides aborts and a failed pass's
# ReconcileError). Not CandidateUnready (traffic moved off an unready candidate: Progressing, and an
# abort follows if it lasts) nor a failed measurement's AnalysisFailed (one per interval).
DEGRADED_REASONS: Final = frozenset({
    c.ROLLOUT_INVALID_SPEC, c.ROLLOUT_NO_MODEL_VERSION, c.ROLLOUT_MODEL_VERSION_REJECTED, c.ARTIFACT_OUT_OF_SCOPE,
    c.ROLLOUT_STABLE_UNHEALTHY, c.ROLLOUT_PROGRESS_DEADLINE_EXCEEDED, c.ARTIFACT_VERIFICATION_FAILED,
    c.RECONCILE_ERROR,
})


def transition_of(kind: str, type_: str, reason: str, message: str) -> str | None:
    """The transition an Event on a ``kind`` object marks, or None (not one people are told about
    by default; a receiver can still ask for its reason by name).

    >>> transition_of("Rollout", "Warning", "AnalysisFailed", "aborted churn-v2: 2 failed; traffic back on churn-v1")
    'rollout-aborted'
    >>> transition_of("Rollout", "Warning", "AnalysisFailed", "churn-v2: errorRate=Failed (0.2 > 0.01)") is None
    True
    """
    if kind == TRAINING_PIPELINE:
        return RUN_FAILED if reason in RUN_FAILURE_REASONS and type_ == "Warning" else None
    if kind == MODEL_VERSION:
        return _VERSION_REASONS.get(reason)
    if kind != ROLLOUT:
        return None
    if reason in PROMOTION_REASONS:
        return ROLLOUT_PROMOTED
    if reason in PAUSE_REASONS:
        return ROLLOUT_PAUSED
    if type_ != "Warning":
        return None
    if message.startswith(ABORTED_PREFIX) or reason in ROLLED_BACK_REASONS:
        return ROLLOUT_ABORTED
    return ROLLOUT_DEGRADED if reason in DEGRADED_REASONS else None


# --- every reason a receiver may name: the reason constants of noria.conditions -----------------------
_NOT_REASONS: Final = {c.READY, c.PROGRESSING, c.DEGRADED, c.TRAINING, c.TRIGGERS_HEALTHY, c.APPROVED, c.PAUSED,
                       c.ANALYSIS, c.RECONCILED, c.TRUE, c.FALSE, c.UNKNOWN}
KNOWN_REASONS: Final = frozenset(
    value for name, value in vars(c).items()
    if name.isupper() and isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value) and value not in _NOT_REASONS
)

# --- the ConfigMap ----------------------------------------------------------------------------------
RECEIVERS_KEY: Final = "receivers"  # data key of ConfigMap noria-notifications: a YAML list of receivers
DEFAULT_TIMEOUT_SECONDS: Final = 5.0
MAX_TIMEOUT_SECONDS: Final = 10.0  # tries x timeout must fit the retry budget below
MAX_RECEIVERS: Final = 20
_NAME_RE: Final = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"  # a DNS label: it is also the default Secret key
_SECRET_KEY_RE: Final = r"[-._a-zA-Z0-9]{1,253}"  # what Kubernetes allows as a Secret data key
_FIELDS: Final = ("name", "events", "secretKey", "timeout")
MAX_URL_LENGTH: Final = 2048


@dataclass(frozen=True)
class Receiver:
    """One webhook receiver of a namespace, as its ConfigMap entry says."""

    name: str
    events: frozenset[str]  # transitions and Event reasons
    secret_key: str  # the key of Secret noria-notifications that holds the URL
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # seconds per try

    def wants(self, transition: str | None, reason: str) -> bool:
        return reason in self.events or (transition is not None and transition in self.events)


@dataclass(frozen=True)
class Receivers:
    """A namespace's receivers that are valid, and what is wrong with the others (each problem
    names the entry and the field: they go into a Warning Event on the ConfigMap and the log)."""

    receivers: tuple[Receiver, ...] = ()
    problems: tuple[str, ...] = ()


def parse_receivers(data: Mapping[str, str] | None) -> Receivers:
    """Read the ``receivers`` key of the ConfigMap's ``data``. A bad entry is left out with a
    problem naming it; the good ones still receive (a typo in one never silences the others).

    The shape, in YAML::

        - name: team-chat                        # required, a DNS label, unique
          events: [rollout-aborted, run-failed]  # transitions or Event reasons; default every transition
          secretKey: team-chat                   # key of Secret noria-notifications; default the name
          timeout: 5s                            # per try, at most 10s; default 5s
    """
    where = f"ConfigMap {NOTIFICATIONS_CONFIGMAP} key {RECEIVERS_KEY!r}"
    text = (data or {}).get(RECEIVERS_KEY)
    if text is None:
        keys = sorted(data or {})
        return Receivers(problems=(f"{where}: missing (found keys {keys}); put the list of receivers there",)
                         if keys else ())
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return Receivers(problems=(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}",))
    if entries is None:
        return Receivers()
    if not isinstance(entries, list):
        return Receivers(problems=(f"{where}: must be a YAML list of receivers (- name: ...), "
                                   f"got a {type(entries).__name__}",))
    receivers: list[Receiver] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        receiver, problem = _parse_receiver(entry, f"{where}: receivers[{i}]")
        if receiver is not None and receiver.name in seen:
            twice = receiver.name
            receiver, problem = None, f"{where}: receivers[{i}].name: {twice!r} is used twice; names are unique"
        if receiver is None:
            problems.append(problem or f"{where}: receivers[{i}]: invalid")
            continue
        if len(receivers) >= MAX_RECEIVERS:
            problems.append(f"{where}: receivers[{i}] ({receiver.name!r}): more than {MAX_RECEIVERS} receivers; "
                            "left out")
            continue
        seen.add(receiver.name)
        receivers.append(receiver)
    return Receivers(tuple(receivers), tuple(problems))


def _parse_receiver(entry: Any, at: str) -> tuple[Receiver | None, str | None]:
    if not isinstance(entry, dict):
        return None, f"{at}: must be a mapping with name, events, secretKey, timeout; got {entry!r:.80}"
    unknown = sorted(str(k) for k in entry if k not in _FIELDS)
    if unknown:
        return None, f"{at}: unknown field {unknown[0]!r}; the fields are {', '.join(_FIELDS)}"
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(_NAME_RE, name):
        return None, f"{at}.name: required, a DNS label (lower-case letters, digits, '-', at most 63), got {name!r}"
    at = f"{at} ({name!r})"
    events = entry.get("events", list(TRANSITIONS))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        return None, f"{at}.events: a non-empty list of transitions or Event reasons, got {events!r:.120}"
    for j, event in enumerate(events):
        if event not in TRANSITIONS and event not in KNOWN_REASONS:
            return None, (f"{at}.events[{j}]: {event!r} is neither a transition ({', '.join(TRANSITIONS)}) "
                          "nor an Event reason Noria posts (docs/operations/notifications.md lists them)")
    secret_key = entry.get("secretKey", name)
    if not isinstance(secret_key, str) or not re.fullmatch(_SECRET_KEY_RE, secret_key):
        return None, f"{at}.secretKey: a Secret data key (letters, digits, '-', '_', '.'), got {secret_key!r}"
    timeout = entry.get("timeout", DEFAULT_TIMEOUT_SECONDS)
    try:
        seconds = parse_duration(timeout).total_seconds() if isinstance(timeout, str) else None
    except ValueError:
        seconds = None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        return None, f"{at}.timeout: a duration above 0 and at most {MAX_TIMEOUT_SECONDS:g}s (e.g. 5s), got {timeout!r}"
    return Receiver(name, frozenset(events), secret_key, seconds), None


# --- the Secret ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A receiver with its URL: where to send."""

    receiver: Receiver
    url: str


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a webhook URL Noria posts to, in words that never repeat the URL."""
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if url != url.strip():
        return "starts or ends with whitespace (a newline from `echo`? use --from-literal or printf)"
    if any(ch.isspace() for ch in url):
        return "contains whitespace"
    match = re.fullmatch(r"(?i)(https?)://([^/?#@]*@)?([^/?#]+)([/?#].*)?", url)
    if match is None:
        return "not an http:// or https:// URL"
    if match.group(2):
        return "carries user:password@ before the host; put a token in the path or query instead"
    return None


def resolve_targets(receivers: Receivers, secret: Mapping[str, str] | None) -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """Each valid receiver with its URL from the Secret's decoded data (key -> text); a receiver
    whose key is missing or whose URL is unusable is left out with a problem naming the key."""
    where = f"Secret {NOTIFICATIONS_CONFIGMAP}"
    targets: list[Target] = []
    problems: list[str] = []
    for receiver in receivers.receivers:
        url = (secret or {}).get(receiver.secret_key)
        if url is None:
            what = "does not exist" if secret is None else f"has no key {receiver.secret_key!r}"
            problems.append(f"receiver {receiver.name!r}: {where} {what}; add the webhook URL there "
                            f"(kubectl create secret generic {NOTIFICATIONS_CONFIGMAP} "
                            f"--from-literal={receiver.secret_key}=https://...)")
            continue
        problem = url_problem(url)
        if problem:
            problems.append(f"receiver {receiver.name!r}: {where} key {receiver.secret_key!r}: {problem}")
            continue
        targets.append(Target(receiver, url))
    return tuple(targets), tuple(problems)


# --- the notification and its body -----------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    """What one Event says, as it is sent."""

    kind: str
    namespace: str
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str
    time: str  # RFC 3339, when the Event was posted
    transition: str | None = None
    version: str | None = None
    pipeline: str | None = None


def notification_of(involved: Mapping[str, Any], type_: str, reason: str, message: str, time: str) -> Notification | None:
    """The notification an Event on ``involved`` makes, or None for objects that are not Noria's."""
    kind = str(involved.get("kind") or "")
    meta = involved.get("metadata") or {}
    if kind not in NOTIFIED_KINDS or not meta.get("namespace"):
        return None
    version, pipeline = _version_and_pipeline(kind, involved, message)
    return Notification(kind=kind, namespace=meta["namespace"], name=meta.get("name", ""), type=type_, reason=reason,
                        message=message, time=time, transition=transition_of(kind, type_, reason, message),
                        version=version, pipeline=pipeline)


def _version_and_pipeline(kind: str, obj: Mapping[str, Any], message: str) -> tuple[str | None, str | None]:
    """The ModelVersion an Event is about and its pipeline, where the object says. ``obj`` is the
    object as its pass read it (before the pass wrote status): a pipeline's current run is the run
    that just ended; a Rollout's versions are the ones the message names first."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    name = (obj.get("metadata") or {}).get("name")
    if kind == MODEL_VERSION:
        return name, spec.get("pipeline")
    if kind == TRAINING_PIPELINE:
        return (status.get("currentRun") or {}).get("version"), name
    source = spec.get("source") or {}
    known = [v for v in (status.get("canaryVersion"), status.get("stableVersion"), status.get("previousVersion"),
                         source.get("modelVersion"), *(status.get("weights") or {})) if v]
    named = [(position, v) for v in known if (position := _mention(message, v)) is not None]
    version = min(named)[1] if named else (status.get("canaryVersion") or status.get("stableVersion"))
    return version, source.get("pipeline")


def _mention(message: str, version: str) -> int | None:
    """Where ``version`` is named in ``message`` as a whole word (churn-v1 is not in churn-v12)."""
    match = re.search(rf"(?<![-\w.]){re.escape(version)}(?![-\w])", message)
    return match.start() if match else None


def slack_escape(text: str) -> str:
    """Slack reads &, < and > in ``text`` as markup (``<url|label>``): escape them as it asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_payload(note: Notification) -> dict[str, Any]:
    """The JSON body: ``text`` for Slack-compatible receivers (Slack, Mattermost, Rocket.Chat, Teams
    workflows), then the same facts as fields for anything that parses them.

    >>> build_payload(Notification("Rollout", "ml", "churn", "Warning", "AbortedByUser", "aborted churn-v2: ...",
    ...                            "2026-12-02T08:00:00Z", "rollout-aborted", "churn-v2", "churn"))["text"]
    'Rollout ml/churn aborted (AbortedByUser): aborted churn-v2: ...'
    """
    title = TITLES.get(note.transition or "", note.reason)
    headline = f"{note.kind} {note.namespace}/{note.name} {title}"
    text = f"{headline} ({note.reason}): {note.message}" if title != note.reason else f"{headline}: {note.message}"
    body: dict[str, Any] = {
        "text": slack_escape(text),
        "kind": note.kind, "namespace": note.namespace, "name": note.name, "type": note.type,
        "reason": note.reason, "message": note.message, "time": note.time, "transition": note.transition,
    }
    if note.version:
        body["version"] = note.version
    if note.pipeline:
        body["pipeline"] = note.pipeline
    return body


# --- retries ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """At most ``tries`` tries of one delivery, ``first_delay`` then ``factor`` times longer apart,
    all inside ``budget`` seconds from the first try: a receiver that is down costs each
    notification a bounded time, and then it is counted as failed."""

    tries: int = 3
    first_delay: float = 1.0
    factor: float = 4.0
    budget: float = 30.0

    def delay_before(self, attempt: int, elapsed: float, timeout: float) -> float | None:
        """Seconds to wait before try number ``attempt`` (2, 3, ...) when ``elapsed`` seconds have
        gone since the first try began; None when no further try fits in tries or the budget.

        >>> [RetryPolicy().delay_before(n, 0.0, 5.0) for n in (2, 3, 4)]
        [1.0, 4.0, None]
        >>> RetryPolicy().delay_before(3, 22.0, 5.0) is None  # 22 + 4 + 5 > 30
        True
        """
        if attempt > self.tries:
            return None
        delay = self.first_delay * self.factor ** (attempt - 2)
        return delay if elapsed + delay + timeout <= self.budget else None


def retryable(status: int | None) -> bool:
    """Whether a try that ended so is worth another: no answer (refused, reset, timed out), 429 or
    5xx. Any other answer will not change by asking again (a 404 is a wrong URL; a 3xx is not
    followed, so a token never travels to a host the URL did not name)."""
    return status is None or status == 429 or status >= 500
