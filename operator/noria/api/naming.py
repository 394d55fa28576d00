"""How long a Noria object's name may be, so that every object Noria derives from it is valid too.

The API server accepts any DNS subdomain of up to 253 characters as the name of a custom resource,
but the objects the operator creates from that name are stricter: a Service name is a DNS-1035
label (at most 63 characters, a lower-case letter first, no dots), and a label value is at most 63
characters. A name that is valid for the CRD and too long for its Service used to end in a 422 the
user never saw. So each kind refuses, at the API server, a name whose derived objects could not be
created:

============================  ====================================================================
derived from a                objects (name)
============================  ====================================================================
TrainingPipeline ``P``        Job and ConfigMap of run N ``P-r<N>`` (label ``job-name``, so <= 63),
                              ModelVersion ``P-v<N>`` (label ``noria.dev/version``), label
                              ``noria.dev/pipeline`` = ``P``
ModelVersion ``P-v<N>``       label value, and the tail of the Rollout's Service name (below)
Rollout ``R``                 Service ``R`` (the stable entry point), ``R-router`` (Deployment,
                              ServiceAccount, Role, RoleBinding, ConfigMap), Service
                              ``R-preview``, and per served version ``R-<version>`` (Deployment
                              and Service)
============================  ====================================================================

Pods are named by their controllers (a Job's pod ``P-r<N>-<5 random>``, a Deployment's
``<deployment>-<hash>-<5 random>``) with ``generateName``, which the API server shortens to fit, so the
limits come from the objects above, not from pods.

Run and version numbers are budgeted at ``RUN_NUMBER_DIGITS`` digits (999 999 runs of one
pipeline), which gives the limits below. Each rule is written once, as a CEL expression for the
CRD (on the schema root, where ``self.metadata.name`` is visible) and as a Python check for
``noria.api.validate``, with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import Field, StrictStr, WithJsonSchema

from .common import _cel_regex, _checked_pattern, cel

LABEL_VALUE_MAX: Final = 63  # a label value, and a DNS-1035 label (Service names)
RUN_NUMBER_DIGITS: Final = 6
RUN_NUMBER_MAX: Final = 10**RUN_NUMBER_DIGITS - 1
_NUMBERED_SUFFIX: Final = 2 + RUN_NUMBER_DIGITS  # "-r" / "-v" and the number

# A DNS-1035 label: what a Service name must be. Every name below ends up inside one.
DNS_LABEL_RE: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MESSAGE: Final = (
    "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with a"
    " letter or digit (no dots: the name becomes part of Service names)"
)

PIPELINE_NAME_MAX: Final = LABEL_VALUE_MAX - _NUMBERED_SUFFIX  # "<pipeline>-r999999" fits in 63
ROLLOUT_NAME_MAX: Final = LABEL_VALUE_MAX - len("-preview")  # the longest fixed suffix ("-router" is shorter)
MODEL_VERSION_NAME_MAX: Final = LABEL_VALUE_MAX
# "<rollout>-<pipeline>-v999999" and "<rollout>-<modelVersion>" are Service names.
ROLLOUT_PLUS_PIPELINE_MAX: Final = LABEL_VALUE_MAX - 1 - _NUMBERED_SUFFIX
ROLLOUT_PLUS_MODEL_VERSION_MAX: Final = LABEL_VALUE_MAX - 1


def _label_name(limit: int) -> Any:
    """A reference to an object whose name becomes part of Service names and label values."""
    return Annotated[
        StrictStr,
        Field(min_length=1, max_length=limit),
        _checked_pattern(DNS_LABEL_RE, DNS_LABEL_MESSAGE),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": limit, "pattern": DNS_LABEL_RE}),
    ]


PipelineName = _label_name(PIPELINE_NAME_MAX)
ModelVersionName = _label_name(MODEL_VERSION_NAME_MAX)


@dataclass(frozen=True)
class NameRule:
    """One rule on a manifest's ``metadata.name``: a CEL expression over the whole object (``self``)
    for the CRD root, and the same test in Python over the manifest dict."""

    rule: str  # CEL, with self = the object
    message: str
    holds: Callable[[Mapping[str, Any]], bool]

    def cel(self) -> dict[str, str]:
        return cel(self.rule, self.message, field_path=".metadata.name")


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _spec(obj: Mapping[str, Any], *path: str) -> Any:
    node: Any = obj.get("spec") or {}
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


# A manifest checked offline may leave the name to generateName; the API server fills metadata.name
# in before it validates, so on the cluster the rules always see a name.
_HAS_NAME: Final = "!has(self.metadata.name) || "


def _dns_label(kind: str, limit: int, why: str) -> tuple[NameRule, NameRule]:
    return (
        NameRule(
            f"{_HAS_NAME}self.metadata.name.matches({_cel_regex(DNS_LABEL_RE)})",
            f"{kind} name {DNS_LABEL_MESSAGE}",
            lambda o: not _name(o) or bool(re.fullmatch(DNS_LABEL_RE, _name(o))),
        ),
        NameRule(
            f"{_HAS_NAME}size(self.metadata.name) <= {limit}",
            f"{kind} name must be at most {limit} characters ({why})",
            lambda o: len(_name(o)) <= limit,
        ),
    )


TRAINING_PIPELINE_NAME_RULES: Final = _dns_label(
    "a TrainingPipeline",
    PIPELINE_NAME_MAX,
    f"its runs and versions are named <name>-r<N> and <name>-v<N>, at most {LABEL_VALUE_MAX} with N up to"
    f" {RUN_NUMBER_MAX}",
)

MODEL_VERSION_NAME_RULES: Final = (
    *_dns_label("a ModelVersion", MODEL_VERSION_NAME_MAX, "it is a label value"),
    NameRule(
        f"{_HAS_NAME}self.metadata.name == '%s-v%d'.format([self.spec.pipeline, self.spec.version])",
        "a ModelVersion must be named <spec.pipeline>-v<spec.version>, e.g. churn-v7",
        lambda o: not _name(o) or _name(o) == f"{_spec(o, 'pipeline')}-v{_spec(o, 'version')}",
    ),
)


def _rollout_fits(obj: Mapping[str, Any]) -> bool:
    name = _name(obj)
    pipeline, pinned = _spec(obj, "source", "pipeline"), _spec(obj, "source", "modelVersion")
    if not name:
        return True
    if isinstance(pipeline, str):
        return len(name) + len(pipeline) <= ROLLOUT_PLUS_PIPELINE_MAX
    if isinstance(pinned, str):
        return len(name) + len(pinned) <= ROLLOUT_PLUS_MODEL_VERSION_MAX
    return True


ROLLOUT_NAME_RULES: Final = (
    *_dns_label("a Rollout", ROLLOUT_NAME_MAX, "the operator creates <name>-preview and <name>-router"),
    NameRule(
        f"{_HAS_NAME}!has(self.spec.source) || (has(self.spec.source.pipeline)"
        f" ? size(self.metadata.name) + size(self.spec.source.pipeline) <= {ROLLOUT_PLUS_PIPELINE_MAX}"
        f" : !has(self.spec.source.modelVersion)"
        f" || size(self.metadata.name) + size(self.spec.source.modelVersion) <= {ROLLOUT_PLUS_MODEL_VERSION_MAX})",
        f"a Rollout's name and its source together are too long: each served version gets a Service"
        f" <rollout>-<version> of at most {LABEL_VALUE_MAX} characters, so the name plus spec.source.pipeline may"
        f" have at most {ROLLOUT_PLUS_PIPELINE_MAX} characters (versions are <pipeline>-v<N>, N up to"
        f" {RUN_NUMBER_MAX}), and the name plus spec.source.modelVersion at most {ROLLOUT_PLUS_MODEL_VERSION_MAX}",
        _rollout_fits,
    ),
)


def name_problems(rules: tuple[NameRule, ...], manifest: Mapping[str, Any]) -> list[str]:
    """Every rule of ``rules`` the manifest's name breaks, in the API server's words."""
    return [rule.message for rule in rules if not rule.holds(manifest)]


__all__ = [
    "ModelVersionName",
    "PipelineName",
    "DNS_LABEL_RE",
    "LABEL_VALUE_MAX",
    "MODEL_VERSION_NAME_RULES",
    "NameRule",
    "PIPELINE_NAME_MAX",
    "ROLLOUT_NAME_MAX",
    "ROLLOUT_NAME_RULES",
    "RUN_NUMBER_MAX",
    "TRAINING_PIPELINE_NAME_RULES",
    "name_problems",
]
